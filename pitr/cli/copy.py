"""`pitr copy`: seed or repair one repository from another (pitr/copy.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from pitr.cli.app import JsonFlag, app, examples, load_config, print_json


@app.command("copy", epilog=examples(
    "pitr copy --from repo1 --to usb    # seed a new repository",
    "pitr copy --from offsite --to repo1 --backup 20250215T013000Z --json"))
def copy(
    source: Annotated[str, typer.Option("--from", metavar="NAME",
                                        help="the repository to copy from")],
    dest: Annotated[str, typer.Option("--to", metavar="NAME",
                                      help="the repository to copy into")],
    backups: Annotated[list[str] | None, typer.Option(
        "--backup", metavar="ID", help="copy only this backup (repeatable; WAL is always "
        "copied whole)")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Copy backups and WAL the destination lacks, verified; run again to resume."""
    from pitr.condwrites import require_conditional_writes
    from pitr.copy import copy_repository
    from pitr.errors import UsageError
    from pitr.lock import StanzaLock
    from pitr.progress import human_bytes
    from pitr.repo import Repo

    cfg = load_config(command="copy")
    if source == dest:
        raise UsageError("--from and --to name the same repository")
    src = Repo.open(cfg.for_repository(source))
    dst_cfg = cfg.for_repository(dest)
    dst = Repo.open(dst_cfg)
    require_conditional_writes(dst_cfg, dst.storage)  # never-overwrite rests on it
    with StanzaLock(dst, "backup", command="pitr copy", stale_after=cfg.backup.lock_stale_after,
                    lease=cfg.backup.lock_lease):
        result = copy_repository(src, dst, backup_ids=backups or None)
    if json_out:
        print_json({"from": source, "to": dest, **result.to_json()})
        return
    typer.echo(f"copied {len(result.backups_copied)} backup(s) and {result.wal_copied} WAL "
               f"file(s), {human_bytes(result.bytes_copied)}, from {source} to {dest} in "
               f"{result.seconds:.1f}s; already there and proven the same: "
               f"{len(result.backups_present)} backup(s), {result.wal_present} WAL file(s)")
