"""The agent on demand: pure decisions, with the clock passed in (docs/archiving-modes.md)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pitr.fastpath import RESPAWN_AFTER, SPAWN_GRACE, spawn_due, starting_left
from pitr.wal.agent import idle_exit_due, status_wait
from pitr.wal.modes import ON_DEMAND, SYNCHRONOUS, SYSTEMD, UNKNOWN, archiving_mode

NOW = 1_000_000.0


def due(**kw: object) -> bool:
    args: dict = {"now": NOW, "agent_running": False, "idle_exit": 60.0, "pgdata": "/pg",
                  "last_spawn": None, "spawned_alive": True}
    args.update(kw)
    return spawn_due(**args)


def test_spawns_only_when_no_agent_runs_and_on_demand_is_enabled() -> None:
    assert due()
    assert not due(agent_running=True)
    assert not due(idle_exit=0.0)  # archive.agent_idle_exit = 0: synchronous
    assert not due(pgdata="")  # an agent cannot watch pg_wal without it


def test_a_recent_spawn_is_waited_for_not_repeated() -> None:
    assert not due(last_spawn=NOW - 1)
    assert not due(last_spawn=NOW - SPAWN_GRACE + 0.01)
    assert due(last_spawn=NOW - SPAWN_GRACE)  # it never took its lock: try again
    assert due(last_spawn=NOW + 3600)  # a marker from the future (clock step) is no excuse


def test_a_started_agent_that_died_is_replaced_but_not_in_a_loop() -> None:
    assert not due(last_spawn=NOW - RESPAWN_AFTER + 0.01, spawned_alive=False)
    assert due(last_spawn=NOW - RESPAWN_AFTER, spawned_alive=False)  # e.g. SIGKILL
    assert not due(last_spawn=NOW - RESPAWN_AFTER, spawned_alive=True)  # still starting


@given(st.one_of(st.none(), st.floats(-100, 100)), st.booleans())
def test_starting_window_is_bounded_by_the_grace(offset: float | None, alive: bool) -> None:
    last = None if offset is None else NOW - offset
    left = starting_left(NOW, last, alive)
    assert 0.0 <= left <= SPAWN_GRACE
    within = last is not None and 0 <= NOW - last < SPAWN_GRACE
    assert (left > 0) == (within and alive)  # a started agent that died is not waited for
    assert due(last_spawn=last, spawned_alive=True) == (not within)


def test_idle_exit_after_the_configured_time_only() -> None:
    assert not idle_exit_due(now=NOW, idle_since=None, idle_exit=5)  # has work
    assert not idle_exit_due(now=NOW, idle_since=NOW - 4.9, idle_exit=5)
    assert idle_exit_due(now=NOW, idle_since=NOW - 5, idle_exit=5)
    assert not idle_exit_due(now=NOW, idle_since=NOW - 1e6, idle_exit=0)  # a service agent


def test_the_status_file_is_written_at_most_once_an_interval() -> None:
    assert status_wait(now=NOW, written_at=None, interval=1.0) == 0.0  # the first at once
    assert status_wait(now=NOW, written_at=NOW - 0.25, interval=1.0) == 0.75
    assert status_wait(now=NOW, written_at=NOW - 1.0, interval=1.0) == 0.0
    assert status_wait(now=NOW, written_at=NOW - 9.0, interval=1.0) == 0.0


def mode(**kw: object) -> str:
    args: dict = {"agent_running": False, "agent_mode": None, "idle_exit": 60.0,
                  "pgdata": "/pg"}
    args.update(kw)
    return archiving_mode(**args)


def test_the_mode_in_effect() -> None:
    assert mode(agent_running=True, agent_mode="service") == SYSTEMD
    assert mode(agent_running=True, agent_mode=None) == SYSTEMD
    assert mode(agent_running=True, agent_mode="on-demand") == ON_DEMAND
    assert mode() == ON_DEMAND  # none running: the next archive-push starts one
    assert mode(idle_exit=0) == SYNCHRONOUS
    assert mode(pgdata="") == SYNCHRONOUS
    assert mode(agent_running=True, idle_exit=0) == SYSTEMD
    assert mode(agent_running=None) == UNKNOWN  # cannot tell: never guessed


def test_an_on_demand_agent_that_exited_idle_is_no_stale_agent() -> None:
    from datetime import timedelta

    from test_health import NOW as HNOW
    from test_health import TH, healthy_catalog

    from pitr.monitor.health import evaluate
    from pitr.wal.status import AgentStatus

    doc = {"updated_at": (HNOW - timedelta(hours=3)).isoformat(), "state": "stopped",
           "mode": "on-demand", "backlog": {"ready": 0}}
    on_demand = AgentStatus.from_json(doc)
    assert on_demand.mode == "on-demand"
    names = {f.name for f in evaluate(healthy_catalog(), on_demand, None, TH, HNOW).findings}
    assert "agent_stale" not in names
    service = AgentStatus.from_json({**doc, "mode": "service"})
    names = {f.name for f in evaluate(healthy_catalog(), service, None, TH, HNOW).findings}
    assert "agent_stale" in names  # a service agent that stopped is still said
    assert AgentStatus.from_json({k: v for k, v in doc.items() if k != "mode"}).mode == \
        "service"  # files of older agents


def test_check_and_status_read_the_mode_from_the_lock_and_the_status(tmp_path: object) -> None:
    import json
    import os
    from pathlib import Path

    from pitr import config
    from pitr.check import check_mode
    from pitr.wal.spool import Spool, try_lock

    d = Path(str(tmp_path))
    toml = d / "pitr.toml"

    def cfg(idle: int) -> config.Config:
        toml.write_text(f'stanza = "main"\n[repository]\nurl = "file://{d}/repo"\n'
                        f'[archive]\nspool_dir = "{d}/spool"\nagent_idle_exit = {idle}\n'
                        f'[postgres]\npgdata = "{d}/pg"\n')
        return config.load(toml, env={})

    assert "on-demand agent" in check_mode(cfg(60)).detail
    assert check_mode(cfg(0)).detail.startswith("synchronous")
    spool = Spool(d / "spool", "main").ensure()
    fd = try_lock(spool.agent_lock)  # an agent runs
    assert fd is not None
    try:
        spool.status_path.write_text(json.dumps({"updated_at": "2026-01-01T00:00:00+00:00",
                                                 "mode": "service"}))
        assert check_mode(cfg(0)).detail.startswith("systemd agent")
        spool.status_path.write_text(json.dumps({"updated_at": "2026-01-01T00:00:00+00:00",
                                                 "mode": "on-demand"}))
        result = check_mode(cfg(60))
        assert result.status == "ok" and "running now" in result.detail
    finally:
        os.close(fd)
