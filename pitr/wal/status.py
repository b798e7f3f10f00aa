"""``<spool>/<stanza>/agent-status.json``: what ``pitr agent`` writes, and monitoring reads.

One type for both sides: the agent builds an :class:`AgentStatus` and writes
:meth:`AgentStatus.to_json`; ``pitr status``, ``/health`` and the watcher parse the
file back with :meth:`AgentStatus.from_json`, tolerant of keys older agents did
not write. Times are UTC, written with milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

STATUS_FORMAT = 1


def _iso(t: datetime | None) -> str | None:
    return t.isoformat(timespec="milliseconds") if t is not None else None


def _ts(v: Any) -> datetime | None:
    return datetime.fromisoformat(v) if isinstance(v, str) and v else None


@dataclass(frozen=True)
class AgentStatus:
    """The agent's state as of ``updated_at`` (the first fields are what health judges)."""

    updated_at: datetime
    backlog: int  # .ready files waiting
    oldest_ready_age: float | None  # seconds, None when nothing waits
    last_stored: str | None  # WAL name
    last_stored_at: datetime | None
    consecutive_failures: int
    total_failures: int
    last_error: str | None = None
    state: str = "running"  # "stopped" once the agent exits
    # how this agent runs (docs/archiving-modes.md): "on-demand" agents are started by
    # archive-push and exit after ``idle_exit`` seconds without work; "service" ones do not
    mode: str = "service"
    idle_exit: float = 0.0
    exit_reason: str | None = None  # "idle" once an on-demand agent left for idleness
    # what the file adds for people reading it
    pid: int | None = None
    stanza: str = ""
    pgdata: str = ""
    workers: int = 0
    started_at: datetime | None = None
    pending: int = 0  # ready, not stored yet
    in_flight: int = 0
    oldest_ready: str | None = None
    oldest_pending: str | None = None
    totals: dict[str, int] = field(default_factory=dict)
    last_error_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATUS_FORMAT,
            "state": self.state,
            "pid": self.pid,
            "stanza": self.stanza,
            "pgdata": self.pgdata,
            "workers": self.workers,
            "mode": self.mode,
            "idle_exit": self.idle_exit,
            "exit_reason": self.exit_reason,
            "started_at": _iso(self.started_at),
            "updated_at": _iso(self.updated_at),
            "backlog": {
                "ready": self.backlog,
                "pending": self.pending,
                "in_flight": self.in_flight,
                "oldest_ready": self.oldest_ready,
                "oldest_age_seconds": self.oldest_ready_age,
                "oldest_pending": self.oldest_pending,
            },
            "last_stored": {"name": self.last_stored, "at": _iso(self.last_stored_at)}
            if self.last_stored else None,
            "totals": dict(self.totals),
            "failures": {"consecutive": self.consecutive_failures, "total": self.total_failures,
                         "last_error": self.last_error, "last_error_at": _iso(self.last_error_at)},
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> AgentStatus:
        """Parse the agent's file; tolerant of absent optional keys (older agents)."""
        updated = _ts(doc.get("updated_at"))
        if updated is None:
            raise ValueError("agent status without updated_at")
        backlog = doc.get("backlog", {})
        if not isinstance(backlog, dict):  # a bare count
            backlog = {"ready": backlog}
        failures = doc.get("failures", {})
        if not isinstance(failures, dict):
            failures = {"consecutive": failures}
        last = doc.get("last_stored") or {}
        if isinstance(last, str):
            last = {"name": last}
        oldest = backlog.get("oldest_age_seconds")
        pid = doc.get("pid")
        totals = doc.get("totals")
        return cls(
            updated_at=updated,
            backlog=int(backlog.get("ready", 0) or 0),
            oldest_ready_age=float(oldest) if oldest is not None else None,
            last_stored=last.get("name"),
            last_stored_at=_ts(last.get("at")),
            consecutive_failures=int(failures.get("consecutive", 0) or 0),
            total_failures=int(failures.get("total", 0) or 0),
            last_error=failures.get("last_error"),
            state=str(doc.get("state") or "running"),
            mode=str(doc.get("mode") or "service"),
            idle_exit=float(doc.get("idle_exit") or 0.0),
            exit_reason=doc.get("exit_reason"),
            pid=int(pid) if isinstance(pid, int) else None,
            stanza=str(doc.get("stanza") or ""),
            pgdata=str(doc.get("pgdata") or ""),
            workers=int(doc.get("workers") or 0),
            started_at=_ts(doc.get("started_at")),
            pending=int(backlog.get("pending", 0) or 0),
            in_flight=int(backlog.get("in_flight", 0) or 0),
            oldest_ready=backlog.get("oldest_ready"),
            oldest_pending=backlog.get("oldest_pending"),
            totals=dict(totals) if isinstance(totals, dict) else {},
            last_error_at=_ts(failures.get("last_error_at")),
        )
