"""pitr.pg.waldump (parsing pg_waldump, choosing segments) and the restore error it feeds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from test_health import NOW, backup, catalog, segs

from pitr.errors import PostgresError
from pitr.pg.waldump import xact_end_times
from pitr.restore import segments_to_scan


def test_waldump_parses_commit_abort_and_prepared_times() -> None:
    text = (
        "rmgr: Transaction len (rec/tot):     66/    66, tx:        722, lsn: 0/015004A8, "
        "prev 0/01500430, desc: COMMIT 2026-11-21 14:15:33.138853 UTC; inval msgs: "
        "catcache 21; sync\n"
        "rmgr: Transaction len (rec/tot):     70/    70, tx:        724, lsn: 0/01516610, "
        "prev 0/015165D0, desc: ABORT 2026-11-21 14:15:33.605330 UTC; rels: base/5/16384\n"
        "rmgr: Transaction len (rec/tot):     34/    34, tx:          0, lsn: 0/01516700, "
        "prev 0/01516610, desc: COMMIT_PREPARED 725: 2026-11-21 14:15:34 UTC\n"
        "rmgr: Transaction len (rec/tot):    134/   134, tx:        726, lsn: 0/01516800, "
        "prev 0/01516700, desc: PREPARE gid t1: 2026-11-21 14:15:59.000001 UTC\n"
        "rmgr: Transaction len (rec/tot):     34/    34, tx:          0, lsn: 0/01516900, "
        "prev 0/01516800, desc: ASSIGNMENT xtop 727: subxacts: 728\n")
    assert xact_end_times(text) == [
        datetime(2026, 11, 21, 14, 15, 33, 138853, tzinfo=UTC),
        datetime(2026, 11, 21, 14, 15, 33, 605330, tzinfo=UTC),
        datetime(2026, 11, 21, 14, 15, 34, tzinfo=UTC)]  # PREPARE does not end a transaction
    assert xact_end_times("") == []
    with pytest.raises(PostgresError, match="not UTC"):
        xact_end_times("desc: COMMIT 2026-11-21 15:15:33.1 CET; inval msgs")


def test_waldump_scans_the_unbroken_wal_after_the_backup_newest_first() -> None:
    b = backup("b1", NOW - timedelta(hours=5), 2, 3)
    cat = catalog((b,), {1: segs(1, 2, 40, NOW - timedelta(hours=5), skip=(30,))})
    names = segments_to_scan(cat, b, limit=4)  # the WAL after the gap cannot be replayed
    assert names == [f"0000000100000000000000{n:02X}" for n in (29, 28, 27, 26)]
    assert segments_to_scan(cat, b, limit=100)[-1] == "000000010000000000000003"
    assert segments_to_scan(catalog((b,), {1: segs(1, 5, 9, NOW)}), b) == []


def test_restore_error_names_the_last_commit_and_the_ways_out() -> None:
    from pitr.planner import plan
    from pitr.restore import ended_before_target
    from pitr.targets import Target

    b = backup("b1", NOW - timedelta(hours=5), 2, 3)
    cat = catalog((b,), {1: segs(1, 2, 9, NOW - timedelta(hours=5))})
    p = plan(cat, Target.at_time(NOW - timedelta(hours=4, minutes=57, seconds=30)), NOW)
    last = datetime(2026, 3, 1, 7, 2, 29, 250000, tzinfo=UTC)
    err = ended_before_target(PostgresError("stopped", hint="its log ends with: FATAL"), p, last)
    assert "recovery ended before reaching time 2026-03-01 07:02:30+00" in err.message
    assert "ended at 2026-03-01 07:02:29.250000+00" in err.message
    assert err.hint is not None and "--latest" in err.hint and err.hint.endswith("FATAL")
    none = ended_before_target(PostgresError("stopped"), p, None)
    assert "no transaction in the archived WAL after the backup" in none.message
    assert none.hint is not None and none.hint.endswith("restore again")


# -- tablespaces (docs/fault-table.md) ---------------------------------------------

def _rec(rmgr: str, lsn: str, desc: str) -> str:
    """One line as pg_waldump 15 prints it."""
    return (f"rmgr: {rmgr:<11} len (rec/tot):     47/    47, tx:        724, lsn: {lsn}, "
            f"prev 0/02000268, desc: {desc}\n")


_TS_DUMP = "".join([
    _rec('Heap', '0/02000100',
         'INSERT off 2 flags 0x00, blkref #0: rel 1663/5/16384 blk 0'),
    _rec('Tablespace', '0/02000318',
         'CREATE 16384 "/srv/ts"'),
    _rec('Storage', '0/020003C0',
         'CREATE pg_tblspc/16384/PG_15_202209061/5/16385'),
    _rec('Heap', '0/02016310',
         'INSERT+INIT off 1 flags 0x00, blkref #0: rel 16384/5/16385 blk 0'),
    _rec('Database', '0/02435AF0',
         'CREATE_FILE_COPY copy dir 1663/1 to 16390/16389'),
    _rec('Database', '0/02016868',
         'CREATE_WAL_LOG create dir 1663/16388'),
    _rec('XLOG', '0/02016AF0',
         'FPI , blkref #0: rel 1664/0/1262 blk 0 FPW'),
    _rec('Transaction', '0/0243B758',
         'COMMIT 2026-12-01 14:05:01.753094 UTC; rels: pg_tblspc/16391/PG_15_202209061/5/16385'),
    _rec('Tablespace', '0/0243C4F8',
         'DROP 16384'),
])


def test_tablespace_records_find_creates_uses_and_drops_but_not_the_defaults() -> None:
    from pitr.pg.waldump import tablespace_records

    recs = tablespace_records(_TS_DUMP, "000000010000000000000002")
    assert [(r.rmgr, r.lsn, r.tablespace, r.location) for r in recs] == [
        ("Tablespace", "0/02000318", 16384, "/srv/ts"),
        ("Storage", "0/020003C0", 16384, None),
        ("Heap", "0/02016310", 16384, None),
        ("Database", "0/02435AF0", 16390, None),  # the copy's target, not its 1663 source
        ("Transaction", "0/0243B758", 16391, None),
        ("Tablespace", "0/0243C4F8", 16384, None)]
    assert recs[0].describe() == ('Tablespace record at 0/02000318 in 000000010000000000000002: '
                                  'CREATE 16384 "/srv/ts"')
    assert tablespace_records("") == []


def test_tablespace_refusal_refuses_any_record_in_a_drill_and_occupied_targets_in_a_restore(
        ) -> None:
    from pitr.pg.waldump import tablespace_records, tablespace_refusal

    recs = tablespace_records(_TS_DUMP, "000000010000000000000002")
    assert tablespace_refusal([], isolated=True, occupied=lambda _p: True) is None
    why = tablespace_refusal(recs[2:3], isolated=True, occupied=lambda _p: False)
    assert why and "touches tablespace 16384 (Heap record at 0/02016310" in why
    # the CREATE is named first: it says where replay would write
    why = tablespace_refusal(recs, isolated=True, occupied=lambda _p: False)
    assert why and '0/02000318' in why and "/srv/ts" in why
    assert tablespace_refusal(recs, isolated=False, occupied=lambda _p: False) is None
    asked: list[str] = []
    why = tablespace_refusal(recs, isolated=False,
                             occupied=lambda p: asked.append(p) or True)
    assert asked == ["/srv/ts"] and why and "in /srv/ts, which is not empty" in why


def test_archive_get_stop_after_bounds_segments_not_history_files() -> None:
    from pitr.errors import UsageError
    from pitr.wal.commands import past_bound

    last = "000000010000000200000003"
    assert not past_bound("000000010000000200000003", last)
    assert not past_bound("000000010000000100000FF0", last)
    assert past_bound("000000010000000200000004", last)
    assert past_bound("000000010000000300000000", last)
    assert past_bound("000000020000000200000001", last)  # a later timeline: not scanned
    assert not past_bound("00000002.history", last)
    with pytest.raises(UsageError):
        past_bound("000000010000000200000004", "latest")
