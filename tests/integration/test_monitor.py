"""Health endpoint, Prometheus metrics, `pitr status` and alerts against a real cluster that
archives to a real S3 server (SeaweedFS) and has one real base backup.

The HTTP server runs both ways it is deployed: `pitr serve` as the cluster user,
and ``start_server(cfg)`` in-process (how `pitr agent` embeds it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import PITR_EXE, run_pitr, s3_repo_for, write_config
from prometheus_client.parser import text_string_to_metric_families
from support.pgcluster import PG_BINDIR, PG_USER, PgCluster, as_user_cmd, free_port, make_user_dir

from pitr import config
from pitr.catalog import load_catalog
from pitr.errors import CheckFailed
from pitr.manifest import BackupRecord
from pitr.monitor.server import start_server
from pitr.repo import Repo

pytestmark = [pytest.mark.integration, pytest.mark.s3]
PITR_RUNS_UNDER_RUNUSER = os.geteuid() == 0


class Webhook:
    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/services/XYZ/s3cr3t"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, event: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for doc in self.received:
                if doc["pitr"]["event"] == event:
                    return doc
            time.sleep(0.1)
        raise AssertionError(f"no {event} alert; got {self.received}")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Env:
    def __init__(self, base: Path, cluster: PgCluster, settings: dict[str, Any]) -> None:
        self.base, self.cluster, self.settings = base, cluster, settings

    def config(self, name: str, **sections: Any) -> Path:
        settings = json.loads(json.dumps(self.settings))
        for key, value in sections.items():
            settings.setdefault(key, {}).update(value)
        return write_config(self.base / name, settings)

    def newest_backup(self) -> BackupRecord:
        cfg = config.load(self.base / "pitr.toml", env={})
        return load_catalog(Repo.open(cfg)).backups[-1]


@pytest.fixture(scope="module")
def env(workdir: Path, pitr_exe: Path, s3_server: Any) -> Iterator[Env]:
    base = make_user_dir(workdir / f"monitor-{uuid.uuid4().hex[:6]}", mode=0o755)
    cluster = PgCluster(base, "prod")
    settings: dict[str, Any] = {
        "stanza": "mon",
        "repository": s3_repo_for(s3_server),
        "archive": {"spool_dir": str(make_user_dir(base / "spool"))},
        "postgres": {"bindir": str(PG_BINDIR), "user": PG_USER, "dsn": cluster.dsn,
                     "pgdata": str(cluster.pgdata)},
        "monitor": {"refresh": 0, "listen": "127.0.0.1"},
    }
    cfg = write_config(base / "pitr.toml", settings)
    cluster.initdb(conf={"archive_mode": "on",
                         "archive_command": f"{pitr_exe} --config {cfg} archive-push %p"})
    cluster.start()
    try:
        cluster.sql("create table t as select generate_series(1, 10000) x")
        run_pitr(cfg, "backup")
        last = cluster.switch_wal()
        cluster.wait_until(f"select last_archived_wal >= '{last}' from pg_stat_archiver")
        yield Env(base, cluster, settings)
    finally:
        cluster.stop("immediate")


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metric_values(text: bytes) -> dict[str, float]:
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            if s.name != "pitr_problem":
                assert s.labels["stanza"] == "mon"
                out[s.name] = s.value
    return out


def test_serve_reports_health_and_metrics_of_the_last_backup(env: Env) -> None:
    cfg = env.config("serve.toml")
    port = free_port()
    log = env.base / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            as_user_cmd([str(PITR_EXE), "--config", str(cfg), "serve", "--port", str(port)]),
            stdout=out, stderr=subprocess.STDOUT,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                code, body = get(f"http://127.0.0.1:{port}/health/backup")
                break
            except OSError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        backup = env.newest_backup()
        doc = json.loads(body)
        assert code == 200, doc
        assert doc["status"] == "healthy"
        assert doc["last_backup"]["id"] == backup.id
        assert doc["last_backup"]["stored_bytes"] == backup.stored_bytes
        assert doc["location"].startswith("s3://") and "endpoint" in doc["location"]
        assert env.settings["repository"]["secret_access_key"] not in body.decode()
        assert doc["retention"]["daily"] == 7
        assert doc["wal"]["last_archived"] and doc["last_verify"] is None
        assert {p["name"] for p in doc["problems"]} == {"never_verified"}

        code, text = get(f"http://127.0.0.1:{port}/metrics")
        assert code == 200
        m = metric_values(text)
        assert m["pitr_last_backup_timestamp_seconds"] == int(backup.stop_time.timestamp())
        assert m["pitr_last_backup_size_bytes"] == backup.stored_bytes
        assert m["pitr_last_backup_raw_bytes"] == backup.raw_bytes
        assert m["pitr_last_backup_duration_seconds"] == pytest.approx(
            (backup.stop_time - backup.start_time).total_seconds(), abs=1)
        assert m["pitr_backups"] == 1 and m["pitr_healthy"] == 1
        assert m["pitr_last_archived_wal_timestamp_seconds"] > backup.start_time.timestamp() - 1
        assert m["pitr_recovery_window_start_timestamp_seconds"] == \
            int(backup.stop_time.timestamp())
        assert m["pitr_recovery_window_end_timestamp_seconds"] >= \
            m["pitr_recovery_window_start_timestamp_seconds"]
        assert get(f"http://127.0.0.1:{port}/nope")[0] == 404
    finally:
        # signal pitr serve itself (runuser would report the signal, not serve's exit)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        os.kill(int(children[0]) if children and PITR_RUNS_UNDER_RUNUSER else proc.pid,
                signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()


def test_health_flips_to_503_when_the_backup_gets_too_old(env: Env) -> None:
    age = (datetime.now(UTC) - env.newest_backup().stop_time).total_seconds()
    limit = int(age) + 10  # room for a slow first listing on a busy machine
    cfg = config.load(env.config("tight.toml", monitor={"max_backup_age": limit}), env={})
    handle = start_server(cfg, port=0, watch=False)  # as `pitr agent` embeds it
    try:
        code, body = get(f"{handle.url}/health/backup")
        assert code == 200, body
        while (datetime.now(UTC) - env.newest_backup().stop_time).total_seconds() <= limit:
            time.sleep(0.5)
        code, body = get(f"{handle.url}/health/backup")
        doc = json.loads(body)
        assert code == 503 and doc["status"] == "unhealthy"
        assert "backup_age" in {p["name"] for p in doc["problems"]}
        m = metric_values(get(f"{handle.url}/metrics")[1])
        assert m["pitr_healthy"] == 0
    finally:
        handle.stop()
    # `pitr status` agrees and exits nonzero
    proc = run_pitr(env.base / "tight.toml", "status", check=False)
    assert proc.returncode == CheckFailed.exit_code
    assert "UNHEALTHY" in proc.stdout and "backup_age" in proc.stdout
    ok = run_pitr(env.base / "pitr.toml", "status", "--json")
    assert json.loads(ok.stdout)["status"] == "healthy"


def test_backlog_from_agent_status_alerts_and_turns_unhealthy(env: Env) -> None:
    hook = Webhook()
    spool = Path(env.settings["archive"]["spool_dir"]) / "mon"
    spool.mkdir(exist_ok=True)
    status = spool / "agent-status.json"
    try:
        cfg = config.load(env.config("backlog.toml", monitor={
            "webhook_url": hook.url, "max_backlog": 5, "alert_interval": 1}), env={})
        now = datetime.now(UTC).isoformat()
        status.write_text(json.dumps({
            "format": 1, "state": "running", "updated_at": now,
            "backlog": {"ready": 40, "oldest_age_seconds": 12.0},
            "last_stored": None,
            "failures": {"consecutive": 0, "total": 2, "last_error": None}}))
        handle = start_server(cfg, port=0, watch=True)
        try:
            alert = hook.wait_for("archive_backlog")
            assert "40 WAL segments" in alert["text"]
            assert "s3cr3t" not in json.dumps(alert)
            code, body = get(f"{handle.url}/health/backup")
            assert code == 503 and json.loads(body)["archive"]["backlog"] == 40
            assert metric_values(get(f"{handle.url}/metrics")[1])[
                "pitr_archive_backlog_segments"] == 40
            status.write_text(status.read_text().replace('"ready": 40', '"ready": 0'))
            hook.wait_for("archive_backlog_resolved")
        finally:
            handle.stop()
    finally:
        status.unlink(missing_ok=True)
        hook.close()


def test_backup_failure_sends_alert(env: Env) -> None:
    hook = Webhook()
    try:
        cfg = env.config("badbackup.toml", monitor={"webhook_url": hook.url}, postgres={
            "dsn": f"host={env.cluster.socket_dir} port={free_port()} user=postgres"})
        proc = run_pitr(cfg, "backup", check=False)
        assert proc.returncode != 0
        alert = hook.wait_for("backup_failed", timeout=5)
        assert "backup failed" in alert["text"]
        assert env.settings["repository"]["secret_access_key"] not in json.dumps(alert)
    finally:
        hook.close()


def test_unreachable_repository_answers_503_unknown_quickly(env: Env) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = config.load(env.config("dead.toml", repository={
        "endpoint_url": dead, "timeout": 1, "request_timeout": 1}), env={})
    handle = start_server(cfg, port=0, watch=False)
    try:
        t = time.monotonic()
        code, body = get(f"{handle.url}/health/backup")
        assert code == 503 and json.loads(body)["status"] == "unknown", body
        assert get(f"{handle.url}/metrics")[0] == 503
        assert time.monotonic() - t < 30
        assert env.settings["repository"]["secret_access_key"] not in body.decode()
    finally:
        handle.stop()
