"""In-memory catalogs for the planner tests (no storage involved)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pitr.catalog import Catalog, Timeline, WalSegment
from pitr.manifest import BackupRecord
from pitr.pg.names import DEFAULT_SEGMENT_SIZE, HistoryEntry

SEG = DEFAULT_SEGMENT_SIZE
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def minutes(m: float) -> datetime:
    return T0 + timedelta(minutes=m)


def seg(tli: int, segno: int, at: datetime, size: int = 1000) -> WalSegment:
    return WalSegment(tli, segno, size, at)


def backup(bid: str, start_seg: int, stop_seg: int, stop_time: datetime, tli: int = 1,
           start_time: datetime | None = None) -> BackupRecord:
    return BackupRecord(
        id=bid, label="manual", start_lsn=start_seg * SEG + 0x28, stop_lsn=stop_seg * SEG + 0x138,
        start_time=start_time or stop_time - timedelta(seconds=20), stop_time=stop_time,
        timeline=tli, system_id="7000000000000000001", pg_version=150000, db_size=1,
        raw_bytes=100, stored_bytes=10)


def catalog(segments: list[WalSegment], backups: list[BackupRecord],
            timelines: list[Timeline] | None = None) -> Catalog:
    by_tli: dict[int, list[WalSegment]] = {}
    for s in sorted(segments, key=lambda s: (s.timeline, s.segno)):
        by_tli.setdefault(s.timeline, []).append(s)
    return Catalog(stanza="test", system_id="7000000000000000001",
                   backups=tuple(sorted(backups, key=lambda b: b.stop_time)),
                   segments={t: tuple(v) for t, v in by_tli.items()},
                   timelines={t.tli: t for t in (timelines or [])})


def history(*entries: tuple[int, int]) -> tuple[HistoryEntry, ...]:
    return tuple(HistoryEntry(parent, lsn, "test") for parent, lsn in entries)
