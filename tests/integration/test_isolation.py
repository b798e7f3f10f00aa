"""The restore drill and restores never write outside their own directory.

A real PostgreSQL 15 cluster archives to a local repository; after its backup it
creates a tablespace in a directory next to it (the production host's /srv/ts),
writes into it and checkpoints. `pitr verify` must refuse to replay that WAL and
name the record; `pitr restore` on the same host must refuse the occupied
tablespace location. Production's tablespace files (names, sizes, mtimes,
inodes) are compared before and after: the test fails if any changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_pitr, write_config
from support.files import snapshot
from support.pgcluster import PG_BINDIR, PG_USER, PgCluster, make_user_dir

from pitr.errors import CheckFailed, TargetDirError

pytestmark = [pytest.mark.integration]


@dataclass
class Prod:
    cluster: PgCluster
    cfg: Path
    base: Path
    ts: Path


@pytest.fixture(scope="module")
def prod(workdir: Path, pitr_exe: Path) -> Iterator[Prod]:
    base = make_user_dir(workdir / "isolation", mode=0o755)
    cluster = PgCluster(base, "prod")
    cfg = write_config(base / "pitr.toml", {
        "stanza": "iso",
        "repository": {"url": f"file://{make_user_dir(base / 'repo')}", "timeout": 20},
        "archive": {"spool_dir": str(make_user_dir(base / "spool"))},
        "postgres": {"bindir": str(PG_BINDIR), "user": PG_USER, "dsn": cluster.dsn,
                     "pgdata": str(cluster.pgdata)},
        "verify": {"scratch_dir": str(make_user_dir(base / "scratch", mode=0o755)),
                   "amcheck": False},
    })
    # autovacuum off: nothing but the test may touch the tablespace between snapshots
    cluster.initdb(conf={"archive_mode": "on", "autovacuum": "off",
                         "archive_command": f"{pitr_exe} --config {cfg} archive-push %p"})
    cluster.start()
    try:
        cluster.sql("create table before (n int); insert into before values (1)")
        run_pitr(cfg, "backup", "--json")
        ts = make_user_dir(base / "srv-ts")  # the production tablespace, owned by pgtest
        cluster.sql(f"create tablespace ts location '{ts}'")
        cluster.sql("create table live (n int, body text) tablespace ts")
        cluster.sql("insert into live select g, md5(g::text) from generate_series(1, 2000) g")
        cluster.sql("update live set body = 'updated' where n % 3 = 0")
        cluster.sql("checkpoint")
        last = cluster.switch_wal()
        cluster.wait_until(f"select last_archived_wal >= '{last}' from pg_stat_archiver")
        cluster.sql("checkpoint")
        yield Prod(cluster, cfg, base, ts)
    finally:
        cluster.stop("immediate")


def test_the_drill_refuses_wal_that_uses_a_tablespace_and_leaves_production_alone(
        prod: Prod) -> None:
    before = snapshot(prod.ts)
    assert any(k.count("/") >= 2 for k in before), before  # PG_15_*/<db>/<relfile>
    proc = run_pitr(prod.cfg, "verify", "--json", check=False)
    assert proc.returncode == CheckFailed.exit_code, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    failed = {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}
    assert set(failed) == {"restore"}, failed
    detail = failed["restore"]
    oid = prod.cluster.scalar("select oid from pg_tablespace where spcname = 'ts'")
    assert f"touches tablespace {oid}" in detail and "Tablespace record at" in detail
    assert f'CREATE {oid} "{prod.ts}"' in detail
    assert "outside the drill's scratch directory" in detail
    assert report["scratch"].get("removed") is True
    assert not Path(report["scratch"]["path"]).exists()
    assert snapshot(prod.ts) == before
    assert prod.cluster.scalar("select count(*) from live where body = 'updated'") == 666


def test_a_restore_into_an_occupied_tablespace_location_is_refused(prod: Prod) -> None:
    before = snapshot(prod.ts)
    dest = prod.base / "restored"
    proc = run_pitr(prod.cfg, "restore", "--latest", "--pgdata", str(dest), check=False)
    assert proc.returncode == TargetDirError.exit_code, proc.stdout + proc.stderr
    assert "creates tablespace" in proc.stderr and f"in {prod.ts}, which is not empty" \
        in proc.stderr, proc.stderr
    assert not dest.exists() or not any(dest.iterdir())  # refused before writing
    assert snapshot(prod.ts) == before
