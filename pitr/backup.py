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
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from pitr import __version__, codec
from pitr import manifest as manifest_mod
from pitr.catalog import BackupObject, BackupRecord
from pitr.condwrites import require_conditional_writes
from pitr.config import Config
from pitr.errors import BackupError, Interrupted, NotFound, PitrError, SystemIdMismatch
from pitr.lock import StanzaLock
from pitr.log import event
from pitr.pg import basebackup as pgbb
from pitr.pg.names import backup_history_name, format_lsn, lsn_to_segno, parse_lsn, segment_name
from pitr.pg.version import require_same_major, resolve_bindir
from pitr.progress import Progress
from pitr.repo import Repo
from pitr.storage import open_storage
from pitr.storage.base import put_bytes, read_bytes

log = logging.getLogger("pitr.backup")

BASE_OBJECT = "base.tar.zst"
_POLL = 0.5


@dataclass(frozen=True)
class BackupResult:
    record: BackupRecord
    seconds: float
    removed_leftovers: int

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


def run_backup(cfg: Config, *, label: str = "manual", pin: bool = False,
               max_rate: str | None = None, progress: Progress | None = None,
               command: str = "pitr backup") -> BackupResult:
    """Take one base backup of ``cfg.postgres`` into ``cfg.repository``."""
    repo = Repo(open_storage(cfg.repository), cfg.stanza)
    require_conditional_writes(cfg, repo.storage)  # the lock and never-overwrite rest on it
    lock = StanzaLock(repo, "backup", command=command, stale_after=cfg.backup.lock_stale_after,
                      lease=cfg.backup.lock_lease)
    with _signals_raise_interrupted(), lock as held:
        started = time.monotonic()
        removed, taken = clean_leftovers(repo, before=held.started_at)
        cluster = pgbb.probe(cfg.postgres.dsn)
        _check_cluster(cluster)
        _check_identity(repo, cluster)
        if progress is not None and progress.total is None:
            progress.total = cluster.db_size  # the tar is about this size: an estimate
        backup_id = new_backup_id(datetime.now(UTC), taken)
        try:
            record = _take(cfg, repo, cluster, backup_id, label, max_rate, progress, lock)
        except BaseException:
            if progress is not None:
                progress.abandon()
            with _signals_ignored():
                discard(repo, backup_id)
            raise
        if pin:
            record = _pin(repo, record)
        return BackupResult(record, time.monotonic() - started, removed)


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
          lock: StanzaLock | None = None) -> BackupRecord:
    server = cfg.backup.server_compression
    bindir = resolve_bindir(cfg.postgres.bindir, cluster.major, tool="pg_basebackup",
                            what=f"postgres.dsn's cluster {cluster.system_id}")
    opts = pgbb.BaseBackupOptions(
        bindir=str(bindir), dsn=cfg.postgres.dsn, label=f"pitr {backup_id}",
        server_zstd_level=cfg.compression.level if server else None, max_rate=max_rate)
    t0 = time.monotonic()
    obj, backup_label = _stream(repo, backup_id, opts, cfg, progress)
    t1 = time.monotonic()
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
        db_size=cluster.db_size, raw_bytes=obj.raw_bytes, stored_bytes=obj.stored_bytes,
        objects=(obj,), pitr_version=__version__, timezone=cluster.timezone,
        extra={
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
            progress: Progress | None) -> tuple[BackupObject, str]:
    """Run pg_basebackup into the repository; returns the stored object and backup_label."""
    log.info("backup %s: starting pg_basebackup", backup_id)
    if progress is not None:
        progress.start()
    proc = pgbb.BaseBackupProcess(opts, cfg.backup.wal_timeout).start()
    head = pgbb.TarHead()

    def on_raw(data: bytes) -> None:
        head.feed(data)
        if progress is not None:
            progress.update(len(data))

    key = repo.backup_prefix(backup_id) + BASE_OBJECT
    stream: codec.CompressingReader | pgbb.ServerCompressedStream | None = None
    try:
        source = pgbb.ProcessStdout(proc)
        if opts.server_zstd_level is not None:
            stream = pgbb.ServerCompressedStream(source, on_raw)
        else:
            # on_raw runs in the compressor's feeder thread, the only caller of head/progress.
            # No sha256 of the raw tar (0.74 CPU-s/GB, a tenth of the whole backup's CPU):
            # the manifest's sha256 proves the stored bytes, and the frame's content
            # checksum proves that decompressing them gives back what was compressed.
            stream = codec.CompressingReader(pgbb.RawTap(source, on_raw),  # type: ignore[arg-type]
                                             cfg.compression.level, cfg.compression.threads,
                                             hash_raw=False)
        repo.storage.put(key, stream, if_absent=True)  # type: ignore[arg-type]
        rc = proc.wait()
        if rc != 0:
            raise proc.failure(rc)
    finally:
        if isinstance(stream, codec.CompressingReader):
            stream.close()
        proc.stop()
    if progress is not None:
        progress.close()
    obj = BackupObject(BASE_OBJECT, key, stream.raw_bytes, stream.stored_bytes,
                       stream.stored_sha256, stream.raw_sha256)
    return obj, head.backup_label()


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


# -- signals -------------------------------------------------------------------------

_quiet = False  # set while cleaning up, and after the first signal: cleanup must finish


@contextlib.contextmanager
def _signals_raise_interrupted() -> Iterator[None]:
    """SIGTERM (systemd stop) and SIGINT become Interrupted, so cleanup runs.

    Only the first signal interrupts; later ones are ignored so they cannot cut
    the cleanup (deleting partial objects, releasing the lock) short.
    """
    global _quiet

    def handler(signum: int, _frame: FrameType | None) -> None:
        global _quiet
        if _quiet:
            log.warning("%s ignored: cleaning up", signal.Signals(signum).name)
            return
        _quiet = True
        raise Interrupted(f"backup stopped by {signal.Signals(signum).name}; partial objects "
                          f"are removed")

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (tests call run_backup from threads)
        return
    _quiet = False
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _quiet = False


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    global _quiet
    before = _quiet
    _quiet = True
    try:
        yield
    finally:
        _quiet = before
