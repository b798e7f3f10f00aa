"""`pitr key generate|rotate`: the repository key's life cycle (docs/encryption.md).

``rotate`` records the configured key in the stanza's repo.json (turning encryption
on for a stanza that had none: objects stored before stay readable). New objects are
sealed with it; older ones stay readable while their key is configured.
``--rewrap`` then re-wraps every older object's data key with the new key (the chunks
are copied as they are, see :mod:`pitr.crypto`) and retires the old keys.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pitr import crypto, stream
from pitr.config import Config
from pitr.errors import AlreadyExists, KeySourceError, NotFound, PitrError, UsageError
from pitr.lock import StanzaLock
from pitr.log import event
from pitr.repo import Repo

log = logging.getLogger(__name__)

WHOLE_IN_MEMORY = 64 << 20  # up to this size an object is rewrapped by a conditional write
LOCK_NAME = "backup"  # shared with backup and expire (pitr.expire): nothing deletes meanwhile


def generate(path: Path) -> str:
    """Write a new key to ``path`` (mode 0600, never over an existing file); its id."""
    key = crypto.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists: a key file is never overwritten",
                         hint="choose a new file name; keep the old key while objects "
                              "sealed with it remain (docs/encryption.md)") from None
    except OSError as exc:
        raise KeySourceError(f"{path}: cannot create the key file ({exc.strerror})") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return crypto.key_id(crypto.parse_key(key.encode(), str(path)))


@dataclass
class RotateResult:
    stanza: str
    key: str
    keys: list[str]
    turned_on: bool = False
    added: bool = False
    rewrapped: int = 0
    rewrapped_bytes: int = 0
    plaintext: int = 0
    retired: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _identity(repo: Repo) -> tuple[dict[str, Any], str]:
    try:
        data, etag = repo.storage.read_with_etag(repo.identity_key)
    except NotFound:
        raise NotFound(f"stanza {repo.stanza!r} has no repo.json yet",
                       hint="nothing to rotate: the first archive-push or backup creates "
                            "the stanza, encrypted with the configured key") from None
    return json.loads(data), etag


def _write_identity(repo: Repo, doc: dict[str, Any], etag: str) -> None:
    try:
        repo.storage.put_if_match(repo.identity_key, json.dumps(doc, indent=2).encode(), etag)
    except (AlreadyExists, NotFound):
        raise PitrError(f"{repo.identity_key} changed while the keys were rotated",
                        hint="run `pitr key rotate` again") from None
    repo.sealed.learn_identity(doc)


def rotate(cfg: Config, *, rewrap: bool) -> RotateResult:
    repo = Repo.open(cfg)
    keyring = repo.sealed.keyring
    if keyring is None:
        raise KeySourceError("no encryption key is configured",
                             hint="configure the new key as encryption.key_file (or key_command"
                                  ", PITR_ENCRYPTION_KEY) and the old ones as "
                                  "encryption.old_key_files (docs/encryption.md)")
    doc, etag = _identity(repo)
    result = RotateResult(repo.stanza, keyring.current_id, list(doc.get("keys") or []))
    if not doc.get("encrypted"):
        doc.update(encrypted=True, keys=[keyring.current_id], plaintext_objects=True)
        result.turned_on = result.added = True
    elif keyring.current_id not in result.keys:
        doc["keys"] = [keyring.current_id, *result.keys]
        result.added = True
    if result.added:
        _write_identity(repo, doc, etag)
        event(log, logging.INFO, "encryption key added", stanza=repo.stanza,
              key=keyring.current_id, turned_on=result.turned_on)
    result.keys = list(doc["keys"])
    if rewrap:
        _rewrap(cfg, repo, keyring, result)
    return result


def _rewrap(cfg: Config, repo: Repo, keyring: crypto.Keyring, result: RotateResult) -> None:
    lock = StanzaLock(repo, LOCK_NAME, command="pitr key rotate --rewrap",
                      stale_after=cfg.backup.lock_stale_after, what="backup or expire",
                      lease=cfg.backup.lock_lease)
    inner = repo.sealed.inner
    with lock:
        for obj in inner.list(repo.root):
            if obj.key in (repo.identity_key, lock.key):
                continue
            try:
                with inner.open(obj.key) as fh:
                    head = fh.read(crypto.HEADER_SIZE)
            except NotFound:
                continue  # deleted since the listing
            if not head.startswith(crypto.MAGIC):
                result.plaintext += 1
                continue
            if crypto.SealedHeader.decode(head, obj.key).key_id == keyring.current_id:
                continue
            if _rewrap_one(repo, keyring, obj.key, obj.size):
                result.rewrapped += 1
                result.rewrapped_bytes += obj.size
        doc, etag = _identity(repo)
        result.retired = [k for k in doc.get("keys") or [] if k != keyring.current_id]
        doc["keys"] = [keyring.current_id]
        _write_identity(repo, doc, etag)
        result.keys = doc["keys"]
    event(log, logging.INFO, "data keys rewrapped", stanza=repo.stanza,
          objects=result.rewrapped, bytes=result.rewrapped_bytes, retired=result.retired)


def _rewrap_one(repo: Repo, keyring: crypto.Keyring, key: str, size: int) -> bool:
    inner = repo.sealed.inner
    try:
        if size <= WHOLE_IN_MEMORY:
            data, etag = inner.read_with_etag(key)
            try:
                inner.put_if_match(key, stream.run(data, [crypto.Rewrap(keyring, key)]), etag)
            except (AlreadyExists, NotFound):
                return False  # rewritten or removed by its owner meanwhile (a lock, a claim)
            return True
        with inner.open(key) as src, stream.Pipeline(src, [crypto.Rewrap(keyring, key)]) as p:
            inner.put(key, p)  # a backup's object: expire waits for the lock we hold
        return True
    except NotFound:
        return False
