"""Recovery targets: what `--to/--lsn/--xid/--name/--immediate/--latest` mean.

Parsing is strict and explains itself, because a mistyped target restores the
wrong data: exactly one target kind, times in ISO 8601 (a time without a zone
is UTC, as DESIGN.md §3 promises), LSNs as ``X/Y``.

>>> parse_time("2025-02-15 01:30").isoformat()
'2025-02-15T01:30:00+00:00'
>>> parse_time("2025-02-15T03:30+02:00").isoformat()
'2025-02-15T01:30:00+00:00'
>>> str(Target.at_lsn("0/3000028"))
'lsn 0/3000028'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
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

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"kind": self.kind.value}
        if self.time is not None:
            doc["time"] = format_time(self.time)
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


def parse_time(text: str) -> datetime:
    """ISO 8601 date-time (or date) -> aware UTC datetime; naive means UTC.

    Accepts ``2025-02-15T01:30Z``, ``2025-02-15 01:30:05.25+01:00``,
    ``2025-02-15 01:30`` and ``2025-02-15`` (midnight UTC).
    """
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
        t = datetime.fromisoformat(s)
    except ValueError:
        raise UsageError(
            f"not a time: {raw!r}",
            hint="use ISO 8601, e.g. --to '2025-02-15T01:30:00Z' or --to '2025-02-15 01:30' "
                 "(a time without a zone is UTC)") from None
    return _as_utc(t)


def _parse_lsn(text: str) -> int:
    try:
        return parse_lsn(text)
    except ValueError:
        raise UsageError(f"not an LSN: {text!r}",
                         hint="write it as PostgreSQL prints it, e.g. --lsn 0/3000028") from None


def from_options(*, to: str | None = None, lsn: str | None = None, xid: str | None = None,
                 name: str | None = None, immediate: bool = False, latest: bool = False,
                 timeline: int | None = None, exclusive: bool = False) -> Target:
    """Build the one target the command line asked for (UsageError otherwise)."""
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
        return Target(TargetKind.TIME, time=parse_time(to), timeline=timeline,
                      inclusive=inclusive)
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
