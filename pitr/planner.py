"""PURE restore planning: (catalog, target, now) -> RestorePlan, or a PlanError that explains.

The planner proves, before any byte is downloaded or any cluster started, that
the archive holds what PostgreSQL will ask for:

* the **timeline** to recover along (a time target uses the branch that
  existed at that time; ``Target.timeline`` pins one), and its **path** of
  ancestor timelines from the ``.history`` files;
* the **backup**: the newest completed one on that path that finished at or
  before the target (stop time, or stop LSN for an LSN target) and whose chain
  is whole: an incremental backup needs every parent back to its full backup
  (pitr/chains.py, docs/incremental-backups.md), and a broken chain is skipped
  with a note (or refused, with the reason, when ``--backup`` names it);
* the **WAL**: every segment from the backup's start segment to the segment
  covering the target, present and contiguous along the path. PostgreSQL
  reads each segment from the newest timeline of the path that had begun by
  then, so the segment holding a switch point comes from the child timeline.

A time target is located with segment archive times: a segment is archived
after every commit inside it, so the first segment archived at or after the
target covers it. If no segment was archived that late, the archive is behind
and PostgreSQL 15 would stop with "recovery ended before configured recovery
target was reached"; the planner says how far behind instead.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from pitr import tiers
from pitr.catalog import Catalog, WalSegment, from_us
from pitr.chains import chain_of
from pitr.errors import PlanError
from pitr.manifest import BackupRecord
from pitr.pg.names import format_lsn, history_name, lsn_to_segno, segment_name
from pitr.progress import human_age
from pitr.targets import Target, TargetKind, format_time


@dataclass(frozen=True, slots=True)
class PathStep:
    """Timeline ``tli`` is on the recovery path from ``begin_lsn`` up to ``end_lsn``."""

    tli: int
    begin_lsn: int
    end_lsn: int | None  # None: the target timeline itself (open-ended)


@dataclass(frozen=True)
class RestorePlan:
    backup: BackupRecord
    target: Target
    timeline: int  # recovery_target_timeline
    path: tuple[PathStep, ...]
    segments: tuple[str, ...]  # WAL PostgreSQL will fetch, in replay order
    wal_bytes: int  # stored (compressed) bytes of those segments
    recovery_settings: dict[str, str]  # recovery_target_* (values unquoted)
    end_lsn: int  # start LSN of the segment after the last planned one (upper bound)
    # Replay must reach at least this LSN. For "latest", one byte into the last planned
    # segment (a record must end in it: a segment missing after a switch record leaves
    # replay exactly at its start): PostgreSQL ends such a recovery wherever archive-get
    # first says "absent" and cannot know it was told too early. Explicit targets
    # PostgreSQL checks itself ("recovery ended before configured recovery target was
    # reached"), so for them it is the end of the backup.
    replay_until: int
    wal_end_time: datetime | None  # archive time of the last planned segment
    notes: tuple[str, ...] = field(default=())
    # the backups pg_combinebackup rebuilds ``backup`` from, full backup first, ``backup``
    # last (docs/incremental-backups.md); empty: ``backup`` alone (a full backup)
    chain: tuple[BackupRecord, ...] = field(default=())
    # (key, storage class) of the objects this restore reads that sit in an archive class
    # (GLACIER, DEEP_ARCHIVE): `pitr restore --thaw` restores them first (docs/storage-tiers.md)
    cold: tuple[tuple[str, str], ...] = field(default=())

    @property
    def thaw_estimate(self) -> tuple[float, float] | None:
        """Hours until the cold objects are readable with Standard retrieval."""
        return tiers.thaw_estimate((c for _, c in self.cold), "Standard")

    @property
    def segment_count(self) -> int:
        return len(self.segments)

    @property
    def backups(self) -> tuple[BackupRecord, ...]:
        """Every backup the restore downloads, full backup first."""
        return self.chain or (self.backup,)

    @property
    def backup_bytes(self) -> int:
        return sum(b.stored_bytes for b in self.backups)

    def to_json(self) -> dict[str, object]:
        b = self.backup
        return {
            "target": self.target.to_json(),
            "backup": {"id": b.id, "timeline": b.timeline, "start_lsn": format_lsn(b.start_lsn),
                       "stop_lsn": format_lsn(b.stop_lsn),
                       "start_time": b.start_time.isoformat(), "stop_time": b.stop_time.isoformat(),
                       "stored_bytes": b.stored_bytes, "raw_bytes": b.raw_bytes},
            "timeline": self.timeline,
            "timeline_path": [{"timeline": s.tli, "begin_lsn": format_lsn(s.begin_lsn),
                               "end_lsn": None if s.end_lsn is None else format_lsn(s.end_lsn)}
                              for s in self.path],
            "wal": {"first": self.segments[0] if self.segments else None,
                    "last": self.segments[-1] if self.segments else None,
                    "count": self.segment_count, "stored_bytes": self.wal_bytes,
                    "end_time": self.wal_end_time.isoformat() if self.wal_end_time else None,
                    "replay_until": format_lsn(self.replay_until),
                    "segments": list(self.segments)},
            "recovery_settings": dict(self.recovery_settings),
            "notes": list(self.notes),
            "chain": [{"id": c.id, "type": "incremental" if c.parent else "full",
                       "stored_bytes": c.stored_bytes} for c in self.backups],
            "archived_objects": [{"key": k, "storage_class": c} for k, c in self.cold],
            "thaw_estimate_hours": (list(self.thaw_estimate) if self.thaw_estimate
                                    else None),
        }


# -- timelines ---------------------------------------------------------------

def timeline_path(catalog: Catalog, tli: int) -> tuple[PathStep, ...]:
    """Ancestors of ``tli`` from its history file, oldest first, ending with ``tli``."""
    if tli == 1:
        return (PathStep(1, 0, None),)
    tl = catalog.timelines.get(tli)
    if tl is None or not tl.history:
        raise PlanError(
            f"timeline {tli} has no history file ({history_name(tli)}) in the archive, so its "
            "ancestry is unknown",
            hint="restore along another timeline (--timeline N), or put the history file back")
    steps: list[PathStep] = []
    begin = 0
    for entry in tl.history:
        steps.append(PathStep(entry.parent, begin, entry.switch_lsn))
        begin = entry.switch_lsn
    steps.append(PathStep(tli, begin, None))
    return tuple(steps)


def _known_timelines(catalog: Catalog) -> list[int]:
    """Timelines whose path can be built, newest first."""
    tlis = {1, *catalog.segments, *catalog.timelines, *(b.timeline for b in catalog.backups)}
    return sorted((t for t in tlis if t == 1 or (t in catalog.timelines
                                                 and catalog.timelines[t].history)),
                  reverse=True)


def _created_at(catalog: Catalog, tli: int) -> datetime | None:
    """When ``tli`` began (None: timeline 1, there from the start)."""
    if tli == 1:
        return None
    tl = catalog.timelines.get(tli)
    if tl is not None and tl.created_at is not None:
        return tl.created_at
    segs = catalog.segments.get(tli)
    return from_us(min(segs.mtimes)) if segs else None


def cluster_timezone(catalog: Catalog, backup_id: str | None = None) -> str | None:
    """The TimeZone a zone-less target is read in: the one recorded by ``backup_id``, else
    by the newest backup (the cluster's setting as of then). None when that backup
    predates the recording: the caller must then refuse zone-less input."""
    backups = [b for b in catalog.backups if backup_id is None or b.id == backup_id]
    if not backups:
        return None
    return max(backups, key=lambda b: b.stop_time).timezone


def segment_timeline(path: tuple[PathStep, ...], segno: int, seg_size: int) -> int:
    """Timeline PostgreSQL reads segment ``segno`` from: the newest one begun by then."""
    tli = path[0].tli
    for step in path:
        if lsn_to_segno(step.begin_lsn, seg_size) <= segno:
            tli = step.tli
    return tli


def _path_segments(catalog: Catalog, path: tuple[PathStep, ...]) -> dict[int, WalSegment]:
    """segno -> the segment on the path that PostgreSQL would read."""
    size = catalog.segment_size
    out: dict[int, WalSegment] = {}
    for i, step in enumerate(path):
        lo = lsn_to_segno(step.begin_lsn, size)
        hi = lsn_to_segno(path[i + 1].begin_lsn, size) if i + 1 < len(path) else None
        segs = catalog.segments.get(step.tli)
        if segs is None:
            continue
        j0 = bisect.bisect_left(segs.segnos, lo)
        j1 = len(segs) if hi is None else bisect.bisect_left(segs.segnos, hi)
        for j in range(j0, j1):
            seg = segs[j]
            out[seg.segno] = seg
    return out


def _on_path(b: BackupRecord, path: tuple[PathStep, ...]) -> bool:
    """A backup is usable when it was taken on the path, before the path left its timeline."""
    return any(s.tli == b.timeline and s.begin_lsn <= b.start_lsn
               and (s.end_lsn is None or b.stop_lsn <= s.end_lsn) for s in path)


def choose_timeline(catalog: Catalog, target: Target) -> int:
    """The timeline to recover along when the target does not pin one.

    A time target uses the newest timeline that already existed at that time and
    whose archived WAL reaches it (a branch created later, or abandoned earlier,
    is not "the history at that time"). Other targets follow the newest timeline,
    as PostgreSQL's recovery_target_timeline = 'latest' does.
    """
    if target.timeline is not None:
        return target.timeline
    tlis = _known_timelines(catalog)
    if target.kind is TargetKind.TIME:
        assert target.time is not None
        t = target.time
        existing = [tli for tli in tlis if (c := _created_at(catalog, tli)) is None or c <= t]
        for tli in existing:
            segs = _path_segments(catalog, timeline_path(catalog, tli))
            if any(s.archived_at >= t for s in segs.values()):
                return tli
        return existing[0] if existing else 1
    if target.kind is TargetKind.LSN:
        assert target.lsn is not None
        want = lsn_to_segno(target.lsn, catalog.segment_size)
        for tli in tlis:
            if want in _path_segments(catalog, timeline_path(catalog, tli)):
                return tli
    return tlis[0]


# -- backups -----------------------------------------------------------------

def _backup_before(b: BackupRecord, target: Target) -> bool:
    if target.kind is TargetKind.TIME:
        assert target.time is not None
        return b.stop_time <= target.time
    if target.kind is TargetKind.LSN:
        assert target.lsn is not None
        return b.stop_lsn <= target.lsn
    return True


def restores_to(catalog: Catalog, b: BackupRecord, target: Target,
                path: tuple[PathStep, ...]) -> bool:
    """Whether :func:`choose_backup` can take ``b`` for ``target`` on ``path``."""
    return _on_path(b, path) and _backup_before(b, target) and chain_of(
        b, {x.id: x for x in catalog.backups}, catalog).whole


def choose_backup(catalog: Catalog, target: Target, tli: int, path: tuple[PathStep, ...],
                  backup_id: str | None = None,
                  notes: list[str] | None = None) -> BackupRecord:
    if not catalog.backups:
        raise PlanError(f"stanza {catalog.stanza!r} has no completed backup",
                        hint="take one with `pitr backup`")
    if backup_id is not None:
        found = [b for b in catalog.backups if b.id == backup_id]
        if not found:
            known = ", ".join(b.id for b in catalog.backups[-5:])
            raise PlanError(f"no completed backup {backup_id!r} in stanza {catalog.stanza!r}",
                            hint=f"`pitr list` shows the backups (newest: {known})")
        b = found[0]
        if not _on_path(b, path):
            raise PlanError(
                f"backup {b.id} was taken on timeline {b.timeline} at "
                f"{format_lsn(b.stop_lsn)}, which is not in the history of timeline {tli}",
                hint="pick a backup of this timeline's history, or another --timeline")
        if not _backup_before(b, target):
            raise PlanError(f"backup {b.id} finished at {_stop_of(b, target)}, after the target "
                            f"({target}); a backup restores only to points after it finished",
                            hint="choose an older backup, or a later target")
        chain = chain_of(b, {x.id: x for x in catalog.backups}, catalog)
        if not chain.whole:
            raise PlanError(f"backup {b.id} cannot be restored: {chain.problem}",
                            hint=_BROKEN_HINT)
        return b
    on_path = [b for b in catalog.backups if _on_path(b, path)]
    if not on_path:
        others = sorted({b.timeline for b in catalog.backups})
        raise PlanError(
            f"no backup on timeline {tli} or its ancestors "
            f"({' -> '.join(str(s.tli) for s in path)}); backups exist on timeline(s) "
            f"{', '.join(map(str, others))}",
            hint="take a backup on this timeline (`pitr backup`), or restore along a timeline "
                 "that has one (--timeline N)")
    usable = [b for b in on_path if _backup_before(b, target)]
    if not usable:
        first = min(on_path, key=lambda b: (b.stop_time, b.stop_lsn))
        raise PlanError(
            f"target {target} is before the earliest restorable point on timeline {tli}: "
            f"backup {first.id} finished at {_stop_of(first, target)}",
            hint=f"the earliest target is {_stop_of(first, target)}; older history is gone "
                 "(retention) or was never backed up")
    key = (lambda b: (b.stop_lsn, b.stop_time)) if target.kind is TargetKind.LSN \
        else (lambda b: (b.stop_time, b.stop_lsn))
    by_id = {b.id: b for b in catalog.backups}
    chains = {b.id: chain_of(b, by_id, catalog) for b in usable}
    whole = [b for b in usable if chains[b.id].whole]
    newest = max(usable, key=key)
    if not whole:
        raise PlanError(f"no backup before target {target} can be restored: "
                        f"{chains[newest.id].problem}", hint=_BROKEN_HINT)
    best = max(whole, key=key)
    if best is not newest and notes is not None:
        skipped = [b for b in usable if key(b) > key(best)]
        notes.extend(f"backup {b.id} is skipped: {chains[b.id].problem}" for b in skipped)
    return best


_BROKEN_HINT = ("an incremental backup needs every backup of its chain (`pitr list`); restore "
                "an older backup (--backup ID), and take a full backup (`pitr backup --full`) "
                "so new incrementals start a whole chain")


def _stop_of(b: BackupRecord, target: Target) -> str:
    if target.kind is TargetKind.LSN:
        return f"LSN {format_lsn(b.stop_lsn)}"
    return format_time(b.stop_time)


# -- WAL ---------------------------------------------------------------------

def plan(catalog: Catalog, target: Target, now: datetime,
         backup_id: str | None = None) -> RestorePlan:
    """Plan a restore to ``target``; raises PlanError naming the cause and the way out."""
    if target.kind is TargetKind.TIME:
        assert target.time is not None
        if target.time > now:
            raise PlanError(f"target {target} is in the future (now is {format_time(now)})",
                            hint="use --latest to restore everything archived so far")
    if target.kind is TargetKind.IMMEDIATE and target.timeline is None and catalog.backups:
        # "the end of a backup" lives on that backup's own timeline
        pick = [b for b in catalog.backups if backup_id in (None, b.id)]
        tli = max(pick, key=lambda b: (b.stop_time, b.stop_lsn)).timeline if pick else 1
    else:
        tli = choose_timeline(catalog, target)
    path = timeline_path(catalog, tli)
    notes: list[str] = []
    backup = choose_backup(catalog, target, tli, path, backup_id, notes)
    chain = chain_of(backup, {b.id: b for b in catalog.backups}, catalog)
    size = catalog.segment_size
    segs = _path_segments(catalog, path)
    start = lsn_to_segno(backup.start_lsn, size)
    stop = lsn_to_segno(backup.stop_lsn, size)
    last_on_path = max(segs, default=start - 1)

    def name(segno: int) -> str:
        return segment_name(segment_timeline(path, segno, size), segno, size)

    def missing(segno: int, why: str) -> PlanError:
        prev = segs.get(segno - 1)
        reach = (f"; with this backup the WAL reaches {format_time(prev.archived_at)} at most"
                 if prev is not None and segno - 1 >= stop else "")
        return PlanError(
            f"WAL segment {name(segno)} is missing from the archive: {why}{reach}",
            hint="restore to an earlier target, use a backup taken after the gap, or put the "
                 "segment back if a copy exists (pg_wal of the primary)")

    if target.kind is TargetKind.TIME:
        assert target.time is not None
        on_path_after = [s for n, s in segs.items() if n >= start]
        newest = max(on_path_after, key=lambda s: s.archived_at, default=None)
        if newest is None or newest.archived_at < target.time:
            have = (f"the newest archived WAL on timeline {tli} ({name(newest.segno)}) was "
                    f"archived at {format_time(newest.archived_at)}: the archive is "
                    f"{human_age((target.time - newest.archived_at).total_seconds())} behind the "
                    f"target and {human_age((now - newest.archived_at).total_seconds())} behind now"
                    ) if newest else f"no WAL after backup {backup.id} is archived"
            raise PlanError(
                f"target {target} is later than the archived WAL: {have}",
                hint="if the primary still runs, its newest WAL is not archived yet: run "
                     "`select pg_switch_wal()` there and wait for archiving (`pitr check`), then "
                     "plan again; or restore to --latest")
    elif target.kind is TargetKind.LSN:
        assert target.lsn is not None
        if lsn_to_segno(target.lsn, size) > last_on_path:
            raise PlanError(
                f"target {target} is beyond the archived WAL on timeline {tli}: the newest "
                f"archived segment is {name(last_on_path) if segs else 'none'}",
                hint="wait for archiving to catch up (`select pg_switch_wal()` on the primary), "
                     "or choose an earlier LSN")

    chosen: list[WalSegment] = []
    k = start
    while True:
        seg = segs.get(k)
        if seg is None:
            if k <= stop:
                raise missing(k, f"backup {backup.id} needs WAL up to its end "
                                 f"{format_lsn(backup.stop_lsn)} to be consistent")
            if target.kind in (TargetKind.TIME, TargetKind.LSN):
                raise missing(k, f"it lies between backup {backup.id} and the target")
            if k <= last_on_path:  # LATEST / XID / NAME: stop at the gap, but say so
                later = min(n for n in segs if n > k)
                notes.append(f"WAL stops at a gap: {name(k)} is missing, so the archived WAL "
                             f"from {name(later)} on cannot be replayed")
            break
        chosen.append(seg)
        if k >= stop and _covers(seg, k, target, size):
            break
        k += 1

    last = chosen[-1]
    if target.kind in (TargetKind.XID, TargetKind.NAME):
        notes.append(f"the archive cannot locate {target}: this plan replays all contiguous WAL "
                     f"after backup {backup.id} (to {name(last.segno)}); if the target was "
                     "committed before that backup finished, pass an older --backup")
    if target.kind is TargetKind.TIME and last.segno == last_on_path:
        notes.append("the target is in the newest archived segment: recovery needs a commit "
                     "after the target in it, else PostgreSQL stops with \"recovery ended "
                     "before configured recovery target was reached\" (archive more WAL, "
                     "or use --latest)")
    cold = cold_objects(catalog, chain.backups, chosen)
    if cold:
        notes.append(cold_note(cold))
    return RestorePlan(
        backup=backup, target=target, timeline=tli, path=path,
        segments=tuple(segment_name(s.timeline, s.segno, size) for s in chosen),
        wal_bytes=sum(s.stored_bytes for s in chosen),
        recovery_settings=recovery_settings(target, tli),
        end_lsn=(last.segno + 1) * size,
        replay_until=(max(backup.stop_lsn, last.segno * size + 1)
                      if target.kind is TargetKind.LATEST else backup.stop_lsn),
        wal_end_time=last.archived_at, notes=tuple(notes),
        chain=chain.backups if len(chain.backups) > 1 else (), cold=cold)


def cold_objects(catalog: Catalog, backups: tuple[BackupRecord, ...],
                 segments: list[WalSegment]) -> tuple[tuple[str, str], ...]:
    """The objects of ``backups`` and ``segments`` that sit in an archive storage class."""
    out = [kc for b in backups for kc in catalog.cold_objects.get(b.id, ())]
    out += [(s.key, s.storage_class) for s in segments if s.storage_class in tiers.COLD_CLASSES]
    return tuple(out)


def cold_note(cold: tuple[tuple[str, str], ...]) -> str:
    """What plan says about archived objects: how many, which classes, how long."""
    by_class = Counter(c for _, c in cold)
    span = tiers.thaw_estimate(by_class, "Standard")
    assert span is not None
    classes = ", ".join(f"{n} in {c}" for c, n in sorted(by_class.items()))
    return (f"{len(cold)} object(s) this restore reads are in an archive storage class "
            f"({classes}) and cannot be read until restored: `pitr restore --thaw` requests "
            f"that and waits, estimated {tiers.describe_wait(span)} with Standard retrieval "
            "(docs/storage-tiers.md)")


def _covers(seg: WalSegment, segno: int, target: Target, size: int) -> bool:
    """Whether replaying up to and including ``seg`` reaches the target."""
    if target.kind is TargetKind.TIME:
        assert target.time is not None
        return seg.archived_at >= target.time
    if target.kind is TargetKind.LSN:
        assert target.lsn is not None
        return segno >= lsn_to_segno(target.lsn, size)
    # IMMEDIATE ends with the backup; the rest replay all contiguous WAL
    return target.kind is TargetKind.IMMEDIATE


def recovery_settings(target: Target, tli: int) -> dict[str, str]:
    """The recovery_target_* settings for ``target`` (values unquoted)."""
    out: dict[str, str] = {}
    inclusive = "on" if target.inclusive else "off"
    if target.kind is TargetKind.TIME:
        assert target.time is not None
        out["recovery_target_time"] = format_time(target.time)
        out["recovery_target_inclusive"] = inclusive
    elif target.kind is TargetKind.LSN:
        assert target.lsn is not None
        out["recovery_target_lsn"] = format_lsn(target.lsn)
        out["recovery_target_inclusive"] = inclusive
    elif target.kind is TargetKind.XID:
        out["recovery_target_xid"] = str(target.xid)
        out["recovery_target_inclusive"] = inclusive
    elif target.kind is TargetKind.NAME:
        assert target.name is not None
        out["recovery_target_name"] = target.name
    elif target.kind is TargetKind.IMMEDIATE:
        out["recovery_target"] = "immediate"
    # an explicit number, not 'latest': the planner chose the branch on purpose
    out["recovery_target_timeline"] = str(tli)
    return out
