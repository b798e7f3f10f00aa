"""The newest transaction end (commit or abort) time in the archived WAL, via pg_waldump.

PostgreSQL stops at a time target only when it replays a commit or abort record
stamped after the target; if the replayed WAL has none, PostgreSQL 15 stops with
FATAL "recovery ended before configured recovery target was reached". Object
archive times only bound commit times from above (archiver lag, whole-second
mtimes), so a target chosen from them can lie after the last commit. Reading
the records themselves makes the bound exact.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pitr.catalog import BackupRecord, Catalog
from pitr.errors import PostgresError
from pitr.pg.names import lsn_to_segno, segment_name
from pitr.pg.version import resolve_bindir
from pitr.repo import Repo
from pitr.wal.fetch import fetch_to_bytes

# Segments read backwards from the newest before giving up: a quiet database may
# write checkpoints only, but 16 segments without one commit means no recent one.
MAX_SEGMENTS = 16

# pg_waldump --rmgr=Transaction descriptions of records recovery compares with a
# time target: "COMMIT <ts> UTC; ...", "ABORT <ts> UTC", "COMMIT_PREPARED 725: <ts> UTC".
_XACT_END = re.compile(
    r"desc: (?:COMMIT|ABORT)(?:_PREPARED \d+:)? "
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (\S+?);?(?:\s|$)", re.MULTILINE)


def xact_end_times(text: str) -> list[datetime]:
    """Commit/abort timestamps in pg_waldump output (run with TZ=UTC), in file order."""
    out = []
    for m in _XACT_END.finditer(text):
        stamp, zone = m.groups()
        if zone != "UTC":  # the caller sets TZ=UTC; anything else would be misread
            raise PostgresError(f"pg_waldump printed a timestamp in zone {zone!r}, not UTC")
        out.append(datetime.fromisoformat(stamp).replace(tzinfo=UTC))
    return out


def segments_to_scan(catalog: Catalog, backup: BackupRecord,
                     limit: int = MAX_SEGMENTS) -> list[str]:
    """Names of the newest ``limit`` segments of the unbroken WAL after ``backup``, newest first.

    Only WAL that continues the backup without a gap can be replayed from it."""
    stop_seg = lsn_to_segno(backup.stop_lsn, catalog.segment_size)
    r = catalog.range_holding(backup.timeline, stop_seg)
    if r is None:
        return []
    first = max(stop_seg, r.last - limit + 1)
    return [segment_name(backup.timeline, s, catalog.segment_size)
            for s in range(r.last, first - 1, -1)]


def dump_xact_end_times(pg_waldump: Path, segment: Path) -> list[datetime]:
    """Run pg_waldump on one segment file (named as the segment) and parse its output."""
    proc = subprocess.run(
        [str(pg_waldump), "--rmgr=Transaction", str(segment)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "TZ": "UTC", "LC_ALL": "C"}, check=False)
    # The last archived segment usually ends in zeroes (a switch or a recycled file):
    # pg_waldump then reports "invalid record length ... wanted 24, got 0" and exits 1
    # after printing every valid record. A segment filled by the tail of one huge
    # record has no record start: "could not find a valid record". Both are normal.
    if proc.returncode != 0 and not any(
            m in proc.stderr for m in ("error in WAL record", "could not find a valid record")):
        raise PostgresError(f"pg_waldump failed on {segment.name}: "
                            f"{proc.stderr.strip() or f'exit {proc.returncode}'}")
    return xact_end_times(proc.stdout)


def last_xact_end_time(repo: Repo, catalog: Catalog, backup: BackupRecord, bindir: str | Path,
                       *, budget: float, limit: int = MAX_SEGMENTS) -> datetime | None:
    """The newest commit/abort time in the archived WAL that continues ``backup``.

    Reads segments newest first and stops at the first that has one; None when
    none of the newest ``limit`` segments has any (then no time target after
    them can be reached)."""
    # pg_waldump reads only WAL of its own major version (the page magic).
    pg_waldump = resolve_bindir(str(bindir), backup.pg_version, tool="pg_waldump",
                                what=f"the WAL after backup {backup.id}") / "pg_waldump"
    with tempfile.TemporaryDirectory(prefix="pitr-waldump-") as tmp:
        for name in segments_to_scan(catalog, backup, limit):
            path = Path(tmp) / name
            # verified against its stored sha256; a private scratch copy needs no fsync
            path.write_bytes(fetch_to_bytes(repo, name, budget=budget))
            times = dump_xact_end_times(pg_waldump, path)
            path.unlink()
            if times:
                return max(times)
    return None
