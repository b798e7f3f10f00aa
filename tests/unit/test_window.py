"""`pitr list` and `/health/backup` show one recovery window (pitr/window.py).

Catalogs with several timelines and backups whose WAL is missing: the two readers
must agree, and neither may start the window at a backup that cannot be restored
nor end it on a timeline replay does not reach.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from planner_catalogs import SEG, backup, catalog, history, minutes, seg

from pitr import listing
from pitr.catalog import Catalog, Timeline, backup_restorable
from pitr.monitor.health import Thresholds, evaluate
from pitr.window import recovery_window

TH = Thresholds(max_backup_age=10**9, max_archive_lag=10**9, max_backlog=64,
                max_archive_failures=3, max_verify_age=0)


def _list_window(cat: Catalog) -> tuple[datetime, datetime] | None:
    w = listing.report(cat)["recovery_window"]
    if w is None:
        return None
    return datetime.fromisoformat(w["earliest"]["time"]), datetime.fromisoformat(
        w["latest"]["time"])


def _health_window(cat: Catalog) -> tuple[datetime, datetime] | None:
    now = minutes(10_000)
    w = evaluate(cat, None, None, TH, now).to_dict()["recovery_window"]
    if w is None:
        return None
    return datetime.fromisoformat(w["start"]), datetime.fromisoformat(w["end"])


def _seconds(w: tuple[datetime, datetime] | None) -> tuple[datetime, datetime] | None:
    # health prints whole seconds; list prints microseconds
    return None if w is None else (w[0].replace(microsecond=0), w[1].replace(microsecond=0))


def _agree(cat: Catalog) -> tuple[datetime, datetime] | None:
    a, b = _list_window(cat), _health_window(cat)
    assert _seconds(a) == _seconds(b)
    return a


def three_timelines() -> Catalog:
    """tli 1 segments 1..9; tli 2 branched at segment 5 (1..3 archived on it: 5..8);
    tli 3 branched off tli 1 at segment 20, which replay from tli 1 never reaches."""
    segs = [seg(1, n, minutes(n)) for n in range(1, 10)]
    segs += [seg(2, n, minutes(100 + n)) for n in range(5, 9)]
    segs += [seg(3, n, minutes(500 + n)) for n in range(20, 23)]
    tls = [Timeline(2, history((1, 5 * SEG + 0x100)), minutes(105)),
           Timeline(3, history((1, 20 * SEG + 0x100)), minutes(520))]
    good = backup("good", 2, 3, minutes(3.5))
    # its WAL (segments 11..12) was never archived: not restorable, yet the newest
    broken = backup("broken", 11, 12, minutes(400))
    return catalog(segs, [good, broken], tls)


def test_unrestorable_newest_backup_does_not_move_the_window() -> None:
    cat = three_timelines()
    assert not backup_restorable(cat, cat.backups[-1])
    w = recovery_window(cat)
    assert w is not None
    assert w.earliest.backup_id == "good"
    # replay follows tli 2 (branched inside the WAL it has), never tli 3
    assert (w.latest.timeline, w.latest.time) == (2, minutes(108))
    assert _agree(cat) == (minutes(3.5), minutes(108))


def test_unrestorable_oldest_backup_does_not_start_the_window() -> None:
    segs = [seg(1, n, minutes(n)) for n in range(5, 12)]
    cat = catalog(segs, [backup("lost", 1, 2, minutes(2)), backup("ok", 6, 7, minutes(7.5))])
    assert _agree(cat) == (minutes(7.5), minutes(11))


def test_no_restorable_backup_no_window_in_either() -> None:
    cat = catalog([seg(1, 1, minutes(1))], [backup("b", 1, 2, minutes(2))])
    assert _agree(cat) is None
    assert listing.report(cat)["recovery_window"] is None


@st.composite
def catalogs(draw: st.DrawFn) -> Catalog:
    """Up to three timelines with holes, branches anywhere, backups anywhere."""
    segs = []
    timelines = []
    for tli in range(1, draw(st.integers(1, 3)) + 1):
        lo = draw(st.integers(1, 12))
        hi = draw(st.integers(lo, 20))
        holes = draw(st.sets(st.integers(lo, hi), max_size=3))
        segs += [seg(tli, n, minutes(tli * 100 + n)) for n in range(lo, hi + 1) if n not in holes]
        if tli > 1:
            parent = draw(st.integers(1, tli - 1))
            timelines.append(Timeline(tli, history((parent, lo * SEG + 0x100))))
    backups = []
    for i in range(draw(st.integers(0, 4))):
        tli = draw(st.integers(1, 3))
        start = draw(st.integers(1, 20))
        backups.append(backup(f"b{i}", start, start + draw(st.integers(0, 2)),
                              minutes(tli * 100 + start + draw(st.floats(0.1, 2.5))), tli))
    return catalog(segs, backups, timelines)


@settings(max_examples=200, deadline=None)
@given(cat=catalogs())
def test_list_and_health_agree_on_any_catalog(cat: Catalog) -> None:
    w = _agree(cat)
    restorable = [b for b in cat.backups if backup_restorable(cat, b)]
    assert (w is None) == (not restorable)
    if w is not None:
        assert w[0] == min(b.stop_time for b in restorable)
        assert w[1] >= max(b.stop_time for b in restorable)


def test_times_are_utc() -> None:
    w = recovery_window(three_timelines())
    assert w is not None and w.earliest.time.tzinfo is not None
    assert w.earliest.time.utcoffset() == timedelta(0) and w.latest.time.tzinfo == UTC
