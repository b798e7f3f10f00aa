"""The grammar of the WAL file names PostgreSQL archives: the one owner of it.

Plain string checks, no ``re``: the per-segment fast paths (:mod:`pitr.fastpath`,
:mod:`pitr.entry`) import this module, and every import there costs each
archive_command call (see pitr/fastpath.py). :func:`pitr.pg.names.classify` gives
the same answer as a :class:`~pitr.pg.names.WalKind`.
"""

from __future__ import annotations

_HEX = frozenset("0123456789ABCDEF")

SEGMENT = "segment"  # 000000010000000A000000FF
PARTIAL = "partial"  # <segment>.partial (the end of a timeline, from a promotion)
HISTORY = "history"  # 00000002.history
BACKUP = "backup"  # <segment>.00000028.backup (a base backup's label)


def is_segment_name(name: str) -> bool:
    return len(name) == 24 and _HEX.issuperset(name)


def wal_kind(name: str) -> str | None:
    """SEGMENT, PARTIAL, HISTORY or BACKUP; None for anything PostgreSQL does not archive."""
    if is_segment_name(name):
        return SEGMENT
    if len(name) == 16 and name.endswith(".history") and _HEX.issuperset(name[:8]):
        return HISTORY
    if len(name) == 32 and name.endswith(".partial") and is_segment_name(name[:24]):
        return PARTIAL
    if (len(name) == 40 and name.endswith(".backup") and name[24] == "."
            and is_segment_name(name[:24]) and _HEX.issuperset(name[25:33])):
        return BACKUP
    return None


def is_wal_name(name: str) -> bool:
    """Names PostgreSQL hands to archive_command: segment, .partial, .history, .backup."""
    return wal_kind(name) is not None
