"""Fetch one archived WAL file (restore_command's job): get, verify, write atomically.

The destination only ever appears complete and verified: the bytes go to a
temp file in the same directory, are fsynced and renamed over the name. On any
failure the temp file is removed and the destination is not created, so
PostgreSQL never replays a half-written or corrupt segment.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from pitr import codec
from pitr.errors import NotFound, TargetDirError, UsageError, WalNotFound
from pitr.log import event
from pitr.pg.names import classify
from pitr.repo import Repo
from pitr.retry import call_with_budget
from pitr.security import write_private
from pitr.storage.base import read_bytes

log = logging.getLogger("pitr.wal.fetch")



@dataclass(frozen=True)
class FetchResult:
    name: str
    sha256: str  # of the raw bytes written
    raw_bytes: int
    stored_bytes: int
    seconds: float


def _check_name(name: str) -> None:
    try:
        classify(name)
    except ValueError:
        raise UsageError(f"{name!r} is not a WAL file name",
                         hint="restore_command must pass %f and %p") from None


def fetch_object(repo: Repo, name: str, *, budget: float) -> bytes:
    """The stored (compressed) object of ``name``; WalNotFound when confirmed absent."""
    _check_name(name)
    key = repo.wal_key(name)
    try:
        return call_with_budget(lambda: read_bytes(repo.storage, key), budget=budget,
                                what=f"archive-get {name}")
    except WalNotFound:
        raise
    except NotFound:
        raise WalNotFound(f"{name}: not in the repository ({repo.storage.url}, "
                          f"stanza {repo.stanza!r})") from None


def fetch_to_bytes(repo: Repo, name: str, *, budget: float) -> bytes:
    """The verified raw bytes of the archived ``name``."""
    return codec.decompress_blob(fetch_object(repo, name, budget=budget), name)


def fetch_wal(repo: Repo, name: str, dest: Path, *, budget: float) -> FetchResult:
    """Fetch ``name`` into ``dest`` (restore_command's %p), verified against its sha256."""
    started = time.monotonic()
    blob = fetch_object(repo, name, budget=budget)
    raw = codec.decompress_blob(blob, name)
    digest = codec.decode_header(blob[:65536], name)[0].sha256
    try:
        write_private(dest, raw)  # temp + fsync + rename: never a partial %p
    except OSError as exc:
        raise TargetDirError(f"cannot write {dest}: {exc.strerror or exc}",
                         hint="restore_command runs in the data directory as the PostgreSQL "
                              "user; pass %p unchanged") from exc
    seconds = time.monotonic() - started
    event(log, logging.DEBUG, f"restored {name}", raw_bytes=len(raw), stored_bytes=len(blob),
          seconds=round(seconds, 3))
    return FetchResult(name, digest, len(raw), len(blob), seconds)
