"""A local cache of a stanza's listing, so `list`, `status` and monitoring pay for what is new.

A full listing of a year of WAL is about 525 LIST requests; an idle refresh from
this cache costs two (see docs/catalog-cache.md for the whole story):

1. the stanza's keys before ``<stanza>/wal`` (``repo.json``, backups, pins, the
   expire marker, verify reports): one page;
2. ``<stanza>/wal/`` after the newest WAL key the cache knows (S3 StartAfter),
   which also shows a new timeline (timeline numbers only grow).

Older timelines are listed after their own last key at least every
:data:`SWEEP_EVERY` seconds, and the whole stanza is listed again every
:data:`REBUILD_EVERY` seconds. A changed ``repo.json``, a backups/ key gone or
changed, or a changed expire marker (``pitr expire`` rewrites it before and after
deleting) means objects may have been deleted: the cache is rebuilt from a full
listing. So is a missing, unreadable or foreign cache file: it is never trusted
blindly. The catalog built from the cache is the one a full listing builds
(tests/unit/test_catalog_cache.py). archive-get never reads it: a cache can miss
what was just stored, so it must not answer "absent".

Small objects the catalog reads (manifests, history files, ``repo.json``, verify
reports) are kept in the file too, keyed by key, size and time, and read again
only when their listing entry changes.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import hashlib
import json
import logging
import os
import sys
import time
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pitr.catalog import (
    Catalog,
    SegmentList,
    Timeline,
    build_catalog,
    from_us,
    identity_fields,
    to_us,
)
from pitr.errors import IntegrityError
from pitr.pg.names import WalKind, classify, parse_segment_name, segment_name
from pitr.storage.base import ObjectInfo, read_bytes

if TYPE_CHECKING:
    from pitr.config import Config
    from pitr.repo import Repo

log = logging.getLogger("pitr.catalog_cache")

CACHE_FORMAT = 3  # 2: rows may carry a storage class; 3: segments as columns
CACHE_PREFIX = "catalog-"
SWEEP_EVERY = 3600.0  # older timelines are listed after their last key at least this often
REBUILD_EVERY = 86400.0  # and the whole stanza at least this often (deletions by hand)
SETTLE = 900.0  # a gap among segments stored this recently is listed again (see _resume_after)
EXPIRE_MARKER = "expire.json"  # <stanza>/expire.json: rewritten by `pitr expire`


def expire_marker_key(stanza: str) -> str:
    return f"{stanza}/{EXPIRE_MARKER}"


def cache_path(cfg: Config) -> Path:
    """``<spool>/<stanza>/catalog-<hash>.json``: one file per repository and stanza."""
    repo = cfg.repository
    tag = hashlib.sha256(f"{repo.url}\0{repo.endpoint_url}".encode()).hexdigest()[:16]
    return Path(cfg.archive.spool_dir) / cfg.stanza / f"{CACHE_PREFIX}{tag}.json"


# [key or name, size, mtime in µs since the epoch] and, for an object outside the default
# storage class, the class as listed (docs/storage-tiers.md). A lifecycle transition does
# not change an object's mtime, so WAL rows keep the class of their first listing; the
# planner never reads this cache (it lists what it needs).
Row = list[Any]


class Columns:
    """One timeline's segments in the cache: numbers, sizes and times as arrays, by segno.

    A year of WAL as JSON rows took seconds to parse and hundreds of MB; as columns
    it is three arrays, stored compressed (docs/catalog-cache.md).
    """

    __slots__ = ("classes", "mtimes", "segnos", "sizes")

    def __init__(self) -> None:
        self.segnos = array("q")
        self.sizes = array("q")
        self.mtimes = array("q")  # µs since the epoch
        self.classes: dict[int, str] = {}  # segno -> storage class where one was listed

    def __len__(self) -> int:
        return len(self.segnos)

    def add(self, segno: int, size: int, us: int, cls: str) -> None:
        """Append, or insert one that landed late; one already known is left as it is."""
        at = len(self.segnos)
        if at and self.segnos[-1] >= segno:
            at = bisect.bisect_left(self.segnos, segno)
            if self.segnos[at] == segno:
                return
        self.segnos.insert(at, segno)
        self.sizes.insert(at, size)
        self.mtimes.insert(at, us)
        if cls:
            self.classes[segno] = cls

    def remove(self, gone: set[int]) -> None:
        keep = [j for j, n in enumerate(self.segnos) if n not in gone]
        self.segnos, self.sizes, self.mtimes = (
            array("q", (col[j] for j in keep)) for col in (self.segnos, self.sizes, self.mtimes))
        self.classes = {n: c for n, c in self.classes.items() if n not in gone}

    def to_json(self) -> dict[str, Any]:
        return {"n": len(self), "segnos": _pack(self.segnos), "sizes": _pack(self.sizes),
                "mtimes": _pack(self.mtimes),
                "classes": {str(n): c for n, c in self.classes.items()}}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Columns:
        out = cls()
        out.segnos, out.sizes, out.mtimes = (_unpack(doc[k]) for k in ("segnos", "sizes",
                                                                        "mtimes"))
        out.classes = {int(n): str(c) for n, c in doc["classes"].items()}
        n = int(doc["n"])
        if not (len(out.segnos) == len(out.sizes) == len(out.mtimes) == n):
            raise ValueError("segment columns differ in length")
        return out

    def segment_list(self, stanza: str, tli: int, seg_size: int) -> SegmentList:
        """A copy as the catalog holds it (later refreshes go on changing this one)."""
        return SegmentList(tli, self.segnos[:], self.sizes[:], self.mtimes[:], stanza=stanza,
                           segment_size=seg_size, classes=dict(self.classes))


def _pack(a: array[int]) -> str:
    # little-endian on disk whatever the machine (arrays are native)
    if sys.byteorder != "little":  # pragma: no cover - every supported platform is
        a = a[:]
        a.byteswap()
    return base64.b64encode(zlib.compress(a.tobytes(), 1)).decode()


def _unpack(text: str) -> array[int]:
    a = array("q")
    a.frombytes(zlib.decompress(base64.b64decode(text)))
    if sys.byteorder != "little":  # pragma: no cover
        a.byteswap()
    return a


@dataclass
class CacheState:
    """The cache file's content (JSON, ``format`` :data:`CACHE_FORMAT`)."""

    url: str
    stanza: str
    built_at: float  # epoch seconds of the last full listing
    swept_at: float  # ... of the last listing of every timeline after its last key
    head: list[Row] = field(default_factory=list)  # [key, size, µs] before <stanza>/wal
    # timeline (8 hex digits) -> its segments (stored as Columns.to_json)
    segments: dict[str, Columns] = field(default_factory=dict)
    wal_other: list[Row] = field(default_factory=list)  # history/.backup/.partial [key, ..]
    last_key: dict[str, str] = field(default_factory=dict)  # timeline -> greatest key
    # timeline -> epoch seconds it was last listed (after its resume point); a file
    # without it (older writer) counts as listed now, as before
    listed_at: dict[str, float] = field(default_factory=dict)
    blobs: dict[str, Row] = field(default_factory=dict)  # key -> [size, µs, base64]
    format: int = CACHE_FORMAT

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> CacheState:
        if doc.get("format") != CACHE_FORMAT:
            raise ValueError(f"cache format {doc.get('format')!r}, expected {CACHE_FORMAT}")
        state = cls(**doc)
        for name in ("head", "wal_other", "segments", "last_key", "blobs", "listed_at"):
            if not isinstance(getattr(state, name), list | dict):
                raise ValueError(f"{name}: wrong type")
        raw: dict[str, Any] = doc["segments"]
        state.segments = {str(t): Columns.from_json(c) for t, c in raw.items()}
        return state

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every row, seconds for a year of
        # segments (docs/benchmarks.md, "Scale: a year of WAL"); json.dumps only reads.
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        doc["segments"] = {t: c.to_json() for t, c in self.segments.items()}
        return doc


def read_state(path: Path, url: str, stanza: str) -> CacheState | None:
    """The cache at ``path``, or None when it is missing, damaged or someone else's.

    The file is the sha256 of the JSON body, a newline, then the body: a torn or
    damaged file fails the check instead of passing for a smaller repository.
    """
    try:
        digest, _, body = path.read_bytes().partition(b"\n")
        if hashlib.sha256(body).hexdigest().encode() != digest:
            raise ValueError("checksum mismatch")
        state = CacheState.from_json(json.loads(body))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError, zlib.error) as exc:
        log.warning("catalog cache %s is unreadable (%s): rebuilding it", path, exc)
        return None
    if state.url != url or state.stanza != stanza:
        log.warning("catalog cache %s belongs to %s stanza %s: rebuilding it", path,
                    state.url, state.stanza)
        return None
    return state


def write_state(path: Path, state: CacheState) -> None:
    """Atomically (temp file + rename); a cache that cannot be written is only slower."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = json.dumps(state.to_json(), separators=(",", ":")).encode()
        tmp.write_bytes(hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        log.debug("catalog cache %s not written: %s", path, exc)


class CatalogCache:
    """Keeps one stanza's catalog in ``path``; :meth:`refresh` brings it up to date."""

    def __init__(self, repo: Repo, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.repo = repo
        self.path = path
        self.clock = clock
        self.state: CacheState | None = None
        self.rebuilt = False  # whether the last refresh listed everything
        self._index: dict[str, Row] | None = None  # key -> row of head and wal_other
        self._seg_size = 0

    # -- listing ----------------------------------------------------------------

    def refresh(self) -> Catalog:
        """The stanza's catalog: from the cache plus what is new, or rebuilt."""
        repo, now = self.repo, self.clock()
        state = self.state or read_state(self.path, repo.storage.url, repo.stanza)
        self.rebuilt = state is None or now - state.built_at >= REBUILD_EVERY
        head = [_row(o) for o in repo.storage.list(f"{repo.stanza}/",
                                                   end_before=f"{repo.stanza}/wal")]
        if state is not None and not self.rebuilt and _deleted_since(state, head, repo.stanza):
            self.rebuilt = True
        if state is None or self.rebuilt:
            # Blobs stay: each is checked against its listing entry before use.
            blobs = state.blobs if state is not None else {}
            state = CacheState(repo.storage.url, repo.stanza, now, now, blobs=blobs)
        dirty = self.rebuilt or state.head != head
        state.head = head
        self.state = state
        self._index = None
        known = (len(state.wal_other), sum(len(v) for v in state.segments.values()),
                 len(state.blobs))
        seg_size = self._seg_size = self._segment_size()
        if self.rebuilt:
            self._append_wal(state, repo.storage.list(repo.wal_prefix), seg_size)
        else:
            top = max(state.last_key, default=None)
            self._append_wal(state, repo.storage.list(
                repo.wal_prefix, start_after=self._resume_after(state, top, now)), seg_size)
            if top is not None:
                state.listed_at[top] = now
            if now - state.swept_at >= SWEEP_EVERY:
                # Every timeline below the newest, also those without WAL so far (the
                # parent of a promotion can still archive its last segments).
                for tli in (f"{t:08X}" for t in range(1, int(top or "1", 16))):
                    self._append_wal(state, repo.storage.list(
                        f"{repo.wal_prefix}{tli}",
                        start_after=self._resume_after(state, tli, now)), seg_size)
                    state.listed_at[tli] = now
                state.swept_at = now
        self._index = None
        catalog = self._catalog(state)
        if dirty or now == state.swept_at or known != (
                len(state.wal_other), sum(len(v) for v in state.segments.values()),
                len(state.blobs)):
            write_state(self.path, state)  # an idle refresh writes nothing
        return catalog

    def _resume_after(self, state: CacheState, tli: str | None, now: float) -> str | None:
        """Where listing ``tli`` resumes: after its last key, or before the first gap
        among its segments stored within :data:`SETTLE` seconds before ``tli`` was last
        listed. The agent stores segments in parallel, so a later one can be listed
        before an earlier one lands; resuming after the later one would hide the earlier
        one for good. A gap is taken as real only once a listing made SETTLE after the
        segment behind it was stored has not shown it (counting from the previous
        listing, not from now: refreshes an hour apart still look again)."""
        if tli is None or tli not in state.last_key:
            return None
        cols = state.segments.get(tli)
        if not cols:
            # only its history file so far: resume just below the timeline's own keys
            # (after every segment directory of the timeline before it), never at the
            # history key, which no server can take as a marker (server_start_after)
            return f"{self.repo.wal_prefix}{int(tli, 16) - 1:08X}G/" if tli > "00000001" \
                else None
        since = min(state.listed_at.get(tli, now), now)
        recent = to_us(datetime.fromtimestamp(since, UTC)) - int(SETTLE * 1e6)
        segnos, mtimes = cols.segnos, cols.mtimes
        i = len(segnos) - 1
        while i > 0 and mtimes[i] >= recent:
            i -= 1
        for j in range(max(i, 0), len(segnos) - 1):
            if segnos[j + 1] != segnos[j] + 1:
                return self.repo.wal_key(segment_name(int(tli, 16), segnos[j],
                                                      self._seg_size))
        return state.last_key[tli]

    def _append_wal(self, state: CacheState, listed: Iterable[ObjectInfo],
                    seg_size: int) -> None:
        """Add WAL objects listed in key order; those known already are skipped."""
        from pitr.repo import Repo

        others = {r[0] for r in state.wal_other}
        for obj in listed:
            name = Repo.wal_name_of(obj.key)
            if name is None:
                continue
            tli = name[:8]
            tail = obj.key > state.last_key.get(tli, "")
            if tail:
                state.last_key[tli] = obj.key
            if classify(name) is WalKind.SEGMENT:
                _tli, segno = parse_segment_name(name, seg_size)
                # appended in key order; one re-listed after a gap is inserted
                state.segments.setdefault(tli, Columns()).add(
                    segno, obj.size, to_us(obj.mtime), obj.storage_class)
            elif obj.key not in others:
                state.wal_other.append(_row(obj))
                others.add(obj.key)

    def _segment_size(self) -> int:
        from pitr.pg.names import DEFAULT_SEGMENT_SIZE

        ident_key = self.repo.identity_key
        if ident_key not in self._entries():
            return DEFAULT_SEGMENT_SIZE
        try:
            return identity_fields(self.read(ident_key), ident_key)[1]
        except IntegrityError:
            return DEFAULT_SEGMENT_SIZE  # build_catalog reports the damaged identity

    def forget(self, keys: Iterable[str]) -> None:
        """Drop objects this process has just deleted, and take the stanza's head as
        listed now (one request).

        `pitr expire` calls it after its last deletion: it rewrote the expire marker, which
        would otherwise make the next refresh list the whole stanza again. Only keys whose
        deletion the repository confirmed may be passed (docs/catalog-cache.md)."""
        from pitr.repo import Repo

        assert self.state is not None
        state, repo = self.state, self.repo
        segments: dict[str, set[int]] = {}
        others: set[str] = set()
        for key in keys:
            name = Repo.wal_name_of(key)
            if name is None:
                continue  # under backups/: the head listed below no longer shows it
            if classify(name) is WalKind.SEGMENT:
                segno = parse_segment_name(name, self._seg_size)[1]
                segments.setdefault(name[:8], set()).add(segno)
            else:
                others.add(key)
        for tli, gone in segments.items():
            cols = state.segments.get(tli)
            if cols is not None:
                cols.remove(gone)
                if not cols:
                    del state.segments[tli]
        state.wal_other = [r for r in state.wal_other if r[0] not in others]
        state.head = [_row(o) for o in repo.storage.list(f"{repo.stanza}/",
                                                         end_before=f"{repo.stanza}/wal")]
        self._index = None
        write_state(self.path, state)

    # -- small objects ----------------------------------------------------------

    def read(self, key: str) -> bytes:
        """A small object's bytes: from the cache while its listing entry is unchanged."""
        assert self.state is not None
        state = self.state
        entry = self._entries().get(key)
        blob = state.blobs.get(key)
        if entry is not None and blob is not None and blob[:2] == entry[1:3]:
            return base64.b64decode(blob[2])
        data = read_bytes(self.repo.storage, key)
        if entry is not None:
            state.blobs[key] = [entry[1], entry[2], base64.b64encode(data).decode()]
        return data

    def _entries(self) -> dict[str, Row]:
        if self._index is None:
            assert self.state is not None
            self._index = {r[0]: r for r in (*self.state.head, *self.state.wal_other)}
        return self._index

    def head_objects(self, prefix: str) -> list[ObjectInfo]:
        """Objects under ``prefix`` (before ``<stanza>/wal``) as last listed."""
        assert self.state is not None
        return [o for o in _objects(self.state.head) if o.key.startswith(prefix)]

    # -- catalog ----------------------------------------------------------------

    def _catalog(self, state: CacheState) -> Catalog:
        listed = [*state.head, *state.wal_other]
        keep = self._entries()
        state.blobs = {k: v for k, v in state.blobs.items() if k in keep}
        base = build_catalog(self.repo.stanza, _objects(listed), self.read)
        segments: dict[int, SegmentList] = {}
        for tli_hex, cols in sorted(state.segments.items()):
            if not cols:
                continue
            tli = int(tli_hex, 16)
            segments[tli] = cols.segment_list(self.repo.stanza, tli, base.segment_size)
        timelines = dict(base.timelines)
        for tli in segments:
            timelines.setdefault(tli, Timeline(tli))
        return Catalog(
            stanza=base.stanza, system_id=base.system_id, segment_size=base.segment_size,
            backups=base.backups, segments=segments,
            timelines={t: timelines[t] for t in sorted(timelines)},
            incomplete_backups=base.incomplete_backups,
            backup_history_files=base.backup_history_files, partial_files=base.partial_files,
            damaged_backups=base.damaged_backups, cold_objects=base.cold_objects)


def cached_catalog(cfg: Config, repo: Repo | None = None) -> tuple[Catalog, CatalogCache]:
    """The stanza's catalog through its cache (``list``, ``status``, monitoring)."""
    if repo is None:
        from pitr.repo import Repo

        repo = Repo.open(cfg)
    cache = CatalogCache(repo, cache_path(cfg))
    return cache.refresh(), cache


def describe(cache: CatalogCache | None, now: float | None = None) -> dict[str, Any]:
    """What ``pitr status`` says about the cache behind its answer (``None``: bypassed)."""
    if cache is None or cache.state is None:
        return {"used": False}
    t = cache.clock() if now is None else now
    return {"used": True, "file": str(cache.path), "rebuilt": cache.rebuilt,
            "full_listing_at": datetime.fromtimestamp(cache.state.built_at, UTC)
            .isoformat(timespec="seconds"),
            "full_listing_age_seconds": round(max(0.0, t - cache.state.built_at), 3),
            "rebuild_every_seconds": REBUILD_EVERY}


def _class(obj: ObjectInfo) -> list[str]:
    return [obj.storage_class] if obj.storage_class else []


def _row(obj: ObjectInfo) -> Row:
    return [obj.key, obj.size, to_us(obj.mtime), *_class(obj)]


def _objects(rows: Iterable[Row]) -> Iterator[ObjectInfo]:
    for key, size, us, *cls in rows:
        yield ObjectInfo(key, size, from_us(us), cls[0] if cls else "")


def _deleted_since(state: CacheState, head: list[Row], stanza: str) -> bool:
    """Whether the repository may have lost objects since the cache was written.

    Watched: ``repo.json`` (a new identity), every backups/ key (expire deletes
    manifests first) and the expire marker (rewritten before and after every run
    that deletes, also one that deletes only WAL). Locks, claims, pins and verify
    reports come and go without touching WAL.
    """
    watched = (f"{stanza}/repo.json", expire_marker_key(stanza), f"{stanza}/backups/")

    def pick(rows: list[Row]) -> dict[str, tuple[int, int]]:
        return {r[0]: (r[1], r[2]) for r in rows if r[0].startswith(watched)}

    before, after = pick(state.head), pick(head)
    return any(after.get(k) != v for k, v in before.items()) or any(
        after.get(k) != before.get(k) for k in watched[:2])
