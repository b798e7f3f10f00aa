"""The dates calendar tests run on, so no test reads "today" from the wall clock.

Calendar logic (retention tiers, target times) is tested at a date passed in: by default
``DEFAULT_TODAY``; ``PITR_TEST_TODAY=YYYY-MM-DD`` moves the whole suite to another date,
and ``scripts/calendar-sweep`` runs the calendar tests once for every date of
``SWEPT_DATES`` (docs/development.md: the calendar sweep).
"""

from __future__ import annotations

import os
from datetime import date

# Each date is an edge a calendar rule can fall off.
SWEPT_DATES: dict[date, str] = {
    date(2026, 12, 1): "first of a month (daily and monthly tiers overlap), a Tuesday",
    date(2026, 11, 30): "last of a 30-day month, a Monday (an ISO week has one day)",
    date(2026, 12, 6): "a Sunday (the last day of an ISO week)",
    date(2026, 12, 31): "the last day of a year, a Thursday (ISO week 53 of 2026)",
    date(2027, 1, 1): "the first day of a year, inside ISO week 2026-W53",
    date(2027, 1, 4): "the first Monday of ISO year 2027",
    date(2027, 3, 1): "the day after a 28-day February",
    date(2028, 2, 29): "a leap day",
    date(2028, 3, 1): "the day after a leap day",
    date(2026, 3, 8): "DST starts in America/New_York",
    date(2026, 3, 29): "DST starts in Europe (a Sunday)",
    date(2026, 10, 25): "DST ends in Europe (a Sunday)",
    date(2026, 11, 1): "DST ends in America/New_York, first of a month, a Sunday",
}

DEFAULT_TODAY = date(2026, 12, 1)


def today() -> date:
    """The date calendar tests treat as today: ``PITR_TEST_TODAY`` or ``DEFAULT_TODAY``."""
    text = os.environ.get("PITR_TEST_TODAY", "").strip()
    if not text:
        return DEFAULT_TODAY
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise SystemExit(f"PITR_TEST_TODAY={text!r} is not a date (YYYY-MM-DD)") from exc

