"""A catch_up repository (docs/multiple-repositories.md) with real parts: a local directory
as the required repository, a bucket on a SeaweedFS server of this test's own as the
catch_up one (stopped with SIGSTOP during a burst), PostgreSQL archiving through
`pitr archive-push` and a running `pitr agent`."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_pitr, s3_repo_for
from support.pgcluster import PgCluster, chown_user, make_user_dir
from test_agent import AgentProc, agents  # noqa: F401 - the fixture
from test_multi_repo import has, make_segments, repos_of

from pitr import config
from pitr.monitor.collect import health_report
from pitr.monitor.metrics import render
from pitr.wal.catchup import Backlog
from pitr.wal.fetch import fetch_to_bytes
from pitr.wal.spool import Spool

pytestmark = [pytest.mark.integration, pytest.mark.s3]


def wait_drained(backlog: Backlog, testdir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while backlog.entries():
        assert time.monotonic() < deadline, (testdir / "agent.log").read_text()[-3000:]
        time.sleep(0.1)


def test_a_burst_while_the_catch_up_repository_is_down_is_filled_later(
        pg_factory: Any, pitr_exe: Path, pitr_config: Any, s3_server_private: Any,
        testdir: Path, agents: list[AgentProc]) -> None:  # noqa: F811
    offsite = {**s3_repo_for(s3_server_private), "name": "offsite", "mode": "catch_up",
               "timeout": 4, "request_timeout": 1}
    cfg = testdir / "pitr.toml"
    pg: PgCluster = pg_factory("pg", conf={
        "archive_mode": "on", "wal_keep_size": "1GB",
        "archive_command": f"{pitr_exe} --config {cfg} archive-push %p"})
    assert cfg == pitr_config(repository={"name": "local"},  # the local directory: required
                              repositories=[offsite],
                              archive={"agent_idle_exit": 0, "fast_path_wait": 10,
                                       "prefetch": 0},
                              postgres={"pgdata": str(pg.pgdata), "dsn": pg.dsn},
                              monitor={"port": 0, "max_catch_up_lag": 3600})
    c = config.load(cfg, env={})
    spool = Spool(c.archive.spool_dir, c.stanza)
    backlog = Backlog(spool.base, "offsite")
    agents.append(AgentProc(pitr_exe, cfg, spool, testdir / "agent.log"))
    pg.start()
    repos = repos_of(cfg)

    before = make_segments(pg, 2)
    pg.wait_until(f"select last_archived_wal >= '{before[-1]}' from pg_stat_archiver")
    # (a segment pushed before the agent proved the catch_up repository goes through
    # the backlog: drained within a second)
    wait_drained(backlog, testdir, 30)
    assert all(has(repos["offsite"], n) for n in before)

    s3_server_private.pause()
    try:
        burst = make_segments(pg, 4)
        pg.wait_until(f"select last_archived_wal >= '{burst[-1]}' from pg_stat_archiver",
                      timeout=120)
        # PostgreSQL never had to retry: each segment was durable in the required one
        assert pg.archiver_stats()["failed_count"] == 0, pg.archiver_stats()
        assert all(has(repos["local"], n) for n in burst)
        assert {n for n, _ in backlog.entries()} == set(burst)
        doc = json.loads(run_pitr(cfg, "status", "--json", check=False).stdout)
        lag = doc["catch_up"][0]
        # (the agent's workers offer segments in parallel: any of them may be queued first)
        assert (lag["repository"], lag["segments"]) == ("offsite", 4), lag
        assert lag["oldest"] in burst, lag
        assert lag["oldest_age"] >= 0
        text = render(health_report(c)).decode()
        assert 'pitr_repository_wal_lag_segments{repo="offsite",stanza="test"} 4.0' in text
        # the required repository proves a later segment absent although the catch_up
        # one cannot answer: "absent" (exit 1), which PostgreSQL's recovery can rely on
        datadir = make_user_dir(testdir / "recovering", mode=0o700)
        make_user_dir(datadir / "global")
        make_user_dir(datadir / "pg_wal")
        shutil.copy(pg.pgdata / "global" / "pg_control", datadir / "global" / "pg_control")
        chown_user(datadir / "global" / "pg_control")
        got = run_pitr(cfg, "archive-get", "0000000100000000000000F0",
                       str(datadir / "pg_wal" / "RECOVERYXLOG"), check=False)
        assert got.returncode == 1, got.stderr
        # `pitr check`: the catch_up repository fails its own line, while the archive
        # check (a switched segment durable in every required repository) passes
        proc = run_pitr(cfg, "check", "--json", check=False)
        checks = {r["name"]: r["status"] for r in json.loads(proc.stdout)["checks"]}
        assert checks["repository local"] == "ok", checks
        assert checks["repository offsite"] != "ok", checks
        assert checks["archive"] == "ok", checks
    finally:
        s3_server_private.resume()
    back = time.monotonic()
    waiting = len(backlog.entries())  # the burst and the segment `pitr check` switched
    wait_drained(backlog, testdir, 120)
    catch_up_lag = time.monotonic() - back
    print(f"\ncatch-up lag: {catch_up_lag:.2f}s from the repository's return to lag 0 "
          f"({waiting} segments)")
    for name in [*before, *burst]:
        original = (pg.pgdata / "pg_wal" / name).read_bytes()
        assert fetch_to_bytes(repos["offsite"], name, budget=10) == original, name
    doc = json.loads(run_pitr(cfg, "status", "--json", check=False).stdout)
    assert doc["catch_up"][0]["segments"] == 0, doc["catch_up"]
    assert "catch_up_lag" not in {p["name"] for p in doc["problems"]}
    text = render(health_report(c)).decode()
    assert 'pitr_repository_wal_lag_segments{repo="offsite",stanza="test"} 0.0' in text
