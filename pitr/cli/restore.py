"""`pitr plan` and `pitr restore`: plan a point-in-time restore, then carry it out."""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pitr.cli.app import OPTS, JsonFlag, app, examples, load_config, print_json

if TYPE_CHECKING:
    from pitr.catalog_scope import Scope
    from pitr.config import Config
    from pitr.planner import RestorePlan
    from pitr.repo import Repo
    from pitr.restore import RestoreResult
    from pitr.targets import Target
    from pitr.thaw import ThawOptions

To = Annotated[str | None, typer.Option(
    "--to", help="recover to this time: ISO 8601; a time without a zone is read in the "
                 "cluster's TimeZone, recorded by each backup (e.g. '2025-02-15 01:30' or "
                 "2025-02-15T01:30:00+01:00)", show_default=False)]
Lsn = Annotated[str | None, typer.Option("--lsn", help="recover to this WAL location, "
                                         "e.g. 0/3000028", show_default=False)]
Xid = Annotated[str | None, typer.Option("--xid", help="recover to the commit of this "
                                         "transaction id", show_default=False)]
Name = Annotated[str | None, typer.Option("--name", help="recover to this restore point "
                                          "(pg_create_restore_point)", show_default=False)]
Immediate = Annotated[bool, typer.Option("--immediate", help="stop as soon as the backup is "
                                         "consistent (the end of the backup)")]
Latest = Annotated[bool, typer.Option("--latest", help="replay all archived WAL")]
TimelineOpt = Annotated[int | None, typer.Option(
    "--timeline", help="recover along this timeline (default: for --to, the branch that existed "
                       "at that time; else the newest)", show_default=False)]
BackupOpt = Annotated[str | None, typer.Option("--backup", help="restore this backup id instead "
                                               "of the one the planner picks",
                                               show_default=False)]
Exclusive = Annotated[bool, typer.Option(
    "--exclusive", help="stop just before the target (recovery_target_inclusive = off)")]


RepoOpt = Annotated[str | None, typer.Option(
    "--repo", metavar="NAME", help="read only this repository (default: the first configured "
    "repository that can reach the target; docs/multiple-repositories.md)",
    show_default=False)]


def _plan_one(scope: Scope, target: Target, now: datetime, backup: str | None) -> RestorePlan:
    from pitr import planner
    from pitr.catalog_scope import scoped_plan

    plan = scoped_plan(scope, target, now, backup)
    if plan is None:  # not decided by the path's WAL alone: the full catalog decides
        plan = planner.plan(scope.full(), target, now, backup_id=backup)
    return plan


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """No cyclic garbage collection while a plan is made.

    Making the S3 client and reading tens of thousands of listed objects (a year of
    WAL: ~10,000 on the path, a fallback to the full catalog half a million) set off
    hundreds of collections, two of them over the whole heap, and found next to no
    cycles: ~0.2 s of a 1.5 s plan (docs/benchmarks.md, "Scale: a year of WAL").
    Reference counting still frees everything else. The survivors are then frozen (as
    pitr/entry.py does for archive-push), so the collector, back on, does not walk them
    all once more right away, nor at exit; what a plan leaves in cycles is bounded by
    the plan.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def _plan(to: str | None, lsn: str | None, xid: str | None, name: str | None, immediate: bool,
          latest: bool, timeline: int | None, backup: str | None, exclusive: bool,
          command: str, repo_name: str | None = None
          ) -> tuple[Config, Repo, RestorePlan, list[dict[str, Any]]]:
    """The plan, the repository it reads, and each repository's answer (several only)."""
    from pitr import planner, repo_choice, targets

    loaded: list[tuple[Config, list[repo_choice.Candidate]]] = []

    def context() -> tuple[Config, list[repo_choice.Candidate]]:
        if not loaded:  # after the command line is checked, and only once
            cfg = load_config(command=command)
            # backups and timelines only: the WAL is listed for the chosen path below
            loaded.append((cfg, repo_choice.open_candidates(cfg, repo_name)))
        return loaded[0]

    with _no_cyclic_gc():
        target = targets.from_options(
            to=to, lsn=lsn, xid=xid, name=name, immediate=immediate, latest=latest,
            timeline=timeline, exclusive=exclusive,
            zone=lambda: planner.cluster_timezone(repo_choice.first_base(context()[1]),
                                                  backup))
        cfg, cands = context()
        chosen = repo_choice.choose(cands, target, datetime.now(UTC), backup, _plan_one)
    assert chosen.repo is not None and chosen.plan is not None
    answers = [c.to_json(c is chosen) for c in cands] if len(cfg.all_repositories) > 1 else []
    return cfg, chosen.repo, chosen.plan, answers


@app.command("plan", epilog=examples(
    "pitr plan --to '2025-02-15 01:30'",
    "pitr plan --to 2025-02-15T01:30Z --json",
    "pitr plan --latest"))
def plan_cmd(to: To = None, lsn: Lsn = None, xid: Xid = None, name: Name = None,
             immediate: Immediate = False, latest: Latest = False,
             timeline: TimelineOpt = None, backup: BackupOpt = None, exclusive: Exclusive = False,
             repo: RepoOpt = None, json_out: JsonFlag = False) -> None:
    """Show which backup and WAL a restore to the target would use (exit 11 if none can)."""
    cfg, _repo, plan, answers = _plan(to, lsn, xid, name, immediate, latest, timeline,
                                      backup, exclusive, "plan", repo)
    if json_out:
        print_json({"stanza": cfg.stanza, **plan.to_json(),
                    **({"repositories": answers} if answers else {})})
    else:
        _print_plan(cfg.stanza, plan, answers)


@app.command("restore", epilog=examples(
    "pitr restore --to 2025-02-15T01:30Z --pgdata /srv/pg-restored --port 5499 --start",
    "pitr restore --latest --pgdata /var/lib/postgresql/15/main --force "
    "--archive-mode preserve"))
def restore_cmd(
    pgdata: Annotated[Path, typer.Option("--pgdata", "-D", help="data directory to restore into",
                                         show_default=False)],
    to: To = None, lsn: Lsn = None, xid: Xid = None, name: Name = None,
    immediate: Immediate = False, latest: Latest = False, timeline: TimelineOpt = None,
    backup: BackupOpt = None, exclusive: Exclusive = False, repo_name: RepoOpt = None,
    force: Annotated[bool, typer.Option(
        "--force", help="DIR is not empty: move its contents aside to DIR.pitr-old-<time> "
                        "(never deleted)")] = False,
    start: Annotated[bool, typer.Option(
        "--start", help="start the restored server and wait until it reaches the target")] = False,
    target_action: Annotated[str, typer.Option(
        "--target-action", help="at the target: promote, pause or shutdown")] = "promote",
    archive_mode: Annotated[str, typer.Option(
        "--archive-mode", help="off: the restored copy archives nothing (default); preserve: "
                               "keep the backup's archive settings (it archives into the "
                               "stanza, on a new timeline)")] = "off",
    port: Annotated[int | None, typer.Option("--port", help="port of the restored server",
                                             show_default=False)] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask before restoring over "
                                      "the configured postgres.pgdata")] = False,
    wait_timeout: Annotated[float, typer.Option(
        "--wait-timeout", help="with --start: seconds to wait for the target")] = 3600.0,
    tablespace_map: Annotated[list[str] | None, typer.Option(
        "--tablespace-map", metavar="OLD=NEW",
        help="restore the tablespace at OLD (its location when the backup was taken) into "
             "the empty or new directory NEW instead; repeatable (docs/tablespaces.md)",
        show_default=False)] = None,
    thaw: Annotated[bool, typer.Option(
        "--thaw", help="objects the plan reads are in GLACIER/DEEP_ARCHIVE: request their "
                       "restore first and wait, with progress (docs/storage-tiers.md)")] = False,
    thaw_tier: Annotated[str, typer.Option(
        "--thaw-tier", help="S3 retrieval tier: Expedited, Standard or Bulk")] = "Standard",
    thaw_days: Annotated[int, typer.Option(
        "--thaw-days", help="days S3 keeps the restored copies (through restore and "
                            "replay)")] = 2,
    thaw_timeout: Annotated[float | None, typer.Option(
        "--thaw-timeout", help="seconds to wait for the thaw (default: twice the estimate's "
                               "upper bound, at least an hour)", show_default=False)] = None,
    json_out: JsonFlag = False,
) -> None:
    """Restore the cluster into DIR as of the target: backup + WAL + recovery settings."""
    from pitr.restore import RestoreOptions, parse_tablespace_map, restore
    from pitr.thaw import thaw as thaw_objects

    spaces = parse_tablespace_map(tablespace_map or [])
    thaw_opts = _thaw_options(thaw_tier, thaw_days, thaw_timeout)
    cfg, repo, plan, answers = _plan(to, lsn, xid, name, immediate, latest, timeline, backup,
                                     exclusive, "restore", repo_name)
    if not json_out:
        _print_plan(cfg.stanza, plan, answers)
    # restore_command asks the chosen repository first, and its proven absence answers
    # while another is unreachable (pitr/wal/fetch.py, archive_get)
    chosen = next((a["name"] for a in answers if a["state"] == "chosen"), None)
    if chosen == cfg.repository.name and all(a["state"] != "unreachable" for a in answers):
        chosen = None
    opts = RestoreOptions(pgdata=pgdata, force=force, start=start, target_action=target_action,
                          archive_mode=archive_mode, port=port, yes=yes, wait_timeout=wait_timeout,
                          tablespace_map=spaces, repo=chosen)
    from pitr.claims import claim_backup

    if plan.cold and not thaw:
        from pitr.errors import ArchivedObject
        from pitr.planner import cold_note

        raise ArchivedObject(f"nothing restored: {cold_note(plan.cold)}",
                             hint="add --thaw to request their restore and wait")
    claim = claim_backup(repo, plan.backup.id, command="pitr restore",
                         lease=2 * cfg.backup.lock_lease)
    try:
        if plan.cold:
            thaw_objects(repo.storage, plan.cold, thaw_opts,
                         report=lambda line: typer.echo(line, err=True))
        result = restore(cfg, repo, plan, opts, config_path=OPTS.config_path,
                         confirm=_confirm)
    except BaseException:
        claim.release()
        raise
    if start:
        claim.release()
    else:  # PostgreSQL replays when it is started: hold the backup and its WAL that long
        held = claim.hand_over(wait_timeout)
        sys.stderr.write(f"pitr: {held.describe()} keeps backup {held.backup_id} and its WAL "
                         "from expiry while PostgreSQL replays (--wait-timeout)\n")
    if json_out:
        print_json({"stanza": cfg.stanza, "plan": plan.to_json(), "restore": result.to_json(),
                    **({"repositories": answers} if answers else {})})
    else:
        _print_result(result)


def _thaw_options(tier: str, days: int, timeout: float | None) -> ThawOptions:
    from pitr.errors import UsageError
    from pitr.thaw import ThawOptions
    from pitr.tiers import THAW_TIERS

    if tier not in THAW_TIERS:
        raise UsageError(f"--thaw-tier must be one of {', '.join(THAW_TIERS)}, got {tier!r}")
    if days < 1:
        raise UsageError("--thaw-days must be at least 1")
    if timeout is not None and timeout <= 0:
        raise UsageError("--thaw-timeout must be positive")
    return ThawOptions(tier=tier, days=days, timeout=timeout)


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return typer.confirm(question, default=False)


def _mib(n: int) -> str:
    from pitr.progress import human_bytes

    return human_bytes(n)


def _print_plan(stanza: str, plan: RestorePlan, answers: list[dict[str, Any]] | None = None
                ) -> None:
    from pitr.pg.names import format_lsn

    b = plan.backup
    echo = typer.echo
    echo(f"Restore plan for stanza {stanza!r}, target {plan.target.describe()}:")
    for a in answers or ():
        echo(f"  repository  {a['name']} ({a['url']}): {a['state']}"
             + (f", backup {a['backup']}" if "backup" in a else "")
             + (f": {a['error']}" if "error" in a else ""))
    echo(f"  backup      {b.id} (timeline {b.timeline}, finished {b.stop_time.isoformat()}, "
         f"LSN {format_lsn(b.start_lsn)} .. {format_lsn(b.stop_lsn)}, "
         f"{_mib(b.stored_bytes)} stored)")
    if plan.chain:  # docs/incremental-backups.md: pg_combinebackup rebuilds it from these
        echo(f"  chain       {' <- '.join(c.id for c in plan.chain)} "
             f"({_mib(plan.backup_bytes)} stored, combined by pg_combinebackup)")
    for t in b.extra.get("tablespaces") or ():  # docs/tablespaces.md
        echo(f"  tablespace  {t['name']} (oid {t['oid']}) from {t['location']}")
    path = " -> ".join(f"{s.tli}" + (f" (until {format_lsn(s.end_lsn)})"
                                    if s.end_lsn is not None else "") for s in plan.path)
    echo(f"  timelines   {path}; recovery_target_timeline = {plan.timeline}")
    if plan.segments:
        echo(f"  WAL         {plan.segments[0]} .. {plan.segments[-1]} "
             f"({plan.segment_count} segments, {_mib(plan.wal_bytes)} stored)")
    if plan.wal_end_time is not None:
        echo(f"  WAL ends    archived {plan.wal_end_time.isoformat()}")
    echo("  recovery settings:")
    for k, v in plan.recovery_settings.items():
        echo(f"    {k} = '{v}'")
    for note in plan.notes:
        echo(f"  note: {note}")


def _print_result(result: RestoreResult) -> None:
    echo = typer.echo
    if result.moved_aside:
        echo(f"The old contents of {result.pgdata} are in {result.moved_aside}.")
    echo(f"Restored {result.files} files ({_mib(result.extracted_bytes)}, "
         f"{_mib(result.downloaded_bytes)} downloaded) into {result.pgdata} in "
         f"{result.extract_seconds:.1f}s.")
    if result.chain:
        echo(f"pg_combinebackup rebuilt it from {' <- '.join(result.chain)} in "
             f"{result.combine_seconds:.1f}s.")
    if result.recovery is None:
        echo("Recovery settings and recovery.signal are written. Start the server to recover:")
        echo(f"  {result.start_command}")
        return
    r = result.recovery
    echo(f"Recovery reached its target in {r.seconds:.1f}s; the server is {r.state}.")
    echo(f"  last replayed transaction: {r.replay_timestamp or 'none'}")
    echo(f"  replayed up to LSN:        {r.replay_lsn or 'unknown'}")
    echo(f"  timeline:                  {r.timeline}")
    for line in r.log_lines:
        if "recovery stopping" in line or "selected new timeline" in line:
            echo(f"  server log: {line}")
