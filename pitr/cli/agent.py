"""`pitr agent` (the archiving daemon) and the hidden `pitr prefetch-worker`."""

from __future__ import annotations

from typing import Annotated

import typer

from pitr.cli.app import app, examples, load_config


@app.command("agent", epilog=examples(
    "runuser -u postgres -- pitr --config /etc/pitr/pitr.toml agent",
    "systemctl enable --now pitr-agent.service    # the same, as a service"))
def agent(
    rescan: Annotated[float, typer.Option(
        "--rescan", help="seconds between full rescans of archive_status "
                         "(events from watchdog wake it sooner)")] = 1.0,
    on_demand: Annotated[bool, typer.Option(
        "--on-demand", help="exit after archive.agent_idle_exit seconds without work, "
                            "without the monitoring server (how archive-push starts it)")] = False,
) -> None:
    """Push .ready WAL segments ahead of PostgreSQL so archive-push answers at once.

    Runs until SIGTERM; writes receipts and agent-status.json under
    archive.spool_dir, and serves /health/backup and /metrics on monitor.listen:port
    (monitor.port = 0: off). Run it as the PostgreSQL OS user (systemd/pitr-agent.service).
    Without it, archive-push starts `pitr agent --on-demand` itself
    (docs/archiving-modes.md).
    """
    from pitr.monitor.server import maybe_start_server
    from pitr.wal.agent import Agent

    cfg = load_config(command="agent")
    agent_ = Agent(cfg, rescan_interval=rescan, on_demand=on_demand)
    # monitoring must never stop archiving: warns only. An agent that comes and goes
    # with the WAL does not serve it (`pitr serve` does, docs/archiving-modes.md).
    health = None if on_demand else maybe_start_server(cfg)
    try:
        code = agent_.run()
    finally:
        if health is not None:
            health.stop()
    raise typer.Exit(code)


@app.command("prefetch-worker", hidden=True, epilog=examples(
    "pitr prefetch-worker --datadir /srv/pg-restored --idle-exit 20"
    "    # archive-get starts it"))
def prefetch_worker(
    idle_exit: Annotated[float, typer.Option(
        "--idle-exit", help="exit after this many seconds without a request")] = 20.0,
    datadir: Annotated[str, typer.Option(
        "--datadir", help="data directory of the restore it serves (default: the working "
        "directory, where PostgreSQL runs restore_command)")] = "",
) -> None:
    """Background fetcher started by archive-get (not meant to be run by hand)."""
    import os

    from pitr.wal.prefetch import run_worker

    cfg = load_config(command="prefetch-worker")
    raise typer.Exit(run_worker(cfg, datadir=datadir or os.getcwd(), idle_exit=idle_exit))
