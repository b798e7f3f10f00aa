"""`pitr agent` against real PostgreSQL 15 clusters and a real S3 server (SeaweedFS).

PostgreSQL runs `pitr archive-push` as its archive_command as the cluster user;
the agent runs as that user too, as systemd would run it. No mocks.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import s3_repo_for
from support.pgcluster import PgCluster, as_user_cmd

from pitr import config
from pitr.codec import decompress_blob
from pitr.repo import Repo
from pitr.setup import archive_commands, proof_dir_of
from pitr.storage.base import put_bytes, read_bytes
from pitr.wal.spool import Spool, lock_held

pytestmark = [pytest.mark.integration, pytest.mark.s3]

SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")


def _live_pid(lock: Path) -> int | None:
    """The pid the lock file names once it names a live process. The agent writes it just
    after taking the flock, so right after a restart the file is empty for a moment or
    still names the killed agent (the CI failure of the kill -9 test)."""
    words = lock.read_text().split()
    if not words:
        return None
    try:
        os.kill(int(words[0]), 0)
    except ProcessLookupError:
        return None
    return int(words[0])


class AgentProc:
    """`pitr agent` run as the cluster user; signals go to the agent itself (its pid
    is in the flock'ed agent.lock), not to runuser."""

    def __init__(self, pitr_exe: Path, cfg: Path, spool: Spool, log: Path) -> None:
        self.spool = spool
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                as_user_cmd([str(pitr_exe), "--config", str(cfg), "agent", "--rescan", "0.5"]),
                stdout=out, stderr=subprocess.STDOUT,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
        deadline = time.monotonic() + 60
        while not (lock_held(spool.agent_lock) and spool.status_path.exists()
                   and (pid := _live_pid(spool.agent_lock))):
            assert self.proc.poll() is None, f"agent exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"agent did not start: {log.read_text()}"
            time.sleep(0.05)
        self.pid = pid

    def signal(self, sig: int) -> int:
        os.kill(self.pid, sig)
        return self.proc.wait(timeout=60)

    def alive(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture
def agents() -> Iterator[list[AgentProc]]:
    started: list[AgentProc] = []
    yield started
    for a in started:
        if a.alive():
            a.signal(signal.SIGKILL)


def status(spool: Spool) -> dict[str, Any]:
    doc = spool.read_status()
    assert doc is not None
    return doc


def wait_for(pred: Any, what: str, timeout: float = 180, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def repo_names(cfg: Path) -> set[str]:
    c = config.load(cfg, env={})
    repo = Repo.open(c)
    return {n for n in (Repo.wal_name_of(o.key) for o in repo.storage.list(repo.wal_prefix)) if n}


def done_segments(pg: PgCluster) -> set[str]:
    status_dir = pg.pgdata / "pg_wal" / "archive_status"
    return {p.name[:-5] for p in status_dir.glob("*.done") if SEGMENT_RE.match(p.name[:-5])}


def fast_path_names(spool: Spool) -> list[str]:
    if not spool.fastpath_log.exists():
        return []
    return [line.split()[1] for line in spool.fastpath_log.read_text().splitlines()
            if "fast-path" in line]


def make_segments(pg: PgCluster, count: int) -> list[str]:
    pg.sql("create table if not exists t (i int, note text)")
    names = []
    for _ in range(count):
        pg.sql("insert into t select g, md5(g::text) from generate_series(1, 200) g")
        names.append(pg.switch_wal())
    return names


def wait_archived(pg: PgCluster, segment: str, timeout: float = 300) -> None:
    pg.wait_until(f"select last_archived_wal >= '{segment}' from pg_stat_archiver",
                  timeout=timeout)


def setup_cluster(pg_factory: Any, pitr_config: Any, testdir: Path, pitr_exe: Path,
                  repo: dict[str, Any], *, live: bool = True,
                  **archive: Any) -> tuple[PgCluster, Path, Spool]:
    cfg = pitr_config(repository={**repo, "timeout": 30},
                      archive={"fast_path_wait": 10, "workers": 4, **archive},
                      postgres={"pgdata": str(testdir / "pg" / "data")},
                      monitor={"port": 0})
    pg: PgCluster = pg_factory("pg", conf={
        "archive_mode": "on",
        # An empty archive_command lets .ready files pile up (PostgreSQL 15) while
        # only the agent works on them.
        "archive_command": f"{pitr_exe} --config {cfg} archive-push %p" if live else "",
        "wal_keep_size": "4GB",
    })
    c = config.load(cfg, env={})
    return pg, cfg, Spool(c.archive.spool_dir, c.stanza)


def backlog_with_agent(pg_factory: Any, pitr_config: Any, testdir: Path, pitr_exe: Path,
                       repo: dict[str, Any], agents: list[AgentProc], count: int,
                       ) -> tuple[PgCluster, Path, Spool, AgentProc, list[str]]:
    """An agent, then ``count`` segments PostgreSQL holds as .ready (no archive_command)."""
    pg, cfg, spool = setup_cluster(pg_factory, pitr_config, testdir, pitr_exe, repo,
                                   live=False)
    agents.append(agent := AgentProc(pitr_exe, cfg, spool, testdir / "agent.log"))
    pg.start()
    return pg, cfg, spool, agent, make_segments(pg, count)


def test_burst_is_archived_through_the_fast_path_and_works_without_agent(
        pg_factory: Any, pitr_exe: Path, pitr_config: Any, s3_repo: dict[str, Any],
        testdir: Path, agents: list[AgentProc]) -> None:
    pg, cfg, spool = setup_cluster(pg_factory, pitr_config, testdir, pitr_exe, s3_repo)
    agents.append(agent := AgentProc(pitr_exe, cfg, spool, testdir / "agent.log"))
    pg.start()
    burst = make_segments(pg, 64)
    wait_archived(pg, burst[-1])

    assert pg.archiver_stats()["failed_count"] == 0, pg.log_tail()
    done = done_segments(pg)
    assert set(burst) <= done
    assert done <= repo_names(cfg)
    answered = set(fast_path_names(spool))
    # Every segment of the burst was answered from a receipt: the agent stored it first.
    assert set(burst) <= answered, sorted(set(burst) - answered)

    doc = wait_for(lambda: (d := status(spool))["backlog"]["ready"] == 0 and d,
                   "the agent to see an empty backlog", timeout=30)
    assert doc["state"] == "running"
    assert doc["failures"]["total"] == 0
    assert doc["totals"]["stored"] + doc["totals"]["already_archived"] >= 64
    assert doc["last_stored"]["name"] >= burst[-1]
    assert doc["backlog"]["oldest_age_seconds"] is None

    assert agent.signal(signal.SIGTERM) == 0
    assert status(spool)["state"] == "stopped"
    assert not lock_held(spool.agent_lock)

    # Without the agent, archive-push pushes synchronously, exactly as before.
    later = make_segments(pg, 3)
    wait_archived(pg, later[-1])
    assert set(later) <= repo_names(cfg)
    assert not set(later) & set(fast_path_names(spool))
    assert pg.archiver_stats()["failed_count"] == 0


def test_shell_fast_path_answers_from_the_agents_proofs_and_falls_back(
        pg_factory: Any, pitr_exe: Path, pitr_config: Any, s3_repo: dict[str, Any],
        testdir: Path, agents: list[AgentProc]) -> None:
    # `pitr setup` writes archive_command through pitr/archive-push.sh: a segment the
    # agent stored is answered without starting Python; anything else runs pitr.
    pg, cfg, spool, agent, burst = backlog_with_agent(
        pg_factory, pitr_config, testdir, pitr_exe, s3_repo, agents, 16)
    wait_for(lambda: (d := status(spool))["backlog"]["pending"] == 0
             and d["backlog"]["ready"] >= len(burst), "the agent to store the burst")
    push, _ = archive_commands(str(pitr_exe), str(cfg), proof_dir_of(config.load(cfg, env={})))
    assert push.startswith("/bin/sh ")
    pg.sql("alter system set archive_command = '{}'".format(push.replace("'", "''")))
    pg.sql("select pg_reload_conf()")
    wait_archived(pg, burst[-1])
    assert pg.archiver_stats()["failed_count"] == 0, pg.log_tail()
    lines = spool.fastpath_log.read_text().splitlines()
    by_shell = {line.split()[1] for line in lines if line.endswith(" fast-path-sh")}
    assert set(burst) <= by_shell, sorted(set(burst) - by_shell)
    assert set(burst) <= repo_names(cfg)

    # No agent, no proof: the same archive_command pushes through pitr itself.
    assert agent.signal(signal.SIGTERM) == 0
    later = make_segments(pg, 2)
    wait_archived(pg, later[-1])
    assert set(later) <= repo_names(cfg)
    assert not set(later) & set(fast_path_names(spool))
    assert pg.archiver_stats()["failed_count"] == 0, pg.log_tail()


# Was intermittent: the kill sometimes lands after an upload's request headers
# and before its body, and SeaweedFS then keeps an EMPTY object under the name,
# which every later push refused as "stored object is truncated". push_wal now
# replaces an empty object (test_empty_object_left_by_an_interrupted_upload_...).
def test_kill_9_and_restart_loses_nothing_and_conflicts_with_nothing(
        pg_factory: Any, pitr_exe: Path, pitr_config: Any, s3_repo: dict[str, Any],
        testdir: Path, agents: list[AgentProc]) -> None:
    pg, cfg, spool, first, burst = backlog_with_agent(
        pg_factory, pitr_config, testdir, pitr_exe, s3_repo, agents, 40)
    wait_for(lambda: len(list(spool.archive_dir.glob("*.ok"))) >= 8, "some receipts")
    first.signal(signal.SIGKILL)
    assert not lock_held(spool.agent_lock), "a killed agent's flock must be gone"
    # A crash between "stored" and "proof written" (the proof is the last write: the
    # receipt of every other one stays): drop some proofs. The restarted agent must
    # find those objects already archived, not conflicting.
    receipts = sorted(spool.archive_dir.glob("*.ok"))
    dropped = receipts[: len(receipts) // 2]
    for i, p in enumerate(dropped):
        for proof in spool.proof_dir(config.load(cfg, env={}).repository.url).glob(
                p.name.removesuffix(".ok") + "_*"):
            proof.unlink()
        if i % 2:
            p.unlink()
    # A crash between writing a receipt's temp file and renaming it.
    torn = spool.archive_dir / f".{receipts[-1].name}.999999.tmp"
    torn.write_text("{")
    os.utime(torn, (time.time() - 3600, time.time() - 3600))

    agents.append(AgentProc(pitr_exe, cfg, spool, testdir / "agent2.log"))
    try:
        doc = wait_for(lambda: (d := status(spool))["backlog"]["pending"] == 0
                       and d["backlog"]["ready"] >= len(burst) and d,
                       "the restarted agent to store every .ready segment")
    except AssertionError as exc:
        log2 = (testdir / "agent2.log").read_text(errors="replace")[-4000:]
        raise AssertionError(f"{exc}\nstatus: {status(spool)}\nagent2.log tail:\n{log2}") \
            from None
    assert doc["failures"]["total"] == 0, doc
    assert doc["totals"]["already_archived"] >= len(dropped), (doc, dropped)
    assert not list(spool.archive_dir.glob("*.error")), (testdir / "agent2.log").read_text()
    assert not torn.exists(), "a killed writer's temp file outlives the cleanup"

    pg.sql(f"alter system set archive_command = '{pitr_exe} --config {cfg} archive-push %p'")
    pg.sql("select pg_reload_conf()")
    wait_archived(pg, burst[-1])
    assert pg.archiver_stats()["failed_count"] == 0, pg.log_tail()
    assert set(burst) <= repo_names(cfg)
    assert set(burst) <= set(fast_path_names(spool)), \
        (sorted(set(burst) - set(fast_path_names(spool))), (testdir / "agent2.log").read_text())


def stored_bytes_of(cfg: Path, name: str) -> bytes:
    c = config.load(cfg, env={})
    repo = Repo.open(c)
    return decompress_blob(read_bytes(repo.storage, repo.wal_key(name)), name)


def plant_empty_object(cfg: Path, name: str) -> None:
    """What SeaweedFS keeps of a PUT whose writer died between headers and body."""
    c = config.load(cfg, env={})
    repo = Repo.open(c)
    put_bytes(repo.storage, repo.wal_key(name), b"", if_absent=True)


def next_segment(pg: PgCluster) -> str:
    """Write a little, and name the segment the next switch_wal will complete."""
    pg.sql("create table if not exists t (i int, note text)")
    pg.sql("insert into t select g, md5(g::text) from generate_series(1, 200) g")
    return str(pg.scalar("select pg_walfile_name(pg_current_wal_insert_lsn())"))


def test_empty_object_left_by_an_interrupted_upload_does_not_block_the_name(
        pg_factory: Any, pitr_exe: Path, pitr_config: Any, s3_repo: dict[str, Any],
        testdir: Path, agents: list[AgentProc]) -> None:
    pg, cfg, spool = setup_cluster(pg_factory, pitr_config, testdir, pitr_exe, s3_repo,
                                   live=False)
    pg.start()
    # The agent's path.
    agents.append(agent := AgentProc(pitr_exe, cfg, spool, testdir / "agent.log"))
    plant_empty_object(cfg, first := next_segment(pg))
    assert pg.switch_wal() == first
    doc = wait_for(lambda: (d := status(spool))["backlog"]["pending"] == 0
                   and (d["last_stored"] or {}).get("name") == first and d,
                   f"the agent to store {first}", timeout=60)
    assert doc["failures"]["total"] == 0, (doc, (testdir / "agent.log").read_text())
    assert doc["totals"]["stored"] >= 1
    assert "replaced an empty object" in (testdir / "agent.log").read_text()
    assert stored_bytes_of(cfg, first) == (pg.pgdata / "pg_wal" / first).read_bytes()
    assert agent.signal(signal.SIGTERM) == 0

    # PostgreSQL's own archive-push, no agent.
    plant_empty_object(cfg, second := next_segment(pg))
    pg.sql(f"alter system set archive_command = '{pitr_exe} --config {cfg} archive-push %p'")
    pg.sql("select pg_reload_conf()")
    assert pg.switch_wal() == second
    wait_archived(pg, second, timeout=60)
    assert pg.archiver_stats()["failed_count"] == 0, pg.log_tail()
    assert stored_bytes_of(cfg, second) == (pg.pgdata / "pg_wal" / second).read_bytes()


def test_s3_outage_during_a_burst_resumes_and_loses_nothing(
        pg_factory: Any, pitr_exe: Path, pitr_config: Any, s3_server_private: Any,
        testdir: Path, agents: list[AgentProc]) -> None:
    server = s3_server_private
    pg, cfg, spool = setup_cluster(pg_factory, pitr_config, testdir, pitr_exe,
                                   s3_repo_for(server))
    agents.append(agent := AgentProc(pitr_exe, cfg, spool, testdir / "agent.log"))
    pg.start()
    before = make_segments(pg, 12)
    server.stop()
    during = make_segments(pg, 12)
    # The outage shows in the backlog metrics while it lasts.
    wait_for(lambda: status(spool)["backlog"]["ready"] >= 6, "a backlog during the outage",
             timeout=30)
    time.sleep(3)
    server.start()
    wait_archived(pg, during[-1])
    assert agent.alive()
    assert set(before + during) <= repo_names(cfg)
    assert done_segments(pg) <= repo_names(cfg)
    doc = wait_for(lambda: (d := status(spool))["backlog"]["ready"] == 0 and d,
                   "the backlog to drain", timeout=60)
    assert doc["state"] == "running"
    print(json.dumps(doc, indent=1))
