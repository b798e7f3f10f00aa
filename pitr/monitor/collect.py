"""Gather the inputs of :func:`~pitr.monitor.health.evaluate`: the I/O edge of monitoring.

Reads the catalog (one listing of the stanza), the newest verify report under
``<stanza>/verify/`` and the agent's ``<spool>/<stanza>/agent-status.json``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from pitr import log
from pitr.catalog import Catalog
from pitr.config import Config
from pitr.monitor.alerts import safe_url
from pitr.monitor.health import AgentStatus, HealthReport, Thresholds, VerifySummary, evaluate
from pitr.repo import Repo
from pitr.storage import open_storage, read_bytes

logger = logging.getLogger("pitr.monitor")
AGENT_STATUS_FILE = "agent-status.json"


@dataclass(frozen=True)
class Inputs:
    catalog: Catalog
    agent: AgentStatus | None
    last_verify: VerifySummary | None


def location(cfg: Config) -> str:
    """The repository as a user recognises it, without credentials."""
    url = safe_url(cfg.repository.url) if "@" in cfg.repository.url else cfg.repository.url
    if cfg.repository.endpoint_url:
        return f"{url} (endpoint {safe_url(cfg.repository.endpoint_url)})"
    return url


def read_agent_status(cfg: Config) -> AgentStatus | None:
    path = cfg.spool_path / AGENT_STATUS_FILE
    try:
        return AgentStatus.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.event(logger, logging.WARNING, "ignoring unreadable agent status", path=str(path),
                  reason=str(exc))
        return None


def read_last_verify(repo: Repo) -> VerifySummary | None:
    keys = [o.key for o in repo.storage.list(repo.verify_prefix) if o.key.endswith(".json")]
    # Report names are UTC timestamps, so the greatest key is the newest drill; a
    # corrupt newest report falls back to the one before rather than hiding all.
    for key in sorted(keys, reverse=True):
        try:
            return VerifySummary.from_report(json.loads(read_bytes(repo.storage, key)), key)
        except (ValueError, KeyError, TypeError) as exc:
            log.event(logger, logging.WARNING, "ignoring unreadable verify report", key=key,
                      reason=str(exc))
    return None


def gather(cfg: Config) -> Inputs:
    from pitr.catalog import load_catalog

    repo = Repo(open_storage(cfg.repository), cfg.stanza)
    return Inputs(load_catalog(repo), read_agent_status(cfg), read_last_verify(repo))


def report_from(cfg: Config, inputs: Inputs, now: datetime | None = None) -> HealthReport:
    from pitr.wal.modes import current

    agent = inputs.agent
    mode = current(cfg, agent.mode if agent is not None and agent.state != "stopped" else None)
    return evaluate(inputs.catalog, agent, inputs.last_verify,
                    Thresholds.from_config(cfg.monitor), now or datetime.now(UTC),
                    location=location(cfg), retention=asdict(cfg.retention),
                    conditional_writes=cfg.repository.conditional_writes,
                    archive_mode=mode)


def health_report(cfg: Config, now: datetime | None = None) -> HealthReport:
    return report_from(cfg, gather(cfg), now)


class CachedCollector:
    """Re-reads the repository at most every ``monitor.refresh`` seconds.

    Ages are still computed at request time, so a backup crosses its age
    threshold on time even while the cached catalog is reused. The agent's
    status file is local and cheap: it is read on every request.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        self._inputs: Inputs | None = None
        self._at = 0.0

    def report(self) -> HealthReport:
        with self._lock:
            if self._inputs is None or time.monotonic() - self._at >= self.cfg.monitor.refresh:
                self._inputs = gather(self.cfg)
                self._at = time.monotonic()
            inputs = Inputs(self._inputs.catalog, read_agent_status(self.cfg),
                            self._inputs.last_verify)
        return report_from(self.cfg, inputs)

    def invalidate(self) -> None:
        with self._lock:
            self._inputs = None


def summary_fields(report: HealthReport) -> dict[str, Any]:
    """A compact view of a report for alert bodies and log lines."""
    lb = report.last_backup or {}
    return {"status": report.status, "last_backup": lb.get("id"),
            "last_backup_age_s": lb.get("age_seconds"),
            "archive_lag_s": report.archive.get("lag_seconds"),
            "backlog": report.archive.get("backlog")}
