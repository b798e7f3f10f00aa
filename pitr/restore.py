"""Carry out a restore plan: prepare the directory, stream the base backup in,
write the recovery settings, and (optionally) start the server and wait.

Safety rules, each one a past disaster somewhere:
* a non-empty target directory is refused; ``--force`` moves it aside
  (``DIR.pitr-old-<time>``), nothing is deleted;
* a directory holding a ``postmaster.pid`` is refused even with ``--force``,
  whether or not its pid is visible here (a server in a container lives in
  another pid namespace and looks dead from the host);
* the configured production data directory needs a confirmation (``--yes``);
* extraction uses tarfile's ``data`` filter: no absolute paths, no ``..``,
  no links leaving the directory, no device files;
* the stored sha256 of the backup object is checked while streaming; a
  mismatch fails loudly and no recovery settings are written, so nobody can
  start a half-extracted or corrupt copy by accident;
* the restored copy gets ``archive_mode = off`` unless ``--archive-mode
  preserve``: a test restore must never push WAL into the production stanza.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shlex
import shutil
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pitr import log as pitr_log
from pitr import stream
from pitr.atomic import atomic_write
from pitr.catalog import Catalog
from pitr.config import Config
from pitr.configfile import config_file
from pitr.errors import (
    ConfigError,
    IncrementalError,
    IntegrityError,
    NotFound,
    PermissionRefused,
    PitrError,
    PostgresError,
    ReplayEndedShort,
    TablespaceError,
    TargetDirError,
    VersionMismatch,
)
from pitr.manifest import BackupObject, BackupRecord
from pitr.pg.conn import dsn_user
from pitr.pg.ctl import PgCtl, RecoveryOutcome, as_user, current_user
from pitr.pg.names import format_lsn, lsn_to_segno, parse_lsn, segment_name
from pitr.pg.version import data_dir_major, resolve_bindir
from pitr.planner import RestorePlan
from pitr.progress import Progress
from pitr.repo import Repo
from pitr.setup import pitr_executable
from pitr.storage.base import Storage
from pitr.targets import TargetKind

log = logging.getLogger("pitr.restore")

TARGET_ACTIONS = ("promote", "pause", "shutdown")
ARCHIVE_MODES = ("off", "preserve")
_DROP_AFTER_EXTRACT = ("postmaster.pid", "postmaster.opts", "recovery.signal", "standby.signal")


@dataclass
class RestoreOptions:
    pgdata: Path
    force: bool = False
    start: bool = False
    target_action: str = "promote"
    archive_mode: str = "off"
    port: int | None = None
    yes: bool = False
    wait_timeout: float = 3600.0
    # a restore drill: nothing may be written outside pgdata's parent (docs/fault-table.md)
    isolated: bool = False
    # the drill's own settings (private socket, no archiving, no replicas: pitr/verify.py),
    # written with the recovery settings and overriding the restored ones
    extra_settings: dict[str, str] = field(default_factory=dict)
    # run pg_verifybackup on each backup of the chain and on the result (the drill does)
    verify_backups: bool = False
    # --tablespace-map OLD=NEW: where each tablespace goes instead of its original
    # location (docs/tablespaces.md); a drill puts every one into its scratch directory
    tablespace_map: dict[str, str] = field(default_factory=dict)
    # the repository the plan chose when it is not the first: restore_command asks it
    # first (docs/multiple-repositories.md)
    repo: str | None = None


@dataclass
class RestoreResult:
    pgdata: Path
    moved_aside: Path | None = None
    downloaded_bytes: int = 0
    extracted_bytes: int = 0
    files: int = 0
    extract_seconds: float = 0.0
    settings: dict[str, str] = field(default_factory=dict)
    start_command: str = ""
    recovery: RecoveryOutcome | None = None
    bindir: Path | None = None  # of the backup's major version (pitr/pg/version.py)
    chain: tuple[str, ...] = ()  # backup ids pg_combinebackup combined, full backup first
    combine_seconds: float = 0.0
    verified: tuple[str, ...] = ()  # what pg_verifybackup verified
    unverified: tuple[tuple[str, str], ...] = ()  # (directory, why pg_verifybackup did not run)
    tablespaces: dict[str, str] = field(default_factory=dict)  # name -> where restored

    def to_json(self) -> dict[str, Any]:
        return {"pgdata": str(self.pgdata),
                "moved_aside": str(self.moved_aside) if self.moved_aside else None,
                "downloaded_bytes": self.downloaded_bytes, "extracted_bytes": self.extracted_bytes,
                "files": self.files, "extract_seconds": round(self.extract_seconds, 2),
                "chain": list(self.chain), "combine_seconds": round(self.combine_seconds, 2),
                "verified": list(self.verified), "tablespaces": self.tablespaces,
                "recovery_settings": self.settings, "start_command": self.start_command,
                "started": self.recovery is not None,
                "reached": self.recovery.to_json() if self.recovery else None}


# -- who owns the restored cluster ----------------------------------------------

@dataclass(frozen=True)
class Owner:
    name: str
    uid: int
    gid: int

    @classmethod
    def for_config(cls, cfg: Config) -> Owner:
        """postgres.user when we are root (we chown to it), else ourselves."""
        name = cfg.postgres.user if os.geteuid() == 0 else current_user()
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise ConfigError([f"postgres.user: no OS user named {name!r}"]) from None
        return cls(name, pw.pw_uid, pw.pw_gid)

    def chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.lchown(path, self.uid, self.gid)


# -- tablespaces (docs/tablespaces.md) ---------------------------------------------

@dataclass(frozen=True)
class TablespaceTarget:
    oid: int
    name: str
    location: str  # where it was when the backup was taken
    object: str  # the backup object holding its tar
    dest: Path  # where this restore puts it


def parse_tablespace_map(items: list[str]) -> dict[str, str]:
    """``OLD=NEW`` options -> {OLD: NEW}; both absolute paths.

    >>> parse_tablespace_map(["/srv/ts=/restore/ts"])
    {'/srv/ts': '/restore/ts'}
    """
    out: dict[str, str] = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise TablespaceError(f"--tablespace-map {item!r}: expected OLD=NEW")
        for path in (old, new):
            if not os.path.isabs(path) or "\n" in path:
                raise TablespaceError(f"--tablespace-map {item!r}: {path!r} is not an "
                                      "absolute path")
        old = os.path.normpath(old)
        if old in out:
            raise TablespaceError(f"--tablespace-map names {old} twice")
        out[old] = os.path.normpath(new)
    return out


def tablespace_targets(backup: BackupRecord, opts: RestoreOptions) -> list[TablespaceTarget]:
    """Where each tablespace of ``backup`` goes: the map's NEW, else its original location;
    in a drill (``isolated``) always ``<scratch>/tablespaces/<oid>``, beside the data
    directory, whatever the map says (a drill never writes to a production path)."""
    spaces = backup.extra.get("tablespaces") or []
    locations = {os.path.normpath(str(t["location"])) for t in spaces}
    unknown = sorted(set(opts.tablespace_map) - locations)
    if unknown and not opts.isolated:
        raise TablespaceError(
            f"--tablespace-map names {', '.join(unknown)}, which is no tablespace location "
            f"of backup {backup.id}"
            + (f" (its tablespaces: {', '.join(sorted(locations))})" if locations
               else " (it has no tablespaces)"))
    out = []
    for t in spaces:
        location = os.path.normpath(str(t["location"]))
        if opts.isolated:
            dest = opts.pgdata.parent / "tablespaces" / str(t["oid"])
        else:
            dest = Path(opts.tablespace_map.get(location, location))
        out.append(TablespaceTarget(int(t["oid"]), str(t["name"]), location, str(t["object"]),
                                    dest))
    dests = [os.path.normpath(t.dest) for t in out]
    if len(set(dests)) != len(dests):
        raise TablespaceError("two tablespaces would be restored into one directory: "
                              + ", ".join(f"{t.name} -> {t.dest}" for t in out))
    return out


def check_tablespace_targets(targets: list[TablespaceTarget], opts: RestoreOptions) -> None:
    """Refuse, before anything is written, a tablespace location that is not empty (on
    the database host, without a map, that is production's live tablespace)."""
    pgdata = os.path.normpath(opts.pgdata)
    for t in targets:
        dest = os.path.normpath(t.dest)
        if dest == pgdata or dest.startswith(pgdata + os.sep):
            raise TablespaceError(f"tablespace {t.name} would be restored into the data "
                                  f"directory ({t.dest})",
                                  hint="map it elsewhere: --tablespace-map OLD=NEW")
        if _occupied(str(t.dest)):
            mapped = t.location != dest
            raise TablespaceError(
                f"tablespace {t.name} (oid {t.oid}) would be restored into {t.dest}, "
                f"{'which' if mapped else 'its original location, which'} is not empty",
                hint=f"relocate it with --tablespace-map {t.location}=NEW_EMPTY_DIR, or empty "
                     f"{t.dest} first; pitr never restores into an occupied tablespace "
                     "location (docs/tablespaces.md)")


def write_tablespace_map(pgdata: Path, targets: list[TablespaceTarget], owner: Owner) -> None:
    """Point the backup's tablespace_map at the restored locations: PostgreSQL makes the
    pg_tblspc links from it when recovery starts."""
    path = pgdata / "tablespace_map"
    try:
        found = {int(line.split(" ", 1)[0]) for line in path.read_text().splitlines()
                 if line.strip()}
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"the backup's tablespace_map is unreadable: {exc}",
                             hint="the backup is damaged: restore another backup") from exc
    if found != {t.oid for t in targets}:
        raise IntegrityError(
            f"the backup's tablespace_map lists tablespaces {sorted(found)}, its manifest "
            f"{sorted(t.oid for t in targets)}",
            hint="the backup is damaged: restore another backup")
    atomic_write(path, "".join(f"{t.oid} {t.dest}\n" for t in targets), durable=True)
    owner.chown(path)


# -- the target directory ---------------------------------------------------------

def check_destination(cfg: Config, opts: RestoreOptions,
                      confirm: Callable[[str], bool]) -> None:
    """Refuse what would destroy or corrupt something; ask before touching production."""
    d = opts.pgdata
    if d.exists() and not d.is_dir():
        raise TargetDirError(f"{d} exists and is not a directory")
    refuse_postmaster_pid(d)
    if d.exists() and any(d.iterdir()) and not opts.force:
        raise TargetDirError(
            f"{d} is not empty",
            hint="restore into an empty or new directory, or pass --force to move the current "
                 f"contents aside to {d}.pitr-old-<time> (nothing is deleted)")
    prod = cfg.postgres.pgdata
    if prod and _same_path(d, Path(prod)) and not opts.yes:
        question = (f"{d} is the production data directory (postgres.pgdata). "
                    "Restore over it?")
        if not confirm(question):
            raise TargetDirError(f"not confirmed: restore over the production data directory {d}",
                                 hint="pass --yes to confirm without a prompt")


def refuse_postmaster_pid(d: Path) -> None:
    """Any postmaster.pid refuses the directory, ``--force`` included.

    Whether its pid is alive cannot be proven from here: a server in another pid
    namespace (a container sharing the volume) is invisible to kill(0), and a
    recycled pid looks alive. Only the operator can tell, so pitr says how.
    """
    pid_file = d / "postmaster.pid"
    if not (pid_file.exists() or pid_file.is_symlink()):
        return
    try:
        lines = pid_file.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    pid = lines[0].strip() if lines else "?"
    port = lines[3].strip() if len(lines) > 3 else "?"
    visible = pid.isdigit() and PgCtl(d, bindir=Path("."), user=None).postmaster() is not None
    where = ("it is running on this host" if visible else
             "no such process is visible here, but it may run in another pid namespace "
             "(a container or another host sharing this volume)")
    raise TargetDirError(
        f"{pid_file} names postmaster pid {pid} (port {port}): {where}; pitr never restores "
        "over a directory a server may be using, even with --force",
        hint=f"check on every host and container that can reach {d}: `pg_ctl status -D {d}`, "
             f"`ps -p {pid}` there, `fuser -v {d}` and whether anything listens on port {port}. "
             f"Once you are sure no server uses it, stop or remove that server or delete "
             f"{pid_file}, then run the restore again")


def check_tablespaces(cfg: Config, repo: Repo, plan: RestorePlan,
                      opts: RestoreOptions, bindir: Path,
                      restored: frozenset[int] = frozenset()) -> None:
    """Refuse, before anything is written, WAL whose replay would leave the directory.

    pg_waldump reads every planned segment (docs/restore.md, "Tablespaces in archived
    WAL"). A drill also fetches nothing past them (``archive-get --stop-after``), so WAL
    archived while it runs cannot bring a tablespace in unseen. Writes into the
    tablespaces the backup holds (``restored``) go where this restore put them.
    """
    from pitr.pg.waldump import scan_tablespace_records, tablespace_refusal
    from pitr.wal.fetch import fetch_to_bytes

    records = scan_tablespace_records(
        plan.segments, lambda name: fetch_to_bytes(repo, name, budget=cfg.repository.timeout),
        bindir, tmp_parent=opts.pgdata.parent if opts.isolated else None)
    records = [r for r in records if r.location is not None or r.tablespace not in restored]
    why = tablespace_refusal(records, isolated=opts.isolated, occupied=_occupied)
    if why is None:
        if records:
            pitr_log.event(log, logging.WARNING, "the WAL creates tablespaces; replay writes "
                           "into their recorded locations",
                           tablespaces=sorted({r.location for r in records if r.location}))
        return
    raise TargetDirError(
        f"refusing to {'run the restore drill' if opts.isolated else 'restore'}: {why}",
        hint=("a drill restores only the tablespaces its backup holds, relocated into its "
              "scratch directory (docs/tablespaces.md): pick a target before that record "
              "(--to), or a backup taken after the tablespace was created" if opts.isolated else
              "restore on another host, or move that directory's contents away first; pitr "
              "never replays into an occupied tablespace location"))


def _occupied(location: str) -> bool:
    path = Path(location)
    try:
        if not path.exists() and not path.is_symlink():
            return False
        return not path.is_dir() or any(path.iterdir())
    except OSError:
        return True  # cannot look inside: cannot prove it is free


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def prepare_directory(opts: RestoreOptions, owner: Owner, now: datetime) -> Path | None:
    """Create DIR 0700 for the owner; move old contents aside first. Returns where to."""
    d = opts.pgdata
    moved: Path | None = None
    if d.exists() and any(d.iterdir()):
        moved = d.with_name(f"{d.name}.pitr-old-{now.strftime('%Y%m%dT%H%M%SZ')}")
        try:
            d.rename(moved)
        except OSError:
            # a mount point cannot be renamed: move its entries instead
            moved.mkdir(mode=0o700)
            for entry in d.iterdir():
                shutil.move(str(entry), str(moved / entry.name))
        pitr_log.event(log, logging.WARNING, "moved the old contents aside",
                       pgdata=str(d), moved_to=str(moved))
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    d.chmod(0o700)
    owner.chown(d)
    return moved


# -- streaming the base backup in -------------------------------------------------

def _download_report(what: str, total: int) -> tuple[Progress, Callable[[int], None]]:
    """A progress line on a tty; elsewhere a log event every 5 s (systemd, cron)."""
    progress = Progress(f"downloading {what}", total or None)
    began = time.monotonic()
    next_report = began + 5

    def report(n: int) -> None:
        nonlocal next_report
        progress.update(n)
        now = time.monotonic()
        if now >= next_report and not progress.enabled:
            next_report = now + 5
            rate = progress.done / max(now - began, 1e-6) / 2**20
            pct = 100.0 * progress.done / total if total else 0.0
            pitr_log.event(log, logging.INFO, f"downloading {what}",
                           done_mib=round(progress.done / 2**20, 1),
                           total_mib=round(total / 2**20, 1),
                           percent=round(pct, 1), mib_per_s=round(rate, 1))

    return progress, report


def _extract_root(obj: BackupObject, pgdata: Path, roots: dict[str, Path]) -> Path:
    if obj.name == "base.tar.zst":
        return pgdata
    if obj.name == "pg_wal.tar.zst":
        return pgdata / "pg_wal"
    if obj.name in roots:  # a tablespace (docs/tablespaces.md)
        return roots[obj.name]
    raise IntegrityError(f"backup object {obj.name} is of a kind this pitr cannot restore",
                         hint="restore it with the pitr version that made the backup")


def extract_backup(storage: Storage, objects: tuple[BackupObject, ...], pgdata: Path,
                   owner: Owner, result: RestoreResult,
                   tablespaces: list[TablespaceTarget] | None = None) -> None:
    """Stream each tar object through zstd into ``pgdata`` (a tablespace's into its
    destination), verifying its checksums."""
    roots = {t.object: t.dest for t in tablespaces or ()}
    tars = [o for o in objects if o.name.endswith(".tar.zst")]
    if not any(o.name == "base.tar.zst" for o in tars):
        raise IntegrityError("the backup manifest lists no base.tar.zst",
                             hint="the backup is damaged; restore from another backup (--backup)")
    began = time.monotonic()
    for obj in sorted(tars, key=lambda o: o.name != "base.tar.zst"):
        root = _extract_root(obj, pgdata, roots)
        if obj.name in roots:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        else:
            root.mkdir(mode=0o700, exist_ok=True)
        owner.chown(root)
        try:
            src = storage.open(obj.key)
        except NotFound:
            raise IntegrityError(f"backup object {obj.key} is missing from the repository",
                                 hint="restore from another backup (--backup ID)") from None
        progress, report = _download_report(obj.name, obj.stored_bytes)
        stored, stored_hash = stream.Count(report), stream.Hash()
        raw, raw_hash = stream.Count(), stream.Hash()
        with src, stream.Pipeline(src, [stored, stored_hash, stream.ZstdDecompress(),
                                        raw, raw_hash]) as pipe:
            try:
                with tarfile.open(fileobj=pipe, mode="r|") as tar:
                    for member in tar:
                        safe_member(member, root, obj.name)
                        tar.extract(member, root, **_EXTRACT_KW)
                        owner.chown(root / member.name)
                        result.files += 1
                # the rest after the tar's end-of-archive blocks, through every filter
                pipe.drain()
            except (tarfile.TarError, EOFError) as exc:
                progress.abandon()
                raise IntegrityError(f"{obj.key}: not a readable tar: {exc}",
                                     hint="the backup object is damaged: restore another "
                                          "backup (--backup ID)") from exc
            except OSError as exc:
                # Writing into the data directory failed (full, read-only, quota): the
                # destination's fault, said as such, never "a bug" (docs/fault-table.md).
                progress.abandon()
                raise TargetDirError(
                    f"cannot write the restored files into {pgdata}: {exc.strerror or exc}",
                    hint="free space (a restore needs about the backup's database size plus "
                         "the WAL it replays) or restore elsewhere; the partial copy there may "
                         "be deleted (--force would only move it aside)") from exc
            except BaseException:
                progress.abandon()
                raise
            progress.close()
        _verify(obj, stored_hash.sha256, raw_hash.sha256, stored.bytes)
        result.downloaded_bytes += stored.bytes
        result.extracted_bytes += raw.bytes
    result.extract_seconds = time.monotonic() - began
    for name in _DROP_AFTER_EXTRACT:
        (pgdata / name).unlink(missing_ok=True)


# Python >= 3.11.4 has tarfile's "data" filter; safe_member enforces the same rules
# on every version (Debian 12 ships 3.11.2), so a hostile or damaged tar cannot
# write outside the data directory either way.
_EXTRACT_KW: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def safe_member(member: tarfile.TarInfo, root: Path, what: str) -> None:
    """Refuse members that would land outside ``root``; drop dangerous mode bits."""
    base = os.path.realpath(root)

    def inside(path: str) -> bool:
        real = os.path.realpath(path)
        return real == base or real.startswith(base + os.sep)

    def refuse(why: str) -> IntegrityError:
        return IntegrityError(f"{what}: refusing unsafe tar member {member.name!r}: {why}",
                              hint="the backup object is damaged or was tampered with")

    name = member.name
    parts = Path(name).parts
    if len(parts) == 2 and parts[0] == "pg_tblspc" and (member.issym() or member.islnk()):
        # PostgreSQL would write through this link into the tablespace's original
        # location, which on the database host is production's live tablespace.
        raise TargetDirError(
            f"{what}: the backup holds the tablespace link {name} -> {member.linkname}; "
            "restoring it would write outside the data directory",
            hint="pitr restores tablespaces from their own archives in the backup "
                 "(docs/tablespaces.md), never through a link in the base; restore this "
                 "backup with the tool that made it")
    if os.path.isabs(name) or ".." in parts:
        raise refuse("absolute path or '..'")
    dest = os.path.join(base, name)
    if not inside(dest):
        raise refuse("it leads outside the data directory")
    if member.issym():
        if os.path.isabs(member.linkname) or not inside(
                os.path.join(os.path.dirname(dest), member.linkname)):
            raise refuse(f"symlink to {member.linkname!r} outside the data directory")
    elif member.islnk():
        if os.path.isabs(member.linkname) or not inside(os.path.join(base, member.linkname)):
            raise refuse(f"hard link to {member.linkname!r} outside the data directory")
    elif not (member.isreg() or member.isdir()):
        raise refuse("device files and FIFOs do not belong in a data directory")
    member.mode &= 0o755  # no setuid/setgid/sticky, no group/other write


def _verify(obj: BackupObject, stored_sha: str, raw_sha: str, stored_bytes: int) -> None:
    if obj.sha256 and stored_sha != obj.sha256:
        raise IntegrityError(
            f"{obj.key}: checksum mismatch: the manifest says sha256 {obj.sha256} "
            f"({obj.stored_bytes} bytes), the repository returned sha256 {stored_sha} "
            f"({stored_bytes} bytes)",
            hint="the backup object is damaged; this directory holds an unusable partial "
                 "restore (no recovery settings were written): restore another backup")
    if obj.raw_sha256 and raw_sha != obj.raw_sha256:
        raise IntegrityError(f"{obj.key}: the decompressed tar has sha256 {raw_sha}, the "
                             f"manifest says {obj.raw_sha256}",
                             hint="the backup object is damaged: restore another backup")


# -- recovery settings --------------------------------------------------------------

def config_path_for_postgres(explicit: str | None, owner: Owner) -> Path:
    """The config file restore_command will read: absolute, existing, readable by the owner."""
    path = Path(config_file(explicit)[0]).absolute()
    if not path.is_file():
        raise ConfigError([f"restore needs a config file for restore_command to read; {path} "
                           "does not exist"],
                          hint="pass --config PATH (settings from the environment do not "
                               "reach the restored server's restore_command)")
    if os.geteuid() == 0 and owner.name != "root":
        import subprocess

        proc = subprocess.run(as_user(["test", "-r", str(path)], owner.name), cwd="/",
                              capture_output=True)
        if proc.returncode != 0:
            raise PermissionRefused(
                f"the config file {path} is not readable by {owner.name!r}, so the restored "
                "server's restore_command could not read it",
                hint=f"e.g. chgrp {owner.name} {path} && chmod 640 {path}")
    return path


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def recovery_conf(plan: RestorePlan, opts: RestoreOptions, exe: str,
                  config_path: Path) -> dict[str, str]:
    """Every setting appended to postgresql.auto.conf (values unquoted)."""
    bound = ""
    if opts.isolated and plan.segments:
        # the drill replays only WAL its tablespace scan has read
        bound = f"--stop-after {plan.segments[-1]} "
    if opts.repo is not None:
        bound += f"--repo {shlex.quote(opts.repo)} "
    restore_cmd = (f"{shlex.quote(exe)} --config {shlex.quote(str(config_path))} "
                   f"archive-get {bound}%f %p")
    out = {"restore_command": restore_cmd, **plan.recovery_settings}
    if plan.target.kind is not TargetKind.LATEST:
        out["recovery_target_action"] = opts.target_action
    # answering "where is recovery" needs connections during recovery
    out["hot_standby"] = "on"
    if opts.archive_mode == "off":
        out["archive_mode"] = "off"
    if opts.port is not None:
        out["port"] = str(opts.port)
    out.update(opts.extra_settings)
    return out


def _disable_stale(line: str, settings: dict[str, str]) -> str:
    """Comment out a setting this restore replaces, and every older recovery target.

    A backup of a cluster that was itself restored carries that restore's
    recovery_target_* lines; left active they would add a second target
    (PostgreSQL refuses) or silently replace the one asked for now.
    """
    key = line.split("=", 1)[0].strip().lower() if "=" in line else ""
    if key and not key.startswith("#") and (key in settings
                                           or key.startswith("recovery_target")):
        return f"# (replaced by pitr restore) {line}"
    return line


def write_recovery_settings(pgdata: Path, settings: dict[str, str], plan: RestorePlan,
                            owner: Owner, now: datetime) -> None:
    auto = pgdata / "postgresql.auto.conf"
    try:
        kept = [_disable_stale(line, settings) for line in auto.read_text().splitlines()]
    except FileNotFoundError:
        kept = []
    lines = [*kept, f"# pitr restore {now.isoformat(timespec='seconds')}: backup "
             f"{plan.backup.id}, target {plan.target}, timeline {plan.timeline}"]
    lines += [f"{k} = {_conf_quote(v)}" for k, v in settings.items()]
    atomic_write(auto, "\n".join(lines) + "\n", durable=True)
    owner.chown(auto)
    signal = pgdata / "recovery.signal"
    signal.touch(mode=0o600)
    owner.chown(signal)


# -- the whole restore --------------------------------------------------------------

def restore(cfg: Config, repo: Repo, plan: RestorePlan, opts: RestoreOptions, *,
            config_path: str | None, confirm: Callable[[str], bool],
            now: datetime | None = None) -> RestoreResult:
    now = now or datetime.now(UTC)
    if opts.target_action not in TARGET_ACTIONS:
        raise ConfigError([f"--target-action must be one of {', '.join(TARGET_ACTIONS)}"])
    if opts.archive_mode not in ARCHIVE_MODES:
        raise ConfigError([f"--archive-mode must be one of {', '.join(ARCHIVE_MODES)}"])
    opts.pgdata = opts.pgdata.absolute()
    # Before touching the directory: only binaries of the backup's major can start it.
    bindir = resolve_bindir(cfg.postgres.bindir, plan.backup.pg_version,
                            what=f"backup {plan.backup.id}")
    owner = Owner.for_config(cfg)
    cfg_file = config_path_for_postgres(config_path, owner)
    check_destination(cfg, opts, confirm)
    spaces = tablespace_targets(plan.backup, opts)
    check_tablespace_targets(spaces, opts)
    check_tablespaces(cfg, repo, plan, opts, bindir,  # the backup's major's pg_waldump
                      frozenset(t.oid for t in spaces))
    for b in plan.backups:  # a key missing for any object stops here (docs/encryption.md)
        for obj in b.objects:
            with contextlib.suppress(NotFound):  # extract names a missing object
                repo.sealed.check_opens(obj.key)
    result = RestoreResult(opts.pgdata, bindir=bindir)
    result.moved_aside = prepare_directory(opts, owner, now)
    pitr_log.event(log, logging.INFO, "restoring base backup", backup=plan.backup.id,
                   stored_mib=round(plan.backup_bytes / 2**20, 1),
                   pgdata=str(opts.pgdata), chain=[b.id for b in plan.backups])
    if plan.chain:
        rebuild_chain(repo.storage, plan, opts, owner, bindir, result, now)
    else:
        extract_backup(repo.storage, plan.backup.objects, opts.pgdata, owner, result, spaces)
        if spaces:
            write_tablespace_map(opts.pgdata, spaces, owner)
            result.tablespaces = {t.name: str(t.dest) for t in spaces}
        if opts.verify_backups:
            _verifybackup(bindir, opts.pgdata, owner, result)
    _check_data_major(opts.pgdata, plan)
    pitr_log.event(log, logging.INFO, "base backup extracted", files=result.files,
                   seconds=round(result.extract_seconds, 1),
                   mib=round(result.extracted_bytes / 2**20, 1))
    result.settings = recovery_conf(plan, opts, pitr_executable(), cfg_file)
    write_recovery_settings(opts.pgdata, result.settings, plan, owner, now)
    ctl = PgCtl(opts.pgdata, bindir=bindir, user=owner.name,
                db_user=dsn_user(cfg.postgres.dsn))
    result.start_command = shlex.join(ctl.start_command())
    if opts.start:
        pitr_log.event(log, logging.INFO, "starting the restored server; recovery runs now",
                       log_file=str(ctl.log_file))
        ctl.start()
        try:
            result.recovery = ctl.wait_for_recovery(opts.target_action,
                                                    timeout=opts.wait_timeout)
        except PostgresError as exc:
            if plan.target.kind is TargetKind.TIME and any(
                    ENDED_BEFORE_TARGET in ln for ln in ctl.recovery_log_lines()):
                raise _explain_ended_before(cfg, repo, plan, exc) from exc
            raise
        if result.recovery.timeline is None:
            result.recovery.timeline = plan.timeline
        if result.recovery.state != "shutdown":  # a stopped server has no LSN to ask
            short = replay_shortfall(plan, result.recovery.replay_lsn)
            if short is not None:
                raise ReplayEndedShort(
                    f"{short}; the restored server in {opts.pgdata} is {result.recovery.state} "
                    "there, short of the restore's target",
                    hint="do not use this copy: find out why archive-get answered 'absent' "
                         "early (its lines in the server log), then restore again")
    return result


# -- a chain of incremental backups (docs/incremental-backups.md) -------------------

def rebuild_chain(storage: Storage, plan: RestorePlan, opts: RestoreOptions, owner: Owner,
                  bindir: Path, result: RestoreResult, now: datetime) -> None:
    """Extract every backup of the chain beside ``pgdata``, then pg_combinebackup into it.

    pg_combinebackup reads directories, so each backup is streamed (download -> zstd ->
    tar, no temporary tar) into ``.<pgdata>.pitr-chain-<time>/`` next to ``pgdata``,
    removed afterwards whatever happens. Disk use at the peak: the chain's extracted
    backups plus the rebuilt directory; with PostgreSQL 18's ``--link`` on one file
    system the rebuilt directory hard-links the unchanged files, so the peak is about
    the database size plus the incrementals (docs/incremental-backups.md "Disk use").
    """
    stage = opts.pgdata.parent / f".{opts.pgdata.name}.pitr-chain-{now:%Y%m%dT%H%M%SZ}"
    tool = bindir / "pg_combinebackup"
    if not tool.exists():
        raise IncrementalError(f"{bindir} has no pg_combinebackup to rebuild backup "
                               f"{plan.backup.id} from its chain",
                               hint="install PostgreSQL's client tools of that major version")
    began = time.monotonic()
    try:
        stage.mkdir(mode=0o700)
        owner.chown(stage)
        dirs: list[Path] = []
        for i, b in enumerate(plan.backups):
            d = stage / f"{i:02d}-{b.id}"
            d.mkdir(mode=0o700)
            owner.chown(d)
            pitr_log.event(log, logging.INFO, "extracting a backup of the chain", backup=b.id,
                           kind="incremental" if b.parent else "full", step=i + 1,
                           of=len(plan.backups))
            extract_backup(storage, b.objects, d, owner, result)
            if opts.verify_backups:
                _verifybackup(bindir, d, owner, result)
            dirs.append(d)
        extracted = time.monotonic()
        argv = [str(tool), "--no-sync", "-o", str(opts.pgdata)]
        if plan.backup.pg_version >= 18 and os.stat(stage).st_dev == os.stat(opts.pgdata).st_dev:
            argv.append("--link")  # unchanged files are hard links, not copies
        argv += [str(d) for d in dirs]
        _run_tool(argv, owner, f"pg_combinebackup could not rebuild backup {plan.backup.id} "
                  f"from its chain {' <- '.join(b.id for b in plan.backups)}")
        result.combine_seconds = time.monotonic() - extracted
        result.chain = tuple(b.id for b in plan.backups)
        if opts.verify_backups:
            _verifybackup(bindir, opts.pgdata, owner, result)
    except OSError as exc:
        raise TargetDirError(f"cannot write the backup chain into {stage}: "
                             f"{exc.strerror or exc}",
                             hint="free space beside the data directory (a chain needs its "
                                  "extracted backups there while it is combined) or restore "
                                  "elsewhere") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    result.extract_seconds = time.monotonic() - began


def _run_tool(argv: list[str], owner: Owner, what: str) -> str:
    import subprocess

    proc = subprocess.run(as_user(argv, owner.name), cwd="/", capture_output=True, text=True,
                          env={**os.environ, "LC_MESSAGES": "C"}, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise IncrementalError(f"{what} (exit code {proc.returncode}):\n{tail}",
                               hint="restore an older full backup (--backup ID, `pitr list`), "
                                    "and take a full backup (`pitr backup --full`)")
    return proc.stdout


def _verifybackup(bindir: Path, d: Path, owner: Owner, result: RestoreResult) -> None:
    """pg_verifybackup -n: every file against the backup_manifest pg_basebackup wrote
    (-n: the WAL is checked by the restore itself, not shipped inside the backup)."""
    tool = bindir / "pg_verifybackup"
    why = ("the backup carries no backup_manifest (server-compressed, with tablespaces "
           "(docs/tablespaces.md), or taken without one)"
           if not (d / "backup_manifest").exists() else
           f"{bindir} has no pg_verifybackup" if not tool.exists() else "")
    if why:
        # Said, not skipped silently: a drill report must not read as if the files were
        # checked against the manifest when they were not
        # (docs/incremental-backups.md "The drill").
        result.unverified = (*result.unverified, (d.name, why))
        pitr_log.event(log, logging.WARNING, "pg_verifybackup did not run", directory=str(d),
                       reason=why)
        return
    try:
        _run_tool([str(tool), "-n", "-q", str(d)], owner, f"pg_verifybackup found {d} damaged")
    except IncrementalError as exc:
        raise IntegrityError(exc.message, hint="the backup is damaged: restore another "
                             "backup (--backup ID) and take a full backup") from None
    result.verified = (*result.verified, d.name)


def _check_data_major(pgdata: Path, plan: RestorePlan) -> None:
    """The extracted PG_VERSION against the manifest's major, whose binaries were picked:
    they must agree before a server starts on the directory."""
    found = data_dir_major(pgdata)
    recorded = plan.backup.pg_version
    if found is None or (recorded and found != recorded):
        raise VersionMismatch(
            f"backup {plan.backup.id}'s manifest records PostgreSQL {recorded or 'unknown'}, "
            f"but its data directory {pgdata} holds "
            + ("no PG_VERSION" if found is None else f"PostgreSQL {found} (PG_VERSION)"),
            hint="the backup's manifest and its data disagree; restore another backup "
                 "(`pitr list`); the directory was left as extracted for inspection")


def replay_shortfall(plan: RestorePlan, replay_lsn: str | None) -> str | None:
    """Why replay ending at ``replay_lsn`` breaks the plan's promise; None when it kept it.

    One rule for `restore --start` and the drill: recovery must reach
    ``plan.replay_until`` (see :class:`pitr.planner.RestorePlan`).
    """
    replay = parse_lsn(replay_lsn) if replay_lsn else None
    if replay is not None and replay >= plan.replay_until:
        return None
    got = replay_lsn or "an unknown LSN"
    if plan.segments and plan.replay_until > plan.backup.stop_lsn:
        last = plan.segments[-1]
        return (f"recovery ended at {got}, before any record of {last}, the last WAL segment "
                f"the plan replays (it starts at {format_lsn(plan.replay_until - 1)}): "
                "archived WAL was not replayed")
    return (f"recovery ended at {got}, before the end of the backup at "
            f"{format_lsn(plan.replay_until)}: the copy is not even consistent")


ENDED_BEFORE_TARGET = "recovery ended before configured recovery target was reached"


def ended_before_target(exc: PostgresError, plan: RestorePlan,
                        last_commit: datetime | None) -> PostgresError:
    """Why PostgreSQL gave up on a time target, with the newest commit the archive has.

    Recovery stops at a time target only on a commit or abort record stamped after
    it; the planner can only check segment archive times, which are later."""
    from pitr.targets import format_time

    last = ("no transaction in the archived WAL after the backup" if last_commit is None
            else f"the newest transaction in the archived WAL ended at {format_time(last_commit)}")
    return PostgresError(
        f"recovery ended before reaching {plan.target}: {last}, and PostgreSQL stops at a "
        "time target only on a commit stamped after it",
        hint="restore with --latest (everything archived), or wait until WAL with a later "
             "commit is archived (the next segment switch; archive_timeout bounds the wait) "
             "and restore again" + (f"; {exc.hint}" if exc.hint else ""))


# Segments read backwards from the newest before giving up: a quiet database may
# write checkpoints only, but 16 segments without one commit means no recent one.
MAX_SEGMENTS = 16


def segments_to_scan(catalog: Catalog, backup: BackupRecord,
                     limit: int = MAX_SEGMENTS) -> list[str]:
    """Names of the newest ``limit`` segments of the unbroken WAL after ``backup``, newest first.

    Only WAL that continues the backup without a gap can be replayed from it."""
    stop_seg = lsn_to_segno(backup.stop_lsn, catalog.segment_size)
    r = catalog.range_holding(backup.timeline, stop_seg)
    if r is None:
        return []
    first = max(stop_seg, r.last - limit + 1)
    return [segment_name(backup.timeline, s, catalog.segment_size)
            for s in range(r.last, first - 1, -1)]


def last_commit_in_archive(repo: Repo, catalog: Catalog, backup: BackupRecord,
                           bindir: str | Path, *, budget: float,
                           limit: int = MAX_SEGMENTS) -> datetime | None:
    """The newest commit/abort time in the archived WAL that continues ``backup``
    (:func:`pitr.pg.waldump.last_xact_end_time` over its newest ``limit`` segments)."""
    from pitr.pg.waldump import last_xact_end_time
    from pitr.wal.fetch import fetch_to_bytes

    # pg_waldump reads only WAL of its own major version (the page magic).
    pg_waldump = resolve_bindir(str(bindir), backup.pg_version, tool="pg_waldump",
                                what=f"the WAL after backup {backup.id}") / "pg_waldump"
    return last_xact_end_time(segments_to_scan(catalog, backup, limit),
                              lambda name: fetch_to_bytes(repo, name, budget=budget), pg_waldump)


def _explain_ended_before(cfg: Config, repo: Repo, plan: RestorePlan,
                          exc: PostgresError) -> PostgresError:
    """Best effort: the original error when the archive cannot be read."""
    from pitr.catalog import load_catalog

    try:
        last = last_commit_in_archive(repo, load_catalog(repo), plan.backup, cfg.postgres.bindir,
                                      budget=cfg.repository.timeout)
    except PitrError as err:
        log.warning("cannot find the newest archived commit: %s", err.message)
        return exc
    return ended_before_target(exc, plan, last)
