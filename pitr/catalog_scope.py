"""Plan a restore from the backups and only the WAL between the chosen backup and the target.

A full catalog lists every archived WAL object (a year: ~525 LIST requests). The
planner needs less: the manifests and history files, then the WAL on the timeline
path from the chosen backup's start to the first segment that covers the target
(and one more, which tells whether that segment is the newest). :func:`scoped_plan`
lists just that, streamed per timeline prefix from S3 StartAfter on.

It answers only when that answer is the full catalog's answer (docs/catalog-cache.md;
the one exception, a backup whose stale lock was taken over while it ran, is described
there):
the choice of timeline and backup must follow from what was listed, and the planner
must succeed on it. Anything else (a gap, an unknown timeline creation time, a
target past the archive) returns None and the caller plans from the full catalog,
so every error message stays the full planner's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator
from datetime import datetime

from pitr import planner
from pitr.catalog import Catalog, SegmentList, Timeline, WalSegment, build_catalog
from pitr.errors import PlanError
from pitr.pg.names import WalKind, classify, lsn_to_segno, parse_segment_name, segment_name
from pitr.pg.walname import is_segment_name
from pitr.repo import Layout, Repo
from pitr.storage.base import ObjectInfo, read_bytes
from pitr.targets import Target, TargetKind


class Scope:
    """One plan's listings: the stanza's keys before ``<stanza>/wal`` and each timeline's
    history file, listed once; manifests are read as they are needed.

    :attr:`base` reads every manifest; :meth:`base_for` only those a time target needs.
    The fallback to the full catalog (:meth:`full`) reuses the head listing and the
    small objects already read (manifests, history files, ``repo.json``), so it adds
    only the WAL listing instead of listing and reading the whole stanza again.
    """

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        stanza = repo.stanza
        self._head = list(repo.storage.list(f"{stanza}/", end_before=f"{stanza}/wal"))
        self._history = list(_history_objects(repo))
        self._blobs: dict[str, bytes] = {}
        self._base: Catalog | None = None
        layout = Layout(stanza)
        self._owner: dict[str, str] = {}  # key under backups/ -> its backup id
        complete = set()  # ids with a manifest
        for o in self._head:
            owner = layout.backup_id_of(o.key)
            if owner is not None:
                self._owner[o.key] = owner[0]
                if owner[1]:
                    complete.add(owner[0])
        self._complete = complete

    def _read(self, key: str) -> bytes:
        if key not in self._blobs:
            self._blobs[key] = read_bytes(self.repo.storage, key)
        return self._blobs[key]

    @property
    def base(self) -> Catalog:
        """Backups (every manifest read), identity and timelines, without any WAL segment."""
        if self._base is None:
            self._base = build_catalog(self.repo.stanza, [*self._head, *self._history],
                                       self._read)
        return self._base

    def base_of(self, ids: Collection[str]) -> Catalog:
        """:attr:`base` with only the completed backups ``ids`` (incomplete ones stay: a
        chain's problem names them)."""
        done = self._complete
        head = [o for o in self._head if o.key not in self._owner
                or self._owner[o.key] in ids or self._owner[o.key] not in done]
        return build_catalog(self.repo.stanza, [*head, *self._history], self._read)

    def base_for(self, target: Target) -> Catalog:
        """What :func:`scoped_plan` needs for ``target``: for a time target, the manifests of
        the newest backups begun before it, read newest first until one of them can be
        restored to it (with the backups its chain needs); for any other, :attr:`base`.

        A backup's id is when it was begun, under the stanza lock it holds until its
        manifest is written (pitr/backup.py), so a backup begun earlier also finished
        earlier: the planner, which takes the newest backup it can, never wants one of
        those left unread. Names pitr did not write, or no such backup: :attr:`base`.
        """
        from pitr.backup import id_time

        if self._base is not None or target.kind is not TargetKind.TIME:
            return self.base
        assert target.time is not None
        times = {i: id_time(i) for i in self._complete}
        if any(t is None for t in times.values()):
            return self.base
        history = self.base_of(())
        try:
            tli = _timeline(history, target, None)
            if tli is None:
                return self.base
            path = planner.timeline_path(history, tli)
        except PlanError:
            return self.base  # the planner says why, from every backup
        before = sorted((i for i, t in times.items() if t is not None and t <= target.time),
                        reverse=True)
        loaded: set[str] = set()
        for at in range(0, len(before), _BATCH):
            loaded.update(before[at:at + _BATCH])
            cat = self.base_of(loaded)
            while missing := {b.parent for b in cat.backups if b.parent
                              and b.parent not in loaded and b.parent in times}:
                loaded |= missing
                cat = self.base_of(loaded)
            if any(planner.restores_to(cat, b, target, path) for b in cat.backups):
                return cat
        return self.base

    def full(self) -> Catalog:
        """The full catalog (what :func:`pitr.catalog.load_catalog` builds)."""
        repo = self.repo
        return build_catalog(repo.stanza, [*self._head, *repo.storage.list(repo.wal_prefix)],
                             self._read)


_BATCH = 4  # manifests read at a time (in parallel) while looking for a time target's backup


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


def scoped_plan(scope: Scope, target: Target, now: datetime,
                backup_id: str | None = None) -> planner.RestorePlan | None:
    """The full planner's plan, from the WAL of one backup's path; None: plan in full."""
    repo = scope.repo
    base = scope.base if backup_id is not None else scope.base_for(target)
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
    # What planner._path_segments(cat, path) would give: _path_wal lists only the path.
    loaded = [s for v in segs.values() for s in v]
    if target.timeline is None and target.kind is TargetKind.TIME:
        assert target.time is not None
        if not any(s.archived_at >= target.time for s in loaded):
            return None  # the full planner might pick another timeline
    if target.timeline is None and target.kind is TargetKind.LSN:
        assert target.lsn is not None
        if lsn_to_segno(target.lsn, base.segment_size) not in {s.segno for s in loaded}:
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
        # end_before: the listing asks for no page past this step ahead of need
        end = repo.wal_key(segment_name(step.tli, hi, size)) if hi is not None else None
        listed = repo.storage.list(f"{repo.wal_prefix}{step.tli:08X}",
                                   start_after=first_key[:-len(".zst")], end_before=end)
        for obj in listed:
            name = Repo.wal_name_of(obj.key)
            if name is None or not is_segment_name(name):  # classify(name) is SEGMENT
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
