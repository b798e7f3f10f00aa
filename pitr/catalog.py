"""Typed view of a repository: completed backups, archived WAL, timelines.

The records here (and :class:`pitr.manifest.BackupRecord`, which the manifest
owns) are what the planner, retention, verify and monitoring read.
They are plain frozen dataclasses so the pure decision functions can be
tested on catalogs built in memory (see tests/unit) without any storage.

``load_catalog`` lists the repository once (one paged listing of the stanza)
and reads only the small objects it must: manifests and history files.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import logging
from array import array
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, overload

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
    segment_name,
    segno_of,
)
from pitr.tiers import COLD_CLASSES

if TYPE_CHECKING:
    from pitr.repo import Layout, Repo
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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def to_us(t: datetime) -> int:
    """Microseconds since the epoch: how WAL times are held in columns and the cache."""
    return (t - _EPOCH) // _US


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


class SegmentList(Sequence[WalSegment]):
    """One timeline's archived segments, by segno, held as columns of numbers.

    A year of WAL is half a million segments; as objects they cost seconds to build
    and hundreds of MB, while ``list``, ``status`` and monitoring need only ranges,
    membership and the newest one (docs/catalog-cache.md). So segments are kept as
    arrays and a :class:`WalSegment` is made only for one that is asked for.
    Segment numbers are unique and ascending.
    """

    __slots__ = ("_keys", "_layout", "_ranges", "_size", "_stanza", "classes", "mtimes",
                 "segnos", "sizes", "tli")

    def __init__(self, tli: int, segnos: Iterable[int], sizes: Iterable[int],
                 mtimes: Iterable[int], *, stanza: str = "", segment_size: int = 0,
                 classes: dict[int, str] | None = None,
                 keys: Sequence[str] | None = None) -> None:
        self.tli = tli
        self.segnos = _column(segnos)
        self.sizes = _column(sizes)
        self.mtimes = _column(mtimes)  # µs since the epoch (:func:`to_us`)
        self.classes = classes or {}  # segno -> storage class, only where one was listed
        self._stanza = stanza
        self._size = segment_size
        self._keys = keys  # explicit keys (catalogs built in memory); else from the layout
        self._layout: Layout | None = None
        self._ranges: list[WalRange] | None = None
        if not (len(self.segnos) == len(self.sizes) == len(self.mtimes)):
            raise ValueError("segment columns differ in length")

    @classmethod
    def of(cls, tli: int, segments: Iterable[WalSegment]) -> SegmentList:
        segs = sorted(segments, key=lambda s: s.segno)
        return cls(tli, (s.segno for s in segs), (s.stored_bytes for s in segs),
                   (to_us(s.archived_at) for s in segs),
                   classes={s.segno: s.storage_class for s in segs if s.storage_class},
                   keys=[s.key for s in segs])

    def __len__(self) -> int:
        return len(self.segnos)

    @overload
    def __getitem__(self, i: int) -> WalSegment: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[WalSegment, ...]: ...

    def __getitem__(self, i: int | slice) -> WalSegment | tuple[WalSegment, ...]:
        if isinstance(i, slice):
            return tuple(self._make(j) for j in range(*i.indices(len(self))))
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._make(i)

    def __iter__(self) -> Iterator[WalSegment]:
        return (self._make(j) for j in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SegmentList):
            return (self.tli, self.segnos, self.sizes, self.mtimes, self.classes) == (
                other.tli, other.segnos, other.sizes, other.mtimes, other.classes) and \
                self.keys() == other.keys()
        if isinstance(other, Sequence):
            return tuple(self) == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SegmentList(tli={self.tli}, {len(self)} segments, {self.ranges()})"

    def key(self, j: int) -> str:
        if self._keys is not None:
            return self._keys[j]
        if not self._stanza:
            return ""
        if self._layout is None:
            from pitr.repo import Layout

            self._layout = Layout(self._stanza)
        return self._layout.segment_key(segment_name(self.tli, self.segnos[j], self._size))

    def keys(self) -> list[str]:
        return [self.key(j) for j in range(len(self))]

    def _make(self, j: int) -> WalSegment:
        n = self.segnos[j]
        return WalSegment(self.tli, n, self.sizes[j], from_us(self.mtimes[j]), self.key(j),
                          self.classes.get(n, ""))

    def get(self, segno: int) -> WalSegment | None:
        """The segment numbered ``segno``, if archived."""
        j = bisect.bisect_left(self.segnos, segno)
        return self._make(j) if j < len(self) and self.segnos[j] == segno else None

    def has_all(self, first: int, last: int) -> bool:
        """Whether every segment ``first``..``last`` is archived (numbers are unique and
        ascending, so the run is whole when its two ends are ``last - first`` apart)."""
        if last < first:
            return True
        j = bisect.bisect_left(self.segnos, first)
        k = j + (last - first)
        return k < len(self) and self.segnos[j] == first and self.segnos[k] == last

    def newest(self) -> WalSegment | None:
        """The segment stored last (greatest archived_at; the first such by segno)."""
        if not self.mtimes:
            return None
        return self._make(self.mtimes.index(max(self.mtimes)))

    def ranges(self) -> list[WalRange]:
        """Contiguous runs, computed once."""
        if self._ranges is None:
            out: list[WalRange] = []
            segnos, n = self.segnos, len(self.segnos)
            a = 0
            while a < n:
                # jump to the run's end: a run of k segments ends where segnos[a+k-1]
                # equals segnos[a]+k-1 (gallop, then bisect; runs are usually long)
                step = 1
                while a + step < n and segnos[a + step] == segnos[a] + step:
                    step *= 2
                lo, hi = a + step // 2, min(a + step, n - 1)
                while lo < hi:  # last index b in [lo, hi] with segnos[b] - segnos[a] == b - a
                    mid = (lo + hi + 1) // 2
                    if segnos[mid] - segnos[a] == mid - a:
                        lo = mid
                    else:
                        hi = mid - 1
                b = lo
                out.append(WalRange(self.tli, segnos[a], segnos[b], from_us(self.mtimes[a]),
                                    from_us(max(self.mtimes[a:b + 1])),
                                    sum(self.sizes[a:b + 1])))
                a = b + 1
            self._ranges = out
        return self._ranges

    def without(self, gone: Collection[int]) -> SegmentList:
        """A copy without the segments numbered in ``gone``."""
        keep = [j for j in range(len(self)) if self.segnos[j] not in gone]
        return SegmentList(self.tli, (self.segnos[j] for j in keep),
                           (self.sizes[j] for j in keep), (self.mtimes[j] for j in keep),
                           stanza=self._stanza, segment_size=self._size,
                           classes={n: c for n, c in self.classes.items() if n not in gone},
                           keys=None if self._keys is None else [self._keys[j] for j in keep])


def _column(values: Iterable[int]) -> array[int]:
    """An int64 array: one given is taken as it is (the caller hands it over)."""
    if isinstance(values, array) and values.typecode == "q":
        return values
    return array("q", values)


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
    # by tli; any sequence of WalSegment given is held as a SegmentList (by segno)
    segments: Mapping[int, SegmentList] = field(default_factory=dict)
    timelines: dict[int, Timeline] = field(default_factory=dict)
    incomplete_backups: tuple[str, ...] = ()  # ids with objects but no manifest
    backup_history_files: tuple[str, ...] = ()  # archived *.backup names
    partial_files: tuple[str, ...] = ()
    damaged_backups: tuple[str, ...] = ()  # ids whose manifest cannot be read (never chosen)
    # backup id -> (key, storage class) of its objects in an archive class (GLACIER,
    # DEEP_ARCHIVE): a restore must thaw them first (docs/storage-tiers.md)
    cold_objects: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        segs: dict[int, SegmentList] = {}
        for t, v in sorted(self.segments.items()):
            segs[t] = v if isinstance(v, SegmentList) else SegmentList.of(t, v)
        object.__setattr__(self, "segments", segs)

    def ranges(self, tli: int | None = None) -> list[WalRange]:
        tlis = [tli] if tli is not None else sorted(self.segments)
        out: list[WalRange] = []
        for t in tlis:
            if t in self.segments:
                out.extend(self.segments[t].ranges())
        return out

    def range_holding(self, tli: int, segno: int) -> WalRange | None:
        """The unbroken run of archived WAL on ``tli`` that holds ``segno``, if any."""
        rs = self.ranges(tli)
        i = bisect.bisect_right(rs, segno, key=lambda r: r.first) - 1
        return rs[i] if i >= 0 and rs[i].last >= segno else None

    def gaps(self, tli: int | None = None) -> list[WalGap]:
        out: list[WalGap] = []
        for t in [tli] if tli is not None else sorted(self.segments):
            rs = self.ranges(t)
            out.extend(WalGap(t, a.last + 1, b.first - 1) for a, b in itertools.pairwise(rs))
        return out


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
    # Segments go straight into columns: a year of them as listing entries held until
    # the end took ~300 MB (docs/catalog-cache.md). Their numbers need the segment
    # size from repo.json, read after the listing: the name's two halves wait in
    # the columns instead.
    halves: dict[int, _RawColumns] = {}
    history_keys: dict[int, tuple[str, ObjectInfo]] = {}
    backup_files: list[str] = []
    partials: list[str] = []
    has_identity = False
    for obj in objects:
        if obj.key == identity_key:
            has_identity = True
        elif obj.key.startswith(layout.wal_prefix):
            name = layout.wal_name_of(obj.key)
            if name is None:
                continue
            kind = classify(name)
            if kind is WalKind.SEGMENT:
                tli = int(name[:8], 16)
                (halves.get(tli) or halves.setdefault(tli, _RawColumns())).add(name, obj)
            elif kind is WalKind.HISTORY:
                history_keys[int(name[:8], 16)] = (name, obj)
            elif kind is WalKind.BACKUP:
                backup_files.append(name)
            else:
                partials.append(name)
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

    segments = {tli: raw.segment_list(stanza, tli, seg_size)
                for tli, raw in sorted(halves.items())}
    texts = _read_many(read, [*manifests.values(), *(o.key for _, o in history_keys.values())])
    backups, damaged = _decode_manifests(manifests, texts, pinned)
    timelines = _timelines(segments, history_keys, texts)
    return Catalog(
        stanza=stanza,
        system_id=system_id,
        segment_size=seg_size,
        backups=tuple(sorted(backups, key=lambda b: (b.stop_time, b.id))),
        segments=segments,
        timelines=timelines,
        incomplete_backups=tuple(sorted(backup_ids - set(manifests))),
        backup_history_files=tuple(sorted(backup_files)),
        partial_files=tuple(sorted(partials)),
        damaged_backups=tuple(sorted(damaged)),
        cold_objects={i: tuple(sorted(v)) for i, v in sorted(cold.items())},
    )


class _RawColumns:
    """One timeline's listed segments before the segment size is known."""

    __slots__ = ("classes", "highs", "lows", "mtimes", "sizes")

    def __init__(self) -> None:
        self.highs, self.lows, self.sizes, self.mtimes = (array("q") for _ in range(4))
        self.classes: dict[tuple[int, int], str] = {}

    def add(self, name: str, obj: ObjectInfo) -> None:
        high, low = int(name[8:16], 16), int(name[16:24], 16)
        self.highs.append(high)
        self.lows.append(low)
        self.sizes.append(obj.size)
        self.mtimes.append(to_us(obj.mtime))
        if obj.storage_class:
            self.classes[(high, low)] = obj.storage_class

    def segment_list(self, stanza: str, tli: int, seg_size: int) -> SegmentList:
        """By segment number (listings come in key order, which is that order; any other
        is sorted); keys follow the layout, as the listing's keys do."""
        segnos = array("q", (segno_of(h, lo, seg_size, tli) for h, lo in zip(
            self.highs, self.lows, strict=True)))
        classes = {segno_of(h, lo, seg_size, tli): c for (h, lo), c in self.classes.items()}
        sizes, mtimes = self.sizes, self.mtimes
        if any(b <= a for a, b in itertools.pairwise(segnos)):
            order = sorted(range(len(segnos)), key=segnos.__getitem__)
            segnos, sizes, mtimes = (array("q", (col[j] for j in order))
                                     for col in (segnos, sizes, mtimes))
        return SegmentList(tli, segnos, sizes, mtimes, stanza=stanza, segment_size=seg_size,
                           classes=classes)


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


def _timelines(segments: Mapping[int, SegmentList],
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


def wal_present(cat: Catalog, tli: int, start_lsn: int, end_lsn: int) -> bool:
    """Whether every segment holding WAL in [start_lsn, end_lsn) is archived on ``tli``."""
    segs = cat.segments.get(tli)
    first = lsn_to_segno(start_lsn, cat.segment_size)
    last = lsn_to_segno(max(end_lsn - 1, start_lsn), cat.segment_size)
    return segs is not None and segs.has_all(first, last)


def backup_restorable(cat: Catalog, backup: BackupRecord) -> bool:
    """A backup is usable when the WAL from its start to its stop LSN is archived."""
    return wal_present(cat, backup.timeline, backup.start_lsn, backup.stop_lsn)
