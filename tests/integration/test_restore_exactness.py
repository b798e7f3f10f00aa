"""EXACTNESS: `pitr restore --to T --start` brings back exactly the rows committed at or
before T, against a real PostgreSQL 15 cluster archiving into a real S3 server.

One source cluster, one backup and one workload serve every test of this module
(each restore starts a cluster, so their number is kept small). The workload
commits numbered rows one transaction at a time with pauses and records, per
row, a clock reading before the commit (inside the transaction) and after it
returned. A target T strictly between "after row k" and "before row k+1" must
restore rows 1..k: no more, no less.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import run_pitr, s3_repo_for, write_config
from support.pgcluster import PG_USER, PgCluster, free_port, make_user_dir

from pitr import config as config_mod
from pitr.repo import Repo
from pitr.storage.base import put_bytes, read_bytes

pytestmark = [pytest.mark.integration, pytest.mark.s3]

PAUSE = 0.3


@dataclass
class Row:
    n: int
    before: datetime  # clock_timestamp() inside the transaction: commit is later
    after: datetime  # clock_timestamp() after COMMIT returned: commit was earlier


@dataclass
class Source:
    base: Path
    config: Path
    cluster: PgCluster
    rows: list[Row]
    segments: dict[str, list[int]]  # segment name -> rows committed in it
    restored: list[PgCluster] = field(default_factory=list)

    def between(self, k: int, rows: list[Row] | None = None) -> datetime:
        """A time after row k committed and before row k+1 did."""
        rows = rows or self.rows
        a = next(r for r in rows if r.n == k)
        b = rows[rows.index(a) + 1]
        assert b.before - a.after > timedelta(milliseconds=100), "pauses too short to aim"
        return a.after + (b.before - a.after) / 2


def write_rows(cluster: PgCluster, numbers: range) -> list[Row]:
    out = []
    with cluster.connect(autocommit=False) as conn:
        for n in numbers:
            with conn.cursor() as cur:
                cur.execute("insert into t values (%s, clock_timestamp()) returning ts", (n,))
                before = cur.fetchone()[0]  # type: ignore[index]
            conn.commit()
            with conn.cursor() as cur:
                cur.execute("select clock_timestamp()")
                after = cur.fetchone()[0]  # type: ignore[index]
            conn.commit()
            out.append(Row(n, before, after))
            time.sleep(PAUSE)
    return out


def switch_and_wait(cluster: PgCluster) -> str:
    seg = cluster.switch_wal()
    cluster.wait_until(f"select last_archived_wal >= '{seg}' from pg_stat_archiver "
                       "where last_archived_wal not like '%.%'", timeout=120)
    return seg


@pytest.fixture(scope="module")
def source(workdir: Path, s3_server: Any, pitr_exe: Path, pg_bindir: Path) -> Iterator[Source]:
    base = make_user_dir(workdir / f"exactness-{uuid.uuid4().hex[:6]}", mode=0o755)
    cluster = PgCluster(base, "src", bindir=pg_bindir)
    cfg = write_config(base / "pitr.toml", {
        "stanza": "exact",
        "repository": s3_repo_for(s3_server),
        "archive": {"spool_dir": str(make_user_dir(base / "spool"))},
        "postgres": {"bindir": str(pg_bindir), "user": PG_USER, "dsn": cluster.dsn,
                     "pgdata": str(cluster.pgdata)},
    })
    cluster.initdb(conf={"archive_mode": "on",
                         "archive_command": f"{pitr_exe} --config {cfg} archive-push %p"})
    src = Source(base, cfg, cluster, [], {})
    try:
        cluster.start()
        cluster.sql("create table t (n int primary key, ts timestamptz not null)")
        run_pitr(cfg, "backup")
        # three batches in three segments, so one can be removed from the middle
        for batch in (range(1, 5), range(5, 9), range(9, 13)):
            rows = write_rows(cluster, batch)
            src.rows += rows
            src.segments[switch_and_wait(cluster)] = [r.n for r in rows]
        yield src
    finally:
        for c in [*src.restored, cluster]:
            c.stop("immediate")


def restore(src: Source, name: str, *args: str, user: str | None = PG_USER,
            check: bool = True) -> tuple[PgCluster, dict[str, Any]]:
    """`pitr restore ... --start --json` into a fresh directory; the restored cluster."""
    target = PgCluster(src.base, name, bindir=src.cluster.bindir)
    target.port = free_port()
    target.socket_dir = src.cluster.socket_dir  # the restored copy keeps the source's setting
    proc = run_pitr(src.config, "restore", "--pgdata", str(target.pgdata), "--start", "--port",
                    str(target.port), "--json", *args, user=user, check=check)
    src.restored.append(target)
    doc = json.loads(proc.stdout) if proc.returncode == 0 else {"stderr": proc.stderr}
    return target, doc


def numbers(cluster: PgCluster) -> list[int]:
    return [r[0] for r in cluster.sql("select n from t order by n")]


@pytest.mark.pg_versions(15, 18)
@pytest.mark.parametrize(("k", "action", "as_root"),
                         [(2, "pause", False), (6, "promote", True), (11, "promote", False)])
def test_restore_to_time_between_commits_is_exact(source: Source, k: int, action: str,
                                                  as_root: bool) -> None:
    t = source.between(k)
    restored, doc = restore(source, f"r{k}", "--to", t.isoformat(), "--target-action", action,
                            user=None if as_root else PG_USER)
    assert numbers(restored) == list(range(1, k + 1))
    reached = doc["restore"]["reached"]
    assert doc["plan"]["timeline"] == 1
    if action == "pause":
        assert reached["state"] == "paused" and reached["timeline"] == 1
        assert restored.scalar("select pg_is_in_recovery()") is True
    else:
        # a promoted copy picks the next free timeline (2, or 3 once another test made 2)
        assert reached["state"] == "promoted" and reached["timeline"] >= 2
        assert not (restored.pgdata / "recovery.signal").exists()
    last_tx = datetime.fromisoformat(reached["last_replayed_transaction_time"])
    assert last_tx <= t
    assert doc["restore"]["recovery_settings"]["archive_mode"] == "off"
    if as_root:  # root restores on behalf of the cluster user
        assert restored.pgdata.stat().st_uid != 0
        assert (restored.pgdata / "PG_VERSION").stat().st_uid == restored.pgdata.stat().st_uid


def test_timeline_two_and_timeline_one_after_the_branch(source: Source) -> None:
    # R: restore to between rows 4 and 5, promote (timeline 2), keep archiving into the stanza
    t_branch = source.between(4)
    r, doc = restore(source, "tl2", "--to", t_branch.isoformat(), "--archive-mode", "preserve")
    assert numbers(r) == [1, 2, 3, 4]
    assert doc["restore"]["reached"]["timeline"] == 2
    assert doc["plan"]["timeline"] == 1
    # The archive dates a timeline by its history file (written at promotion, time kept
    # by archive-push); rows written once it is archived are surely on the new branch.
    # The rows come within a second of the archiving: S3's stored times alone, truncated
    # to the second, would not tell (a CI failure before the history file's time was kept).
    r.wait_until("select archived_count > 0 from pg_stat_archiver", timeout=120)
    new_rows = write_rows(r, range(101, 107))
    switch_and_wait(r)

    # a point on timeline 2: rows 1..4 from timeline 1, then 101..103 from timeline 2
    t2 = source.between(103, new_rows)
    on2, doc = restore(source, "on-tl2", "--to", t2.isoformat())
    assert numbers(on2) == [1, 2, 3, 4, 101, 102, 103]
    plan = doc["plan"]
    assert plan["timeline"] == 2
    assert [s["timeline"] for s in plan["timeline_path"]] == [1, 2]
    assert any(s.startswith("00000002") for s in plan["wal"]["segments"])

    # a point on timeline 1 after the branch point, before timeline 2 existed: rows 1..8
    t1 = source.between(8)
    on1, doc = restore(source, "on-tl1", "--to", t1.isoformat())
    assert numbers(on1) == list(range(1, 9))
    assert doc["plan"]["timeline"] == 1
    assert all(s.startswith("00000001") for s in doc["plan"]["wal"]["segments"])
    assert doc["plan"]["recovery_settings"]["recovery_target_timeline"] == "1"


def test_immediate_and_latest_plans(source: Source) -> None:
    imm = json.loads(run_pitr(source.config, "plan", "--immediate", "--json").stdout)
    assert imm["recovery_settings"]["recovery_target"] == "immediate"
    assert imm["wal"]["count"] == 1  # the backup's own WAL, nothing after it
    latest = json.loads(run_pitr(source.config, "plan", "--latest", "--timeline", "1",
                                 "--json").stdout)
    assert latest["wal"]["last"] == max(source.segments)


def _plan_error(src: Source, *args: str) -> str:
    proc = run_pitr(src.config, "plan", *args, check=False)
    assert proc.returncode == 11, proc.stdout + proc.stderr
    return proc.stderr


def test_target_before_the_first_backup(source: Source) -> None:
    err = _plan_error(source, "--to", (source.rows[0].before - timedelta(hours=1)).isoformat())
    assert "before the earliest restorable point" in err and "HINT:" in err
    # restore refuses the same way, before touching the directory
    target = source.base / "never"
    proc = run_pitr(source.config, "restore", "--pgdata", str(target), "--to",
                    (source.rows[0].before - timedelta(hours=1)).isoformat(), check=False)
    assert proc.returncode == 11 and not target.exists()


def test_target_after_the_archive(source: Source) -> None:
    now = source.cluster.scalar("select clock_timestamp()")
    err = _plan_error(source, "--to", now.isoformat(), "--timeline", "1")
    assert "later than the archived WAL" in err and "behind" in err


@pytest.mark.pg_versions(15, 18)
def test_deleted_segment_in_the_middle(source: Source) -> None:
    cfg = config_mod.load(source.config, env={})
    repo = Repo.open(cfg)
    middle = next(s for s, rows in source.segments.items() if 5 in rows)
    key = repo.wal_key(middle)
    saved = read_bytes(repo.storage, key)
    repo.storage.delete([key])
    try:
        err = _plan_error(source, "--to", source.between(10).isoformat(), "--timeline", "1")
        assert f"WAL segment {middle} is missing" in err
        # a target before the gap is still fine
        run_pitr(source.config, "plan", "--to", source.between(3).isoformat(), "--timeline", "1")
    finally:
        put_bytes(repo.storage, key, saved)


def test_restore_refuses_a_non_empty_directory(source: Source) -> None:
    target = make_user_dir(source.base / "busy" / "data")
    (target / "precious").write_text("not a data directory")
    proc = run_pitr(source.config, "restore", "--pgdata", str(target), "--latest", check=False)
    assert proc.returncode == 13, proc.stderr
    assert "is not empty" in proc.stderr and "--force" in proc.stderr
    assert (target / "precious").read_text() == "not a data directory"
