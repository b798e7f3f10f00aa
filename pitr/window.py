"""The recovery window: from the oldest restorable backup to the last WAL replay reaches.

One rule for every reader (``pitr list``, ``/health/backup``, ``pitr status``, the
metrics and the drill's random point), so they cannot disagree: only backups whose
own WAL is archived count (:func:`pitr.catalog.backup_restorable`), and the end
follows the timeline ancestry recovery itself follows. Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pitr.catalog import Catalog, backup_restorable
from pitr.chains import chains
from pitr.pg.names import lsn_to_segno, segno_to_lsn


@dataclass(frozen=True)
class WindowEdge:
    time: datetime
    lsn: int
    timeline: int
    backup_id: str | None = None


@dataclass(frozen=True)
class RecoveryWindow:
    earliest: WindowEdge  # stop time of the oldest restorable backup
    latest: WindowEdge  # last contiguous archived WAL after the newest restorable backup


def _contiguous_end(cat: Catalog, tli: int, from_segno: int) -> int | None:
    """Last segno of the unbroken run on ``tli`` that holds ``from_segno``."""
    r = cat.range_holding(tli, from_segno)
    return r.last if r is not None else None


def _follow(cat: Catalog, tli: int, from_segno: int) -> tuple[int, int] | None:
    """(timeline, last segno) reachable by replay from ``from_segno`` on ``tli``.

    Recovery follows the newest timeline that branched off inside the WAL it
    has (recovery_target_timeline = 'latest'), so the window does too.
    """
    end = _contiguous_end(cat, tli, from_segno)
    if end is None:
        return None
    children = sorted((t for t in cat.timelines.values()
                       if t.parent == tli and t.branch_lsn is not None), key=lambda t: -t.tli)
    for child in children:
        assert child.branch_lsn is not None
        branch_seg = lsn_to_segno(child.branch_lsn, cat.segment_size)
        # The child's first segment repeats the parent's WAL up to the switch point.
        if from_segno <= branch_seg <= end + 1:
            reached = _follow(cat, child.tli, branch_seg)
            if reached is not None:
                return reached
    return tli, end


def recovery_window(cat: Catalog) -> RecoveryWindow | None:
    every = chains(cat.backups, cat)  # an incremental restores only with its whole chain
    usable = [b for b in cat.backups if backup_restorable(cat, b) and every[b.id].whole]
    if not usable:
        return None
    oldest = min(usable, key=lambda b: b.stop_time)
    newest = max(usable, key=lambda b: b.stop_time)
    earliest = WindowEdge(oldest.stop_time, oldest.stop_lsn, oldest.timeline, oldest.id)
    reached = _follow(cat, newest.timeline, lsn_to_segno(newest.start_lsn, cat.segment_size))
    assert reached is not None  # restorable implies its start segment is archived
    tli, last = reached
    seg = cat.segments[tli].get(last)
    assert seg is not None  # the end of an archived range
    end_lsn = segno_to_lsn(last + 1, cat.segment_size)
    latest = WindowEdge(max(seg.archived_at, newest.stop_time), end_lsn, tli)
    return RecoveryWindow(earliest, latest)
