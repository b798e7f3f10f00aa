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

import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
    base = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def backup_command(cfg: Config, *, label: str = "manual", pin: bool = False,
                   max_rate: str | None = None, progress: Progress | None = None,
                   command: str = "pitr backup", incremental: bool | None = False
                   ) -> tuple[dict[str, Any], PitrError | None]:
    """`pitr backup` as a whole: the backup, an alert when it fails, and after a scheduled
    backup the expiry ``backup.expire_after`` asks for (pitr/expire.py). ``incremental``:
    as :func:`run_backup`.

    Returns the backup's summary (with ``expire`` when expiry ran) and the expiry's
    error, which the caller raises once the completed backup has been reported.
    """
    try:
        result = run_backup(cfg, label=label, pin=pin, max_rate=max_rate, progress=progress,
                            command=command, incremental=incremental)
    except PitrError as exc:
        if not isinstance(exc, LockedError):  # another backup running is not a failure
            from pitr.monitor.alerts import send_alert

            send_alert(cfg, "backup_failed", f"{label} backup failed: {exc.message}",
                       {"exit_code": exc.exit_code, "hint": exc.hint})
        raise
    summary = result.summary()
    if label == "scheduled" and cfg.backup.expire_after:
        from pitr.expire import expire_after_backup

        summary["expire"], expire_error = expire_after_backup(cfg, summary["id"])
        return summary, expire_error
    return summary, None


def run_backup(cfg: Config, *, label: str = "manual", pin: bool = False,
               max_rate: str | None = None, progress: Progress | None = None,
               command: str = "pitr backup", incremental: bool | None = False) -> BackupResult:
    """Take one base backup of ``cfg.postgres`` into ``cfg.repository``.

    ``incremental``: True takes an incremental backup or fails (IncrementalError);
    None lets ``backup.full_interval`` decide (scheduled runs, docs/incremental-backups.md);
    False takes a full backup.
    """
    repo = Repo.open(cfg)
    require_conditional_writes(cfg, repo.storage)  # the lock and never-overwrite rest on it
    lock = StanzaLock(repo, "backup", command=command, stale_after=cfg.backup.lock_stale_after,
                      lease=cfg.backup.lock_lease)
    with signals_interrupt("backup stopped by {signal}; partial objects are removed"), \
            lock as held:
        started = time.monotonic()
        removed, taken = clean_leftovers(repo, before=held.started_at)
        cluster = pgbb.probe(cfg.postgres.dsn)
        _check_cluster(cluster)
        _check_identity(repo, cluster)
        if progress is not None and progress.total is None:
            progress.total = cluster.db_size  # the tar is about this size: an estimate
        parent, why = _choose_kind(cfg, repo, cluster, incremental)
        while True:
            backup_id = new_backup_id(datetime.now(UTC), taken)
            taken.add(backup_id)
            try:
                record = _take(cfg, repo, cluster, backup_id, label, max_rate, progress, lock,
                               parent)
                break
            except IncrementalError as exc:
                with signals_ignored():
                    discard(repo, backup_id)
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
                    discard(repo, backup_id)
                raise
        if pin:
            record = _pin(repo, record)
        return BackupResult(record, time.monotonic() - started, removed, why)


def _choose_kind(cfg: Config, repo: Repo, cluster: pgbb.ClusterInfo,
                 incremental: bool | None) -> tuple[BackupRecord | None, str]:
    """(parent or None for a full backup, why) -- docs/incremental-backups.md."""
    from pitr.catalog import load_catalog

    if incremental is False:
        return None, "full: asked for"
    if incremental is None and cfg.backup.full_interval <= 0:
        return None, "full: backup.full_interval is 0"
    if incremental is None and cluster.major < chains.MIN_MAJOR:
        return None, f"full: PostgreSQL {cluster.major} has no incremental backups"
    catalog = load_catalog(repo)
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
    if cluster.tablespaces:
        raise BackupError(
            f"the cluster has tablespaces ({', '.join(cluster.tablespaces)}); pitr streams "
            f"one tar through pg_basebackup -D -, which cannot carry tablespaces",
            hint="move their objects to pg_default (ALTER TABLE/INDEX ... SET TABLESPACE "
                 "pg_default, ALTER DATABASE ... SET TABLESPACE) and DROP TABLESPACE, or back "
                 "this cluster up with another tool")
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


def _take(cfg: Config, repo: Repo, cluster: pgbb.ClusterInfo, backup_id: str, label: str,
          max_rate: str | None, progress: Progress | None,
          lock: StanzaLock | None = None, parent: BackupRecord | None = None) -> BackupRecord:
    import tempfile

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
        obj, backup_label, pg_manifest = _stream(repo, backup_id, opts, cfg, progress)
    t1 = time.monotonic()
    objects = [obj]
    if pg_manifest is not None and cluster.major >= chains.MIN_MAJOR:
        objects.append(_store_pg_manifest(repo, backup_id, pg_manifest, cfg.compression.level))
    event(log, logging.INFO, f"backup {backup_id}: data stored", raw_bytes=obj.raw_bytes,
          stored_bytes=obj.stored_bytes, seconds=round(t1 - t0, 2),
          mb_per_s=round(obj.raw_bytes / max(t1 - t0, 1e-9) / 1e6, 1))
    stop = _stop_point(cfg, repo, cluster, opts.label, backup_label)
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
        db_size=cluster.db_size, raw_bytes=obj.raw_bytes,
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
            "backup_manifest_in_tar": not server,
            "host": socket.gethostname(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    recheck_before_manifest(repo, record, lock)
    put_bytes(repo.storage, repo.manifest_key(backup_id), manifest_mod.encode(record),
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
        if size != obj.stored_bytes:
            raise BackupError(
                f"backup {record.id}: {obj.key} is "
                f"{'gone' if size is None else f'{size} bytes, not {obj.stored_bytes}'} "
                f"in the repository{why}; no manifest is written",
                hint="another run removed or rewrote it; run the backup again")


def _stream(repo: Repo, backup_id: str, opts: pgbb.BaseBackupOptions, cfg: Config,
            progress: Progress | None) -> tuple[BackupObject, str, bytes | None]:
    """Run pg_basebackup into the repository; returns the stored object, backup_label and
    PostgreSQL's backup_manifest (None when pg_basebackup wrote none into the tar)."""
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
    obj = BackupObject(BASE_OBJECT, key, raw.bytes, stored.bytes, stored_hash.sha256,
                       raw_hash.sha256 if opts.server_zstd_level is not None else "")
    manifest_bytes = pg_manifest.value()
    return obj, head.backup_label(), manifest_bytes if pg_manifest.found else None


# -- PostgreSQL's backup_manifest: what the next incremental backup is taken against ----

def _store_pg_manifest(repo: Repo, backup_id: str, raw: bytes, level: int) -> BackupObject:
    """Keep a copy of the backup_manifest beside the tar (docs/incremental-backups.md
    "Where the manifest is kept"): a later incremental needs it without downloading
    the whole backup."""
    blob, raw_sha = codec.compress_blob(raw, level)
    key = repo.backup_prefix(backup_id) + chains.BACKUP_MANIFEST_OBJECT
    # in storage_class, not backup_storage_class: the next incremental backup reads it
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
        # the whole object proven (one frame, nothing after it, its own sha256), and
        # what it holds is what the parent's record says it stored
        header, raw = codec.verify_blob(blob, obj.key)
        if header.sha256 != obj.raw_sha256 or len(raw) != obj.raw_bytes:
            raise IntegrityError(f"{obj.key}: checksum mismatch with backup {parent.id}'s "
                                 "manifest")
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
