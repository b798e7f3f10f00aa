"""`pitr restore --thaw`: make the archived objects a restore reads readable, and wait.

Objects in GLACIER or DEEP_ARCHIVE cannot be read until a RestoreObject request
made a temporary copy (docs/storage-tiers.md). For each object the planner found
cold (``RestorePlan.cold``) this asks HeadObject where it stands, decides with the
pure :func:`pitr.tiers.thaw_state`, requests a restore only for a frozen object (a
running request is never repeated, so running the command again after a timeout
just waits), and polls until every object is readable or the timeout passes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pitr.errors import StorageError, ThawTimeout, UsageError
from pitr.log import event
from pitr.progress import human_age
from pitr.storage.base import Storage, TieredStorage
from pitr.tiers import ThawState, describe_wait, thaw_estimate, thaw_state

log = logging.getLogger("pitr.thaw")


@dataclass(frozen=True)
class ThawOptions:
    tier: str = "Standard"  # Expedited, Standard or Bulk (S3's retrieval tiers)
    days: int = 2  # how long S3 keeps the restored copy: through the restore and replay
    timeout: float | None = None  # seconds; None: twice the estimate's upper bound
    poll: float = 60.0  # seconds between rounds of HeadObject


@dataclass
class ThawResult:
    objects: int = 0
    requested: int = 0  # restore requests this run made
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {"objects": self.objects, "requested": self.requested,
                "seconds": round(self.seconds, 3)}


def thaw(storage: Storage, cold: tuple[tuple[str, str], ...], opts: ThawOptions, *,
         report: Callable[[str], None],
         clock: Callable[[], float] = time.monotonic,
         now: Callable[[], datetime] = lambda: datetime.now(UTC),
         sleep: Callable[[float], None] = time.sleep) -> ThawResult:
    """Request and wait until every key of ``cold`` is readable; ThawTimeout if not in time."""
    result = ThawResult(objects=len(cold))
    if not cold:
        return result
    if not isinstance(storage, TieredStorage):
        raise StorageError(f"{storage.url}: this repository has no storage classes to thaw")
    try:
        span = thaw_estimate((c for _, c in cold), opts.tier)
    except ValueError as exc:  # DEEP_ARCHIVE has no Expedited tier
        raise UsageError(f"--thaw-tier {opts.tier}: {exc}") from None
    assert span is not None
    timeout = opts.timeout if opts.timeout is not None else max(3600.0, 2 * span[1] * 3600)
    started = clock()
    pending = [k for k, _ in cold]
    report(f"thaw: {len(pending)} archived object(s), {opts.tier} retrieval, estimated "
           f"{describe_wait(span)}; the copies last {opts.days} day(s)")
    while True:
        waiting: list[str] = []
        for key in pending:
            storage_class, restore = storage.thaw_status(key)
            state = thaw_state(storage_class, restore, now())
            if state is ThawState.FROZEN:
                storage.request_thaw(key, opts.days, opts.tier)
                result.requested += 1
                waiting.append(key)
            elif state is ThawState.THAWING:
                waiting.append(key)
        pending = waiting
        elapsed = clock() - started
        done = result.objects - len(pending)
        report(f"thaw: {done}/{result.objects} readable, {len(pending)} being restored "
               f"({result.requested} request(s) made), {human_age(elapsed)} elapsed")
        event(log, logging.INFO, "thaw progress", readable=done, pending=len(pending),
              requested=result.requested, seconds=round(elapsed, 1))
        if not pending:
            result.seconds = elapsed
            return result
        if elapsed + opts.poll > timeout:
            raise ThawTimeout(
                f"{len(pending)} of {result.objects} archived object(s) are still being "
                f"restored after {human_age(elapsed)} (--thaw-timeout), e.g. {pending[0]}",
                hint="the requests keep running in S3: run the same command again later; it "
                     "waits for them without asking again")
        sleep(opts.poll)
