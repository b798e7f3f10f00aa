"""Typed view of a repository: completed backups, archived WAL, timelines.

The records here (and :class:`pitr.manifest.BackupRecord`, which the manifest
owns) are what the planner, retention, verify and monitoring read.
They are plain frozen dataclasses so the pure decision functions can be
tested on catalogs built in memory (see tests/unit) without any storage.

``load_catalog`` lists the repository once (one paged listing of the stanza)
and reads only the small objects it must: manifests and history files.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from pitr.errors import IntegrityError, KeyNotConfigured, PitrError, TransientStorageError
from pitr.manifest import BackupRecord
from pitr.manifest import decode as decode_manifest
from pitr.pg.names import (
    DEFAULT_SEGMENT_SIZE,
    HistoryEntry,
    WalKind,
    classify,
    lsn_to_segno,
    parse_history,
    parse_segment_name,
)
from pitr.tiers import COLD_CLASSES

if TYPE_CHECKING:
    from pitr.repo import Repo
    from pitr.storage.base import ObjectInfo

log = logging.getLogger("pitr.catalog")

@dataclass(frozen=True, slots=True)
class WalSegment:
    timeline: int
    segno: int
    stored_bytes: int
    archived_at: datetime  # when the object was stored: an upper bound of its commit times
    key: str = ""
    storage_class: str = ""  # as listed; "" when unknown (docs/storage-tiers.md)


@dataclass(frozen=True, slots=True)
class WalRange:
    """Contiguous archived segments of one timeline: ``first``..``last`` inclusive."""

    timeline: int
    first: int
    last: int
    first_archived_at: datetime
    last_archived_at: datetime
    stored_bytes: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class WalGap:
    """Segments ``first``..``last`` of ``timeline`` are missing between two ranges."""

    timeline: int
    first: int
    last: int


@dataclass(frozen=True)
class Timeline:
    tli: int
    history: tuple[HistoryEntry, ...] = ()  # from NNNNNNNN.history (empty for timeline 1)
    # When the timeline came into being: the history file's write time as recorded by
    # archive-push, else the .history object's stored time (a later bound); None:
    # unknown, and the planner then uses its earliest archived segment.
    created_at: datetime | None = None

    @property
    def parent(self) -> int | None:
        return self.history[-1].parent if self.history else None

    @property
    def branch_lsn(self) -> int | None:
        """LSN at which this timeline branched off its parent."""
        return self.history[-1].switch_lsn if self.history else None


@dataclass(frozen=True)
class Catalog:
    stanza: str
    system_id: str | None
    segment_size: int = DEFAULT_SEGMENT_SIZE
    backups: tuple[BackupRecord, ...] = ()  # completed only, sorted by stop_time
    segments: dict[int, tuple[WalSegment, ...]] = field(default_factory=dict)  # by tli, by segno
    timelines: dict[int, Timeline] = field(default_factory=dict)
    incomplete_backups: tuple[str, ...] = ()  # ids with objects but no manifest
    backup_history_files: tuple[str, ...] = ()  # archived *.backup names
    partial_files: tuple[str, ...] = ()
    damaged_backups: tuple[str, ...] = ()  # ids whose manifest cannot be read (never chosen)
    # backup id -> (key, storage class) of its objects in an archive class (GLACIER,
    # DEEP_ARCHIVE): a restore must thaw them first (docs/storage-tiers.md)
    cold_objects: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    def ranges(self, tli: int | None = None) -> list[WalRange]:
        tlis = [tli] if tli is not None else sorted(self.segments)
        out: list[WalRange] = []
        for t in tlis:
            out.extend(contiguous_ranges(self.segments.get(t, ())))
        return out

    def range_holding(self, tli: int, segno: int) -> WalRange | None:
        """The unbroken run of archived WAL on ``tli`` that holds ``segno``, if any."""
        return next((r for r in self.ranges(tli) if r.first <= segno <= r.last), None)

    def gaps(self, tli: int | None = None) -> list[WalGap]:
        out: list[WalGap] = []
        for t in [tli] if tli is not None else sorted(self.segments):
            rs = self.ranges(t)
            out.extend(WalGap(t, a.last + 1, b.first - 1) for a, b in itertools.pairwise(rs))
        return out


def contiguous_ranges(segments: tuple[WalSegment, ...] | list[WalSegment]) -> list[WalRange]:
    """Group one timeline's segments (sorted by segno) into contiguous ranges."""
    out: list[WalRange] = []
    run: list[WalSegment] = []
    for seg in segments:
        if run and seg.segno != run[-1].segno + 1:
            out.append(_range_of(run))
            run = []
        run.append(seg)
    if run:
        out.append(_range_of(run))
    return out


def _range_of(run: list[WalSegment]) -> WalRange:
    return WalRange(run[0].timeline, run[0].segno, run[-1].segno, run[0].archived_at,
                    max(s.archived_at for s in run), sum(s.stored_bytes for s in run))


# -- loading ------------------------------------------------------------------------

_READ_WORKERS = 8


def load_catalog(repo: Repo) -> Catalog:
    """The stanza as typed records: ONE paged listing, then only manifests and history files.

    WAL segments are never opened (their listing entry has all we need), so the
    cost grows with the number of backups and timelines, not with archived WAL.
    """

    def read(key: str) -> bytes:
        with repo.storage.open(key) as fh:
            return fh.read()

    return build_catalog(repo.stanza, repo.storage.list(repo.root), read)


def identity_fields(data: bytes, key: str) -> tuple[str, int]:
    """System id and segment size from ``repo.json``'s bytes (the one reader of them for
    catalogs, cached or not); :class:`IntegrityError` when the file is damaged."""
    try:
        ident = json.loads(data)
        return str(ident["system_id"]), int(ident.get("segment_size") or DEFAULT_SEGMENT_SIZE)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{key}: damaged repository identity ({exc})") from exc


def build_catalog(stanza: str, objects: Iterable[ObjectInfo],
                  read: Callable[[str], bytes]) -> Catalog:
    """Build a :class:`Catalog` from a listing; ``read`` fetches one small object.

    Separate from :func:`load_catalog` so tests can feed an in-memory listing.
    """
    from pitr.repo import Layout

    layout = Layout(stanza)
    identity_key = layout.identity_key
    manifests: dict[str, str] = {}  # backup id -> manifest key
    backup_ids: set[str] = set()
    pinned: set[str] = set()
    cold: dict[str, list[tuple[str, str]]] = {}
    wal: list[tuple[str, ObjectInfo]] = []
    has_identity = False
    for obj in objects:
        if obj.key == identity_key:
            has_identity = True
        elif obj.key.startswith(layout.wal_prefix):
            name = layout.wal_name_of(obj.key)
            if name is not None:
                wal.append((name, obj))
        elif obj.key.startswith(layout.backups_prefix):
            owner = layout.backup_id_of(obj.key)
            if owner is not None:
                backup_ids.add(owner[0])
                if owner[1]:
                    manifests[owner[0]] = obj.key
                if obj.storage_class in COLD_CLASSES:
                    cold.setdefault(owner[0], []).append((obj.key, obj.storage_class))
        elif obj.key.startswith(layout.pins_prefix):
            pinned.add(obj.key[len(layout.pins_prefix):])

    system_id: str | None = None
    seg_size = DEFAULT_SEGMENT_SIZE
    if has_identity:
        system_id, seg_size = identity_fields(read(identity_key), identity_key)

    segments: dict[int, list[WalSegment]] = {}
    history_keys: dict[int, tuple[str, ObjectInfo]] = {}
    backup_files: list[str] = []
    partials: list[str] = []
    for name, obj in wal:
        kind = classify(name)
        if kind is WalKind.SEGMENT:
            tli, segno = parse_segment_name(name, seg_size)
            segments.setdefault(tli, []).append(
                WalSegment(tli, segno, obj.size, obj.mtime, obj.key, obj.storage_class))
        elif kind is WalKind.HISTORY:
            history_keys[int(name[:8], 16)] = (name, obj)
        elif kind is WalKind.BACKUP:
            backup_files.append(name)
        else:
            partials.append(name)

    texts = _read_many(read, [*manifests.values(), *(o.key for _, o in history_keys.values())])
    backups, damaged = _decode_manifests(manifests, texts, pinned)
    timelines = _timelines(segments, history_keys, texts)
    return Catalog(
        stanza=stanza,
        system_id=system_id,
        segment_size=seg_size,
        backups=tuple(sorted(backups, key=lambda b: (b.stop_time, b.id))),
        segments={t: tuple(sorted(v, key=lambda s: s.segno)) for t, v in sorted(segments.items())},
        timelines=timelines,
        incomplete_backups=tuple(sorted(backup_ids - set(manifests))),
        backup_history_files=tuple(sorted(backup_files)),
        partial_files=tuple(sorted(partials)),
        damaged_backups=tuple(sorted(damaged)),
        cold_objects={i: tuple(sorted(v)) for i, v in sorted(cold.items())},
    )


def _read_many(read: Callable[[str], bytes], keys: list[str]) -> dict[str, bytes | Exception]:
    """Fetch small objects, in parallel when there are many (S3 latency, not bandwidth)."""

    def one(key: str) -> bytes | Exception:
        try:
            return read(key)
        except PitrError as exc:  # reported per object by the callers
            return exc

    if len(keys) <= 2:
        return {k: one(k) for k in keys}
    with ThreadPoolExecutor(max_workers=min(_READ_WORKERS, len(keys))) as pool:
        return dict(zip(keys, pool.map(one, keys), strict=True))


def _decode_manifests(manifests: dict[str, str], texts: dict[str, bytes | Exception],
                      pinned: set[str]) -> tuple[list[BackupRecord], list[str]]:
    backups: list[BackupRecord] = []
    damaged: list[str] = []
    for backup_id, key in manifests.items():
        data = texts[key]
        if isinstance(data, TransientStorageError | KeyNotConfigured):
            # The repository did not answer: the backup's state is unknown, not "damaged".
            # Reading it as damaged would silently plan from an older backup, or report
            # "no completed backup" when there is one (docs/fault-table.md). A backup
            # sealed with a key this host lacks is the same: plan names the key
            # (docs/encryption.md).
            raise data
        try:
            if isinstance(data, Exception):
                raise data
            rec = decode_manifest(data, key)
        except PitrError as exc:
            log.warning("backup %s is unusable: %s", backup_id, exc.message)
            damaged.append(backup_id)
            continue
        backups.append(dataclasses.replace(rec, pinned=backup_id in pinned))
    return backups, damaged


def _timelines(segments: dict[int, list[WalSegment]],
               history_keys: dict[int, tuple[str, ObjectInfo]],
               texts: dict[str, bytes | Exception]) -> dict[int, Timeline]:
    from pitr.codec import decompress_blob

    out: dict[int, Timeline] = {}
    for tli in sorted(set(segments) | set(history_keys)):
        history: tuple[HistoryEntry, ...] = ()
        created = None
        if tli in history_keys:
            name, obj = history_keys[tli]
            created = obj.mtime
            data = texts[obj.key]
            if isinstance(data, TransientStorageError | KeyNotConfigured):
                raise data  # a missing key is not a missing history (see above)
            try:
                if isinstance(data, Exception):
                    raise data
                history = tuple(parse_history(decompress_blob(data, name).decode()))
                created = _history_written_at(data, name) or created
            except (PitrError, ValueError) as exc:
                log.warning("timeline history %s is unreadable: %s", name, exc)
        out[tli] = Timeline(tli, history, created)
    return out


def _history_written_at(blob: bytes, name: str) -> datetime | None:
    """The promotion time archive-push recorded (objects before it lack one)."""
    from pitr.codec import decode_header

    raw = decode_header(blob[:65536], name)[0].extra.get("written_at")
    if not isinstance(raw, str):
        return None
    when = datetime.fromisoformat(raw)
    return when if when.tzinfo is not None else None


def segno_sets(cat: Catalog) -> dict[int, frozenset[int]]:
    """Archived segment numbers per timeline, for many :func:`wal_present` calls."""
    return {t: frozenset(s.segno for s in segs) for t, segs in cat.segments.items()}


def wal_present(cat: Catalog, tli: int, start_lsn: int, end_lsn: int,
                have: dict[int, frozenset[int]] | None = None) -> bool:
    """Whether every segment holding WAL in [start_lsn, end_lsn) is archived on ``tli``."""
    segnos = (have or segno_sets(cat)).get(tli, frozenset())
    first = lsn_to_segno(start_lsn, cat.segment_size)
    last = lsn_to_segno(max(end_lsn - 1, start_lsn), cat.segment_size)
    return all(n in segnos for n in range(first, last + 1))


def backup_restorable(cat: Catalog, backup: BackupRecord,
                      have: dict[int, frozenset[int]] | None = None) -> bool:
    """A backup is usable when the WAL from its start to its stop LSN is archived."""
    return wal_present(cat, backup.timeline, backup.start_lsn, backup.stop_lsn, have)
