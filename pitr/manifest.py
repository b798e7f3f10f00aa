"""The backup manifest: ``backups/<id>/manifest.json``, written last.

A manifest is what makes a backup exist. It is plain JSON so an operator can
read it with ``cat``; LSNs are given both as PostgreSQL writes them and as
integers, times as ISO 8601 UTC. Unknown keys survive decoding in
``BackupRecord.extra`` so an older pitr can read a newer minor format.
Pins are separate objects (``<stanza>/pins/<id>``), never in the manifest, so
pinning never rewrites a completed backup.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pitr.errors import IntegrityError
from pitr.pg.names import format_lsn, parse_lsn

MANIFEST_FORMAT = 1


@dataclass(frozen=True, slots=True)
class BackupObject:
    name: str  # e.g. "base.tar.zst"
    key: str  # storage key
    raw_bytes: int
    stored_bytes: int
    sha256: str  # of the stored (compressed) bytes
    raw_sha256: str = ""


@dataclass(frozen=True)
class BackupRecord:
    """A completed backup, as its manifest describes it."""

    id: str
    label: str  # "scheduled" | "manual"
    start_lsn: int
    stop_lsn: int
    start_time: datetime  # UTC
    stop_time: datetime  # UTC: what the planner compares targets with
    timeline: int
    system_id: str
    pg_version: int
    db_size: int
    raw_bytes: int
    stored_bytes: int
    objects: tuple[BackupObject, ...] = ()
    pitr_version: str = ""
    pinned: bool = False
    # the cluster's TimeZone when the backup was taken; None for backups taken before
    # pitr recorded it (zone-less restore targets are then refused, see pitr.targets)
    timezone: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def compression_ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else 0.0

    @property
    def parent(self) -> str | None:
        """The backup an incremental backup was taken against (docs/incremental-backups.md);
        None for a full backup."""
        value = self.extra.get("parent")
        return str(value) if value else None

_CORE = {"format", "id", "label", "start_lsn", "start_lsn_int", "stop_lsn", "stop_lsn_int",
         "start_time", "stop_time", "timeline", "system_id", "pg_version", "db_size",
         "raw_bytes", "stored_bytes", "objects", "pitr_version", "timezone"}


def _time(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat()


def encode(rec: BackupRecord) -> bytes:
    doc: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "id": rec.id,
        "label": rec.label,
        "start_lsn": format_lsn(rec.start_lsn),
        "start_lsn_int": rec.start_lsn,
        "stop_lsn": format_lsn(rec.stop_lsn),
        "stop_lsn_int": rec.stop_lsn,
        "start_time": _time(rec.start_time),
        "stop_time": _time(rec.stop_time),
        "timeline": rec.timeline,
        "system_id": rec.system_id,
        "pg_version": rec.pg_version,
        "db_size": rec.db_size,
        "raw_bytes": rec.raw_bytes,
        "stored_bytes": rec.stored_bytes,
        "objects": [
            {"name": o.name, "key": o.key, "raw_bytes": o.raw_bytes,
             "stored_bytes": o.stored_bytes, "sha256": o.sha256, "raw_sha256": o.raw_sha256}
            for o in rec.objects
        ],
        "pitr_version": rec.pitr_version,
    }
    if rec.timezone is not None:
        doc["timezone"] = rec.timezone
    doc.update({k: v for k, v in rec.extra.items() if k not in _CORE})
    return (json.dumps(doc, indent=2) + "\n").encode()


def _parse_time(value: Any) -> datetime:
    dt = datetime.fromisoformat(str(value))
    if dt.tzinfo is None:  # written by hand without a zone: UTC, as everywhere in pitr
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _lsn(doc: dict[str, Any], name: str) -> int:
    if isinstance(doc.get(f"{name}_int"), int):
        return int(doc[f"{name}_int"])
    return parse_lsn(str(doc[name]))


def decode(data: bytes, key: str = "manifest.json") -> BackupRecord:
    """Parse a manifest; IntegrityError (naming ``key``) when it is damaged or too new."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        fmt = int(doc.get("format", 0))
        if fmt > MANIFEST_FORMAT:
            raise IntegrityError(f"{key}: manifest format {fmt} is newer than this pitr "
                                 f"understands ({MANIFEST_FORMAT})",
                                 hint="upgrade pitr on this host")
        objects = tuple(
            BackupObject(str(o["name"]), str(o["key"]), int(o["raw_bytes"]),
                         int(o["stored_bytes"]), str(o["sha256"]), str(o.get("raw_sha256", "")))
            for o in doc.get("objects", ())
        )
        return BackupRecord(
            id=str(doc["id"]),
            label=str(doc.get("label", "")),
            start_lsn=_lsn(doc, "start_lsn"),
            stop_lsn=_lsn(doc, "stop_lsn"),
            start_time=_parse_time(doc["start_time"]),
            stop_time=_parse_time(doc["stop_time"]),
            timeline=int(doc["timeline"]),
            system_id=str(doc["system_id"]),
            pg_version=int(doc.get("pg_version", 0)),
            db_size=int(doc.get("db_size", 0)),
            raw_bytes=int(doc.get("raw_bytes", 0)),
            stored_bytes=int(doc.get("stored_bytes", 0)),
            objects=objects,
            pitr_version=str(doc.get("pitr_version", "")),
            timezone=str(doc["timezone"]) if doc.get("timezone") else None,
            extra={k: v for k, v in doc.items() if k not in _CORE},
        )
    except IntegrityError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{key}: damaged backup manifest ({type(exc).__name__}: {exc})",
                             hint="the backup cannot be used; remove it with `pitr expire` or "
                                  "by deleting its directory") from exc
