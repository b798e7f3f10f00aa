"""Property tests: random catalogs (several backups, two timelines, gaps) and targets.

Whatever the catalog, a plan must (1) use a backup that finished at or before
the target, on the target timeline's history, and the newest such backup;
(2) list WAL that is present, contiguous, on the right timeline for each
segment, and reaching the target; and every refusal must be a PlanError whose
cause really holds.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from planner_catalogs import SEG, backup, catalog, history, minutes, seg

from pitr.catalog import Catalog, Timeline
from pitr.errors import PlanError
from pitr.pg.names import parse_segment_name
from pitr.planner import _on_path, plan, segment_timeline, timeline_path
from pitr.targets import Target

NOW = minutes(10_000)


@st.composite
def catalogs(draw: st.DrawFn) -> Catalog:
    n = draw(st.integers(3, 40))
    missing = draw(st.sets(st.integers(0, n - 1), max_size=3))
    segs = [seg(1, k, minutes(k)) for k in range(n) if k not in missing]
    timelines: list[Timeline] = []
    if draw(st.booleans()):
        branch_seg = draw(st.integers(1, n - 1))
        branch = branch_seg * SEG + draw(st.integers(0, SEG - 1))
        born = draw(st.integers(branch_seg + 1, n + 20))
        m = draw(st.integers(1, 20))
        missing2 = draw(st.sets(st.integers(branch_seg, branch_seg + m), max_size=2))
        segs += [seg(2, k, minutes(born + k - branch_seg + 0.5))
                 for k in range(branch_seg, branch_seg + m) if k not in missing2]
        timelines.append(Timeline(2, history((1, branch)), created_at=minutes(born)))
    backups = []
    for i in range(draw(st.integers(0, 4))):
        tli = draw(st.sampled_from([t.tli for t in timelines] + [1]))
        top = n + 20 if tli == 2 else n
        start = draw(st.integers(0, top - 1))
        stop = start + draw(st.integers(0, 2))
        backups.append(backup(f"b{i}", start, stop, minutes(stop + 0.3), tli=tli))
    return catalog(segs, backups, timelines)


@given(catalogs(), st.floats(0, 70), st.sampled_from([None, 1, 2]))
@settings(max_examples=400, deadline=None)
def test_time_plans_are_sound(cat: Catalog, at: float, pin: int | None) -> None:
    if pin == 2 and 2 not in cat.timelines:
        pin = None
    target = Target.at_time(minutes(at), timeline=pin)
    try:
        p = plan(cat, target, NOW)
    except PlanError as exc:
        assert exc.message and exc.hint
        return
    path = timeline_path(cat, p.timeline)
    assert p.backup.stop_time <= minutes(at)
    assert _on_path(p.backup, path)
    newer = [b for b in cat.backups if _on_path(b, path) and b.stop_time <= minutes(at)
             and b.stop_time > p.backup.stop_time]
    assert not newer, "a newer usable backup was passed over"
    parsed = [parse_segment_name(n) for n in p.segments]
    segnos = [s for _, s in parsed]
    assert segnos == list(range(p.backup.start_lsn // SEG, p.backup.start_lsn // SEG + len(segnos)))
    assert segnos[-1] >= p.backup.stop_lsn // SEG
    present = {(s.timeline, s.segno): s for v in cat.segments.values() for s in v}
    for tli, segno in parsed:
        assert (tli, segno) in present, "plan lists a segment the archive lacks"
        assert tli == segment_timeline(path, segno, SEG)
    last = present[parsed[-1]]
    assert last.archived_at >= minutes(at)
    # the covering segment is the first one archived at/after the target
    assert all(present[k].archived_at < minutes(at) for k in parsed[:-1]
               if k[1] >= p.backup.stop_lsn // SEG)
    assert p.wal_bytes == sum(present[k].stored_bytes for k in parsed)


@given(catalogs())
@settings(max_examples=200, deadline=None)
def test_latest_never_spans_a_gap(cat: Catalog) -> None:
    try:
        p = plan(cat, Target.latest(), NOW)
    except PlanError as exc:
        assert exc.message and exc.hint
        return
    segnos = [parse_segment_name(n)[1] for n in p.segments]
    assert segnos == list(range(segnos[0], segnos[0] + len(segnos)))
    path = timeline_path(cat, p.timeline)
    nxt = segnos[-1] + 1
    present = {(s.timeline, s.segno) for v in cat.segments.values() for s in v}
    assert (segment_timeline(path, nxt, SEG), nxt) not in present, "stopped before the end"


@given(catalogs(), st.floats(0, 70))
@settings(max_examples=200, deadline=None)
def test_errors_are_true(cat: Catalog, at: float) -> None:
    """A refusal of a time target on timeline 1 is explained by a real cause."""
    t = minutes(at)
    try:
        plan(cat, Target.at_time(t, timeline=1), NOW)
        return
    except PlanError as exc:
        msg = exc.message
    tl1_backups = [b for b in cat.backups if b.timeline == 1]
    if "no completed backup" in msg:
        assert not cat.backups
    elif "no backup on timeline" in msg:
        assert not tl1_backups
    elif "earliest restorable point" in msg:
        assert all(b.stop_time > t for b in tl1_backups)
    elif "later than the archived WAL" in msg:
        usable = max((b for b in tl1_backups if b.stop_time <= t), key=lambda b: b.stop_time)
        start = usable.start_lsn // SEG
        assert all(s.archived_at < t for s in cat.segments.get(1, ()) if s.segno >= start)
    else:
        assert "is missing from the archive" in msg
        name = msg.split("WAL segment ")[1].split()[0]
        tli, segno = parse_segment_name(name)
        assert segno not in {s.segno for s in cat.segments.get(tli, ())}
