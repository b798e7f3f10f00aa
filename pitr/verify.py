"""The restore drill: restore a backup into a scratch cluster, check it, report, clean up.

Steps (``run_verify``):

1. plan with the pure planner (newest backup, target ``latest`` by default;
   ``--backup``, ``--to`` or ``--random-point``); a plan that cannot be made
   (missing WAL, no backup) is a failed drill, not a crash;
2. restore with :mod:`pitr.restore` (the same code path as ``pitr restore``)
   into a scratch directory, as ``postgres.user`` when running as root, with
   ``archive_mode = off`` so the copy can never push into the production
   archive, listening only on a private Unix socket on a free port, with a
   drill-only ``pg_hba.conf`` (local trust) so its checks can log in;
3. wait until recovery reached the target and the copy was promoted;
4. run the checks (:mod:`pitr.verify_checks`) and measure RTO (drill start to a
   usable cluster), restored size and WAL replayed;
5. write the JSON report to ``<stanza>/verify/<time>.json`` and the log; stop
   and delete the scratch cluster unless ``--keep``; alert and raise
   :class:`CheckFailed` (exit 14) when any check failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import random
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pitr import log
from pitr.atomic import atomic_write
from pitr.catalog import Catalog
from pitr.config import Config
from pitr.errors import (
    AlreadyExists,
    Interrupted,
    PitrError,
    PlanError,
    TargetDirError,
    UsageError,
)
from pitr.manifest import BackupRecord
from pitr.pg.names import lsn_to_segno, segment_name
from pitr.repo import Repo
from pitr.targets import Target, TargetKind
from pitr.verify_checks import ClusterProbe, DrillCheck, run_builtin, run_user_checks
from pitr.verify_report import DrillReport
from pitr.window import recovery_window

logger = logging.getLogger("pitr.verify")


@dataclass(frozen=True)
class DrillOptions:
    backup_id: str | None = None
    target: Target | None = None  # None: latest (all archived WAL after the backup)
    random_point: bool = False
    seed: int | None = None
    keep: bool = False


# -- pure decisions -----------------------------------------------------------------

def drill_backup(catalog: Catalog, backup_id: str | None) -> BackupRecord:
    """The backup whose archived WAL bounds a random target: the given one, else the
    oldest of those the newest backup's unbroken WAL continues."""
    if not catalog.backups:
        raise PlanError("no completed backup: there is no recovery window to pick from",
                        hint="run `pitr backup` first")
    if backup_id is None:
        # The oldest backup the newest one's unbroken WAL also continues: a random
        # target may fall before the newest backup, and so may the last commit.
        newest = catalog.backups[-1]
        r = catalog.range_holding(newest.timeline,
                                  lsn_to_segno(newest.stop_lsn, catalog.segment_size))
        if r is None:
            return newest
        return min((b for b in catalog.backups if b.timeline == newest.timeline
                    and r.first <= lsn_to_segno(b.stop_lsn, catalog.segment_size)),
                   key=lambda b: b.stop_lsn)
    match = [b for b in catalog.backups if b.id == backup_id]
    if not match:
        raise PlanError(f"backup {backup_id!r} is not in the repository",
                        hint="`pitr list` shows the completed backups")
    return match[0]


def random_point(catalog: Catalog, rng: random.Random, last_commit: datetime | None,
                 backup_id: str | None = None) -> datetime:
    """A uniformly random restore time (whole seconds) that recovery can provably reach.

    From one second after the start of the recovery window (:mod:`pitr.window`: the
    end of the oldest restorable backup), or after the end of ``backup_id``, to
    strictly before ``last_commit``, the newest commit/abort time in the archived
    WAL (:func:`pitr.restore.last_commit_in_archive`): PostgreSQL stops at a time
    target only on a commit or abort record stamped after it, and reports
    "recovery ended before configured recovery target was reached" otherwise.
    """
    window = recovery_window(catalog)
    if window is None:
        raise PlanError("no completed backup: there is no recovery window to pick from"
                        if not catalog.backups else "no backup has all of its WAL archived: "
                        "there is no recovery window to pick from",
                        hint="run `pitr backup` first (`pitr list` shows each backup's WAL)")
    low = window.earliest.time if backup_id is None else drill_backup(catalog, backup_id).stop_time
    first = low.replace(microsecond=0) + timedelta(seconds=1)
    if last_commit is not None:
        # the newest whole second strictly before the commit
        high = last_commit.replace(microsecond=0)
        if high == last_commit:
            high -= timedelta(seconds=1)
        if high >= first:
            return first + timedelta(seconds=rng.randint(0, int((high - first).total_seconds())))
    seen = "none" if last_commit is None else f"the last at {last_commit.isoformat()}"
    raise PlanError(f"no transaction committed after the backup (ended {low.isoformat()}) is "
                    f"in the archive ({seen}): a time target cannot be proven",
                    hint="drill without --random-point (to the latest archived WAL), or "
                         "after a commit's WAL was archived")


def wal_gap_after(catalog: Catalog, timeline: int, from_segno: int) -> str | None:
    """Names of the first missing WAL after ``from_segno`` on ``timeline``, or None.

    ``latest`` plans stop quietly at a gap; a drill must call it a failure, because
    every point after it is unrestorable."""
    for g in catalog.gaps(timeline):
        if g.last >= from_segno:
            first = segment_name(timeline, max(g.first, from_segno), catalog.segment_size)
            last = segment_name(timeline, g.last, catalog.segment_size)
            return first if first == last else f"{first}..{last}"
    return None


def report_key(repo: Repo, started: datetime) -> str:
    return f"{repo.verify_prefix}{started.astimezone(UTC):%Y%m%dT%H%M%SZ}.json"


# -- I/O edges ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _db_user(cfg: Config) -> str:
    from pitr.pg.conn import dsn_user

    return cfg.verify.dbuser or dsn_user(cfg.postgres.dsn) or "postgres"


def _make_scratch(cfg: Config) -> Path:
    """A private directory for the copy, owned by the cluster user when we are root."""
    parent = cfg.verify.scratch_dir or None
    try:
        if parent:
            Path(parent).mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"pitr-verify-{cfg.stanza}-", dir=parent))
        if os.geteuid() == 0:
            pw = pwd.getpwnam(cfg.postgres.user)
            os.chown(path, pw.pw_uid, pw.pw_gid)
        path.chmod(0o700)
    except (OSError, KeyError) as exc:
        raise TargetDirError(f"cannot create the drill's scratch directory in "
                             f"{parent or tempfile.gettempdir()}: {exc}",
                             hint="set verify.scratch_dir to a directory the PostgreSQL user "
                                  "can write, with room for a full restore") from exc
    return path


def dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):  # a file vanished while walking
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def write_report(repo: Repo, report: DrillReport) -> str:
    """Store the report; never overwrites an earlier drill's report."""
    from pitr.storage.base import put_bytes

    key = report_key(repo, report.started_at)
    for n in range(100):
        candidate = key if n == 0 else key.replace(".json", f"-{n}.json")
        report.key = candidate
        body = json.dumps(report.to_json(), indent=2, default=str).encode()
        try:
            put_bytes(repo.storage, candidate, body, if_absent=True)
            return candidate
        except AlreadyExists:
            continue
    raise AlreadyExists(f"{key}: too many verify reports with this timestamp")


def _scratch_settings(scratch: Path, port: int, hba: Path) -> dict[str, str]:
    """What makes the copy a private throwaway: no network, no archiving, no replicas."""
    return {
        "port": str(port),
        "listen_addresses": "",
        "unix_socket_directories": str(scratch / "sock"),
        "hba_file": str(hba),
        "archive_mode": "off",
        "archive_command": "",
        "synchronous_standby_names": "",  # a commit (CREATE EXTENSION) must not wait
        "primary_conninfo": "",
        # A restored subscription would connect to its publisher and consume the
        # production replication slot: no apply workers in a drill.
        "max_logical_replication_workers": "0",
        "cluster_name": "pitr-verify",
    }


def _prepare_scratch(scratch: Path, port: int, owner: Any) -> dict[str, str]:
    """The copy's private socket directory and pg_hba.conf; returns the settings the
    restore writes for it (RestoreOptions.extra_settings: the drill never edits the
    restored configuration itself)."""
    sock = scratch / "sock"
    sock.mkdir(mode=0o700, exist_ok=True)
    owner.chown(sock)
    hba = scratch / "pg_hba.verify.conf"
    # Only the private socket directory (0700, the cluster user and root) can reach
    # the copy, so trust is safe here and lets the checks log in as any role.
    atomic_write(hba, "# pitr verify: scratch cluster only\nlocal all all trust\n")
    owner.chown(hba)
    return _scratch_settings(scratch, port, hba)


def _recovery_check(plan: Any, outcome: Any) -> DrillCheck:
    from pitr.restore import replay_shortfall

    if outcome.state != "promoted" or outcome.in_recovery:
        return DrillCheck("recovery", False, f"the copy did not leave recovery "
                           f"(state {outcome.state})")
    short = replay_shortfall(plan, outcome.replay_lsn)
    if short is not None:
        return DrillCheck("recovery", False, short, data={"log": outcome.log_lines})
    return DrillCheck("recovery", True, f"reached {plan.target}: replayed to "
                       f"{outcome.replay_lsn}, last transaction {outcome.replay_timestamp}",
                       data={"log": outcome.log_lines})


def _choose_target(cfg: Config, repo: Repo, catalog: Catalog, opts: DrillOptions,
                   report: DrillReport) -> Target:
    if opts.random_point:
        if opts.target is not None:
            raise UsageError("--to and --random-point exclude each other")
        seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(2**31)
        report.seed = seed
        from pitr.restore import last_commit_in_archive

        last = last_commit_in_archive(repo, catalog, drill_backup(catalog, opts.backup_id),
                                  cfg.postgres.bindir, budget=cfg.repository.timeout)
        report.measures["last_commit_in_archive"] = last.isoformat() if last else None
        return Target.at_time(random_point(catalog, random.Random(seed), last, opts.backup_id))
    return opts.target or Target.latest()


def run_verify(cfg: Config, opts: DrillOptions, *, config_path: str | None) -> DrillReport:
    """The whole drill; returns the report (ok or not).

    Raises only for bad usage, and :class:`Interrupted` (after cleaning up,
    storing the report and alerting) when a signal stopped the drill: SIGTERM
    (systemd's stop, a timeout) must not leave a scratch cluster running.
    Anything else that goes wrong is a failed check: a monthly drill that
    crashes must alert as loudly as one that finds a problem.
    """
    from pitr.interrupt import signals_interrupt

    with signals_interrupt("received {signal}"):
        return _run_verify(cfg, opts, config_path)


def _run_verify(cfg: Config, opts: DrillOptions, config_path: str | None) -> DrillReport:
    from pitr.catalog import load_catalog

    t0 = time.monotonic()
    report = DrillReport(cfg.stanza, datetime.now(UTC))
    repo = Repo.open(cfg)
    interrupted: Interrupted | None = None
    try:
        catalog = load_catalog(repo)
        target = _choose_target(cfg, repo, catalog, opts, report)
        report.target = target.to_json()
        _drill(cfg, opts, repo, catalog, target, report, t0, config_path)
    except UsageError:
        raise
    except PlanError as exc:
        report.checks.append(DrillCheck("plan", False, exc.message))
    except Interrupted as exc:
        interrupted = exc
        report.checks.append(DrillCheck("drill", False, f"interrupted: {exc.message}"))
    except PitrError as exc:
        report.checks.append(DrillCheck("drill", False, exc.message))
    except Exception as exc:  # a bug must still clean up, report and alert
        logger.exception("restore drill crashed")
        report.checks.append(DrillCheck("drill", False, f"internal error: "
                                         f"{type(exc).__name__}: {exc}"))
    finally:
        if report.scratch.get("path") and not opts.keep:
            _remove_scratch(cfg, Path(report.scratch["path"]), report)
    report.finished_at = datetime.now(UTC)
    report.measures.setdefault("drill_seconds", round(time.monotonic() - t0, 3))
    _publish(cfg, repo, report)
    if interrupted is not None:
        raise interrupted
    return report


def _drill(cfg: Config, opts: DrillOptions, repo: Repo, catalog: Catalog, target: Target,
           report: DrillReport, t0: float, config_path: str | None) -> None:
    from pitr.pg.ctl import PgCtl
    from pitr.planner import plan as make_plan
    from pitr.restore import Owner, RestoreOptions, restore

    plan = make_plan(catalog, target, datetime.now(UTC), opts.backup_id)
    report.backup_id = plan.backup.id
    plan_doc: dict[str, Any] = plan.to_json()
    # the segment list can be thousands of names; first/last/count say enough
    plan_doc["wal"] = {k: v for k, v in plan_doc["wal"].items() if k != "segments"}
    report.plan = plan_doc
    report.checks.append(DrillCheck("plan", True, f"backup {plan.backup.id}, "
                                     f"{plan.segment_count} WAL segments to {target}"))
    if plan.cold:  # fail before the scratch cluster, not halfway (docs/storage-tiers.md)
        from pitr.errors import ArchivedObject
        from pitr.planner import cold_note

        raise ArchivedObject(f"the drill cannot read archived objects: {cold_note(plan.cold)}")
    start_seg = lsn_to_segno(plan.backup.start_lsn, catalog.segment_size)
    if target.kind is TargetKind.LATEST:
        # The planner proves the WAL up to an explicit target; "latest" stops quietly
        # at a gap, which for a drill means every later point is lost.
        gap = wal_gap_after(catalog, plan.timeline, start_seg)
        report.checks.append(
            DrillCheck("wal_continuity", False, f"WAL segment {gap} is missing from the "
                        "archive: points after it cannot be restored") if gap else
            DrillCheck("wal_continuity", True, "no gap in the archived WAL after the backup"))

    scratch = _make_scratch(cfg)
    pgdata = scratch / "data"
    port = free_port()
    report.scratch = {"path": str(scratch), "pgdata": str(pgdata), "port": port,
                      "socket_dir": str(scratch / "sock"), "kept": opts.keep}
    owner = Owner.for_config(cfg)
    ropts = RestoreOptions(pgdata=pgdata, start=False, archive_mode="off", port=port,
                           wait_timeout=float(cfg.verify.timeout), isolated=True,
                           extra_settings=_prepare_scratch(scratch, port, owner),
                           verify_backups=True)
    log.event(logger, logging.INFO, "restore drill: restoring", backup=plan.backup.id,
              target=str(target), scratch=str(scratch), port=port)
    from pitr.claims import claim_backup

    # expire keeps the backup and its WAL while the drill reads them (docs/fault-table.md)
    claim = claim_backup(repo, plan.backup.id, command="pitr verify",
                         lease=2 * cfg.backup.lock_lease)
    report.scratch["claim"] = claim.claim.id
    try:
        try:
            result = restore(cfg, repo, plan, ropts, config_path=config_path,
                             confirm=lambda _q: False)
        except Interrupted:
            raise
        except PitrError as exc:
            report.checks.append(DrillCheck("restore", False, exc.message))
            return
        report.measures["restored_bytes"] = result.extracted_bytes
        report.measures["downloaded_bytes"] = result.downloaded_bytes
        if result.chain:
            report.checks.append(DrillCheck(
                "chain", True, f"pg_combinebackup rebuilt backup {plan.backup.id} from "
                f"{' <- '.join(result.chain)} in {result.combine_seconds:.1f} s"))
        if result.tablespaces:  # docs/tablespaces.md: never a production path
            report.checks.append(DrillCheck(
                "tablespaces", True, "relocated into the scratch directory: " + ", ".join(
                    f"{name} -> {dest}" for name, dest in sorted(result.tablespaces.items()))))
        if result.verified:
            report.checks.append(DrillCheck(
                "pg_verifybackup", True, f"verified against their backup_manifest: "
                f"{', '.join(result.verified)}"))
        for name, why in result.unverified:
            report.checks.append(DrillCheck("pg_verifybackup", True, f"skipped for {name}: {why}"))
        assert result.bindir is not None  # restore() resolves it for the backup's major
        ctl = PgCtl(pgdata, bindir=result.bindir, user=owner.name,
                    log_file=scratch / "postgres.log", db_user=_db_user(cfg))
        report.scratch["log_file"] = str(ctl.log_file)
        report.scratch["bindir"] = str(result.bindir)
        try:
            ctl.start()
            outcome = ctl.wait_for_recovery("promote", timeout=float(cfg.verify.timeout))
        except Interrupted:
            raise
        except PitrError as exc:
            report.checks.append(DrillCheck("recovery", False, exc.message + (
                f"\n{exc.hint}" if exc.hint else "")))
            return
        report.measures["rto_seconds"] = round(time.monotonic() - t0, 3)
        report.recovery = outcome.to_json()
        report.checks.append(_recovery_check(plan, outcome))
        if outcome.replay_lsn:
            from pitr.pg.names import parse_lsn

            replay = parse_lsn(outcome.replay_lsn)
            report.measures["wal_replayed_bytes"] = max(0, replay - plan.backup.start_lsn)
            report.measures["wal_segments"] = (lsn_to_segno(replay, catalog.segment_size)
                                               - start_seg + 1)
        report.measures["wal_fetched_segments"] = plan.segment_count

        probe = ClusterProbe(str(scratch / "sock"), port, _db_user(cfg))
        t_checks = time.monotonic()
        builtin, _dbs = run_builtin(probe, amcheck=cfg.verify.amcheck,
                                    heapallindexed=cfg.verify.heapallindexed)
        report.checks.extend(builtin)
        if builtin and builtin[0].ok:
            report.checks.extend(run_user_checks(probe, cfg.verify.checks))
        report.measures["checks_seconds"] = round(time.monotonic() - t_checks, 3)
        report.measures["data_dir_bytes"] = dir_size(pgdata)
    finally:
        claim.release()


def _remove_scratch(cfg: Config, scratch: Path, report: DrillReport) -> None:
    """Stop the copy and delete it; a failure here is reported, never hidden."""
    from pitr.pg.ctl import PgCtl

    pgdata = scratch / "data"
    try:
        if (pgdata / "postmaster.pid").exists():
            user = cfg.postgres.user if os.geteuid() == 0 else None
            # the restore's binaries (the backup's major), once it got that far
            bindir = report.scratch.get("bindir") or cfg.postgres.bindir
            PgCtl(pgdata, bindir=Path(bindir), user=user).stop("immediate")
        shutil.rmtree(scratch)
        report.scratch["removed"] = True
    except (OSError, PitrError) as exc:
        report.scratch["removed"] = False
        report.checks.append(DrillCheck("cleanup", False, f"could not remove the scratch "
                                         f"cluster {scratch}: {exc}"))


def _publish(cfg: Config, repo: Repo, report: DrillReport) -> None:
    from pitr.monitor.alerts import send_alert

    try:
        write_report(repo, report)
    except PitrError as exc:
        log.event(logger, logging.ERROR, "could not store the verify report",
                  reason=exc.message)
        report.checks.append(DrillCheck("report", False,
                                         f"could not store the report: {exc.message}"))
    doc = report.to_json()
    summary = {k: doc.get(k) for k in ("ok", "backup_id", "rto_seconds", "restored_bytes",
                                       "wal_replayed_bytes", "wal_segments", "report")}
    summary["failed"] = [f"{c.name}: {c.detail}" for c in report.failed]
    summary["checks"] = {c.name: "ok" if c.ok else "FAILED" for c in report.checks}
    summary["target"] = report.target
    log.event(logger, logging.INFO if report.ok else logging.ERROR,
              "restore drill passed" if report.ok else "restore drill FAILED", **summary)
    if not report.ok:
        failed = ", ".join(c.name for c in report.failed)
        send_alert(cfg, "verify_failed",
                   f"restore drill of backup {report.backup_id or '?'} failed: {failed}",
                   {"report": report.key, "backup": report.backup_id,
                    **{c.name: c.detail[:300] for c in report.failed}})
