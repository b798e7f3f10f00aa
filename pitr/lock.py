"""A stanza-wide lock object in the repository (one backup or expire at a time).

The lock is ``<stanza>/locks/<name>.json``, created with a conditional write
(``if_absent``), so two hosts sharing a repository exclude each other too. It
records who holds it and a **lease**: the holder rewrites ``renewed`` every
``lease / 3`` seconds while it works (a thread), so a lock whose lease runs
means a live holder.

Takeover rule (docs/fault-table.md). A lock is taken over, with a warning,
only when its lease has expired **and** its holder is provably gone:

* same host: the holder's process is not alive (a live process keeps its lock
  however late its renewals are: it may be stopped, or its repository slow);
* another host: pitr cannot see that process, so "gone" means the lease
  expired more than ``backup.lock_stale_after`` ago (default 6 h);
* an unreadable lock (a torn write) holds nobody.

Taking over is not atomic on object stores (read, delete, create): two runs
that find the same stale lock at the same instant could both proceed. The
``token`` check on release and renewal keeps one run from deleting or renewing
the other's lock; a holder whose renewal finds another token has **lost** the
lock (``StanzaLock.lost``) and a backup then re-checks its objects before it
writes its manifest.

The conditional write is only as good as the server: backup and expire prove
it (:func:`pitr.condwrites.require_conditional_writes`) before taking the lock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType

from pitr.errors import AlreadyExists, LockedError, NotFound, PitrError
from pitr.repo import Repo
from pitr.storage.base import put_bytes, read_bytes

log = logging.getLogger("pitr.lock")

_ATTEMPTS = 3
LEASE = 60.0  # seconds; renewed every LEASE / 3


@dataclass(frozen=True)
class LockInfo:
    host: str
    pid: int
    started: str  # ISO 8601 UTC
    command: str
    token: str
    renewed: str = ""  # ISO 8601 UTC; "" (a lock written before leases): = started
    lease: float = 0.0  # seconds after ``renewed`` the holder promises to renew by

    @property
    def started_at(self) -> datetime:
        return datetime.fromisoformat(self.started)

    @property
    def lease_end(self) -> datetime:
        return datetime.fromisoformat(self.renewed or self.started) + timedelta(
            seconds=self.lease)

    def describe(self) -> str:
        try:
            until = self.lease_end.isoformat()
        except ValueError:
            until = "?"
        return (f"pid {self.pid} on host {self.host}, started {self.started} "
                f"({self.command!r}), lease until {until}")

    def encode(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def decode(cls, data: bytes) -> LockInfo:
        doc = json.loads(data)
        return cls(str(doc["host"]), int(doc["pid"]), str(doc["started"]),
                   str(doc.get("command", "")), str(doc.get("token", "")),
                   str(doc.get("renewed", "")), float(doc.get("lease", 0.0)))


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host and is (still) a pitr process."""
    from pitr.pg.ctl import process_exists

    if not process_exists(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except OSError:
        return True  # no /proc: trust kill(0)
    # A recycled pid that now belongs to something else does not hold our lock.
    return b"pitr" in cmdline


def stale_reason(holder: LockInfo, *, now: datetime, host: str, stale_after: float,
                 alive: Callable[[int], bool] = pid_alive) -> str | None:
    """Why ``holder``'s lock may be taken over, or None while it must be respected."""
    try:
        overdue = (now - holder.lease_end).total_seconds()
    except (ValueError, TypeError):
        return "it is unreadable"
    if overdue <= 0:
        return None  # the lease runs: the holder renewed it lately
    if holder.host == host:
        if alive(holder.pid):
            return None
        return (f"its lease expired {overdue:.0f} s ago and its process {holder.pid} on "
                "this host is gone")
    if overdue > stale_after:
        return (f"its lease expired {overdue / 3600:.1f} h ago on host {holder.host} "
                f"(backup.lock_stale_after is {stale_after / 3600:.1f} h)")
    return None


class Lease:
    """Calls ``renew`` every ``interval`` seconds on a daemon thread until stopped."""

    def __init__(self, renew: Callable[[], bool], interval: float, what: str) -> None:
        self._renew = renew
        self._interval = interval
        self._what = what
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease {what}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if not self._renew():
                    return
            except PitrError as exc:  # a late renewal is safe: see the takeover rule
                log.warning("could not renew %s: %s", self._what, exc.message)
            except Exception as exc:
                log.warning("could not renew %s: %s", self._what, exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)


class StanzaLock:
    """``with StanzaLock(repo, "backup", command=..., stale_after=...):`` — held inside."""

    def __init__(self, repo: Repo, name: str, *, command: str, stale_after: float,
                 host: str | None = None, pid: int | None = None,
                 what: str = "backup", lease: float = LEASE) -> None:
        self.repo = repo
        self.key = repo.lock_key(name)
        self.command = command
        self.stale_after = stale_after
        self.host = host or socket.gethostname()
        self.pid = pid or os.getpid()
        self.what = what
        self.lease = lease
        self.info: LockInfo | None = None
        self.took_over: str | None = None  # why the lock we hold was someone else's
        self.lost = False  # a renewal found another holder's token
        self._lease: Lease | None = None

    def acquire(self) -> LockInfo:
        for _ in range(_ATTEMPTS):
            now = datetime.now(UTC)
            # renewed to the millisecond: a lease of seconds must not lose up to one
            mine = LockInfo(self.host, self.pid, now.isoformat(timespec="seconds"),
                            self.command, uuid.uuid4().hex,
                            now.isoformat(timespec="milliseconds"), self.lease)
            try:
                put_bytes(self.repo.storage, self.key, mine.encode(), if_absent=True)
                self.info = mine
                self._lease = Lease(self._renew, self.lease / 3, f"the lock {self.key}")
                self._lease.start()
                return mine
            except AlreadyExists:
                pass
            holder = self._read()
            if holder is None:
                continue  # released between our write and our read: try again
            now = datetime.now(UTC)
            reason = stale_reason(holder, now=now, host=self.host,
                                  stale_after=self.stale_after)
            wait = self._dead_holders_lease(holder, now)
            if reason is None and wait:
                # provably gone (killed on this host) but its lease runs: a short wait
                log.warning("the lock %s is held by %s, which is gone: waiting %.0f s for its "
                            "lease to expire", self.key, holder.describe(), wait)
                time.sleep(wait)
                continue
            if reason is None:
                raise LockedError(
                    f"another {self.what} holds the lock of stanza {self.repo.stanza!r}: "
                    f"{holder.describe()}",
                    hint=f"wait for it to finish. A holder renews its lease while it works; "
                         f"the lock is taken over once the lease expired and the holder is "
                         f"gone (this host: its process ended; another host: "
                         f"backup.lock_stale_after after the lease), or delete {self.key} "
                         f"from the repository by hand once you are sure")
            log.warning("taking over the stale lock %s: %s (held by %s)", self.key, reason,
                        holder.describe())
            self.took_over = f"{reason} (held by {holder.describe()})"
            self._delete_if(holder.token)
        raise LockedError(f"could not take the lock {self.key}: other runs keep taking it",
                          hint="another pitr process on this stanza is racing for it")

    def _dead_holders_lease(self, holder: LockInfo, now: datetime) -> float:
        """Seconds left of the lease of a holder that died on this host (else 0)."""
        try:
            left = (holder.lease_end - now).total_seconds()
        except ValueError:
            return 0.0
        if holder.host != self.host or left <= 0 or left > holder.lease + 1:
            return 0.0
        return 0.0 if pid_alive(holder.pid) else left + 0.5

    def _read(self) -> LockInfo | None:
        try:
            data = read_bytes(self.repo.storage, self.key)
        except NotFound:
            return None
        try:
            return LockInfo.decode(data)
        except (ValueError, KeyError, TypeError):
            # An unreadable lock (torn write on a broken disk) holds nobody.
            return LockInfo("?", 0, "unreadable", "?", "")

    def _delete_if(self, token: str) -> None:
        current = self._read()
        if current is not None and current.token == token:
            self.repo.storage.delete([self.key])

    def _renew(self) -> bool:
        """Push the lease on; False (stop renewing) once another run holds the lock."""
        if self.info is None:
            return False
        current = self._read()
        if current is None or current.token != self.info.token:
            self.lost = True
            log.error("the lock %s was taken over by %s while this run held it", self.key,
                      current.describe() if current else "nobody (it was deleted)")
            return False
        renewed = replace(self.info,
                          renewed=datetime.now(UTC).isoformat(timespec="milliseconds"))
        put_bytes(self.repo.storage, self.key, renewed.encode())
        self.info = renewed
        return True

    def still_mine(self) -> bool:
        """Whether the repository's lock is still this run's (read now)."""
        current = self._read()
        return (self.info is not None and not self.lost and current is not None
                and current.token == self.info.token)

    def release(self) -> None:
        if self._lease is not None:
            self._lease.stop()
            self._lease = None
        if self.info is None:
            return
        try:
            self._delete_if(self.info.token)
        except Exception as exc:  # a lock left behind is stale later, not a failed backup
            log.warning("could not release the lock %s: %s", self.key, exc)
        self.info = None

    def __enter__(self) -> LockInfo:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
