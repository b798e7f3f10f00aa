"""`pitr setup [--apply] [--json]`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from pitr import setup as setup_mod
from pitr.cli.app import OPTS, JsonFlag, app, examples, load_config, print_json
from pitr.config import Config
from pitr.security import check_command_user

# how long the end-to-end check waits for the switched segment to be archived
CHECK_ARCHIVE_TIMEOUT = 60.0


def _run_check(cfg: Config) -> dict[str, Any]:
    """Run the `pitr check` logic and summarise it for the setup report."""
    from pitr import check as check_mod

    results = check_mod.run_checks(lambda: cfg, archive_timeout=CHECK_ARCHIVE_TIMEOUT)
    ok = all(r.status != "FAIL" for r in results)
    return {"status": "passed" if ok else "failed", "results": [r.as_dict() for r in results]}


@app.command("setup", epilog=examples(
    "runuser -u postgres -- pitr setup            # what it would change",
    "runuser -u postgres -- pitr setup --apply    # change it, then run pitr check"))
def setup(
    apply: Annotated[bool, typer.Option(
        "--apply", help="write the settings with ALTER SYSTEM, reload, create the stanza, "
                        "run `pitr check` (default: only print what would change)")] = False,
    exe: Annotated[str | None, typer.Option(
        "--exe", help="absolute path of pitr for archive_command (default: this one)",
        show_default=False)] = None,
    json_out: JsonFlag = False,
) -> None:
    """Configure a running cluster to archive through pitr (never restarts it)."""
    cfg = load_config(command="setup")
    # root would create the stanza (repo.json, a local repository's directories) as
    # root, which the archiver running as the cluster user could not read later.
    check_command_user("setup", cfg.postgres.pgdata)
    config_path = setup_mod.config_file_path(OPTS.config_path)
    report = setup_mod.run_setup(cfg, config_path=config_path,
                                 exe=exe or setup_mod.pitr_executable(), apply=apply,
                                 run_check=_run_check)
    if json_out:
        print_json(report.as_dict())
    else:
        _print_text(report)
    failure = setup_mod.check_failed(report)
    if failure is not None:
        raise failure


def _print_text(report: setup_mod.SetupReport) -> None:
    c = report.cluster
    typer.echo(f"cluster {c['system_id']} (server_version_num {c['version_num']}, "
               f"{c['segment_size'] // (1 << 20)} MiB WAL segments)")
    for s in report.settings:
        if s["change"]:
            verb = "set" if report.applied else "would set"
            when = "restart needed" if s["needs_restart"] else "reload"
            typer.echo(f"  {s['name']}: {verb} {s['wanted']!r} (was {s['current']!r}; "
                       f"{when}) - {s['reason']}")
        else:
            typer.echo(f"  {s['name']}: ok ({s['current']!r})")
    st = report.stanza
    typer.echo(f"stanza {st['name']!r} in {st['url']}: {st['status']}")
    for w in report.warnings:
        typer.echo(f"WARNING: {w}", err=True)
    if not report.applied:
        typer.echo("\nnothing written. Apply with `pitr setup --apply`, or add to "
                   "postgresql.conf:\n")
        typer.echo(report.snippet, nl=False)
        return
    if report.restart_needed:
        typer.echo("\nRESTART NEEDED: restart PostgreSQL (e.g. `systemctl restart "
                   "postgresql@15-main`), then run `pitr check`. pitr does not restart it.")
        return
    for r in report.check.get("results", []):
        typer.echo(f"  {r['status']:<4}  {r['name']}: {r['detail']}")
        if r["status"] == "FAIL" and r.get("hint"):
            typer.echo(f"        HINT: {r['hint']}")
    typer.echo(f"check: {report.check['status']}")
