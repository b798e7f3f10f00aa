"""`pitr archive-push`, `pitr archive-get` (PostgreSQL's archive/restore commands) and `pitr check`.

Bodies stay thin. The exit-code contract PostgreSQL imposes lives in
:mod:`pitr.wal.commands` (typer-free, so the entry point can call it directly);
here only typer's own usage errors are mapped for archive-get.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from pitr.cli.app import OPTS, JsonFlag, app, examples, load_config, print_json, report_error
from pitr.errors import RECOVERY_ABORT_OFFSET, CheckFailed, UsageError


def _click_usage_error() -> type[Exception]:
    # typer >= 0.20 vendors click as typer._click; older releases use click itself.
    try:
        from typer._click.exceptions import UsageError as ClickUsageError
    except ImportError:
        from click.exceptions import (  # type: ignore[import-not-found,no-redef,unused-ignore]
            UsageError as ClickUsageError,
        )
    return ClickUsageError


@app.command("archive-push", epilog=examples(
    "archive_command = '/opt/pitr-venv/bin/pitr --config /etc/pitr/pitr.toml archive-push %p'",
    "cd $PGDATA && pitr archive-push pg_wal/000000010000000000000042    # by hand"))
def archive_push(
    path: Annotated[str, typer.Argument(help="the WAL file to archive (%p)")],
) -> None:
    """archive_command: store one WAL file; exit 0 only once it is durable (else 1..125)."""
    from pitr.wal.commands import archive_push_main

    code = archive_push_main(OPTS.config_path, path, debug=OPTS.debug,
                             log_format=OPTS.log_format)
    if code:
        raise typer.Exit(code)


class _RestoreCommand(TyperCommand):
    """A bad restore_command line must stop recovery, not read as "not found" (exit 2)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _click_usage_error() as exc:
            text = getattr(exc, "format_message", exc.__str__)()
            report_error(UsageError(f"archive-get: {text}",
                                    hint="restore_command = 'pitr archive-get %f %p'"))
            ctx.exit(RECOVERY_ABORT_OFFSET + UsageError.exit_code)
            raise  # unreachable: ctx.exit raises


@app.command("archive-get", cls=_RestoreCommand, epilog=examples(
    "restore_command = '/opt/pitr-venv/bin/pitr --config /etc/pitr/pitr.toml archive-get %f %p'",
    "pitr archive-get 000000010000000000000042 /tmp/seg    # fetch one file by hand"))
def archive_get(
    walname: Annotated[str, typer.Argument(help="the WAL file PostgreSQL wants (%f)")],
    dest: Annotated[str, typer.Argument(help="where to write it (%p)")],
    stop_after: Annotated[str | None, typer.Option(
        "--stop-after", metavar="SEGMENT",
        help="answer 'not found' for WAL segments after SEGMENT (a restore drill replays "
             "only the WAL it has checked)")] = None,
    repo: Annotated[str | None, typer.Option(
        "--repo", metavar="NAME", help="ask this repository first, then the others "
        "(`pitr restore` writes it when the plan chose another than the first)")] = None,
) -> None:
    """restore_command: exit 0 = restored, 1 = confirmed absent, >125 = stop recovery."""
    from pitr.wal.commands import archive_get_main

    code = archive_get_main(OPTS.config_path, walname, dest, debug=OPTS.debug,
                            log_format=OPTS.log_format, stop_after=stop_after, prefer=repo)
    if code:
        raise typer.Exit(code)


@app.command("check", epilog=examples(
    "runuser -u postgres -- pitr check",
    "pitr check --json --timeout 120"))
def check(
    json_out: JsonFlag = False,
    timeout: Annotated[float, typer.Option(
        "--timeout", help="seconds to wait for the switched WAL segment to be archived")] = 60.0,
) -> None:
    """Check config, repository, PostgreSQL settings, and that a switched WAL segment arrives."""
    from pitr import check as check_mod

    results = check_mod.run_checks(lambda: load_config(command="check"),
                                   archive_timeout=timeout)
    if json_out:
        print_json({"ok": all(r.status != "FAIL" for r in results),
                    "checks": [r.as_dict() for r in results]})
    else:
        width = max(len(r.name) for r in results)
        for r in results:
            line = f"{r.name:<{width}}  {r.status:<4}  {r.detail}"
            typer.echo(line.rstrip())
            if r.status in ("FAIL", "WARN") and r.hint:
                typer.echo(f"{'':<{width}}        hint: {r.hint}")
    failed = [r.name for r in results if r.status == "FAIL"]
    if failed:
        raise CheckFailed(f"{len(failed)} check(s) failed: {', '.join(failed)}")
