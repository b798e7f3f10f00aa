"""Webhook alerts: a Slack-compatible JSON POST (``{"text": ...}``), stdlib only.

Alerting must never make the thing it reports on fail: a webhook that is down,
slow or refusing is logged and :func:`send_alert` returns False, it never raises.
Messages pass through the secret scrubber, and the webhook URL itself (which
often embeds a token) is never logged.

Events (the ``event`` argument, also sent as ``pitr.event`` in the body):
``backup_failed``, ``verify_failed``, ``archive_failing``, ``archive_backlog``,
``catch_up_lag`` (a catch_up repository behind, docs/multiple-repositories.md),
plus ``*_resolved`` when the watcher sees a condition clear.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pitr import log
from pitr.config import Config

logger = logging.getLogger("pitr.alerts")
TIMEOUT = 10.0


def safe_url(url: str) -> str:
    """A URL without user:password and without query string (where tokens hide)."""
    if not url:
        return ""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def format_text(cfg: Config, event: str, text: str, fields: dict[str, Any]) -> str:
    head = f"[pitr {cfg.stanza}] {event}: {text}"
    if fields:
        head += "\n" + "\n".join(f"• {k}: {v}" for k, v in fields.items())
    return log.scrub(head)


def send_alert(cfg: Config, event: str, text: str,
               fields: dict[str, Any] | None = None) -> bool:
    """POST an alert to ``monitor.webhook_url``; True when delivered (2xx).

    Without a webhook configured this only logs. Never raises.
    """
    fields = dict(fields or {})
    try:
        log.register_secrets([cfg.monitor.webhook_url])
        body = {
            "text": format_text(cfg, event, text, fields),
            "pitr": {"event": event, "stanza": cfg.stanza, "message": log.scrub(text),
                     "fields": json.loads(log.scrub(json.dumps(fields, default=str)))},
        }
        log.event(logger, logging.WARNING, f"alert {event}: {text}", alert=event)
        url = cfg.monitor.webhook_url
        if not url:
            return False
        req = urllib.request.Request(
            url, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "pitr-alerts"})
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            resp.read()
            return 200 <= resp.status < 300
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code}"
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        reason = str(getattr(exc, "reason", exc))
    except Exception as exc:  # alerting is best effort by contract
        reason = f"{type(exc).__name__}: {exc}"
    log.event(logger, logging.ERROR, f"could not deliver alert {event}", alert=event,
              webhook=safe_url(cfg.monitor.webhook_url), reason=log.scrub(reason))
    return False
