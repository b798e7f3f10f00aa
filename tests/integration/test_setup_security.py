"""Security basics with the real CLI: root is refused over the cluster user's data
directory (file modes are checked in test_setup.py, which archives anyway)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.pgcluster import chown_user, make_user_dir

pytestmark = pytest.mark.integration
SEGMENT = "000000010000000000000001"


@pytest.fixture
def fake_pgdata(testdir: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as root")
    pgdata = make_user_dir(testdir / "data", mode=0o700)
    wal = make_user_dir(pgdata / "pg_wal", mode=0o700)
    (pgdata / "PG_VERSION").write_text("15\n")
    (wal / SEGMENT).write_bytes(b"\0" * 8192)
    for p in (pgdata / "PG_VERSION", wal / SEGMENT):
        chown_user(p)
    return pgdata


def _as_root(exe: Path, cfg: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), "--config", str(cfg), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_root_is_refused_over_the_cluster_users_data_directory(
        fake_pgdata: Path, pitr_config: Any, pitr_exe: Path, local_repo: Path) -> None:
    # No postgres.pgdata configured: PostgreSQL's working directory (%p is relative) counts.
    cfg = pitr_config()
    push = _as_root(pitr_exe, cfg, "archive-push", f"pg_wal/{SEGMENT}", cwd=fake_pgdata)
    assert push.returncode == 15, push.stderr
    assert "refusing to run archive-push as root" in push.stderr
    assert "HINT: run it as that user" in push.stderr
    get = _as_root(pitr_exe, cfg, "archive-get", SEGMENT, "pg_wal/RECOVERYXLOG",
                   cwd=fake_pgdata)
    # restore_command's contract: anything but "absent" must stop recovery (>125).
    assert get.returncode == 150 + 15, get.stderr
    assert not (fake_pgdata / "pg_wal" / "RECOVERYXLOG").exists()
    assert list(local_repo.iterdir()) == [], "nothing may be written as root"

    # Configured pgdata counts from any working directory.
    cfg2 = pitr_config("pitr2.toml", postgres={"pgdata": str(fake_pgdata)})
    wal = fake_pgdata / "pg_wal" / SEGMENT
    push2 = _as_root(pitr_exe, cfg2, "archive-push", str(wal), cwd=Path("/"))
    assert push2.returncode == 15, push2.stderr
    setup = _as_root(pitr_exe, cfg2, "setup", cwd=Path("/"))
    assert setup.returncode == 15, setup.stderr


def test_root_over_its_own_directory_is_not_refused(pitr_config: Any, pitr_exe: Path,
                                                    testdir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as root")
    own = testdir / "rootdata"
    own.mkdir()
    (own / "PG_VERSION").write_text("15\n")
    res = _as_root(pitr_exe, pitr_config(), "archive-push", "pg_wal/" + SEGMENT, cwd=own)
    assert res.returncode != 15, res.stderr  # it fails (no such file), but not by refusal
