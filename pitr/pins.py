"""Pins: ``<stanza>/pins/<id>`` objects; retention never deletes a pinned backup.

A pin is a separate object (never a manifest rewrite), so pinning and unpinning
cannot damage a completed backup.
"""

from __future__ import annotations

import getpass
import json
import socket
from datetime import UTC, datetime

from pitr.errors import NotFound
from pitr.repo import Repo
from pitr.storage.base import put_bytes


def _exists(repo: Repo, key: str) -> bool:
    try:
        repo.storage.stat(key)
        return True
    except NotFound:
        return False


def _backup_exists(repo: Repo, backup_id: str) -> bool:
    return _exists(repo, repo.manifest_key(backup_id))


def _pinned(repo: Repo, backup_id: str) -> bool:
    return _exists(repo, repo.pin_key(backup_id))


def _check_id(backup_id: str) -> None:
    if not backup_id or "/" in backup_id or backup_id in (".", ".."):
        raise NotFound(f"{backup_id!r} is not a backup id",
                       hint="`pitr list` shows the ids of completed backups")


def pin(repo: Repo, backup_id: str, *, by: str = "pitr pin") -> bool:
    """Pin a completed backup; returns False when it was pinned already."""
    _check_id(backup_id)
    if not _backup_exists(repo, backup_id):
        raise NotFound(f"no completed backup {backup_id!r} in stanza {repo.stanza!r}",
                       hint="`pitr list` shows the ids of completed backups")
    if _pinned(repo, backup_id):
        return False
    doc = {"id": backup_id, "pinned_at": datetime.now(UTC).isoformat(timespec="seconds"),
           "by": by, "user": _user(), "host": socket.gethostname()}
    put_bytes(repo.storage, repo.pin_key(backup_id), json.dumps(doc).encode())
    return True


def unpin(repo: Repo, backup_id: str) -> bool:
    """Remove a pin; returns False when the backup was not pinned.

    A pin left behind by a backup that no longer exists is removed too; an id that
    is neither a backup nor pinned is an error (most likely a typo).
    """
    _check_id(backup_id)
    if not _pinned(repo, backup_id):
        if _backup_exists(repo, backup_id):
            return False
        raise NotFound(f"no backup {backup_id!r} and no pin of that name in stanza "
                       f"{repo.stanza!r}", hint="`pitr list` shows the ids of backups")
    repo.storage.delete([repo.pin_key(backup_id)])
    return True


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "?"
