"""The restore planner on hand-built catalogs: choices, WAL proof, every error."""

from __future__ import annotations

from typing import Any

import pytest
from planner_catalogs import SEG, backup, catalog, history, minutes, seg

from pitr.catalog import Catalog, Timeline
from pitr.errors import PlanError
from pitr.planner import RestorePlan, plan, segment_timeline, timeline_path
from pitr.targets import Target, TargetKind

NOW = minutes(600)


def linear(gaps: tuple[int, ...] = ()) -> Catalog:
    """tl1 segments 1..20 archived at minute n; backups A (segs 2-3) and B (seg 10)."""
    segs = [seg(1, n, minutes(n)) for n in range(1, 21) if n not in gaps]
    return catalog(segs, [backup("A", 2, 3, minutes(2.5)), backup("B", 10, 10, minutes(9.5))])


def names(p: RestorePlan) -> list[str]:
    return list(p.segments)


def test_time_target_uses_newest_backup_before_it_and_covering_segment() -> None:
    p = plan(linear(), Target.at_time(minutes(12.5)), NOW)
    assert p.backup.id == "B"
    assert names(p) == [f"0000000100000000000000{n:02X}" for n in range(10, 14)]
    assert p.segment_count == 4 and p.wal_bytes == 4000
    assert p.timeline == 1
    assert p.recovery_settings == {"recovery_target_time": "2025-01-01 00:12:30+00",
                                   "recovery_target_inclusive": "on",
                                   "recovery_target_timeline": "1"}


def test_time_target_between_backups_uses_older() -> None:
    p = plan(linear(), Target.at_time(minutes(9)), NOW)
    assert p.backup.id == "A"
    assert names(p)[0].endswith("02") and names(p)[-1].endswith("09")


def test_target_at_backup_stop_time_is_allowed() -> None:
    assert plan(linear(), Target.at_time(minutes(9.5)), NOW).backup.id == "B"


def test_target_before_first_backup_names_earliest_point() -> None:
    with pytest.raises(PlanError) as exc:
        plan(linear(), Target.at_time(minutes(1)), NOW)
    assert "earliest restorable point" in exc.value.message
    assert "2025-01-01 00:02:30+00" in exc.value.message


def test_target_after_archive_says_how_far_behind() -> None:
    with pytest.raises(PlanError) as exc:
        plan(linear(), Target.at_time(minutes(25)), minutes(30))
    msg = exc.value.message
    assert "later than the archived WAL" in msg and "000000010000000000000014" in msg
    assert "5m00s behind the target" in msg and "10m00s behind now" in msg
    assert "pg_switch_wal" in (exc.value.hint or "")


def test_future_target() -> None:
    with pytest.raises(PlanError, match="in the future"):
        plan(linear(), Target.at_time(minutes(700)), NOW)


def test_missing_segment_in_the_middle_is_named() -> None:
    with pytest.raises(PlanError) as exc:
        plan(linear(gaps=(12,)), Target.at_time(minutes(14.5)), NOW)
    assert "00000001000000000000000C is missing" in exc.value.message
    assert "00:11:00" in exc.value.message  # how far this backup still reaches


def test_gap_before_chosen_backup_does_not_matter() -> None:
    p = plan(linear(gaps=(5, 6)), Target.at_time(minutes(14.5)), NOW)
    assert p.backup.id == "B"


def test_missing_segment_inside_backup() -> None:
    with pytest.raises(PlanError, match="needs WAL up to its end"):
        plan(linear(gaps=(3,)), Target.at_time(minutes(9)), NOW)


def test_no_backups() -> None:
    with pytest.raises(PlanError, match="no completed backup") as exc:
        plan(catalog([seg(1, 1, minutes(1))], []), Target.latest(), NOW)
    assert "pitr backup" in (exc.value.hint or "")


def test_lsn_target() -> None:
    p = plan(linear(), Target.at_lsn(15 * SEG + 0x100), NOW)
    assert p.backup.id == "B" and names(p)[-1].endswith("0F")
    assert p.recovery_settings["recovery_target_lsn"] == "0/F000100"
    p = plan(linear(), Target.at_lsn(10 * SEG + 0x100), NOW)
    assert p.backup.id == "A"  # B stops at 10*SEG + 0x138, after the target
    with pytest.raises(PlanError, match="beyond the archived WAL"):
        plan(linear(), Target.at_lsn(30 * SEG), NOW)
    with pytest.raises(PlanError, match=r"earliest restorable point.*LSN 0/3000138"):
        plan(linear(), Target.at_lsn(SEG), NOW)


def test_immediate_ends_with_the_backup() -> None:
    p = plan(linear(), Target.immediate(), NOW)
    assert p.backup.id == "B" and names(p) == ["00000001000000000000000A"]
    assert p.recovery_settings["recovery_target"] == "immediate"
    p = plan(linear(), Target.immediate(), NOW, backup_id="A")
    assert names(p) == ["000000010000000000000002", "000000010000000000000003"]


def test_latest_replays_all_contiguous_wal_and_notes_a_gap() -> None:
    p = plan(linear(), Target.latest(), NOW)
    assert names(p)[-1].endswith("14") and not p.notes
    assert "recovery_target_time" not in p.recovery_settings
    p = plan(linear(gaps=(15,)), Target.latest(), NOW)
    assert names(p)[-1].endswith("0E")
    assert "00000001000000000000000F is missing" in p.notes[0]


@pytest.mark.parametrize("target", [Target(TargetKind.XID, xid=1234),
                                    Target(TargetKind.NAME, name="before-upgrade")])
def test_xid_and_name_replay_to_the_end_and_say_so(target: Target) -> None:
    p = plan(linear(), target, NOW)
    assert names(p)[-1].endswith("14")
    assert "cannot locate" in p.notes[0]
    key = "recovery_target_xid" if target.kind is TargetKind.XID else "recovery_target_name"
    assert p.recovery_settings[key] in ("1234", "before-upgrade")


def test_backup_override() -> None:
    p = plan(linear(), Target.at_time(minutes(12)), NOW, backup_id="A")
    assert p.backup.id == "A" and names(p)[0].endswith("02")
    with pytest.raises(PlanError, match="no completed backup 'Z'"):
        plan(linear(), Target.at_time(minutes(12)), NOW, backup_id="Z")
    with pytest.raises(PlanError, match="after the target"):
        plan(linear(), Target.at_time(minutes(5)), NOW, backup_id="B")


# -- timelines -----------------------------------------------------------------
# tl1 runs segments 1..20 (archived at minute n). At minute 30 a restore to
# 0/C000100 (inside segment 12) is promoted: timeline 2 holds segments 12..25,
# archived at minute 30+n-11. tl1's own segments 12..20 hold the old history.
BRANCH = 12 * SEG + 0x100


def branched(created: bool = True) -> Catalog:
    segs = [seg(1, n, minutes(n)) for n in range(1, 21)]
    segs += [seg(2, n, minutes(30 + n - 11)) for n in range(12, 26)]
    tl2 = Timeline(2, history((1, BRANCH)), created_at=minutes(30) if created else None)
    return catalog(segs, [backup("A", 2, 3, minutes(2.5)), backup("B", 10, 10, minutes(9.5))],
                   [tl2])


def test_time_after_switch_uses_the_child_timeline() -> None:
    p = plan(branched(), Target.at_time(minutes(35)), NOW)
    assert p.timeline == 2 and p.backup.id == "B"
    assert names(p) == ["00000001000000000000000A", "00000001000000000000000B",
                        "00000002000000000000000C", "00000002000000000000000D",
                        "00000002000000000000000E", "00000002000000000000000F",
                        "000000020000000000000010"]
    assert [s.tli for s in p.path] == [1, 2]
    assert p.recovery_settings["recovery_target_timeline"] == "2"


def test_time_on_parent_after_branch_point_before_child_existed() -> None:
    p = plan(branched(), Target.at_time(minutes(15.5)), NOW)
    assert p.timeline == 1
    assert names(p)[-1] == "000000010000000000000010"
    assert all(n.startswith("00000001") for n in names(p))
    assert p.recovery_settings["recovery_target_timeline"] == "1"


def test_child_creation_time_falls_back_to_its_first_segment() -> None:
    assert plan(branched(created=False), Target.at_time(minutes(15.5)),
                NOW).timeline == 1
    assert plan(branched(created=False), Target.at_time(minutes(33)),
                NOW).timeline == 2


def test_pinned_timeline_whose_archive_ends_early() -> None:
    with pytest.raises(PlanError, match="later than the archived WAL"):
        plan(branched(), Target.at_time(minutes(35), timeline=1), NOW)


def test_abandoned_branch_is_not_chosen_when_its_wal_does_not_reach_the_target() -> None:
    segs = [seg(1, n, minutes(n)) for n in range(1, 41)]
    segs += [seg(2, 12, minutes(21))]
    cat = catalog(segs, [backup("B", 10, 10, minutes(9.5))],
                  [Timeline(2, history((1, BRANCH)), created_at=minutes(20))])
    assert plan(cat, Target.at_time(minutes(35)), NOW).timeline == 1
    assert plan(cat, Target.at_time(minutes(20.5)), NOW).timeline == 2


def test_switch_segment_is_read_from_the_child_and_must_be_there() -> None:
    cat = branched()
    segs = dict(cat.segments)
    segs[2] = tuple(s for s in segs[2] if s.segno != 12)
    from dataclasses import replace
    with pytest.raises(PlanError, match="00000002000000000000000C is missing"):
        plan(replace(cat, segments=segs), Target.at_time(minutes(35)), NOW)


def test_backup_after_branch_on_parent_is_not_on_child_path() -> None:
    segs = [seg(1, n, minutes(n)) for n in range(1, 21)]
    segs += [seg(2, n, minutes(30 + n - 11)) for n in range(12, 26)]
    cat = catalog(segs, [backup("late1", 14, 14, minutes(14.5))],
                  [Timeline(2, history((1, BRANCH)), created_at=minutes(30))])
    with pytest.raises(PlanError, match="no backup on timeline 2 or its ancestors"):
        plan(cat, Target.at_time(minutes(35)), NOW)
    with pytest.raises(PlanError, match="not in the history of timeline 2"):
        plan(cat, Target.at_time(minutes(35)), NOW, backup_id="late1")
    assert plan(cat, Target.at_time(minutes(16)), NOW).backup.id == "late1"


def test_missing_history_file() -> None:
    cat = catalog([seg(3, 5, minutes(5))], [backup("A", 2, 3, minutes(2.5))])
    with pytest.raises(PlanError, match=r"00000003\.history"):
        plan(cat, Target.at_time(minutes(5), timeline=3), NOW)


def test_latest_follows_newest_timeline_and_immediate_stays_on_backup_timeline() -> None:
    p = plan(branched(), Target.latest(), NOW)
    assert p.timeline == 2 and names(p)[-1] == "000000020000000000000019"
    assert plan(branched(), Target.immediate(), NOW).timeline == 1


def test_path_and_segment_timeline_rules() -> None:
    cat = catalog([], [], [Timeline(3, history((1, 5 * SEG + 10), (2, 9 * SEG)))])
    path = timeline_path(cat, 3)
    assert [(s.tli, s.end_lsn) for s in path] == [(1, 5 * SEG + 10), (2, 9 * SEG), (3, None)]
    assert [segment_timeline(path, n, SEG) for n in (4, 5, 8, 9, 10)] == [1, 2, 2, 3, 3]


def test_plan_json_is_complete() -> None:
    doc: Any = plan(branched(), Target.at_time(minutes(35)), NOW).to_json()
    assert doc["timeline"] == 2
    assert doc["wal"]["count"] == 7
    assert doc["wal"]["first"] == "00000001000000000000000A"
    assert doc["backup"]["id"] == "B"
    assert doc["recovery_settings"]["recovery_target_timeline"] == "2"


# -- the end of replay the plan promises (docs/exit-codes.md: ReplayEndedShort) ----------
def test_latest_promises_replay_into_the_last_planned_segment() -> None:
    from pitr.pg.names import format_lsn
    from pitr.restore import replay_shortfall

    p = plan(linear(gaps=(15,)), Target.latest(), NOW)
    assert names(p)[-1].endswith("0E")  # latest stops at the gap before 15
    assert p.replay_until == 0x0E * SEG + 1
    assert replay_shortfall(p, format_lsn(0x0E * SEG + 40)) is None
    assert replay_shortfall(p, format_lsn(0x0F * SEG)) is None  # its switch record's end
    for ended in (0x0D * SEG + 4096, 0x0E * SEG):  # 0/E000000: the previous switch's end
        short = replay_shortfall(p, format_lsn(ended))
        assert short is not None
        assert format_lsn(ended) in short and format_lsn(0x0E * SEG) in short
        assert names(p)[-1] in short
    assert "unknown LSN" in (replay_shortfall(p, None) or "")


def test_explicit_targets_leave_the_end_to_postgresql() -> None:
    """PostgreSQL refuses to end before an explicit target; pitr only asks for the end of
    the backup there (a copy that is not even consistent)."""
    p = plan(linear(), Target.at_time(minutes(12.5)), NOW)
    assert p.replay_until == p.backup.stop_lsn
    assert p.to_json()["wal"]["replay_until"] == "0/A000138"  # backup B's stop LSN


def test_the_cluster_timezone_comes_from_the_newest_or_the_chosen_backup() -> None:
    from dataclasses import replace

    from pitr.planner import cluster_timezone

    cat = linear()
    a, b = sorted(cat.backups, key=lambda r: r.stop_time)
    assert cluster_timezone(cat) is None  # backups from before pitr recorded it
    cat = replace(cat, backups=(replace(a, timezone="Europe/Berlin"), b))
    assert cluster_timezone(cat) is None  # the newest (B) decides, and it does not know
    assert cluster_timezone(cat, "A") == "Europe/Berlin"
    cat = replace(cat, backups=(replace(a, timezone="Europe/Berlin"),
                                replace(b, timezone="America/New_York")))
    assert cluster_timezone(cat) == "America/New_York"
    assert cluster_timezone(cat, "nope") is None
