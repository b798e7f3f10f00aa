"""The local spool: the agent's receipts and archive-get's prefetched segments.

Layout below ``archive.spool_dir`` (never inside ``pg_wal``)::

    <spool>/<stanza>/agent.lock          flock'ed (exclusive) while an agent runs; holds its pid
    <spool>/<stanza>/agent-status.json   backlog metrics, rewritten atomically by the agent
    <spool>/<stanza>/agent.spawned       touched when archive-push starts an agent on demand
    <spool>/<stanza>/agent.log           output of agents started on demand
    <spool>/<stanza>/archive/<name>.ok     receipt: what was stored for <name> (a record)
    <spool>/<stanza>/archive/<name>.error  the agent's last failure for <name> (text)
    <spool>/<stanza>/archive/fastpath.log  one line per archive-push answered from a proof
    <spool>/<stanza>/archive/proofs-<tag>/<name>_<identity>  the proof: <name> with this
                                         identity is durably in the repository (tag: the
                                         repository URL's hash)
    <spool>/<stanza>/restore-<key>/      one restore's prefetch state; key: repository URL,
                                         data directory and its system id (fastpath.restore_key)
    <spool>/<stanza>/restore-<key>/prefetch.lock   flock'ed while its prefetch worker runs
    <spool>/<stanza>/restore-<key>/prefetch.want   the newest segment restore_command asked for
    <spool>/<stanza>/restore-<key>/prefetch.log    hit/miss/fetched lines (proof prefetch works)
    <spool>/<stanza>/restore-<key>/prefetch/<name>          verified, decompressed segment
    <spool>/<stanza>/restore-<key>/prefetch/<name>.sha256   the sha256 of the verified bytes,
                                         checked again when it is handed over
    <spool>/<stanza>/restore-<key>/prefetch/<name>.missing  the worker could not fetch <name>

Why a proof may answer archive-push. A proof (and its receipt) is written only
after the repository acknowledged the object (push_wal returned), and it records
the identity of the file the agent read: device, inode, size, mtime_ns and
ctime_ns, stat'ed before *and* after reading (a file that changed meanwhile
gets no proof). archive-push trusts a proof only when the file PostgreSQL
hands it has the same name and the same identity, and the proof lies in the
directory of the same repository. That is sound because:

* PostgreSQL never writes a segment again once it is ``.ready``;
* recycling renames a segment file to a *future* name, so the old inode never
  reappears under an archived name (and the rename plus the rewrite change its
  ctime anyway);
* any other way of putting different bytes under that name (restoring a file
  system copy, re-creating the cluster) makes a new inode or at least a new
  ctime; ctime cannot be set from user space, unlike mtime (``cp -p``, ``tar``).

The proof. What archive-push checks (the Python fast path, this module and
``archive-push.sh`` alike) is one empty file named
``<name>_<dev>_<ino>_<size>_<mtime>_<ctime>`` in the proof directory of the
configured repository: the receipt's name, identity and repository, spelled as
a path that one stat(1) call can build. The agent creates it right after the
receipt (which stays as the record of the content checksum and when it was stored, and
proves nothing by itself) and removes it with the receipt. The soundness
argument in full: docs/design-fast-path.md.

Hashing the 16 MiB file again would also be sound but costs tens of
milliseconds per segment, which is the whole budget of the fast path.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pitr import fastpath as fp
from pitr.atomic import atomic_write
from pitr.fastpath import append_line, lock_held
from pitr.pg.control import system_id_or_none
from pitr.pg.walname import is_segment_name

__all__ = ["FileIdentity", "Receipt", "Spool", "lock_held", "try_lock"]

RECEIPT_FORMAT = fp.RECEIPT_FORMAT
LOG_ROTATE_BYTES = 4 << 20


@dataclass(frozen=True)
class FileIdentity:
    """What identifies one version of a file on this host (see the module doc)."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class Receipt:
    name: str
    repository: str
    identity: FileIdentity
    checksum: str  # the pushed object's header's name for its content (codec.Header.content_id)
    stored_at: float  # unix time the repository acknowledged the object
    already_archived: bool = False

    def to_json(self) -> str:
        doc = asdict(self)
        doc["format"] = RECEIPT_FORMAT
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Receipt:
        doc = json.loads(text)
        if doc.pop("format", None) != RECEIPT_FORMAT:
            raise ValueError("unknown receipt format")
        doc["identity"] = FileIdentity(**doc["identity"])
        if "sha256" in doc:  # written before version 2 objects (pitr/codec.py)
            doc["checksum"] = f"sha256:{doc.pop('sha256')}"
        return cls(**doc)


proof_dir_name = fp.proof_dir_name


def proof_name(name: str, ident: FileIdentity) -> str:
    """``<name>_<identity>`` as ``stat -c '%d_%i_%s_%.9Y_%.9Z'`` prints the identity."""
    return fp.proof_name(name, (ident.dev, ident.ino, ident.size, ident.mtime_ns,
                                ident.ctime_ns))


def try_lock(path: Path) -> int | None:
    """Take the exclusive flock on ``path``; the open fd (keep it) or None if taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def rotate_if_big(path: Path, limit: int = LOG_ROTATE_BYTES) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size > limit:
            os.replace(path, path.with_name(path.name + ".1"))


class Spool:
    """Paths and small atomic operations of one stanza's spool.

    ``restore_key`` (:func:`pitr.fastpath.restore_key`) selects one restore's prefetch
    state; without it the prefetch paths are not usable (archive-get always has one).
    """

    def __init__(self, spool_dir: str | Path, stanza: str, restore_key: str = "") -> None:
        self.base = Path(spool_dir) / stanza
        self.archive_dir = self.base / fp.ARCHIVE_DIR
        self.agent_lock = self.base / fp.AGENT_LOCK
        self.status_path = self.base / fp.STATUS_FILE
        self.agent_log = self.base / fp.AGENT_LOG
        self.fastpath_log = self.archive_dir / fp.FASTPATH_LOG
        self.restore_key = restore_key
        self.restore_base = self.base / (fp.RESTORE_PREFIX + restore_key)
        self.prefetch_dir = self.restore_base / fp.PREFETCH_DIR
        self.prefetch_lock = self.restore_base / fp.PREFETCH_LOCK
        self.prefetch_want = self.restore_base / fp.PREFETCH_WANT
        self.prefetch_log = self.restore_base / fp.PREFETCH_LOG

    @classmethod
    def for_restore(cls, spool_dir: str | Path, stanza: str, url: str,
                    datadir: str | Path) -> Spool | None:
        """The spool of the restore into ``datadir`` from ``url`` (None: no pg_control)."""
        sysid = system_id_or_none(str(datadir))
        if sysid is None:
            return None
        return cls(spool_dir, stanza, fp.restore_key(url, str(datadir), sysid))

    def ensure(self) -> Spool:
        dirs = [self.base, self.archive_dir]
        if self.restore_key:
            dirs += [self.restore_base, self.prefetch_dir]
        for d in dirs:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self

    # -- archive receipts --------------------------------------------------
    def ok_path(self, name: str) -> Path:
        return self.archive_dir / f"{name}.ok"

    def error_path(self, name: str) -> Path:
        return self.archive_dir / f"{name}.error"

    def proof_dir(self, repository: str) -> Path:
        return self.archive_dir / proof_dir_name(repository)

    def write_receipt(self, receipt: Receipt) -> None:
        # No fsync: a receipt lost in a crash only sends archive-push down the
        # synchronous path, which finds the object already archived.
        atomic_write(self.ok_path(receipt.name), receipt.to_json())
        proofs = self.proof_dir(receipt.repository)
        proofs.mkdir(mode=0o700, exist_ok=True)
        os.close(os.open(proofs / proof_name(receipt.name, receipt.identity),
                         os.O_WRONLY | os.O_CREAT, 0o600))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.error_path(receipt.name))

    def read_receipt(self, name: str) -> Receipt | None:
        try:
            return Receipt.from_json(self.ok_path(name).read_text())
        except (OSError, ValueError, TypeError, KeyError):
            return None  # absent, or unreadable after a crash: not proof of anything

    def receipt_proves(self, name: str, st: os.stat_result, repository: str) -> bool:
        """Does the agent's proof say THIS file's content is stored in ``repository``?

        The same file, checked the same way, as the fast paths
        (:func:`pitr.fastpath.proven`, pitr/archive-push.sh).
        """
        return fp.proven(str(self.base), proof_dir_name(repository), name, st)

    def write_error(self, name: str, message: str) -> None:
        atomic_write(self.error_path(name), message.rstrip("\n") + "\n")

    # -- prefetch ----------------------------------------------------------
    def prefetched(self, name: str) -> Path:
        return self.prefetch_dir / name

    def missing(self, name: str) -> Path:
        return self.prefetch_dir / f"{name}{fp.MISSING_SUFFIX}"

    def checksum(self, name: str) -> Path:
        return self.prefetch_dir / f"{name}{fp.CHECKSUM_SUFFIX}"

    def read_want(self) -> str | None:
        try:
            text = self.prefetch_want.read_text().strip()
        except OSError:
            return None
        return text if is_segment_name(text) else None

    def note_prefetch(self, what: str, name: str, extra: str = "") -> None:
        append_line(self.prefetch_log, f"{time.time():.3f} {what} {name} {extra}".rstrip())

    # -- agent status ------------------------------------------------------
    def write_status(self, doc: dict[str, Any]) -> None:
        atomic_write(self.status_path, json.dumps(doc, indent=2, sort_keys=True) + "\n")

    def read_status(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None
