"""`pitr expire`, `pitr pin ID`, `pitr unpin ID`."""

from __future__ import annotations

from typing import Annotated

import typer

from pitr.cli.app import JsonFlag, app, examples, load_config, print_json


@app.command("expire", epilog=examples(
    "pitr expire --dry-run    # each backup kept (and why) or deleted", "pitr expire --json",
    "pitr expire --repo offsite"))
def expire(
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="show what would be deleted and why; delete nothing")] = False,
    repo: Annotated[str | None, typer.Option(
        "--repo", metavar="NAME", help="only this repository (default: each configured "
        "repository by its own retention; docs/multiple-repositories.md)",
        show_default=False)] = None,
    json_out: JsonFlag = False,
) -> None:
    """Delete backups and WAL that the [retention] policy no longer keeps."""
    from pitr.expire import render, run_expire

    cfg = load_config(command="expire")
    names = [repo] if repo else [rc.name for rc in cfg.all_repositories]
    if len(cfg.all_repositories) == 1 and not repo:
        result = run_expire(cfg, dry_run=dry_run)
        if json_out:
            print_json(result.summary())
        else:
            typer.echo(render(result))
        return
    # each repository with its own retention: one failing stops the run (named)
    results = {name: run_expire(cfg.for_repository(name), dry_run=dry_run) for name in names}
    if json_out:
        print_json({"repositories": {n: r.summary() for n, r in results.items()}})
    else:
        typer.echo("\n\n".join(f"repository {n}:\n{render(r)}" for n, r in results.items()))


@app.command("pin", epilog=examples("pitr pin 20250215T013000Z"))
def pin(backup_id: Annotated[str, typer.Argument(help="id of a completed backup")],
        json_out: JsonFlag = False) -> None:
    """Pin a backup: retention keeps it until it is unpinned."""
    _set_pin(backup_id, True, json_out)


@app.command("unpin", epilog=examples("pitr unpin 20250215T013000Z"))
def unpin(backup_id: Annotated[str, typer.Argument(help="id of a pinned backup")],
          json_out: JsonFlag = False) -> None:
    """Remove a pin: retention treats the backup like any other again."""
    _set_pin(backup_id, False, json_out)


def _set_pin(backup_id: str, pinned: bool, json_out: bool) -> None:
    from pitr import pins
    from pitr.repo import Repo

    cfg = load_config(command="pin" if pinned else "unpin")
    changed = (pins.pin if pinned else pins.unpin)(Repo.open(cfg), backup_id)
    if json_out:
        print_json({"id": backup_id, "pinned": pinned, "changed": changed})
    elif pinned:
        typer.echo(f"backup {backup_id} {'pinned' if changed else 'was already pinned'}")
    else:
        typer.echo(f"backup {backup_id} {'unpinned' if changed else 'was not pinned'}")
