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

def test_random_point_is_inside_window_and_reproducible() -> None:
    import random
    from datetime import timedelta

    from test_health import NOW, backup, catalog, segs

    from pitr.verify import random_point, wal_gap_after

    b1 = backup("b1", NOW - timedelta(days=2), 2, 3)
    b2 = backup("b2", NOW - timedelta(days=1), 20, 21)
    cat = catalog((b1, b2), {1: segs(1, 2, 30, NOW - timedelta(days=2), timedelta(hours=1))})
    high = NOW - timedelta(days=2) + 27 * timedelta(hours=1)  # second-newest segment
    picks = [random_point(cat, random.Random(seed)) for seed in range(200)]
    assert all(b1.stop_time < p <= high for p in picks)
    assert len(set(picks)) > 100
    assert random_point(cat, random.Random(7)) == random_point(cat, random.Random(7))
    assert all(p > b2.stop_time for p in
               (random_point(cat, random.Random(s), "b2") for s in range(50)))
    assert wal_gap_after(cat, 1, 2) is None


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
