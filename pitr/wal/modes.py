"""Which archiving mode is in effect: systemd agent, on-demand agent or synchronous.

``pitr check`` and ``pitr status`` (and their ``--json``) say it; the modes are
described for users in docs/archiving-modes.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pitr import fastpath as fp

if TYPE_CHECKING:
    from pitr.config import Config

SYSTEMD = "systemd-agent"
ON_DEMAND = "on-demand-agent"
SYNCHRONOUS = "synchronous"
UNKNOWN = "unknown"


def archiving_mode(*, agent_running: bool | None, agent_mode: str | None,
                   idle_exit: float, pgdata: str) -> str:
    """PURE: the mode in effect.

    ``agent_running``: the agent lock is held (None: this process cannot tell, e.g.
    another OS user); ``agent_mode``: what the running agent wrote into
    agent-status.json ("service" or "on-demand"). A service agent is what
    systemd/pitr-agent.service runs (or `pitr agent` by hand).
    """
    if agent_running is None:
        return UNKNOWN
    if agent_running:
        return ON_DEMAND if agent_mode == "on-demand" else SYSTEMD
    if idle_exit > 0 and pgdata:
        return ON_DEMAND
    return SYNCHRONOUS


def describe(mode: str, *, agent_running: bool | None, idle_exit: float) -> str:
    """PURE: one line for people."""
    if mode == SYSTEMD:
        return "systemd agent: `pitr agent` runs as a service and stores segments ahead"
    if mode == ON_DEMAND:
        now = "running now" if agent_running else \
            "none running now: the next archive-push starts one"
        return (f"on-demand agent: archive-push starts `pitr agent --on-demand`, which exits "
                f"after {idle_exit:g} s idle ({now})")
    if mode == SYNCHRONOUS:
        return ("synchronous: each archive-push stores its segment itself "
                "(archive.agent_idle_exit = 0 or no postgres.pgdata, and no agent runs)")
    return "unknown: cannot read the agent lock (run as the PostgreSQL OS user)"


def current(cfg: Config, agent_mode: str | None) -> dict[str, Any]:
    """The mode of ``cfg``'s stanza now, as a JSON-ready dict (reads the agent lock)."""
    running = fp.lock_state(cfg.spool_path / fp.AGENT_LOCK)
    idle_exit = float(cfg.archive.agent_idle_exit)
    mode = archiving_mode(agent_running=running, agent_mode=agent_mode, idle_exit=idle_exit,
                          pgdata=cfg.postgres.pgdata)
    return {"mode": mode, "agent_running": running, "agent_idle_exit": idle_exit,
            "detail": describe(mode, agent_running=running, idle_exit=idle_exit)}
