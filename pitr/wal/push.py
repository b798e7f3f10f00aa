"""Archive one WAL file (archive_command's job): check, compress, store once, never overwrite.

The file is read once. Segments and partial segments carry a WAL long page
header: its system identifier must match the stanza's ``repo.json`` (created
by the first push), so two clusters can never mix WAL under one name. The
object is written with a conditional put. When the name is taken, the stored
object is read WHOLE and proven against itself (docs/archiving.md, "What archive-push
guarantees"): its header, one complete zstd frame and nothing after it, the
size and checksum of what it decompresses to. Only then do its raw bytes decide,
compared byte for byte with this file's (never a checksum: pitr/codec.py):

* the same as this file: "already archived" (a retry, or a standby pushing
  the same bytes): success. PostgreSQL will recycle its copy, so a damaged
  stored object must never pass for this.
* different: a conflict. The stored object stays as it is.
* the stored object fails its own check: it is damaged, and holds nothing a
  restore could use. It is replaced by this file, with a conditional write on
  the ETag it was read with, and an error is logged naming the damage. An
  EMPTY object is the usual case: every object pitr writes starts with a
  header, and an empty one is what an S3 server that does not enforce
  Content-Length (SeaweedFS does this) keeps of a PUT whose writer died after
  the request headers and before the body (``pitr agent`` killed with -9
  mid-upload). Left alone it would take the name forever.

The replacement is conditional on the ETag, never a delete: two pushers that
both find the damaged object cannot delete each other's good copy; the one
whose write loses reads the name again and finds a proven object.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pitr import codec
from pitr.errors import (
    AlreadyExists,
    DecryptionFailed,
    IntegrityError,
    NotFound,
    PitrError,
    TransientStorageError,
    UsageError,
    WalConflict,
)
from pitr.log import event
from pitr.pg.names import WalKind, classify
from pitr.pg.walheader import check_segment
from pitr.repo import Repo
from pitr.retry import call_with_budget
from pitr.storage.base import put_bytes
from pitr.tiers import wal_kind
from pitr.wal.catchup import Backlog, try_inline

log = logging.getLogger("pitr.wal.push")


@dataclass(frozen=True)
class PushResult:
    name: str
    status: Literal["stored", "already-archived"]
    checksum: str  # how this push's header names the content (codec.Header.content_id)
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


def push_wal(repos: Repo | Sequence[Repo], path: Path, *, level: int,
             budget: float, catch_up: Sequence[tuple[Repo | None, Backlog]] = (),
             catch_up_budget: float | None = None) -> PushResult:
    """Store the WAL file at ``path``; return only once it is durable in the repository,
    or in every one of ``repos`` (docs/multiple-repositories.md).

    The file is read and compressed once. Each repository gets a budget of its own, and
    one that fails does not stop the others from being tried: what they stored answers
    "already archived" when PostgreSQL retries. The first failure is raised.

    ``catch_up``: repositories that need not hold the segment before this returns
    (mode = "catch_up"), each with its backlog. Once every one of ``repos`` holds it, each
    is offered the segment unless it is behind already (or None: not usable now); one
    that did not take it gets the
    name recorded durably in its backlog, for the drain to copy it later from ``repos``
    (pitr/wal/catchup.py), each offer bounded by ``catch_up_budget`` (default ``budget``).
    A backlog that cannot be written fails the push."""
    started = time.monotonic()
    targets = list(repos) if isinstance(repos, Sequence) else [repos]
    name, kind, raw = read_wal_file(path)
    extra: dict[str, Any] = {"name": name}
    ident: dict[str, Any] | None = None
    if kind in (WalKind.SEGMENT, WalKind.PARTIAL):
        ident = _check_segment(name, kind, raw)
        extra["system_id"] = str(ident["system_id"])
    elif kind is WalKind.HISTORY:
        extra["written_at"] = _written_at(path)

    blob, header = codec.compress_blob(raw, codec.choose_level(raw, level), **extra)
    statuses: list[Literal["stored", "already-archived"]] = []
    failure: PitrError | None = None
    for repo in targets:
        try:
            statuses.append(_store(repo, name, ident, blob, raw, _Deadline(budget)))
        except PitrError as exc:
            if len(targets) == 1:
                raise
            event(log, logging.WARNING, f"{name} not archived in {repo.storage.url}",
                  error=exc.message)
            failure = failure or exc
    if failure is not None:
        raise failure
    for later, backlog in catch_up:
        if later is not None and try_inline(len(backlog.entries())):
            try:
                _store(later, name, ident, blob, raw,
                       _Deadline(budget if catch_up_budget is None else catch_up_budget))
                continue
            except PitrError as exc:
                event(log, logging.WARNING, f"{name} not archived in {later.storage.url} "
                      "(catch_up): queued for later", error=exc.message)
        backlog.add(name, now=time.time())
    status: Literal["stored", "already-archived"] = (
        "stored" if "stored" in statuses else "already-archived")
    seconds = time.monotonic() - started
    event(log, logging.DEBUG, f"archived {name}", status=status, raw_bytes=len(raw),
          stored_bytes=len(blob), seconds=round(seconds, 3))
    return PushResult(name, status, header.content_id, len(raw), len(blob), seconds)


def _store(repo: Repo, name: str, ident: dict[str, Any] | None, blob: bytes, raw: bytes,
           deadline: _Deadline) -> Literal["stored", "already-archived"]:
    """One repository's part of :func:`push_wal`: its repo.json, then the object."""
    if ident is not None:
        call_with_budget(
            lambda: repo.ensure_identity(ident["system_id"], ident["pg_version"],
                                         ident["seg_size"]),
            budget=deadline.left(), what=f"archive-push {name}: reading repo.json")
    key = repo.wal_key(name)
    if _put_if_absent(repo, key, blob, deadline, name):
        return "stored"
    return _settle_taken_name(repo, key, blob, raw, deadline, name)


def _put_if_absent(repo: Repo, key: str, blob: bytes, deadline: _Deadline, name: str) -> bool:
    """Store ``blob`` under ``key`` unless the name is taken; False when it is."""
    try:
        call_with_budget(lambda: put_bytes(repo.storage, key, blob, if_absent=True,
                                           storage_class=repo.upload_class(wal_kind(name))),
                         budget=deadline.left(), what=f"archive-push {name}: storing")
    except AlreadyExists:
        return False
    return True


# A name keeps changing under us only while other writers race for it; each round
# ends with one of them having stored a proven object, so a few rounds settle it.
SETTLE_ROUNDS = 4


def _settle_taken_name(repo: Repo, key: str, blob: bytes, raw: bytes, deadline: _Deadline,
                       name: str) -> Literal["stored", "already-archived"]:
    """The name is taken: answer only from a proven stored object (see the module doc)."""
    for _ in range(SETTLE_ROUNDS):
        try:
            # as stored: a sealed object that fails authentication is damage to repair,
            # a key this host lacks is not (docs/encryption.md)
            stored, etag = call_with_budget(lambda: repo.sealed.inner.read_with_etag(key),
                                            budget=deadline.left(),
                                            what=f"{name}: reading the stored object")
        except NotFound:  # removed meanwhile (expire): the name is free again
            if _put_if_absent(repo, key, blob, deadline, name):
                return "stored"
            continue
        try:
            stored = repo.sealed.unseal_bytes(key, stored)
            proven = prove_stored(stored, name)
        except DecryptionFailed as exc:
            proven = f"{len(stored)} bytes: {exc.message.removeprefix(f'{key}: ')}"
        if not isinstance(proven, str):
            theirs, their_raw = proven
            if their_raw == raw and theirs.extra.get("name", name) == name:
                event(log, logging.WARNING, f"{name} was already archived with the same content",
                      checksum=theirs.content_id)
                return "already-archived"
            raise WalConflict(
                f"{name} is already archived with different content: the repository's copy "
                f"({theirs.content_id}, {theirs.size} bytes) differs from this file "
                f"({codec.decode_header(blob, name)[0].content_id}, {len(raw)} bytes)"
                f"{_first_difference(their_raw, raw)}",
                hint="the archived copy was left untouched. Two clusters may share this "
                     "stanza, or a restored cluster reused the timeline; inspect both "
                     "before removing anything")
        try:
            call_with_budget(partial(repo.storage.put_if_match, key, blob, etag),
                             budget=deadline.left(), what=f"archive-push {name}: replacing")
        except (AlreadyExists, NotFound):
            continue  # another writer replaced it since we read it: prove that one
        if stored:
            event(log, logging.ERROR, f"{name}: the archived object was damaged ({proven}); "
                  "replaced it with this file", key=key, stored_bytes=len(stored), etag=etag)
        else:
            event(log, logging.WARNING, f"{name}: replaced an empty object under its name, left "
                  "by an interrupted upload (the server kept a PUT whose body never arrived)",
                  key=key)
        return "stored"
    raise TransientStorageError(f"{name}: the stored object kept changing while it was checked "
                                f"({SETTLE_ROUNDS} rounds); PostgreSQL will retry the segment")


def prove_stored(stored: bytes, name: str) -> tuple[codec.Header, bytes] | str:
    """A stored WAL object proven on its own terms (its header and raw bytes), or what is
    wrong with it."""
    if not stored:
        return "empty"
    try:
        return codec.verify_blob(stored, name)
    except IntegrityError as exc:
        return f"{len(stored)} bytes: {exc.message.removeprefix(f'{name}: ')}"


def _first_difference(a: bytes, b: bytes) -> str:
    """Where two contents first differ, for the conflict message."""
    common = min(len(a), len(b))
    at = next((i for i in range(0, common, 8192) if a[i:i + 8192] != b[i:i + 8192]), None)
    if at is None:
        return ""  # one is a prefix of the other: the sizes say it
    at = next((j for j in range(at, min(at + 8192, common)) if a[j] != b[j]), common)
    return f", first at byte {at}"
