"""`pitr archive-push`, `pitr archive-get` (PostgreSQL's archive/restore commands) and `pitr check`.

Bodies stay thin: parse, load config, call one service function, map to an exit
code. The exit-code contract PostgreSQL imposes lives here, in
:func:`archive_get_exit_code`, because it is about how the *command* answers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from pitr.cli.app import OPTS, JsonFlag, app, load_config, print_json, report_error
from pitr.errors import (
    RECOVERY_ABORT_OFFSET,
    CheckFailed,
    InternalError,
    PitrError,
    UsageError,
    WalNotFound,
)
from pitr.security import check_command_user

log = logging.getLogger("pitr.cli.archive")


def _click_usage_error() -> type[Exception]:
    # typer >= 0.20 vendors click as typer._click; older releases use click itself.
    try:
        from typer._click.exceptions import UsageError as ClickUsageError
    except ImportError:
        from click.exceptions import (  # type: ignore[import-not-found,no-redef,unused-ignore]
            UsageError as ClickUsageError,
        )
    return ClickUsageError


@app.command("archive-push")
def archive_push(
    path: Annotated[str, typer.Argument(help="the WAL file to archive (%p)")],
) -> None:
    """archive_command: store one WAL file; exit 0 only once it is durable (else 1..125)."""
    from pitr.repo import Repo
    from pitr.storage import open_storage
    from pitr.wal.push import push_wal

    cfg = load_config(command="archive-push")
    check_command_user("archive-push", cfg.postgres.pgdata)
    repo = Repo(open_storage(cfg.repository), cfg.stanza)
    push_wal(repo, Path(path), level=cfg.compression.level, budget=cfg.repository.timeout)


class _RestoreCommand(TyperCommand):
    """A bad restore_command line must stop recovery, not read as "not found" (exit 2)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _click_usage_error() as exc:
            report_error(UsageError(f"archive-get: {getattr(exc, 'format_message', exc.__str__)()}",
                                    hint="restore_command = 'pitr archive-get %f %p'"))
            ctx.exit(RECOVERY_ABORT_OFFSET + UsageError.exit_code)
            raise  # unreachable: ctx.exit raises


@app.command("archive-get", cls=_RestoreCommand)
def archive_get(
    walname: Annotated[str, typer.Argument(help="the WAL file PostgreSQL wants (%f)")],
    dest: Annotated[str, typer.Argument(help="where to write it (%p)")],
) -> None:
    """restore_command: exit 0 = restored, 1 = confirmed absent, >125 = stop recovery."""
    pgdata = ""
    try:
        from pitr.repo import Repo
        from pitr.storage import open_storage
        from pitr.wal.fetch import fetch_wal

        cfg = load_config(command="archive-get")
        pgdata = cfg.postgres.pgdata
        check_command_user("archive-get", pgdata)
        repo = Repo(open_storage(cfg.repository), cfg.stanza)
        fetch_wal(repo, walname, Path(dest), budget=cfg.repository.timeout)
    except Exception as exc:  # every failure must be mapped, none may escape as 1..125
        err = exc if isinstance(exc, PitrError) else InternalError(
            f"unexpected {type(exc).__name__}: {exc}",
            hint="run again with --debug and report the traceback")
        if OPTS.debug and not isinstance(exc, PitrError):
            log.exception("archive-get failed")
        standby = is_standby(Path(dest), pgdata)
        code = archive_get_exit_code(err, standby=standby)
        if isinstance(err, WalNotFound):
            # Normal at the end of the archive and polled by standbys: one plain line
            # in the server log, not an ERROR; history files are probed constantly.
            if not walname.endswith(".history"):
                typer.echo(f"pitr archive-get: {err.message}", err=True)
        else:
            report_error(err)
            if code == 1:
                typer.echo("HINT: standby.signal is present: answering 'not found' so the "
                           "standby keeps polling", err=True)
        raise typer.Exit(code) from None


def archive_get_exit_code(err: PitrError, *, standby: bool) -> int:
    """The exit code PostgreSQL must see for a failed archive-get.

    1 means "not found" to PostgreSQL, which then ends recovery and promotes. So
    1 only when the file is confirmed absent, or under standby.signal (a standby
    treats "not found" as "poll again" and never promotes on it). Anything else
    is above 125, which makes PostgreSQL stop recovery with FATAL.
    """
    if isinstance(err, WalNotFound) or standby:
        return 1
    return RECOVERY_ABORT_OFFSET + err.exit_code


def is_standby(dest: Path, pgdata: str) -> bool:
    """Whether the data directory restore_command serves has standby.signal.

    %p is "pg_wal/RECOVERYXLOG" relative to the data directory (the command's
    cwd), so the directory above dest's pg_wal is the most reliable answer;
    postgres.pgdata and the cwd are fallbacks.
    """
    dest = Path(dest).absolute()
    if dest.parent.name == "pg_wal":
        datadir = dest.parent.parent
    elif pgdata:
        datadir = Path(pgdata)
    else:
        datadir = Path.cwd()
    return (datadir / "standby.signal").exists()


@app.command("check")
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
            if r.status == "FAIL" and r.hint:
                typer.echo(f"{'':<{width}}        hint: {r.hint}")
    failed = [r.name for r in results if r.status == "FAIL"]
    if failed:
        raise CheckFailed(f"{len(failed)} check(s) failed: {', '.join(failed)}")
