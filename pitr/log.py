"""Logging set-up: text on a terminal, one JSON object per line otherwise (or on request).

Every record passes through a filter that replaces known secret values with a
mask, so a credential that slips into an exception message never reaches a log.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

MASK = "********"
_secrets: list[str] = []
_command = ""


def register_secrets(values: list[str]) -> None:
    for v in values:
        # Masking 1-3 character "secrets" would shred all output and protects nothing.
        if len(v) >= 4 and v not in _secrets:
            _secrets.append(v)


def scrub(text: str) -> str:
    for s in _secrets:
        text = text.replace(s, MASK)
    return text


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "command": _command,
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update({k: scrub(v) if isinstance(v, str) else v for k, v in fields.items()})
        if record.exc_info:
            doc["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(doc, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = f"pitr {record.levelname.lower()}: {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return scrub(text)


def setup(fmt: str = "auto", level: str = "info", command: str = "") -> None:
    global _command
    _command = command
    if fmt == "auto":
        fmt = "text"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger("pitr")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def event(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    """Log ``msg`` with structured fields (JSON keys, or key=value in text)."""
    logger.log(level, msg, extra={"fields": fields})
