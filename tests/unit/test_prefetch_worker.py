"""The prefetch worker's lifetime, run for real (threads, spool files) against the
local-directory driver in a tmp dir.

The worker must live as long as archive-get keeps asking and exit ``idle_exit``
seconds after the last request, even when its window reaches past the end of
the archive and it keeps re-asking the repository for those absent segments.
"""

from __future__ import annotations

import shutil
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pitr import fastpath as fp
from pitr.atomic import atomic_write
from pitr.config import Config, load
from pitr.pg.names import segment_name
from pitr.repo import Repo
from pitr.storage.fs import FsStorage
from pitr.wal.prefetch import Prefetcher
from pitr.wal.push import push_wal
from pitr.wal.spool import Spool

SEG = 1 << 20  # 1 MiB segments: the worker takes the size from repo.json
SYSID = 7301234567890123456
ARCHIVED = 3  # segments 1..3 of timeline 1 are in the archive, 4.. are not (yet)
MARGIN = 3.0  # seconds of scheduling slack on a busy 2-core CI host


def seg(n: int) -> str:
    return segment_name(1, n, SEG)


def segment_bytes(name: str) -> bytes:
    """A plausible PG 15 segment: a long page header naming this segment."""
    segno = int(name[8:16], 16) * (0x100000000 // SEG) + int(name[16:24], 16)
    header = struct.pack("<HHIQI4xQII", 0xD110, 0x0002, int(name[:8], 16), segno * SEG, 0,
                         SYSID, SEG, 8192)
    return header + bytes(SEG - len(header))


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    repo = Repo(FsStorage(tmp_path / "repo"), "t")
    wal = tmp_path / "wal"
    wal.mkdir()
    for n in range(1, ARCHIVED + 1):
        (wal / seg(n)).write_bytes(segment_bytes(seg(n)))
        push_wal(repo, wal / seg(n), level=1, budget=5)
    (tmp_path / "data" / "global").mkdir(parents=True)
    (tmp_path / "data" / "global" / "pg_control").write_bytes(SYSID.to_bytes(8, "little"))
    toml = tmp_path / "pitr.toml"
    toml.write_text(f'stanza = "t"\n[repository]\nurl = "file://{tmp_path / "repo"}"\n'
                    f'timeout = 5\n[archive]\nspool_dir = "{tmp_path / "spool"}"\n'
                    f"prefetch = 4\n")
    return load(toml, env={})


def datadir(cfg: Config) -> Path:
    return Path(cfg.archive.spool_dir).parent / "data"


def restore_spool(cfg: Config) -> Spool:
    spool = Spool.for_restore(cfg.archive.spool_dir, cfg.stanza, cfg.repository.url,
                              datadir(cfg))
    assert spool is not None
    return spool.ensure()


class Worker:
    """A real Prefetcher.run() in a thread, timed."""

    def __init__(self, cfg: Config, **kw: float) -> None:
        self.prefetcher = Prefetcher(cfg, datadir=datadir(cfg), **kw)
        self.spool = self.prefetcher.spool
        self.thread = threading.Thread(target=self.prefetcher.run, daemon=True)
        self.started = time.monotonic()
        self.thread.start()

    def exited_within(self, seconds: float) -> float | None:
        """Seconds from start to exit, or None if still running after ``seconds``."""
        self.thread.join(timeout=max(0.0, self.started + seconds - time.monotonic()))
        return None if self.thread.is_alive() else time.monotonic() - self.started

    def stop(self) -> None:
        # The worker's own way out: its spool is gone.
        shutil.rmtree(self.spool.base, ignore_errors=True)
        self.thread.join(timeout=30)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


def ask(spool: Spool, name: str) -> None:
    """What archive-get does for NAME: publish it as the worker's position."""
    atomic_write(spool.prefetch_want, name + "\n")


def test_worker_exits_after_idle_exit_while_the_window_past_the_archive_stays_absent(
        cfg: Config, workers: list[Worker]) -> None:
    # Recovery asked for the last archived segment and ended. The window ahead
    # (4..7) is absent and re-asked every absent_retry seconds; those re-asks
    # are the worker's own doing and must not keep it alive.
    spool = restore_spool(cfg)
    ask(spool, seg(ARCHIVED))
    idle_exit, absent_retry = 1.5, 0.2
    wall_start = time.time()
    w = Worker(cfg, idle_exit=idle_exit, absent_retry=absent_retry)
    workers.append(w)

    took = w.exited_within(idle_exit + MARGIN)
    assert took is not None, (
        f"worker still polling {idle_exit + MARGIN:.1f}s after the last request "
        f"(idle_exit {idle_exit}s): {sorted(p.name for p in spool.prefetch_dir.iterdir())}")
    assert took >= idle_exit  # and not before its idle time
    # It did serve the request and did re-ask for the absent ones before leaving.
    assert spool.prefetched(seg(ARCHIVED)).read_bytes() == segment_bytes(seg(ARCHIVED))
    for n in range(ARCHIVED + 1, ARCHIVED + 5):
        assert not spool.prefetched(seg(n)).exists()
        assert spool.missing(seg(n)).read_text().strip() == fp.ABSENT
    reasked = spool.missing(seg(ARCHIVED + 1)).stat().st_mtime
    assert reasked > wall_start + absent_retry, "the absent segments were never re-asked"


def test_requests_keep_the_worker_alive_past_idle_exit(
        cfg: Config, workers: list[Worker]) -> None:
    spool = restore_spool(cfg)
    ask(spool, seg(1))
    # well above the 0.3 s between requests even when a loaded host delays a sleep
    idle_exit = 3.0
    w = Worker(cfg, idle_exit=idle_exit, absent_retry=0.2)
    workers.append(w)
    # Replay: archive-get asks for 1, 2, 3, then keeps asking for 3 (a standby
    # polling the end of the archive re-publishes the same name).
    until = time.monotonic() + 2.5 * idle_exit
    n = 1
    while time.monotonic() < until:
        time.sleep(0.3)
        n = min(n + 1, ARCHIVED)
        ask(spool, seg(n))
        assert w.thread.is_alive(), f"worker exited while asked for {seg(n)}"
    last = time.monotonic()
    assert spool.prefetched(seg(ARCHIVED)).exists()  # still serving: prefetched
    w.thread.join(timeout=idle_exit + MARGIN)
    assert not w.thread.is_alive(), "worker did not exit once the requests stopped"
    # It waited for idle_exit, not less: counted from the last request it took as new,
    # which can precede ``last`` by the re-asks of one name and a poll (a CI run saw
    # 2.6 s of 3.0), so only "not at once" is asserted here.
    assert time.monotonic() - last >= idle_exit / 2


def test_worker_exits_when_its_spool_is_removed(cfg: Config, workers: list[Worker]) -> None:
    spool = restore_spool(cfg)
    ask(spool, seg(ARCHIVED))
    w = Worker(cfg, idle_exit=600.0, absent_retry=0.2)
    workers.append(w)
    deadline = time.monotonic() + 10
    while not spool.prefetched(seg(ARCHIVED)).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    shutil.rmtree(spool.base)
    w.thread.join(timeout=MARGIN)
    assert not w.thread.is_alive()
