"""Incremental backups (docs/incremental-backups.md) on a real PostgreSQL 18 cluster archiving
into a real S3 server (SeaweedFS): a full backup, two incrementals with writes between them,
and restores rebuilt by pg_combinebackup, exact to the row.

One cluster, one stanza and one chain serve the module (each restore starts a cluster, so
their number is kept small); a test that damages an object puts it back. The expiry test
writes a synthetic chain history of its own (no cluster) and the PostgreSQL 15 refusal uses
a small cluster of its own.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import run_pitr, s3_repo_for, write_config
from support.dates import today
from support.pgcluster import PG_USER, PgCluster, bindir_for, free_port, make_user_dir
from test_restore_exactness import Row, numbers, switch_and_wait, write_rows

from pitr import config as config_mod
from pitr import manifest
from pitr.catalog import load_catalog
from pitr.chains import BACKUP_MANIFEST_OBJECT, chains
from pitr.errors import IncrementalError, PlanError
from pitr.expire import run_expire
from pitr.manifest import BackupObject, BackupRecord
from pitr.pg.names import segment_name
from pitr.repo import Repo
from pitr.storage.base import put_bytes, read_bytes

pytestmark = [pytest.mark.integration, pytest.mark.s3, pytest.mark.pg_versions(18)]


@dataclass
class Chain:
    base: Path
    config: Path
    cluster: PgCluster
    repo: Repo
    backups: list[dict[str, Any]]  # full, incremental, incremental (pitr backup --json)
    rows: list[Row]
    restored: list[PgCluster] = field(default_factory=list)

    def between(self, k: int) -> datetime:
        a = next(r for r in self.rows if r.n == k)
        b = self.rows[self.rows.index(a) + 1]
        return a.after + (b.before - a.after) / 2


def backup(cfg: Path, *args: str) -> dict[str, Any]:
    return json.loads(run_pitr(cfg, "backup", "--json", *args).stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def chain(workdir: Path, s3_server: Any, pitr_exe: Path, pg_bindir: Path) -> Iterator[Chain]:
    base = make_user_dir(workdir / f"incremental-{uuid.uuid4().hex[:6]}", mode=0o755)
    cluster = PgCluster(base, "src", bindir=pg_bindir)
    cfg = write_config(base / "pitr.toml", {
        "stanza": "incr",
        "repository": s3_repo_for(s3_server),
        "archive": {"spool_dir": str(make_user_dir(base / "spool"))},
        "postgres": {"bindir": str(pg_bindir), "user": PG_USER, "dsn": cluster.dsn,
                     "pgdata": str(cluster.pgdata)},
    })
    cluster.initdb(conf={"archive_mode": "on", "summarize_wal": "on",
                         "archive_command": f"{pitr_exe} --config {cfg} archive-push %p"})
    loaded = config_mod.load(cfg, env={})
    src = Chain(base, cfg, cluster, Repo.open(loaded), [], [])
    try:
        cluster.start()
        # a cold table the incrementals must not copy again, and the table the rows go to
        cluster.sql("create table cold as select g, repeat('x', 200) as pad "
                    "from generate_series(1, 40000) g")
        cluster.sql("create table t (n int primary key, ts timestamptz not null)")
        src.backups.append(backup(cfg))
        for batch in (range(1, 5), range(5, 9)):
            src.rows += write_rows(cluster, batch)
            src.backups.append(backup(cfg, "--incremental"))
        src.rows += write_rows(cluster, range(9, 13))
        switch_and_wait(cluster)
        yield src
    finally:
        for c in [*src.restored, cluster]:
            c.stop("immediate")


def test_incrementals_form_a_chain_that_list_shows(chain: Chain) -> None:
    full, inc1, inc2 = chain.backups
    assert (full["type"], full["parent"]) == ("full", None)
    assert (inc1["type"], inc1["parent"]) == ("incremental", full["id"])
    assert (inc2["type"], inc2["parent"]) == ("incremental", inc1["id"])
    # only the changed blocks travel: the 40 000 cold rows are in the full backup alone
    assert inc1["raw_bytes"] < full["raw_bytes"] / 2 and inc2["raw_bytes"] < full["raw_bytes"] / 2
    doc = json.loads(run_pitr(chain.config, "list", "--json").stdout)
    by_id = {b["id"]: b for b in doc["backups"]}
    assert by_id[inc2["id"]]["chain"] == [full["id"], inc1["id"], inc2["id"]]
    assert all(b["chain_whole"] for b in doc["backups"])
    text = run_pitr(chain.config, "list").stdout
    assert f"chain {full['id']} <- {inc1['id']} <- {inc2['id']}" in text
    # each backup keeps PostgreSQL's backup_manifest: the parent of the next incremental
    for b in chain.backups:
        objs = {o.name for o in _record(chain, b["id"]).objects}
        assert BACKUP_MANIFEST_OBJECT in objs


def _record(chain: Chain, backup_id: str) -> BackupRecord:
    return manifest.decode(read_bytes(chain.repo.storage, chain.repo.manifest_key(backup_id)))


def test_restore_to_a_random_time_after_the_second_incremental_is_exact(chain: Chain) -> None:
    k = random.Random().choice([9, 10, 11])
    t = chain.between(k)
    target = PgCluster(chain.base, f"r{k}", bindir=chain.cluster.bindir)
    target.port = free_port()
    target.socket_dir = chain.cluster.socket_dir
    chain.restored.append(target)
    proc = run_pitr(chain.config, "restore", "--pgdata", str(target.pgdata), "--to",
                    t.isoformat(), "--start", "--port", str(target.port), "--json")
    doc = json.loads(proc.stdout)
    ids = [b["id"] for b in chain.backups]
    assert [c["id"] for c in doc["plan"]["chain"]] == ids, f"k={k}"
    assert doc["restore"]["chain"] == ids
    assert numbers(target) == list(range(1, k + 1)), f"target after row {k}"
    assert target.scalar("select count(*) from cold") == 40000
    # the staging directory of the chain is gone
    assert not list(chain.base.glob(".r*.pitr-chain-*"))


def test_the_drill_verifies_the_chain(chain: Chain) -> None:
    proc = run_pitr(chain.config, "verify", "--json", check=False)
    report = json.loads(proc.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert proc.returncode == 0, report["checks"]
    assert checks["chain"]["ok"] and chain.backups[0]["id"] in checks["chain"]["detail"]
    verified = checks["pg_verifybackup"]["detail"]
    assert all(b["id"] in verified for b in chain.backups)  # each member, then the result
    assert "data" in verified


def test_a_damaged_parent_is_refused_with_the_reason(chain: Chain) -> None:
    full, inc1, inc2 = chain.backups
    key = chain.repo.manifest_key(inc1["id"])
    saved = read_bytes(chain.repo.storage, key)
    put_bytes(chain.repo.storage, key, b"{ not json")
    try:
        proc = run_pitr(chain.config, "plan", "--latest", "--backup", inc2["id"], check=False)
        assert proc.returncode == PlanError.exit_code, proc.stderr
        assert (f"backup {inc2['id']} is incremental on backup {inc1['id']}, but its manifest "
                "is damaged") in proc.stderr
        # without --backup the plan falls back to the whole chain before it, and says why
        doc = json.loads(run_pitr(chain.config, "plan", "--latest", "--json").stdout)
        assert doc["backup"]["id"] == full["id"]
        assert any(f"backup {inc2['id']} is skipped" in n for n in doc["notes"])
        # and no incremental is taken on a broken chain
        proc = run_pitr(chain.config, "backup", "--incremental", check=False)
        assert proc.returncode == IncrementalError.exit_code, proc.stderr
        assert "chain is broken" in proc.stderr and "take a full backup" in proc.stderr
    finally:
        put_bytes(chain.repo.storage, key, saved)

    # the parent's backup_manifest damaged: refused, and nothing written as a backup
    bm = chain.repo.backup_prefix(inc2["id"]) + BACKUP_MANIFEST_OBJECT
    saved = read_bytes(chain.repo.storage, bm)
    put_bytes(chain.repo.storage, bm, saved[:-7] + b"garbage")
    try:
        proc = run_pitr(chain.config, "backup", "--incremental", check=False)
        assert proc.returncode == IncrementalError.exit_code, proc.stderr
        assert f"parent backup {inc2['id']}'s backup_manifest is unusable" in proc.stderr
        assert "take a full backup" in proc.stderr
    finally:
        put_bytes(chain.repo.storage, bm, saved)
    cat = load_catalog(chain.repo)
    assert [b.id for b in cat.backups] == [b["id"] for b in chain.backups]
    assert cat.incomplete_backups == ()


def test_wal_summaries_off_is_refused_with_the_hint(chain: Chain) -> None:
    chain.cluster.sql("alter system set summarize_wal = off")
    chain.cluster.sql("select pg_reload_conf()")
    try:
        chain.cluster.wait_until("select current_setting('summarize_wal') = 'off'")
        proc = run_pitr(chain.config, "backup", "--incremental", check=False)
        assert proc.returncode == IncrementalError.exit_code, proc.stderr
        assert "summarize_wal is off" in proc.stderr and "take a full backup" in proc.stderr
    finally:
        chain.cluster.sql("alter system reset summarize_wal")
        chain.cluster.sql("select pg_reload_conf()")


def test_a_scheduled_backup_is_incremental_until_the_full_one_is_due(chain: Chain) -> None:
    """backup.full_interval (7 days by default): the chain's full backup is minutes old."""
    doc = backup(chain.config, "--label", "scheduled")
    assert (doc["type"], doc["parent"]) == ("incremental", chain.backups[-1]["id"])


# -- expiry over a synthetic chain history ---------------------------------------------

SEG = 16 * 1024 * 1024
SYSTEM_ID = 7300000000000000017


def _chain_history(end: date, days: int) -> list[BackupRecord]:
    """One backup a day at 01:00 UTC: a full one on Sundays, incremental the other days
    (each on the day before), as the default schedule takes them."""
    out: list[BackupRecord] = []
    first = end - timedelta(days=days - 1)
    for i in range(days):
        d = first + timedelta(days=i)
        stop = datetime(d.year, d.month, d.day, 1, 0, tzinfo=UTC)
        bid = stop.strftime("%Y%m%dT%H%M%SZ")
        full = d.weekday() == 6 or not out
        objs = tuple(BackupObject(n, f"incr-exp/backups/{bid}/{n}", 10, 10, "0" * 64)
                     for n in ("base.tar.zst", BACKUP_MANIFEST_OBJECT))
        out.append(BackupRecord(
            id=bid, label="scheduled", start_lsn=(i + 1) * SEG + 0x28,
            stop_lsn=(i + 1) * SEG + 0x100, start_time=stop - timedelta(minutes=10),
            stop_time=stop, timeline=1, system_id=str(SYSTEM_ID), pg_version=18,
            db_size=10, raw_bytes=10, stored_bytes=20, objects=objs,
            extra={} if full else {"parent": out[-1].id}))
    return out


def test_expire_keeps_every_parent_of_a_kept_incremental(s3_server: Any, testdir: Path) -> None:
    cfg_path = write_config(testdir / "pitr.toml", {
        "stanza": "incr-exp", "repository": s3_repo_for(s3_server, f"exp-{uuid.uuid4().hex[:6]}"),
        "retention": {"daily": 3, "weekly": 3, "monthly": 3, "min_backups": 1}})
    cfg = config_mod.load(cfg_path, env={})
    repo = Repo.open(cfg)
    repo.ensure_identity(SYSTEM_ID, 18, SEG)
    end = today()
    history = _chain_history(end, 100)
    for b in history:
        for o in b.objects:
            put_bytes(repo.storage, o.key, b"x" * 10)
    for n in range(len(history) + 2):
        put_bytes(repo.storage, repo.wal_key(segment_name(1, n, SEG)), b"w")
    for b in history:
        put_bytes(repo.storage, repo.manifest_key(b.id), manifest.encode(b))

    result = run_expire(cfg, now=datetime(end.year, end.month, end.day, 12, tzinfo=UTC))
    kept = {k.backup.id: k.reasons for k in result.decision.kept}
    by_id = {b.id: b for b in history}
    # every tier picked an incremental (the first backup of a week is a Monday's, of a
    # month rarely a Sunday's), and kept its chain back to the Sunday's full backup
    for tier in ("daily", "weekly", "monthly"):
        assert any(tier in r and by_id[i].parent for i, r in kept.items()), tier
    assert any(r == ("chain",) for r in kept.values())
    after = load_catalog(repo)
    assert {b.id for b in after.backups} == set(kept)
    assert all(c.whole for c in chains(after.backups, after).values())
    assert result.decision.deleted  # older chains went
    # a second run deletes nothing more
    again = run_expire(cfg, now=datetime(end.year, end.month, end.day, 12, tzinfo=UTC))
    assert not again.decision.deleted


# -- PostgreSQL 15 ---------------------------------------------------------------------

@pytest.mark.pg_versions(15)
def test_incremental_is_refused_on_postgresql_15(pg_factory: Any, pitr_config: Any,
                                                 pitr_exe: Path) -> None:
    assert bindir_for(15) is not None
    pg = pg_factory("pg15")
    cfg = pitr_config(postgres={"dsn": pg.dsn})
    pg.configure({"archive_mode": "on",
                  "archive_command": f"{pitr_exe} --config {cfg} archive-push %p"})
    pg.start()
    proc = run_pitr(cfg, "backup", "--incremental", check=False)
    assert proc.returncode == IncrementalError.exit_code, proc.stderr
    assert "PostgreSQL 15" in proc.stderr and "PostgreSQL 17 or later" in proc.stderr
    assert "take a full backup" in proc.stderr
    # a scheduled run on 15 simply takes a full backup
    doc = json.loads(run_pitr(cfg, "backup", "--label", "scheduled", "--json").stdout)
    assert doc["type"] == "full" and "PostgreSQL 15" in doc["why"]
