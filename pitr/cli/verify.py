"""`pitr verify`: the restore drill (see pitr/verify.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from pitr.cli.app import OPTS, JsonFlag, app, examples, load_config, print_doc
from pitr.errors import CheckFailed

if TYPE_CHECKING:
    from pitr.config import Config
    from pitr.targets import Target


def render_text(doc: dict[str, Any]) -> str:
    lines = [f"restore drill of backup {doc['backup_id'] or '-'} "
             f"({(doc['target'] or {}).get('kind', '-')}"
             + (f" {doc['target'].get('time')}" if (doc['target'] or {}).get('time') else "")
             + f"): {'PASSED' if doc['ok'] else 'FAILED'}"]
    for c in doc["checks"]:
        lines.append(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['name']:<15} {c['detail']}")
    for key, label in (("rto_seconds", "RTO (s)"), ("restored_bytes", "restored bytes"),
                       ("wal_replayed_bytes", "WAL replayed bytes"),
                       ("wal_segments", "WAL segments"), ("drill_seconds", "drill (s)")):
        if doc.get(key) is not None:
            lines.append(f"  {label:<20} {doc[key]}")
    if doc.get("report"):
        lines.append(f"  report               {doc['report']}")
    if doc["scratch"].get("kept"):
        lines.append(f"  scratch cluster kept {doc['scratch'].get('pgdata')} "
                     f"(socket {doc['scratch'].get('socket_dir')}, port "
                     f"{doc['scratch'].get('port')})")
    return "\n".join(lines)


@app.command("verify", epilog=examples(
    "pitr verify", "pitr verify --random-point --json",
    "pitr verify --to 2025-02-15T01:30Z --keep"))
def verify(
    backup: Annotated[str | None, typer.Option("--backup", help="backup ID (default: the "
                                               "newest that reaches the target)")] = None,
    to: Annotated[str | None, typer.Option("--to", help="restore to this time (ISO 8601; "
                                           "without a zone: the cluster's TimeZone); "
                                           "default: all archived WAL")] = None,
    random_point: Annotated[bool, typer.Option(
        "--random-point", help="restore to a random time inside the recovery window")] = False,
    seed: Annotated[int | None, typer.Option(
        "--seed", help="seed for --random-point (reproduce a drill)")] = None,
    keep: Annotated[bool, typer.Option(
        "--keep", help="leave the scratch cluster running for inspection")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Restore drill: restore into a scratch cluster, check it, report, clean up.

    Exits 14 (CheckFailed) when any check failed; the report is stored under
    <stanza>/verify/ in the repository either way.
    """
    from pitr.errors import UsageError
    from pitr.verify import DrillOptions, run_verify

    cfg = load_config(command="verify")
    if to is not None and random_point:
        raise UsageError("--to and --random-point exclude each other")
    opts = DrillOptions(backup_id=backup, target=_time_target(cfg, to, backup) if to else None,
                        random_point=random_point, seed=seed, keep=keep)
    report = run_verify(cfg, opts, config_path=OPTS.config_path)
    doc = report.to_json()
    print_doc(doc, json_out, render_text)
    if not report.ok:
        raise CheckFailed("restore drill failed: " + "; ".join(
            f"{c.name}: {c.detail.splitlines()[0]}" for c in report.failed),
            hint=f"report: {report.key}" if report.key else None)


def _time_target(cfg: Config, to: str, backup: str | None) -> Target:
    """--to as `pitr restore` reads it (a zone-less time in the cluster's TimeZone)."""
    from pitr.catalog_scope import base_catalog
    from pitr.planner import cluster_timezone
    from pitr.repo import Repo
    from pitr.targets import at_time_text

    def zone() -> str | None:
        # the backups' manifests say it: no WAL listing (the drill lists the stanza)
        return cluster_timezone(base_catalog(Repo.open(cfg)), backup)

    return at_time_text(to, zone)
