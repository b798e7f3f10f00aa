"""`pitr backup` and `pitr list`."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from pitr.cli.app import JsonFlag, NoCache, app, examples, load_config, print_doc, print_json


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
    incremental: Annotated[bool, typer.Option(
        "--incremental", help="take an incremental backup against the newest backup "
        "(PostgreSQL 17+, summarize_wal = on; docs/incremental-backups.md)")] = False,
    full: Annotated[bool, typer.Option(
        "--full", help="take a full backup (scheduled backups otherwise follow "
        "backup.full_interval)")] = False,
    repo: Annotated[str | None, typer.Option(
        "--repo", metavar="NAME", help="only into this repository (default: into every "
        "configured repository in one pass; docs/multiple-repositories.md)")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Take a base backup: pg_basebackup streamed through zstd into the repository."""
    from pitr.backup import backup_command
    from pitr.progress import Progress, human_bytes, human_duration, human_rate
    from pitr.security import check_command_user

    if incremental and full:
        from pitr.errors import UsageError

        raise UsageError("--incremental and --full exclude each other")
    # a scheduled run follows backup.full_interval; a manual one is full unless asked
    kind: bool | None = True if incremental else False if full else (
        None if label is Label.scheduled else False)
    cfg = load_config(command="backup")
    check_command_user("backup", cfg.postgres.pgdata)
    s, expire_error = backup_command(cfg, label=label.value, pin=pin, max_rate=max_rate,
                                     progress=Progress("backup", estimate=True),
                                     command=f"pitr backup --label {label.value}",
                                     incremental=kind, repo_name=repo)
    if json_out:
        print_json(s)
    else:
        typer.echo(
            f"{s['type']} backup {s['id']} completed"
            f"{' (parent ' + s['parent'] + ')' if s['parent'] else ''}: "
            f"{human_bytes(s['raw_bytes'])} -> "
            f"{human_bytes(s['stored_bytes'])} stored ({s['compression_ratio']:.1f}x) in "
            f"{human_duration(s['seconds'])} "
            f"({human_rate(s['raw_bytes'] / max(s['seconds'], 1e-9))})"
            f"; WAL {s['start_lsn']} .. {s['stop_lsn']} on timeline {s['timeline']}, "
            f"stop time {s['stop_time']}{', pinned' if s['pinned'] else ''}"
            + (f"; in {', '.join(s['repositories'])}" if len(s["repositories"]) > 1 else ""))
        expired = s.get("expire", {})
        for doc in [expired] if "text" in expired or len(s["repositories"]) == 1 \
                else list(expired.values()):
            if "text" in doc:
                typer.echo(doc["text"])
    if expire_error is not None:
        raise expire_error


@app.command("list", epilog=examples("pitr list", "pitr list --json", "pitr list --no-cache"))
def list_(json_out: JsonFlag = False, no_cache: NoCache = False) -> None:
    """Backups, archived WAL per timeline, gaps and the recovery window."""
    from pitr.catalog import load_catalog
    from pitr.catalog_cache import cached_catalog
    from pitr.listing import render, report
    from pitr.repo import Repo

    cfg = load_config(command="list")
    doc = report(load_catalog(Repo.open(cfg)) if no_cache else cached_catalog(cfg)[0])
    print_doc(doc, json_out, render)
