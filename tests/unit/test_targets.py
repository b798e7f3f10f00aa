"""Recovery target parsing: every accepted form, and clear errors for the rest."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pitr.errors import UsageError
from pitr.targets import Target, TargetKind, format_time, from_options, parse_time


@pytest.mark.parametrize(("text", "expected"), [
    ("2025-02-15T01:30Z", datetime(2025, 2, 15, 1, 30, tzinfo=UTC)),
    ("2025-02-15T01:30:00Z", datetime(2025, 2, 15, 1, 30, tzinfo=UTC)),
    ("2025-02-15 01:30+00", datetime(2025, 2, 15, 1, 30, tzinfo=UTC)),
    ("2025-02-15 01:30:05.25Z", datetime(2025, 2, 15, 1, 30, 5, 250000, tzinfo=UTC)),
    ("2025-02-15 03:30+02", datetime(2025, 2, 15, 1, 30, tzinfo=UTC)),
    ("2025-02-15 03:30 +02:00", datetime(2025, 2, 15, 1, 30, tzinfo=UTC)),
    ("2025-02-14T20:30:00-05:00", datetime(2025, 2, 15, 1, 30, tzinfo=UTC)),
    ("2025-02-15 01:30 UTC", datetime(2025, 2, 15, 1, 30, tzinfo=UTC)),
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
    assert from_options(to="2025-02-15 01:30Z").kind is TargetKind.TIME
    t = from_options(lsn="16/B374D848", timeline=2)
    assert (t.kind, t.lsn, t.timeline) == (TargetKind.LSN, 0x16B374D848, 2)
    assert from_options(xid="7345").xid == 7345
    assert from_options(name="before-upgrade").name == "before-upgrade"
    assert from_options(immediate=True).kind is TargetKind.IMMEDIATE
    assert from_options(latest=True).kind is TargetKind.LATEST
    assert from_options(to="2025-02-15", exclusive=True,
                        zone=lambda: "UTC").inclusive is False


@pytest.mark.parametrize("kwargs", [
    {}, {"to": "2025-02-15Z", "lsn": "0/1"}, {"latest": True, "immediate": True},
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


# -- zone-less times: the cluster's TimeZone, never silently UTC ------------------------
def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(("text", "zone", "expected"), [
    # the example: a New York server, 08:00:13 local is 13:00:13 UTC
    ("2026-12-01 08:00:13", "America/New_York", utc(2026, 12, 1, 13, 0, 13)),
    ("2026-07-01 08:00", "America/New_York", utc(2026, 7, 1, 12, 0)),  # EDT
    ("2026-12-01 08:00", "Europe/Berlin", utc(2026, 12, 1, 7, 0)),
    ("2026-07-01T08:00", "Europe/Berlin", utc(2026, 7, 1, 6, 0)),  # CEST
    ("2026-03-29", "Europe/Berlin", utc(2026, 3, 28, 23, 0)),  # a date: local midnight
    # just outside the changes: unambiguous
    ("2026-03-08 01:59:59", "America/New_York", utc(2026, 3, 8, 6, 59, 59)),
    ("2026-03-08 03:00", "America/New_York", utc(2026, 3, 8, 7, 0)),
    ("2026-11-01 02:00", "America/New_York", utc(2026, 11, 1, 7, 0)),
    ("2026-10-25 03:00", "Europe/Berlin", utc(2026, 10, 25, 2, 0)),
    ("2026-12-01 08:00", "UTC", utc(2026, 12, 1, 8, 0)),
])
def test_a_zone_less_time_is_read_in_the_cluster_zone(text: str, zone: str,
                                                      expected: datetime) -> None:
    assert parse_time(text, zone) == expected
    t = from_options(to=text, zone=lambda: zone)
    assert (t.time, t.text, t.zone) == (expected, text, zone)
    assert t.to_json()["input"] == text and t.to_json()["input_zone"] == zone
    shown = t.describe()  # plan/restore print the UTC instant beside the input
    assert format_time(expected) in shown and repr(text) in shown and zone in shown


@pytest.mark.parametrize(("text", "zone", "offsets"), [
    ("2026-03-08 02:30", "America/New_York", ("-05", "-04")),
    ("2026-03-29 02:30", "Europe/Berlin", ("+01", "+02")),
])
def test_a_time_the_clocks_skipped_is_refused(text: str, zone: str,
                                              offsets: tuple[str, str]) -> None:
    with pytest.raises(UsageError) as exc:
        parse_time(text, zone)
    assert "does not exist" in exc.value.message and zone in exc.value.message
    assert all(f"'{text}{o}'" in (exc.value.hint or "") for o in offsets)


@pytest.mark.parametrize(("text", "zone", "instants"), [
    ("2026-11-01 01:30", "America/New_York", (utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 6, 30))),
    ("2026-10-25 02:30", "Europe/Berlin", (utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30))),
])
def test_a_time_that_happened_twice_is_refused(text: str, zone: str,
                                               instants: tuple[datetime, datetime]) -> None:
    with pytest.raises(UsageError) as exc:
        parse_time(text, zone)
    assert "happened twice" in exc.value.message
    assert all(format_time(i) in exc.value.message for i in instants)
    # either offset the hint offers picks exactly one of the two instants
    for suggestion, instant in zip(re.findall(r"--to '([^']+)'", exc.value.hint or ""),
                                   instants, strict=True):
        assert parse_time(suggestion) == instant


def test_without_a_recorded_zone_a_zone_less_time_is_refused() -> None:
    with pytest.raises(UsageError) as exc:
        from_options(to="2026-12-01 08:00:13", zone=lambda: None)
    assert "no time zone" in exc.value.message and "TimeZone" in exc.value.message
    assert "+01" in (exc.value.hint or "") and "Z" in (exc.value.hint or "")
    with pytest.raises(UsageError):
        parse_time("2026-12-01 08:00:13")
    with pytest.raises(UsageError, match="not a zone this host knows"):
        parse_time("2026-12-01 08:00:13", "Mars/Olympus_Mons")


def test_the_zone_is_asked_only_for_a_zone_less_time() -> None:
    def no_zone() -> str | None:
        raise AssertionError("looked up the cluster's zone for a time that has one")

    t = from_options(to="2026-12-01 08:00:13-05", zone=no_zone)
    assert t.time == utc(2026, 12, 1, 13, 0, 13) and t.zone is None
    assert "read in" not in t.describe() and "2026-12-01 13:00:13+00" in t.describe()


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2037, 12, 31)),
       st.sampled_from(["America/New_York", "Europe/Berlin", "Australia/Lord_Howe"]))
def test_any_accepted_local_time_round_trips(local: datetime, zone: str) -> None:
    """What is accepted names one instant whose wall-clock time in the zone is the input."""
    from zoneinfo import ZoneInfo

    text = local.isoformat(sep=" ")
    try:
        got = parse_time(text, zone)
    except UsageError as exc:
        assert "does not exist" in exc.message or "happened twice" in exc.message
        return
    assert got.astimezone(ZoneInfo(zone)).replace(tzinfo=None) == local


def test_a_skipped_local_time_is_refused_by_name() -> None:
    """2020-03-08 02:30 never happened in New York (clocks jumped from 02:00 to 03:00)."""
    with pytest.raises(UsageError) as caught:
        parse_time("2020-03-08 02:30:00", "America/New_York")
    assert "does not exist" in caught.value.message
