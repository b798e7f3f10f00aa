"""Logging set-up: text (the default) or one JSON object per line (``--log-format json``).

JSON lines carry ``timestamp`` (UTC, ISO 8601), ``level``, ``command`` (the pitr
command running), ``event`` (the message) and the structured fields passed to
:func:`event`, so a log shipper can index them. ``auto`` means text: a human at
a terminal reads it, and the systemd units ask for JSON explicitly.

Every record passes through a filter that replaces known secret values with a
mask, so a credential that slips into an exception message never reaches a log.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

MASK = "********"
_secrets: list[str] = []
_command = ""
_json = False
# LogRecord attributes that are not user fields (anything else passed in extra= is one).
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def register_secrets(values: list[str]) -> None:
    from pitr.security import secret_forms

    for v in values:
        # every rendered form: JSON- and repr-escaped, URL-encoded, a URL's tokens
        for form in secret_forms(v):
            # Masking 1-3 character "secrets" would shred all output and protects nothing.
            if len(form) >= 4 and form not in _secrets:
                _secrets.append(form)
    _secrets.sort(key=len, reverse=True)  # a whole value before any part of it
    if _secrets:
        # Every output path, not only log records: typer echo, tracebacks under --debug.
        from pitr.security import scrub_std_streams

        scrub_std_streams(scrub)


def scrub(text: str) -> str:
    for s in _secrets:
        text = text.replace(s, MASK)
    return text


def _scrub_value(v: Any) -> Any:
    if isinstance(v, str):
        return scrub(v)
    if isinstance(v, dict):
        return {k: _scrub_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_scrub_value(x) for x in v]
    return v


def _fields_of(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    out = dict(fields) if isinstance(fields, dict) else {}
    # Plain `logger.info(..., extra={...})` from other modules counts too.
    out.update({k: v for k, v in vars(record).items() if k not in _RESERVED and k != "fields"})
    return out


def _json_line(doc: dict[str, Any]) -> str:
    return scrub(json.dumps(_scrub_value(doc), default=str, ensure_ascii=False))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "command": _command,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for k, v in _fields_of(record).items():
            doc.setdefault(k, v)  # a field never overwrites the fixed keys above
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return _json_line(doc)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = f"pitr {record.levelname.lower()}: {record.getMessage()}"
        fields = _fields_of(record)
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return scrub(text)


def setup(fmt: str = "auto", level: str = "info", command: str = "",
          stream: TextIO | None = None) -> None:
    global _command, _json
    if fmt not in ("auto", "text", "json"):
        from pitr.errors import UsageError

        raise UsageError(f"log format must be auto, text or json, not {fmt!r}")
    _command = command
    _json = fmt == "json"
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if _json else TextFormatter())
    root = logging.getLogger("pitr")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def json_enabled() -> bool:
    return _json


def error_line(message: str, hint: str | None, exit_code: int, command: str = "") -> str:
    """The final error of a command as one JSON log line (for ``--log-format json``)."""
    doc = {"timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
           "level": "error", "command": command or _command, "event": message,
           "exit_code": exit_code}
    if hint:
        doc["hint"] = hint
    return _json_line(doc)


def event(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    """Log ``msg`` with structured fields (JSON keys, or key=value in text)."""
    logger.log(level, msg, extra={"fields": fields})
