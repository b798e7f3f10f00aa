"""Proof that the repository honours conditional writes (``If-None-Match: *``).

Never overwriting an archived segment, the stanza lock and the claim of a
stanza's ``repo.json`` all rest on one primitive: a conditional write that the
server refuses when the key exists (docs/archiving.md, "Conditional writes are proven, not
assumed", under "Setting up archiving"). A server or proxy that ignores the
header answers every such write with success, and all three silently stop
protecting anything. So before archive-push, the agent, backup, expire (the
lock) or setup (the claim) write anything, the repository is proven to refuse
a second conditional write to a probe key; a server that accepts it is refused
(:class:`ConditionalWritesIgnored`), unless ``repository.conditional_writes =
false`` says the user knows (``pitr status`` and the metrics then carry a
standing warning).

The proof is remembered per repository in the spool (a file named after the
repository's URL and endpoint), so it costs three requests once a day, not one
per segment. The memo only ever skips a probe that succeeded before: a missing,
unreadable or old memo means "prove it again", never "assume it holds".
Drivers whose own code enforces the condition (the local directory: link()
/ O_EXCL) need no proof.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from pitr.errors import AlreadyExists, StorageError
from pitr.storage.base import put_bytes

if TYPE_CHECKING:
    from pitr.config import Config
    from pitr.storage.base import Storage

log = logging.getLogger("pitr.condwrites")

MEMO_TTL = 86400.0  # seconds a proof is trusted before it is made again
MEMO_PREFIX = "conditional-writes-"

WHAT_BREAKS = ("archive-push could overwrite an archived WAL segment with other content, "
               "two backups or expires could both take the stanza lock, and two clusters "
               "could both claim one stanza")


class ConditionalWritesIgnored(StorageError):
    """The repository accepted a conditional write to an existing key."""


def server_enforced(storage: Storage) -> bool:
    """Whether the driver leaves If-None-Match to the server (so it must be proven)."""
    return bool(getattr(storage, "conditional_by_server", False))


def second_put_refused(storage: Storage, key: str, payload: bytes = b"second\n") -> bool:
    """Send a conditional write to ``key``, which exists: True when the server refuses it."""
    try:
        put_bytes(storage, key, payload, if_absent=True)
    except AlreadyExists:
        return True
    return False


def memo_path(cfg: Config) -> Path:
    repo = cfg.repository
    tag = hashlib.sha256(f"{repo.url}\0{repo.endpoint_url}".encode()).hexdigest()[:16]
    return Path(cfg.archive.spool_dir) / cfg.stanza / f"{MEMO_PREFIX}{tag}"


def memo_fresh(proved_at: float | None, now: float, ttl: float = MEMO_TTL) -> bool:
    """Pure: does a proof made at ``proved_at`` (None: none) still stand at ``now``?

    >>> memo_fresh(None, 100.0)
    False
    >>> memo_fresh(100.0, 100.0 + MEMO_TTL - 1)
    True
    >>> memo_fresh(100.0, 100.0 + MEMO_TTL + 1)
    False
    >>> memo_fresh(200.0, 100.0)  # from the future: a clock step, prove again
    False
    """
    return proved_at is not None and 0 <= now - proved_at <= ttl


def _read_memo(path: Path) -> float | None:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _write_memo(path: Path, now: float) -> None:
    from pitr.atomic import atomic_write

    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(path, f"{now:.3f}\n")
    except OSError as exc:  # only slower next time
        log.debug("cannot remember the conditional-write proof in %s: %s", path, exc)


def refusal(url: str) -> ConditionalWritesIgnored:
    return ConditionalWritesIgnored(
        f"the repository {url} accepted a second conditional write (If-None-Match: *) "
        f"to an existing key: it ignores conditional writes, so {WHAT_BREAKS}",
        hint="use a server that honours If-None-Match (AWS S3, MinIO and SeaweedFS do) and "
             "check any proxy in between; or set repository.conditional_writes = false to "
             "run without that protection")


def prove(storage: Storage, stanza: str) -> bool:
    """Write a probe key, then try to write it again conditionally; True when refused."""
    from pitr.repo import Layout

    key = Layout(stanza).probe_key("conditional-probe", uuid.uuid4().hex)
    put_bytes(storage, key, b"first\n", if_absent=True)
    try:
        return second_put_refused(storage, key)
    finally:
        with contextlib.suppress(StorageError):
            storage.delete([key])


def require_conditional_writes(cfg: Config, storage: Storage, *,
                               now: float | None = None) -> None:
    """Raise :class:`ConditionalWritesIgnored` unless the repository is proven (or the
    user said ``repository.conditional_writes = false``)."""
    if not cfg.repository.conditional_writes or not server_enforced(storage):
        return
    t = time.time() if now is None else now
    path = memo_path(cfg)
    if memo_fresh(_read_memo(path), t):
        return
    if not prove(storage, cfg.stanza):
        with contextlib.suppress(OSError):
            path.unlink()
        raise refusal(cfg.repository.url)
    _write_memo(path, t)


__all__ = ["WHAT_BREAKS", "ConditionalWritesIgnored", "memo_fresh", "prove", "refusal",
           "require_conditional_writes", "second_put_refused", "server_enforced"]
