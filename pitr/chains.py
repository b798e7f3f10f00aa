"""PURE backup chains: a full backup and the incremental backups taken on top of it.

An incremental backup (``pitr backup --incremental``, PostgreSQL 17+) holds only
the blocks changed since its parent, which it names in its manifest
(``"parent": "<id>"``). Restoring it needs every backup from the full one at the
root down to it: ``pg_combinebackup`` rebuilds one data directory from that chain
(docs/incremental-backups.md). The planner, retention, ``pitr list``, the drill
and ``pitr backup --incremental`` all ask this module which chain a backup has and
whether it is whole; nothing here does I/O.

A parent is usable for a new incremental only when its own PostgreSQL
``backup_manifest`` is stored beside it (:data:`BACKUP_MANIFEST_OBJECT`): that
file is what ``pg_basebackup --incremental`` compares the server's WAL summaries
against.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from pitr.catalog import Catalog
from pitr.manifest import BackupRecord

# PostgreSQL's backup_manifest of a backup, stored as its own object beside base.tar.zst
BACKUP_MANIFEST_OBJECT = "backup_manifest.zst"
# PostgreSQL 17 added pg_basebackup --incremental, WAL summaries and pg_combinebackup
MIN_MAJOR = 17


_CHECKSUM_LINE = re.compile(rb'"Manifest-Checksum": "([0-9a-f]{64})"}\s*$')


def manifest_checksum_problem(raw: bytes) -> str | None:
    """Why PostgreSQL's ``backup_manifest`` fails its own ``Manifest-Checksum``, or None.

    The checksum is the sha256 of everything up to and including the newline that
    ends the line before the checksum's own (the file's penultimate newline), as
    PostgreSQL's manifest parser computes it. A copy that fails it is never kept:
    an incremental backup taken against it would compare WAL summaries with a
    manifest that is not the one the server wrote (docs/incremental-backups.md).
    """
    m = _CHECKSUM_LINE.search(raw)
    if m is None:
        return "it has no Manifest-Checksum line at its end (cut off?)"
    end = raw.rfind(b"\n", 0, m.start())
    if end < 0:
        return "it has nothing before its Manifest-Checksum line"
    if hashlib.sha256(raw[:end + 1]).hexdigest() != m.group(1).decode():
        return "its content does not match its Manifest-Checksum"
    return None


@dataclass(frozen=True)
class Chain:
    """``backups`` oldest (the full backup) first; ``problem`` says why it is not whole."""

    backups: tuple[BackupRecord, ...]
    problem: str | None = None

    @property
    def whole(self) -> bool:
        return self.problem is None

    @property
    def root(self) -> BackupRecord:
        return self.backups[0]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(b.id for b in self.backups)


def has_backup_manifest(b: BackupRecord) -> bool:
    """Whether ``b`` can be the parent of an incremental backup."""
    return any(o.name == BACKUP_MANIFEST_OBJECT for o in b.objects)


def _missing(parent: str, child: str, catalog: Catalog | None) -> str:
    if catalog is not None and parent in catalog.damaged_backups:
        state = "its manifest is damaged"
    elif catalog is not None and parent in catalog.incomplete_backups:
        state = "it has no manifest (an incomplete backup)"
    else:
        state = "it is not in the repository"
    return f"backup {child} is incremental on backup {parent}, but {state}"


def chain_of(b: BackupRecord, by_id: dict[str, BackupRecord],
             catalog: Catalog | None = None) -> Chain:
    """The chain ending with ``b``, and the first reason it is not whole (if any).

    A parent must be a completed backup of the same cluster and timeline that
    stopped before its child started, and must have kept its backup_manifest.
    """
    out = [b]
    seen = {b.id}
    cur = b
    while cur.parent is not None:
        parent = by_id.get(cur.parent)
        problem = None
        if parent is None:
            problem = _missing(cur.parent, cur.id, catalog)
        elif parent.id in seen:
            problem = f"backup {cur.id}'s chain loops back to backup {parent.id}"
        elif parent.system_id != cur.system_id:
            problem = f"backup {cur.id}'s parent {parent.id} belongs to another cluster"
        elif parent.stop_lsn > cur.start_lsn:
            problem = f"backup {cur.id}'s parent {parent.id} stopped after it started"
        elif not has_backup_manifest(parent):
            problem = f"backup {cur.id}'s parent {parent.id} kept no backup_manifest"
        if problem is not None:
            return Chain(tuple(reversed(out)), problem)
        assert parent is not None
        out.append(parent)
        seen.add(parent.id)
        cur = parent
    return Chain(tuple(reversed(out)))


def chains(backups: Iterable[BackupRecord], catalog: Catalog | None = None
           ) -> dict[str, Chain]:
    """Every backup's chain, by id."""
    listed = list(backups)
    by_id = {b.id: b for b in listed}
    return {b.id: chain_of(b, by_id, catalog) for b in listed}


def whole_chain_backups(backups: Iterable[BackupRecord]) -> list[BackupRecord]:
    """The backups whose chain is whole among ``backups`` (order kept)."""
    listed = list(backups)
    by_id = {b.id: b for b in listed}
    return [b for b in listed if chain_of(b, by_id).whole]


def ancestors(ids: Iterable[str], backups: Iterable[BackupRecord]) -> set[str]:
    """Every backup some backup of ``ids`` depends on (its parents, their parents...)."""
    by_id = {b.id: b for b in backups}
    out: set[str] = set()
    for i in ids:
        cur = by_id.get(i)
        while cur is not None and cur.parent is not None and cur.parent not in out:
            out.add(cur.parent)
            cur = by_id.get(cur.parent)
    return out


# -- which kind of backup to take -----------------------------------------------------

@dataclass(frozen=True)
class KindDecision:
    """``parent`` None: take a full backup, for ``why``."""

    parent: BackupRecord | None
    why: str


def choose_parent(catalog: Catalog, *, major: int, summarize_wal: str,
                  server_compression: bool, timeline: int) -> KindDecision:
    """The backup a new incremental backup is taken against, or why there is none.

    The parent is the newest completed backup: an incremental of an older one would
    copy what the newest already holds. It must have a whole chain and its
    backup_manifest, be of the timeline the cluster now runs on (WAL summaries are
    kept per timeline by the server that wrote the WAL), and no damaged backup may
    be newer than it (that one might have been the parent meant).
    """
    if major < MIN_MAJOR:
        return KindDecision(None, f"the cluster runs PostgreSQL {major}; incremental backups "
                                  f"need PostgreSQL {MIN_MAJOR} or later")
    if server_compression:
        return KindDecision(None, "backup.server_compression is on: pg_basebackup then "
                                  "writes no backup_manifest pitr could keep, and an "
                                  "incremental backup needs its parent's")
    if summarize_wal != "on":
        return KindDecision(None, "summarize_wal is off on the cluster, so it has no WAL "
                                  "summaries to find the changed blocks with")
    if not catalog.backups:
        return KindDecision(None, f"stanza {catalog.stanza!r} has no completed backup to be "
                                  "the parent")
    newest = max(catalog.backups, key=lambda b: (b.stop_time, b.id))
    damaged = sorted(i for i in catalog.damaged_backups if i > newest.id)
    if damaged:
        return KindDecision(None, f"backup {damaged[-1]}, newer than the newest usable "
                                  f"backup {newest.id}, has a damaged manifest")
    chain = chain_of(newest, {b.id: b for b in catalog.backups}, catalog)
    if not chain.whole:
        return KindDecision(None, f"the newest backup's chain is broken: {chain.problem}")
    if not has_backup_manifest(newest):
        return KindDecision(None, f"the newest backup {newest.id} kept no backup_manifest "
                                  "(taken by an older pitr, before PostgreSQL 17, or with "
                                  "backup.server_compression)")
    if newest.timeline != timeline:
        return KindDecision(None, f"the newest backup {newest.id} is of timeline "
                                  f"{newest.timeline}, the cluster now runs on timeline "
                                  f"{timeline}")
    return KindDecision(newest, f"incremental on backup {newest.id} (chain "
                                f"{' <- '.join(chain.ids)})")


# A daily timer starts its runs a few seconds or minutes apart: without this slack the
# weekly full backup would slip to the 8th day whenever a run starts earlier than the
# last full one did (docs/incremental-backups.md "The schedule").
FULL_DUE_SLACK = 3600.0


def full_is_due(chain_root: BackupRecord, now_utc: datetime, full_interval: float) -> bool:
    """Whether a scheduled run takes a full backup: the chain's full backup started
    ``full_interval`` seconds ago or more, less an hour of slack (0: always full)."""
    if full_interval <= 0:
        return True
    age = (now_utc - chain_root.start_time).total_seconds()
    return age >= full_interval - min(FULL_DUE_SLACK, full_interval / 2)
