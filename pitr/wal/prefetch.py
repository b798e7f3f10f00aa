"""The prefetch worker behind ``archive-get``: fetch the next segments before they are asked for.

restore_command asks for one segment at a time and PostgreSQL replays it
before asking for the next, so a plain per-segment fetch leaves replay idle
during every download. ``archive-get NAME`` (in :mod:`pitr.entry`) records NAME
in ``<spool>/<stanza>/restore-<key>/prefetch.want`` and starts this worker
detached if none runs. The worker keeps ``NAME+1 .. NAME+k`` (same timeline, k =
``archive.prefetch``) in ``<spool>/<stanza>/restore-<key>/prefetch/``, each
fetched with :func:`pitr.wal.fetch.fetch_wal` (checksum-verified, decompressed,
fsynced and renamed into place only when complete, after ``<name>.sha256``
records the sha256 of those verified bytes), several in parallel with one warm
client per thread. A later request for a prefetched segment is a hash check and
a rename.

* One restore, one key: the repository URL, the data directory and its system
  identifier (:func:`pitr.fastpath.restore_key`). Two restores on one host never
  share a file, a marker or a worker; a worker whose repository's ``repo.json``
  names another system identifier serves nothing (archive-get then asks the
  repository itself and reports the mismatch).
* Only one worker runs per restore (flock on ``prefetch.lock``).
* Stale files (another timeline, before the requested segment, beyond the
  window) are removed whenever the position moves.
* A segment missing ahead is the end of the archive, not an error: it is
  tried again a little later (a standby's archive keeps growing).
* The worker exits after ``idle_exit`` seconds without a new request. Only
  archive-get's requests (a new position, a ``.request`` file) and the fetches
  they started count as activity; the worker's own re-asks for segments the
  repository did not have do not, or a worker whose window reaches past the end
  of the archive would poll the repository forever after recovery. After
  dropping its lock it looks at the request file once more, so a request that
  raced with the exit is never stranded (archive-get writes the request
  before it checks for a worker).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from pitr import fastpath as fp
from pitr.atomic import atomic_write
from pitr.config import Config
from pitr.errors import UsageError, WalNotFound
from pitr.log import event
from pitr.pg.control import system_id_or_none
from pitr.pg.names import DEFAULT_SEGMENT_SIZE, parse_segment_name, segment_name
from pitr.pg.walname import is_segment_name
from pitr.repo import Repo
from pitr.wal.spool import Spool, rotate_if_big, try_lock

log = logging.getLogger("pitr.wal.prefetch")

MISSING = fp.MISSING_SUFFIX
ABSENT_RETRY = fp.MISSING_FRESH  # seconds before asking again for a missing segment
MAX_THREADS = 4  # fetches are CPU-bound here (zstd + sha256): more threads only queue


def plan_window(want: str, k: int, seg_size: int = DEFAULT_SEGMENT_SIZE) -> list[str]:
    """``want`` itself, then the k segment names after it on its timeline.

    ``want`` is included: when it was not prefetched in time, archive-get waits
    for this warm worker rather than starting a cold fetch of its own.

    >>> plan_window("0000000100000000000000FE", 2)
    ['0000000100000000000000FE', '0000000100000000000000FF', '000000010000000100000000']
    """
    tli, segno = parse_segment_name(want, seg_size)
    return [segment_name(tli, segno + i, seg_size) for i in range(k + 1)]


def is_stale(name: str, want: str, k: int, seg_size: int = DEFAULT_SEGMENT_SIZE) -> bool:
    """A prefetched file nobody will ask for: other timeline, before ``want``, beyond the window.

    >>> is_stale("000000010000000000000005", "000000010000000000000006", 4)
    True
    >>> is_stale("000000020000000000000007", "000000010000000000000006", 4)
    True
    >>> is_stale("000000010000000000000007", "000000010000000000000006", 4)
    False
    """
    tli, segno = parse_segment_name(name, seg_size)
    wtli, wsegno = parse_segment_name(want, seg_size)
    return tli != wtli or segno < wsegno or segno > wsegno + k


class Prefetcher:
    def __init__(self, cfg: Config, *, datadir: str | os.PathLike[str], idle_exit: float = 20.0,
                 poll: float = 0.01, absent_retry: float = ABSENT_RETRY) -> None:
        self.cfg = cfg
        self.datadir = os.path.realpath(datadir)
        system_id = system_id_or_none(self.datadir)
        if system_id is None:
            raise UsageError(f"{self.datadir}: no readable global/pg_control",
                             hint="the prefetch worker serves one restore's data directory")
        self.system_id = system_id
        self.spool = Spool(cfg.archive.spool_dir, cfg.stanza, fp.restore_key(
            cfg.repository.url, self.datadir, system_id)).ensure()
        self.k = cfg.archive.prefetch
        self.budget = float(cfg.repository.timeout)
        self.idle_exit = idle_exit
        self.poll = poll
        self.absent_retry = absent_retry
        self.seg_size = DEFAULT_SEGMENT_SIZE
        self.absent: dict[str, float] = {}
        self.inflight: set[str] = set()
        # The subset of inflight that re-asks for a segment the repository lately did
        # not have: the worker's own polling, not work anyone asked for, so it must
        # not hold off idle_exit (see run()).
        self.reasks: set[str] = set()
        self.lock = threading.Lock()
        self._shared: Repo | None = None
        # Fetched by this worker; once renamed away it was consumed, so the periodic
        # re-plan must not fetch it again (an explicit request, NAME.request, may).
        self.done: set[str] = set()
        self.fetched = 0

    def _repo(self) -> Repo:
        # One client for all threads: boto3 clients are thread-safe, and building
        # one per thread costs more CPU than the first fetches themselves.
        if self._shared is None:
            self._shared = Repo.open(self.cfg)
        return self._shared

    def _want_sig(self) -> tuple[str, int, int] | None:
        try:
            st = os.stat(self.spool.prefetch_want)
        except OSError:
            return None
        want = self.spool.read_want()
        return (want, st.st_ino, st.st_mtime_ns) if want else None

    def run(self) -> int:
        if self.k <= 0:
            return 0
        fd = try_lock(self.spool.prefetch_lock)
        if fd is None:
            return 0  # another worker serves this stanza
        self._remove_leftovers()
        ident = self._repo().read_identity()
        if ident is not None:
            self.seg_size = ident.segment_size
            if str(ident.system_id) != str(self.system_id):
                event(log, logging.WARNING, "prefetch: the repository belongs to another "
                      "cluster; serving nothing", repository=str(ident.system_id),
                      cluster=self.system_id)
                os.close(fd)
                return 0
        event(log, logging.INFO, "prefetch worker started", window=self.k)
        last_sig = None
        last_activity = last_plan = time.monotonic()
        with ThreadPoolExecutor(max_workers=min(self.k, MAX_THREADS),
                                thread_name_prefix="prefetch") as pool:
            while True:
                now = time.monotonic()
                if not self.spool.prefetch_dir.is_dir():
                    break  # the spool was removed (cluster or scratch dir gone): nobody to serve
                sig = self._want_sig()
                if sig is not None and (sig != last_sig or now - last_plan > 0.5):
                    if sig != last_sig:
                        last_activity = now
                    last_sig, last_plan = sig, now
                    self.plan(sig[0], pool)
                if self.serve_requests(pool):
                    last_activity = now
                # A fetch archive-get is (or soon will be) waiting for keeps the worker
                # alive however long it takes; a re-ask for an absent segment does not:
                # after recovery the window past the archive's end stays absent and
                # would otherwise be re-asked every absent_retry seconds until the spool
                # went away. A standby that needs those segments keeps asking
                # archive-get, which moves the position and counts above.
                with self.lock:
                    busy = bool(self.inflight - self.reasks)
                if busy:
                    last_activity = now
                elif now - last_activity > self.idle_exit:
                    os.close(fd)  # from here on, archive-get starts a new worker
                    if self._want_sig() == last_sig and not self._requests():
                        break
                    fd = try_lock(self.spool.prefetch_lock)
                    if fd is None:
                        break  # a new worker took over
                    last_activity = now
                time.sleep(self.poll)
            # Queued fetches would each spend a full retry budget against a repository
            # that may be down: drop them, only the ones already running finish.
            pool.shutdown(wait=False, cancel_futures=True)
        event(log, logging.INFO, "prefetch worker idle, exiting", fetched=self.fetched)
        with contextlib.suppress(OSError):  # the spool may be gone
            rotate_if_big(self.spool.prefetch_log)
        return 0

    def _requests(self) -> list[str]:
        with os.scandir(self.spool.prefetch_dir) as it:
            return [e.name.removesuffix(fp.REQUEST_SUFFIX) for e in it
                    if e.name.endswith(fp.REQUEST_SUFFIX)]

    def serve_requests(self, pool: ThreadPoolExecutor) -> bool:
        """Explicit requests from a waiting archive-get (a history file, or a segment
        that is not here): fetch them even if fetched before."""
        names = self._requests()
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.spool.prefetch_dir / (name + fp.REQUEST_SUFFIX))
            if not fp.is_wal_name(name):
                continue
            with self.lock:
                claimed = self._claim(name, requested=True)
            if claimed:
                pool.submit(self.fetch_one, name)
        return bool(names)

    def _claim(self, name: str, *, requested: bool) -> bool:
        """Mark ``name`` in flight unless it already is (call with ``self.lock`` held).

        ``requested``: archive-get asked for this very file. Otherwise a name the
        repository answered absent for is a re-ask, which does not count as activity.
        """
        if name in self.inflight:
            return False
        self.inflight.add(name)
        if not requested and name in self.absent:
            self.reasks.add(name)
        return True

    def _remove_leftovers(self) -> None:
        with os.scandir(self.spool.prefetch_dir) as it:
            for entry in it:
                # temp files, markers of a dead worker; requests are for us, and a
                # segment keeps its recorded checksum
                if not is_segment_name(entry.name.removesuffix(fp.CHECKSUM_SUFFIX)) \
                        and not entry.name.endswith(fp.REQUEST_SUFFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def plan(self, want: str, pool: ThreadPoolExecutor) -> None:
        window = plan_window(want, self.k, self.seg_size)
        with os.scandir(self.spool.prefetch_dir) as it:
            files = [e.name for e in it]
        present = {n for n in files if is_segment_name(n)}
        for f in files:
            seg = f.removesuffix(MISSING).removesuffix(fp.CHECKSUM_SUFFIX)
            if is_segment_name(seg) and is_stale(seg, want, self.k, self.seg_size):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.spool.prefetch_dir / f)
                present.discard(f)
        with self.lock:
            self.done = {n for n in self.done if not is_stale(n, want, self.k, self.seg_size)}
        now = time.monotonic()
        for name in window:
            with self.lock:
                if (name in present or name in self.done
                        or now - self.absent.get(name, -1e9) < self.absent_retry
                        or not self._claim(name, requested=False)):
                    continue
            pool.submit(self.fetch_one, name)

    def fetch_one(self, name: str) -> None:
        from pitr.wal.fetch import fetch_wal

        started = time.monotonic()
        try:
            # Verified into a temp name, its checksum recorded, then renamed into place:
            # archive-get hashes the file against that record when it hands it over.
            part = self.spool.prefetch_dir / f".{name}.part"
            result = fetch_wal(self._repo(), name, part, budget=self.budget, sha256=True)
            atomic_write(self.spool.checksum(name), f"{result.sha256}\n")
            os.replace(part, self.spool.prefetched(name))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.spool.missing(name))
            with self.lock:
                self.fetched += 1
                self.done.add(name)
                self.absent.pop(name, None)  # here now: a later fetch of it is no re-ask
            ms = (time.monotonic() - started) * 1000
            self.spool.note_prefetch("fetched", name, f"{ms:.0f}ms")
        except Exception as exc:
            # WalNotFound is the end of the archive (for now); anything else is for
            # the foreground archive-get to report. Either way a waiting archive-get
            # must stop waiting and ask the repository itself.
            with self.lock:
                self.absent[name] = time.monotonic()
            with contextlib.suppress(OSError):
                atomic_write(self.spool.missing(name), fp.ABSENT if isinstance(exc, WalNotFound)
                             else f"error {exc}")
            if not isinstance(exc, WalNotFound):
                event(log, logging.WARNING, f"prefetch of {name} failed", error=str(exc))
        finally:
            with self.lock:
                self.inflight.discard(name)
                self.reasks.discard(name)


def run_worker(cfg: Config, *, datadir: str | os.PathLike[str], idle_exit: float = 20.0) -> int:
    return Prefetcher(cfg, datadir=datadir, idle_exit=idle_exit).run()
