"""Property tests of the retention policy over random backup histories, timelines and clocks.

A history is built the way a cluster makes one: time moves forward, WAL is
written on the current timeline, a backup now and then, and sometimes a restore
into the past starts a new timeline that branches off the current one. Every
object remembers when it was born, so the tests can replay expiry on a schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from retention_builders import SEG, T0, backup, catalog

from pitr.catalog import Catalog, Timeline, WalSegment
from pitr.manifest import BackupRecord
from pitr.pg.names import HistoryEntry, backup_history_name, lsn_to_segno
from pitr.retention import Policy, RetentionDecision, apply_to_catalog, decide, timeline_paths


@dataclass
class History:
    backups: list[BackupRecord]
    born: dict[tuple[int, int], datetime]  # (tli, segno) -> when archived
    histories: dict[int, list[tuple[int, int]]]  # tli -> history entries
    history_born: dict[int, datetime]
    end: datetime
    past_branch: bool = False  # a timeline branched before the newest backup's start

    def catalog_at(self, t: datetime) -> Catalog:
        """Everything that exists at time ``t`` (before any expiry)."""
        segs: dict[int, list[WalSegment]] = {}
        for (tli, n), b in sorted(self.born.items()):
            if b <= t:
                segs.setdefault(tli, []).append(WalSegment(tli, n, 100, b))
        cat = catalog([b for b in self.backups if b.stop_time <= t],
                      {k: tuple(v) for k, v in segs.items()},
                      histories={k: v for k, v in self.histories.items()
                                 if self.history_born[k] <= t})
        return cat


@st.composite
def histories(draw: st.DrawFn, branches: bool = True, max_backups: int = 25) -> History:
    n = draw(st.integers(1, max_backups))
    t = T0
    cur, seg = 1, 0
    born: dict[tuple[int, int], datetime] = {(1, 0): t}
    hist: dict[int, list[tuple[int, int]]] = {}
    hist_born: dict[int, datetime] = {}
    begin = {1: 0}
    backups: list[BackupRecord] = []
    past = False

    def write(upto: int) -> None:
        nonlocal seg
        for s in range(seg + 1, upto + 1):
            born[(cur, s)] = t
        seg = max(seg, upto)

    for i in range(n):
        t += timedelta(hours=draw(st.integers(1, 24 * 20)))
        if branches and i and draw(st.integers(0, 7)) == 0:
            # A restore into the past: the new timeline branches off the current one.
            # a promotion/failover branches at the end, a restore anywhere into the past
            newest_start = max(b.start_lsn // SEG for b in backups)
            lo = min(max(begin[cur], newest_start), seg) if draw(st.booleans()) else begin[cur]
            x = draw(st.integers(lo, seg))
            past = past or x < newest_start
            new = max([1, *hist]) + 1
            hist[new] = [*hist.get(cur, []), (cur, x * SEG + 0x100)]
            hist_born[new] = t
            cur, seg, begin[new] = new, x, x
            born[(cur, x)] = t
        write(seg + draw(st.integers(1, 12)))
        start = seg
        write(start + draw(st.integers(0, 2)))
        backups.append(backup(f"b{i:03d}", t, start, seg, tli=cur,
                              pinned=draw(st.integers(0, 11)) == 0))
    t += timedelta(hours=draw(st.integers(0, 24 * 40)))
    write(seg + draw(st.integers(0, 5)))
    for key in draw(st.lists(st.sampled_from(sorted(born)), max_size=3)):
        born.pop(key, None)  # holes in the archive must not confuse anything
    return History(backups, born, hist, hist_born, t, past)


policies = st.builds(Policy, daily=st.integers(0, 9), weekly=st.integers(0, 5),
                     monthly=st.integers(0, 13), min_backups=st.integers(1, 4))


def _present(cat: Catalog) -> set[tuple[int, int]]:
    return {(t, s.segno) for t, ss in cat.segments.items() for s in ss}


def _reads(cat: Catalog, b: BackupRecord) -> set[tuple[int, int]]:
    """Every (tli, segno) that recovery from ``b`` may read on any timeline it can follow.

    PostgreSQL reads segment n from the newest timeline of the target's history whose
    begin segment is <= n (falling back to older ones): so each path element from b's
    timeline on contributes its segments from its begin (b's start on b's timeline) up
    to the segment holding its end.
    """
    max_seg = max((n for _, n in _present(cat)), default=0)
    out: set[tuple[int, int]] = set()
    for path in timeline_paths(cat).values():
        idx = next((i for i, (t, _, e) in enumerate(path) if t == b.timeline and b.start_lsn < e),
                   None)
        if idx is None:
            continue
        for j, (t, begin, end) in enumerate(path[idx:], idx):
            lo = lsn_to_segno(b.start_lsn if j == idx else begin, SEG)
            hi = min(lsn_to_segno(end, SEG), max_seg)
            out |= {(t, n) for n in range(lo, hi + 1)}
    return out


@settings(max_examples=300, deadline=None)
@given(histories(), policies, st.integers(0, 24 * 60))
def test_invariants(h: History, policy: Policy, late_hours: int) -> None:
    now = h.end + timedelta(hours=late_hours)
    cat = h.catalog_at(now)
    d = decide(cat, policy, now)
    all_ids = {b.id for b in cat.backups}
    assert d.kept_ids | d.deleted_ids == all_ids and not d.kept_ids & d.deleted_ids
    newest = max(cat.backups, key=lambda b: (b.stop_time, b.id))
    assert newest.id in d.kept_ids  # the newest backup is never deleted
    assert len(d.kept) >= min(policy.min_backups, len(all_ids))
    assert {b.id for b in cat.backups if b.pinned} <= d.kept_ids
    for k in d.kept:
        assert k.reasons, k
    # every kept backup keeps all WAL it needs to reach consistency and everything after it
    before, after = _present(cat), _present(apply_to_catalog(cat, d))
    for k in d.kept:
        b = k.backup
        consistency = {(b.timeline, n) for n in range(lsn_to_segno(b.start_lsn, SEG),
                                                     lsn_to_segno(b.stop_lsn, SEG) + 1)}
        assert consistency & before <= after, b.id
        assert _reads(cat, b) & before <= after, b.id
    # nothing at or past the newest backup's start is touched, on any timeline
    guard = lsn_to_segno(newest.start_lsn, SEG)
    assert all(s.segno < guard for s in d.wal_deleted)
    # history files of timelines a kept backup could still branch from remain
    lowest = min(k.backup.timeline for k in d.kept)
    assert all(t < lowest for t in d.history_deleted)
    # .backup files of kept backups stay
    kept_files = {backup_history_name(k.backup.timeline, k.backup.start_lsn, SEG) for k in d.kept}
    assert not kept_files & set(d.backup_files_deleted)


@settings(max_examples=200, deadline=None)
@given(histories(branches=False), policies)
def test_single_timeline_keeps_exactly_from_the_oldest_kept_start(h: History,
                                                                  policy: Policy) -> None:
    cat = h.catalog_at(h.end)
    d = decide(cat, policy, h.end)
    first = lsn_to_segno(d.kept[0].backup.start_lsn, SEG)
    assert {s.segno for s in d.wal_deleted} == {n for _, n in _present(cat) if n < first}
    assert d.restorable_from == d.kept[0].backup.stop_time


@settings(max_examples=200, deadline=None)
@given(histories(), policies, st.data())
def test_idempotent_and_stable_under_partial_application(h: History, policy: Policy,
                                                         data: st.DataObject) -> None:
    cat = h.catalog_at(h.end)
    d = decide(cat, policy, h.end)
    again = decide(apply_to_catalog(cat, d), policy, h.end)
    assert again.nothing_to_do and again.kept_ids == d.kept_ids
    # An interrupted expiry leaves some of the deleted backups and WAL behind (and every
    # history file: they go last): deciding again on any such in-between catalog keeps the
    # same backups and ends in the same state.
    leftover = set(data.draw(st.lists(st.sampled_from(sorted(d.deleted_ids) or [""]))))
    partial = replace(d, deleted=tuple(b for b in d.deleted if b.id not in leftover),
                      wal_deleted=d.wal_deleted[: data.draw(
                          st.integers(0, len(d.wal_deleted)))], history_deleted=())
    mid = apply_to_catalog(cat, partial)
    d2 = decide(mid, policy, h.end)
    assert d2.kept_ids == d.kept_ids
    assert _present(apply_to_catalog(mid, d2)) == _present(apply_to_catalog(cat, d))


def _apply_all(cat: Catalog, d: RetentionDecision) -> Catalog:
    return apply_to_catalog(cat, d)


def _survivors(h: History, gone: _Gone, t: datetime) -> Catalog:
    cat = h.catalog_at(t)
    return Catalog(
        stanza=cat.stanza, system_id=cat.system_id, segment_size=cat.segment_size,
        backups=tuple(b for b in cat.backups if b.id not in gone.backups),
        segments={k: v for k, v in (
            (tli, tuple(s for s in ss if (tli, s.segno) not in gone.segments))
            for tli, ss in cat.segments.items()) if v},
        timelines={k: v for k, v in cat.timelines.items() if k not in gone.histories},
        backup_history_files=tuple(n for n in cat.backup_history_files
                                   if n not in gone.files))


@dataclass
class _Gone:
    backups: set[str]
    segments: set[tuple[int, int]]
    histories: set[int]
    files: set[str]

    def add(self, d: RetentionDecision) -> None:
        self.backups |= d.deleted_ids
        self.segments |= {(s.timeline, s.segno) for s in d.wal_deleted}
        self.histories |= set(d.history_deleted)
        self.files |= set(d.backup_files_deleted)


def _state(cat: Catalog) -> tuple:
    return ({b.id for b in cat.backups}, _present(cat), set(cat.timelines),
            set(cat.backup_history_files))


@settings(max_examples=120, deadline=None)
@given(histories(max_backups=18), policies,
       st.lists(st.integers(1, 24 * 9), min_size=1, max_size=400), st.integers(0, 23))
def test_expiring_on_any_schedule_converges_to_one_expiry_at_the_end(
        h: History, policy: Policy, gaps: list[int], hour: int) -> None:
    """Same pins, and no timeline branching off before the start of the then newest backup
    (failovers and restores to recent points; not a restore into the past): expiring on a
    schedule (daily, or any gaps) while the history grows leaves exactly what one expiry
    over the whole history at the end leaves: the same backups, segments, history and
    .backup files.

    A restore into the past moves the latest timeline's base and the "newest backup's start"
    guard backwards, so no such claim holds there: the generator's histories cannot tell
    whether the restore's base backup still existed under a given schedule."""
    gone = _Gone(set(), set(), set(), set())
    t = T0 + timedelta(hours=hour)
    for g in gaps:
        if t >= h.end:
            break
        cat = _survivors(h, gone, t)
        gone.add(decide(cat, policy, t))
        t += timedelta(hours=g)
    final = _survivors(h, gone, h.end)
    scheduled = apply_to_catalog(final, decide(final, policy, h.end))
    full = h.catalog_at(h.end)
    once = apply_to_catalog(full, decide(full, policy, h.end))
    if not h.past_branch:
        assert _state(scheduled) == _state(once)
    else:  # still, whatever the schedule left is a valid end state for its own backups
        final_d = decide(final, policy, h.end)
        assert final_d.kept_ids == {b.id for b in scheduled.backups}


def test_generated_histories_contain_both_kinds_of_branches() -> None:
    """Guard against a generator that never exercises timelines."""
    seen: list[tuple[int, bool]] = []

    @settings(max_examples=150, deadline=None)
    @given(histories())
    def probe(h: History) -> None:
        seen.append((len(h.histories), h.past_branch))

    probe()
    assert any(n and not past for n, past in seen) and any(past for _, past in seen)


_ = (Timeline, HistoryEntry)  # re-exported types used by the builders
