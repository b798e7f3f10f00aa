"""`pitr backup`: pg_basebackup streamed through zstd into the repository, manifest last.

One pass, no local copy: pg_basebackup's tar (stdout) -> zstd (with the frame's
content checksum) -> sha256 of the stored bytes -> ``Storage.put`` (multipart on S3).
Memory stays bounded by the compressor's and the driver's buffers whatever the
database size.

The manifest is written only after the WAL from the backup's start to its stop
point is in the repository, so every backup the catalog shows is restorable.
Whatever fails (pg_basebackup, the repository, SIGTERM/SIGINT) the partial
objects are removed; what a SIGKILL leaves behind the next run removes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from pitr import __version__, chains, codec, stream, tiers
from pitr import manifest as manifest_mod
from pitr.condwrites import require_conditional_writes
from pitr.config import Config
from pitr.errors import (
    BackupError,
    IncrementalError,
    IntegrityError,
    LockedError,
    NotFound,
    PitrError,
    SystemIdMismatch,
)
from pitr.interrupt import signals_ignored, signals_interrupt
from pitr.lock import StanzaLock
from pitr.log import event
from pitr.manifest import BackupObject, BackupRecord
from pitr.pg import basebackup as pgbb
from pitr.pg.names import backup_history_name, format_lsn, lsn_to_segno, parse_lsn, segment_name
from pitr.pg.version import require_same_major, resolve_bindir
from pitr.progress import Progress
from pitr.repo import Repo
from pitr.storage.base import put_bytes, read_bytes

log = logging.getLogger("pitr.backup")

BASE_OBJECT = "base.tar.zst"
_POLL = 0.5


@dataclass(frozen=True)
class BackupResult:
    record: BackupRecord
    seconds: float
    removed_leftovers: int
    why: str = ""  # why this kind of backup (full or incremental) was taken
    repositories: tuple[str, ...] = ()  # names of the repositories that hold it

    def summary(self) -> dict[str, Any]:
        r = self.record
        return {
            "id": r.id,
            "label": r.label,
            "start_time": r.start_time.isoformat(),
            "stop_time": r.stop_time.isoformat(),
            "start_lsn": format_lsn(r.start_lsn),
            "stop_lsn": format_lsn(r.stop_lsn),
            "timeline": r.timeline,
            "db_size": r.db_size,
            "raw_bytes": r.raw_bytes,
            "stored_bytes": r.stored_bytes,
            "compression_ratio": round(r.compression_ratio, 2),
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(r.raw_bytes / self.seconds / 1e6, 1) if self.seconds else 0.0,
            "pinned": r.pinned,
            "removed_leftovers": self.removed_leftovers,
            "type": "incremental" if r.parent else "full",
            "parent": r.parent,
            "why": self.why,
        }


def new_backup_id(now: datetime, taken: set[str]) -> str:
    """Sortable UTC stamp; a suffix only if two backups start within one second.

    >>> new_backup_id(datetime(2025, 2, 15, 1, 30, tzinfo=UTC), set())
    '20250215T013000Z'
    >>> new_backup_id(datetime(2025, 2, 15, 1, 30, tzinfo=UTC), {'20250215T013000Z'})
    '20250215T013000Z-2'
    """
    base = now.astimezone(UTC).strftime(_ID_FORMAT)
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


_ID_FORMAT = "%Y%m%dT%H%M%SZ"


def id_time(backup_id: str) -> datetime | None:
    """When the backup named ``backup_id`` was begun, to the second, as
    :func:`new_backup_id` wrote it (before pg_basebackup started, so at or before the
    manifest's start_time); None for a name it did not write.

    >>> id_time('20250215T013000Z-2')
    datetime.datetime(2025, 2, 15, 1, 30, tzinfo=datetime.timezone.utc)
    """
    try:
        return datetime.strptime(backup_id.split("-", 1)[0], _ID_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def backup_command(cfg: Config, *, label: str = "manual", pin: bool = False,
                   max_rate: str | None = None, progress: Progress | None = None,
                   command: str = "pitr backup", incremental: bool | None = False,
                   repo_name: str | None = None
                   ) -> tuple[dict[str, Any], PitrError | None]:
    """`pitr backup` as a whole: the backup, an alert when it fails, and after a scheduled
    backup the expiry ``backup.expire_after`` asks for (pitr/expire.py). ``incremental``:
    as :func:`run_backup`.

    Returns the backup's summary (with ``expire`` when expiry ran) and the expiry's
    error, which the caller raises once the completed backup has been reported.
    """
    try:
        result = run_backup(cfg, label=label, pin=pin, max_rate=max_rate, progress=progress,
                            command=command, incremental=incremental, repo_name=repo_name)
    except PitrError as exc:
        if not isinstance(exc, LockedError):  # another backup running is not a failure
            from pitr.monitor.alerts import send_alert

            send_alert(cfg, "backup_failed", f"{label} backup failed: {exc.message}",
                       {"exit_code": exc.exit_code, "hint": exc.hint})
        raise
    summary = result.summary()
    summary["repositories"] = list(result.repositories)
    if label == "scheduled" and cfg.backup.expire_after:
        from pitr.expire import expire_after_backup

        first_error: PitrError | None = None
        for name in result.repositories:  # each repository keeps its own history
            one = cfg.for_repository(name)
            doc, error = expire_after_backup(one, summary["id"])
            if len(result.repositories) == 1:
                summary["expire"] = doc
            else:
                summary.setdefault("expire", {})[name] = doc
                if "text" in doc:
                    doc["text"] = f"{name}: {doc['text']}"
            first_error = first_error or error
        return summary, first_error
    return summary, None


def run_backup(cfg: Config, *, label: str = "manual", pin: bool = False,
               max_rate: str | None = None, progress: Progress | None = None,
               command: str = "pitr backup", incremental: bool | None = False,
               repo_name: str | None = None) -> BackupResult:
    """Take one base backup of ``cfg.postgres`` into every repository, or into the one
    named ``repo_name`` (docs/multiple-repositories.md): one pass over pg_basebackup's
    stream, the same backup id and bytes in each, and a manifest in each only once every
    repository holds the backup and its WAL (so a failure in one leaves none).

    ``incremental``: True takes an incremental backup or fails (IncrementalError);
    None lets ``backup.full_interval`` decide (scheduled runs, docs/incremental-backups.md);
    False takes a full backup.
    """
    rcs = [cfg.repository_named(repo_name)] if repo_name else list(cfg.all_repositories)
    repos = []
    for rc in rcs:
        repos.append(Repo.open(cfg.for_repository(rc)))
        # the lock and never-overwrite rest on it
        require_conditional_writes(cfg.for_repository(rc), repos[-1].storage)
    locks = [StanzaLock(r, "backup", command=command, stale_after=cfg.backup.lock_stale_after,
                        lease=cfg.backup.lock_lease) for r in repos]
    with signals_interrupt("backup stopped by {signal}; partial objects are removed"), \
            contextlib.ExitStack() as stack:
        helds = [stack.enter_context(lock) for lock in locks]
        started = time.monotonic()
        removed, taken = 0, set[str]()
        for r, held in zip(repos, helds, strict=True):
            n, ids = clean_leftovers(r, before=held.started_at)
            removed, taken = removed + n, taken | ids  # one id free in every repository
        repo = repos[0]
        cluster = pgbb.probe(cfg.postgres.dsn)
        _check_cluster(cluster)
        for r in repos:
            _check_identity(r, cluster)
        if progress is not None and progress.total is None:
            progress.total = cluster.db_size  # the tar is about this size: an estimate
        parent, why = _choose_kind(cfg, repo, cluster, incremental)
        while True:
            backup_id = new_backup_id(datetime.now(UTC), taken)
            taken.add(backup_id)
            try:
                record = _take(cfg, repos, cluster, backup_id, label, max_rate, progress,
                               locks, parent)
                break
            except IncrementalError as exc:
                with signals_ignored():
                    for r in repos:
                        discard(r, backup_id)
                if incremental is not None or parent is None:
                    if progress is not None:
                        progress.abandon()
                    raise
                # a scheduled run still leaves a backup: a full one, and says why
                why = f"full: the incremental backup was refused ({exc.message})"
                event(log, logging.WARNING, f"backup {backup_id}: {why}; taking a full backup")
                parent = None
            except BaseException:
                if progress is not None:
                    progress.abandon()
                with signals_ignored():
                    for r in repos:
                        discard(r, backup_id)
                raise
        if pin:
            for r in repos:
                record = _pin(r, record)
        return BackupResult(record, time.monotonic() - started, removed, why,
                            tuple(rc.name for rc in rcs))


def _choose_kind(cfg: Config, repo: Repo, cluster: pgbb.ClusterInfo,
                 incremental: bool | None) -> tuple[BackupRecord | None, str]:
    """(parent or None for a full backup, why) -- docs/incremental-backups.md."""
    from pitr.catalog_scope import Scope

    if incremental is False:
        return None, "full: asked for"
    if cluster.tablespaces:
        # pg_basebackup writes no backup_manifest into a directory of pipes, and pitr
        # rebuilds chains without tablespace archives (docs/tablespaces.md)
        why = "the cluster has tablespaces, and pitr takes only full backups of it"
        if incremental:
            raise IncrementalError(f"cannot take an incremental backup: {why}",
                                   hint="take a full backup (`pitr backup`)")
        return None, f"full: {why}"
    if incremental is None and cfg.backup.full_interval <= 0:
        return None, "full: backup.full_interval is 0"
    if incremental is None and cluster.major < chains.MIN_MAJOR:
        return None, f"full: PostgreSQL {cluster.major} has no incremental backups"
    # the backups and their manifests only: choosing a parent needs no WAL listing, which
    # on a year of WAL is 525 LIST requests (docs/catalog-cache.md)
    catalog = Scope(repo).base
    decision = chains.choose_parent(
        catalog, major=cluster.major, summarize_wal=cluster.summarize_wal,
        server_compression=cfg.backup.server_compression, timeline=cluster.timeline)
    if decision.parent is None:
        if incremental:
            raise IncrementalError(
                f"cannot take an incremental backup: {decision.why}",
                hint="take a full backup (`pitr backup`)"
                     + ("; `pitr setup --apply` turns summarize_wal on"
                        if "summarize_wal" in decision.why else ""))
        return None, f"full: {decision.why}"
    if incremental is None:
        root = chains.chain_of(decision.parent, {b.id: b for b in catalog.backups}).root
        if chains.full_is_due(root, datetime.now(UTC), cfg.backup.full_interval):
            return None, (f"full: the chain's full backup {root.id} is older than "
                          f"backup.full_interval")
    return decision.parent, decision.why


# -- before ----------------------------------------------------------------------------

def _check_cluster(cluster: pgbb.ClusterInfo) -> None:
    if cluster.in_recovery:
        # A standby writes no .backup history file, which is where the stop point
        # and stop time come from.
        raise BackupError("postgres.dsn reaches a standby; pitr takes base backups from the "
                          "primary only", hint="point postgres.dsn at the primary")
    if cluster.archive_mode == "off" or not (cluster.archive_command or cluster.archive_library):
        raise BackupError(
            "WAL archiving is off on this cluster (archive_mode/archive_command), so a base "
            "backup could never be restored",
            hint="run `pitr setup --apply` (or set archive_mode = on and archive_command = "
                 "'pitr archive-push %p') and restart PostgreSQL")


def _check_identity(repo: Repo, cluster: pgbb.ClusterInfo) -> None:
    ident = repo.read_identity()
    if ident is not None:
        require_same_major(repo.stanza, ident.pg_version, cluster.major,
                           f"postgres.dsn's cluster {cluster.system_id}")
    if ident is not None and ident.system_id != cluster.system_id:
        raise SystemIdMismatch(
            f"stanza {repo.stanza!r} belongs to the cluster with system identifier "
            f"{ident.system_id}, but postgres.dsn reaches cluster {cluster.system_id}",
            hint="point postgres.dsn at the cluster this stanza archives, or give this "
                 "cluster its own stanza")
    if ident is None:
        repo.ensure_identity(int(cluster.system_id), cluster.major, cluster.segment_size)


def clean_leftovers(repo: Repo, *, before: datetime) -> tuple[int, set[str]]:
    """Remove backups without a manifest older than ``before``; returns (count, ids left).

    Run under the backup lock, so no other backup can be writing; ``before``
    (our lock's time) still spares a run that took over a lock it thought stale.
    """
    by_id: dict[str, list[Any]] = {}
    for obj in repo.storage.list(repo.backups_prefix):
        backup_id = obj.key[len(repo.backups_prefix):].split("/", 1)[0]
        by_id.setdefault(backup_id, []).append(obj)
    removed = 0
    for backup_id, objs in sorted(by_id.items()):
        if any(o.key == repo.manifest_key(backup_id) for o in objs):
            continue
        if all(o.mtime < before for o in objs):
            log.warning("removing the incomplete backup %s left by an interrupted run "
                        "(%d objects)", backup_id, len(objs))
            removed += repo.storage.delete([o.key for o in objs])
    removed += repo.storage.cleanup_incomplete(repo.backups_prefix)
    return removed, set(by_id)


def discard(repo: Repo, backup_id: str) -> None:
    """Remove what a failed run of ``backup_id`` stored, unless its manifest made it."""
    prefix = repo.backup_prefix(backup_id)
    try:
        try:
            repo.storage.stat(repo.manifest_key(backup_id))
            log.warning("backup %s has its manifest: kept", backup_id)
            return
        except NotFound:
            pass
        keys = [o.key for o in repo.storage.list(prefix)]
        repo.storage.delete(keys)
        repo.storage.cleanup_incomplete(prefix)
        log.info("removed the partial backup %s (%d objects)", backup_id, len(keys))
    except Exception as exc:  # the next run cleans up; never hide the original error
        log.warning("could not remove the partial backup %s (the next backup will): %s",
                    backup_id, exc)


# -- the stream ------------------------------------------------------------------------

@dataclass(frozen=True)
class _StopPoint:
    """What the archived ``.backup`` history file says about the finished backup."""

    start_lsn: int
    stop_lsn: int
    start_tli: int
    stop_tli: int
    start_time: datetime
    stop_time: datetime  # as PostgreSQL wrote it: truncated to the second
    history_file: str
    stop_time_text: str


def _take(cfg: Config, repos: list[Repo], cluster: pgbb.ClusterInfo, backup_id: str,
          label: str, max_rate: str | None, progress: Progress | None,
          locks: list[StanzaLock] | None = None,
          parent: BackupRecord | None = None) -> BackupRecord:
    import tempfile

    repo = repos[0]
    server = cfg.backup.server_compression
    bindir = resolve_bindir(cfg.postgres.bindir, cluster.major, tool="pg_basebackup",
                            what=f"postgres.dsn's cluster {cluster.system_id}")
    with tempfile.TemporaryDirectory(prefix="pitr-incremental-") as tmp:
        parent_manifest = None
        if parent is not None:
            parent_manifest = os.path.join(tmp, "backup_manifest")
            with open(parent_manifest, "wb") as fh:
                fh.write(read_parent_manifest(repo, parent))
        opts = pgbb.BaseBackupOptions(
            bindir=str(bindir), dsn=cfg.postgres.dsn, label=f"pitr {backup_id}",
            server_zstd_level=cfg.compression.level if server else None, max_rate=max_rate,
            incremental_manifest=parent_manifest)
        t0 = time.monotonic()
        tablespaces: list[pgbb.Tablespace] = []
        if cluster.tablespaces:
            tablespaces = list(pgbb.list_tablespaces(cfg.postgres.dsn))
            objects, backup_label = stream_with_tablespaces(repos, backup_id, opts, cfg,
                                                            progress, tablespaces)
            pg_manifest = None
        else:
            obj, backup_label, pg_manifest = _stream(repos, backup_id, opts, cfg, progress)
            objects = [obj]
    t1 = time.monotonic()
    raw_bytes = sum(o.raw_bytes for o in objects)  # the tars: base and tablespaces
    event(log, logging.INFO, f"backup {backup_id}: data stored", raw_bytes=raw_bytes,
          stored_bytes=sum(o.stored_bytes for o in objects), seconds=round(t1 - t0, 2),
          mb_per_s=round(raw_bytes / max(t1 - t0, 1e-9) / 1e6, 1))
    if pg_manifest is not None and cluster.major >= chains.MIN_MAJOR:
        problem = chains.manifest_checksum_problem(pg_manifest)
        if problem is not None:
            raise BackupError(f"backup {backup_id}: the backup_manifest pg_basebackup wrote "
                              f"into the tar fails its own checksum: {problem}",
                              hint="take the backup again; if it repeats, report it with "
                                   "the pg_basebackup and pitr versions")
        objects.append(_store_pg_manifest(repos, backup_id, pg_manifest,
                                          cfg.compression.level))
    stop = _stop_point(cfg, repo, cluster, opts.label, backup_label)
    for r in repos[1:]:  # its WAL must be in every repository the backup goes to
        if _stop_point(cfg, r, cluster, opts.label, backup_label) != stop:
            raise BackupError(f"backup {backup_id}: the backup history file "
                              f"{stop.history_file} differs between the repositories")
    event(log, logging.INFO, f"backup {backup_id}: its WAL is archived",
          stop_lsn=format_lsn(stop.stop_lsn), waited_s=round(time.monotonic() - t1, 2))

    seg = cluster.segment_size
    record = BackupRecord(
        id=backup_id, label=label, start_lsn=stop.start_lsn, stop_lsn=stop.stop_lsn,
        start_time=stop.start_time,
        # The label's stop time is truncated to the second; the backup really ended
        # within the following second, so a target before this could be inconsistent.
        stop_time=stop.stop_time + timedelta(seconds=1),
        timeline=stop.start_tli, system_id=cluster.system_id, pg_version=cluster.major,
        db_size=cluster.db_size, raw_bytes=raw_bytes,
        stored_bytes=sum(o.stored_bytes for o in objects),
        objects=tuple(objects), pitr_version=__version__, timezone=cluster.timezone,
        extra={
            **({"parent": parent.id} if parent is not None else {}),
            "backup_type": "incremental" if parent is not None else "full",
            "pg_version_num": cluster.version_num,
            "stop_timeline": stop.stop_tli,
            "backup_history_file": stop.history_file,
            "stop_time_reported": stop.stop_time_text,
            "wal_segments": [
                segment_name(stop.start_tli, lsn_to_segno(stop.start_lsn, seg), seg),
                segment_name(stop.stop_tli, lsn_to_segno(stop.stop_lsn - 1, seg), seg)],
            "compression": {"codec": "zstd", "where": "server" if server else "client",
                            "level": cfg.compression.level},
            "backup_manifest_in_tar": not server and not tablespaces,
            # docs/tablespaces.md: what `pitr restore --tablespace-map` relocates
            **({"tablespaces": [{"oid": t.oid, "name": t.name, "location": t.location,
                                 "object": tablespace_object(t.oid)} for t in tablespaces]}
               if tablespaces else {}),
            "host": socket.gethostname(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    for i, r in enumerate(repos):
        recheck_before_manifest(r, record, locks[i] if locks else None)
    for r in repos:
        put_bytes(r.storage, r.manifest_key(backup_id), manifest_mod.encode(record),
                  if_absent=True)
    log.info("backup %s completed", backup_id)
    return record


def recheck_before_manifest(repo: Repo, record: BackupRecord, lock: StanzaLock | None) -> None:
    """The last look before the manifest makes the backup exist (docs/fault-table.md).

    A run that took our lock over (it thought us gone) may clean our objects up as
    an interrupted backup's leftovers, and a run whose lock we took over may still
    be writing. So: the lock must still be ours, and every object must be stored
    with the size we wrote.
    """
    if lock is not None and not lock.still_mine():
        raise BackupError(
            f"backup {record.id}: the stanza lock was taken over while this backup ran; "
            "its objects may be removed by the new holder, so no manifest is written",
            hint="the backup lease is renewed while a backup works; check that this host "
                 "reaches the repository steadily, then run the backup again")
    why = f" (this run took over a stale lock: {lock.took_over})" if lock and lock.took_over \
        else ""
    if record.parent is not None:
        try:  # never a half chain: the parent must still exist when its child does
            repo.storage.stat(repo.manifest_key(record.parent))
        except NotFound:
            raise IncrementalError(
                f"backup {record.id}: its parent backup {record.parent} is gone from the "
                "repository; no manifest is written",
                hint="take a full backup (`pitr backup`)") from None
    for obj in record.objects:
        try:
            size = repo.storage.stat(obj.key).size
        except NotFound:
            size = None
        want = repo.stored_size(obj.stored_bytes)  # sealed objects: docs/encryption.md
        if size != want:
            raise BackupError(
                f"backup {record.id}: {obj.key} is "
                f"{'gone' if size is None else f'{size} bytes, not {want}'} "
                f"in the repository{why}; no manifest is written",
                hint="another run removed or rewrote it; run the backup again")


def _raw_and_store_filters(opts: pgbb.BaseBackupOptions, cfg: Config,
                           on_raw: Callable[[bytes], None]
                           ) -> tuple[list[stream.Filter], list[stream.Count | stream.Hash]]:
    """The filters one archive of pg_basebackup goes through into the repository, and
    its counters (raw bytes, raw sha256, stored bytes, stored sha256)."""
    raw, raw_hash = stream.Count(), stream.Hash()
    stored, stored_hash = stream.Count(), stream.Hash()
    tap_raw: list[stream.Filter] = [raw, stream.Tap(on_raw)]
    if opts.server_zstd_level is not None:
        # Stored as pg_basebackup compressed it; a side branch decompresses a copy to
        # read backup_label and to hash the raw tar.
        filters: list[stream.Filter] = [
            stream.Tee([stream.ZstdDecompress(), raw_hash, *tap_raw]), stored, stored_hash]
    else:
        # The tap runs in the read-ahead thread, the only caller of head/progress.
        # No sha256 of the raw tar (0.74 CPU-s/GB, a tenth of the whole backup's CPU):
        # the manifest's sha256 proves the stored bytes, and the frame's content
        # checksum proves that decompressing them gives back what was compressed.
        filters = [*tap_raw, stream.ReadAhead(4),
                   stream.ZstdCompress(cfg.compression.level, threads=cfg.compression.threads),
                   stored, stored_hash]
    return filters, [raw, raw_hash, stored, stored_hash]


def _object(name: str, key: str, counters: list[stream.Count | stream.Hash],
            server: bool) -> BackupObject:
    raw, raw_hash, stored, stored_hash = counters
    assert isinstance(raw, stream.Count) and isinstance(stored, stream.Count)
    assert isinstance(raw_hash, stream.Hash) and isinstance(stored_hash, stream.Hash)
    return BackupObject(name, key, raw.bytes, stored.bytes, stored_hash.sha256,
                        raw_hash.sha256 if server else "")


def _stream(repos: list[Repo], backup_id: str, opts: pgbb.BaseBackupOptions, cfg: Config,
            progress: Progress | None) -> tuple[BackupObject, str, bytes | None]:
    """Run pg_basebackup into the repositories; returns the stored object, backup_label
    and PostgreSQL's backup_manifest (None when pg_basebackup wrote none into the tar).

    One pass: the first repository's upload reads the pipeline, every further one reads
    a copy of the stored bytes in a :class:`stream.Tee` branch of its own (the slowest
    repository sets the pace; one that fails fails the backup)."""
    repo = repos[0]
    log.info("backup %s: starting pg_basebackup", backup_id)
    if progress is not None:
        progress.start()
    proc = pgbb.BaseBackupProcess(opts, cfg.backup.wal_timeout).start()
    head = pgbb.TarHead()
    pg_manifest = pgbb.TarMemberCapture("backup_manifest")

    def on_raw(data: bytes) -> None:
        head.feed(data)
        pg_manifest.feed(data)
        if progress is not None:
            progress.update(len(data))

    key = repo.backup_prefix(backup_id) + BASE_OBJECT
    filters, counters = _raw_and_store_filters(opts, cfg, on_raw)
    filters += _copies(repos[1:], key)
    try:
        with stream.Pipeline(pgbb.ProcessStdout(proc), filters) as pipe:
            repo.storage.put(key, pipe, if_absent=True,
                             storage_class=repo.upload_class(tiers.BACKUP))
        rc = proc.wait()
        if rc != 0:
            raise proc.failure(rc)
    except IntegrityError as exc:
        if opts.server_zstd_level is None:
            raise
        # only the server-compressed branch decompresses
        raise BackupError(f"pg_basebackup's server-compressed stream is damaged: "
                          f"{exc.message}") from exc
    finally:
        proc.stop()
    if progress is not None:
        progress.close()
    obj = _object(BASE_OBJECT, key, counters, opts.server_zstd_level is not None)
    manifest_bytes = pg_manifest.value()
    return obj, head.backup_label(), manifest_bytes if pg_manifest.found else None


def tablespace_object(oid: int) -> str:
    """The name of a tablespace's archive in a backup (docs/tablespaces.md)."""
    return f"tablespace-{oid}.tar.zst"


def stream_with_tablespaces(repos: list[Repo], backup_id: str, opts: pgbb.BaseBackupOptions,
                            cfg: Config, progress: Progress | None,
                            tablespaces: list[pgbb.Tablespace]
                            ) -> tuple[list[BackupObject], str]:
    """pg_basebackup -Ft into a directory of named pipes, one per tablespace of
    ``tablespaces`` (queried just before) and one for the base; each pipe is read by its
    own thread through the stream filters into its own object (docs/tablespaces.md).
    Nothing is written to local disk: pg_basebackup may write no byte into a regular file
    (RLIMIT_FSIZE), so an archive pitr made no pipe for (a tablespace created since the
    query) fails the backup."""
    import tempfile
    import threading
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    repo = repos[0]
    server = opts.server_zstd_level is not None
    suffix = ".tar.zst" if server else ".tar"
    log.info("backup %s: starting pg_basebackup (with tablespaces)", backup_id)
    if progress is not None:
        progress.start()
    lock = threading.Lock()
    head = pgbb.TarHead()

    def on_base(data: bytes) -> None:
        head.feed(data)
        on_any(data)

    def on_any(data: bytes) -> None:
        if progress is not None:
            with lock:
                progress.update(len(data))

    with tempfile.TemporaryDirectory(prefix="pitr-backup-pipes-") as tmp:
        outdir = os.path.join(tmp, "out")
        os.mkdir(outdir, 0o700)
        watch = pgbb.DirCheckWatch(outdir)
        proc = pgbb.BaseBackupProcess(dataclasses.replace(opts, outdir=outdir),
                                      cfg.backup.wal_timeout, gated=True)
        # (archive file, object name, tap)
        archives = [(f"{t.oid}{suffix}", tablespace_object(t.oid), on_any)
                    for t in tablespaces] + [(f"base{suffix}", BASE_OBJECT, on_base)]
        readers: list[pgbb.FifoStream] = []
        try:
            proc.start()
            try:
                watch.wait(proc)
            finally:
                watch.close()
            pgbb.make_fifos(outdir, [a[0] for a in archives])
            readers = [pgbb.FifoStream(proc, os.path.join(outdir, a[0])) for a in archives]
            proc.open_gate()  # now it may send BASE_BACKUP

            def upload(reader: pgbb.FifoStream, name: str,
                       tap: Callable[[bytes], None]) -> BackupObject:
                key = repo.backup_prefix(backup_id) + name
                filters, counters = _raw_and_store_filters(opts, cfg, tap)
                filters += _copies(repos[1:], key)
                try:
                    with stream.Pipeline(reader, filters) as pipe:
                        repo.storage.put(key, pipe, if_absent=True,
                                         storage_class=repo.upload_class(tiers.BACKUP))
                except IntegrityError as exc:
                    if not server:
                        raise
                    raise BackupError(f"pg_basebackup's server-compressed stream {name} is "
                                      f"damaged: {exc.message}") from exc
                return _object(name, key, counters, server)

            with ThreadPoolExecutor(len(archives), thread_name_prefix="pitr-upload") as pool:
                futures = [pool.submit(upload, r, a[1], a[2])
                           for r, a in zip(readers, archives, strict=True)]
                try:
                    done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                    first = next((e for f in done if (e := f.exception()) is not None), None)
                    if first is not None:
                        raise first
                except BaseException:
                    # a failed upload or a signal: the other readers then end with
                    # pg_basebackup's failure, so the pool can be shut down
                    proc.stop()
                    raise
                objects = [f.result() for f in futures]
            rc = proc.wait()
            if rc != 0:
                raise proc.failure(rc)
        except PitrError as exc:
            proc.stop()
            # pg_basebackup names the file it could not write, then empties the directory
            expected = {a[0] for a in archives}
            named = {m.group(1) for line in proc.stderr_tail
                     for m in re.finditer(re.escape(outdir) + r'/([^"/]+)"', line)}
            unexpected = sorted((named | set(os.listdir(outdir))) - expected)
            if unexpected:
                raise BackupError(
                    f"a tablespace was created while the backup started: pg_basebackup began "
                    f"{', '.join(unexpected)}, for which pitr had no named pipe (nothing of it "
                    "was written to local disk); the backup was abandoned",
                    hint="run the backup again (docs/tablespaces.md)") from exc
            raise
        finally:
            proc.stop()
            for r in readers:
                r.close()
    if progress is not None:
        progress.close()
    return objects, head.backup_label()


def _copies(others: list[Repo], key: str) -> list[stream.Filter]:
    """One Tee branch per further repository, uploading a copy of the stored bytes under
    the same key (docs/multiple-repositories.md "Backups")."""
    return [stream.Tee([stream.Sink(partial(_upload, r, key))]) for r in others]


def _upload(repo: Repo, key: str, reader: stream.Readable) -> None:
    repo.storage.put(key, reader, if_absent=True, storage_class=repo.upload_class(tiers.BACKUP))


# -- PostgreSQL's backup_manifest: what the next incremental backup is taken against ----

def _store_pg_manifest(repos: list[Repo], backup_id: str, raw: bytes,
                       level: int) -> BackupObject:
    """Keep a copy of the backup_manifest beside the tar (docs/incremental-backups.md
    "Where the manifest is kept"): a later incremental needs it without downloading
    the whole backup."""
    blob, _header = codec.compress_blob(raw, level)
    raw_sha = hashlib.sha256(raw).hexdigest()  # what the record says it holds
    key = repos[0].backup_prefix(backup_id) + chains.BACKUP_MANIFEST_OBJECT
    # in storage_class, not backup_storage_class: the next incremental backup reads it
    for repo in repos:  # the same bytes in each: one record describes them all
        put_bytes(repo.storage, key, blob, if_absent=True)
    stored = stream.Hash()
    stream.run(blob, [stored])
    return BackupObject(chains.BACKUP_MANIFEST_OBJECT, key, len(raw), len(blob),
                        stored.sha256, raw_sha)


def read_parent_manifest(repo: Repo, parent: BackupRecord) -> bytes:
    """The parent's backup_manifest, proven against its record; IncrementalError if not."""
    obj = next(o for o in parent.objects if o.name == chains.BACKUP_MANIFEST_OBJECT)
    try:
        blob = read_bytes(repo.storage, obj.key)
        # the whole object proven (one frame, nothing after it, its own checksum), and
        # what it holds is what the parent's record says it stored
        _header, raw = codec.verify_blob(blob, obj.key)
        if hashlib.sha256(raw).hexdigest() != obj.raw_sha256 or len(raw) != obj.raw_bytes:
            raise IntegrityError(f"{obj.key}: checksum mismatch with backup {parent.id}'s "
                                 "manifest")
        problem = chains.manifest_checksum_problem(raw)
        if problem is not None:
            raise IntegrityError(f"{obj.key}: {problem}")
        return raw
    except (NotFound, IntegrityError) as exc:
        raise IncrementalError(
            f"the parent backup {parent.id}'s backup_manifest is unusable: "
            f"{exc.message if isinstance(exc, PitrError) else exc}",
            hint="take a full backup (`pitr backup`)") from exc


def _stop_point(cfg: Config, repo: Repo, cluster: pgbb.ClusterInfo, label: str,
                backup_label: str) -> _StopPoint:
    """Wait for the .backup history file and the WAL up to the stop point in the repository."""
    start = pgbb.parse_label_file(backup_label)
    start_lsn = parse_lsn(pgbb.label_lsn(start["START WAL LOCATION"]))
    start_tli = int(start["START TIMELINE"])
    deadline = time.monotonic() + cfg.backup.wal_timeout
    hist_name = backup_history_name(start_tli, start_lsn, cluster.segment_size)
    stop = pgbb.parse_label_file(_wait_backup_history(repo, hist_name, deadline).decode())
    if stop.get("LABEL") != label:
        raise BackupError(f"{hist_name} in the repository belongs to another backup "
                          f"(label {stop.get('LABEL')!r}, expected {label!r})")
    stop_lsn = parse_lsn(pgbb.label_lsn(stop["STOP WAL LOCATION"]))
    stop_tli = int(stop.get("STOP TIMELINE", start_tli))
    _wait_wal(repo, stop_tli, start_lsn if stop_tli == start_tli else stop_lsn, stop_lsn,
              cluster.segment_size, deadline)
    start_time, stop_time = _label_times(cfg.postgres.dsn, stop["START TIME"], stop["STOP TIME"])
    return _StopPoint(start_lsn, stop_lsn, start_tli, stop_tli, start_time, stop_time,
                      hist_name, stop["STOP TIME"])


# -- after: the WAL ------------------------------------------------------------------

def _wait_backup_history(repo: Repo, name: str, deadline: float) -> bytes:
    key = repo.wal_key(name)
    while True:
        try:
            return codec.decompress_blob(read_bytes(repo.storage, key), name)
        except NotFound:
            if time.monotonic() > deadline:
                raise BackupError(
                    f"the backup history file {name} did not reach the repository in time",
                    hint="archive_command must run `pitr archive-push` with this repository; "
                         "check pg_stat_archiver (backup.wal_timeout sets the wait)") from None
            time.sleep(_POLL)


def _wait_wal(repo: Repo, tli: int, start_lsn: int, stop_lsn: int, seg_size: int,
              deadline: float) -> None:
    """Wait until every segment from ``start_lsn`` up to ``stop_lsn`` is archived."""
    first = lsn_to_segno(start_lsn, seg_size)
    last = lsn_to_segno(max(stop_lsn - 1, start_lsn), seg_size)
    names = {segment_name(tli, n, seg_size) for n in range(first, last + 1)}
    while True:
        missing = names - _archived(repo, names)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise BackupError(
                f"the WAL this backup needs is not in the repository: missing "
                f"{', '.join(sorted(missing)[:5])}{' ...' if len(missing) > 5 else ''}",
                hint="archive_command must run `pitr archive-push` with this repository; "
                     "check pg_stat_archiver (backup.wal_timeout sets the wait)")
        time.sleep(_POLL)


def _archived(repo: Repo, names: set[str]) -> set[str]:
    # One listing per 16-hex directory (256 segments) instead of a request per segment.
    found: set[str] = set()
    for prefix in sorted({repo.wal_key(n).rsplit("/", 1)[0] + "/" for n in names}):
        for obj in repo.storage.list(prefix):
            name = Repo.wal_name_of(obj.key)
            if name in names:
                found.add(name)
    return found


def _label_times(dsn: str, start: str, stop: str) -> tuple[datetime, datetime]:
    parsed = [pgbb.parse_pg_time(start), pgbb.parse_pg_time(stop)]
    if parsed[0] is not None and parsed[1] is not None:
        return parsed[0], parsed[1]
    # A zone abbreviation (log_timezone) only PostgreSQL can resolve reliably.
    a, b = pgbb.server_parse_times(dsn, [start, stop])
    return a.astimezone(UTC), b.astimezone(UTC)


def _pin(repo: Repo, record: BackupRecord) -> BackupRecord:
    import dataclasses

    from pitr.pins import pin

    try:
        pin(repo, record.id, by="pitr backup --pin")
    except PitrError as exc:
        exc.message = f"backup {record.id} completed, but pinning it failed: {exc.message}"
        exc.hint = f"pin it with `pitr pin {record.id}`"
        raise
    return dataclasses.replace(record, pinned=True)
