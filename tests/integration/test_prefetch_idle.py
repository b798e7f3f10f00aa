"""The real prefetch worker process exits when archive-get stops asking, even with
its window past the end of a real archive (local-directory repository, WAL from
a real PostgreSQL 15 cluster).

After a recovery, the worker's last position is the last archived segment and
the segments after it stay absent. The worker re-asks the repository for those
every few seconds (a standby's archive keeps growing), but that is its own
polling, not a request: it must still exit ``--idle-exit`` seconds after the
last request instead of polling until its spool is removed.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support.pgcluster import PG_USER, PgCluster, as_user_cmd, chown_user, make_user_dir

from pitr import config
from pitr import fastpath as fp
from pitr.atomic import atomic_write
from pitr.pg.names import parse_segment_name, segment_name
from pitr.wal.prefetch import ABSENT_RETRY
from pitr.wal.spool import Spool

pytestmark = pytest.mark.integration

IDLE_EXIT = 2 * ABSENT_RETRY + 1  # long enough for the worker to re-ask twice
MARGIN = 8.0  # interpreter start-up and scheduling on a busy 2-core host


def test_worker_exits_after_idle_exit_with_the_window_past_the_archive(
        pg_factory: Any, pitr_exe: Path, pitr_config: Any, local_repo: Path) -> None:
    cfg_path = pitr_config(archive={"prefetch": 4})
    pg: PgCluster = pg_factory("pg", conf={
        "archive_mode": "on",
        "archive_command": f"{pitr_exe} --config {cfg_path} archive-push %p"})
    pg.start()
    pg.sql("create table t (i int)")
    for _ in range(2):
        pg.sql("insert into t select generate_series(1, 1000)")
        last = pg.switch_wal()
    pg.wait_until(f"select last_archived_wal >= '{last}' from pg_stat_archiver", timeout=120)
    pg.stop()  # nothing more gets archived: the window after `last` stays absent

    cfg = config.load(cfg_path, env={})
    # The worker serves one restore: this (stopped) cluster's data directory.
    restore = Spool.for_restore(cfg.archive.spool_dir, cfg.stanza, cfg.repository.url, pg.pgdata)
    assert restore is not None
    spool = restore
    for d in (Path(cfg.archive.spool_dir), spool.base, spool.restore_base, spool.prefetch_dir):
        make_user_dir(d)
    # Recovery's last request, as archive-get publishes it.
    atomic_write(spool.prefetch_want, last + "\n")
    chown_user(spool.prefetch_want)
    tli, segno = parse_segment_name(last)
    ahead = [segment_name(tli, segno + i) for i in range(1, 5)]

    listing: list[str] = []
    wall_start, started = time.time(), time.monotonic()
    worker = subprocess.Popen(
        as_user_cmd([str(pitr_exe), "--config", str(cfg_path), "prefetch-worker",
                     "--idle-exit", str(IDLE_EXIT), "--datadir", str(pg.pgdata)], PG_USER),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = worker.communicate(timeout=IDLE_EXIT + MARGIN)
    except subprocess.TimeoutExpired:
        out = None
    finally:
        if worker.poll() is None:
            # The worker's own way out (and this test's cleanup): its spool is gone.
            listing = sorted(p.name for p in spool.prefetch_dir.iterdir())
            shutil.rmtree(spool.prefetch_dir, ignore_errors=True)
            worker.communicate(timeout=60)
    took = time.monotonic() - started
    assert out is not None, (f"prefetch worker still running {IDLE_EXIT + MARGIN:.0f}s after "
                             f"the last request (--idle-exit {IDLE_EXIT}); spool: {listing}")
    assert worker.returncode == 0, out
    assert took >= IDLE_EXIT, out

    # It served the request and kept asking for the absent ones while it lived.
    assert spool.prefetched(last).stat().st_size == 16 * 1024 * 1024
    for name in ahead:
        assert not spool.prefetched(name).exists()
        assert spool.missing(name).read_text().strip() == fp.ABSENT
    assert spool.missing(ahead[0]).stat().st_mtime > wall_start + ABSENT_RETRY, \
        "the worker never re-asked for the absent segments"
