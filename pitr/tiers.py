"""PURE storage-tier decisions (docs/storage-tiers.md): no I/O, the clock passed in.

* which S3 storage class an object gets when it is uploaded (:func:`upload_class`);
* which retention tier a kept backup is in, written as the object tag ``pitr-tier``
  on its data objects (:func:`tier_of`), kept current by `pitr expire`;
* the bucket lifecycle rules that follow from the retention policy
  (:func:`lifecycle_rules`), merged into a bucket's other rules (:func:`merge_rules`);
* whether an object in an archive class can be read, is being thawed or needs a
  restore request (:func:`thaw_state`), and how long a thaw takes (:func:`thaw_estimate`).

Why tags and not a copy into another class: S3 changes an object's class only by
rewriting it (a copy of every byte, multipart above 5 GiB); a lifecycle rule does it
in the provider, without traffic, and the tag says which backups the rule may move.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

TAG_KEY = "pitr-tier"
# Tier values, hottest first. "recent": kept by a rule that may need it any day (the
# newest backups, the daily tier, a running restore's claim, a parent of such a backup).
TIERS = ("recent", "weekly", "pinned", "monthly")
_RECENT_REASONS = frozenset({"newest", "latest_timeline", "min_backups", "daily", "claimed",
                             "chain"})

# Classes an object must be restored from (RestoreObject) before it can be read.
# GLACIER_IR ("instant retrieval") reads like STANDARD_IA.
COLD_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
# The order lifecycle transitions may take (S3's "waterfall"): only to a later class.
CLASS_ORDER = ("STANDARD", "INTELLIGENT_TIERING", "STANDARD_IA", "ONEZONE_IA", "GLACIER_IR",
               "GLACIER", "DEEP_ARCHIVE")
# S3 refuses a transition into these before the object is this many days old.
MIN_TRANSITION_DAYS = {"STANDARD_IA": 30, "ONEZONE_IA": 30}

WAL = "wal"
BACKUP = "backup"
OTHER = "other"  # repo.json, manifests, pins, locks, claims, verify reports


def wal_kind(name: str) -> str:
    """The kind of a WAL file name for :func:`upload_class`: segments and ``.partial``
    files are WAL; history and ``.backup`` files are read by every catalog load and
    plan, so they stay with the control objects."""
    from pitr.pg.names import WalKind, classify

    return WAL if classify(name) in (WalKind.SEGMENT, WalKind.PARTIAL) else OTHER


def is_backup_data(key: str) -> bool:
    """Whether a key under a backup's prefix is its data (the tar): what
    ``backup_storage_class`` applies to and what carries the ``pitr-tier`` tag. The
    manifest every listing reads and the backup_manifest copy the next incremental
    backup reads stay with the control objects."""
    from pitr.chains import BACKUP_MANIFEST_OBJECT
    from pitr.repo import MANIFEST_OBJECT

    return key.rsplit("/", 1)[-1] not in (BACKUP_MANIFEST_OBJECT, MANIFEST_OBJECT)


def upload_class(repository: Any, kind: str) -> str:
    """The storage class an object of ``kind`` is uploaded with ("" = bucket default).

    Manifests and the small control objects stay in ``storage_class``: every listing,
    plan and lock reads them, so they must never sit in an archive class."""
    specific = {WAL: repository.wal_storage_class,
                BACKUP: repository.backup_storage_class}.get(kind, "")
    return str(specific or repository.storage_class)


def tier_of(reasons: Iterable[str]) -> str:
    """The ``pitr-tier`` tag of a kept backup, from its retention reasons (pitr.retention).

    The hottest reason wins: a backup the daily tier keeps is "recent" even when it is
    also its month's first; only a backup that nothing but the monthly tier keeps is
    "monthly", the one tag the lifecycle rule moves to ``monthly_storage_class``. A
    pinned backup stays out of the archive class (pinned: someone means to read it)."""
    rs = set(reasons)
    if rs & _RECENT_REASONS:
        return "recent"
    if "weekly" in rs:
        return "weekly"
    if "pinned" in rs:
        return "pinned"
    if "monthly" in rs:
        return "monthly"
    return "recent"  # kept for a reason this module does not know: never freeze it


# -- lifecycle ----------------------------------------------------------------------------

@dataclass(frozen=True)
class LifecyclePlan:
    """The rules pitr owns for one stanza (S3's JSON shape) and why any are absent."""

    id_prefix: str
    rules: tuple[dict[str, Any], ...]
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"id_prefix": self.id_prefix, "rules": [dict(r) for r in self.rules],
                "notes": list(self.notes)}


def rule_id_prefix(key_prefix: str) -> str:
    """IDs of pitr's rules for the stanza under ``key_prefix`` (bucket key, ends in '/')."""
    return f"pitr:{key_prefix}:"


def lifecycle_rules(key_prefix: str, repository: Any, policy: Any) -> LifecyclePlan:
    """The lifecycle rules the retention policy implies, and nothing more.

    ``key_prefix``: the stanza's key prefix in the bucket ("<url prefix><stanza>/").

    * Always: abort multipart uploads unfinished after ``abort_multipart_days`` (an
      interrupted backup leaves parts that are billed but invisible to listings).
    * With ``retention.monthly`` > 0 and a ``monthly_storage_class`` colder than the one
      backups are uploaded in: backup objects tagged ``pitr-tier=monthly`` move there.
      The tag is set by `pitr expire` only once nothing but the monthly tier keeps the
      backup, so the rule waits no days beyond the class's own minimum.
    * Never an expiration: `pitr expire` alone deletes (pins, claims and the WAL a
      backup needs are things a lifecycle rule cannot see).
    """
    ids = rule_id_prefix(key_prefix)
    rules: list[dict[str, Any]] = [{
        "ID": f"{ids}abort-multipart", "Filter": {"Prefix": key_prefix}, "Status": "Enabled",
        "AbortIncompleteMultipartUpload": {
            "DaysAfterInitiation": int(repository.abort_multipart_days)}}]
    notes: list[str] = []
    target = repository.monthly_storage_class
    uploaded = upload_class(repository, BACKUP) or "STANDARD"
    if not target:
        notes.append("no repository.monthly_storage_class: backups keep the class they were "
                     "uploaded in")
    elif policy.monthly <= 0:
        notes.append("retention.monthly = 0: no backup is ever kept by the monthly tier "
                     "alone, so no transition")
    elif CLASS_ORDER.index(target) <= CLASS_ORDER.index(uploaded):
        notes.append(f"repository.monthly_storage_class {target} is not colder than {uploaded}, "
                     "the class backups are uploaded in: no transition")
    else:
        rules.append({
            "ID": f"{ids}monthly", "Status": "Enabled",
            "Filter": {"And": {"Prefix": f"{key_prefix}backups/",
                               "Tags": [{"Key": TAG_KEY, "Value": "monthly"}]}},
            "Transitions": [{"Days": MIN_TRANSITION_DAYS.get(target, 0),
                             "StorageClass": target}]})
    return LifecyclePlan(ids, tuple(rules), tuple(notes))


def merge_rules(existing: Sequence[Mapping[str, Any]], plan: LifecyclePlan
                ) -> list[dict[str, Any]]:
    """The bucket's rules with pitr's rules for this stanza replaced by ``plan``'s.

    PutBucketLifecycleConfiguration replaces the whole configuration, so rules of
    other stanzas, other tools and people are carried over unchanged."""
    kept = [dict(r) for r in existing if not str(r.get("ID", "")).startswith(plan.id_prefix)]
    return kept + [dict(r) for r in plan.rules]


# -- thawing objects in an archive class ------------------------------------------------

class ThawState(enum.Enum):
    READABLE = "readable"  # not in an archive class, or a restored copy is available
    THAWING = "thawing"  # a restore request is running
    FROZEN = "frozen"  # needs a restore request (none made, or its copy expired)


def thaw_state(storage_class: str, restore: str | None, now: datetime) -> ThawState:
    """From HeadObject's StorageClass and ``x-amz-restore`` header (``restore``).

    The header is ``ongoing-request="true"`` while a request runs, then
    ``ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"`` while the
    restored copy lasts; a copy past its expiry date is gone again."""
    if storage_class not in COLD_CLASSES:
        return ThawState.READABLE
    if not restore:
        return ThawState.FROZEN
    fields = _restore_fields(restore)
    if fields.get("ongoing-request", "").lower() == "true":
        return ThawState.THAWING
    expiry = fields.get("expiry-date")
    if fields.get("ongoing-request", "").lower() != "false" or not expiry:
        return ThawState.FROZEN  # not a header we understand: ask again rather than guess
    from email.utils import parsedate_to_datetime  # not at import: archive-push imports us

    try:
        until = parsedate_to_datetime(expiry)
    except (TypeError, ValueError):
        return ThawState.FROZEN
    return ThawState.READABLE if until > now else ThawState.FROZEN


def _restore_fields(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    rest = header
    while rest:
        name, sep, rest = rest.partition("=")
        if not sep:
            break
        rest = rest.lstrip()
        if rest.startswith('"'):
            value, _, rest = rest[1:].partition('"')
        else:
            value, _, rest = rest.partition(",")
        out[name.strip(" ,").lower()] = value
        rest = rest.lstrip(" ,")
    return out


# Published retrieval times (AWS S3 user guide, "Archive retrieval options"), hours.
THAW_HOURS: dict[tuple[str, str], tuple[float, float]] = {
    ("GLACIER", "Expedited"): (1 / 60, 5 / 60),
    ("GLACIER", "Standard"): (3, 5),
    ("GLACIER", "Bulk"): (5, 12),
    ("DEEP_ARCHIVE", "Standard"): (0, 12),  # "within 12 hours"
    ("DEEP_ARCHIVE", "Bulk"): (0, 48),
}
THAW_TIERS = ("Expedited", "Standard", "Bulk")


def thaw_estimate(classes: Iterable[str], tier: str) -> tuple[float, float] | None:
    """(least, most) hours until every object of ``classes`` is readable with ``tier``
    (requests run in parallel: the slowest class decides); None when nothing is cold.
    Raises ValueError for a tier the class does not offer (DEEP_ARCHIVE has no Expedited)."""
    cold = sorted(set(classes) & COLD_CLASSES)
    if not cold:
        return None
    spans = []
    for c in cold:
        if (c, tier) not in THAW_HOURS:
            raise ValueError(f"{c} objects cannot be restored with the {tier} tier")
        spans.append(THAW_HOURS[(c, tier)])
    return max(lo for lo, _ in spans), max(hi for _, hi in spans)


def describe_wait(span: tuple[float, float]) -> str:
    lo, hi = span

    def h(x: float) -> str:
        return f"{round(x * 60)} min" if x < 1 else f"{x:g} h"

    return f"up to {h(hi)}" if lo <= 0 else f"{h(lo)} to {h(hi)}"
