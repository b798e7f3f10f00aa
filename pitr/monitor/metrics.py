"""Prometheus text exposition of a :class:`~pitr.monitor.health.HealthReport`.

A fresh registry per scrape: every value comes from the same report the health
endpoint serves, so /metrics and /health/backup never disagree, and a value
that disappeared (no verify yet) is absent instead of stale.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pitr.monitor.health import HealthReport

CONTENT_TYPE = CONTENT_TYPE_LATEST


def _ts(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def _get(doc: dict[str, Any] | None, *path: str) -> Any:
    cur: Any = doc
    for p in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur


# name, help, how to read the value from report.to_dict()
_GAUGES: list[tuple[str, str, Any]] = [
    ("pitr_healthy", "1 when /health/backup reports healthy, else 0",
     lambda d: 1 if d["status"] == "healthy" else 0),
    ("pitr_backups", "completed backups in the repository", lambda d: d["backups"]),
    ("pitr_last_backup_timestamp_seconds", "end time of the newest completed backup",
     lambda d: _ts(_get(d, "last_backup", "stop_time"))),
    ("pitr_last_backup_age_seconds", "age of the newest completed backup",
     lambda d: _get(d, "last_backup", "age_seconds")),
    ("pitr_last_backup_size_bytes", "size of the newest backup as stored (compressed)",
     lambda d: _get(d, "last_backup", "stored_bytes")),
    ("pitr_last_backup_raw_bytes", "size of the newest backup before compression",
     lambda d: _get(d, "last_backup", "raw_bytes")),
    ("pitr_last_backup_duration_seconds", "how long the newest backup took",
     lambda d: _get(d, "last_backup", "duration_seconds")),
    ("pitr_last_archived_wal_timestamp_seconds", "when the newest WAL segment was stored",
     lambda d: _ts(_get(d, "wal", "last_archived_at"))),
    ("pitr_archive_lag_seconds", "archive lag (oldest waiting segment, else newest archived)",
     lambda d: _get(d, "archive", "lag_seconds")),
    ("pitr_archive_backlog_segments", "WAL segments waiting to be archived (agent)",
     lambda d: _get(d, "archive", "agent", "backlog")),
    ("pitr_archive_failures_consecutive", "archive attempts that failed in a row (agent)",
     lambda d: _get(d, "archive", "agent", "consecutive_failures")),
    ("pitr_archive_failures", "archive attempts that failed since the agent started",
     lambda d: _get(d, "archive", "agent", "total_failures")),
    ("pitr_wal_gaps", "holes in the archived WAL", lambda d: len(d["wal"]["gaps"])),
    ("pitr_recovery_window_start_timestamp_seconds", "earliest restorable time",
     lambda d: _ts(_get(d, "recovery_window", "start"))),
    ("pitr_recovery_window_end_timestamp_seconds", "latest restorable time (as archived)",
     lambda d: _ts(_get(d, "recovery_window", "end"))),
    ("pitr_last_verify_timestamp_seconds", "when the last restore drill finished",
     lambda d: _ts(_get(d, "last_verify", "finished_at"))),
    ("pitr_last_verify_success", "1 when the last restore drill passed, 0 when it failed",
     lambda d: None if d["last_verify"] is None else int(bool(d["last_verify"]["ok"]))),
    ("pitr_last_verify_rto_seconds", "time the last drill took to a usable cluster",
     lambda d: _get(d, "last_verify", "rto_seconds")),
]


def render(report: HealthReport) -> bytes:
    doc = report.to_dict()
    registry = CollectorRegistry()
    for name, help_text, read in _GAUGES:
        value = read(doc)
        if value is None:
            continue
        Gauge(name, help_text, ["stanza"], registry=registry).labels(report.stanza).set(value)
    lag_segments = Gauge("pitr_repository_wal_lag_segments", "WAL segments a catch_up "
                         "repository has not taken yet (its backlog)", ["stanza", "repo"],
                         registry=registry)
    lag_seconds = Gauge("pitr_repository_wal_lag_seconds", "age of the oldest WAL segment "
                        "waiting for a catch_up repository (0: none waiting)",
                        ["stanza", "repo"], registry=registry)
    for lag in doc.get("catch_up", ()):
        lag_segments.labels(report.stanza, lag["repository"]).set(lag["segments"])
        lag_seconds.labels(report.stanza, lag["repository"]).set(lag["oldest_age"] or 0)
    # several repositories: each one's reachability and freshness
    # (docs/multiple-repositories.md, "Monitoring")
    per_repo = [
        Gauge("pitr_repository_up", "1 when the repository could be read at the last "
              "refresh, 0 when not", ["stanza", "repo"], registry=registry),
        Gauge("pitr_repository_last_archive_age_seconds", "age of the newest WAL segment "
              "in the repository", ["stanza", "repo"], registry=registry),
        Gauge("pitr_repository_last_backup_age_seconds", "age of the newest backup in the "
              "repository", ["stanza", "repo"], registry=registry),
    ]
    for row in doc.get("repositories", ()):
        values = (1 if row["reachable"] else 0, row.get("last_archived_age_seconds"),
                  row.get("last_backup_age_seconds"))
        for gauge, value in zip(per_repo, values, strict=True):
            if value is not None:  # no sample rather than a made-up 0 for what is unknown
                gauge.labels(report.stanza, row["name"]).set(value)
    problems = Gauge("pitr_problem", "1 for each current health finding",
                     ["stanza", "name", "severity"], registry=registry)
    for f in report.findings:
        problems.labels(report.stanza, f.name, f.severity).set(1)
    return bytes(generate_latest(registry))
