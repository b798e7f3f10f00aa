"""The storage contract every repository driver implements.

Drivers implement a handful of primitives over flat, '/'-separated keys that
are relative to the repository root (the URL's path or bucket prefix). Every
vendor exception is translated inside the driver into the errors below, so no
caller ever sees botocore or OSError from storage.

Derived helpers (``put_bytes``, ``read_bytes``) live here, once, for all drivers.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol, runtime_checkable

from pitr.errors import AlreadyExists, NotFound, StorageError, TransientStorageError
from pitr.stream import Readable

__all__ = [
    "AlreadyExists",
    "NotFound",
    "ObjectInfo",
    "Storage",
    "StorageError",
    "TransientStorageError",
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


@runtime_checkable
class Storage(Protocol):
    """A repository backend.

    Contract (tested by tests/integration/test_storage_contract.py for every driver):

    * ``put`` reads ``src`` to EOF and stores it under ``key``. It returns only
      once the object is durable. With ``if_absent=True`` it raises
      :class:`AlreadyExists` when the key exists and leaves the old object untouched;
      otherwise it replaces atomically. Readers never see a partial object.
      Returns the number of bytes stored.
    * ``open`` returns a readable binary stream (close it); :class:`NotFound` if absent.
    * ``stat`` returns :class:`ObjectInfo`; :class:`NotFound` if absent.
    * ``list`` yields every object whose key starts with ``prefix``, sorted by key,
      paging internally. A prefix that matches nothing yields nothing.
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

    def put(self, key: str, src: Readable, *, if_absent: bool = False) -> int: ...

    def open(self, key: str) -> BinaryIO: ...

    def stat(self, key: str) -> ObjectInfo: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def delete(self, keys: Iterable[str]) -> int: ...

    def cleanup_incomplete(self, prefix: str = "") -> int: ...

    def read_with_etag(self, key: str) -> tuple[bytes, str]: ...

    def put_if_match(self, key: str, data: bytes, etag: str) -> int: ...


def put_bytes(storage: Storage, key: str, data: bytes, *, if_absent: bool = False) -> int:
    return storage.put(key, io.BytesIO(data), if_absent=if_absent)


def read_bytes(storage: Storage, key: str, limit: int = -1) -> bytes:
    """The object's bytes (the first ``limit`` bytes when limit >= 0)."""
    with storage.open(key) as f:
        return f.read(limit) if limit >= 0 else f.read()
