"""`pitr copy`: backups and WAL from one repository into another, verified and resumable
(docs/multiple-repositories.md, "Seeding or repairing a repository").

What is copied: the stanza's repo.json (the destination must be empty of another
cluster's stanza), then every WAL object the destination lacks, then every backup it
lacks, each backup's manifest LAST, after its objects, as `pitr backup` writes it: an
interrupted copy leaves no backup the catalog would show, and its objects are found
again by the next run.

Verified: each WAL object is proven on its own terms before it is stored (header,
one complete zstd frame, the checksum of what it decompresses to: codec.verify_blob);
each backup object is hashed while it streams and must match its manifest's size
and sha256 before the manifest is written. Resumable: what the destination already
holds is not copied again but proven the same way (a WAL object: its own check and
the same raw bytes as the source's; a backup object: read back and hashed against the manifest).
Nothing in the destination is ever overwritten: a different object under a name
stops the copy with an error naming it.

The destination's stanza lock is held throughout, so a backup or expiry there waits
(and `pitr backup` cannot take the copy's objects for an interrupted run's leftovers).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pitr import codec, stream
from pitr.errors import AlreadyExists, IntegrityError, NotFound, UsageError
from pitr.log import event
from pitr.manifest import BackupRecord
from pitr.repo import Repo
from pitr.storage.base import put_bytes, read_bytes

log = logging.getLogger("pitr.copy")


@dataclass
class CopyResult:
    wal_copied: int = 0
    wal_present: int = 0  # already in the destination, proven the same
    backups_copied: list[str] = field(default_factory=list)
    backups_present: list[str] = field(default_factory=list)
    bytes_copied: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"wal_copied": self.wal_copied, "wal_present": self.wal_present,
                "backups_copied": self.backups_copied, "backups_present": self.backups_present,
                "bytes_copied": self.bytes_copied, "seconds": round(self.seconds, 3)}


def copy_repository(src: Repo, dst: Repo, *, backup_ids: list[str] | None = None,
                    result: CopyResult | None = None) -> CopyResult:
    """Copy into ``dst`` what it lacks of ``src`` (see the module doc). Hold ``dst``'s
    stanza lock around this."""
    from pitr.catalog import load_catalog

    started = time.monotonic()
    res = result or CopyResult()
    ident = src.read_identity()
    if ident is None:
        raise NotFound(f"{src.storage.url}: stanza {src.stanza!r} has no repo.json: nothing "
                       "to copy from")
    dst.ensure_identity(int(ident.system_id), ident.pg_version, ident.segment_size)
    catalog = load_catalog(src)
    wanted = [b for b in catalog.backups if backup_ids is None or b.id in backup_ids]
    if backup_ids is not None and len(wanted) != len(set(backup_ids)):
        missing = sorted(set(backup_ids) - {b.id for b in wanted})
        raise UsageError(f"--backup: no completed backup {', '.join(missing)} in "
                         f"{src.storage.url}")
    have = {o.key: o.size for o in dst.storage.list(dst.wal_prefix)}
    for obj in src.storage.list(src.wal_prefix):
        name = Repo.wal_name_of(obj.key)
        if name is None:
            continue
        copy_wal(src, dst, obj.key, name, have.get(obj.key), res)
    dst_manifests = {o.key for o in dst.storage.list(dst.backups_prefix)
                     if o.key.endswith("/manifest.json")}
    for record in wanted:
        if dst.manifest_key(record.id) in dst_manifests:
            res.backups_present.append(record.id)
            continue
        _copy_backup(src, dst, record, res)
    res.seconds = time.monotonic() - started
    return res


def copy_wal(src: Repo, dst: Repo, key: str, name: str, dst_size: int | None,
              res: CopyResult) -> None:
    blob = read_bytes(src.storage, key)
    header, raw = codec.verify_blob(blob, name)  # never copy a damaged object
    if dst_size is None:
        try:
            put_bytes(dst.storage, key, blob, if_absent=True)
            res.wal_copied += 1
            res.bytes_copied += len(blob)
            return
        except AlreadyExists:
            pass  # stored meanwhile (archive-push into both): prove it below
    theirs, their_raw = codec.verify_blob(read_bytes(dst.storage, key), name)
    if their_raw != raw:  # the content itself decides, never a checksum (pitr/codec.py)
        raise IntegrityError(
            f"{name}: {dst.storage.url} holds other content under this name "
            f"({theirs.content_id}, {src.storage.url} has {header.content_id}); nothing "
            "was overwritten",
            hint="the two repositories disagree: find out which one is this cluster's "
                 "before removing anything")
    res.wal_present += 1


def _copy_backup(src: Repo, dst: Repo, record: BackupRecord, res: CopyResult) -> None:
    for obj in record.objects:
        try:
            size: int | None = dst.storage.stat(obj.key).size
        except NotFound:
            size = None
        if size is None:
            digest, count = stream.Hash(), stream.Count()
            with src.storage.open(obj.key) as fh, \
                    stream.Pipeline(fh, [count, digest]) as pipe:
                try:
                    dst.storage.put(obj.key, pipe, if_absent=True)
                except AlreadyExists:
                    size = -1  # written meanwhile: prove it below
            if size is None:
                _match(obj.key, count.bytes, digest.sha256, obj.stored_bytes, obj.sha256,
                       "while it was copied")
                res.bytes_copied += count.bytes
                continue
        # left by an interrupted copy (or just written by another): proven, not trusted
        digest, count = stream.Hash(), stream.Count()
        with dst.storage.open(obj.key) as fh, stream.Pipeline(fh, [count, digest]) as pipe:
            pipe.drain()
        _match(obj.key, count.bytes, digest.sha256, obj.stored_bytes, obj.sha256,
               f"already in {dst.storage.url}")
    manifest = read_bytes(src.storage, src.manifest_key(record.id))
    put_bytes(dst.storage, dst.manifest_key(record.id), manifest, if_absent=True)
    res.backups_copied.append(record.id)
    event(log, logging.INFO, f"copied backup {record.id}", to=dst.storage.url)


def _match(key: str, size: int, sha: str, want_size: int, want_sha: str, when: str) -> None:
    if size != want_size or sha != want_sha:
        raise IntegrityError(
            f"{key}: {size} bytes with sha256 {sha} {when}; its manifest says {want_size} "
            f"bytes, sha256 {want_sha}; no manifest was written for it",
            hint="the source object is damaged or the destination holds a different one; "
                 "`pitr verify` the source backup, remove the destination's object and copy "
                 "again")
