"""Clusters with tablespaces: backed up in one streamed pass, restored with remapping.

A real PostgreSQL 15 cluster with two tablespaces archives into the real S3 server.
Rows go into a table in each tablespace (one transaction writes both) before the
backup and, one by one with pauses, after it. A restore to a random time between two
commits with ``--tablespace-map`` must bring back exactly the rows committed by then,
in the relocated tablespaces (a table created in one after the backup too). The drill
relocates them into its scratch directory and must leave the original tablespace
directories untouched (names, sizes, mtimes, inodes compared). A restore without a
map into the occupied original locations is refused before anything is written. A
tablespace created after pitr listed them (so pg_basebackup sends an archive pitr has
no pipe for) fails the backup, and nothing of it lands on local disk.
docs/tablespaces.md describes all of it.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import run_pitr, s3_repo_for, write_config
from support.files import snapshot
from support.pgcluster import PG_USER, PgCluster, free_port, make_user_dir

from pitr import backup as backup_mod
from pitr import config as config_mod
from pitr.catalog import load_catalog
from pitr.errors import BackupError, IncrementalError, TablespaceError
from pitr.pg import basebackup as pgbb
from pitr.repo import Repo

pytestmark = [pytest.mark.integration, pytest.mark.s3]

PAUSE = 0.3


@dataclass
class Source:
    base: Path
    config: Path
    cluster: PgCluster
    spaces: dict[str, Path]  # tablespace name -> its directory
    backup_id: str
    before: int  # rows 1..before were committed before the backup
    commits: list[tuple[int, datetime, datetime]]  # (n, before commit, after commit)
    restored: list[PgCluster] = field(default_factory=list)


def _write(cluster: PgCluster, numbers: range) -> list[tuple[int, datetime, datetime]]:
    """One transaction per n writes it into both tablespaces' tables; clock readings
    before (inside the transaction) and after the commit."""
    out = []
    with cluster.connect(autocommit=False) as conn:
        for n in numbers:
            with conn.cursor() as cur:
                cur.execute("insert into in_a values (%s) returning clock_timestamp()", (n,))
                before = cur.fetchone()[0]  # type: ignore[index]
                cur.execute("insert into in_b values (%s, repeat('x', 200))", (n,))
            conn.commit()
            with conn.cursor() as cur:
                cur.execute("select clock_timestamp()")
                after = cur.fetchone()[0]  # type: ignore[index]
            conn.commit()
            out.append((n, before, after))
            time.sleep(PAUSE)
    return out


@pytest.fixture(scope="module")
def source(workdir: Path, s3_server: Any, pitr_exe: Path, pg_bindir: Path) -> Iterator[Source]:
    base = make_user_dir(workdir / f"tablespaces-{uuid.uuid4().hex[:6]}", mode=0o755)
    cluster = PgCluster(base, "src", bindir=pg_bindir)
    cfg = write_config(base / "pitr.toml", {
        "stanza": "spaces",
        "repository": s3_repo_for(s3_server),
        "archive": {"spool_dir": str(make_user_dir(base / "spool"))},
        "postgres": {"bindir": str(pg_bindir), "user": PG_USER, "dsn": cluster.dsn,
                     "pgdata": str(cluster.pgdata)},
        "verify": {"scratch_dir": str(make_user_dir(base / "scratch", mode=0o755)),
                   "amcheck": False},
    })
    # autovacuum off: nothing but the test touches the tablespaces between snapshots
    cluster.initdb(conf={"archive_mode": "on", "autovacuum": "off",
                         "archive_command": f"{pitr_exe} --config {cfg} archive-push %p"})
    restored: list[PgCluster] = []
    try:
        cluster.start()
        spaces = {name: make_user_dir(base / f"srv-{name}") for name in ("space_a", "space b")}
        for name, path in spaces.items():
            cluster.sql(f"create tablespace \"{name}\" location '{path}'")
        cluster.sql("create table in_a (n int primary key) tablespace space_a")
        cluster.sql('create table in_b (n int, pad text) tablespace "space b"')
        cluster.sql('create index in_b_n on in_b (n) tablespace "space b"')
        commits = _write(cluster, range(1, 4))
        summary = json.loads(run_pitr(cfg, "backup", "--json").stdout)
        # a relation created in a tablespace after the backup: a Storage record the
        # restore's WAL scan must accept, since that tablespace is restored
        cluster.sql("create table later tablespace space_a as select 7 as n")
        commits += _write(cluster, range(4, 10))
        last = cluster.switch_wal()
        cluster.wait_until(f"select last_archived_wal >= '{last}' from pg_stat_archiver "
                           "where last_archived_wal not like '%.%'", timeout=120)
        cluster.sql("checkpoint")
        yield Source(base, cfg, cluster, spaces, summary["id"], 3, commits, restored)
    finally:
        for c in [*restored, cluster]:
            c.stop("immediate")


def _catalog_backup(src: Source) -> Any:
    repo = Repo.open(config_mod.load(src.config))
    [rec] = [b for b in load_catalog(repo).backups if b.id == src.backup_id]
    return repo, rec


def test_the_backup_records_each_tablespace_and_its_archive(source: Source) -> None:
    repo, rec = _catalog_backup(source)
    oids = dict(source.cluster.sql("select spcname, oid from pg_tablespace "
                                   "where spcname like 'space%'"))
    assert {(t["name"], t["oid"], t["location"]) for t in rec.extra["tablespaces"]} == {
        (name, oids[name], str(path)) for name, path in source.spaces.items()}
    names = {o.name for o in rec.objects}
    assert names == {"base.tar.zst", *(f"tablespace-{oid}.tar.zst" for oid in oids.values())}
    for obj in rec.objects:  # each archive is whole in the repository
        assert repo.storage.stat(obj.key).size == obj.stored_bytes > 0
    assert rec.raw_bytes == sum(o.raw_bytes for o in rec.objects)
    assert rec.extra["backup_manifest_in_tar"] is False


def test_restore_to_a_random_time_with_a_tablespace_map_is_exact(source: Source) -> None:
    rng = random.Random()
    after = [c for c in source.commits if c[0] > source.before]
    k = rng.randrange(after[0][0], after[-1][0])  # between row k and row k+1
    a, b = source.commits[k - 1], source.commits[k]
    assert b[1] - a[2] > timedelta(milliseconds=100), "pauses too short to aim"
    target = a[2] + (b[1] - a[2]) / 2
    originals = {name: snapshot(path) for name, path in source.spaces.items()}
    moved = {name: source.base / f"restored-{name.replace(' ', '-')}"
             for name in source.spaces}
    maps = [a for name, path in source.spaces.items()
            for a in ("--tablespace-map", f"{path}={moved[name]}")]
    restored = PgCluster(source.base, "restored", bindir=source.cluster.bindir)
    restored.port = free_port()
    restored.socket_dir = source.cluster.socket_dir
    source.restored.append(restored)
    proc = run_pitr(source.config, "restore", "--to", target.isoformat(), "--pgdata",
                    str(restored.pgdata), "--start", "--port", str(restored.port), "--json",
                    *maps)
    doc = json.loads(proc.stdout)
    assert doc["restore"]["tablespaces"] == {n: str(p) for n, p in moved.items()}
    want = list(range(1, k + 1))
    assert [r[0] for r in restored.sql("select n from in_a order by n")] == want, k
    assert [r[0] for r in restored.sql("select n from in_b order by n")] == want, k
    assert dict(restored.sql("select spcname, pg_tablespace_location(oid) from pg_tablespace "
                             "where spcname like 'space%'")) == \
        {n: str(p) for n, p in moved.items()}
    assert restored.scalar("select n from later") == 7
    # the rows really are in the relocated directories
    assert restored.scalar("select count(*) from in_b where n < 0") == 0  # index usable
    for name, path in moved.items():
        assert any(p.is_file() and p.stat().st_size > 0 for p in path.rglob("*")), name
    assert {name: snapshot(path) for name, path in source.spaces.items()} == originals


def test_the_drill_relocates_every_tablespace_and_leaves_the_originals_untouched(
        source: Source) -> None:
    originals = {name: snapshot(path) for name, path in source.spaces.items()}
    assert all(any(k.count("/") >= 2 for k in snap) for snap in originals.values())
    proc = run_pitr(source.config, "verify", "--json", check=False)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = {c["name"]: c for c in report["checks"]}
    assert all(c["ok"] for c in report["checks"]), report["checks"]
    scratch = report["scratch"]["path"]
    detail = checks["tablespaces"]["detail"]
    for name in source.spaces:
        assert f"{name} -> {scratch}/tablespaces/" in detail, detail
    assert report["scratch"].get("removed") is True
    assert {name: snapshot(path) for name, path in source.spaces.items()} == originals


def test_a_restore_without_a_map_into_the_occupied_locations_is_refused(
        source: Source) -> None:
    originals = {name: snapshot(path) for name, path in source.spaces.items()}
    dest = source.base / "refused"
    proc = run_pitr(source.config, "restore", "--latest", "--pgdata", str(dest), check=False)
    assert proc.returncode == TablespaceError.exit_code, proc.stdout + proc.stderr
    assert "its original location, which is not empty" in proc.stderr, proc.stderr
    assert "--tablespace-map" in proc.stderr
    assert not dest.exists() or not any(dest.iterdir())  # refused before writing
    # a map naming no tablespace of the backup is refused too
    proc = run_pitr(source.config, "restore", "--latest", "--pgdata", str(dest),
                    "--tablespace-map", f"{source.base}/nowhere={source.base}/x", check=False)
    assert proc.returncode == TablespaceError.exit_code
    assert "no tablespace location of backup" in proc.stderr, proc.stderr
    assert {name: snapshot(path) for name, path in source.spaces.items()} == originals


def test_an_incremental_backup_of_a_cluster_with_tablespaces_is_refused(
        source: Source) -> None:
    proc = run_pitr(source.config, "backup", "--incremental", check=False)
    assert proc.returncode == IncrementalError.exit_code, proc.stdout + proc.stderr
    assert "the cluster has tablespaces" in proc.stderr


def test_a_tablespace_created_during_the_backup_fails_it(source: Source) -> None:
    """pitr listed the tablespaces, then one more was created before pg_basebackup
    started: its archive has no pipe, and pg_basebackup may write no local file."""
    cfg = config_mod.load(source.config)
    repo = Repo.open(cfg)
    listed = list(pgbb.list_tablespaces(cfg.postgres.dsn))
    late = make_user_dir(source.base / "srv-late")
    source.cluster.sql(f"create tablespace late location '{late}'")
    try:
        oid = source.cluster.scalar("select oid from pg_tablespace where spcname = 'late'")
        backup_id = f"late-{uuid.uuid4().hex[:6]}"
        opts = pgbb.BaseBackupOptions(bindir=str(source.cluster.bindir), dsn=cfg.postgres.dsn,
                                      label=f"pitr {backup_id}")
        with pytest.raises(BackupError) as caught:
            backup_mod.stream_with_tablespaces([repo], backup_id, opts, cfg, None, listed)
        message = caught.value.message
        assert "a tablespace was created" in message and f"{oid}.tar" in message, message
        assert "File too large" in str(caught.value.__cause__), caught.value.__cause__
        backup_mod.discard(repo, backup_id)
        assert list(repo.storage.list(repo.backup_prefix(backup_id))) == []
    finally:
        source.cluster.sql("drop tablespace late")


def test_pg_basebackup_refused_before_its_directory_check_is_reported(source: Source) -> None:
    """A role without REPLICATION: pg_basebackup's connection error comes before its
    directory check, while its stderr is held full; pitr must let it out and report it
    (not wait forever for the check)."""
    import tomllib

    source.cluster.sql("drop role if exists plain")
    source.cluster.sql("create role plain login in role pg_monitor")
    settings = tomllib.loads(source.config.read_text())
    settings["postgres"]["dsn"] = f"{source.cluster.dsn} user=plain"
    cfg = write_config(source.base / "plain.toml", settings)
    proc = run_pitr(cfg, "backup", check=False, timeout=300)
    assert proc.returncode == BackupError.exit_code, proc.stdout + proc.stderr
    assert "must be superuser or replication role" in proc.stderr, proc.stderr
