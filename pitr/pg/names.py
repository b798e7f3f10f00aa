"""Pure WAL naming and LSN arithmetic (no I/O).

A WAL segment name is 24 hex digits: timeline, "log" (high 32 bits of the LSN)
and the segment number within that log, each 8 digits. With the default 16 MiB
segments a log holds 256 segments, so the last 8 digits run 00000000..000000FF.

>>> segment_name(1, lsn_to_segno(parse_lsn("0/3000028")))
'000000010000000000000003'
>>> parse_segment_name('00000002000000010000000A')
(2, 266)
>>> format_lsn(segno_to_lsn(266))
'1/A000000'
>>> history_name(3)
'00000003.history'
>>> backup_history_name(1, parse_lsn("0/2000028"))
'000000010000000000000002.00000028.backup'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from pitr.pg.walname import is_segment_name, wal_kind

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
MAX_TIMELINE = 0xFFFFFFFF

_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


class WalKind(Enum):
    SEGMENT = "segment"
    PARTIAL = "partial"
    HISTORY = "history"
    BACKUP = "backup"


def segments_per_log(seg_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    return 0x100000000 // seg_size


def parse_lsn(text: str) -> int:
    """'16/B374D848' -> int. Raises ValueError for anything else."""
    m = _LSN_RE.match(text.strip())
    if not m:
        raise ValueError(f"not an LSN: {text!r} (expected e.g. 0/3000028)")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(lsn: int) -> str:
    if not 0 <= lsn < 1 << 64:
        raise ValueError(f"LSN out of range: {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_to_segno(lsn: int, seg_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    return lsn // seg_size


def segno_to_lsn(segno: int, seg_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The LSN at which segment ``segno`` starts."""
    return segno * seg_size


def segment_name(tli: int, segno: int, seg_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    if not 1 <= tli <= MAX_TIMELINE:
        raise ValueError(f"timeline out of range: {tli}")
    per = segments_per_log(seg_size)
    return f"{tli:08X}{segno // per:08X}{segno % per:08X}"


def parse_segment_name(name: str, seg_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int]:
    """'000000010000000000000003' -> (timeline, segno)."""
    if not is_segment_name(name):
        raise ValueError(f"not a WAL segment name: {name!r}")
    tli, log, seg = int(name[:8], 16), int(name[8:16], 16), int(name[16:], 16)
    return tli, segno_of(log, seg, seg_size, tli)


def segno_of(log: int, seg: int, seg_size: int, tli: int = 1) -> int:
    """The segment number a name's second and third 8 hex digits spell (``log``, ``seg``);
    ValueError for a ``seg`` the segment size cannot have, or timeline 0."""
    per = segments_per_log(seg_size)
    if tli == 0 or seg >= per:
        raise ValueError(f"not a WAL segment name: {tli:08X}{log:08X}{seg:08X}")
    return log * per + seg


def history_name(tli: int) -> str:
    return f"{tli:08X}.history"


def backup_history_name(tli: int, start_lsn: int, seg_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """Name of the `.backup` file PostgreSQL archives when a base backup stops."""
    seg = segment_name(tli, lsn_to_segno(start_lsn, seg_size), seg_size)
    return f"{seg}.{start_lsn % seg_size:08X}.backup"


def classify(name: str) -> WalKind:
    """Which kind of file PostgreSQL asks to archive or restore; ValueError if none."""
    kind = wal_kind(name)  # the grammar's one owner: pitr/pg/walname.py
    if kind is not None:
        return WalKind(kind)
    raise ValueError(f"not a WAL file name PostgreSQL archives: {name!r}")


def timeline_of(name: str) -> int:
    """Timeline encoded in any WAL file name (segment, partial, history, backup)."""
    classify(name)
    return int(name[:8], 16)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One line of a timeline history file: ``parent`` ended at ``switch_lsn``."""

    parent: int
    switch_lsn: int
    reason: str


def parse_history(text: str) -> list[HistoryEntry]:
    """Parse a ``NNNNNNNN.history`` file (lines: parent-tli, switch LSN, reason).

    >>> parse_history("1\\t0/3000160\\tno recovery target specified\\n")
    [HistoryEntry(parent=1, switch_lsn=50332000, reason='no recovery target specified')]
    """
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 2:
            raise ValueError(f"malformed history line: {line!r}")
        entries.append(HistoryEntry(int(parts[0]), parse_lsn(parts[1]),
                                    parts[2] if len(parts) > 2 else ""))
    return entries
