"""Plan a restore from the backups and only the WAL between the chosen backup and the target.

A full catalog lists every archived WAL object (a year: ~525 LIST requests). The
planner needs less: the manifests and history files, then the WAL on the timeline
path from the chosen backup's start to the first segment that covers the target
(and one more, which tells whether that segment is the newest). :func:`scoped_plan`
lists just that, streamed per timeline prefix from S3 StartAfter on.

It answers only when that answer is the full catalog's answer (docs/catalog-cache.md):
the choice of timeline and backup must follow from what was listed, and the planner
must succeed on it. Anything else (a gap, an unknown timeline creation time, a
target past the archive) returns None and the caller plans from the full catalog,
so every error message stays the full planner's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import datetime

from pitr import planner
from pitr.catalog import Catalog, SegmentList, Timeline, WalSegment, build_catalog
from pitr.errors import PlanError
from pitr.pg.names import WalKind, classify, lsn_to_segno, parse_segment_name, segment_name
from pitr.repo import Repo
from pitr.storage.base import ObjectInfo, read_bytes
from pitr.targets import Target, TargetKind


class Scope:
    """One plan's listings: :attr:`base` first; :meth:`full` only when the plan needs it.

    The fallback to the full catalog reuses the head listing and the small objects
    already read (manifests, history files, ``repo.json``), so it adds only the WAL
    listing instead of listing and reading the whole stanza again.
    """

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        stanza = repo.stanza
        self._head = list(repo.storage.list(f"{stanza}/", end_before=f"{stanza}/wal"))
        self._blobs: dict[str, bytes] = {}
        # Backups, identity and timelines (history files), without any WAL segment.
        self.base = build_catalog(stanza, [*self._head, *_history_objects(repo)], self._read)

    def _read(self, key: str) -> bytes:
        if key not in self._blobs:
            self._blobs[key] = read_bytes(self.repo.storage, key)
        return self._blobs[key]

    def full(self) -> Catalog:
        """The full catalog (what :func:`pitr.catalog.load_catalog` builds)."""
        repo = self.repo
        return build_catalog(repo.stanza, [*self._head, *repo.storage.list(repo.wal_prefix)],
                             self._read)


def base_catalog(repo: Repo) -> Catalog:
    """Backups, identity and timelines (history files), without any WAL segment."""
    return Scope(repo).base


def _history_objects(repo: Repo) -> Iterator[ObjectInfo]:
    """Each timeline's first WAL key, one request per timeline: its history file when
    there is one (``<tli>.history`` sorts before the timeline's directories)."""
    after: str | None = None
    while True:
        first = next(iter(repo.storage.list(repo.wal_prefix, start_after=after)), None)
        if first is None:
            return
        name = Repo.wal_name_of(first.key)
        if name is None:
            return  # not pitr's layout: leave it to the full catalog
        if classify(name) is WalKind.HISTORY:
            yield first
        # Past every key of this timeline (hex digits and '.' sort before 'G'); ending
        # in '/' keeps the marker whole for the S3 driver (see server_start_after).
        after = f"{repo.wal_prefix}{name[:8]}G/"


def scoped_plan(repo: Repo, base: Catalog, target: Target, now: datetime,
                backup_id: str | None = None) -> planner.RestorePlan | None:
    """The full planner's plan, from the WAL of one backup's path; None: plan in full."""
    try:
        tli = _timeline(base, target, backup_id)
        if tli is None:
            return None
        path = planner.timeline_path(base, tli)
        backup = planner.choose_backup(base, target, tli, path, backup_id)
    except PlanError:
        return None
    segs = _path_wal(repo, base, path, backup.start_lsn, backup.stop_lsn, target)
    timelines = dict(base.timelines)
    for t in segs:
        timelines.setdefault(t, Timeline(t))
    cat = dataclasses.replace(base, segments={t: SegmentList.of(t, v) for t, v in segs.items()},
                              timelines={t: timelines[t] for t in sorted(timelines)})
    loaded = planner._path_segments(cat, path)
    if target.timeline is None and target.kind is TargetKind.TIME:
        assert target.time is not None
        if not any(s.archived_at >= target.time for s in loaded.values()):
            return None  # the full planner might pick another timeline
    if target.timeline is None and target.kind is TargetKind.LSN:
        assert target.lsn is not None
        if lsn_to_segno(target.lsn, base.segment_size) not in loaded:
            return None
    try:
        return planner.plan(cat, target, now, backup_id=backup_id)
    except PlanError:
        return None


def _timeline(base: Catalog, target: Target, backup_id: str | None) -> int | None:
    """The timeline the full planner picks, when the listed facts decide it."""
    if target.timeline is not None:
        return target.timeline
    if target.kind is TargetKind.IMMEDIATE and base.backups:
        pick = [b for b in base.backups if backup_id in (None, b.id)]
        return max(pick, key=lambda b: (b.stop_time, b.stop_lsn)).timeline if pick else 1
    tlis = planner._known_timelines(base)
    if target.kind is TargetKind.TIME:
        assert target.time is not None
        if any(base.timelines[t].created_at is None for t in tlis if t in base.timelines
               and base.timelines[t].history):
            return None  # created_at would come from WAL objects not listed
        existing = [t for t in tlis
                    if (c := planner._created_at(base, t)) is None
                    or c <= target.time]
        return existing[0] if existing else None
    return tlis[0]


def _path_wal(repo: Repo, base: Catalog, path: tuple[planner.PathStep, ...], start_lsn: int,
              stop_lsn: int, target: Target) -> dict[int, tuple[WalSegment, ...]]:
    """Segments on ``path`` from ``start_lsn``'s segment to one past the first that
    covers ``target`` (the planner's rule), listed per timeline after a StartAfter."""
    size = base.segment_size
    start, stop = lsn_to_segno(start_lsn, size), lsn_to_segno(stop_lsn, size)
    out: dict[int, list[WalSegment]] = {}
    covered: int | None = None
    for i, step in enumerate(path):
        lo = max(lsn_to_segno(step.begin_lsn, size), start)
        hi = lsn_to_segno(path[i + 1].begin_lsn, size) if i + 1 < len(path) else None
        if hi is not None and lo >= hi:
            continue
        first_key = repo.wal_key(segment_name(step.tli, lo, size))
        listed = repo.storage.list(f"{repo.wal_prefix}{step.tli:08X}",
                                   start_after=first_key[:-len(".zst")])
        for obj in listed:
            name = Repo.wal_name_of(obj.key)
            if name is None or classify(name) is not WalKind.SEGMENT:
                continue
            tli, segno = parse_segment_name(name, size)
            if hi is not None and segno >= hi:
                break
            seg = WalSegment(tli, segno, obj.size, obj.mtime, obj.key, obj.storage_class)
            out.setdefault(tli, []).append(seg)
            if covered is not None and segno > covered:
                return {t: tuple(v) for t, v in out.items()}
            if covered is None and segno >= stop and planner._covers(
                    seg, segno, target, size):
                covered = segno
    return {t: tuple(v) for t, v in out.items()}
