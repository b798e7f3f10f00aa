"""The user-check condition of the restore drill (pure)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from pitr.verify_checks import check_name, judge


def test_min_max_equals() -> None:
    assert judge({"min": 1000}, 1500)[0]
    ok, why = judge({"min": 1000}, 999)
    assert not ok and "min is 1000" in why and "999" in why
    assert judge({"max": 5}, Decimal("4.5"))[0]
    assert not judge({"max": 5}, 6)[0]
    assert judge({"equals": 3}, 3)[0] and judge({"equals": 3}, Decimal("3.0"))[0]
    assert judge({"equals": "t"}, "t")[0] and not judge({"equals": "t"}, "f")[0]
    assert judge({"equals": True}, True)[0]
    assert not judge({"min": 1}, "abc")[0]
    assert not judge({"min": 1}, None)[0]


def test_names() -> None:
    assert check_name({"name": "accounts"}, 3) == "accounts"
    assert check_name({}, 3) == "check[3]"


@given(st.integers(-10**6, 10**6), st.integers(-10**6, 10**6), st.integers(-10**6, 10**6))
def test_range_matches_arithmetic(lo: int, hi: int, v: int) -> None:
    assert judge({"min": lo, "max": hi}, v)[0] == (lo <= v <= hi)


# -- drill target choice and WAL continuity (pure) --------------------------------

def test_random_point_is_inside_window_before_the_last_commit_and_reproducible() -> None:
    import random
    from datetime import timedelta

    from test_health import NOW, backup, catalog, segs

    from pitr.verify import random_point, wal_gap_after

    b1 = backup("b1", NOW - timedelta(days=2), 2, 3)
    b2 = backup("b2", NOW - timedelta(days=1), 20, 21)
    cat = catalog((b1, b2), {1: segs(1, 2, 30, NOW - timedelta(days=2), timedelta(hours=1))})
    # archive times say nothing any more: only the last commit bounds the target
    last = NOW - timedelta(days=2) + timedelta(hours=7, microseconds=250)
    picks = [random_point(cat, random.Random(seed), last) for seed in range(200)]
    assert all(b1.stop_time < p < last and p.microsecond == 0 for p in picks)
    assert len(set(picks)) > 100
    assert random_point(cat, random.Random(7), last) == random_point(cat, random.Random(7), last)
    last2 = NOW - timedelta(hours=3)
    assert all(b2.stop_time < p < last2 for p in
               (random_point(cat, random.Random(s), last2, "b2") for s in range(50)))
    assert wal_gap_after(cat, 1, 2) is None


def test_random_point_is_strictly_before_a_whole_second_commit() -> None:
    import random
    from datetime import timedelta

    from test_health import NOW, backup, catalog, segs

    from pitr.verify import random_point

    b = backup("b1", NOW - timedelta(seconds=10, microseconds=500))
    cat = catalog((b,), {1: segs(1, 2, 3, NOW - timedelta(minutes=1))})  # its WAL
    # backup ended at 11:59:49.9995 -> first candidate :50; a commit at exactly :53
    picks = {random_point(cat, random.Random(s), NOW - timedelta(seconds=7))
             for s in range(100)}
    assert picks == {NOW - timedelta(seconds=n) for n in (10, 9, 8)}


@given(st.integers(0, 10**6), st.integers(-5 * 10**6, 10**8), st.integers(0, 2**31))
def test_random_point_bounds_property(stop_us: int, commit_after_us: int, seed: int) -> None:
    import random
    from datetime import timedelta

    from test_health import NOW, backup, catalog, segs

    from pitr.errors import PlanError
    from pitr.verify import random_point

    stop = NOW + timedelta(microseconds=stop_us)
    commit = stop + timedelta(microseconds=commit_after_us)
    cat = catalog((backup("b1", stop),), {1: segs(1, 2, 3, NOW)})  # with its WAL
    try:
        t = random_point(cat, random.Random(seed), commit)
    except PlanError:
        # empty only when no whole second lies in (stop + 1 s floor, commit)
        first = stop.replace(microsecond=0) + timedelta(seconds=1)
        assert commit <= first
        return
    assert stop < t < commit and t.microsecond == 0


def test_random_point_without_a_commit_after_the_backup_is_a_plan_error() -> None:
    import random
    from datetime import timedelta

    import pytest
    from test_health import NOW, backup, catalog, segs

    from pitr.errors import PlanError
    from pitr.verify import random_point

    b = backup("b1", NOW - timedelta(hours=1))
    cat = catalog((b,), {1: segs(1, 2, 12, NOW - timedelta(hours=1))})
    for last in (None, NOW - timedelta(hours=2), b.stop_time + timedelta(milliseconds=900)):
        with pytest.raises(PlanError) as exc:
            random_point(cat, random.Random(1), last)
        assert "no transaction committed after the backup" in exc.value.message
        assert "cannot be proven" in exc.value.message
        assert "without --random-point" in (exc.value.hint or "")
    with pytest.raises(PlanError, match="no completed backup"):
        random_point(catalog(), random.Random(1), NOW)
    with pytest.raises(PlanError, match="no backup has all of its WAL archived"):
        random_point(catalog((b,)), random.Random(1), NOW)  # the window needs its WAL
    with pytest.raises(PlanError, match="not in the repository"):
        random_point(cat, random.Random(1), NOW, "nope")


def test_drill_backup_is_the_oldest_the_newest_backups_wal_continues() -> None:
    from datetime import timedelta

    from test_health import NOW, backup, catalog, segs

    from pitr.verify import drill_backup

    b1 = backup("b1", NOW - timedelta(days=3), 2, 3)
    b2 = backup("b2", NOW - timedelta(days=2), 10, 11)
    b3 = backup("b3", NOW - timedelta(days=1), 20, 21)
    gap_after_b1 = catalog((b1, b2, b3), {1: segs(1, 2, 30, NOW, skip=(6,))})
    assert drill_backup(gap_after_b1, None).id == "b2"
    assert drill_backup(gap_after_b1, "b1").id == "b1"
    assert drill_backup(catalog((b1, b2, b3), {1: segs(1, 2, 30, NOW)}), None).id == "b1"
    assert drill_backup(catalog((b1, b2, b3)), None).id == "b3"  # no WAL: the newest


def test_wal_gap_after_names_missing_segments() -> None:
    from datetime import timedelta

    from test_health import NOW, backup, catalog, segs

    from pitr.verify import wal_gap_after

    b = backup("b1", NOW - timedelta(hours=5))
    cat = catalog((b,), {1: segs(1, 2, 12, NOW - timedelta(hours=5), skip=(6, 7))})
    assert wal_gap_after(cat, 1, 2) == "000000010000000000000006..000000010000000000000007"
    assert wal_gap_after(cat, 1, 8) is None
    cat1 = catalog((b,), {1: segs(1, 2, 12, NOW - timedelta(hours=5), skip=(9,))})
    assert wal_gap_after(cat1, 1, 2) == "000000010000000000000009"
