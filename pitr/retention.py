"""PURE retention policy: (catalog, policy, now) -> what to keep, what to delete, and why.

No I/O here; :mod:`pitr.expire` applies a :class:`RetentionDecision` to storage.

Which backups are kept
======================
All periods are UTC calendar periods of a backup's **stop time** (when it became
usable). "The last N periods" are the period containing ``now`` and the N-1
before it; a backup that stops after ``now`` (clock skew) counts in the period
of its own stop time, so a tier keeps it in addition to the periods up to ``now``
and skew never pushes an on-time backup out. A tier with N = 0 is off.

``daily = N``    the NEWEST backup of each of the last N calendar days.
``weekly = N``   the FIRST backup of each of the last N ISO weeks (Monday-Sunday).
``monthly = N``  the FIRST backup of each of the last N calendar months.
``min_backups``  the newest ``min_backups`` backups are always kept, so there are
                 never fewer completed backups than that (nor fewer than exist).
``pinned``       a pinned backup is kept until it is unpinned.
``newest``       the newest completed backup is always kept.
``latest_timeline``  so is the newest backup that can restore the latest (highest)
                 timeline: after a restore into the past it may be the only base of
                 the timeline the cluster now runs on.

A backup is kept if any rule keeps it; each kept backup carries every reason.

Chains (docs/incremental-backups.md): the rules above choose among backups that can
be restored, that is whose chain of parents is whole. An incremental backup whose
chain is broken (a parent gone or damaged) is left alone, like a damaged backup:
neither kept nor deleted, and named in a note (repairing the parent makes it whole
again). Every
backup a kept incremental depends on is kept too, with reason ``chain``: a tier
counts restore points, each incremental one point, and its parents ride along.

Why these definitions: each rule only ever *loses* a backup as time passes
(a day's newest, a week's first and the newest-N set can only be taken over by
backups that existed before it, or be left behind by the moving window), and
it never depends on backups that are not kept. Two facts follow, both tested:

* **idempotence and stability** — for any S with keep(all) ⊆ S ⊆ all,
  keep(S) = keep(all): deciding again after applying a decision (or after an
  interrupted one) keeps the same backups and deletes nothing more;
* **convergence** — with the same pins, expiring daily (or on any schedule)
  while the history grows leaves exactly the backups, WAL and history files one
  expiry at the end would leave, as long as no timeline branches off before the
  start of the then newest backup (failovers and restores to recent points). A
  restore into the past moves the latest timeline's base and the guard below
  backwards; each run is still safe on its own.

Which WAL is kept
=================
A kept backup B on timeline ``tb`` (start LSN ``s``) can restore onto every
timeline T whose history path contains ``tb`` with ``s`` before the point the
path leaves ``tb``. For each such T, every segment of the path from B's start
segment on is kept: on ``tb`` from segno(s), on each later timeline of the path
from segno(its begin) to segno(its end) inclusive, and the last timeline without
an upper bound. Taken over all kept backups this keeps everything from the OLDEST
kept backup's start onward on every timeline reachable from it: so every point
in time from the oldest kept backup's stop time to the newest archived WAL stays
restorable, each kept backup reaches consistency, and between two kept backups
nothing is missing. Everything else (WAL before the oldest kept backup, WAL of
timelines no kept backup can reach) is deleted.

Guards: no segment (of any timeline) at or after the newest completed backup's
start segment is ever deleted — a backup in progress started later and needs it;
a timeline without a history file is treated as a root (as PostgreSQL does), and
its segments from the oldest kept backup's start segment on are kept. With no
completed backup nothing but stale incomplete backups is deleted.

History files: ``T.history`` is kept while T >= the lowest timeline of a kept
backup (PostgreSQL probes ``T+1.history``, ``T+2.history``... to find the newest
timeline and pick a fresh one at promotion, so that chain must stay unbroken) or
while any kept WAL lies on T. ``.backup`` files go with their backup; orphaned
ones (and ``.partial`` files) go with their segment.

Reader claims: a running restore or drill registers a claim on the backup it
replays (:mod:`pitr.claims`); while the claim's lease runs at ``now``, that backup
is kept (reason ``claimed``), and with it, by the WAL rule above, all WAL from its
start on. A note names each claim that held back a backup no other rule keeps.

Incomplete backups (objects, no manifest) are deleted unless named in
``in_progress``; :mod:`pitr.expire` holds the stanza lock, so none can be running.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from pitr.catalog import Catalog, SegmentList, WalRange, WalSegment
from pitr.chains import ancestors, whole_chain_backups
from pitr.chains import chains as chains_of
from pitr.manifest import BackupRecord

if TYPE_CHECKING:
    from pitr.claims import Claim
from pitr.pg.names import (
    backup_history_name,
    lsn_to_segno,
    parse_segment_name,
    segment_name,
)

REASONS = ("newest", "latest_timeline", "min_backups", "pinned", "daily", "weekly", "monthly",
           "claimed", "chain")
_INF = 1 << 64


@dataclass(frozen=True)
class Policy:
    daily: int = 7
    weekly: int = 4
    monthly: int = 12
    min_backups: int = 1

    def __post_init__(self) -> None:
        for name in ("daily", "weekly", "monthly", "min_backups"):
            if getattr(self, name) < 0:
                raise ValueError(f"retention.{name} must be >= 0")

    @classmethod
    def from_config(cls, retention: Any) -> Policy:
        return cls(retention.daily, retention.weekly, retention.monthly, retention.min_backups)


@dataclass(frozen=True)
class KeptBackup:
    backup: BackupRecord
    reasons: tuple[str, ...]  # in REASONS order


@dataclass(frozen=True)
class RetentionDecision:
    now: datetime
    policy: Policy
    kept: tuple[KeptBackup, ...] = ()  # oldest first
    deleted: tuple[BackupRecord, ...] = ()  # oldest first
    incomplete_deleted: tuple[str, ...] = ()
    incomplete_kept: tuple[str, ...] = ()
    wal_deleted: tuple[WalSegment, ...] = ()  # by timeline, segno
    wal_kept: int = 0  # segments
    partial_deleted: tuple[str, ...] = ()  # WAL file names
    backup_files_deleted: tuple[str, ...] = ()  # ".backup" WAL file names
    history_kept: tuple[int, ...] = ()
    history_deleted: tuple[int, ...] = ()
    restorable_from: datetime | None = None  # stop time of the oldest kept backup
    notes: tuple[str, ...] = field(default=())

    @property
    def kept_ids(self) -> frozenset[str]:
        return frozenset(k.backup.id for k in self.kept)

    @property
    def deleted_ids(self) -> frozenset[str]:
        return frozenset(b.id for b in self.deleted)

    @property
    def bytes_freed(self) -> int:
        """Stored bytes of deleted backups and segments (small files not counted)."""
        return (sum(b.stored_bytes for b in self.deleted)
                + sum(s.stored_bytes for s in self.wal_deleted))

    @property
    def nothing_to_do(self) -> bool:
        return not (self.deleted or self.incomplete_deleted or self.wal_deleted
                    or self.partial_deleted or self.backup_files_deleted
                    or self.history_deleted)

    def wal_deleted_ranges(self) -> list[WalRange]:
        by_tli: dict[int, list[WalSegment]] = {}
        for s in self.wal_deleted:
            by_tli.setdefault(s.timeline, []).append(s)
        return [r for t in sorted(by_tli) for r in SegmentList.of(t, by_tli[t]).ranges()]

    def to_json(self, segment_size: int) -> dict[str, Any]:
        def seg(tli: int, n: int) -> str:
            return segment_name(tli, n, segment_size)

        return {
            "now": self.now.isoformat(),
            "policy": {"daily": self.policy.daily, "weekly": self.policy.weekly,
                       "monthly": self.policy.monthly, "min_backups": self.policy.min_backups},
            "kept": [{"id": k.backup.id, "stop_time": k.backup.stop_time.isoformat(),
                      "reasons": list(k.reasons), "stored_bytes": k.backup.stored_bytes}
                     for k in self.kept],
            "deleted": [{"id": b.id, "stop_time": b.stop_time.isoformat(),
                         "stored_bytes": b.stored_bytes} for b in self.deleted],
            "incomplete_deleted": list(self.incomplete_deleted),
            "incomplete_kept": list(self.incomplete_kept),
            "wal_deleted": {"segments": len(self.wal_deleted),
                            "bytes": sum(s.stored_bytes for s in self.wal_deleted),
                            "ranges": [{"first": seg(r.timeline, r.first),
                                        "last": seg(r.timeline, r.last), "count": r.count}
                                       for r in self.wal_deleted_ranges()]},
            "wal_kept_segments": self.wal_kept,
            "partial_deleted": list(self.partial_deleted),
            "backup_files_deleted": list(self.backup_files_deleted),
            "history_kept": list(self.history_kept),
            "history_deleted": list(self.history_deleted),
            "restorable_from": self.restorable_from.isoformat() if self.restorable_from else None,
            "bytes_freed": self.bytes_freed,
            "notes": list(self.notes),
        }


# -- backups -------------------------------------------------------------------

def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _day(d: date) -> int:
    return d.toordinal()


def _week(d: date) -> int:
    # ISO weeks start on Monday; the ordinal of that Monday, // 7, numbers weeks consecutively.
    return (d.toordinal() - d.weekday()) // 7


def _month(d: date) -> int:
    return d.year * 12 + d.month - 1


def _tier(backups: list[BackupRecord], today: date, n: int, period: Any,
          newest: bool) -> set[str]:
    """Ids chosen by one tier: first/newest backup of each of the last ``n`` periods."""
    if n <= 0:
        return set()
    lowest = period(today) - n + 1
    chosen: dict[int, BackupRecord] = {}
    for b in backups:  # sorted by stop time, id
        p = period(_utc(b.stop_time).date())
        if p < lowest:
            continue
        if newest or p not in chosen:
            chosen[p] = b
    return {b.id for b in chosen.values()}


def _order(backups: Iterable[BackupRecord]) -> list[BackupRecord]:
    # The id breaks ties so equal stop times give one deterministic answer.
    return sorted(backups, key=lambda b: (_utc(b.stop_time), b.id))


def choose_backups(backups: Iterable[BackupRecord], policy: Policy, now: datetime,
                   latest_timeline: str | None = None) -> dict[str, tuple[str, ...]]:
    """Kept backup id -> reasons. Backups not in the result are to be deleted.

    ``latest_timeline``: id of the newest backup that can restore the latest timeline.
    """
    backups = list(backups)
    ordered = _order(backups)
    if not ordered:
        return {}
    # only restorable backups count in the rules; pins hold any backup (and its chain)
    pinned = {b.id for b in ordered if b.pinned}
    ordered = [b for b in whole_chain_backups(ordered)]
    if not ordered:
        return close_chains({i: ("pinned",) for i in pinned}, backups)
    today = _utc(now).date()
    by_reason: dict[str, set[str]] = {
        "newest": {ordered[-1].id},
        "latest_timeline": {latest_timeline} if latest_timeline else set(),
        "min_backups": {b.id for b in ordered[-policy.min_backups:]} if policy.min_backups
        else set(),
        "pinned": pinned,
        "daily": _tier(ordered, today, policy.daily, _day, newest=True),
        "weekly": _tier(ordered, today, policy.weekly, _week, newest=False),
        "monthly": _tier(ordered, today, policy.monthly, _month, newest=False),
        "claimed": set(),  # decide() adds reader claims (they need the clock and the claims)
        "chain": set(),
    }
    out: dict[str, tuple[str, ...]] = {}
    for b in _order(backups):
        reasons = tuple(r for r in REASONS if b.id in by_reason[r])
        if reasons:
            out[b.id] = reasons
    return close_chains(out, backups)


def close_chains(reasons: dict[str, tuple[str, ...]], backups: Iterable[BackupRecord]
                 ) -> dict[str, tuple[str, ...]]:
    """``reasons`` plus reason ``chain`` on every backup a kept one depends on."""
    out = dict(reasons)
    for i in ancestors(reasons, backups):
        if "chain" not in out.get(i, ()):
            out[i] = (*out.get(i, ()), "chain")
    return out


# -- WAL -----------------------------------------------------------------------

TlPath = list[tuple[int, int, int]]  # (timeline, begin LSN, end LSN or _INF)


def timeline_paths(catalog: Catalog) -> dict[int, TlPath]:
    """Every known timeline -> its history path, oldest ancestor first."""
    tlis = set(catalog.segments) | set(catalog.timelines) | {b.timeline for b in catalog.backups}
    tlis |= {1}
    paths: dict[int, TlPath] = {}
    for t in sorted(tlis):
        tl = catalog.timelines.get(t)
        path: TlPath = []
        begin = 0
        for entry in tl.history if tl else ():
            path.append((entry.parent, begin, entry.switch_lsn))
            begin = entry.switch_lsn
        path.append((t, begin, _INF))
        paths[t] = path
    return paths


def _reach_index(path: TlPath, b: BackupRecord) -> int | None:
    """Where ``b`` enters ``path``: it can restore onto the path's timeline from there."""
    return next((i for i, (t, _, end) in enumerate(path)
                 if t == b.timeline and b.start_lsn < end), None)


def latest_timeline_base(catalog: Catalog, ordered: list[BackupRecord]) -> str | None:
    """The newest backup that can restore the latest (highest) timeline, if any.

    After a restore into the past, the new timeline's only base may be an old backup
    that no tier keeps; without it the running cluster could not be restored until a
    backup of the new timeline completes.
    """
    paths = timeline_paths(catalog)
    path = paths[max(paths)]
    return next((b.id for b in reversed(ordered) if _reach_index(path, b) is not None), None)


def needed_intervals(catalog: Catalog, kept: Iterable[BackupRecord]) -> dict[int, list[
        tuple[int, int]]]:
    """Timeline -> merged [lo, hi] segno intervals some kept backup can restore through."""
    seg = catalog.segment_size
    raw: dict[int, list[tuple[int, int]]] = {}
    paths = timeline_paths(catalog)
    for b in kept:
        for path in paths.values():
            idx = _reach_index(path, b)
            if idx is None:
                continue
            for j in range(idx, len(path)):
                t, begin, end = path[j]
                lo = lsn_to_segno(b.start_lsn if j == idx else begin, seg)
                hi = _INF if end == _INF else lsn_to_segno(end, seg)
                raw.setdefault(t, []).append((lo, hi))
    return {t: _merge(iv) for t, iv in raw.items()}


def _merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


class _WalKeeper:
    """Answers "is segment (tli, segno) kept?" for one decision.

    Every rule is an interval of segment numbers per timeline (what a kept backup
    restores through, everything from the newest backup's start on, and from the
    oldest kept start on for a timeline of unknown ancestry), merged once; a segment
    is kept when it falls in one. Many segments at once are answered by bisecting
    their sorted numbers (:meth:`deleted`), so a year of WAL costs a few bisections.
    """

    def __init__(self, catalog: Catalog, kept: list[BackupRecord], newest: BackupRecord) -> None:
        seg = catalog.segment_size
        needed = needed_intervals(catalog, kept)
        guard = lsn_to_segno(newest.start_lsn, seg)
        oldest_start = min(lsn_to_segno(b.start_lsn, seg) for b in kept)
        # Timelines > 1 whose history is missing or unreadable: their ancestry is unknown.
        rootless = {t for t in set(catalog.segments) | {b.timeline for b in kept}
                    if t > 1 and not (t in catalog.timelines and catalog.timelines[t].history)}
        self._default = [(guard, _INF)]
        self.kept: dict[int, list[tuple[int, int]]] = {}
        for t in set(needed) | rootless:
            extra = [(oldest_start, _INF)] if t in rootless else []
            self.kept[t] = _merge([*needed.get(t, []), *self._default, *extra])
        self._starts = {t: [lo for lo, _ in iv] for t, iv in self.kept.items()}

    def _intervals(self, tli: int) -> list[tuple[int, int]]:
        return self.kept.get(tli, self._default)

    def keeps(self, tli: int, segno: int) -> bool:
        iv = self._intervals(tli)
        i = bisect.bisect_right(self._starts.get(tli, [iv[0][0]]), segno) - 1
        return i >= 0 and segno <= iv[i][1]

    def deleted(self, tli: int, segnos: Sequence[int]) -> list[int]:
        """Indexes into ``segnos`` (ascending) of the segments not kept."""
        out: list[int] = []
        j = 0
        for lo, hi in self._intervals(tli):
            k = bisect.bisect_left(segnos, lo, j)
            out.extend(range(j, k))
            j = max(k, bisect.bisect_right(segnos, hi, k))
        out.extend(range(j, len(segnos)))
        return out


# -- the decision ----------------------------------------------------------------

def decide(catalog: Catalog, policy: Policy, now: datetime, *,
           in_progress: Collection[str] = (),
           claims: Collection[Claim] = ()) -> RetentionDecision:
    """What expiry keeps and deletes at ``now`` (see the module docstring for the rules)."""
    now = _utc(now)
    claimed: dict[str, list[str]] = {}
    for c in claims:
        if c.live(now):
            claimed.setdefault(c.backup_id, []).append(c.describe())
    incomplete_kept = tuple(sorted(i for i in catalog.incomplete_backups if i in in_progress))
    incomplete_deleted = tuple(sorted(i for i in catalog.incomplete_backups
                                      if i not in in_progress))
    notes = []
    every = chains_of(catalog.backups, catalog)
    for i, ch in sorted(every.items()):
        if not ch.whole:
            notes.append(f"backup {i} is left alone: {ch.problem}")
    ordered = _order(b for b in catalog.backups if every[b.id].whole)
    if not ordered:
        return RetentionDecision(now, policy, incomplete_deleted=incomplete_deleted,
                                 incomplete_kept=incomplete_kept,
                                 wal_kept=sum(len(s) for s in catalog.segments.values()),
                                 history_kept=_history_tlis(catalog),
                                 notes=(*notes, "no completed backup: WAL is left alone"))
    reasons = choose_backups(ordered, policy, now, latest_timeline_base(catalog, ordered))
    for b in ordered:
        if b.id in claimed:
            if b.id not in reasons:
                notes.append(f"kept backup {b.id} and the WAL after it: in use by "
                             + "; ".join(claimed[b.id]))
            reasons[b.id] = (*reasons.get(b.id, ()), "claimed")
    reasons = close_chains(reasons, ordered)
    reasons = {i: tuple(r for r in REASONS if r in rs) for i, rs in reasons.items()}
    kept = [b for b in ordered if b.id in reasons]
    deleted = tuple(b for b in ordered if b.id not in reasons)
    keeper = _WalKeeper(catalog, kept, ordered[-1])

    wal_deleted: list[WalSegment] = []
    wal_kept = 0
    kept_tlis: set[int] = set()
    for tli, segs in sorted(catalog.segments.items()):
        # by number first: a year of WAL is half a million segments, and only those
        # deleted need to be objects (docs/catalog-cache.md)
        gone = keeper.deleted(tli, segs.segnos)
        wal_deleted.extend(segs[j] for j in gone)
        if len(gone) < len(segs):
            wal_kept += len(segs) - len(gone)
            kept_tlis.add(tli)

    partial_deleted = []
    for name in catalog.partial_files:
        tli, segno = parse_segment_name(name[:24], catalog.segment_size)
        if keeper.keeps(tli, segno):
            kept_tlis.add(tli)
        else:
            partial_deleted.append(name)

    seg = catalog.segment_size
    deleted_names = {backup_history_name(b.timeline, b.start_lsn, seg) for b in deleted}
    kept_names = {backup_history_name(b.timeline, b.start_lsn, seg) for b in kept}
    backup_files_deleted = []
    for name in catalog.backup_history_files:
        if name in kept_names:
            continue
        tli, segno = parse_segment_name(name[:24], seg)
        if name in deleted_names or not keeper.keeps(tli, segno):
            backup_files_deleted.append(name)

    lowest = min(b.timeline for b in kept)
    history_kept: list[int] = []
    history_deleted: list[int] = []
    for t in _history_tlis(catalog):
        (history_kept if t >= lowest or t in kept_tlis else history_deleted).append(t)

    if deleted and not kept:  # pragma: no cover - newest is always kept
        notes.append("BUG: no backup kept")
    return RetentionDecision(
        now=now, policy=policy,
        kept=tuple(KeptBackup(b, reasons[b.id]) for b in kept),
        deleted=deleted,
        incomplete_deleted=incomplete_deleted, incomplete_kept=incomplete_kept,
        wal_deleted=tuple(wal_deleted), wal_kept=wal_kept,
        partial_deleted=tuple(sorted(partial_deleted)),
        backup_files_deleted=tuple(sorted(backup_files_deleted)),
        history_kept=tuple(history_kept), history_deleted=tuple(history_deleted),
        restorable_from=_utc(kept[0].stop_time), notes=tuple(notes),
    )


def _history_tlis(catalog: Catalog) -> tuple[int, ...]:
    """Timelines whose history file is in the repository (read or not)."""
    return tuple(sorted(t for t, tl in catalog.timelines.items()
                        if t > 1 and (tl.history or tl.created_at is not None)))


def apply_to_catalog(catalog: Catalog, decision: RetentionDecision) -> Catalog:
    """The catalog as it will be once ``decision`` is applied (for tests and dry runs)."""
    from dataclasses import replace

    gone: dict[int, set[int]] = {}
    for s in decision.wal_deleted:
        gone.setdefault(s.timeline, set()).add(s.segno)
    segments = {t: segs.without(gone.get(t, set())) for t, segs in catalog.segments.items()}
    return replace(
        catalog,
        backups=tuple(b for b in catalog.backups if b.id not in decision.deleted_ids),
        segments={t: s for t, s in segments.items() if s},
        timelines={t: tl for t, tl in catalog.timelines.items()
                   if t not in decision.history_deleted},
        incomplete_backups=tuple(i for i in catalog.incomplete_backups
                                 if i not in decision.incomplete_deleted),
        backup_history_files=tuple(n for n in catalog.backup_history_files
                                   if n not in decision.backup_files_deleted),
        partial_files=tuple(n for n in catalog.partial_files
                            if n not in decision.partial_deleted),
    )
