"""`pitr backup` and `pitr list`."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from pitr.cli.app import JsonFlag, app, examples, load_config, print_json
from pitr.errors import LockedError, PitrError


class Label(StrEnum):
    manual = "manual"
    scheduled = "scheduled"


@app.command("backup", epilog=examples(
    "pitr backup",
    "pitr backup --pin --json",
    "pitr backup --label scheduled    # what pitr-backup.timer runs"))
def backup(
    label: Annotated[Label, typer.Option(
        "--label", help="why the backup was taken (the systemd timer passes scheduled)")
    ] = Label.manual,
    pin: Annotated[bool, typer.Option(
        "--pin", help="pin the new backup: retention never deletes it")] = False,
    max_rate: Annotated[str | None, typer.Option(
        "--max-rate", hidden=True, help="pg_basebackup --max-rate (throttle; for tests)")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Take a base backup: pg_basebackup streamed through zstd into the repository."""
    from pitr.backup import run_backup
    from pitr.progress import Progress, human_bytes, human_duration, human_rate
    from pitr.security import check_command_user

    cfg = load_config(command="backup")
    check_command_user("backup", cfg.postgres.pgdata)
    progress = Progress("backup", estimate=True)
    try:
        result = run_backup(cfg, label=label.value, pin=pin, max_rate=max_rate,
                            progress=progress, command=f"pitr backup --label {label.value}")
    except PitrError as exc:
        if not isinstance(exc, LockedError):  # another backup running is not a failure
            from pitr.monitor.alerts import send_alert

            send_alert(cfg, "backup_failed", f"{label.value} backup failed: {exc.message}",
                       {"exit_code": exc.exit_code, "hint": exc.hint})
        raise
    s = result.summary()
    expire_error = None
    if label is Label.scheduled and cfg.backup.expire_after:  # retention (pitr/expire.py)
        from pitr.expire import expire_after_backup

        s["expire"], expire_error = expire_after_backup(cfg, s["id"])
    if json_out:
        print_json(s)
    else:
        typer.echo(
            f"backup {s['id']} completed: {human_bytes(s['raw_bytes'])} -> "
            f"{human_bytes(s['stored_bytes'])} stored ({s['compression_ratio']:.1f}x) in "
            f"{human_duration(s['seconds'])} "
            f"({human_rate(s['raw_bytes'] / max(s['seconds'], 1e-9))})"
            f"; WAL {s['start_lsn']} .. {s['stop_lsn']} on timeline {s['timeline']}, "
            f"stop time {s['stop_time']}{', pinned' if s['pinned'] else ''}")
        if "text" in s.get("expire", {}):
            typer.echo(s["expire"]["text"])
    if expire_error is not None:
        raise expire_error


@app.command("list", epilog=examples("pitr list", "pitr list --json"))
def list_(json_out: JsonFlag = False) -> None:
    """Backups, archived WAL per timeline, gaps and the recovery window."""
    from pitr.catalog import load_catalog
    from pitr.listing import render, report
    from pitr.repo import Repo
    from pitr.storage import open_storage

    cfg = load_config(command="list")
    doc = report(load_catalog(Repo(open_storage(cfg.repository), cfg.stanza)))
    if json_out:
        print_json(doc)
    else:
        typer.echo(render(doc))
