"""After expiry a real restore into the kept window works, and the expired past is gone.

A real PostgreSQL 15 cluster archives to a real S3 server (SeaweedFS). Three backups
A, B, C; the scheduled one (C) expires after itself (backup.expire_after) with tiers that
keep two backups: A and the WAL before B go. Then `pitr restore --to T` for a T between
B and C brings back exactly the rows committed before T, and a target before B is refused.
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
from support.pgcluster import PG_BINDIR, PG_USER, PgCluster, free_port, make_user_dir

from pitr import config as config_mod
from pitr.catalog import load_catalog
from pitr.repo import Repo

pytestmark = [pytest.mark.integration, pytest.mark.s3]


@dataclass
class Src:
    base: Path
    cfg: Path
    cluster: PgCluster
    times: dict[int, datetime] = field(default_factory=dict)  # row -> after its commit
    restored: list[PgCluster] = field(default_factory=list)

    def repo(self) -> Repo:
        cfg = config_mod.load(self.cfg, env={})
        return Repo.open(cfg)

    def rows(self, numbers: range) -> None:
        for n in numbers:
            self.cluster.sql(f"insert into t values ({n})")
            self.times[n] = self.cluster.scalar("select clock_timestamp()")
            time.sleep(0.3)

    def switch(self) -> None:
        seg = self.cluster.switch_wal()
        self.cluster.wait_until(f"select last_archived_wal >= '{seg}' from pg_stat_archiver "
                                "where last_archived_wal not like '%.%'", timeout=120)

    def backup(self, *args: str) -> dict[str, Any]:
        return json.loads(run_pitr(self.cfg, "backup", "--json", *args).stdout)


@pytest.fixture
def src(workdir: Path, s3_server: Any, pitr_exe: Path) -> Iterator[Src]:
    base = make_user_dir(workdir / f"expire-restore-{uuid.uuid4().hex[:6]}", mode=0o755)
    cluster = PgCluster(base, "src")
    cfg = write_config(base / "pitr.toml", {
        "stanza": "expr",
        "repository": s3_repo_for(s3_server),
        "archive": {"spool_dir": str(make_user_dir(base / "spool"))},
        "postgres": {"bindir": str(PG_BINDIR), "user": PG_USER, "dsn": cluster.dsn,
                     "pgdata": str(cluster.pgdata)},
        # one daily backup, nothing weekly/monthly, but never fewer than two backups
        "retention": {"daily": 1, "weekly": 0, "monthly": 0, "min_backups": 2},
    })
    cluster.initdb(conf={"archive_mode": "on",
                         "archive_command": f"{pitr_exe} --config {cfg} archive-push %p"})
    s = Src(base, cfg, cluster)
    try:
        cluster.start()
        cluster.sql("create table t (n int primary key)")
        yield s
    finally:
        for c in [*s.restored, cluster]:
            c.stop("immediate")


def test_restore_inside_the_kept_window_after_expiry(src: Src) -> None:
    a = src.backup()
    src.rows(range(1, 4))
    src.switch()
    b = src.backup()
    src.rows(range(4, 7))
    src.switch()
    before = load_catalog(src.repo())
    c = src.backup("--label", "scheduled")  # expires after itself
    src.rows(range(7, 9))
    src.switch()

    assert c["expire"]["deleted_backups"] == [a["id"]], c["expire"]
    assert c["expire"]["kept"] == 2 and c["expire"]["wal_segments_deleted"] > 0
    cat = load_catalog(src.repo())
    assert [x.id for x in cat.backups] == [b["id"], c["id"]]
    assert not cat.incomplete_backups
    [rec_b] = [x for x in before.backups if x.id == b["id"]]
    first_kept = rec_b.start_lsn // cat.segment_size
    assert min(s.segno for s in cat.segments[1]) == first_kept
    assert any(s.segno < first_kept for s in before.segments[1])
    text = run_pitr(src.cfg, "expire", "--dry-run").stdout
    assert "min_backups" in text and "dry run: would free 0 B" in text

    # a point between rows 5 and 6: after B, before C
    target = src.times[5] + (src.times[6] - src.times[5]) / 2
    restored = PgCluster(src.base, "restored")
    restored.port = free_port()
    restored.socket_dir = src.cluster.socket_dir
    src.restored.append(restored)
    proc = run_pitr(src.cfg, "restore", "--pgdata", str(restored.pgdata), "--start", "--port",
                    str(restored.port), "--json", "--to", target.isoformat())
    doc = json.loads(proc.stdout)
    assert doc["plan"]["backup"]["id"] == b["id"]
    assert [r[0] for r in restored.sql("select n from t order by n")] == [1, 2, 3, 4, 5]

    # the past before B is gone: planning a target there is refused (PlanError, exit 11)
    early = src.times[2] + timedelta(milliseconds=100)
    proc = run_pitr(src.cfg, "plan", "--to", early.isoformat(), check=False)
    assert proc.returncode == 11, proc.stdout + proc.stderr
