"""Reader claims: ``<stanza>/claims/<id>.json``, one per running restore or drill.

A restore replays a backup and every WAL segment after it, for minutes or
hours; ``pitr expire`` must not delete them meanwhile. A claim names the backup
it reads and carries a lease its holder renews while it works (every
``lease / 3`` s, on a thread, as the stanza lock does). Retention keeps the
claimed backup, and with it all WAL from its start on (see :mod:`pitr.retention`),
while the claim's lease runs, and says which claim held it back.

A claim outlives its holder only by its lease: a crashed restore holds nothing
back for long. ``pitr restore`` without ``--start`` hands replay to PostgreSQL,
which pitr does not watch: that claim is left with a lease of ``--wait-timeout``
(docs/fault-table.md).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType

from pitr.errors import NotFound, PitrError
from pitr.lock import Lease
from pitr.repo import Repo
from pitr.storage.base import put_bytes, read_bytes

log = logging.getLogger("pitr.claims")

CLAIM_LEASE = 120.0  # seconds


@dataclass(frozen=True)
class Claim:
    id: str
    backup_id: str
    command: str
    host: str
    pid: int
    started: str  # ISO 8601 UTC
    renewed: str  # ISO 8601 UTC
    lease: float  # seconds after ``renewed``

    @property
    def lease_end(self) -> datetime:
        return datetime.fromisoformat(self.renewed) + timedelta(seconds=self.lease)

    def live(self, now: datetime) -> bool:
        return now <= self.lease_end

    def describe(self) -> str:
        return (f"claim {self.id} ({self.command!r}, pid {self.pid} on host {self.host}, "
                f"lease until {self.lease_end.isoformat(timespec='seconds')})")

    def encode(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def decode(cls, data: bytes) -> Claim:
        d = json.loads(data)
        return cls(str(d["id"]), str(d["backup_id"]), str(d.get("command", "")),
                   str(d.get("host", "")), int(d.get("pid", 0)), str(d["started"]),
                   str(d["renewed"]), float(d["lease"]))


def load_claims(repo: Repo) -> list[Claim]:
    """Every readable claim of the stanza, live or not.

    An unreadable claim (a torn write) is reported and holds nothing: its holder
    rewrites it within a third of its lease."""
    out = []
    for obj in repo.storage.list(repo.claims_prefix):
        try:
            out.append(Claim.decode(read_bytes(repo.storage, obj.key)))
        except NotFound:
            continue  # released while we listed
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the unreadable claim %s: %s", obj.key, exc)
    return out


class ReaderClaim:
    """``with ReaderClaim(repo, backup_id, command=...):`` — registered and renewed inside."""

    def __init__(self, repo: Repo, backup_id: str, *, command: str,
                 lease: float = CLAIM_LEASE) -> None:
        self.repo = repo
        now = datetime.now(UTC).isoformat(timespec="milliseconds")  # leases are seconds
        self.claim = Claim(f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
                           backup_id, command, socket.gethostname(), os.getpid(), now, now,
                           lease)
        self.key = f"{repo.claims_prefix}{self.claim.id}.json"
        self._lease: Lease | None = None

    def register(self) -> Claim:
        put_bytes(self.repo.storage, self.key, self.claim.encode())
        self._lease = Lease(self._renew, self.claim.lease / 3, f"the claim {self.key}")
        self._lease.start()
        log.info("registered %s on backup %s", self.claim.describe(), self.claim.backup_id)
        return self.claim

    def _renew(self, lease: float | None = None) -> bool:
        self.claim = replace(self.claim, renewed=datetime.now(UTC).isoformat(
            timespec="milliseconds"), lease=lease if lease is not None else self.claim.lease)
        put_bytes(self.repo.storage, self.key, self.claim.encode())
        return True

    def stop_renewing(self) -> None:
        if self._lease is not None:
            self._lease.stop()
            self._lease = None

    def hand_over(self, seconds: float) -> Claim:
        """Stop renewing and leave the claim for ``seconds`` more (replay pitr does not watch)."""
        self.stop_renewing()
        self._renew(lease=seconds)
        return self.claim

    def release(self) -> None:
        self.stop_renewing()
        try:
            self.repo.storage.delete([self.key])
        except PitrError as exc:  # its lease ends it soon anyway
            log.warning("could not remove the claim %s: %s", self.key, exc.message)

    def __enter__(self) -> Claim:
        return self.register()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def claim_backup(repo: Repo, backup_id: str, *, command: str, lease: float) -> ReaderClaim:
    """Register a renewed claim on ``backup_id``, then prove the backup still exists.

    Expire deletes a manifest first: if it is gone now, an expire decided before
    it saw the claim, and the backup's objects may be going."""
    from pitr.errors import PlanError

    claim = ReaderClaim(repo, backup_id, command=command, lease=lease)
    claim.register()
    try:
        repo.storage.stat(repo.manifest_key(backup_id))
    except NotFound:
        claim.release()
        raise PlanError(f"backup {backup_id} was expired while this {command} started",
                        hint="plan again: `pitr plan` shows what is restorable now") from None
    return claim
