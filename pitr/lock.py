"""A stanza-wide lock object in the repository (one backup or expire at a time).

The lock is ``<stanza>/locks/<name>.json``, created with a conditional write
(``if_absent``), so two hosts sharing a repository exclude each other too. It
records who holds it. A lock whose holder is provably gone (same host, process
not alive) or that is older than ``stale_after`` is taken over with a warning:
a crashed run never blocks later ones for good.

Taking over is not atomic on object stores (read, delete, create): two runs
that find the same stale lock at the same instant could both proceed. The
``token`` check on release keeps one run from deleting the other's lock, and
a backup run cleans only what is older than its own lock.

The conditional write is only as good as the server: backup and expire prove
it (:func:`pitr.condwrites.require_conditional_writes`) before taking the lock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from types import TracebackType

from pitr.errors import AlreadyExists, LockedError, NotFound
from pitr.repo import Repo
from pitr.storage.base import put_bytes, read_bytes

log = logging.getLogger("pitr.lock")

_ATTEMPTS = 3


@dataclass(frozen=True)
class LockInfo:
    host: str
    pid: int
    started: str  # ISO 8601 UTC
    command: str
    token: str

    @property
    def started_at(self) -> datetime:
        return datetime.fromisoformat(self.started)

    def describe(self) -> str:
        return (f"pid {self.pid} on host {self.host}, started {self.started} "
                f"({self.command!r})")

    def encode(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def decode(cls, data: bytes) -> LockInfo:
        doc = json.loads(data)
        return cls(str(doc["host"]), int(doc["pid"]), str(doc["started"]),
                   str(doc.get("command", "")), str(doc.get("token", "")))


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host and is (still) a pitr process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
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
    if holder.host == host and not alive(holder.pid):
        return f"its process {holder.pid} on this host is gone"
    try:
        age = (now - holder.started_at).total_seconds()
    except (ValueError, TypeError):
        return "it is unreadable"
    if age > stale_after:
        return f"it is {age / 3600:.1f} h old (backup.lock_stale_after is " \
               f"{stale_after / 3600:.1f} h)"
    return None


class StanzaLock:
    """``with StanzaLock(repo, "backup", command=..., stale_after=...):`` — held inside."""

    def __init__(self, repo: Repo, name: str, *, command: str, stale_after: float,
                 host: str | None = None, pid: int | None = None,
                 what: str = "backup") -> None:
        self.repo = repo
        self.key = repo.lock_key(name)
        self.command = command
        self.stale_after = stale_after
        self.host = host or socket.gethostname()
        self.pid = pid or os.getpid()
        self.what = what
        self.info: LockInfo | None = None

    def acquire(self) -> LockInfo:
        for _ in range(_ATTEMPTS):
            mine = LockInfo(self.host, self.pid, datetime.now(UTC).isoformat(timespec="seconds"),
                            self.command, uuid.uuid4().hex)
            try:
                put_bytes(self.repo.storage, self.key, mine.encode(), if_absent=True)
                self.info = mine
                return mine
            except AlreadyExists:
                pass
            holder = self._read()
            if holder is None:
                continue  # released between our write and our read: try again
            reason = stale_reason(holder, now=datetime.now(UTC), host=self.host,
                                  stale_after=self.stale_after)
            if reason is None:
                raise LockedError(
                    f"another {self.what} holds the lock of stanza {self.repo.stanza!r}: "
                    f"{holder.describe()}",
                    hint=f"wait for it to finish. If that process is gone on another host, "
                         f"the lock is taken over after backup.lock_stale_after, or delete "
                         f"{self.key} from the repository by hand")
            log.warning("taking over the stale lock %s: %s (held by %s)", self.key, reason,
                        holder.describe())
            self._delete_if(holder.token)
        raise LockedError(f"could not take the lock {self.key}: other runs keep taking it",
                          hint="another pitr process on this stanza is racing for it")

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

    def release(self) -> None:
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
