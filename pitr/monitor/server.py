"""HTTP endpoint: ``GET /health/backup`` (JSON; 200 healthy, 503 not) and ``GET /metrics``.

Runs in a daemon thread so ``pitr agent`` can host it next to its work
(``start_server(cfg)``); ``pitr serve`` runs it alone. Loopback by default.
A second thread re-evaluates health every ``monitor.alert_interval`` and fires
webhook alerts when archive/backup conditions appear or clear.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pitr import log
from pitr.config import Config
from pitr.errors import PitrError
from pitr.monitor import metrics
from pitr.monitor.collect import CachedCollector
from pitr.monitor.watch import AlertWatcher

logger = logging.getLogger("pitr.monitor.server")


def _handler(collector: CachedCollector) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "pitr"

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, doc: Any) -> None:
            body = log.scrub(json.dumps(doc, indent=2, default=str)).encode() + b"\n"
            self._send(code, body, "application/json")

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            if path not in ("/health/backup", "/metrics", "/"):
                self._json(404, {"error": "not found",
                                 "endpoints": ["/health/backup", "/metrics"]})
                return
            if path == "/":
                self._json(200, {"endpoints": ["/health/backup", "/metrics"]})
                return
            try:
                report = collector.report()
            except PitrError as exc:
                self._json(503, {"status": "unknown", "error": exc.message})
                return
            except Exception as exc:  # a scrape must get an answer, never a hang-up
                logger.exception("health evaluation failed")
                self._json(503, {"status": "unknown", "error": f"{type(exc).__name__}: {exc}"})
                return
            if path == "/metrics":
                self._send(200, metrics.render(report), metrics.CONTENT_TYPE)
            else:
                self._json(200 if report.healthy else 503, report.to_dict())

        def log_message(self, format: str, *args: Any) -> None:
            log.event(logger, logging.DEBUG, "http " + (format % args))

    return Handler


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


@dataclass
class ServerHandle:
    host: str
    port: int
    collector: CachedCollector
    _httpd: ThreadingHTTPServer
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        for t in self._threads:
            t.join(timeout=10)

    def wait(self) -> None:
        """Block until stopped (``pitr serve``)."""
        while not self._stop.wait(1.0):
            pass


def _watch_loop(cfg: Config, collector: CachedCollector, stop: threading.Event) -> None:
    watcher = AlertWatcher(cfg)
    while not stop.is_set():
        try:
            watcher.observe(collector.report())
        except Exception as exc:  # the watcher outlives repository hiccups
            log.event(logger, logging.WARNING, "alert check failed", reason=str(exc))
        stop.wait(max(1.0, float(cfg.monitor.alert_interval)))


def start_server(cfg: Config, *, port: int | None = None, watch: bool = True) -> ServerHandle:
    """Serve /health/backup and /metrics in background threads; ``handle.stop()`` ends it.

    ``port``: override ``monitor.port`` (0 picks a free port, see ``handle.port``).
    ``watch``: also run the periodic alert check.
    """
    collector = CachedCollector(cfg)
    listen = cfg.monitor.listen
    server_cls = _Server6 if ":" in listen else ThreadingHTTPServer
    httpd = server_cls((listen, cfg.monitor.port if port is None else port),
                                _handler(collector))
    httpd.daemon_threads = True
    handle = ServerHandle(listen, int(httpd.server_address[1]), collector, httpd)
    t = threading.Thread(target=httpd.serve_forever, name="pitr-http", daemon=True)
    t.start()
    handle._threads.append(t)
    if watch:
        w = threading.Thread(target=_watch_loop, args=(cfg, collector, handle._stop),
                             name="pitr-alert-watch", daemon=True)
        w.start()
        handle._threads.append(w)
    log.event(logger, logging.INFO, "health endpoint listening", url=handle.url)
    return handle


def maybe_start_server(cfg: Config, *, watch: bool = True) -> ServerHandle | None:
    """For daemons hosting the endpoint next to their real work (``pitr agent``):
    None when ``monitor.port`` is 0, and a logged warning instead of an exception
    when the port is taken, because monitoring must never stop archiving."""
    if not cfg.monitor.port:
        return None
    try:
        return start_server(cfg, watch=watch)
    except OSError as exc:
        log.event(logger, logging.WARNING, "health endpoint not started",
                  listen=cfg.monitor.listen, port=cfg.monitor.port, reason=str(exc))
        return None
