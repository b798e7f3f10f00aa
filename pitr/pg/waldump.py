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
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from pitr.errors import PostgresError
from pitr.pg.names import (
    lsn_to_segno,
    parse_lsn,
    parse_segment_name,
    segment_name,
    segno_to_lsn,
)
from pitr.pg.walname import is_segment_name

# Fetches one archived WAL file by name, verified (the caller's repository:
# pitr/restore.py passes pitr.wal.fetch.fetch_to_bytes; pg/ knows no repository).
Fetch = Callable[[str], bytes]

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


def last_xact_end_time(segments: Sequence[str], fetch: Fetch,
                       pg_waldump: Path) -> datetime | None:
    """The newest commit/abort time in ``segments`` (newest first), with ``pg_waldump``
    of the WAL's own major version (it reads only that: the page magic).

    Reads segments in order and stops at the first that has one; None when none
    has any (then no time target after them can be reached)."""
    with tempfile.TemporaryDirectory(prefix="pitr-waldump-") as tmp:
        for name in segments:
            path = Path(tmp) / name
            # verified against its stored sha256; a private scratch copy needs no fsync
            path.write_bytes(fetch(name))
            times = dump_xact_end_times(pg_waldump, path)
            path.unlink()
            if times:
                return max(times)
    return None


# -- tablespaces in the WAL a restore replays -------------------------------------
#
# PostgreSQL replays CREATE TABLESPACE by (re)creating pg_tblspc/<oid> as a link to
# the location recorded in the WAL, and then writes every relation of that
# tablespace through it. On the database host that location is production's live
# tablespace, so a restore must know before replay (docs/restore.md, "Tablespaces in archived WAL").

DEFAULT_TABLESPACES = (1663, 1664)  # pg_default, pg_global: inside the data directory

_RECORD = re.compile(r"^rmgr: (\S+)\s.*?lsn: ([0-9A-F]+/[0-9A-F]+),.*?desc: (.*)$")
_TS_CREATE = re.compile(r'^CREATE (\d+) "(.*)"$')
# rel <spc>/<db>/<rel> (block refs), pg_tblspc/<spc>/ (smgr, dropped rels),
# "dir <spc>/<db>" and "to <spc>/<db>" (CREATE/DROP DATABASE)
_TS_USE = re.compile(r"(?:\brel |\bdir |\bto )(\d+)/\d+|pg_tblspc/(\d+)")


@dataclass(frozen=True)
class TablespaceRecord:
    """One WAL record that creates, drops or writes into a non-default tablespace."""

    lsn: str
    segment: str
    rmgr: str
    tablespace: int
    location: str | None  # CREATE TABLESPACE only: where replay points pg_tblspc/<oid>
    desc: str

    def describe(self) -> str:
        return f"{self.rmgr} record at {self.lsn} in {self.segment}: {self.desc[:160]}"


# A cheap first pass over the whole dump: only the few lines it finds are parsed (a
# pgbench segment has ~100k records; per-line Python took seconds). Each pattern
# starts with a literal, which Python's re searches for at C speed.
_TS_CANDIDATES = tuple(re.compile(p) for p in (
    r"rmgr: Tablespace ", r"pg_tblspc/\d", r"rel (?!166[34]/)\d", r"dir (?!166[34]/)\d",
    r" to (?!166[34]/)\d"))


def _line_record(line: str, segment: str) -> TablespaceRecord | None:
    m = _RECORD.match(line)
    if not m:
        return None
    rmgr, lsn, desc = m.groups()
    if rmgr == "Tablespace":
        create = _TS_CREATE.match(desc)
        oid = re.match(r"^\w+ (\d+)", desc)
        return TablespaceRecord(lsn, segment, rmgr, int(oid.group(1)),
                                create.group(2) if create else None, desc) if oid else None
    for use in _TS_USE.finditer(desc):
        spc = int(use.group(1) or use.group(2))
        if spc not in DEFAULT_TABLESPACES:
            return TablespaceRecord(lsn, segment, rmgr, spc, None, desc)
    return None


def tablespace_records(text: str, segment: str = "") -> list[TablespaceRecord]:
    """Records of pg_waldump output that touch a tablespace other than the defaults."""
    starts = sorted({text.rfind("\n", 0, m.start()) + 1
                     for rx in _TS_CANDIDATES for m in rx.finditer(text)})
    out = []
    for start in starts:
        end = text.find("\n", start)
        rec = _line_record(text[start:end if end >= 0 else len(text)], segment)
        if rec is not None:
            out.append(rec)
    return out


def _dump_window(pg_waldump: Path, first: Path, last: Path | None) -> str:
    """pg_waldump from ``first`` through ``last`` (files of one directory).

    A record that starts in one segment and ends in the next is read only when both
    are in the run; a single segment would drop it."""
    # Only the resource managers that create, drop or fill a tablespace's directories:
    # a tablespace the backup does not hold (the restore relocates those it holds,
    # docs/tablespaces.md) is written in the replayed WAL only after a Tablespace,
    # Database or Storage record that creates its files. Decoding is the same; printing
    # and parsing every heap record cost 4x the time (docs/restore.md, "Tablespaces in
    # archived WAL").
    argv = [str(pg_waldump), *(f"--rmgr={r}" for r in SCAN_RMGRS), str(first)]
    argv += [str(last)] if last and last != first else []
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TZ": "UTC", "LC_ALL": "C"}, check=False)
    # Normal ends, as in dump_xact_end_times: zeroes after a switch, no record start.
    if proc.returncode != 0 and not any(
            m in proc.stderr for m in ("error in WAL record", "could not find a valid record")):
        raise PostgresError(f"pg_waldump failed on {first.name}: "
                            f"{proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc.stdout


# Segments one pg_waldump run decodes (plus the next one, read on): each segment is
# decoded 1.125 times instead of twice (docs/restore.md, for the measured cost).
SCAN_CHUNK = 8
SCAN_RMGRS = ("Tablespace", "Database", "Storage")
# Segments downloaded ahead of the one pg_waldump decodes, by SCAN_FETCHERS threads: the
# download of the next run overlaps the decoding of this one. Scratch disk is bounded by
# SCAN_CHUNK + 1 + SCAN_AHEAD segments (272 MiB at 16 MiB a segment).
SCAN_AHEAD = 8
SCAN_FETCHERS = 3


def scan_tablespace_records(segments: Sequence[str], fetch: Fetch, bindir: str | Path, *,
                            tmp_parent: Path | None = None) -> list[TablespaceRecord]:
    """Records of the archived ``segments`` (replay order) that touch a tablespace:
    every Tablespace record, and the first record that uses each tablespace.

    Each segment is fetched once (verified against its stored sha256). One pg_waldump
    run decodes up to ``SCAN_CHUNK`` consecutive segments of a timeline plus the next
    one, so a record crossing into it is read whole; records starting in that next
    segment belong to the next run (docs/restore.md, "Tablespaces in archived WAL", for
    the cost)."""
    pg_waldump = Path(bindir) / "pg_waldump"
    if not pg_waldump.exists():
        raise PostgresError(f"{pg_waldump} not found",
                            hint="set postgres.bindir to the PostgreSQL binaries' directory")
    names = [n for n in segments if is_segment_name(n)]
    with tempfile.TemporaryDirectory(prefix="pitr-waldump-", dir=tmp_parent) as tmp, \
            ThreadPoolExecutor(SCAN_FETCHERS, thread_name_prefix="pitr-scan") as pool:
        downloads: list[Future[Path]] = []

        def download(name: str) -> Path:
            path = Path(tmp) / name
            path.write_bytes(fetch(name))
            return path

        def fetched(k: int) -> Path:
            while len(downloads) < min(len(names), k + 1 + SCAN_AHEAD):
                downloads.append(pool.submit(download, names[len(downloads)]))
            return downloads[k].result()

        try:
            return _scan(names, fetched, pg_waldump)
        finally:
            for future in downloads:
                future.cancel()  # on an error: what has not started never starts


def _scan(names: Sequence[str], fetched: Callable[[int], Path],
          pg_waldump: Path) -> list[TablespaceRecord]:
    """The scan over ``names``, whose ``k``-th file ``fetched(k)`` gives (see above)."""
    found: list[TablespaceRecord] = []
    used: set[int] = set()
    i = 0
    while i < len(names):
        first = fetched(i)
        size = first.stat().st_size  # the segment size: what a segment file holds
        tli, segno = parse_segment_name(names[i], size)
        # the chunk: names[i:j], consecutive segments of one timeline
        j = i + 1
        while (j < len(names) and j - i < SCAN_CHUNK
               and parse_segment_name(names[j], size) == (tli, segno + j - i)):
            j += 1
        chunk = [first, *(fetched(k) for k in range(i + 1, j))]
        stop = 1 << 64
        last = chunk[-1]
        if j < len(names) and parse_segment_name(names[j], size) == (tli, segno + j - i):
            last = fetched(j)  # read on, so a record crossing into it is whole
            stop = segno_to_lsn(segno + j - i, size)
        for rec in tablespace_records(_dump_window(pg_waldump, first, last), names[i]):
            lsn = parse_lsn(rec.lsn)
            if lsn >= stop:
                continue
            rec = replace(rec, segment=segment_name(tli, lsn_to_segno(lsn, size), size))
            if rec.rmgr == "Tablespace" or rec.tablespace not in used:
                found.append(rec)
                used.add(rec.tablespace)
        for path in chunk:
            path.unlink()
        i = j
    return found


def tablespace_refusal(records: Sequence[TablespaceRecord], *, isolated: bool,
                       occupied: Callable[[str], bool]) -> str | None:
    """Why a restore replaying ``records`` must not start, or None.

    A drill (``isolated``) must never write outside its scratch directory, and
    replay would follow every tablespace link out of it: any record refuses. A
    restore may create a tablespace where the WAL says, but never in a location
    that holds something already (on the database host: production's own).
    """
    if not records:
        return None
    if isolated:
        first = next((r for r in records if r.location is not None), records[0])
        return (f"the archived WAL this drill would replay touches tablespace "
                f"{first.tablespace} ({first.describe()}); replaying it would write outside "
                "the drill's scratch directory")
    for rec in records:
        if rec.location is not None and occupied(rec.location):
            return (f"the archived WAL creates tablespace {rec.tablespace} in "
                    f"{rec.location}, which is not empty ({rec.describe()}); replay would "
                    "write into it")
    return None
