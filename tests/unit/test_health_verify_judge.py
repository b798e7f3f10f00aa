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
