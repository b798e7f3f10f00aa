"""The storage contract every repository driver implements.

Drivers implement a handful of primitives over flat, '/'-separated keys that
are relative to the repository root (the URL's path or bucket prefix). Every
vendor exception is translated inside the driver into the errors below, so no
caller ever sees botocore or OSError from storage.

Derived helpers (``put_bytes``, ``read_bytes``) live here, once, for all drivers.
"""

from __future__ import annotations

import heapq
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO, Protocol, runtime_checkable

from pitr.errors import AlreadyExists, NotFound, StorageError, TransientStorageError
from pitr.stream import Readable

__all__ = [
    "AlreadyExists",
    "NotFound",
    "ObjectInfo",
    "Storage",
    "StorageError",
    "TieredStorage",
    "TransientStorageError",
    "in_key_order",
    "put_bytes",
    "read_bytes",
]


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    # timezone-aware UTC; never earlier than the moment the object was stored (drivers
    # with coarse clocks round up), so it is a safe upper bound of the writer's times
    mtime: datetime
    # the storage class the listing reports ("" for the default class, STANDARD, and
    # when the driver has none: local files);
    # GLACIER / DEEP_ARCHIVE need a restore request before a read (docs/storage-tiers.md)
    storage_class: str = ""


@runtime_checkable
class Storage(Protocol):
    """A repository backend.

    Contract (tested by tests/integration/test_storage_contract.py for every driver):

    * ``put`` reads ``src`` to EOF and stores it under ``key``, in ``storage_class``
      when it is not empty (drivers without classes ignore it). It returns only
      once the object is durable. With ``if_absent=True`` it raises
      :class:`AlreadyExists` when the key exists and leaves the old object untouched;
      otherwise it replaces atomically. Readers never see a partial object.
      Returns the number of bytes stored.
    * ``open`` returns a readable binary stream (close it); :class:`NotFound` if absent.
    * ``stat`` returns :class:`ObjectInfo`; :class:`NotFound` if absent.
    * ``list`` yields every object whose key starts with ``prefix``, sorted by key
      (byte order), paging internally and streaming: memory does not grow with the
      number of keys listed. With ``start_after`` only keys after it; with
      ``end_before`` only keys before it, and the listing stops there (S3 lists from
      StartAfter on, so listing what is new costs one request per 1000 new keys).
      A prefix that matches nothing yields nothing.
    * ``delete`` removes keys (batched by the driver); absent keys are not an error.
    * ``cleanup_incomplete`` removes leftovers of interrupted writes under a prefix
      (temp files, unfinished multipart uploads); returns how many it removed.
    * ``read_with_etag`` returns the whole object and its ETag, a tag that changes
      whenever the object is replaced (S3's ETag; the local driver's inode, size and
      times), taken from the same read; :class:`NotFound` if absent.
    * ``put_if_match`` replaces the object under ``key`` with ``data`` only while it
      still carries ``etag``, atomically against every other conditional write. When
      it was replaced or removed since, nothing is written and it raises
      :class:`AlreadyExists` (or :class:`NotFound` when the server says the key is
      gone; some answer 412 for both). Returns the number of bytes stored.
    * Retryable failures (timeouts, throttling, 5xx, connection errors) raise
      :class:`TransientStorageError`; callers own the retry policy.
    """

    url: str

    def put(self, key: str, src: Readable, *, if_absent: bool = False,
            storage_class: str = "") -> int: ...

    def open(self, key: str) -> BinaryIO: ...

    def stat(self, key: str) -> ObjectInfo: ...

    def list(self, prefix: str = "", *, start_after: str | None = None,
             end_before: str | None = None) -> Iterator[ObjectInfo]: ...

    def delete(self, keys: Iterable[str]) -> int: ...

    def cleanup_incomplete(self, prefix: str = "") -> int: ...

    def read_with_etag(self, key: str) -> tuple[bytes, str]: ...

    def put_if_match(self, key: str, data: bytes, etag: str) -> int: ...


@runtime_checkable
class TieredStorage(Protocol):
    """What a driver with storage classes offers besides :class:`Storage` (the S3
    driver; the local one has no classes, so tiers do not apply to it). Used by
    docs/storage-tiers.md's features; errors translated like :class:`Storage`'s.

    * ``key_prefix``: the bucket key every repository key is put under ("" or ending
      in '/'), which lifecycle rules filter on.
    * ``get_tags`` / ``set_tags``: the object's tags (``set_tags`` replaces them all);
      :class:`NotFound` if absent.
    * ``thaw_status``: (storage class, the ``x-amz-restore`` header or None) from a HEAD.
    * ``request_thaw``: ask for a readable copy of an archive-class object for ``days``
      with retrieval ``tier``; a request already running is not an error.
    * ``get_lifecycle`` / ``put_lifecycle``: the bucket's lifecycle rules ([] when none);
      ``put_lifecycle`` replaces them all with a non-empty list.
    """

    key_prefix: str

    def get_tags(self, key: str) -> dict[str, str]: ...

    def set_tags(self, key: str, tags: dict[str, str]) -> None: ...

    def thaw_status(self, key: str) -> tuple[str, str | None]: ...

    def request_thaw(self, key: str, days: int, tier: str) -> None: ...

    def get_lifecycle(self) -> list[dict[str, Any]]: ...

    def put_lifecycle(self, rules: list[dict[str, Any]]) -> None: ...


def put_bytes(storage: Storage, key: str, data: bytes, *, if_absent: bool = False,
              storage_class: str = "") -> int:
    return storage.put(key, io.BytesIO(data), if_absent=if_absent, storage_class=storage_class)


def read_bytes(storage: Storage, key: str, limit: int = -1) -> bytes:
    """The object's bytes (the first ``limit`` bytes when limit >= 0)."""
    with storage.open(key) as f:
        return f.read(limit) if limit >= 0 else f.read()


def listed_past(key: str, plen: int) -> str:
    """What every key a listing gives after ``key`` is greater than, in byte order, in
    either listing order (see :func:`in_key_order`); ``plen``: the listed prefix's length."""
    cut = key.find("/", plen)
    return key if cut < 0 else key[:cut]


def in_key_order(listed: Iterable[ObjectInfo], prefix: str, *, start_after: str | None = None,
                 end_before: str | None = None) -> Iterator[ObjectInfo]:
    """A server listing in byte order, streamed, with ``start_after``/``end_before`` applied.

    ``listed`` is either in byte order (AWS) or in directory-tree order (SeaweedFS walks
    its tree, so "a/b" comes before "a-c" although '-' < '/'). Tree order can only put a
    key too early at a '/': a later key may share everything before it and continue
    with a byte below '/'. So a key waits until a key past its first directory (after
    ``prefix``) arrives; the buffer holds one directory, not the listing.
    """
    held: list[tuple[str, int, ObjectInfo]] = []  # (key, arrival, object): never compares objects
    plen = len(prefix)

    def wanted(key: str) -> bool:
        return start_after is None or key > start_after

    for n, obj in enumerate(listed):
        key = obj.key
        bound = listed_past(key, plen)
        if end_before is None or key < end_before:
            heapq.heappush(held, (key, n, obj))
        while held and held[0][0] <= bound:
            out = heapq.heappop(held)[2]
            if wanted(out.key):
                yield out
        if end_before is not None and bound >= end_before:
            break
    while held:
        out = heapq.heappop(held)[2]
        if wanted(out.key):
            yield out


def server_start_after(prefix: str, start_after: str | None) -> str | None:
    """A StartAfter that skips nothing wanted under either listing order.

    Tree order ranks '/' below every byte, so a key after ``start_after`` in byte order
    may come before it in tree order only where ``start_after`` has a byte below '/'
    (e.g. the '-' of "a-c"): the marker stops before it. A tree-walking server also
    skips a whole directory whose name is the marker's last part ("a" skips "a/..."),
    so the marker ends at a '/': the server lists from the start of that directory
    (for WAL: one timeline directory) and :func:`in_key_order` drops the extra keys.
    """
    if start_after is None or start_after < prefix:
        return None
    low = next((i for i in range(len(prefix), len(start_after)) if start_after[i] < "/"),
               len(start_after))
    cut = start_after.rfind("/", 0, low) + 1
    return start_after[:cut] if cut > len(prefix) else None
