"""Recovery targets: what `--to/--lsn/--xid/--name/--immediate/--latest` mean.

Parsing is strict and explains itself, because a mistyped target restores the
wrong data: exactly one target kind, times in ISO 8601, LSNs as ``X/Y``.

A time without a zone is read in the cluster's ``TimeZone`` (the zone its
users read and write times in), which every backup records in its manifest
(docs/restore.md). It is never read silently as UTC: when the backups do
not record the zone, or the local time does not exist or happens twice (a
daylight-saving change), the input is refused and the error says how to
write it with a zone.

>>> parse_time("2025-02-15 01:30", "Europe/Berlin").isoformat()
'2025-02-15T00:30:00+00:00'
>>> parse_time("2025-02-15T03:30+02:00").isoformat()
'2025-02-15T01:30:00+00:00'
>>> str(Target.at_lsn("0/3000028"))
'lsn 0/3000028'
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum

from pitr.errors import UsageError
from pitr.pg.names import format_lsn, parse_lsn


class TargetKind(Enum):
    TIME = "time"
    LSN = "lsn"
    XID = "xid"
    NAME = "name"
    IMMEDIATE = "immediate"
    LATEST = "latest"


@dataclass(frozen=True)
class Target:
    """One recovery target. ``timeline`` pins the branch (None: the planner picks)."""

    kind: TargetKind
    time: datetime | None = None  # TIME: timezone-aware UTC
    lsn: int | None = None  # LSN
    xid: int | None = None  # XID
    name: str | None = None  # NAME (restore point)
    timeline: int | None = None
    inclusive: bool = True  # stop after (not before) the target transaction
    # TIME: what the user wrote, and the zone a zone-less input was read in
    text: str | None = field(default=None, compare=False)
    zone: str | None = field(default=None, compare=False)

    @classmethod
    def at_time(cls, value: str | datetime, timeline: int | None = None) -> Target:
        t = parse_time(value) if isinstance(value, str) else _as_utc(value)
        return cls(TargetKind.TIME, time=t, timeline=timeline)

    @classmethod
    def at_lsn(cls, value: str | int, timeline: int | None = None) -> Target:
        lsn = value if isinstance(value, int) else _parse_lsn(value)
        return cls(TargetKind.LSN, lsn=lsn, timeline=timeline)

    @classmethod
    def latest(cls, timeline: int | None = None) -> Target:
        return cls(TargetKind.LATEST, timeline=timeline)

    @classmethod
    def immediate(cls, timeline: int | None = None) -> Target:
        return cls(TargetKind.IMMEDIATE, timeline=timeline)

    def __str__(self) -> str:
        if self.kind is TargetKind.TIME:
            assert self.time is not None
            return f"time {format_time(self.time)}"
        if self.kind is TargetKind.LSN:
            assert self.lsn is not None
            return f"lsn {format_lsn(self.lsn)}"
        if self.kind is TargetKind.XID:
            return f"xid {self.xid}"
        if self.kind is TargetKind.NAME:
            return f"restore point {self.name!r}"
        return self.kind.value

    def describe(self) -> str:
        """``str(self)``, plus for a time the input beside the absolute UTC instant."""
        if self.kind is not TargetKind.TIME or self.text is None:
            return str(self)
        where = f", read in the cluster's TimeZone {self.zone}" if self.zone else ""
        return f"{self} (UTC; input {self.text!r}{where})"

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"kind": self.kind.value}
        if self.time is not None:
            doc["time"] = format_time(self.time)
        if self.text is not None:
            doc["input"] = self.text
            doc["input_zone"] = self.zone
        if self.lsn is not None:
            doc["lsn"] = format_lsn(self.lsn)
        if self.xid is not None:
            doc["xid"] = self.xid
        if self.name is not None:
            doc["name"] = self.name
        if self.timeline is not None:
            doc["timeline"] = self.timeline
        return doc


def format_time(t: datetime) -> str:
    """UTC with microseconds only when present: what recovery_target_time accepts."""
    t = _as_utc(t)
    fmt = "%Y-%m-%d %H:%M:%S.%f" if t.microsecond else "%Y-%m-%d %H:%M:%S"
    return t.strftime(fmt) + "+00"


def _as_utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


_SPACE_T = re.compile(r"^(\d{4}-\d{2}-\d{2})[ T](.*)$")


def parse_time(text: str, zone: str | None = None) -> datetime:
    """ISO 8601 date-time (or date) -> aware UTC datetime.

    Accepts ``2025-02-15T01:30Z``, ``2025-02-15 01:30:05.25+01:00``,
    ``2025-02-15 01:30 UTC``, and without a zone ``2025-02-15 01:30`` and
    ``2025-02-15`` (midnight), which are read in ``zone`` (an IANA name such as
    PostgreSQL's TimeZone setting). Without ``zone`` such input is refused.
    """
    t = _parse_iso(text)
    if t.tzinfo is not None:
        return t.astimezone(UTC)
    if zone is None:
        raise UsageError(
            f"{text.strip()!r} has no time zone, and the backups do not record the cluster's "
            "TimeZone to read it in",
            hint="write the zone, e.g. --to '2025-02-15 01:30+01' or --to "
                 "'2025-02-15T00:30Z' (UTC); backups taken by this pitr record the cluster's "
                 "TimeZone, and a time without a zone is then read in it")
    return local_to_utc(t, zone, text.strip())


def local_to_utc(local: datetime, zone: str, text: str) -> datetime:
    """The UTC instant of the wall-clock time ``local`` in ``zone``; refuses a time that a
    daylight-saving change skipped (a gap) or repeated (an overlap)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        zi = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(
            f"{text!r} has no time zone, and the cluster's TimeZone {zone!r} is not a zone "
            "this host knows", hint="write the zone in the target, e.g. --to "
            f"'{text}+01' or --to '{text} UTC'") from None
    first = local.replace(tzinfo=zi, fold=0)
    second = local.replace(tzinfo=zi, fold=1)
    if first.astimezone(UTC).astimezone(zi).replace(tzinfo=None) != local:
        before = _offset(first.utcoffset())
        after = _offset(second.utcoffset())
        raise UsageError(
            f"{text!r} does not exist in {zone}: the clocks jumped forward over it "
            f"(UTC{before} to UTC{after}, daylight saving time)",
            hint=f"write the offset you mean, e.g. --to '{text}{before}' or --to "
                 f"'{text}{after}'")
    if first.utcoffset() != second.utcoffset():
        a, b = _offset(first.utcoffset()), _offset(second.utcoffset())
        raise UsageError(
            f"{text!r} happened twice in {zone}: the clocks went back over it, so it is "
            f"{format_time(first)} (UTC{a}) or {format_time(second)} (UTC{b})",
            hint=f"write the offset to say which: --to '{text}{a}' or --to '{text}{b}'")
    return first.astimezone(UTC)


def _offset(delta: timedelta | None) -> str:
    minutes = int(delta.total_seconds()) // 60 if delta is not None else 0
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{mins:02d}" if mins else f"{sign}{hours:02d}"


def _parse_iso(text: str) -> datetime:
    """The datetime ``text`` names, naive when it names no zone."""
    raw = text.strip()
    s = raw
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    m = _SPACE_T.match(s)
    if m:
        rest = m.group(2).strip()
        # "01:30 UTC" / "01:30 +02" : join a zone written after a space
        rest = re.sub(r"\s*(UTC|GMT)$", "+00:00", rest, flags=re.I)
        rest = re.sub(r"\s+([+-]\d{1,2}(?::?\d{2})?)$", r"\1", rest)
        # Python wants +HH:MM; PostgreSQL and people write +HH too
        rest = re.sub(r"([+-])(\d{2})$", r"\1\2:00", rest)
        s = f"{m.group(1)}T{rest}"
    try:
        return datetime.fromisoformat(s)
    except ValueError:
        raise UsageError(
            f"not a time: {raw!r}",
            hint="use ISO 8601 with a zone, e.g. --to '2025-02-15T01:30:00Z' or --to "
                 "'2025-02-15 01:30+01' (without a zone: the cluster's TimeZone)") from None


def _parse_lsn(text: str) -> int:
    try:
        return parse_lsn(text)
    except ValueError:
        raise UsageError(f"not an LSN: {text!r}",
                         hint="write it as PostgreSQL prints it, e.g. --lsn 0/3000028") from None


def from_options(*, to: str | None = None, lsn: str | None = None, xid: str | None = None,
                 name: str | None = None, immediate: bool = False, latest: bool = False,
                 timeline: int | None = None, exclusive: bool = False,
                 zone: Callable[[], str | None] | None = None) -> Target:
    """Build the one target the command line asked for (UsageError otherwise).

    ``zone`` gives the cluster's TimeZone (None: not recorded); it is asked only
    for a time written without a zone.
    """
    given = [flag for flag, v in (("--to", to), ("--lsn", lsn), ("--xid", xid),
                                  ("--name", name)) if v is not None]
    given += [flag for flag, v in (("--immediate", immediate), ("--latest", latest)) if v]
    if len(given) != 1:
        raise UsageError(
            "choose exactly one recovery target" + (f" (got {', '.join(given)})" if given else ""),
            hint="--to TIME, --lsn LSN, --xid XID, --name RESTORE_POINT, --immediate "
                 "(end of the backup) or --latest (all archived WAL)")
    if timeline is not None and timeline < 1:
        raise UsageError(f"--timeline must be 1 or more, got {timeline}")
    inclusive = not exclusive
    if to is not None:
        return at_time_text(to, zone, timeline=timeline, inclusive=inclusive)
    if lsn is not None:
        return Target(TargetKind.LSN, lsn=_parse_lsn(lsn), timeline=timeline, inclusive=inclusive)
    if xid is not None:
        if not xid.strip().isdigit() or int(xid) < 3:
            raise UsageError(f"not a transaction id: {xid!r}",
                             hint="a normal transaction id is a number >= 3, e.g. --xid 7345")
        return Target(TargetKind.XID, xid=int(xid), timeline=timeline, inclusive=inclusive)
    if name is not None:
        if not name or len(name) >= 64:
            raise UsageError("--name: a restore point name is 1 to 63 characters")
        return Target(TargetKind.NAME, name=name, timeline=timeline)
    if immediate:
        return Target(TargetKind.IMMEDIATE, timeline=timeline)
    return Target(TargetKind.LATEST, timeline=timeline)


def at_time_text(text: str, zone: Callable[[], str | None] | None, *,
                 timeline: int | None = None, inclusive: bool = True) -> Target:
    """A time target from what the user wrote; ``zone`` as in :func:`from_options`."""
    local = _parse_iso(text).tzinfo is None
    name = zone() if (local and zone is not None) else None
    return Target(TargetKind.TIME, time=parse_time(text, name), timeline=timeline,
                  inclusive=inclusive, text=text.strip(), zone=name)
