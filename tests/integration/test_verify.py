"""`pitr verify`, the restore drill, against a real PostgreSQL 15 cluster archiving to a
real S3 server (SeaweedFS). The drill runs the installed CLI, restores through
archive-get as the cluster user, and is judged by what it leaves behind: its
report in the repository, no scratch cluster, no listener, no WAL pushed.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import PITR_EXE, run_pitr, s3_repo_for, write_config
from support.pgcluster import PG_USER, PgCluster, free_port, make_user_dir

from pitr import config
from pitr.catalog import load_catalog
from pitr.errors import CheckFailed, Interrupted
from pitr.pg.names import segment_name
from pitr.repo import Repo
from pitr.storage.base import put_bytes, read_bytes

pytestmark = [pytest.mark.integration, pytest.mark.s3]


@dataclass
class Prod:
    cluster: PgCluster
    cfg: Path
    settings: dict[str, Any]
    base: Path
    backup_id: str

    def repo(self) -> Repo:
        cfg = config.load(self.cfg, env={})
        return Repo.open(cfg)

    def keys(self, prefix: str = "") -> set[str]:
        repo = self.repo()
        return {o.key for o in repo.storage.list(f"{repo.stanza}/{prefix}")}

    def config_with(self, name: str, extra_toml: str = "", **sections: Any) -> Path:
        settings = json.loads(json.dumps(self.settings))
        for key, value in sections.items():
            settings.setdefault(key, {}).update(value)
        path = write_config(self.base / name, settings)
        if extra_toml:
            path.write_text(path.read_text() + "\n" + extra_toml + "\n")
        return path


@pytest.fixture(scope="module")
def prod(workdir: Path, pitr_exe: Path, s3_server: Any, pg_bindir: Path) -> Iterator[Prod]:
    """A production cluster archiving to S3, with one base backup and WAL after it."""
    base = make_user_dir(workdir / f"verify-{uuid.uuid4().hex[:6]}", mode=0o755)
    cluster = PgCluster(base, "prod", bindir=pg_bindir)
    settings: dict[str, Any] = {
        "stanza": "prod",
        "repository": s3_repo_for(s3_server),
        "archive": {"spool_dir": str(make_user_dir(base / "spool"))},
        "postgres": {"bindir": str(pg_bindir), "user": PG_USER, "dsn": cluster.dsn,
                     "pgdata": str(cluster.pgdata)},
        "verify": {"scratch_dir": str(make_user_dir(base / "scratch", mode=0o755))},
    }
    cfg = write_config(base / "pitr.toml", settings)
    cluster.initdb(conf={"archive_mode": "on",
                         "archive_command": f"{pitr_exe} --config {cfg} archive-push %p"})
    cluster.start()
    try:
        cluster.pgbench_init(1)  # pgbench_accounts: 100000 rows, with a btree primary key
        cluster.sql("create table notes (id serial primary key, body text)")
        # the shapes the tables/amcheck checks must handle: partitions (and a partitioned
        # index), a materialized view, an unlogged table (empty after a restore), and a
        # foreign table whose server does not exist (reading it would fail: must be skipped)
        cluster.sql("""
            create table parted (id int primary key) partition by range (id);
            create table parted_1 partition of parted for values from (0) to (1000);
            insert into parted select generate_series(0, 999);
            create materialized view notes_count as select count(*) from notes;
            create unlogged table scratchpad (k int primary key);
            insert into scratchpad values (1);
            create extension postgres_fdw;
            create server nowhere foreign data wrapper postgres_fdw
                options (host '/nonexistent', port '1');
            create user mapping for public server nowhere;
            create foreign table remote_thing (x int) server nowhere;
        """)
        cluster.sql("create database app")
        cluster.sql("create table t (x int); insert into t select generate_series(1, 500)",
                    dbname="app")
        out = run_pitr(cfg, "backup", "--json")
        backup_id = json.loads(out.stdout)["id"]
        for _ in range(3):  # WAL after the backup: a drill replays it all
            cluster.sql("insert into notes (body) select md5(g::text) "
                        "from generate_series(1, 2000) g")
            last = cluster.switch_wal()
        cluster.wait_until(f"select last_archived_wal >= '{last}' from pg_stat_archiver")
        yield Prod(cluster, cfg, settings, base, backup_id)
    finally:
        cluster.stop("immediate")


class Webhook:
    """A loopback HTTP server that records what is POSTed to it."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/T0KEN-secret-path"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_cleaned_up(report: dict[str, Any]) -> None:
    scratch = report["scratch"]
    assert scratch["removed"] is True
    assert not Path(scratch["path"]).exists(), "scratch cluster left behind"
    assert port_free(scratch["port"])
    assert not (Path(scratch["socket_dir"]) / f".s.PGSQL.{scratch['port']}").exists()


USER_CHECKS = """
[[verify.check]]
name = "accounts"
query = "select count(*) from pgbench_accounts"
min = 100000

[[verify.check]]
name = "app rows"
database = "app"
query = "select sum(x) from t"
equals = 125250
"""


@pytest.mark.pg_versions(15, 18)
def test_good_backup_passes_writes_report_and_leaves_nothing(prod: Prod) -> None:
    cfg = prod.config_with("good.toml", USER_CHECKS)
    wal_before = prod.keys("wal/")
    all_before = prod.keys()

    proc = run_pitr(cfg, "--log-format", "json", "verify", "--json", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["backup_id"] == prod.backup_id
    names = {c["name"]: c for c in report["checks"]}
    assert {"plan", "wal_continuity", "recovery", "connect", "databases", "tables", "amcheck",
            "accounts", "app rows"} <= set(names)
    assert all(c["ok"] for c in report["checks"]), report["checks"]
    assert names["tables"]["data"]["rows"] >= 100000 + 6000 + 500 + 1000
    assert "remote_thing" not in json.dumps(report)
    assert names["amcheck"]["data"]["indexes"] > 0
    # checked against pg_basebackup's manifest, not skipped (docs/incremental-backups.md)
    assert names["pg_verifybackup"]["detail"].startswith("verified against"), names
    assert set(names["databases"]["data"]["databases"]) == {"postgres", "app"}
    assert report["rto_seconds"] > 0 and report["restored_bytes"] > 10_000_000
    assert report["wal_replayed_bytes"] > 3 * 16 * 2**20 - 2**20
    assert report["wal_segments"] >= 4

    # the report is in the repository, and in the log as one JSON line
    repo = prod.repo()
    key = report["report"]
    assert key.startswith("prod/verify/") and key in prod.keys("verify/")
    stored = json.loads(repo.storage.open(key).read())
    assert stored["ok"] is True and stored["rto_seconds"] == report["rto_seconds"]
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    final = [d for d in lines if d["event"] == "restore drill passed"]
    assert final and final[0]["command"] == "verify" and final[0]["report"] == key

    check_cleaned_up(report)
    # the copy promoted to a new timeline but archived nothing: only the report is new
    assert prod.keys("wal/") == wal_before
    assert prod.keys() - all_before == {key}
    assert not any("/00000002" in k for k in prod.keys("wal/"))


@pytest.mark.pg_versions(15, 18)  # pg_waldump's output of each major
def test_last_commit_finder_reads_commit_times_not_archive_times(prod: Prod) -> None:
    """The random drill target is bounded by the newest commit record in the archive;
    a restore to a time after it says so.

    A commit, then (2 s later) a segment with no transaction in it: its archive time
    is after the last commit, and a target there would end in PostgreSQL's FATAL
    "recovery ended before configured recovery target was reached"."""
    import time
    from datetime import timedelta

    from pitr.restore import last_commit_in_archive

    cluster = prod.cluster
    # an autovacuum ANALYZE commits too: none while we know which commit is the last
    cluster.sql("alter system set autovacuum = off")
    cluster.sql("select pg_reload_conf()")
    try:
        cluster.wait_until("select count(*) = 0 from pg_stat_activity "
                           "where backend_type = 'autovacuum worker'")
        before = cluster.scalar("select clock_timestamp()")
        cluster.sql("insert into notes (body) values ('the last commit')")
        after = cluster.scalar("select clock_timestamp()")
        cluster.switch_wal()
        time.sleep(2)
        cluster.sql("checkpoint")  # WAL without a commit, in a segment of its own
        last = cluster.switch_wal()
    finally:
        cluster.sql("alter system reset autovacuum")
        cluster.sql("select pg_reload_conf()")
    cluster.wait_until(f"select last_archived_wal >= '{last}' from pg_stat_archiver")

    repo = prod.repo()
    catalog = load_catalog(repo)
    backup = next(b for b in catalog.backups if b.id == prod.backup_id)
    started = time.monotonic()
    found = last_commit_in_archive(repo, catalog, backup, prod.cluster.bindir, budget=30)
    elapsed = time.monotonic() - started
    assert found is not None and found.tzinfo is not None
    assert before <= found <= after, (before, after, found)
    newest = catalog.segments[backup.timeline][-1]
    assert segment_name(newest.timeline, newest.segno) == last
    assert found < newest.archived_at - timedelta(seconds=1)  # exact, not the archive time
    print(f"last-commit finder: {elapsed * 1000:.0f} ms")

    # A restore to a time between that commit and the newest archive time passes the
    # planner but PostgreSQL cannot prove it reached it: the error says why and when.
    from pitr.errors import PostgresError
    from pitr.targets import format_time

    target = format_time(found + timedelta(seconds=1))
    dest = prod.base / "after-last-commit"
    try:
        proc = run_pitr(prod.cfg, "restore", "--pgdata", str(dest), "--to", target, "--start",
                        "--port", str(free_port()), "--wait-timeout", "120", check=False)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    assert proc.returncode == PostgresError.exit_code, proc.stdout + proc.stderr
    assert "recovery ended before reaching" in proc.stderr, proc.stderr
    assert f"ended at {format_time(found)}" in proc.stderr, proc.stderr
    assert "--latest" in proc.stderr


def test_failing_user_check_exits_nonzero_and_alerts(prod: Prod) -> None:
    hook = Webhook()
    try:
        cfg = prod.config_with("failing.toml", """
[[verify.check]]
name = "too many accounts"
query = "select count(*) from pgbench_accounts"
max = 10
""", monitor={"webhook_url": hook.url})
        # as root, like a hand-run drill: the copy still runs as postgres.user
        proc = run_pitr(cfg, "verify", "--random-point", "--seed", "7", user=None, check=False)
    finally:
        hook.close()
    assert proc.returncode == CheckFailed.exit_code, proc.stdout + proc.stderr
    assert "too many accounts" in proc.stderr and "FAIL" in proc.stdout
    assert len(hook.received) == 1, hook.received
    alert = hook.received[0]
    assert alert["pitr"]["event"] == "verify_failed"
    assert "too many accounts" in alert["text"] and "got 100000" in alert["text"]
    assert "T0KEN" not in json.dumps(alert)
    # the failed drill's report is stored too
    reports = sorted(prod.keys("verify/"))
    stored = json.loads(prod.repo().storage.open(reports[-1]).read())
    assert stored["ok"] is False and stored["random_seed"] == 7
    assert stored["target"]["kind"] == "time"
    # the target lies strictly before the newest commit PostgreSQL can replay
    from pitr.targets import parse_time

    assert parse_time(stored["target"]["time"]) < parse_time(stored["last_commit_in_archive"])
    check_cleaned_up(stored)


def test_sigterm_mid_drill_cleans_up_reports_and_exits_interrupted(prod: Prod) -> None:
    import signal
    import subprocess
    import time

    scratch_root = Path(prod.settings["verify"]["scratch_dir"])
    before = set(scratch_root.iterdir())
    reports_before = prod.keys("verify/")
    proc = subprocess.Popen([str(PITR_EXE), "--config", str(prod.cfg), "verify", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any((d / "data" / "postmaster.pid").exists()
                  for d in set(scratch_root.iterdir()) - before):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # systemd stopping the unit, or its timeout
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == Interrupted.exit_code, out + err
    assert set(scratch_root.iterdir()) == before, "scratch cluster left behind"
    (key,) = prod.keys("verify/") - reports_before
    stored = json.loads(prod.repo().storage.open(key).read())
    assert stored["ok"] is False and stored["scratch"]["removed"] is True
    assert any(c["name"] == "drill" and "SIGTERM" in c["detail"] for c in stored["checks"])
    assert port_free(stored["scratch"]["port"])


@pytest.mark.pg_versions(15, 18)
def test_deleted_wal_segment_fails_with_the_segment_named(prod: Prod) -> None:
    repo = prod.repo()
    catalog = load_catalog(repo)
    backup = next(b for b in catalog.backups if b.id == prod.backup_id)
    segs = catalog.segments[backup.timeline]
    stop_seg = backup.stop_lsn // catalog.segment_size
    after = [s for s in segs if s.segno > stop_seg]
    assert len(after) >= 2
    victim = after[0]
    name = segment_name(victim.timeline, victim.segno)
    first = segment_name(backup.timeline, backup.start_lsn // catalog.segment_size)
    # the module's other tests share this archive: put back what this one deletes
    saved = {k: read_bytes(repo.storage, k) for k in (repo.wal_key(name), repo.wal_key(first))}
    try:
        repo.storage.delete([repo.wal_key(name)])
        proc = run_pitr(prod.cfg, "verify", "--json", check=False)
        assert proc.returncode == CheckFailed.exit_code, proc.stderr
        report = json.loads(proc.stdout)
        failed = {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}
        assert set(failed) == {"wal_continuity"}, failed
        assert name in failed["wal_continuity"] and name in proc.stderr
        check_cleaned_up(report)

        # a segment the backup itself needs: the drill fails before restoring anything
        repo.storage.delete([repo.wal_key(first)])
        proc = run_pitr(prod.cfg, "verify", "--json", check=False)
        assert proc.returncode == CheckFailed.exit_code
        report = json.loads(proc.stdout)
        assert [c["name"] for c in report["checks"]] == ["plan"]
        assert first in report["checks"][0]["detail"]
        assert report["scratch"] == {}
    finally:
        for key, data in saved.items():
            put_bytes(repo.storage, key, data)
