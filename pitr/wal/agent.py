"""``pitr agent``: push ``.ready`` WAL segments ahead of PostgreSQL's archiver.

PostgreSQL calls archive_command one segment at a time, and a cold Python
process costs far more than the upload. The agent is one long-lived process
per cluster that watches ``pg_wal/archive_status`` (watchdog/inotify, plus a
periodic rescan so a missed event cannot stall it) and pushes every ``.ready``
segment, oldest name first, through a pool of threads sharing one warm
repository client. After each durable store it writes a receipt into the spool
(:mod:`pitr.wal.spool`); ``archive-push`` answers from that receipt in a few
milliseconds.

What the agent never does: rename ``.ready`` files or tell PostgreSQL anything.
PostgreSQL still runs archive-push for every segment, and only that marks a
segment done, so stopping or killing the agent can only make archiving slower,
never lose a segment.

Two ways to run (docs/archiving-modes.md): as a service (``pitr agent``, e.g.
systemd/pitr-agent.service), until stopped; or on demand (``pitr agent
--on-demand``, started by archive-push when no agent runs), until it has had
nothing to do for ``archive.agent_idle_exit`` seconds (:func:`idle_exit_due`).

Failures: push_wal already retries transient errors within its budget; a
segment that still fails gets an ``.error`` file and an exponential per-segment
backoff (capped), so an S3 outage costs no busy loop. After a crash, a segment
stored just before it is recognised by push_wal's "already archived" path
(same sha256), which is not a conflict.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pitr.config import Config
from pitr.crypto import Keyring
from pitr.errors import ConfigError, LockedError, PitrError, TransientStorageError
from pitr.log import event
from pitr.pg.walname import is_wal_name
from pitr.repo import Repo, RepoIdentity, open_keyring, upload_classes
from pitr.wal.catchup import Backlog
from pitr.wal.spool import FileIdentity, Receipt, Spool, rotate_if_big, try_lock
from pitr.wal.status import AgentStatus

log = logging.getLogger("pitr.wal.agent")

BACKOFF_FIRST = 1.0  # seconds before the first retry of a failed segment
BACKOFF_MAX = 60.0
RECEIPT_KEEP = 30.0  # seconds a receipt outlives its .ready (a crashed archiver may ask again)
CATCH_UP_MIN_WAIT = 1.0  # seconds between catch-up rounds while catch_up repositories keep up
CATCH_UP_MAX_WAIT = 10.0  # ... and at most between rounds while one stays down
TAKEOVER_WAIT = 30.0  # seconds a service agent waits for an on-demand agent to hand over
_STOP = "~stop"  # sorts after every WAL name, so workers finish queued work first


def _utc(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts else None


# agent-status.json is rewritten once a second (docs/design.md, "The spool"): it is for
# people and monitoring. Written on every wake instead (each .ready file created or
# renamed, each push done: ~3 a segment), it cost the agent a fifth of its CPU in a burst.
STATUS_INTERVAL = 1.0


def idle_exit_due(*, now: float, idle_since: float | None, idle_exit: float) -> bool:
    """PURE: should an on-demand agent exit? ``idle_since``: when it last found nothing
    to do (no .ready segment, nothing queued or in flight), None while it has work;
    ``idle_exit`` <= 0: never (a service agent)."""
    return idle_exit > 0 and idle_since is not None and now - idle_since >= idle_exit


def status_wait(*, now: float, written_at: float | None, interval: float) -> float:
    """PURE: seconds until the running agent's status file is due again; 0: write it now.
    ``written_at``: when it was last written (None: never)."""
    return 0.0 if written_at is None else max(0.0, written_at + interval - now)


def _unlink_if_older(entry: os.DirEntry[str], cutoff: float) -> bool:
    """Remove ``entry`` if last modified before ``cutoff``; True if it was removed."""
    with contextlib.suppress(FileNotFoundError):
        if entry.stat().st_mtime < cutoff:
            os.unlink(entry.path)
            return True
    return False


def backoff_delay(attempts: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``attempts``-th failure of one segment (jittered, capped)."""
    base = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, attempts - 1))
    return base * (0.5 + (rng or random).random() / 2)


class IdentityCache:
    """The repo.json check the workers already passed, shared and taken one at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.known: tuple[tuple[int, int | None, int], RepoIdentity] | None = None


class WarmRepo(Repo):
    """A Repo that remembers the identity check it already passed.

    push_wal proves repo.json matches every segment's system id; against an
    unchanged repository that is one GET per segment for a known answer. The
    workers share the cache and check one at a time, so at start they do not
    race each other to create repo.json (a lost conditional create costs a
    retry with backoff).
    """

    def __init__(self, storage: Any, stanza: str, cache: IdentityCache | None = None,
                 keyring: Keyring | None = None,
                 classes: dict[str, str] | None = None) -> None:
        super().__init__(storage, stanza, keyring, classes=classes)
        self._cache = cache or IdentityCache()

    def ensure_identity(self, system_id: int, pg_version: int | None,
                        segment_size: int) -> RepoIdentity:
        key = (system_id, pg_version, segment_size)
        with self._cache.lock:
            known = self._cache.known
            if known is not None and known[0] == key:
                # the sealing decision too, without a GET (docs/encryption.md)
                self.sealed.learn_identity(asdict(known[1]))
                return known[1]
            ident = super().ensure_identity(system_id, pg_version, segment_size)
            self._cache.known = (key, ident)
            return ident


@dataclass
class Counters:
    stored: int = 0
    already_archived: int = 0
    failed: int = 0
    consecutive_failures: int = 0
    last_stored: str | None = None
    last_stored_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass
class Backoff:
    attempts: int = 0
    not_before: float = 0.0


@dataclass
class AgentState:
    """Everything the scheduler and the workers share (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    queued: set[str] = field(default_factory=set)  # waiting or being pushed
    in_flight: set[str] = field(default_factory=set)
    stored: set[str] = field(default_factory=set)  # have a receipt in the spool
    backoff: dict[str, Backoff] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)


class Agent:
    def __init__(self, cfg: Config, *, rescan_interval: float = 1.0,
                 budget: float | None = None, on_demand: bool = False) -> None:
        if not cfg.postgres.pgdata:
            raise ConfigError(["postgres.pgdata: the agent needs the cluster's data directory"])
        self.cfg = cfg
        self.wal_dir = Path(cfg.postgres.pgdata) / "pg_wal"
        self.status_dir = self.wal_dir / "archive_status"
        if not self.status_dir.is_dir():
            raise ConfigError([f"postgres.pgdata: {self.status_dir} is not a directory"])
        self.spool = Spool(cfg.archive.spool_dir, cfg.stanza).ensure()
        self.workers = cfg.archive.workers
        self.rescan_interval = rescan_interval
        self.budget = float(cfg.repository.timeout if budget is None else budget)
        self.state = AgentState()
        self.queue: queue.PriorityQueue[str] = queue.PriorityQueue()
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.started_at = time.time()
        self.on_demand = on_demand
        # an on-demand agent exits after this long without work; a service agent never
        self.idle_exit = float(cfg.archive.agent_idle_exit) if on_demand else 0.0
        self.exit_reason: str | None = None
        self._last_cleanup = 0.0
        self._storage: list[Any] | None = None  # one client per repository
        self._keyrings: list[Keyring | None] = []
        self._storage_lock = threading.Lock()
        self._identity = [IdentityCache() for _ in cfg.all_repositories]
        # catch_up repositories (by index) whose conditional writes are not proven yet
        self._unproven: set[int] = set()

    # -- lifecycle ----------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        self.stop.set()
        self.wake.set()

    def _take_lock(self) -> int:
        """The agent lock's fd. A service agent takes over from an on-demand one (asks it
        to stop: SIGTERM, which loses nothing) instead of failing: archive-push may have
        started one before the service came up (docs/archiving-modes.md)."""
        deadline = time.monotonic() + TAKEOVER_WAIT
        asked: int | None = None
        while True:
            fd = try_lock(self.spool.agent_lock)
            if fd is not None:
                return fd
            holder, mode = self._holder()
            # an on-demand agent never takes over; nor does anyone from a service agent
            if self.on_demand or mode == "service" or time.monotonic() >= deadline:
                raise LockedError(f"another pitr agent is running for stanza "
                                  f"{self.cfg.stanza!r} (lock {self.spool.agent_lock})")
            if mode == "on-demand" and holder != asked:
                event(log, logging.INFO, "asking the on-demand agent to stop", pid=holder)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(holder, signal.SIGTERM)
                asked = holder
            time.sleep(0.1)  # unknown holder (still starting): look again

    def _holder(self) -> tuple[int, str | None]:
        """(pid, mode) of the running agent holding the lock, as its lock file and its
        status agree; mode None while unsure (e.g. it has not written its status yet)."""
        doc = self.spool.read_status() or {}
        try:
            pid = int(self.spool.agent_lock.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0, None
        if pid > 0 and doc.get("state") == "running" and doc.get("pid") == pid:
            mode = doc.get("mode", "service")  # older agents wrote no mode: services
            return pid, str(mode)
        return pid, None

    def run(self) -> int:
        lock_fd = self._take_lock()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.request_stop)
        self._load_receipts()
        self._make_repo()  # warm: the client and the push code, before the first segment
        import pitr.wal.push  # noqa: F401
        observer = self._watch()
        threads = [threading.Thread(target=self._worker, name=f"push-{i}", daemon=True)
                   for i in range(self.workers)]
        if self.cfg.catch_up_repositories:
            threads.append(threading.Thread(target=self._catch_up, name="catch-up",
                                            daemon=True))
        for t in threads:
            t.start()
        event(log, logging.INFO, "agent started", pgdata=str(self.wal_dir.parent),
              workers=self.workers, spool=str(self.spool.base))
        idle_since: float | None = None
        status_written: float | None = None
        try:
            while not self.stop.is_set():
                self.wake.clear()
                ready = self.scan()
                now = time.monotonic()
                if ready or self.busy() or self.catching_up():
                    idle_since = None
                elif idle_since is None:
                    idle_since = now
                if idle_exit_due(now=now, idle_since=idle_since, idle_exit=self.idle_exit):
                    self.exit_reason = "idle"
                    event(log, logging.INFO, "agent idle: exiting",
                          idle_exit=self.idle_exit)
                    break
                due = status_wait(now=now, written_at=status_written,
                                  interval=STATUS_INTERVAL)
                if due == 0.0:
                    self.write_status("running")
                    status_written, due = now, STATUS_INTERVAL
                self.wake.wait(min(self.rescan_interval, due))
        finally:
            observer.stop()
            for _ in threads:
                self.queue.put(_STOP)
            # In-flight pushes are safe to abandon (no receipt without a durable
            # store), but give quick ones a moment so their receipts land.
            deadline = time.monotonic() + 5
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            self.write_status("stopped")
            os.close(lock_fd)
            event(log, logging.INFO, "agent stopped", stored=self.state.counters.stored)
        return 0

    def busy(self) -> bool:
        with self.state.lock:
            return bool(self.state.queued or self.state.in_flight)

    def catching_up(self) -> bool:
        """A catch_up repository still has a backlog: an on-demand agent stays for it."""
        return any(Backlog(self.spool.base, rc.name).entries()
                   for rc in self.cfg.catch_up_repositories)

    def _watch(self) -> Any:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        wake = self.wake

        class OnReady(FileSystemEventHandler):
            def on_any_event(self, ev: FileSystemEvent) -> None:
                if str(ev.src_path).endswith(".ready") or str(
                        getattr(ev, "dest_path", "")).endswith(".ready"):
                    wake.set()

        observer = Observer()
        observer.schedule(OnReady(), str(self.status_dir), recursive=False)
        observer.daemon = True
        observer.start()
        return observer

    # -- scheduling ---------------------------------------------------------
    def ready_names(self) -> list[tuple[str, float]]:
        """(name, .ready mtime) of every segment PostgreSQL waits to archive, by name."""
        out = []
        with os.scandir(self.status_dir) as it:
            for entry in it:
                if entry.name.endswith(".ready"):
                    name = entry.name[:-6]
                    if is_wal_name(name):
                        with contextlib.suppress(FileNotFoundError):
                            out.append((name, entry.stat().st_mtime))
        out.sort()
        return out

    def scan(self) -> list[tuple[str, float]]:
        ready = self.ready_names()
        now = time.time()
        st = self.state
        with st.lock:
            for name, _ in ready:
                if name in st.queued or name in st.stored:
                    continue
                if st.backoff.get(name, Backoff()).not_before > now:
                    continue
                st.queued.add(name)
                self.queue.put(name)
        self._last_ready = ready
        if now - self._last_cleanup > 10:
            self._last_cleanup = now
            self.cleanup({n for n, _ in ready}, now)
        return ready

    def _load_receipts(self) -> None:
        """Receipts from an earlier run still count, if they still prove their file."""
        url = self.cfg.archive_target
        for name, _ in self.ready_names():
            try:
                st = os.stat(self.wal_dir / name)
            except FileNotFoundError:
                continue
            if self.spool.receipt_proves(name, st, url):
                self.state.stored.add(name)

    def cleanup(self, ready: set[str], now: float) -> None:
        """Drop receipts, proofs and errors of segments PostgreSQL has finished with, and
        the temp files of receipts whose writer was killed before its rename."""
        with os.scandir(self.spool.archive_dir) as it:
            for entry in it:
                name, _, ext = entry.name.rpartition(".")
                if ext == "tmp" and name.startswith("."):  # only the agent writes them here
                    _unlink_if_older(entry, now - RECEIPT_KEEP)
                elif ext in ("ok", "error") and name not in ready \
                        and _unlink_if_older(entry, now - RECEIPT_KEEP):
                    with self.state.lock:
                        self.state.stored.discard(name)
                        self.state.backoff.pop(name, None)
        for proofs in self.spool.archive_dir.glob("proofs-*"):
            with os.scandir(proofs) as it:
                for entry in it:
                    if entry.name.split("_", 1)[0] not in ready:
                        _unlink_if_older(entry, now - RECEIPT_KEEP)
        rotate_if_big(self.spool.fastpath_log)
        rotate_if_big(self.spool.agent_log)  # on-demand agents append their output to it

    # -- workers ------------------------------------------------------------
    def _make_repo(self) -> list[Repo]:
        """A worker's repository handles around the agent's warm storage clients, one per
        repository (a segment gets its receipt once it is durable in all of them).

        boto3 clients are thread-safe and pool their connections (32), while
        building one costs ~120 ms of CPU (each loads the S3 service model), so
        the workers share one client (and one repo.json check) per repository.
        """
        from pitr.condwrites import require_conditional_writes
        from pitr.storage import open_storage

        with self._storage_lock:
            if self._storage is None:
                storages = []
                for i, rc in enumerate(self.cfg.all_repositories):
                    storage = open_storage(rc)
                    storages.append(storage)
                    if rc.mode == "catch_up":
                        # one that is down must not stop archiving: unproven, it takes
                        # nothing inline and the catch-up thread proves it again later
                        self._unproven.add(i)
                        continue
                    require_conditional_writes(self.cfg.for_repository(rc), storage)
                # each repository's own key (docs/multiple-repositories.md); a
                # key_command runs once per repository
                self._keyrings = [open_keyring(self.cfg.for_repository(rc))
                                  for rc in self.cfg.all_repositories]
                self._storage = storages
            return [WarmRepo(s, self.cfg.stanza, c, k,
                             upload_classes(self.cfg.for_repository(rc)))
                    for s, c, k, rc in zip(self._storage, self._identity, self._keyrings,
                                           self.cfg.all_repositories, strict=True)]

    def _worker(self) -> None:
        repo: list[Repo] | None = None
        while True:
            name = self.queue.get()
            if name == _STOP:
                return
            if self.stop.is_set():
                with self.state.lock:
                    self.state.queued.discard(name)
                continue
            with self.state.lock:
                self.state.in_flight.add(name)
            try:
                if repo is None:
                    repo = self._make_repo()
                self.push_one(repo, name)
            except PitrError as exc:  # e.g. a repository that ignores conditional writes
                self._failed(name, exc.message)
                repo = None
                with self._storage_lock:
                    self._storage = None  # prove it again before the next push
            except Exception as exc:  # a worker must survive anything one segment does
                self._failed(name, f"unexpected {type(exc).__name__}: {exc}")
                log.exception("agent: pushing %s failed unexpectedly", name)
                repo = None
                with self._storage_lock:
                    self._storage = None  # rebuild the client in case it is what broke
            finally:
                with self.state.lock:
                    self.state.in_flight.discard(name)
                    self.state.queued.discard(name)
                self.wake.set()

    def push_one(self, repo: list[Repo], name: str) -> None:
        from pitr.wal.push import push_wal

        path = self.wal_dir / name
        try:
            before = os.stat(path)
        except FileNotFoundError:
            return  # archived by PostgreSQL's own archive-push and already recycled
        try:
            required, catch_up = self._split(repo)
            result = push_wal(required, path, level=self.cfg.compression.level,
                              budget=self.budget,
                              catch_up=catch_up, catch_up_budget=self.cfg.catch_up_budget)
        except PitrError as exc:
            if not (self.status_dir / f"{name}.ready").exists():
                return  # PostgreSQL finished with it meanwhile (e.g. the file was recycled)
            self._failed(name, exc.message, transient=isinstance(exc, TransientStorageError))
            return
        after = os.stat(path)
        ident = FileIdentity.of(before)
        if FileIdentity.of(after) != ident:
            # Not expected for a .ready segment; without a stable identity there is
            # nothing a receipt could prove, so archive-push will push it itself.
            event(log, logging.WARNING, f"{name} changed while it was pushed; no receipt")
            return
        self.spool.write_receipt(Receipt(
            name=name, repository=self.cfg.archive_target, identity=ident,
            checksum=result.checksum, stored_at=time.time(),
            already_archived=result.status == "already-archived"))
        with self.state.lock:
            self.state.stored.add(name)
            self.state.backoff.pop(name, None)
            c = self.state.counters
            c.consecutive_failures = 0
            if result.status == "already-archived":
                c.already_archived += 1
            else:
                c.stored += 1
            c.bytes_in += result.raw_bytes
            c.bytes_out += result.stored_bytes
            if c.last_stored is None or name > c.last_stored:
                c.last_stored, c.last_stored_at = name, time.time()

    def _split(self, repo: list[Repo]) -> tuple[list[Repo], list[tuple[Repo | None, Backlog]]]:
        """The handles of the required repositories, and the catch_up ones with their
        backlogs (docs/multiple-repositories.md), in config order; None for a catch_up
        one not proven yet (it gets nothing but backlog entries)."""
        required: list[Repo] = []
        catch_up: list[tuple[Repo | None, Backlog]] = []
        with self._storage_lock:
            unproven = set(self._unproven)
        for i, (r, rc) in enumerate(zip(repo, self.cfg.all_repositories, strict=True)):
            if rc.mode == "catch_up":
                catch_up.append((None if i in unproven else r,
                                 Backlog(self.spool.base, rc.name)))
            else:
                required.append(r)
        return required, catch_up

    def _catch_up(self) -> None:
        """The catch-up thread: drains every catch_up repository's backlog from the
        required repositories' copies; after a failed round (the repository is still
        down) it waits longer, up to CATCH_UP_MAX_WAIT."""
        from pitr.wal.catchup import drain

        wait = CATCH_UP_MIN_WAIT
        repo: list[Repo] | None = None
        while not self.stop.is_set():
            failed = False
            try:
                if repo is None:
                    repo = self._make_repo()
                self._prove_catch_up(repo)
                required, catch_up = self._split(repo)
                for target, backlog in catch_up:
                    if self.stop.is_set():
                        break
                    if not backlog.entries():
                        continue
                    if target is None or drain(backlog, required, target).error:
                        failed = True
            except Exception as exc:  # the thread must survive anything; archiving goes on
                event(log, logging.WARNING, "agent: catching up failed", error=str(exc))
                failed, repo = True, None
            wait = min(wait * 2, CATCH_UP_MAX_WAIT) if failed else CATCH_UP_MIN_WAIT
            self.stop.wait(wait)

    def _prove_catch_up(self, repo: list[Repo]) -> None:
        """Prove the conditional writes of catch_up repositories not proven yet (a
        remembered proof costs a stat: docs/design-fast-path.md)."""
        from pitr.condwrites import require_conditional_writes

        with self._storage_lock:
            unproven = sorted(self._unproven)
        for i in unproven:
            rc = self.cfg.all_repositories[i]
            try:
                require_conditional_writes(self.cfg.for_repository(rc), repo[i].storage)
            except PitrError as exc:
                event(log, logging.WARNING, f"agent: catch_up repository {rc.name} not "
                      "usable yet", error=exc.message)
                continue
            with self._storage_lock:
                self._unproven.discard(i)

    def _failed(self, name: str, message: str, *, transient: bool = False) -> None:
        with contextlib.suppress(OSError):
            self.spool.write_error(name, message)
        now = time.time()
        with self.state.lock:
            b = self.state.backoff.setdefault(name, Backoff())
            b.attempts += 1
            delay = backoff_delay(b.attempts)
            b.not_before = now + delay
            c = self.state.counters
            c.failed += 1
            c.consecutive_failures += 1
            c.last_error, c.last_error_at = f"{name}: {message}", now
        event(log, logging.WARNING, f"agent: {name} not archived, retrying in {delay:.1f}s",
              error=message, transient=transient, attempts=b.attempts)

    # -- metrics ------------------------------------------------------------
    def status(self, state: str) -> AgentStatus:
        now = time.time()
        ready = getattr(self, "_last_ready", [])
        with self.state.lock:
            c = self.state.counters
            pending = [n for n, _ in ready if n not in self.state.stored]
            return AgentStatus(
                state=state,
                pid=os.getpid(),
                stanza=self.cfg.stanza,
                pgdata=str(self.wal_dir.parent),
                workers=self.workers,
                mode="on-demand" if self.on_demand else "service",
                idle_exit=self.idle_exit,
                exit_reason=self.exit_reason,
                started_at=_utc(self.started_at),
                updated_at=datetime.fromtimestamp(now, UTC),
                backlog=len(ready),
                pending=len(pending),
                in_flight=len(self.state.in_flight),
                oldest_ready=ready[0][0] if ready else None,
                oldest_ready_age=round(now - min(m for _, m in ready), 3) if ready else None,
                oldest_pending=pending[0] if pending else None,
                last_stored=c.last_stored,
                last_stored_at=_utc(c.last_stored_at) if c.last_stored else None,
                totals={"stored": c.stored, "already_archived": c.already_archived,
                        "bytes_in": c.bytes_in, "bytes_out": c.bytes_out},
                consecutive_failures=c.consecutive_failures,
                total_failures=c.failed,
                last_error=c.last_error,
                last_error_at=_utc(c.last_error_at),
            )

    def write_status(self, state: str) -> None:
        try:
            self.spool.write_status(self.status(state).to_json())
        except OSError as exc:  # metrics must never stop archiving
            log.warning("agent: cannot write %s: %s", self.spool.status_path, exc)
