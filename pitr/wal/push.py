"""Archive one WAL file (archive_command's job): check, compress, store once, never overwrite.

The file is read once. Segments and partial segments carry a WAL long page
header: its system identifier must match the stanza's ``repo.json`` (created
by the first push), so two clusters can never mix WAL under one name. The
object is written with a conditional put; when the name is taken, the stored
header's sha256 decides between "already archived" (a retry or a standby
pushing the same bytes: success) and a conflict (different bytes: error, the
stored object stays as it is).

One exception to "the stored object stays": an EMPTY object. Every object pitr
writes starts with a header, so an empty one holds no archived data; it is what
an S3 server that does not enforce Content-Length (SeaweedFS does this) keeps
of a PUT whose writer died after the request headers and before the body, e.g.
``pitr agent`` killed with -9 mid-upload. Left alone it would take the name
forever: every later push of that segment would fail, and archiving would
stall with it. So an empty object under the name is removed and the push
retried, once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pitr import codec
from pitr.errors import AlreadyExists, NotFound, UsageError, WalConflict
from pitr.log import event
from pitr.pg.names import WalKind, classify
from pitr.pg.walheader import check_segment
from pitr.repo import Repo
from pitr.retry import call_with_budget
from pitr.storage.base import put_bytes, read_bytes

log = logging.getLogger("pitr.wal.push")

# Enough to hold any header codec.encode_header writes.
HEADER_PROBE_BYTES = 4096


@dataclass(frozen=True)
class PushResult:
    name: str
    status: Literal["stored", "already-archived"]
    sha256: str  # of the raw (uncompressed) bytes
    raw_bytes: int
    stored_bytes: int
    seconds: float


class _Deadline:
    """One budget shared by every repository call of a push."""

    def __init__(self, budget: float) -> None:
        self.end = time.monotonic() + budget

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())


def read_wal_file(path: Path) -> tuple[str, WalKind, bytes]:
    name = path.name
    try:
        kind = classify(name)
    except ValueError:
        raise UsageError(f"{path}: not a WAL file name PostgreSQL would archive",
                         hint="archive_command must pass %p (the path of the file)") from None
    try:
        return name, kind, path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}",
                         hint="archive_command runs in the data directory; pass %p unchanged "
                              "and run pitr as the PostgreSQL user") from exc


def _check_segment(name: str, kind: WalKind, raw: bytes) -> dict[str, Any]:
    """Validate a (partial) segment against its own header; returns its identity fields."""
    header = check_segment(raw, name, whole=kind is WalKind.SEGMENT)
    return {"system_id": header.system_id, "pg_version": header.pg_version,
            "seg_size": header.seg_size}


def _written_at(path: Path) -> str:
    """When PostgreSQL wrote this history file: the moment its timeline began.

    The server writes NNNNNNNN.history at promotion, before the timeline's first
    record, and on the clock its commit timestamps use. The planner dates a branch
    by it; the object's stored time is later, and S3 truncates it to the second.
    """
    try:
        ts = min(path.stat().st_mtime, time.time())
    except OSError:
        ts = time.time()
    return datetime.fromtimestamp(ts, UTC).isoformat()


def push_wal(repo: Repo, path: Path, *, level: int, budget: float) -> PushResult:
    """Store the WAL file at ``path``; return only once it is durable in the repository."""
    started = time.monotonic()
    deadline = _Deadline(budget)
    name, kind, raw = read_wal_file(path)
    extra: dict[str, Any] = {"name": name}
    if kind in (WalKind.SEGMENT, WalKind.PARTIAL):
        ident = _check_segment(name, kind, raw)
        call_with_budget(
            lambda: repo.ensure_identity(ident["system_id"], ident["pg_version"],
                                         ident["seg_size"]),
            budget=deadline.left(), what=f"archive-push {name}: reading repo.json")
        extra["system_id"] = str(ident["system_id"])
    elif kind is WalKind.HISTORY:
        extra["written_at"] = _written_at(path)

    blob, digest = codec.compress_blob(raw, level, **extra)
    key = repo.wal_key(name)
    status: Literal["stored", "already-archived"] = "stored"
    prefix: bytes | None = None
    stored_new = _put_if_absent(repo, key, blob, deadline, name)
    if not stored_new:
        prefix = _stored_prefix(repo, key, deadline, name)
        if not prefix:  # empty, or gone meanwhile: the name is free (see the module doc)
            if prefix is not None:
                _remove_empty(repo, key, deadline, name)
            stored_new = _put_if_absent(repo, key, blob, deadline, name)
            if not stored_new:
                prefix = _stored_prefix(repo, key, deadline, name)
    if not stored_new:
        stored = codec.decode_header(prefix or b"", name)[0].sha256
        if stored != digest:
            raise WalConflict(
                f"{name} is already archived with different content: repository sha256 "
                f"{stored}, this file sha256 {digest}",
                hint="the archived copy was left untouched. Two clusters may share this "
                     "stanza, or a restored cluster reused the timeline; inspect both "
                     "before removing anything") from None
        status = "already-archived"
        event(log, logging.WARNING, f"{name} was already archived with the same content",
              sha256=digest)
    seconds = time.monotonic() - started
    event(log, logging.DEBUG, f"archived {name}", status=status, raw_bytes=len(raw),
          stored_bytes=len(blob), seconds=round(seconds, 3))
    return PushResult(name, status, digest, len(raw), len(blob), seconds)


def _put_if_absent(repo: Repo, key: str, blob: bytes, deadline: _Deadline, name: str) -> bool:
    """Store ``blob`` under ``key`` unless the name is taken; False when it is."""
    try:
        call_with_budget(lambda: put_bytes(repo.storage, key, blob, if_absent=True),
                         budget=deadline.left(), what=f"archive-push {name}: storing")
    except AlreadyExists:
        return False
    return True


def _stored_prefix(repo: Repo, key: str, deadline: _Deadline, name: str) -> bytes | None:
    """The first bytes of the object under ``key`` (its header); None when it is gone."""
    try:
        return call_with_budget(lambda: read_bytes(repo.storage, key, HEADER_PROBE_BYTES),
                                budget=deadline.left(), what=f"{name}: reading the stored header")
    except NotFound:
        return None


def _remove_empty(repo: Repo, key: str, deadline: _Deadline, name: str) -> None:
    """Delete the empty object just read under ``key`` (see the module doc).

    It was read empty right before the delete, so only a writer that stores this
    name between that read and the delete could see its object replaced by ours.
    Such a writer normally holds the same segment (PostgreSQL's archive-push
    racing the agent), so the name still ends up with the same bytes; a foreign
    cluster's different bytes would go unnoticed only if it also hit this
    instant of an empty leftover.
    """
    call_with_budget(lambda: repo.storage.delete([key]), budget=deadline.left(),
                     what=f"archive-push {name}: removing an empty object")
    event(log, logging.WARNING, f"{name}: removed an empty object under its name, left by an "
          "interrupted upload (the server kept a PUT whose body never arrived)", key=key)
