"""pitr.pg.waldump (parsing pg_waldump, choosing segments) and the restore error it feeds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from test_health import NOW, backup, catalog, segs

from pitr.errors import PostgresError
from pitr.pg.waldump import segments_to_scan, xact_end_times


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
