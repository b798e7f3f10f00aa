"""The restore drill's report, ``<stanza>/verify/<time>.json``: one type for writer and readers.

:mod:`pitr.verify` fills a :class:`DrillReport` and stores :meth:`DrillReport.to_json`;
monitoring (``pitr status``, ``/health``, the alert watcher) reads the newest one back
with :meth:`DrillReport.from_json`.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pitr import __version__
from pitr.verify_checks import DrillCheck

REPORT_FORMAT = 1


@dataclass
class DrillReport:
    stanza: str
    started_at: datetime
    finished_at: datetime | None = None
    backup_id: str | None = None
    target: dict[str, Any] | None = None
    seed: int | None = None
    checks: list[DrillCheck] = field(default_factory=list)
    measures: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    recovery: dict[str, Any] | None = None
    scratch: dict[str, Any] = field(default_factory=dict)
    key: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[DrillCheck]:
        return [c for c in self.checks if not c.ok]

    @property
    def rto_seconds(self) -> float | None:
        rto = self.measures.get("rto_seconds")
        return float(rto) if rto is not None else None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "stanza": self.stanza,
            "ok": self.ok,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "finished_at": (self.finished_at or self.started_at).isoformat(timespec="seconds"),
            "backup_id": self.backup_id,
            "target": self.target,
            "random_seed": self.seed,
            **self.measures,
            "checks": [c.to_json() for c in self.checks],
            "plan": self.plan,
            "recovery": self.recovery,
            "scratch": self.scratch,
            "host": platform.node(),
            "pitr_version": __version__,
            "report": self.key,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], key: str = "") -> DrillReport:
        """A stored report (``key``: where it was read; reports before format 1 named none)."""
        def ts(v: Any) -> datetime | None:
            return datetime.fromisoformat(v) if isinstance(v, str) and v else None

        started = ts(doc.get("started_at")) or ts(doc["finished_at"])
        if started is None:
            raise ValueError("verify report without started_at/finished_at")
        checks = [DrillCheck(str(c.get("name", "?")), bool(c.get("ok")),
                              str(c.get("detail", "")), float(c.get("seconds") or 0.0),
                              dict(c.get("data") or {}))
                  for c in doc.get("checks", [])]
        return cls(
            stanza=str(doc.get("stanza", "")),
            started_at=started,
            finished_at=ts(doc["finished_at"]),
            backup_id=doc.get("backup_id"),
            target=doc.get("target"),
            seed=doc.get("random_seed"),
            checks=checks,
            measures={k: v for k, v in doc.items() if k not in _CORE},
            plan=doc.get("plan"),
            recovery=doc.get("recovery"),
            scratch=dict(doc.get("scratch") or {}),
            key=key or doc.get("report"),
        )


# every key to_json writes besides the measures
_CORE = frozenset({"format", "stanza", "ok", "started_at", "finished_at", "backup_id", "target",
                   "random_seed", "checks", "plan", "recovery", "scratch", "host",
                   "pitr_version", "report"})
