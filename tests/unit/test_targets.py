"""Recovery target parsing: every accepted form, and clear errors for the rest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from pitr.errors import UsageError
from pitr.targets import Target, TargetKind, format_time, from_options, parse_time


@pytest.mark.parametrize(("text", "expected"), [
    ("2025-02-15T01:30Z", datetime(2025, 2, 15, 1, 30, tzinfo=UTC)),
    ("2025-02-15T01:30:00Z", datetime(2025, 2, 15, 1, 30, tzinfo=UTC)),
    ("2025-02-15 01:30", datetime(2025, 2, 15, 1, 30, tzinfo=UTC)),
    ("2025-02-15T01:30", datetime(2025, 2, 15, 1, 30, tzinfo=UTC)),
    ("2025-02-15 01:30:05.25", datetime(2025, 2, 15, 1, 30, 5, 250000, tzinfo=UTC)),
    ("2025-02-15 03:30+02", datetime(2025, 2, 15, 1, 30, tzinfo=UTC)),
    ("2025-02-15 03:30 +02:00", datetime(2025, 2, 15, 1, 30, tzinfo=UTC)),
    ("2025-02-14T20:30:00-05:00", datetime(2025, 2, 15, 1, 30, tzinfo=UTC)),
    ("2025-02-15 01:30 UTC", datetime(2025, 2, 15, 1, 30, tzinfo=UTC)),
    ("2025-02-15", datetime(2025, 2, 15, tzinfo=UTC)),
    ("  2025-02-15T01:30:00.123456+00:00 ", datetime(2025, 2, 15, 1, 30, 0, 123456, tzinfo=UTC)),
])
def test_parse_time_forms(text: str, expected: datetime) -> None:
    got = parse_time(text)
    assert got == expected
    assert got.tzinfo is UTC


@pytest.mark.parametrize("text", ["", "yesterday", "2025-13-01", "01:30", "2025-02-15 25:00",
                                  "1739583000"])
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_time(text)
    assert "ISO 8601" in (exc.value.hint or "")


def test_format_time_is_what_postgres_reads() -> None:
    assert format_time(datetime(2025, 2, 15, 1, 30, tzinfo=UTC)) == "2025-02-15 01:30:00+00"
    t = datetime(2025, 2, 15, 3, 30, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(t) == "2025-02-15 01:30:00.000005+00"


def test_from_options_each_kind() -> None:
    assert from_options(to="2025-02-15 01:30").kind is TargetKind.TIME
    t = from_options(lsn="16/B374D848", timeline=2)
    assert (t.kind, t.lsn, t.timeline) == (TargetKind.LSN, 0x16B374D848, 2)
    assert from_options(xid="7345").xid == 7345
    assert from_options(name="before-upgrade").name == "before-upgrade"
    assert from_options(immediate=True).kind is TargetKind.IMMEDIATE
    assert from_options(latest=True).kind is TargetKind.LATEST
    assert from_options(to="2025-02-15", exclusive=True).inclusive is False


@pytest.mark.parametrize("kwargs", [
    {}, {"to": "2025-02-15", "lsn": "0/1"}, {"latest": True, "immediate": True},
    {"lsn": "nope"}, {"xid": "abc"}, {"xid": "1"}, {"name": "x" * 64},
    {"latest": True, "timeline": 0},
])
def test_from_options_rejects(kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        from_options(**kwargs)  # type: ignore[arg-type]


def test_target_json_and_str() -> None:
    t = Target.at_time("2025-02-15T01:30Z", timeline=3)
    assert str(t) == "time 2025-02-15 01:30:00+00"
    assert t.to_json() == {"kind": "time", "time": "2025-02-15 01:30:00+00", "timeline": 3}
    assert Target.at_lsn("0/3000028").to_json() == {"kind": "lsn", "lsn": "0/3000028"}
