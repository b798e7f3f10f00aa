"""Metrics rendering and alert transitions, on reports evaluated from in-memory catalogs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from test_health import NOW, TH, drill, healthy_catalog

from pitr.config import Config, MonitorConfig
from pitr.monitor import metrics
from pitr.monitor.alerts import format_text, safe_url, send_alert
from pitr.monitor.health import evaluate
from pitr.monitor.watch import AlertWatcher, transitions
from pitr.wal.status import AgentStatus


def samples(text: bytes) -> dict[str, float]:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            if s.name != "pitr_problem":
                out[s.name] = s.value
    return out


def test_metrics_carry_report_values() -> None:
    cat = healthy_catalog()
    ver = drill(NOW - timedelta(days=1), True, "b1", 33.5)
    agent = AgentStatus(NOW, 2, 4.0, None, None, 0, 5)
    m = samples(metrics.render(evaluate(cat, agent, ver, TH, NOW)))
    b = cat.backups[-1]
    assert m["pitr_last_backup_timestamp_seconds"] == b.stop_time.timestamp()
    assert m["pitr_last_backup_size_bytes"] == b.stored_bytes
    assert m["pitr_last_backup_duration_seconds"] == 300
    assert m["pitr_archive_backlog_segments"] == 2 and m["pitr_archive_failures"] == 5
    assert m["pitr_last_verify_success"] == 1 and m["pitr_last_verify_rto_seconds"] == 33.5
    assert m["pitr_recovery_window_start_timestamp_seconds"] == b.stop_time.timestamp()
    assert m["pitr_healthy"] == 1


def test_metrics_omit_unknown_values() -> None:
    m = samples(metrics.render(evaluate(healthy_catalog(), None, None, TH, NOW)))
    assert "pitr_last_verify_success" not in m and "pitr_archive_backlog_segments" not in m


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def __call__(self, cfg: Config, event: str, text: str, fields: dict[str, Any]) -> bool:
        self.sent.append((event, text))
        return True


def test_watcher_alerts_once_per_condition_and_on_resolve() -> None:
    rec = Recorder()
    w = AlertWatcher(Config(), send=rec)
    bad = AgentStatus(NOW, 100, 10.0, None, None, 5, 5, "timeout")
    good = AgentStatus(NOW, 0, None, None, None, 0, 5)
    r_bad = evaluate(healthy_catalog(), bad, None, TH, NOW)
    assert w.observe(r_bad) == ["archive_backlog", "archive_failing"]
    assert w.observe(r_bad) == []  # still failing: no repeat
    assert w.observe(evaluate(healthy_catalog(), good, None, TH, NOW)) == \
        ["archive_backlog_resolved", "archive_failing_resolved"]
    assert "timeout" in dict(rec.sent)["archive_failing"]


def test_transitions_ignore_unwatched_findings() -> None:
    r = evaluate(healthy_catalog(), None, None, TH, NOW)  # only "never_verified"
    assert transitions(set(), r) == ([], [])


def test_alert_text_has_no_secrets_and_url_is_redacted() -> None:
    from pitr import log

    log.register_secrets(["AKIA-very-secret"])
    cfg = Config(monitor=MonitorConfig(webhook_url="https://u:pw@hooks.example/T/B?token=x"))
    text = format_text(cfg, "backup_failed", "auth AKIA-very-secret refused", {"k": 1})
    assert "AKIA-very-secret" not in text and "backup_failed" in text
    assert safe_url(cfg.monitor.webhook_url) == "https://hooks.example/T/B"


def test_undeliverable_alert_is_not_fatal() -> None:
    cfg = Config(monitor=MonitorConfig(webhook_url="http://127.0.0.1:9/nothing-listens"))
    assert send_alert(cfg, "verify_failed", "x", {"a": object()}) is False
    assert send_alert(Config(), "verify_failed", "no webhook configured") is False


def test_maybe_start_server_never_raises() -> None:
    import socket

    from pitr.monitor.server import maybe_start_server

    assert maybe_start_server(Config(monitor=MonitorConfig(port=0))) is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        assert maybe_start_server(Config(monitor=MonitorConfig(port=taken)), watch=False) is None
