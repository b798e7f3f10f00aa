"""`pitr expire`: apply a retention decision to the repository.

Order matters, so an interruption (SIGTERM, crash, repository outage) at any
point leaves a repository the planner can use and a rerun finishes the job:

1. the manifests of expired backups: from then on the planner never chooses
   them (a backup without a manifest does not exist), whatever is left of it;
2. the rest of their objects and of stale incomplete backups;
3. ``.backup`` files, WAL segments and ``.partial`` files no kept backup needs;
4. history files last (WAL that is still there may need them).

A rerun recomputes the decision on what is left; retention keeps the same
backups on any catalog between "before" and "after" (see :mod:`pitr.retention`),
so it deletes exactly the rest. Expire holds the stanza lock that ``pitr backup``
takes, so the two never run at the same time. Restores and drills hold reader
claims: a backup a live claim reads is kept with the WAL after it, and claims are
read again before each step, so one registered mid-run stops the run
(docs/fault-table.md).
"""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pitr import tiers
from pitr.catalog import Catalog, load_catalog
from pitr.claims import load_claims
from pitr.condwrites import require_conditional_writes
from pitr.config import Config
from pitr.errors import LockedError, NotFound, PitrError
from pitr.lock import LockInfo, StanzaLock, stale_reason
from pitr.log import event
from pitr.pg.names import history_name, segment_name
from pitr.repo import Repo
from pitr.retention import Policy, RetentionDecision, decide
from pitr.storage.base import ObjectInfo, TieredStorage, put_bytes, read_bytes

if TYPE_CHECKING:
    from pitr.catalog_cache import CatalogCache

log = logging.getLogger("pitr.expire")

LOCK_NAME = "backup"  # shared with `pitr backup`: one of the two at a time
BATCH = 1000  # one S3 DeleteObjects request; progress is logged per batch


@dataclass
class ExpireResult:
    decision: RetentionDecision
    segment_size: int
    dry_run: bool
    damaged: tuple[str, ...] = ()
    deleted_objects: int = 0
    bytes_freed: int = 0  # stored bytes (planned, for a dry run)
    seconds: float = 0.0
    steps: dict[str, int] = field(default_factory=dict)  # objects deleted per step
    # (backup id, object key, old pitr-tier tag or "", new tag): docs/storage-tiers.md
    retagged: list[tuple[str, str, str, str]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        doc = self.decision.to_json(self.segment_size)
        doc.update({
            "dry_run": self.dry_run,
            "damaged_backups_left_alone": list(self.damaged),
            "deleted_objects": self.deleted_objects,
            "bytes_freed": self.bytes_freed,
            "seconds": round(self.seconds, 3),
            "steps": self.steps,
            "retagged": [{"backup": b, "key": k, "from": old or None, "to": new}
                         for b, k, old, new in self.retagged],
        })
        return doc


def run_expire(cfg: Config, *, dry_run: bool = False, now: datetime | None = None) -> ExpireResult:
    """Expire backups and WAL of ``cfg.stanza`` by ``cfg.retention``.

    The entry point of `pitr expire` and of `pitr backup` with ``backup.expire_after``.
    """
    from pitr.catalog_cache import CatalogCache, cache_path

    repo = Repo.open(cfg)
    policy = Policy.from_config(cfg.retention)
    # The catalog through its cache (docs/catalog-cache.md): retention decides on backups,
    # which the cache lists afresh each time; its WAL only says which keys to delete, so
    # a cache behind the repository deletes less, never more.
    cache = CatalogCache(repo, cache_path(cfg))
    if dry_run:
        since = _running_since(repo, cfg.backup.lock_stale_after)
        return expire(repo, policy, now=now, dry_run=True, busy_since=since, cache=cache)
    require_conditional_writes(cfg, repo.storage)  # the lock rests on it
    lock = StanzaLock(repo, LOCK_NAME, command="pitr expire",
                      stale_after=cfg.backup.lock_stale_after, what="backup or expire",
                      lease=cfg.backup.lock_lease)
    with lock as held:
        return expire(repo, policy, now=now, busy_since=held.started_at, cache=cache)


def expire_after_backup(cfg: Config, backup_id: str) -> tuple[dict[str, Any], PitrError | None]:
    """`pitr backup --label scheduled` with ``backup.expire_after``: a short summary, and the
    error to raise once the (successful) backup has been reported."""
    from pitr.progress import human_bytes

    try:
        r = run_expire(cfg)
    except LockedError as exc:
        # Another backup (or expire) started right after ours: it expires after itself.
        log.warning("expiry after backup %s skipped: %s", backup_id, exc.message)
        return {"skipped": exc.message}, None
    except PitrError as exc:
        exc.message = f"backup {backup_id} completed, but expiry after it failed: {exc.message}"
        if exc.hint is None:
            exc.hint = "the next scheduled backup (or `pitr expire`) tries again"
        return {"error": exc.message, "exit_code": exc.exit_code}, exc
    d = r.decision
    return {"kept": len(d.kept), "deleted_backups": [b.id for b in d.deleted],
            "wal_segments_deleted": len(d.wal_deleted), "bytes_freed": r.bytes_freed,
            "restorable_from": d.restorable_from.isoformat() if d.restorable_from else None,
            "text": f"expired {len(d.deleted)} backup(s) and {len(d.wal_deleted)} WAL "
                    f"segment(s), freed {human_bytes(r.bytes_freed)}; {len(d.kept)} backup(s) "
                    f"kept"}, None


def expire(repo: Repo, policy: Policy, *, now: datetime | None = None, dry_run: bool = False,
           busy_since: datetime | None = None, cache: CatalogCache | None = None
           ) -> ExpireResult:
    """Decide and (unless ``dry_run``) delete. Call it holding the stanza lock.

    ``busy_since``: incomplete backups with an object stored at or after this time may
    belong to a run that is still writing (one that took over a lock it thought stale),
    so they are spared. ``cache``: the stanza's catalog cache, read instead of a full
    listing and told afterwards what was deleted.
    """
    started = time.monotonic()
    now = now or datetime.now(UTC)
    if cache is not None:
        catalog = cache.refresh()
        backup_objects = _by_backup(repo, cache.head_objects(repo.backups_prefix))
    else:
        catalog = load_catalog(repo)
        backup_objects = _by_backup(repo, repo.storage.list(repo.backups_prefix))
    in_progress = {i for i in catalog.incomplete_backups
                   if busy_since is not None
                   and any(o.mtime >= busy_since for o in backup_objects.get(i, ()))}
    decision = decide(catalog, policy, now, in_progress=in_progress, claims=load_claims(repo))
    result = ExpireResult(decision, catalog.segment_size, dry_run, catalog.damaged_backups)
    plan = _plan(repo, catalog, decision, backup_objects)
    result.bytes_freed = sum(size for step in plan.values() for _, size in step)
    if catalog.damaged_backups:
        log.warning("left alone: backups with an unreadable manifest (%s); inspect them and "
                    "delete their directories by hand if they are garbage",
                    ", ".join(catalog.damaged_backups))
    for note in decision.notes:
        log.warning("expire: %s", note)
    if not dry_run and any(plan.values()):
        # Before the first deletion and after the last: catalog caches see the marker
        # change and list everything again (docs/catalog-cache.md).
        _mark_expiry(repo, "deleting")
        for step, objs in plan.items():
            _check_new_claims(repo, decision, step)
            result.steps[step] = _delete(repo, step, [k for k, _ in objs])
            result.deleted_objects += result.steps[step]
        _mark_expiry(repo, "done")
        if cache is not None:
            # every deletion succeeded: the cache drops exactly those keys instead of
            # listing the stanza again for the marker it sees changed
            cache.forget(k for objs in plan.values() for k, _ in objs)
    result.retagged = _retag(repo, decision, backup_objects, dry_run)
    result.seconds = time.monotonic() - started
    event(log, logging.INFO, "expire " + ("planned" if dry_run else "done"),
          kept=len(decision.kept), deleted_backups=len(decision.deleted),
          wal_segments=len(decision.wal_deleted), bytes_freed=result.bytes_freed,
          seconds=round(result.seconds, 3))
    return result


def _retag(repo: Repo, d: RetentionDecision, backup_objects: dict[str, list[ObjectInfo]],
           dry_run: bool) -> list[tuple[str, str, str, str]]:
    """Keep each kept backup's ``pitr-tier`` tag current (docs/storage-tiers.md).

    Only the data objects carry it (:func:`pitr.tiers.is_backup_data`): manifest.json is
    read by every listing, so the lifecycle rule must never match it. A tag is
    written only when it differs, after one GET per object; a storage without
    classes (the local driver) has no tags."""
    storage = repo.storage
    if not isinstance(storage, TieredStorage):
        return []
    changed: list[tuple[str, str, str, str]] = []
    for kept in d.kept:
        tier = tiers.tier_of(kept.reasons)
        for obj in backup_objects.get(kept.backup.id, ()):
            if not tiers.is_backup_data(obj.key):
                continue
            tags = storage.get_tags(obj.key)
            old = tags.get(tiers.TAG_KEY, "")
            if old == tier:
                continue
            if not dry_run:
                storage.set_tags(obj.key, {**tags, tiers.TAG_KEY: tier})
            changed.append((kept.backup.id, obj.key, old, tier))
    if changed:
        event(log, logging.INFO, "expire: tiers " + ("planned" if dry_run else "tagged"),
              objects=len(changed))
    return changed


def _mark_expiry(repo: Repo, state: str) -> None:
    """The states differ in length, so even a rewrite within the same second of the
    server's clock changes the marker's listing entry."""
    from pitr.catalog_cache import expire_marker_key

    doc = {"state": state, "at": datetime.now(UTC).isoformat(), "run": uuid.uuid4().hex}
    put_bytes(repo.storage, expire_marker_key(repo.stanza), json.dumps(doc).encode())


def _check_new_claims(repo: Repo, d: RetentionDecision, step: str) -> None:
    """Stop before ``step`` when a restore claimed a backup this run deletes.

    Its claim came after the decision; the rerun decides again with it. Deleted
    manifests are harmless to a running restore (it has its plan), the objects
    and WAL after them are not."""
    now = datetime.now(UTC)
    for claim in load_claims(repo):
        if claim.live(now) and claim.backup_id in d.deleted_ids:
            raise LockedError(
                f"expire stopped before deleting {step}: {claim.describe()} now reads backup "
                f"{claim.backup_id}, which this run would delete",
                hint="run `pitr expire` again: it keeps what that restore needs")


def _plan(repo: Repo, catalog: Catalog, d: RetentionDecision,
          backup_objects: dict[str, list[ObjectInfo]]) -> dict[str, list[tuple[str, int]]]:
    """Step name -> (key, stored bytes) to delete, in the order they must go."""
    seg = catalog.segment_size
    gone = [b.id for b in d.deleted]
    manifests = [(repo.manifest_key(i), _size(backup_objects, i, repo.manifest_key(i)))
                 for i in gone]
    manifest_keys = {k for k, _ in manifests}
    rest = [(o.key, o.size) for i in [*gone, *d.incomplete_deleted]
            for o in backup_objects.get(i, ()) if o.key not in manifest_keys]
    wal = [(repo.wal_key(n), 0) for n in d.backup_files_deleted]
    wal += [(s.key or repo.wal_key(segment_name(s.timeline, s.segno, seg)), s.stored_bytes)
            for s in d.wal_deleted]
    wal += [(repo.wal_key(n), 0) for n in d.partial_deleted]
    history = [(repo.wal_key(history_name(t)), 0) for t in d.history_deleted]
    return {"manifests": manifests, "backup_objects": rest, "wal": wal, "history": history}


def _size(objects: dict[str, list[ObjectInfo]], backup_id: str, key: str) -> int:
    return next((o.size for o in objects.get(backup_id, ()) if o.key == key), 0)


def _by_backup(repo: Repo, objects: Iterable[ObjectInfo]) -> dict[str, list[ObjectInfo]]:
    out: dict[str, list[ObjectInfo]] = {}
    for obj in objects:
        backup_id = obj.key[len(repo.backups_prefix):].split("/", 1)[0]
        out.setdefault(backup_id, []).append(obj)
    return out


def _delete(repo: Repo, step: str, keys: list[str]) -> int:
    done = 0
    for i in range(0, len(keys), BATCH):
        batch = keys[i:i + BATCH]
        repo.storage.delete(batch)
        done += len(batch)
        event(log, logging.INFO, f"expire: {step}", done=done, total=len(keys))
    return done


def _running_since(repo: Repo, stale_after: float) -> datetime | None:
    """When the current holder of the stanza lock started (None when nobody holds it)."""
    try:
        holder = LockInfo.decode(read_bytes(repo.storage, repo.lock_key(LOCK_NAME)))
    except NotFound:
        return None
    except (ValueError, KeyError, TypeError):
        return None
    if stale_reason(holder, now=datetime.now(UTC), host=socket.gethostname(),
                    stale_after=stale_after) is not None:
        return None
    try:
        return holder.started_at
    except ValueError:
        return None



def render(result: ExpireResult) -> str:
    """The plan (or what was done) for a terminal: what, why, bytes."""
    from pitr.progress import human_bytes, human_duration

    d, seg = result.decision, result.segment_size
    p = d.policy
    lines = [f"retention: daily={p.daily} weekly={p.weekly} monthly={p.monthly} "
             f"min_backups={p.min_backups}; now {d.now.isoformat(timespec='seconds')}"]
    for k in d.kept:
        lines.append(f"  keep    {k.backup.id:<22} stop {_t(k.backup.stop_time)}  "
                     f"{', '.join(k.reasons)}")
    for b in d.deleted:
        lines.append(f"  delete  {b.id:<22} stop {_t(b.stop_time)}  "
                     f"{human_bytes(b.stored_bytes)} (no tier keeps it)")
    for i in d.incomplete_deleted:
        lines.append(f"  delete  {i:<22} incomplete (no manifest), not running")
    for i in d.incomplete_kept:
        lines.append(f"  keep    {i:<22} incomplete: a backup is still writing it")
    for bad in result.damaged:
        lines.append(f"  skip    {bad:<22} unreadable manifest: left alone, inspect by hand")
    for r in d.wal_deleted_ranges():
        lines.append(f"  delete  WAL {segment_name(r.timeline, r.first, seg)}.."
                     f"{segment_name(r.timeline, r.last, seg)} ({r.count} segments, "
                     f"{human_bytes(r.stored_bytes)})")
    small = len(d.backup_files_deleted) + len(d.partial_deleted)
    if small:
        lines.append(f"  delete  {small} .backup/.partial file(s) of expired WAL")
    if d.history_deleted:
        lines.append("  delete  " + ", ".join(history_name(t) for t in d.history_deleted)
                     + " (no kept backup or WAL on these timelines)")
    lines.append(f"  keep    {d.wal_kept} WAL segment(s)")
    for bid, key, old, new in result.retagged:
        lines.append(f"  tag     {bid:<22} {key.rsplit('/', 1)[-1]}: {tiers.TAG_KEY} "
                     f"{old or '(none)'} -> {new}")
    lines.extend(f"  note    {n}" for n in d.notes)
    if d.restorable_from is not None:
        lines.append(f"restorable afterwards: any time from {_t(d.restorable_from)} (oldest "
                     f"kept backup) to the newest archived WAL")
    if result.dry_run:
        lines.append(f"dry run: would free {human_bytes(result.bytes_freed)}; nothing deleted")
    elif d.nothing_to_do:
        lines.append("nothing to expire")
    else:
        lines.append(f"freed {human_bytes(result.bytes_freed)}: {result.deleted_objects} "
                     f"object(s) deleted in {human_duration(result.seconds)}")
    return "\n".join(lines)


def _t(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
