"""Retention policy on hand-built histories: tiers, reasons, WAL, timelines, small files."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from retention_builders import SEG, T0, backup, catalog, segs

from pitr.catalog import Timeline
from pitr.pg.names import backup_history_name, segment_name
from pitr.retention import Policy, apply_to_catalog, choose_backups, decide


def _daily_year() -> list:
    """One backup a day at 01:00 UTC through 2025; backup of day i starts in segment 10*i."""
    out = []
    d = date(2025, 1, 1)
    i = 0
    while d.year == 2025:
        stop = datetime(d.year, d.month, d.day, 1, 0, tzinfo=UTC)
        out.append(backup(d.isoformat(), stop, 10 * i + 2, 10 * i + 3))
        d += timedelta(days=1)
        i += 1
    return out


def test_a_year_of_daily_backups_keeps_exactly_the_tiers() -> None:
    backups = _daily_year()
    now = datetime(2025, 12, 31, 12, 0, tzinfo=UTC)  # a Wednesday
    reasons = choose_backups(backups, Policy(7, 4, 12, 1), now)
    monthly = {date(2025, m, 1).isoformat() for m in range(1, 13)}
    weekly = {"2025-12-08", "2025-12-15", "2025-12-22", "2025-12-29"}  # Mondays
    daily = {f"2025-12-{d}" for d in range(25, 32)}
    assert set(reasons) == monthly | weekly | daily
    assert reasons["2025-12-31"] == ("newest", "min_backups", "daily")
    assert reasons["2025-12-29"] == ("daily", "weekly")
    assert reasons["2025-12-01"] == ("monthly",)
    assert reasons["2025-01-01"] == ("monthly",)


def test_daily_takes_the_newest_weekly_and_monthly_the_first_of_a_period() -> None:
    day = datetime(2025, 3, 3, tzinfo=UTC)  # Monday, 3 March
    backups = [backup(f"b{h}", day + timedelta(hours=h), h) for h in (1, 9, 17)]
    backups.append(backup("sun", day - timedelta(hours=2), 0))  # Sunday 2 March
    now = day + timedelta(hours=20)
    r = choose_backups(backups, Policy(daily=1, weekly=1, monthly=1, min_backups=1), now)
    assert r == {"sun": ("monthly",), "b1": ("weekly",),
                 "b17": ("newest", "min_backups", "daily")}


def test_weeks_are_iso_weeks_across_a_year_boundary() -> None:
    # 2024-12-30 (Monday) and 2025-01-02 share ISO week 2025-W01; 2024-12-29 is W52.
    backups = [backup("dec29", datetime(2024, 12, 29, 5, tzinfo=UTC), 1),
               backup("dec30", datetime(2024, 12, 30, 5, tzinfo=UTC), 2),
               backup("jan02", datetime(2025, 1, 2, 5, tzinfo=UTC), 3)]
    r = choose_backups(backups, Policy(0, 2, 0, 1), datetime(2025, 1, 3, tzinfo=UTC))
    assert set(r) == {"dec29", "dec30", "jan02"}
    assert r["dec29"] == ("weekly",) and r["dec30"] == ("weekly",)
    assert r["jan02"] == ("newest", "min_backups")


def test_min_backups_keeps_the_newest_n_and_pins_survive() -> None:
    backups = [backup(f"b{i}", datetime(2024, 1, 1 + i, tzinfo=UTC), i, pinned=(i == 0))
               for i in range(10)]
    r = choose_backups(backups, Policy(0, 0, 0, 3), datetime(2025, 6, 1, tzinfo=UTC))
    assert r == {"b0": ("pinned",), "b7": ("min_backups",), "b8": ("min_backups",),
                 "b9": ("newest", "min_backups")}


def test_backups_from_the_future_are_kept_in_addition() -> None:
    now = datetime(2025, 5, 10, 12, tzinfo=UTC)
    backups = [backup("today", now - timedelta(hours=1), 1),
               backup("skewed", now + timedelta(days=2), 2)]
    r = choose_backups(backups, Policy(1, 0, 0, 1), now)
    assert r["skewed"] == ("newest", "min_backups", "daily")
    assert r["today"] == ("daily",)  # skew does not push today's backup out


def test_wal_before_the_oldest_kept_backup_goes_and_the_rest_stays() -> None:
    now = datetime(2025, 12, 31, 12, tzinfo=UTC)
    backups = _daily_year()
    cat = catalog(backups, {1: segs(1, 0, 3700)})
    d = decide(cat, Policy(7, 4, 12, 1), now)
    oldest = d.kept[0].backup
    assert oldest.id == "2025-01-01"
    assert [s.segno for s in d.wal_deleted] == [0, 1]
    assert d.wal_kept == 3699
    assert d.restorable_from == oldest.stop_time
    d2 = decide(cat, Policy(7, 0, 0, 1), now)
    start = d2.kept[0].backup.start_lsn // SEG
    assert [s.segno for s in d2.wal_deleted] == list(range(start))
    assert d2.bytes_freed == sum(b.stored_bytes for b in d2.deleted) + 100 * start
    assert len(d2.deleted) == 365 - 7


def test_backup_and_partial_files_go_with_their_backup_or_segment() -> None:
    now = datetime(2025, 1, 20, tzinfo=UTC)
    old = backup("old", datetime(2025, 1, 1, tzinfo=UTC), 5, 6)
    new = backup("new", datetime(2025, 1, 19, tzinfo=UTC), 50, 51)
    orphan_old = backup_history_name(1, 3 * SEG + 0x28, SEG)
    orphan_new = backup_history_name(1, 60 * SEG + 0x28, SEG)
    names = (backup_history_name(1, old.start_lsn, SEG), backup_history_name(1, new.start_lsn, SEG),
             orphan_old, orphan_new)
    cat = catalog([old, new], {1: segs(1, 0, 70)}, backup_files=names,
                  partial=(segment_name(1, 4, SEG) + ".partial",
                           segment_name(1, 55, SEG) + ".partial"))
    d = decide(cat, Policy(1, 0, 0, 1), now)
    assert d.deleted_ids == {"old"}
    assert set(d.backup_files_deleted) == {names[0], orphan_old}
    assert d.partial_deleted == (segment_name(1, 4, SEG) + ".partial",)
    assert [s.segno for s in d.wal_deleted] == list(range(50))


def _timeline_catalog() -> tuple:
    """tli 1 segs 0..40; a restore at LSN 20.5 segs made tli 2 (segs 20..60); a restore of
    tli 2 at 45 made tli 3 (45..80). Backups: a(1, seg 2), b(1, seg 30: abandoned branch),
    c(2, seg 35), d(3, seg 70)."""
    sw12, sw23 = 20 * SEG + SEG // 2, 45 * SEG + 0x100
    day = datetime(2025, 1, 1, tzinfo=UTC)
    backups = [backup("a", day, 2, 3), backup("b", day + timedelta(days=1), 30, 31),
               backup("c", day + timedelta(days=2), 35, 36, tli=2),
               backup("d", day + timedelta(days=3), 70, 71, tli=3)]
    cat = catalog(backups, {1: segs(1, 0, 40), 2: segs(2, 20, 60), 3: segs(3, 45, 80)},
                  histories={2: [(1, sw12)], 3: [(1, sw12), (2, sw23)]})
    return cat, day + timedelta(days=3, hours=1)


def _deleted(d, tli: int) -> list[int]:
    return [s.segno for s in d.wal_deleted if s.timeline == tli]


def test_timelines_keep_exactly_what_kept_backups_can_reach() -> None:
    cat, now = _timeline_catalog()
    # keep only d (tli 3): everything before its start on every timeline goes, tli 1 and
    # 2 entirely (the guard keeps segments >= 70 on any timeline: none exist there).
    d = decide(cat, Policy(0, 0, 0, 1), now)
    assert d.kept_ids == {"d"}
    assert _deleted(d, 1) == list(range(41))
    assert _deleted(d, 2) == list(range(20, 61))
    assert _deleted(d, 3) == list(range(45, 70))
    assert d.history_deleted == (2,) and d.history_kept == (3,)
    # keep c and d: c (tli 2, seg 35) reaches tli 2 from 35 on and tli 3 from its branch;
    # the old branch of tli 1 is unreachable.
    d = decide(cat, Policy(0, 0, 0, 2), now)
    assert d.kept_ids == {"c", "d"}
    assert _deleted(d, 1) == list(range(41))
    assert _deleted(d, 2) == list(range(20, 35))
    assert _deleted(d, 3) == []
    assert d.history_kept == (2, 3)
    # keep b too: b is on tli 1 after the switch to tli 2, so it reaches only tli 1 from 30.
    d = decide(cat, Policy(0, 0, 0, 3), now)
    assert _deleted(d, 1) == list(range(30))
    assert _deleted(d, 2) == list(range(20, 35))
    # keep a: a reaches all of tli 1 from 2, tli 2 from its start (20) and tli 3.
    d = decide(cat, Policy(0, 0, 0, 4), now)
    assert _deleted(d, 1) == [0, 1] and _deleted(d, 2) == [] and _deleted(d, 3) == []


def test_the_newest_backups_start_guards_every_timeline() -> None:
    cat, now = _timeline_catalog()
    # tli 2 runs to 60, but d starts at 70; a stray tli 4 without history is a root.
    cat = catalog(list(cat.backups), {**cat.segments, 4: segs(4, 68, 75)},
                  histories={2: [(1, 20 * SEG)], 3: [(1, 20 * SEG), (2, 45 * SEG)]})
    d = decide(cat, Policy(0, 0, 0, 1), now)
    assert _deleted(d, 4) == [68, 69]
    cat2 = catalog([*cat.backups][:3], cat.segments, histories={2: [(1, 20 * SEG)]})
    d2 = decide(cat2, Policy(0, 0, 0, 1), now)  # newest is c (tli 2, segno 35)
    assert d2.kept_ids == {"c"}
    assert _deleted(d2, 1) == list(range(35))  # 35..40 of the old branch: guarded
    assert _deleted(d2, 4) == []  # rootless timeline from the oldest kept start on


def test_no_completed_backup_deletes_only_stale_incomplete_ones() -> None:
    cat = catalog([], {1: segs(1, 0, 9)}, incomplete=("x", "y"))
    d = decide(cat, Policy(), datetime(2025, 1, 1, tzinfo=UTC), in_progress={"y"})
    assert d.incomplete_deleted == ("x",) and d.incomplete_kept == ("y",)
    assert not d.wal_deleted and d.wal_kept == 10 and not d.deleted


def test_applying_a_decision_then_deciding_again_deletes_nothing() -> None:
    cat, now = _timeline_catalog()
    for n in range(1, 5):
        d = decide(cat, Policy(0, 0, 0, n), now)
        again = decide(apply_to_catalog(cat, d), Policy(0, 0, 0, n), now)
        assert again.nothing_to_do and again.kept_ids == d.kept_ids


def test_json_summary_names_segments() -> None:
    now = datetime(2025, 12, 31, 12, tzinfo=UTC)
    cat = catalog(_daily_year(), {1: segs(1, 0, 3700)})
    doc = decide(cat, Policy(7, 0, 0, 1), now).to_json(SEG)
    assert doc["wal_deleted"]["ranges"] == [{"first": segment_name(1, 0, SEG),
                                              "last": segment_name(1, 3581, SEG),
                                              "count": 3582}]
    assert len(doc["kept"]) == 7 and doc["bytes_freed"] > 0


def test_policy_rejects_negative_values() -> None:
    with pytest.raises(ValueError):
        Policy(daily=-1)


def test_timelines_without_a_history_file_are_roots_and_have_nothing_to_delete() -> None:
    day = datetime(2025, 1, 1, tzinfo=UTC)
    backups = [backup("old", day, 2, tli=5), backup("new", day + timedelta(days=3), 40, tli=5)]
    cat = catalog(backups, {4: segs(4, 0, 30), 5: segs(5, 0, 45)})
    cat = replace(cat, timelines={**cat.timelines, 6: Timeline(6, (), T0)})  # unreadable file
    d = decide(cat, Policy(0, 0, 0, 1), day + timedelta(days=3))
    assert d.history_kept == (6,) and d.history_deleted == ()
    # timeline 5 (no history) is a root: its segments before the kept backup go; timeline 4
    # (no history, no backup) keeps what lies at or after the oldest kept backup's start
    assert _deleted(d, 5) == list(range(40))
    assert _deleted(d, 4) == list(range(31))


def test_after_a_restore_into_the_past_its_base_backup_stays() -> None:
    """A (seg 10) and B (seg 20) on timeline 1; a restore from A to segment 15 made timeline
    2, which has no backup yet. B is the newest backup but cannot restore timeline 2: A is
    the only base of the timeline the cluster runs on, so it stays, with its WAL."""
    day = datetime(2025, 1, 1, tzinfo=UTC)
    a, b = backup("A", day, 10), backup("B", day + timedelta(days=1), 20)
    cat = catalog([a, b], {1: segs(1, 0, 25), 2: segs(2, 15, 30)},
                  histories={2: [(1, 15 * SEG + 0x100)]})
    d = decide(cat, Policy(0, 0, 0, 1), day + timedelta(days=2))
    assert {k.backup.id: k.reasons for k in d.kept} == {"A": ("latest_timeline",),
                                                         "B": ("newest", "min_backups")}
    assert _deleted(d, 1) == list(range(10)) and _deleted(d, 2) == []
    # once timeline 2 has a backup of its own, A may go
    c = backup("C", day + timedelta(days=3), 28, tli=2)
    cat = catalog([a, b, c], cat.segments, histories={2: [(1, 15 * SEG + 0x100)]})
    d = decide(cat, Policy(0, 0, 0, 1), day + timedelta(days=3, hours=1))
    assert d.kept_ids == {"C"} and d.kept[0].reasons == ("newest", "latest_timeline",
                                                          "min_backups")


def test_a_live_reader_claim_keeps_its_backup_and_the_wal_after_it() -> None:
    """docs/fault-table.md: expire during a running restore deletes nothing it needs."""
    from pitr.claims import Claim

    now = T0 + timedelta(days=10)
    old = backup("old", T0 + timedelta(days=1), 2, 3)
    new = backup("new", T0 + timedelta(days=9), 20, 21)
    cat = catalog([old, new], {1: segs(1, 2, 30)})
    policy = Policy(daily=1, weekly=0, monthly=0, min_backups=1)

    def claim(backup_id: str, renewed: datetime, lease: float = 120) -> Claim:
        return Claim("c1", backup_id, "pitr restore", "db1", 4242, renewed.isoformat(),
                     renewed.isoformat(), lease)

    plain = decide(cat, policy, now)
    assert plain.deleted_ids == {"old"} and plain.wal_deleted
    live = claim("old", now - timedelta(seconds=60))
    d = decide(cat, policy, now, claims=[live])
    assert d.deleted == () and d.wal_deleted == ()
    assert dict((k.backup.id, k.reasons) for k in d.kept)["old"] == ("claimed",)
    assert d.notes == (f"kept backup old and the WAL after it: in use by {live.describe()}",)
    assert "claim c1 ('pitr restore', pid 4242 on host db1" in d.notes[0]
    # a claim on a backup kept anyway adds its reason, and no note
    d = decide(cat, policy, now, claims=[claim("new", now)])
    assert d.deleted_ids == {"old"} and d.notes == ()
    assert dict((k.backup.id, k.reasons) for k in d.kept)["new"][-1] == "claimed"
    # an expired lease holds nothing back (its holder crashed or finished)
    expired = claim("old", now - timedelta(seconds=121))
    assert decide(cat, policy, now, claims=[expired]) == plain
    # a claim on a backup that is gone (typo, or expired already) changes nothing
    assert decide(cat, policy, now, claims=[claim("nope", now)]) == plain
