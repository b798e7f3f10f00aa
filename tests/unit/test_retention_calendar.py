"""Retention tiers on the calendar's edges: month and year ends, ISO weeks (Mondays,
Sundays, week 53), a leap day, DST days (tiers are UTC calendar periods, so a zone's
clock change must not matter).

Each case compares ``choose_backups`` with an oracle written from the definitions in
``pitr/retention.py``'s docstring by other means (ISO calendar tuples, month stepping),
at a "today" passed in: every date of ``support.dates.SWEPT_DATES``, and random ones.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from retention_builders import backup
from support.dates import SWEPT_DATES, today

from pitr.manifest import BackupRecord
from pitr.retention import Policy, choose_backups

SWEPT = sorted(SWEPT_DATES)


def _month_back(y: int, m: int) -> tuple[int, int]:
    return (y, m - 1) if m > 1 else (y - 1, 12)


def oracle(backups: list[BackupRecord], policy: Policy, now: datetime) -> dict[str, set[str]]:
    """Tier -> chosen ids, straight from the definitions (no period ordinals)."""
    order = sorted(backups, key=lambda b: (b.stop_time, b.id))
    on = now.astimezone(UTC).date()

    def stop_date(b: BackupRecord) -> date:
        return b.stop_time.astimezone(UTC).date()

    days = [on - timedelta(days=k) for k in range(policy.daily)]
    weeks = [(on - timedelta(weeks=k)).isocalendar()[:2] for k in range(policy.weekly)]
    months: list[tuple[int, int]] = []
    ym = (on.year, on.month)
    for _ in range(policy.monthly):
        months.append(ym)
        ym = _month_back(*ym)
    # clock skew: a backup stopping after `now` is in a period of its own, after the current
    future_days = sorted({stop_date(b) for b in order if stop_date(b) > on})
    future_weeks = sorted({stop_date(b).isocalendar()[:2] for b in order if stop_date(b) > on}
                          - set(weeks))
    future_months = sorted({(stop_date(b).year, stop_date(b).month) for b in order
                            if stop_date(b) > on} - set(months))
    out: dict[str, set[str]] = {
        "newest": {order[-1].id} if order else set(),
        "min_backups": {b.id for b in order[max(0, len(order) - policy.min_backups):]}
        if policy.min_backups else set(),
        "pinned": {b.id for b in order if b.pinned},
    }
    daily = [b for d in (days + future_days if policy.daily else [])
             for b in [[x for x in order if stop_date(x) == d][-1:]][0]]
    weekly = [b for w in (weeks + future_weeks if policy.weekly else [])
              for b in [[x for x in order if stop_date(x).isocalendar()[:2] == w][:1]][0]]
    monthly = [b for m in (months + future_months if policy.monthly else [])
               for b in [[x for x in order if (stop_date(x).year, stop_date(x).month) == m][:1]]
               [0]]
    out["daily"] = {b.id for b in daily}
    out["weekly"] = {b.id for b in weekly}
    out["monthly"] = {b.id for b in monthly}
    return out


def _kept(tiers: dict[str, set[str]]) -> set[str]:
    return set().union(*tiers.values())


def _tiers_of(reasons: dict[str, tuple[str, ...]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for bid, rs in reasons.items():
        for r in rs:
            out.setdefault(r, set()).add(bid)
    return out


def _daily_history(last: date, days: int, at: time = time(1, 0)) -> list[BackupRecord]:
    first = last - timedelta(days=days - 1)
    return [backup(f"{first + timedelta(days=i)}", datetime.combine(
        first + timedelta(days=i), at, tzinfo=UTC), 10 * i + 2) for i in range(days)]


def _check(backups: list[BackupRecord], policy: Policy, now: datetime) -> dict[str, set[str]]:
    got = _tiers_of(choose_backups(backups, policy, now))
    want = oracle(backups, policy, now)
    for tier in ("newest", "min_backups", "pinned", "daily", "weekly", "monthly"):
        assert got.get(tier, set()) == want[tier], (tier, now)
    return want


@pytest.mark.parametrize("day", SWEPT, ids=[d.isoformat() for d in SWEPT])
@pytest.mark.parametrize("hour", [0, 1, 12, 23])
def test_a_year_of_daily_backups_on_a_calendar_edge(day: date, hour: int) -> None:
    """400 days of one backup a day at 01:00 UTC, ending on ``day``; expiry at ``hour``."""
    backups = _daily_history(day, 400)
    now = datetime.combine(day, time(hour, 30), tzinfo=UTC)
    tiers = _check(backups, Policy(7, 4, 12, 1), now)
    # Every tier is full: one backup per period, whatever the weekday or month length
    # (at 00:30 today's 01:00 backup stops after `now`, but on today's date: same period).
    assert (len(tiers["daily"]), len(tiers["weekly"]), len(tiers["monthly"])) == (7, 4, 12)
    # On the first of a month the daily and monthly tiers share a backup (the expire
    # integration test's old sanity check counted them apart and failed on 1 December).
    shared = tiers["daily"] & tiers["monthly"]
    assert len(shared) == len({day - timedelta(days=k) for k in range(7)
                               if (day - timedelta(days=k)).day == 1})


@pytest.mark.parametrize("day", SWEPT, ids=[d.isoformat() for d in SWEPT])
def test_several_backups_a_day_around_midnight(day: date) -> None:
    """Three backups a day, one a second before and one at midnight: the daily tier takes
    the newest of each day, weekly and monthly the first of their period, in UTC."""
    backups: list[BackupRecord] = []
    for i in range(70):
        d = day - timedelta(days=69 - i)
        for j, at in enumerate((time(0, 0), time(12, 0), time(23, 59, 59))):
            backups.append(backup(f"{d}-{j}", datetime.combine(d, at, tzinfo=UTC), 30 * i + j))
    now = datetime.combine(day, time(23, 59, 59), tzinfo=UTC)
    tiers = _check(backups, Policy(3, 3, 3, 2), now)
    assert tiers["daily"] == {f"{day - timedelta(days=k)}-2" for k in range(3)}
    monday = day - timedelta(days=day.weekday())
    assert f"{monday}-0" in tiers["weekly"]
    assert f"{day.replace(day=1)}-0" in tiers["monthly"]


def test_the_default_today_is_a_swept_date_and_overridable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert today() in SWEPT_DATES
    monkeypatch.setenv("PITR_TEST_TODAY", "2028-02-29")
    assert today() == date(2028, 2, 29)


@st.composite
def sparse_histories(draw: st.DrawFn) -> tuple[list[BackupRecord], datetime]:
    """Backups at random moments before (and a few after, clock skew) a random `now`."""
    now = draw(st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31),
                            timezones=st.just(UTC)))
    offsets = draw(st.lists(st.integers(-2 * 24 * 60, 500 * 24 * 60), min_size=1,
                            max_size=40, unique=True))
    backups = [backup(f"b{i:02d}", now - timedelta(minutes=m), i, pinned=m % 13 == 0)
               for i, m in enumerate(sorted(offsets, reverse=True))]
    return backups, now


policies = st.builds(Policy, daily=st.integers(0, 9), weekly=st.integers(0, 6),
                     monthly=st.integers(0, 14), min_backups=st.integers(0, 4))


@settings(max_examples=300, deadline=None)
@given(sparse_histories(), policies)
@example((_daily_history(date(2026, 12, 1), 40), datetime(2026, 12, 1, 8, tzinfo=UTC)),
         Policy(7, 4, 12, 1))
@example((_daily_history(date(2028, 2, 29), 40), datetime(2028, 2, 29, 23, tzinfo=UTC)),
         Policy(1, 1, 1, 0))
def test_tiers_match_their_definition_on_any_date(
        history: tuple[list[BackupRecord], datetime], policy: Policy) -> None:
    backups, now = history
    _check(backups, policy, now)
