"""The backlog of a ``catch_up`` repository: segments it missed, filled later from a required one.

docs/multiple-repositories.md, "catch_up repositories". archive-push exits 0 once a
segment is durable in every REQUIRED repository; PostgreSQL may then recycle its file.
So what a catch_up repository did not take is recorded here as a NAME only (one small
file per segment, fsynced with its directory before archive-push returns), and the
drain copies the segment repository-to-repository from a required repository's copy,
proven on the way like ``pitr copy`` does (pitr/copy.py): its header, one whole zstd
frame, the checksum of its content. Never the WAL bytes from pg_wal: they may be gone.

Layout: ``<spool>/<stanza>/catch-up/<repository name>/<segment name>``, the file holding
``{"queued_at": <unix time>}``. The lag of a repository is the number of these files
and the age of the oldest (:func:`lag_of`, clock passed in).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pitr.atomic import atomic_write
from pitr.errors import NotFound, PitrError, TransientStorageError
from pitr.log import event
from pitr.pg.names import classify

if TYPE_CHECKING:
    from pitr.repo import Repo

log = logging.getLogger("pitr.wal.catchup")

BACKLOG_DIR = "catch-up"
# a sync archive-push drains at most this often and for at most this long: PostgreSQL's
# archiver waits for it (the agent drains on its own schedule, without this bound)
SYNC_DRAIN_INTERVAL = 30.0
SYNC_DRAIN_BUDGET = 2.0
_LAST_TRY = ".last-try"


@dataclass(frozen=True)
class Lag:
    """How far a catch_up repository is behind: segments waiting, and the oldest one."""

    repository: str
    segments: int
    oldest: str | None
    oldest_age: float | None  # seconds

    def to_json(self) -> dict[str, Any]:
        return {"repository": self.repository, "segments": self.segments,
                "oldest": self.oldest,
                "oldest_age": None if self.oldest_age is None else round(self.oldest_age, 3)}


def lag_of(repository: str, entries: Sequence[tuple[str, float]], now: float) -> Lag:
    """The lag from the backlog's (name, queued_at) entries at time ``now``."""
    if not entries:
        return Lag(repository, 0, None, None)
    oldest_name, oldest_at = min(entries, key=lambda e: (e[1], e[0]))
    return Lag(repository, len(entries), oldest_name, max(0.0, now - oldest_at))


def lag_problem(lag: Lag, max_age: float) -> str | None:
    """Why this lag is unhealthy (the oldest waiting segment is older than ``max_age``
    seconds), or None. ``max_age`` 0 never alarms."""
    if max_age <= 0 or lag.oldest_age is None or lag.oldest_age <= max_age:
        return None
    return (f"repository {lag.repository}: {lag.segments} WAL segment(s) not yet copied "
            f"(catch_up), the oldest {lag.oldest} waiting {lag.oldest_age:.0f}s "
            f"(> {max_age:.0f}s)")


def try_inline(backlog_segments: int) -> bool:
    """Whether archive-push offers a segment to a catch_up repository itself. Not while
    the repository is behind: a repository that is down would cost every segment its
    timeout, and the drain fills it in order anyway."""
    return backlog_segments == 0


def drain_due(last_try: float | None, now: float, interval: float) -> bool:
    """Whether a sync archive-push drains now (the last drain attempt was ``last_try``)."""
    return last_try is None or now - last_try >= interval or now < last_try


class Backlog:
    """One catch_up repository's backlog in the spool (see the module doc)."""

    def __init__(self, spool_base: Path, repository: str) -> None:
        self.repository = repository
        self.dir = Path(spool_base) / BACKLOG_DIR / repository

    def add(self, name: str, *, now: float) -> None:
        """Record ``name`` durably (file and directory fsynced): after this returns,
        archive-push may exit 0. The first record of a name keeps its time."""
        classify(name)  # only WAL names become file names here
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.dir / name
        if path.exists():
            return
        atomic_write(path, json.dumps({"queued_at": now}), durable=True)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / name).unlink()

    def entries(self) -> list[tuple[str, float]]:
        """(name, queued_at) of every waiting segment, in name order."""
        out: list[tuple[str, float]] = []
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return out
        for name in names:
            if name.startswith("."):
                continue
            try:
                queued_at = float(json.loads((self.dir / name).read_text())["queued_at"])
            except FileNotFoundError:
                continue  # drained meanwhile
            except (OSError, ValueError, KeyError, TypeError):
                # unreadable: still waiting; its age is unknown, so it counts as oldest
                queued_at = 0.0
            out.append((name, queued_at))
        return out

    def lag(self, now: float) -> Lag:
        return lag_of(self.repository, self.entries(), now)

    def last_try(self) -> float | None:
        try:
            return (self.dir / _LAST_TRY).stat().st_mtime
        except OSError:
            return None

    def mark_try(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.dir / _LAST_TRY).touch()


@dataclass
class DrainResult:
    copied: int = 0
    error: str | None = None  # why the drain stopped early (the repository is still down)
    # in no required repository any more (expired there while this one was behind): left
    # in the backlog, so the lag shows them; `pitr copy` cannot bring them back either
    missing: list[str] = field(default_factory=list)


def copy_segment(sources: Sequence[Repo], target: Repo, name: str) -> None:
    """Store ``name`` in ``target`` from the first required repository that has it,
    proven before it is stored (pitr/copy.py's rule); an object already in ``target``
    must have the same content. Raises when no source could give it."""
    from pitr.copy import CopyResult, copy_wal

    failure: PitrError | None = None
    absent = 0
    for src in sources:
        try:
            ident = src.read_identity()
            if ident is not None:
                target.ensure_identity(int(ident.system_id), ident.pg_version,
                                       ident.segment_size)
            copy_wal(src, target, src.wal_key(name), name, None, CopyResult())
            return
        except NotFound as exc:
            absent += 1
            failure = failure or exc
        except PitrError as exc:
            failure = failure or exc
    if sources and absent == len(sources):
        raise NotFound(f"{name}: in none of the required repositories any more")
    raise failure or TransientStorageError(f"{name}: no required repository to copy from")


def drain(backlog: Backlog, sources: Sequence[Repo], target: Repo, *,
          deadline: float | None = None,
          clock: Callable[[], float] = time.monotonic) -> DrainResult:
    """Copy every waiting segment into ``target``, oldest name first, removing each from
    the backlog once stored. Stops at the first failure (the repository is likely still
    down: the next round tries again) or at ``deadline`` (on ``clock``)."""
    res = DrainResult()
    for name, _ in backlog.entries():
        if deadline is not None and clock() >= deadline:
            break
        try:
            copy_segment(sources, target, name)
        except NotFound as exc:
            if name not in res.missing:
                event(log, logging.ERROR, f"catch-up of {backlog.repository}: {name} cannot "
                      "be copied", error=exc.message)
            res.missing.append(name)
            continue
        except PitrError as exc:
            res.error = exc.message
            event(log, logging.WARNING, f"catch-up of {backlog.repository} stopped at {name}",
                  error=exc.message, copied=res.copied)
            break
        backlog.remove(name)
        res.copied += 1
    if res.copied:
        event(log, logging.INFO, f"caught up {res.copied} segment(s) in {backlog.repository}",
              waiting=len(backlog.entries()))
    return res
