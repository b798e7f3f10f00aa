"""In-memory catalogs for the retention tests (no storage)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pitr.catalog import Catalog, Timeline, WalSegment
from pitr.manifest import BackupRecord
from pitr.pg.names import HistoryEntry, backup_history_name

SEG = 16 * 1024 * 1024
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def backup(bid: str, stop: datetime, start_seg: int, stop_seg: int | None = None, *,
           tli: int = 1, pinned: bool = False, stored: int = 1000) -> BackupRecord:
    stop_seg = start_seg if stop_seg is None else stop_seg
    return BackupRecord(
        id=bid, label="scheduled", start_lsn=start_seg * SEG + 0x28,
        stop_lsn=stop_seg * SEG + 0x138, start_time=stop - timedelta(minutes=5),
        stop_time=stop, timeline=tli, system_id="7000000000000000001", pg_version=15,
        db_size=stored * 3, raw_bytes=stored * 3, stored_bytes=stored, pinned=pinned)


def segs(tli: int, first: int, last: int, size: int = 100) -> tuple[WalSegment, ...]:
    return tuple(WalSegment(tli, n, size, T0) for n in range(first, last + 1))


def catalog(backups: list[BackupRecord], segments: dict[int, tuple[WalSegment, ...]] | None = None,
            *, histories: dict[int, list[tuple[int, int]]] | None = None,
            incomplete: tuple[str, ...] = (), partial: tuple[str, ...] = (),
            backup_files: tuple[str, ...] | None = None) -> Catalog:
    """``histories``: tli -> [(parent, switch LSN), ...] as its history file lists them."""
    # as load_catalog builds them: every timeline with segments or a history file; those
    # with a file carry its archive time
    timelines = {t: Timeline(t) for t in {1, *(segments or {})}}
    for t, entries in (histories or {}).items():
        timelines[t] = Timeline(t, tuple(HistoryEntry(p, lsn, "test") for p, lsn in entries),
                                T0)
    if backup_files is None:
        backup_files = tuple(backup_history_name(b.timeline, b.start_lsn, SEG) for b in backups)
    return Catalog(stanza="test", system_id="7000000000000000001", segment_size=SEG,
                   backups=tuple(sorted(backups, key=lambda b: b.stop_time)),
                   segments=segments or {}, timelines=timelines,
                   incomplete_backups=incomplete, backup_history_files=backup_files,
                   partial_files=partial)
