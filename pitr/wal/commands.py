"""archive-push and archive-get as plain functions that return PostgreSQL's exit codes.

PostgreSQL runs these once per WAL file and waits. Going through typer costs a
lot per call (its parameter coercion imports pydantic: 0.3 s and more on a busy
host, more than compressing a segment), so the contract lives here without any
CLI framework: :mod:`pitr.cli.archive` wraps these for ``pitr archive-push`` /
``archive-get``, and :mod:`pitr.entry` may call them directly for
``[--config X] archive-push|archive-get ARGS``.

The exit-code contract (docs/exit-codes.md): archive-push exits 0 only once the file
is durable and never above 125. archive-get exits 1 only when the file is
confirmed absent (or under standby.signal), and RECOVERY_ABORT_OFFSET + code
for everything else, so PostgreSQL stops recovery instead of promoting early.
"""

from __future__ import annotations

import re
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pitr import log
from pitr.errors import (
    RECOVERY_ABORT_OFFSET,
    InternalError,
    Interrupted,
    PitrError,
    UsageError,
    WalNotFound,
)

if TYPE_CHECKING:
    from pitr.config import Config


def archive_push_main(config_path: str | None, path: str, *, debug: bool = False,
                      log_format: str | None = None) -> int:
    """archive_command: 0 once ``path`` is durable in the repository, else 1..125."""
    try:
        from pitr.repo import Repo
        from pitr.security import check_command_user
        from pitr.wal.push import push_wal

        cfg = _load(config_path, "archive-push", debug, log_format)
        check_command_user("archive-push", cfg.postgres.pgdata)
        from pitr.condwrites import require_conditional_writes

        repos = []
        for rc in cfg.required_repositories:  # durable in every required one before 0
            one = cfg.for_repository(rc)
            repos.append(Repo.open(one))
            require_conditional_writes(one, repos[-1].storage)  # remembered: a stat() per segment
        catch_up: list[tuple[Repo | None, Any]] = []
        if cfg.catch_up_repositories:
            from pitr.wal.catchup import Backlog
            from pitr.wal.spool import Spool

            base = Spool(cfg.archive.spool_dir, cfg.stanza).base
            for rc in cfg.catch_up_repositories:
                one = cfg.for_repository(rc)
                handle: Repo | None = Repo.open(one)
                try:  # unproven (down?): nothing inline, the backlog takes the segment
                    require_conditional_writes(one, handle.storage)  # type: ignore[union-attr]
                except PitrError:
                    handle = None
                catch_up.append((handle, Backlog(base, rc.name)))
        push_wal(repos, Path(path), level=cfg.compression.level, budget=cfg.repository.timeout,
                 catch_up=catch_up, catch_up_budget=cfg.catch_up_budget)
        if catch_up:
            _drain_opportunistically(cfg, repos, catch_up)
        return 0
    except BaseException as exc:  # the boundary: every outcome gets a code
        err = _as_pitr_error(exc, debug)
        report_error(err, log_format)
        return err.exit_code  # every registered code is <= 125


def _drain_opportunistically(cfg: Config, repos: list[Any],
                             catch_up: list[tuple[Any, Any]]) -> None:
    """A sync archive-push's share of catching up (docs/multiple-repositories.md): at most
    every SYNC_DRAIN_INTERVAL and for about SYNC_DRAIN_BUDGET, after the segment is safe.
    Nothing here changes the exit code: the segment is durable in every required one."""
    import time

    from pitr.wal.catchup import SYNC_DRAIN_BUDGET, SYNC_DRAIN_INTERVAL, drain, drain_due

    for repo, backlog in catch_up:
        if repo is None:
            continue
        try:
            if not backlog.entries() or not drain_due(backlog.last_try(), time.time(),
                                                      SYNC_DRAIN_INTERVAL):
                continue
            backlog.mark_try()
            drain(backlog, repos, repo, deadline=time.monotonic() + SYNC_DRAIN_BUDGET)
        except Exception as exc:  # the segment is archived; catching up is best effort here
            import logging

            logging.getLogger("pitr.wal.catchup").warning(
                "archive-push: catching up %s failed: %s", backlog.repository, exc)


def archive_get_main(config_path: str | None, walname: str, dest: str, *,
                     debug: bool = False, log_format: str | None = None,
                     stop_after: str | None = None, prefer: str | None = None) -> int:
    """restore_command: 0 restored, 1 confirmed absent, >125 stop recovery.

    ``prefer``: the repository the restore plan chose: asked first, the others follow in
    config order, and its proven absence answers "absent" (docs/multiple-repositories.md)."""
    pgdata = ""
    try:
        if stop_after is not None and past_bound(walname, stop_after):
            raise WalNotFound(f"{walname} is after {stop_after}, the last segment this "
                              "restore drill checked; the drill replays no further")
        from pitr.repo import Repo
        from pitr.security import check_command_user
        from pitr.wal.fetch import archive_get

        cfg = _load(config_path, "archive-get", debug, log_format)
        pgdata = cfg.postgres.pgdata
        check_command_user("archive-get", pgdata)
        rcs = list(cfg.all_repositories)
        if prefer is not None:
            first = cfg.repository_named(prefer)
            rcs = [first, *(rc for rc in rcs if rc is not first)]
        repos = [Repo.open(cfg.for_repository(rc)) for rc in rcs]
        archive_get(repos, walname, Path(dest), datadir=data_dir_of(Path(dest), pgdata),
                    budget=cfg.repository.timeout, planned=prefer is not None,
                    catch_up=[rc.mode == "catch_up" for rc in rcs])
        return 0
    except BaseException as exc:  # none may escape as an accidental 1..125
        err = _as_pitr_error(exc, debug)
        standby = is_standby(Path(dest), pgdata)
        code = archive_get_exit_code(err, standby=standby)
        if isinstance(err, WalNotFound):
            # Normal at the end of the archive and polled by standbys: one plain line
            # in the server log, not an ERROR; history files are probed constantly.
            if not walname.endswith(".history"):
                sys.stderr.write(log.scrub(f"pitr archive-get: {err.message}") + "\n")
        else:
            report_error(err, log_format)
            if code == 1:
                sys.stderr.write("HINT: standby.signal is present: answering 'not found' so "
                                 "the standby keeps polling\n")
        return code


def past_bound(walname: str, last: str) -> bool:
    """Whether the segment ``walname`` lies after ``last`` (segment number or timeline).

    History files and anything else pass: they are not replayed WAL."""
    seg = re.compile(r"^[0-9A-F]{24}$")
    if not seg.match(walname):
        return False
    if not seg.match(last):
        raise UsageError(f"--stop-after {last!r} is not a WAL segment name")
    # name = TLI(8) + log(8) + seg(8); comparing (log, seg) is comparing segment
    # numbers for every segment size
    return (walname[8:] > last[8:]) or walname[:8] > last[:8]


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


def data_dir_of(dest: Path, pgdata: str) -> Path:
    """The data directory restore_command serves.

    %p is "pg_wal/RECOVERYXLOG" relative to the data directory (the command's
    cwd), so the directory above dest's pg_wal is the most reliable answer;
    postgres.pgdata and the cwd are fallbacks. The fast path shares the rule.
    """
    from pitr.fastpath import data_dir_of as rule

    return Path(rule(str(dest), pgdata))


def is_standby(dest: Path, pgdata: str) -> bool:
    """Whether the data directory restore_command serves has standby.signal."""
    return (data_dir_of(dest, pgdata) / "standby.signal").exists()


def report_error(exc: PitrError, log_format: str | None = None) -> None:
    """ERROR/HINT lines on stderr (one JSON line in JSON mode), secrets scrubbed.

    Same output as pitr.cli.app.report_error, which cannot be imported here
    without typer.
    """
    if log.json_enabled() or log_format == "json":
        sys.stderr.write(log.error_line(exc.message, exc.hint, exc.exit_code) + "\n")
    else:
        sys.stderr.write(log.scrub(f"ERROR: {exc.message}") + "\n")
        if exc.hint:
            sys.stderr.write(log.scrub(f"HINT: {exc.hint}") + "\n")
    sys.stderr.flush()


def _load(config_path: str | None, command: str, debug: bool,
          log_format: str | None) -> Config:
    from pitr import config as config_mod

    cfg = config_mod.load(config_path)
    log.register_secrets(config_mod.secrets_of(cfg))
    log.setup(log_format or cfg.log.format, "debug" if debug else cfg.log.level, command)
    return cfg


def _as_pitr_error(exc: BaseException, debug: bool) -> PitrError:
    if isinstance(exc, PitrError):
        if debug:
            traceback.print_exception(exc)
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted("interrupted")
    if isinstance(exc, SystemExit):
        return InternalError(f"unexpected exit request ({exc.code})")
    if debug:
        traceback.print_exception(exc)
    return InternalError(f"unexpected {type(exc).__name__}: {exc}",
                         hint="run again with --debug and report the traceback")


__all__ = ["archive_get_exit_code", "archive_get_main", "archive_push_main", "data_dir_of",
           "is_standby", "report_error"]
