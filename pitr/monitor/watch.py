"""Alert on health conditions that appear or clear (archive streaks, backlog, lag, age).

``transitions`` is the pure decision; :class:`AlertWatcher` remembers what was
active between ticks, so an ongoing problem alerts once (and once more when it
clears) instead of on every check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pitr.config import Config
from pitr.monitor.alerts import send_alert
from pitr.monitor.health import HealthReport

# Conditions a periodic check alerts on. Backup and verify failures are alerted
# by the commands themselves, at the moment they fail.
WATCHED = ("archive_failing", "archive_backlog", "archive_lag", "backup_age", "no_backup",
           "catch_up_lag")


def transitions(active: set[str], report: HealthReport) -> tuple[list[str], list[str]]:
    """(conditions that just appeared, conditions that just cleared)."""
    now = {f.name for f in report.findings if f.name in WATCHED}
    return sorted(now - active), sorted(active - now)


class AlertWatcher:
    def __init__(self, cfg: Config,
                 send: Callable[[Config, str, str, dict[str, Any]], bool] = send_alert) -> None:
        self.cfg = cfg
        self.send = send
        self.active: set[str] = set()

    def observe(self, report: HealthReport) -> list[str]:
        """Send alerts for changes since the last report; returns the events sent."""
        fired, cleared = transitions(self.active, report)
        messages = {f.name: f.message for f in report.findings}
        lb = report.last_backup or {}
        fields = {"status": report.status, "last_backup": lb.get("id"),
                  "backlog": report.archive.get("backlog"),
                  "archive_lag_s": report.archive.get("lag_seconds")}
        sent = []
        for name in fired:
            self.send(self.cfg, name, messages[name], fields)
            sent.append(name)
        for name in cleared:
            self.send(self.cfg, f"{name}_resolved", f"{name} cleared", fields)
            sent.append(f"{name}_resolved")
        self.active = (self.active | set(fired)) - set(cleared)
        return sent
