"""Fetch one archived WAL file (restore_command's job): get, prove, write atomically.

The destination only ever appears complete and verified: the bytes go to a
temp file in the same directory, are fsynced and renamed over the name. On any
failure the temp file is removed and the destination is not created, so
PostgreSQL never replays a half-written or corrupt segment.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pitr import codec
from pitr.atomic import atomic_write
from pitr.errors import (
    IntegrityError,
    NotFound,
    PitrError,
    SystemIdMismatch,
    TargetDirError,
    TransientStorageError,
    UsageError,
    WalNotFound,
)
from pitr.log import event
from pitr.pg.control import read_system_id
from pitr.pg.names import WalKind, classify
from pitr.pg.walheader import check_segment, parse_header
from pitr.repo import Repo
from pitr.retry import call_with_budget
from pitr.storage.base import read_bytes

log = logging.getLogger("pitr.wal.fetch")


@dataclass(frozen=True)
class FetchResult:
    name: str
    sha256: str | None  # of the raw bytes written, when asked for (fetch_wal's ``sha256``)
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


def fetch_wal(repo: Repo, name: str, dest: Path, *, budget: float,
              system_id: int | None = None, sha256: bool = False) -> FetchResult:
    """Fetch ``name`` into ``dest`` (restore_command's %p), proven before it is written.

    Proven: the checksum and size of the decompressed bytes (the stored header), the
    name (the header records it; a segment's first page names its own LSN), and,
    when ``system_id`` is given, the system identifier in a segment's page header.
    WalNotFound here means only "no object under this key": :func:`archive_get`
    owns the proof that this is the end of the archive. ``sha256``: also return the
    sha256 of the bytes written (the prefetch worker's local proof), which a version 1
    header holds and a version 2 object costs a hash for.
    """
    started = time.monotonic()
    blob = fetch_object(repo, name, budget=budget)
    raw, header = _proven_content(blob, name)
    if system_id is not None:
        _prove_system_id(repo, name, raw, system_id, budget=budget)
    try:
        atomic_write(dest, raw, durable=True)  # never a partial %p
    except OSError as exc:
        raise TargetDirError(f"cannot write {dest}: {exc.strerror or exc}",
                         hint="restore_command runs in the data directory as the PostgreSQL "
                              "user; pass %p unchanged") from exc
    seconds = time.monotonic() - started
    event(log, logging.DEBUG, f"restored {name}", raw_bytes=len(raw), stored_bytes=len(blob),
          seconds=round(seconds, 3))
    digest = (header.sha256 or hashlib.sha256(raw).hexdigest()) if sha256 else None
    return FetchResult(name, digest, len(raw), len(blob), seconds)


def archive_get(repos: Repo | Sequence[Repo], name: str, dest: Path, *,
                datadir: Path | None, budget: float, planned: bool = False,
                catch_up: Sequence[bool] = ()) -> FetchResult:
    """restore_command's answer from several repositories (docs/multiple-repositories.md):
    the first that has ``name`` serves it, in order; WalNotFound only when every required
    one of them proved the absence. A repository that cannot answer (down, wrong stanza, a
    damaged object) is passed over for the others, and when none has the file its
    failure is the answer: "unknown", never "absent".

    ``catch_up``: per repository of ``repos``, True for a catch_up one. Its absence proves
    nothing (it may lag behind archive-push's exit 0): it serves what it has, and when no
    required repository can answer, the answer is "unknown".

    ``planned``: the first of ``repos`` is the one a restore plan chose (``archive-get
    --repo``) and, when it is required, its proven absence is the answer even while
    another repository cannot answer. Sound because archive-push exits 0 only once a
    segment is durable in every required repository: what the chosen one proves absent,
    PostgreSQL never saw archived."""
    targets = list(repos) if isinstance(repos, Sequence) else [repos]
    lagging = [bool(c) for c in catch_up] + [False] * (len(targets) - len(catch_up))
    failure: PitrError | None = None
    authority_absent = False
    required_absent = 0
    for i, repo in enumerate(targets):
        try:
            return _archive_get_one(repo, name, dest, datadir=datadir, budget=budget)
        except WalNotFound as exc:
            if len(targets) == 1 and not lagging[i]:
                raise
            if lagging[i]:
                failure = failure or TransientStorageError(
                    f"{name}: not in {repo.storage.url}, a catch_up repository whose "
                    f"absence proves nothing ({' '.join(exc.message.split())})")
                continue
            required_absent += 1
            authority_absent = authority_absent or (planned and i == 0)
            continue
        except PitrError as exc:
            if len(targets) == 1:
                raise
            event(log, logging.WARNING, f"archive-get {name}: {repo.storage.url} cannot "
                  "answer; trying the other repositories", error=exc.message)
            failure = failure or exc
    n_required = lagging.count(False)
    if n_required and required_absent == n_required:
        raise WalNotFound(f"{name}: in none of the {len(targets)} repositories, each "
                          "required one proven this cluster's ("
                          f"{', '.join(r.storage.url for r in targets)})")
    if failure is not None and not authority_absent:
        raise failure
    raise WalNotFound(f"{name}: not in {targets[0].storage.url}, the repository the "
                      f"restore plan chose, proven this cluster's (another repository "
                      f"could not answer: {' '.join(failure.message.split()) if failure else ''})")


def _archive_get_one(repo: Repo, name: str, dest: Path, *, datadir: Path | None,
                     budget: float) -> FetchResult:
    """restore_command's whole answer from one repository: ``dest`` written and proven, or
    WalNotFound only when the absence is proven (docs/exit-codes.md, archive-get).

    ``datadir`` is the cluster being recovered; its pg_control names the system
    identifier every fetched segment must carry and the stanza's repo.json must
    claim. Without a readable one (archive-get run by hand elsewhere) segments are
    checked against repo.json instead, and nothing can be proven absent.
    """
    cluster: int | None = None
    unknown: PitrError | None = None
    try:
        if datadir is None:
            raise TargetDirError("no data directory: %p is not under pg_wal and "
                                 "postgres.pgdata is not set")
        cluster = read_system_id(datadir)
    except TargetDirError as exc:
        unknown = exc
    try:
        if cluster is None:
            cluster = _stanza_system_id(repo, name, budget=budget)
        return fetch_wal(repo, name, dest, budget=budget, system_id=cluster)
    except WalNotFound:
        if unknown is not None or cluster is None:
            raise TargetDirError(
                f"{name} is not in the repository, but whether that is the end of the archive "
                f"cannot be proven: {unknown.message if unknown else 'no cluster identity'}",
                hint=unknown.hint if unknown else None) from None
        prove_absent(repo, name, cluster, budget=budget)
        raise


def prove_absent(repo: Repo, name: str, system_id: int, *, budget: float) -> None:
    """Return only when "``name`` is absent" is the truth about the right repository.

    Read afresh on every "absent" answer (that is at most a handful per restore, and
    a cached identity must never turn "unknown" into "absent"): the stanza's repo.json
    must be there and claim the cluster being recovered. A missing repository
    directory, a wrong stanza, prefix or bucket all end here with an error, which
    archive-get turns into an exit code above 125.
    """
    stanza = _stanza_system_id(repo, name, budget=budget)
    if stanza != system_id:
        raise SystemIdMismatch(
            f"{name} is not in the repository, and the repository is not this cluster's: "
            f"stanza {repo.stanza!r} ({repo.storage.url}) belongs to system identifier "
            f"{stanza}, the cluster being recovered is {system_id}",
            hint="restore_command reads the wrong stanza or repository; fix stanza / "
                 "repository.url in the configuration restore_command uses")


def _stanza_system_id(repo: Repo, name: str, *, budget: float) -> int:
    ident = call_with_budget(repo.read_identity, budget=budget,
                             what=f"archive-get {name}: reading repo.json")
    if ident is None:
        raise NotFound(
            f"{name}: the stanza {repo.stanza!r} has no repo.json in {repo.storage.url}: "
            "the repository is missing, unmounted or not this one, so no WAL can be proven "
            "absent or present",
            hint="check repository.url and stanza (and that the repository is mounted); "
                 "PostgreSQL stops recovery here instead of ending it early")
    return int(ident.system_id)


def _proven_content(blob: bytes, name: str) -> tuple[bytes, codec.Header]:
    """The decompressed bytes, verified against the stored header, and that header."""
    raw = codec.decompress_blob(blob, name)
    header = codec.decode_header(blob[:65536], name)[0]
    stored_name = header.extra.get("name")
    if stored_name is not None and stored_name != name:
        raise IntegrityError(f"{name}: the stored object holds {stored_name!r}",
                             hint="the object is stored under the wrong name; it was not "
                                  "written by archive-push of this file")
    kind = classify(name)
    if kind in (WalKind.SEGMENT, WalKind.PARTIAL):
        check_segment(raw, name, whole=kind is WalKind.SEGMENT)
    return raw, header


def _prove_system_id(repo: Repo, name: str, raw: bytes, system_id: int, *,
                     budget: float) -> None:
    """Segments carry their cluster's identifier in every long page header; history and
    backup-history files do not, so for them the stanza's repo.json must claim it."""
    if classify(name) in (WalKind.SEGMENT, WalKind.PARTIAL):
        found = parse_header(raw, name).system_id
    else:
        found = _stanza_system_id(repo, name, budget=budget)
    if found != system_id:
        raise SystemIdMismatch(
            f"{name} in the repository belongs to system identifier {found}, the cluster "
            f"being recovered is {system_id}",
            hint="restore_command reads another cluster's stanza or repository")
