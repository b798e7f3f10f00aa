"""`pitr setup` on a real, freshly initialised PostgreSQL 15 cluster, then `pitr check`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run_pitr

from pitr import config
from pitr.security import loose_modes
from pitr.setup import ARCHIVE_PUSH_SH, proof_dir_of

pytestmark = pytest.mark.integration


def _settings(pg: Any) -> dict[str, str]:
    names = ["wal_level", "archive_mode", "archive_command", "archive_timeout",
             "restore_command", "max_wal_senders"]
    return dict(pg.sql("select name, current_setting(name) from pg_settings "
                       "where name = any(%s)", [names]))


def test_setup_apply_then_check_passes(pg_factory: Any, pitr_config: Any, pitr_exe: Path,
                                       local_repo: Path) -> None:
    # The most work setup can meet: wal_level minimal needs a change and a restart too.
    pg = pg_factory(conf={"wal_level": "minimal", "max_wal_senders": 0})
    pg.start()
    cfg = pitr_config(postgres={"dsn": pg.dsn, "pgdata": str(pg.pgdata)})
    before = _settings(pg)

    dry = json.loads(run_pitr(cfg, "setup", "--json").stdout)
    assert dry["applied"] is False and dry["check"]["status"] == "skipped"
    changed = {s["name"]: s for s in dry["settings"] if s["change"]}
    assert {"wal_level", "archive_mode", "archive_command", "archive_timeout",
            "max_wal_senders", "restore_command"} <= set(changed)
    assert _settings(pg) == before, "a dry run must not change the server"
    assert not (local_repo / "test" / "repo.json").exists()

    out = json.loads(run_pitr(cfg, "setup", "--apply", "--json").stdout)
    assert out["restart_needed"] is True
    assert out["check"]["status"] == "pending"
    assert out["stanza"]["status"] == "created"
    ident = json.loads((local_repo / "test" / "repo.json").read_text())
    assert ident["system_id"] == str(pg.scalar("select system_identifier from "
                                               "pg_control_system()"))
    assert ident["pg_version"] == 15 and ident["segment_size"] == 16 << 20
    assert _settings(pg)["archive_mode"] == "off", "setup must not restart PostgreSQL itself"

    text = run_pitr(cfg, "setup", "--apply")  # idempotent, and says what to do next
    assert "RESTART NEEDED" in text.stdout

    pg.stop()
    pg.start()
    now = _settings(pg)
    assert now["archive_mode"] == "on" and now["wal_level"] == "replica"
    # through pitr/archive-push.sh, which runs this same command when the agent has no proof
    proofs = proof_dir_of(config.load(cfg, env={}))
    assert now["archive_command"] == (f"/bin/sh {ARCHIVE_PUSH_SH} {proofs} %p "
                                      f"{pitr_exe} --config {cfg}")
    assert now["restore_command"] == f"{pitr_exe} --config {cfg} archive-get %f %p"
    assert now["archive_timeout"] == "1min"
    check = run_pitr(cfg, "check", check=False)
    assert check.returncode == 0, check.stdout + check.stderr

    # Once everything is in place, setup changes nothing and runs the check itself.
    again = json.loads(run_pitr(cfg, "setup", "--apply", "--json").stdout)
    assert not [s["name"] for s in again["settings"] if s["change"]]
    assert again["restart_needed"] is False and again["stanza"]["status"] == "exists"
    assert again["check"]["status"] == "passed", again["check"]
    text_again = run_pitr(cfg, "setup", "--apply").stdout
    assert "archive_mode: ok ('on')" in text_again and "check: passed" in text_again
    assert pg.archiver_stats()["failed_count"] == 0

    # What pitr wrote is private: 0600 files, 0700 directories (repository, spool, %p).
    dest = pg.base / "fetched"
    run_pitr(cfg, "archive-get", pg.archiver_stats()["last_archived_wal"], str(dest))
    assert (dest.stat().st_mode & 0o777) == 0o600
    assert loose_modes(local_repo) == []
    spool = Path(str(cfg)).parent / "spool"
    if spool.exists():
        assert loose_modes(spool) == []


def test_setup_refuses_a_stanza_of_another_cluster(pg_factory: Any, pitr_config: Any,
                                                   local_repo: Path) -> None:
    pg = pg_factory()
    pg.start()
    cfg = pitr_config(postgres={"dsn": pg.dsn})
    stanza = local_repo / "test"
    stanza.mkdir()
    (stanza / "repo.json").write_text(json.dumps(
        {"system_id": "1234", "pg_version": 15, "segment_size": 16 << 20, "format": 1,
         "created": ""}))
    res = run_pitr(cfg, "setup", check=False)
    assert res.returncode == 8, res.stderr
    assert "1234" in res.stderr and "HINT" in res.stderr
    assert _settings(pg)["archive_mode"] == "off"


def test_setup_needs_a_config_file(pg_factory: Any, testdir: Path, pitr_exe: Path) -> None:
    from support.pgcluster import run_as

    res = run_as([str(pitr_exe), "--config", str(testdir / "absent.toml"), "setup"],
                 check=False)
    assert res.returncode == 3
    assert "absent.toml" in res.stderr
