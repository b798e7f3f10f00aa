"""archive-get prefetch: a real recovery from a real S3 server replays prefetched segments.

A base backup taken without WAL (so every segment comes from the archive)
recovers through `pitr archive-get` as the cluster user, with prefetch. It must
reach exactly the primary's data, which is what recovery without prefetch
yields (tests/integration/test_archive.py proves that path; a second 36-segment
recovery here would double the test's time), and it must have been served from
the spool (hits in prefetch.log).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_pitr
from support.pgcluster import PgCluster, chown_user, run_as

from pitr import config
from pitr.wal.spool import Spool

pytestmark = [pytest.mark.integration, pytest.mark.s3]

CHECKSUM = "select count(*), sum(hashtext(v)), max(i) from rows"


def base_backup(pg: PgCluster, target: PgCluster) -> None:
    run_as([pg.bin("pg_basebackup"), "-h", str(pg.socket_dir), "-p", str(pg.port),
            "-U", "postgres", "-D", str(target.pgdata), "-X", "none", "-c", "fast"])


def recover(pitr_exe: Path, cluster: PgCluster, cfg: Path) -> float:
    cluster.set_port()
    cluster.configure({"archive_mode": "off",
                       "restore_command": f"{pitr_exe} --config {cfg} archive-get %f %p"})
    (cluster.pgdata / "recovery.signal").touch()
    chown_user(cluster.pgdata / "recovery.signal")
    started = time.monotonic()
    cluster.start()
    cluster.wait_until("select not pg_is_in_recovery()", timeout=300, interval=0.05)
    return time.monotonic() - started


def prefetch_log(spool: Spool, kind: str) -> list[str]:
    if not spool.prefetch_log.exists():
        return []
    return [line.split()[2] for line in spool.prefetch_log.read_text().splitlines()
            if line.split()[1] == kind]


def test_restore_replays_prefetched_segments_with_the_same_result(
        pg_factory: Any, pitr_exe: Path, pitr_config: Any, s3_repo: dict[str, Any],
        testdir: Path) -> None:
    cfg = pitr_config(repository=s3_repo, archive={"prefetch": 8})
    pg: PgCluster = pg_factory("pg", conf={
        "archive_mode": "on", "archive_command": f"{pitr_exe} --config {cfg} archive-push %p"})
    pg.start()
    pg.sql("create table rows (i int primary key, v text)")
    with_prefetch = pg_factory("prefetch", init=False)
    base_backup(pg, with_prefetch)

    segments = 34
    for batch in range(segments):
        pg.sql(f"insert into rows select g, md5(g::text) from generate_series("
               f"{batch * 2000 + 1}, {(batch + 1) * 2000}) g")
        pg.switch_wal()
    last = pg.switch_wal()
    pg.wait_until(f"select last_archived_wal >= '{last}' from pg_stat_archiver", timeout=300)
    expected = pg.sql(CHECKSUM)
    pg.stop()

    seconds = recover(pitr_exe, with_prefetch, cfg)
    assert with_prefetch.sql(CHECKSUM) == expected
    assert "FATAL" not in with_prefetch.log_file.read_text(), with_prefetch.log_tail()

    c = config.load(cfg, env={})
    restore = Spool.for_restore(c.archive.spool_dir, c.stanza, c.repository.url,
                                with_prefetch.pgdata)
    assert restore is not None
    spool = restore
    hits, fetched = prefetch_log(spool, "hit"), prefetch_log(spool, "fetched")
    print(f"replay with prefetch {seconds:.1f}s ({len(hits)} hits, {len(fetched)} fetched, "
          f"{len(prefetch_log(spool, 'miss'))} misses)")
    # Recovery replayed >= 34 archived segments; nearly all came from the spool.
    assert len(set(hits)) >= 32, spool.prefetch_log.read_text()
    assert set(hits) <= set(fetched)

    # Stale files (older than the request, other timeline) are removed when the
    # position moves; the end of the archive ahead is not an error.
    older, other_tli = spool.prefetched(hits[0]), spool.prefetched("00000009" + hits[-1][8:])
    for p in (older, other_tli):
        p.write_bytes(b"stale")
        chown_user(p)
    # As restore_command would for this data directory (%p below its pg_wal).
    dest = with_prefetch.pgdata / "pg_wal" / "pitr-test-restored-last"
    run_pitr(cfg, "archive-get", last, str(dest))
    assert dest.stat().st_size == 16 * 1024 * 1024
    dest.unlink()
    deadline = time.monotonic() + 30
    while (older.exists() or other_tli.exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not older.exists() and not other_tli.exists()
