"""PURE health evaluation: (catalog, agent status, last verify, thresholds, now) -> report.

No I/O and no clock here, so every threshold decision is unit-tested on
catalogs built in memory. ``collect.py`` gathers the inputs; the HTTP server,
``pitr status`` and the alert watcher all present the same :class:`HealthReport`.

Archive lag is the age of the oldest WAL segment PostgreSQL has finished but
pitr has not stored yet, when the agent reports it (fresh status file);
otherwise it falls back to the age of the newest archived segment, which on an
idle cluster grows without anything being wrong (set ``archive_timeout``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from pitr.catalog import Catalog
from pitr.manifest import BackupRecord
from pitr.pg.names import lsn_to_segno, segment_name
from pitr.progress import human_age
from pitr.verify_report import DrillReport
from pitr.wal.catchup import Lag, lag_problem
from pitr.wal.status import AgentStatus
from pitr.window import recovery_window

CRITICAL = "critical"  # flips /health/backup to 503
WARNING = "warning"  # reported, still 200


@dataclass(frozen=True)
class Thresholds:
    max_backup_age: float  # seconds
    max_archive_lag: float  # seconds
    max_backlog: int  # segments waiting to be archived
    max_archive_failures: int  # consecutive failed attempts
    max_verify_age: float  # seconds; 0 disables the "drill overdue" warning
    max_catch_up_lag: float = 3600.0  # seconds the oldest segment may wait for a catch_up repo

    @classmethod
    def from_config(cls, monitor: Any) -> Thresholds:
        return cls(float(monitor.max_backup_age), float(monitor.max_archive_lag),
                   int(monitor.max_backlog), int(monitor.max_archive_failures),
                   float(monitor.max_verify_age), float(monitor.max_catch_up_lag))


@dataclass(frozen=True)
class Finding:
    name: str  # stable identifier, used by alerts and tests
    severity: str  # CRITICAL or WARNING
    message: str


@dataclass(frozen=True)
class HealthReport:
    stanza: str
    now: datetime
    findings: tuple[Finding, ...]
    last_backup: dict[str, Any] | None
    backups: int
    wal: dict[str, Any]
    archive: dict[str, Any]
    verify: dict[str, Any] | None
    recovery_window: dict[str, Any] | None
    location: str = ""
    retention: dict[str, Any] = field(default_factory=dict)
    # per catch_up repository: its backlog (pitr.wal.catchup.Lag.to_json)
    catch_up: tuple[dict[str, Any], ...] = ()
    # with several repositories, one row each (repository_doc); empty with one
    repositories: tuple[dict[str, Any], ...] = ()

    @property
    def healthy(self) -> bool:
        return not any(f.severity == CRITICAL for f in self.findings)

    @property
    def status(self) -> str:
        return "healthy" if self.healthy else "unhealthy"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "stanza": self.stanza,
            "checked_at": _iso(self.now),
            "problems": [asdict(f) for f in self.findings],
            "location": self.location,
            "retention": self.retention,
            "backups": self.backups,
            "last_backup": self.last_backup,
            "recovery_window": self.recovery_window,
            "wal": self.wal,
            "archive": self.archive,
            "last_verify": self.verify,
            "catch_up": list(self.catch_up),
            **({"repositories": list(self.repositories)} if self.repositories else {}),
        }


def _iso(t: datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") if t else None


def _age(now: datetime, t: datetime | None) -> float | None:
    return round((now - t).total_seconds(), 3) if t else None


def _newest_segment(catalog: Catalog) -> tuple[str, datetime] | None:
    best: tuple[str, datetime] | None = None
    for tli, segs in catalog.segments.items():
        s = segs.newest()
        if s is not None and (best is None or s.archived_at > best[1]):
            best = (segment_name(tli, s.segno, catalog.segment_size), s.archived_at)
    return best


def _backup_doc(b: BackupRecord, now: datetime) -> dict[str, Any]:
    return {
        "id": b.id,
        "label": b.label,
        "start_time": _iso(b.start_time),
        "stop_time": _iso(b.stop_time),
        "age_seconds": _age(now, b.stop_time),
        "duration_seconds": round((b.stop_time - b.start_time).total_seconds(), 3),
        "db_size": b.db_size,
        "raw_bytes": b.raw_bytes,
        "stored_bytes": b.stored_bytes,
        "timeline": b.timeline,
    }


def evaluate(
    catalog: Catalog,
    agent: AgentStatus | None,
    last_verify: DrillReport | None,
    thresholds: Thresholds,
    now: datetime,
    *,
    location: str = "",
    retention: dict[str, Any] | None = None,
    conditional_writes: bool = True,
    archive_mode: dict[str, Any] | None = None,
    catch_up: Sequence[Lag] = (),
    repositories: Sequence[RepositoryState] = (),
) -> HealthReport:
    """Decide health. ``now`` is timezone-aware UTC, as are all catalog times.

    ``conditional_writes``: repository.conditional_writes; false is a standing warning
    (the repository is used without never-overwrite and the stanza lock).
    ``archive_mode``: :func:`pitr.wal.modes.current`, reported as ``archive.mode``.
    ``catch_up``: each catch_up repository's lag (docs/multiple-repositories.md);
    critical past ``max_catch_up_lag``.
    """
    findings: list[Finding] = []
    crit = lambda n, m: findings.append(Finding(n, CRITICAL, m))  # noqa: E731
    warn = lambda n, m: findings.append(Finding(n, WARNING, m))  # noqa: E731
    if not conditional_writes:
        from pitr.condwrites import WHAT_BREAKS

        warn("conditional_writes_off", "repository.conditional_writes = false: the "
             f"repository is not proven to refuse overwrites, so {WHAT_BREAKS}")

    last_backup = None
    if catalog.backups:
        newest = catalog.backups[-1]
        last_backup = _backup_doc(newest, now)
        age = (now - newest.stop_time).total_seconds()
        if age > thresholds.max_backup_age:
            crit("backup_age", f"newest backup {newest.id} is {human_age(age)} old "
                 f"(limit {human_age(thresholds.max_backup_age)})")
    else:
        crit("no_backup", "the repository holds no completed backup")

    newest_seg = _newest_segment(catalog)
    wal = {
        "last_archived": newest_seg[0] if newest_seg else None,
        "last_archived_at": _iso(newest_seg[1]) if newest_seg else None,
        "last_archived_age_seconds": _age(now, newest_seg[1]) if newest_seg else None,
        "gaps": [{"timeline": g.timeline,
                  "first": segment_name(g.timeline, g.first, catalog.segment_size),
                  "last": segment_name(g.timeline, g.last, catalog.segment_size)}
                 for g in catalog.gaps()],
    }
    archive = _archive_health(agent, newest_seg, thresholds, now, crit, warn)
    if archive_mode is not None:
        archive["mode"] = archive_mode
    if wal["gaps"] and catalog.backups:
        _gap_findings(catalog, warn)
    for lag in catch_up:
        problem = lag_problem(lag, thresholds.max_catch_up_lag)
        if problem:
            crit("catch_up_lag", problem)
    rows = []
    for r in repositories:
        rows.append(repository_doc(r.name, r.url, r.catalog, now, r.error))
        if r.catalog is None:
            # a catch_up repository that is down costs nothing until its lag is too old
            # (the catch_up_lag finding above): a warning; a required one is critical,
            # since archive-push waits for it (docs/multiple-repositories.md)
            (warn if r.mode == "catch_up" else crit)(
                "repository_unreachable", f"{r.name}: {r.error or 'cannot be read'}")

    verify_doc = None
    if last_verify is not None:
        finished = last_verify.finished_at or last_verify.started_at
        failed = [c.name for c in last_verify.failed]
        verify_doc = {
            "finished_at": _iso(finished),
            "age_seconds": _age(now, finished),
            "ok": last_verify.ok,
            "backup_id": last_verify.backup_id,
            "rto_seconds": last_verify.rto_seconds,
            "failed_checks": failed,
            "report": last_verify.key or "",
        }
        if not last_verify.ok:
            crit("verify_failed", f"the last restore drill ({_iso(finished)}) "
                 f"failed: {', '.join(failed) or 'see its report'}")
        elif thresholds.max_verify_age and \
                (now - finished).total_seconds() > thresholds.max_verify_age:
            warn("verify_overdue", f"the last restore drill ran "
                 f"{human_age((now - finished).total_seconds())} ago")
    elif catalog.backups:
        warn("never_verified", "no restore drill has run yet (`pitr verify`)")

    window = recovery_window(catalog)  # the one rule `pitr list` shows too (pitr.window)
    return HealthReport(
        stanza=catalog.stanza,
        now=now,
        findings=tuple(findings),
        last_backup=last_backup,
        backups=len(catalog.backups),
        wal=wal,
        archive=archive,
        verify=verify_doc,
        recovery_window={"start": _iso(window.earliest.time),
                         "end": _iso(window.latest.time)} if window else None,
        location=location,
        retention=retention or {},
        catch_up=tuple(lag.to_json() for lag in catch_up),
        repositories=tuple(rows),
    )


def _archive_health(agent: AgentStatus | None, newest_seg: tuple[str, datetime] | None,
                    th: Thresholds, now: datetime, crit: Any, warn: Any) -> dict[str, Any]:
    fresh = agent is not None and agent.state != "stopped" and \
        (now - agent.updated_at).total_seconds() <= max(th.max_archive_lag, 60.0)
    doc: dict[str, Any] = {"agent": None, "backlog": None, "lag_seconds": None,
                           "lag_source": None}
    if agent is not None:
        doc["agent"] = {
            "updated_at": _iso(agent.updated_at),
            "fresh": fresh,
            "backlog": agent.backlog,
            "oldest_ready_age_seconds": agent.oldest_ready_age,
            "last_stored": agent.last_stored,
            "consecutive_failures": agent.consecutive_failures,
            "total_failures": agent.total_failures,
            "last_error": agent.last_error,
            "state": agent.state,
            "mode": agent.mode,
        }
        # An on-demand agent that exited is normal: the next archive-push starts one.
        if not fresh and not (agent.state == "stopped" and agent.mode == "on-demand"):
            stale = (now - agent.updated_at).total_seconds()
            warn("agent_stale", "the agent has stopped" if agent.state == "stopped" else
                 f"the agent's status is {human_age(stale)} old: is `pitr agent` running?")
    if agent is not None and fresh:
        doc["backlog"] = agent.backlog
        doc["lag_seconds"] = agent.oldest_ready_age or 0.0
        doc["lag_source"] = "oldest .ready segment"
        if agent.backlog > th.max_backlog:
            crit("archive_backlog", f"{agent.backlog} WAL segments wait to be archived "
                 f"(limit {th.max_backlog})")
        if th.max_archive_failures and agent.consecutive_failures >= th.max_archive_failures:
            crit("archive_failing", f"the last {agent.consecutive_failures} archive attempts "
                 f"failed: {agent.last_error or 'see the agent log'}")
    elif newest_seg is not None:
        doc["lag_seconds"] = _age(now, newest_seg[1])
        doc["lag_source"] = "newest archived segment"
    if doc["lag_seconds"] is not None and doc["lag_seconds"] > th.max_archive_lag:
        crit("archive_lag", f"WAL archiving lags {human_age(doc['lag_seconds'])} "
             f"({doc['lag_source']}; limit {human_age(th.max_archive_lag)})")
    elif doc["lag_seconds"] is None:
        warn("no_wal", "no WAL has been archived yet")
    return doc


def _gap_findings(catalog: Catalog, warn: Any) -> None:
    """A gap after the newest backup cuts the recovery window short: say which segments."""
    newest = catalog.backups[-1]
    stop_seg = lsn_to_segno(newest.stop_lsn, catalog.segment_size)
    for g in catalog.gaps(newest.timeline):
        if g.last >= stop_seg:
            warn("wal_gap", f"WAL {segment_name(g.timeline, g.first, catalog.segment_size)}"
                 f"..{segment_name(g.timeline, g.last, catalog.segment_size)} is missing: "
                 "restores after that point are impossible")


__all__ = ["CRITICAL", "WARNING", "Finding", "HealthReport", "Thresholds",
           "evaluate"]


@dataclass(frozen=True)
class RepositoryState:
    """One of several repositories as a refresh found it: its catalog, or why not."""

    name: str
    url: str
    mode: str  # "required" | "catch_up"
    catalog: Catalog | None
    error: str | None = None


def repository_doc(name: str, url: str, catalog: Catalog | None, now: datetime,
                   error: str | None = None) -> dict[str, Any]:
    """PURE: one repository's line of `pitr status` with several repositories
    (docs/multiple-repositories.md): its newest WAL and backup, or why it cannot say."""
    if catalog is None:
        return {"name": name, "url": url, "reachable": False, "error": error}
    newest_seg = _newest_segment(catalog)
    return {
        "name": name, "url": url, "reachable": True,
        "last_archived": newest_seg[0] if newest_seg else None,
        "last_archived_age_seconds": _age(now, newest_seg[1]) if newest_seg else None,
        "last_backup": catalog.backups[-1].id if catalog.backups else None,
        "last_backup_age_seconds": _age(now, catalog.backups[-1].stop_time)
        if catalog.backups else None,
    }
