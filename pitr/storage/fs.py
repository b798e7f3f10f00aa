"""Local-directory repository (``file:///path``): the embedded default.

Durability: data goes to a temp file in the destination directory, is fsynced,
then renamed (or hard-linked for ``if_absent``, since link(2) fails when the
name exists, which rename(2) would silently replace), and the directory is
fsynced so the new name itself survives a crash.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from pitr.errors import AlreadyExists, NotFound, StorageError, TransientStorageError
from pitr.storage.base import ObjectInfo
from pitr.stream import Readable

_TMP_MARK = ".pitr-tmp-"
_CHUNK = 1 << 20
_TRANSIENT_ERRNOS = {errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ETIMEDOUT, errno.EIO}


def _translate(exc: OSError, key: str) -> StorageError:
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"{key}: not found in the repository")
    if exc.errno in _TRANSIENT_ERRNOS:
        return TransientStorageError(f"{key}: {exc.strerror}")
    if isinstance(exc, PermissionError):
        return StorageError(
            f"{key}: permission denied ({exc.filename})",
            hint="the repository directory must be writable by the user running pitr",
        )
    if exc.errno == errno.ENOSPC:
        return StorageError(f"{key}: no space left on the repository device")
    return StorageError(f"{key}: {exc.strerror or exc}")


def _etag(st: os.stat_result) -> str:
    """A new object is always a new inode (temp file + rename/link), and size and times
    tell a reused inode number apart."""
    return f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}-{st.st_ctime_ns:x}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FsStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        # Same rule as every driver: on S3 "a//b" and "/a" are other keys than "a/b" and "a",
        # so they are refused rather than silently normalised here.
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            raise StorageError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def _makedirs(self, directory: Path) -> None:
        missing: list[Path] = []
        d = directory
        while not d.exists():
            missing.append(d)
            d = d.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A new directory entry is only durable once its parent is fsynced.
        for made in reversed(missing):
            _fsync_dir(made.parent)

    def put(self, key: str, src: Readable, *, if_absent: bool = False,
            storage_class: str = "") -> int:
        # storage_class: local files have none (docs/storage-tiers.md)
        dest = self._path(key)
        try:
            self._makedirs(dest.parent)
            if if_absent and dest.exists():
                raise AlreadyExists(f"{key}: already exists")
            tmp = dest.parent / f"{_TMP_MARK}{dest.name}.{uuid.uuid4().hex}"
            written = 0
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb", closefd=True) as out:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                        written += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                try:
                    if if_absent:
                        try:
                            os.link(tmp, dest)
                        except FileExistsError:
                            raise AlreadyExists(f"{key}: already exists") from None
                        finally:
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(tmp)
                    else:
                        os.replace(tmp, dest)
                except FileNotFoundError:
                    # Our temp file is gone: a concurrent cleanup_incomplete, not a missing
                    # object. Nothing was stored, so a retry is the right answer.
                    raise TransientStorageError(
                        f"{key}: the temporary file vanished before it was stored "
                        "(a concurrent cleanup?); retry") from None
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            _fsync_dir(dest.parent)
            return written
        except OSError as exc:
            raise _translate(exc, key) from exc

    def read_with_etag(self, key: str) -> tuple[bytes, str]:
        try:
            with open(self._path(key), "rb") as fh:
                tag = _etag(os.fstat(fh.fileno()))
                return fh.read(), tag
        except OSError as exc:
            raise _translate(exc, key) from exc

    def put_if_match(self, key: str, data: bytes, etag: str) -> int:
        """Write a temp file, then compare and rename under an exclusive flock on the
        directory: every conditional replace of a name in it is serialized, and the
        tag of the object being replaced is checked in the same critical section."""
        dest = self._path(key)
        tmp = dest.parent / f"{_TMP_MARK}{dest.name}.{uuid.uuid4().hex}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb", closefd=True) as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                dfd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    fcntl.flock(dfd, fcntl.LOCK_EX)
                    current = _etag(os.stat(dest))
                    if current != etag:
                        raise AlreadyExists(f"{key}: changed since it was read "
                                            f"(tag {current}, expected {etag})")
                    os.replace(tmp, dest)
                    os.fsync(dfd)
                finally:
                    os.close(dfd)  # drops the flock
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except OSError as exc:
            raise _translate(exc, key) from exc
        return len(data)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except OSError as exc:
            raise _translate(exc, key) from exc

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = self._path(key).stat()
        except OSError as exc:
            raise _translate(exc, key) from exc
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def list(self, prefix: str = "", *, start_after: str | None = None,
             end_before: str | None = None) -> Iterator[ObjectInfo]:
        # Walk only the directory the prefix names, one directory in memory at a time,
        # entries in the byte order of the keys they hold (see _walk).
        head, _, _ = prefix.rpartition("/")
        parts = [p for p in head.split("/") if p]
        start = self.root.joinpath(*parts) if parts else self.root
        if not start.is_dir():
            return
        rel = "/".join(parts) + "/" if parts else ""
        try:
            yield from self._walk(start, rel, prefix, start_after, end_before)
        except OSError as exc:
            raise _translate(exc, prefix or "listing") from exc

    def _walk(self, path: Path, rel: str, prefix: str, start_after: str | None,
              end_before: str | None) -> Iterator[ObjectInfo]:
        """Keys under ``path`` (whose keys start with ``rel``) in byte order.

        A directory ``d`` holds keys ``d/...``, so it sorts as ``d/``: then "a-c" and
        "a.x" come before "a/b" as in S3. Returns once past ``end_before``: the
        caller's remaining entries are greater still and return at once too.
        """
        try:
            with os.scandir(path) as it:
                entries = [(e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e)
                           for e in it if not e.name.startswith(_TMP_MARK)]
        except FileNotFoundError:
            if rel and path != self.root:
                return  # removed while listing: its objects are gone
            raise
        entries.sort(key=lambda t: t[0])
        for name, entry in entries:
            key = rel + name
            is_dir = name.endswith("/")
            if end_before is not None and key >= end_before:
                return
            if is_dir:
                if not (key.startswith(prefix) or prefix.startswith(key)):
                    continue
                if start_after is not None and key <= start_after \
                        and not start_after.startswith(key):
                    continue  # the whole directory sorts before start_after
                yield from self._walk(Path(entry.path), key, prefix, start_after, end_before)
                continue
            if not key.startswith(prefix) or (start_after is not None and key <= start_after):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue  # deleted while listing
            yield ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def delete(self, keys: Iterable[str]) -> int:
        removed = 0
        dirs: set[Path] = set()
        for key in keys:
            path = self._path(key)
            try:
                path.unlink()
                removed += 1
                dirs.add(path.parent)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _translate(exc, key) from exc
        for d in dirs:
            _fsync_dir(d)
        return removed

    def cleanup_incomplete(self, prefix: str = "") -> int:
        start = self.root / prefix if prefix else self.root
        if not start.exists():
            return 0
        removed = 0
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if name.startswith(_TMP_MARK):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(dirpath, name))
                        removed += 1
        return removed

    def destroy(self) -> None:
        """Remove the whole repository directory (tests and scratch repositories)."""
        shutil.rmtree(self.root, ignore_errors=True)

