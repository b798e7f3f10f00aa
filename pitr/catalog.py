"""Typed view of a repository: completed backups, archived WAL, timelines.

The records here are what the planner, retention, verify and monitoring read.
They are plain frozen dataclasses so the pure decision functions can be
tested on catalogs built in memory (see tests/unit) without any storage.

``load_catalog`` lists the repository once (one paged listing of the stanza)
and reads only the small objects it must: manifests and history files.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pitr.pg.names import DEFAULT_SEGMENT_SIZE, HistoryEntry

MANIFEST_FORMAT = 1


@dataclass(frozen=True, slots=True)
class BackupObject:
    name: str  # e.g. "base.tar.zst"
    key: str  # storage key
    raw_bytes: int
    stored_bytes: int
    sha256: str  # of the stored (compressed) bytes
    raw_sha256: str = ""


@dataclass(frozen=True)
class BackupRecord:
    """A completed backup, as its manifest describes it."""

    id: str
    label: str  # "scheduled" | "manual"
    start_lsn: int
    stop_lsn: int
    start_time: datetime  # UTC
    stop_time: datetime  # UTC: what the planner compares targets with
    timeline: int
    system_id: str
    pg_version: int
    db_size: int
    raw_bytes: int
    stored_bytes: int
    objects: tuple[BackupObject, ...] = ()
    pitr_version: str = ""
    pinned: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def compression_ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else 0.0


@dataclass(frozen=True, slots=True)
class WalSegment:
    timeline: int
    segno: int
    stored_bytes: int
    archived_at: datetime  # when the object was stored: an upper bound of its commit times
    key: str = ""


@dataclass(frozen=True, slots=True)
class WalRange:
    """Contiguous archived segments of one timeline: ``first``..``last`` inclusive."""

    timeline: int
    first: int
    last: int
    first_archived_at: datetime
    last_archived_at: datetime
    stored_bytes: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class WalGap:
    """Segments ``first``..``last`` of ``timeline`` are missing between two ranges."""

    timeline: int
    first: int
    last: int


@dataclass(frozen=True)
class Timeline:
    tli: int
    history: tuple[HistoryEntry, ...] = ()  # from NNNNNNNN.history (empty for timeline 1)
    # When the timeline came into being: the archive time of its .history object
    # (None: unknown; the planner then uses its earliest archived segment).
    created_at: datetime | None = None

    @property
    def parent(self) -> int | None:
        return self.history[-1].parent if self.history else None

    @property
    def branch_lsn(self) -> int | None:
        """LSN at which this timeline branched off its parent."""
        return self.history[-1].switch_lsn if self.history else None


@dataclass(frozen=True)
class Catalog:
    stanza: str
    system_id: str | None
    segment_size: int = DEFAULT_SEGMENT_SIZE
    backups: tuple[BackupRecord, ...] = ()  # completed only, sorted by stop_time
    segments: dict[int, tuple[WalSegment, ...]] = field(default_factory=dict)  # by tli, by segno
    timelines: dict[int, Timeline] = field(default_factory=dict)
    incomplete_backups: tuple[str, ...] = ()  # ids with objects but no manifest
    backup_history_files: tuple[str, ...] = ()  # archived *.backup names
    partial_files: tuple[str, ...] = ()

    def ranges(self, tli: int | None = None) -> list[WalRange]:
        tlis = [tli] if tli is not None else sorted(self.segments)
        out: list[WalRange] = []
        for t in tlis:
            out.extend(contiguous_ranges(self.segments.get(t, ())))
        return out

    def gaps(self, tli: int | None = None) -> list[WalGap]:
        out: list[WalGap] = []
        for t in [tli] if tli is not None else sorted(self.segments):
            rs = self.ranges(t)
            out.extend(WalGap(t, a.last + 1, b.first - 1) for a, b in itertools.pairwise(rs))
        return out


def contiguous_ranges(segments: tuple[WalSegment, ...] | list[WalSegment]) -> list[WalRange]:
    """Group one timeline's segments (sorted by segno) into contiguous ranges."""
    out: list[WalRange] = []
    run: list[WalSegment] = []
    for seg in segments:
        if run and seg.segno != run[-1].segno + 1:
            out.append(_range_of(run))
            run = []
        run.append(seg)
    if run:
        out.append(_range_of(run))
    return out


def _range_of(run: list[WalSegment]) -> WalRange:
    return WalRange(run[0].timeline, run[0].segno, run[-1].segno, run[0].archived_at,
                    max(s.archived_at for s in run), sum(s.stored_bytes for s in run))
