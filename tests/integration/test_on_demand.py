"""The agent on demand (docs/archiving-modes.md): the README's plain archive_command,
no systemd agent, real PostgreSQL 15 and a real S3 server (SeaweedFS).

archive-push itself starts `pitr agent --on-demand` when none runs; the agent
exits after ``archive.agent_idle_exit`` seconds without work. Faults are real: the
agent is killed with SIGKILL in the middle of a burst.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_pitr
from support.pgcluster import PgCluster, as_user_cmd
from test_agent import done_segments, fast_path_names, make_segments, repo_names, wait_archived
from test_agent import wait_for as wait_until

from pitr import config, fastpath
from pitr.wal.spool import Spool, lock_held

pytestmark = [pytest.mark.integration, pytest.mark.s3]

IDLE_EXIT = 4  # seconds: short, so the test sees the agent leave


def agent_pid(spool: Spool) -> int | None:
    """The running agent's pid (from its flock'ed lock file), None when none runs."""
    if not lock_held(spool.agent_lock):
        return None
    words = spool.agent_lock.read_text().split()
    return int(words[0]) if words else None


@pytest.fixture
def on_demand(pg_factory: Any, pitr_config: Any, testdir: Path, pitr_exe: Path,
              s3_repo: dict[str, Any]) -> Iterator[tuple[PgCluster, Path, Spool]]:
    cfg = pitr_config(repository={**s3_repo, "timeout": 30},
                      archive={"fast_path_wait": 10, "workers": 4,
                               "agent_idle_exit": IDLE_EXIT},
                      postgres={"pgdata": str(testdir / "pg" / "data")},
                      monitor={"port": 0})
    pg: PgCluster = pg_factory("pg", conf={
        "archive_mode": "on",
        "archive_command": f"{pitr_exe} --config {cfg} archive-push %p",  # README's plain one
        "wal_keep_size": "4GB",
    })
    pg.server_env = {}  # the on-demand agent as users get it (tests/support/pgcluster.py)
    c = config.load(cfg, env={})
    spool = Spool(c.archive.spool_dir, c.stanza)
    yield pg, cfg, spool
    pid = agent_pid(spool)
    if pid is not None:  # never leave an agent behind
        os.kill(pid, signal.SIGKILL)


def agents_started(spool: Spool) -> int:
    log = spool.agent_log
    return log.read_text().count("agent started") if log.exists() else 0


def status_json(cfg: Path) -> dict[str, Any]:
    proc = run_pitr(cfg, "status", "--json", check=False)  # 14: no backup yet, still a report
    return dict(json.loads(proc.stdout))


def test_a_burst_starts_one_agent_which_exits_when_idle(
        on_demand: tuple[PgCluster, Path, Spool]) -> None:
    pg, cfg, spool = on_demand
    assert status_json(cfg)["archive"]["mode"]["mode"] == "on-demand-agent"  # none yet
    pg.start()
    burst = make_segments(pg, 64)
    pid = agent_pid(spool)
    assert pid is not None, spool.agent_log.read_text()
    mode = status_json(cfg)["archive"]["mode"]
    assert mode["mode"] == "on-demand-agent" and mode["agent_running"] is True
    wait_archived(pg, burst[-1])

    assert pg.archiver_stats()["failed_count"] == 0, pg.log_tail()
    done = done_segments(pg)
    assert set(burst) <= done and done <= repo_names(cfg)
    assert agents_started(spool) == 1, spool.agent_log.read_text()
    assert "another pitr agent is running" not in spool.agent_log.read_text()
    # The agent did the work: archive-push answered from its proofs (the first
    # segments may have gone synchronously while it was still starting).
    answered = set(fast_path_names(spool))
    assert len(set(burst) & answered) >= len(burst) // 2, sorted(set(burst) - answered)

    wait_until(lambda: agent_pid(spool) is None, "the idle agent to exit", timeout=120)
    # and its process to be gone: an archive-push that finds the agent it started alive
    # but without its lock (still exiting) pushes synchronously and starts none
    wait_until(lambda: not fastpath.pid_alive(pid), "the idle agent's process to end",
               timeout=60)
    doc = spool.read_status()
    assert doc is not None and doc["state"] == "stopped"
    assert doc["mode"] == "on-demand" and doc["exit_reason"] == "idle"
    assert doc["failures"]["total"] == 0
    report = status_json(cfg)
    assert report["archive"]["mode"]["agent_running"] is False
    assert "agent_stale" not in {p["name"] for p in report["problems"]}  # exiting is normal

    # The next segment starts a new one.
    later = make_segments(pg, 1)
    wait_archived(pg, later[-1])
    assert set(later) <= repo_names(cfg)
    assert agents_started(spool) == 2


def test_an_agent_killed_mid_burst_loses_nothing(
        on_demand: tuple[PgCluster, Path, Spool]) -> None:
    pg, cfg, spool = on_demand
    pg.start()
    made: list[str] = []
    writer = threading.Thread(target=lambda: made.extend(make_segments(pg, 48)))
    writer.start()
    try:
        pid = wait_until(lambda: agent_pid(spool), "an agent to be started", timeout=120)
        wait_until(lambda: len(fast_path_names(spool)) >= 4, "the agent to store some",
                   timeout=120)
        os.kill(pid, signal.SIGKILL)
    finally:
        writer.join()
    wait_archived(pg, made[-1])

    assert pg.archiver_stats()["failed_count"] == 0, pg.log_tail()
    stored = repo_names(cfg)
    assert set(made) <= stored, sorted(set(made) - stored)
    assert done_segments(pg) <= stored
    assert agent_pid(spool) != pid  # the killed one is gone; a new one may run


def test_the_systemd_agent_takes_over_from_an_on_demand_one(
        on_demand: tuple[PgCluster, Path, Spool], pitr_exe: Path, testdir: Path) -> None:
    """systemd starts pitr-agent.service after PostgreSQL, whose archive-push may already
    have started an on-demand agent: the service asks it to stop and takes its place."""
    pg, cfg, spool = on_demand
    pg.start()
    first = make_segments(pg, 2)
    wait_until(lambda: (d := spool.read_status()) and d.get("mode") == "on-demand"
               and d.get("state") == "running", "an on-demand agent")
    with open(testdir / "service.log", "ab") as out:
        service = subprocess.Popen(
            as_user_cmd([str(pitr_exe), "--config", str(cfg), "agent", "--rescan", "0.5"]),
            stdout=out, stderr=subprocess.STDOUT,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
    try:
        wait_until(lambda: (d := spool.read_status()) and d.get("mode") == "service"
                   and d.get("state") == "running", "the service agent to take over",
                   timeout=120)
        assert service.poll() is None, (testdir / "service.log").read_text()
        later = make_segments(pg, 3)
        wait_archived(pg, later[-1])
        assert set(first + later) <= repo_names(cfg)
        assert pg.archiver_stats()["failed_count"] == 0, pg.log_tail()
        assert agents_started(spool) == 1  # archive-push started no other meanwhile
        assert status_json(cfg)["archive"]["mode"]["mode"] == "systemd-agent"
    finally:
        pid = agent_pid(spool)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        service.wait(timeout=60)
