"""Health evaluation is pure: catalogs, agent status and verify results built in memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from pitr.catalog import Catalog, WalSegment
from pitr.manifest import BackupRecord
from pitr.monitor.health import (
    CRITICAL,
    Thresholds,
    evaluate,
)
from pitr.pg.names import DEFAULT_SEGMENT_SIZE as SEG
from pitr.verify_checks import DrillCheck
from pitr.verify_report import DrillReport
from pitr.wal.status import AgentStatus
from pitr.window import recovery_window

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TH = Thresholds(max_backup_age=26 * 3600, max_archive_lag=900, max_backlog=64,
                max_archive_failures=3, max_verify_age=35 * 86400)


def backup(bid: str, stop: datetime, start_seg: int = 2, stop_seg: int = 3,
           tli: int = 1) -> BackupRecord:
    return BackupRecord(id=bid, label="scheduled", start_lsn=start_seg * SEG,
                        stop_lsn=stop_seg * SEG + 100, start_time=stop - timedelta(minutes=5),
                        stop_time=stop, timeline=tli, system_id="1", pg_version=15,
                        db_size=30_000_000, raw_bytes=31_000_000, stored_bytes=4_000_000)


def segs(tli: int, first: int, last: int, t0: datetime, step: timedelta = timedelta(minutes=1),
         skip: tuple[int, ...] = ()) -> tuple[WalSegment, ...]:
    return tuple(WalSegment(tli, n, 1000, t0 + (n - first) * step)
                 for n in range(first, last + 1) if n not in skip)


def catalog(backups: tuple[BackupRecord, ...] = (),
            segments: dict[int, tuple[WalSegment, ...]] | None = None) -> Catalog:
    return Catalog(stanza="main", system_id="1", backups=backups, segments=segments or {})


def healthy_catalog() -> Catalog:
    b = backup("b1", NOW - timedelta(hours=2))
    return catalog((b,), {1: segs(1, 2, 13, NOW - timedelta(hours=2), timedelta(minutes=10))})


def drill(finished: datetime, ok: bool, backup_id: str, rto: float | None,
          failed: tuple[str, ...] = ()) -> DrillReport:
    """A stored drill report as the monitor reads it back (pitr/verify_report.py)."""
    checks = [DrillCheck("plan", True, "")] + [DrillCheck(n, False, "") for n in failed]
    if not ok and not failed:
        checks = []
    r = DrillReport("main", finished - timedelta(minutes=2), finished, backup_id,
                    checks=checks, measures={} if rto is None else {"rto_seconds": rto})
    return DrillReport.from_json(r.to_json(), "main/verify/x.json")


def test_a_drill_report_reads_back_as_written() -> None:
    r = drill(NOW, False, "b1", 12.5, ("table_counts", "amcheck"))
    assert (r.ok, r.backup_id, r.rto_seconds, r.key) == (False, "b1", 12.5,
                                                         "main/verify/x.json")
    assert [c.name for c in r.failed] == ["table_counts", "amcheck"]
    assert DrillReport.from_json(r.to_json(), r.key or "").to_json() == r.to_json()


def names(report) -> set[str]:  # type: ignore[no-untyped-def]
    return {f.name for f in report.findings}


def test_healthy_repository() -> None:
    ok = drill(NOW - timedelta(days=3), True, "b1", 42.0)
    r = evaluate(healthy_catalog(), None, ok, TH, NOW)
    assert r.healthy and r.status == "healthy"
    doc = r.to_dict()
    assert doc["last_backup"]["id"] == "b1"
    assert doc["last_backup"]["age_seconds"] == 7200
    assert doc["last_backup"]["duration_seconds"] == 300
    assert doc["wal"]["last_archived"] == "00000001000000000000000D"
    assert doc["wal"]["last_archived_age_seconds"] == 600
    assert doc["recovery_window"] == {"start": "2026-03-01T10:00:00+00:00",
                                      "end": "2026-03-01T11:50:00+00:00"}
    assert doc["last_verify"]["ok"] is True and doc["last_verify"]["rto_seconds"] == 42.0
    assert doc["problems"] == []


def test_backup_older_than_threshold_is_critical() -> None:
    tight = Thresholds(60, 10**9, 64, 3, 0)
    r = evaluate(healthy_catalog(), None, None, tight, NOW)
    assert not r.healthy
    assert "backup_age" in names(r)


def test_no_backup_is_critical() -> None:
    r = evaluate(catalog(), None, None, TH, NOW)
    assert not r.healthy and {"no_backup", "no_wal"} <= names(r)
    assert r.recovery_window is None and r.last_backup is None


def test_failed_verify_is_critical_and_names_checks() -> None:
    bad = drill(NOW - timedelta(hours=1), False, "b1", None, ("table_counts",))
    r = evaluate(healthy_catalog(), None, bad, TH, NOW)
    assert not r.healthy
    f = next(f for f in r.findings if f.name == "verify_failed")
    assert f.severity == CRITICAL and "table_counts" in f.message


def test_old_verify_and_never_verified_only_warn() -> None:
    old = drill(NOW - timedelta(days=60), True, "b1", 10.0)
    r = evaluate(healthy_catalog(), None, old, TH, NOW)
    assert r.healthy and "verify_overdue" in names(r)
    r = evaluate(healthy_catalog(), None, None, TH, NOW)
    assert r.healthy and "never_verified" in names(r)


def test_archive_lag_from_newest_segment_without_agent() -> None:
    b = backup("b1", NOW - timedelta(hours=2))
    cat = catalog((b,), {1: segs(1, 2, 5, NOW - timedelta(hours=2))})
    r = evaluate(cat, None, None, TH, NOW)
    assert "archive_lag" in names(r) and not r.healthy
    assert r.archive["lag_source"] == "newest archived segment"


def agent(**kw: object) -> AgentStatus:
    base: dict[str, object] = dict(updated_at=NOW - timedelta(seconds=5), backlog=0,
                                   oldest_ready_age=None, last_stored=None, last_stored_at=None,
                                   consecutive_failures=0, total_failures=0)
    base.update(kw)
    return AgentStatus(**base)  # type: ignore[arg-type]


def test_fresh_agent_with_empty_backlog_means_no_lag_on_idle_cluster() -> None:
    b = backup("b1", NOW - timedelta(hours=2))
    cat = catalog((b,), {1: segs(1, 2, 5, NOW - timedelta(hours=2))})  # idle: old WAL
    r = evaluate(cat, agent(), None, TH, NOW)
    assert r.healthy, r.findings
    assert r.archive["lag_seconds"] == 0.0 and r.archive["backlog"] == 0


def test_agent_backlog_failures_and_lag() -> None:
    r = evaluate(healthy_catalog(), agent(backlog=65, oldest_ready_age=1200.0,
                                          consecutive_failures=3, last_error="timeout"),
                 None, TH, NOW)
    assert {"archive_backlog", "archive_failing", "archive_lag"} <= names(r)
    assert "timeout" in next(f.message for f in r.findings if f.name == "archive_failing")


def test_stale_agent_status_is_ignored_with_warning() -> None:
    r = evaluate(healthy_catalog(), agent(updated_at=NOW - timedelta(hours=1), backlog=1000),
                 None, TH, NOW)
    assert "agent_stale" in names(r) and "archive_backlog" not in names(r)
    assert r.archive["lag_source"] == "newest archived segment"


def test_agent_status_parses_documented_format() -> None:
    doc = {"updated_at": "2026-03-01T11:59:55+00:00",
           "backlog": {"ready": 4, "oldest_age_seconds": 12.5},
           "last_stored": {"name": "000000010000000000000009", "at": "2026-03-01T11:59:50+00:00"},
           "failures": {"consecutive": 1, "total": 7, "last_error": "boom"}}
    a = AgentStatus.from_json(doc)
    assert (a.backlog, a.oldest_ready_age, a.consecutive_failures, a.total_failures) == \
        (4, 12.5, 1, 7)
    assert a.last_stored == "000000010000000000000009" and a.last_error == "boom"
    bare = AgentStatus.from_json({"updated_at": "2026-03-01T11:59:55+00:00", "backlog": 2,
                                  "failures": 0})
    assert bare.backlog == 2 and bare.oldest_ready_age is None


def test_stopped_agent_is_not_trusted() -> None:
    r = evaluate(healthy_catalog(), agent(state="stopped", backlog=500), None, TH, NOW)
    assert "agent_stale" in names(r) and "archive_backlog" not in names(r)


def test_gap_after_newest_backup_is_named() -> None:
    b = backup("b1", NOW - timedelta(hours=2))
    cat = catalog((b,), {1: segs(1, 2, 12, NOW - timedelta(hours=2), timedelta(minutes=10),
                                 skip=(6,))})
    r = evaluate(cat, None, None, TH, NOW)
    gap = next(f for f in r.findings if f.name == "wal_gap")
    assert "000000010000000000000006" in gap.message
    # the window ends where the unbroken WAL after the backup ends
    window = recovery_window(cat)
    assert window is not None
    assert window.earliest.time == b.stop_time
    assert window.latest.time == NOW - timedelta(hours=2) + 3 * timedelta(minutes=10)


def test_recovery_window_spans_oldest_to_newest() -> None:
    b1 = backup("b1", NOW - timedelta(days=2), 2, 3)
    b2 = backup("b2", NOW - timedelta(hours=30), 20, 21)
    cat = catalog((b1, b2), {1: segs(1, 2, 30, NOW - timedelta(days=2), timedelta(hours=1))})
    window = recovery_window(cat)
    assert window is not None
    assert window.earliest.time == b1.stop_time
    assert window.latest.time == NOW - timedelta(days=2) + 28 * timedelta(hours=1)


@given(age=st.floats(0, 10 * 86400), limit=st.floats(1, 10 * 86400))
def test_backup_age_threshold_is_exact(age: float, limit: float) -> None:
    b = backup("b1", NOW - timedelta(seconds=age))
    th = Thresholds(limit, 10**12, 64, 3, 0)
    r = evaluate(catalog((b,)), None, None, th, NOW)
    over = (NOW - b.stop_time).total_seconds() > limit
    assert ("backup_age" in names(r)) == over


def test_conditional_writes_off_is_a_standing_warning() -> None:
    ok = drill(NOW - timedelta(days=3), True, "b1", 42.0)
    r = evaluate(healthy_catalog(), None, ok, TH, NOW, conditional_writes=False)
    assert r.healthy and names(r) == {"conditional_writes_off"}
    assert [f.severity for f in r.findings] == ["warning"]
    assert "stanza lock" in r.findings[0].message
    assert not evaluate(healthy_catalog(), None, ok, TH, NOW).findings


def test_repository_doc_says_newest_wal_and_backup_or_why_not() -> None:
    """`pitr status` with several repositories: one line each (pitr/monitor/health.py)."""
    from pitr.catalog import Catalog
    from pitr.monitor.health import repository_doc

    now = datetime(2025, 2, 15, 12, tzinfo=UTC)
    empty = repository_doc("usb", "file:///mnt/usb", Catalog(stanza="s", system_id="1"), now)
    assert empty == {"name": "usb", "url": "file:///mnt/usb", "reachable": True,
                     "last_archived": None, "last_archived_age_seconds": None,
                     "last_backup": None, "last_backup_age_seconds": None}
    down = repository_doc("offsite", "s3://b/p", None, now, "gave up after 60s")
    assert down == {"name": "offsite", "url": "s3://b/p", "reachable": False,
                    "error": "gave up after 60s"}


def test_several_repositories_in_health_and_metrics() -> None:
    """/health/backup and /metrics show every repository (docs/multiple-repositories.md
    "Monitoring every repository"): a required one that cannot be read is critical, a
    catch_up one a warning; one repository adds nothing."""
    from pitr.monitor.health import RepositoryState
    from pitr.monitor.metrics import render

    ok = drill(NOW - timedelta(days=3), True, "b1", 42.0)
    cat = healthy_catalog()
    assert "repositories" not in evaluate(cat, None, ok, TH, NOW).to_dict()
    states = [RepositoryState("repo1", "file:///a", "required", cat),
              RepositoryState("offsite", "s3://b/p", "catch_up", None, "timed out"),
              RepositoryState("usb", "file:///mnt/usb", "required", None, "no such directory")]
    r = evaluate(cat, None, ok, TH, NOW, repositories=states)
    doc = r.to_dict()
    assert [row["name"] for row in doc["repositories"]] == ["repo1", "offsite", "usb"]
    assert doc["repositories"][0]["reachable"] and not doc["repositories"][2]["reachable"]
    found = {(f.name, f.severity, f.message) for f in r.findings
             if f.name == "repository_unreachable"}
    assert found == {("repository_unreachable", "warning", "offsite: timed out"),
                     ("repository_unreachable", CRITICAL, "usb: no such directory")}
    assert not r.healthy
    text = render(r).decode()
    assert 'pitr_repository_up{repo="repo1",stanza="main"} 1.0' in text
    assert 'pitr_repository_up{repo="usb",stanza="main"} 0.0' in text
    assert 'pitr_repository_last_backup_age_seconds{repo="repo1",stanza="main"}' in text
    assert 'pitr_repository_last_backup_age_seconds{repo="usb"' not in text
