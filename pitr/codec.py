"""zstd + sha256 as stream wrappers, kept out of the storage drivers.

A stored WAL object is a zstd *skippable frame* holding a small JSON header
(sha256 and size of the raw bytes, format version) followed by one ordinary
zstd frame. Standard tools (`zstd -d`) skip the header and yield the segment;
pitr reads the header to verify what it decompressed and to compare a
re-push with what is stored, without any storage-specific metadata API.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import struct
import threading
from dataclasses import dataclass
from typing import Any, BinaryIO

from pitr.errors import IntegrityError

SKIPPABLE_MAGIC = 0x184D2A50
_FRAME_HEAD = struct.Struct("<II")
FORMAT_VERSION = 1
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Header:
    sha256: str
    size: int
    extra: dict[str, Any]


def encode_header(sha256: str, size: int, **extra: Any) -> bytes:
    payload = json.dumps({"v": FORMAT_VERSION, "sha256": sha256, "size": size, **extra},
                         separators=(",", ":"), sort_keys=True).encode()
    return _FRAME_HEAD.pack(SKIPPABLE_MAGIC, len(payload)) + payload


def decode_header(prefix: bytes, name: str) -> tuple[Header, int]:
    """Parse the header at the start of ``prefix``; returns it and its length in bytes."""
    if len(prefix) < _FRAME_HEAD.size:
        raise IntegrityError(f"{name}: stored object is truncated")
    magic, length = _FRAME_HEAD.unpack_from(prefix)
    end = _FRAME_HEAD.size + length
    if magic != SKIPPABLE_MAGIC or len(prefix) < end:
        raise IntegrityError(f"{name}: stored object has no pitr header")
    try:
        doc = json.loads(prefix[_FRAME_HEAD.size:end])
        header = Header(str(doc.pop("sha256")), int(doc.pop("size")), doc)
    except (ValueError, KeyError) as exc:
        raise IntegrityError(f"{name}: stored object has a damaged header") from exc
    return header, end


def compress_blob(raw: bytes, level: int, **extra: Any) -> tuple[bytes, str]:
    """Header + compressed ``raw``; returns the object bytes and sha256 of ``raw``."""
    import zstandard

    digest = hashlib.sha256(raw).hexdigest()
    body = zstandard.ZstdCompressor(level=level).compress(raw)
    return encode_header(digest, len(raw), **extra) + body, digest


def decompress_blob(obj: bytes, name: str) -> bytes:
    """Inverse of :func:`compress_blob`, verifying size and sha256."""
    import zstandard

    header, offset = decode_header(obj[:65536], name)
    try:
        raw = zstandard.ZstdDecompressor().decompress(obj[offset:], max_output_size=header.size)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{name}: stored object does not decompress: {exc}") from exc
    _check_content(header, raw, name)
    return raw


def _check_content(header: Header, raw: bytes, name: str) -> None:
    digest = hashlib.sha256(raw).hexdigest()
    if len(raw) != header.size or digest != header.sha256:
        raise IntegrityError(
            f"{name}: checksum mismatch: stored header says sha256 {header.sha256} "
            f"({header.size} bytes), content is sha256 {digest} ({len(raw)} bytes)",
            hint="the object in the repository is damaged; restore it from another copy",
        )


def verify_blob(obj: bytes, name: str) -> tuple[Header, bytes]:
    """Prove a whole stored object: header, one complete zstd frame and nothing after it,
    its size and the sha256 of what it decompresses to; returns the header and raw bytes.

    Stricter than :func:`decompress_blob` (which would not notice bytes appended after
    the frame) and a little slower: archive-push runs it before answering "already
    archived" (docs/archiving.md, "What archive-push guarantees"), archive-get does not need it.
    """
    import zstandard

    header, offset = decode_header(obj[:65536], name)
    body = obj[offset:]
    try:
        declared = zstandard.frame_content_size(body)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{name}: stored object has no valid zstd frame: {exc}") from exc
    if declared != header.size:
        raise IntegrityError(f"{name}: stored zstd frame declares {declared} bytes, its header "
                             f"says {header.size}")
    dobj = zstandard.ZstdDecompressor().decompressobj(write_size=max(header.size, 1))
    try:
        raw = dobj.decompress(body)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{name}: stored object does not decompress: {exc}") from exc
    if not dobj.eof:
        raise IntegrityError(f"{name}: stored zstd frame is cut off ({len(obj)} bytes stored)")
    if dobj.unused_data:
        raise IntegrityError(f"{name}: {len(dobj.unused_data)} stray bytes after the stored "
                             "zstd frame")
    _check_content(header, raw, name)
    return header, raw


class CompressingReader:
    """File-like: reads ``src`` (raw), yields zstd-compressed bytes; hashes both sides.

    Used to stream an unbounded input (pg_basebackup's tar) into ``Storage.put``
    with bounded memory. After EOF, ``raw_sha256``/``raw_bytes`` and
    ``stored_sha256``/``stored_bytes`` describe what went through.

    Two stages run at once: a feeder thread reads ``src`` (and hashes the raw
    bytes, unless ``hash_raw=False``) while the caller's thread compresses. Pipe
    reads, sha256 and zstd all release the GIL, so the reading no longer waits
    for the compressing and vice versa. The queue between them holds at most
    ``depth`` chunks. Errors raised by ``src`` (pg_basebackup
    failing at EOF) surface from :meth:`read`, so ``Storage.put`` abandons the
    object. The frame carries zstd's content checksum, so every decompression
    checks the bytes too, not only a restore that compares the raw sha256.
    """

    def __init__(self, src: BinaryIO, level: int, threads: int = 0, depth: int = 4,
                 *, hash_raw: bool = True) -> None:
        import zstandard

        self._src = src
        self._cobj = zstandard.ZstdCompressor(level=level, threads=threads or 0,
                                              write_checksum=True).compressobj()
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._buf = bytearray()
        self._raw = hashlib.sha256() if hash_raw else None
        self._stored = hashlib.sha256()
        self.raw_bytes = 0
        self.stored_bytes = 0
        self._eof = False
        self._feeder = threading.Thread(target=self._feed, name="compress-feeder", daemon=True)
        self._feeder.start()

    def _feed(self) -> None:
        item: bytes | BaseException | None
        try:
            while not self._closed.is_set():
                data = self._src.read(CHUNK)
                if not data:
                    break
                if self._raw is not None:
                    self._raw.update(data)
                self.raw_bytes += len(data)
                if not self._hand_over(data):
                    return
            item = None
        except BaseException as exc:
            item = exc
        self._hand_over(item)

    def _hand_over(self, item: bytes | BaseException | None) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._buf) < n):
            item = self._queue.get()
            if item is None:
                self._buf += self._cobj.flush()
                self._eof = True
                self._feeder.join()
            elif isinstance(item, BaseException):
                self._eof = True
                raise item
            else:
                self._buf += self._cobj.compress(item)
        if n < 0 or n >= len(self._buf):
            out = bytes(self._buf)
            self._buf.clear()
        else:
            out = bytes(self._buf[:n])
            del self._buf[:n]
        self._stored.update(out)
        self.stored_bytes += len(out)
        return out

    def close(self) -> None:
        """Stop the feeder (an abandoned upload must not leave it blocked on the queue)."""
        self._closed.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()

    @property
    def raw_sha256(self) -> str:
        """sha256 of the raw input; "" when not asked for (``hash_raw=False``)."""
        return self._raw.hexdigest() if self._raw is not None else ""

    @property
    def stored_sha256(self) -> str:
        return self._stored.hexdigest()


class DecompressingReader:
    """File-like: reads a zstd stream from ``src`` and yields raw bytes, hashing them."""

    def __init__(self, src: BinaryIO) -> None:
        import zstandard

        self._reader = zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True)
        self._hash = hashlib.sha256()
        self.raw_bytes = 0

    def read(self, n: int = -1) -> bytes:
        import zstandard

        if n < 0:
            parts = []
            while chunk := self.read(CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        try:
            data = self._reader.read(n)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"stored stream does not decompress: {exc}") from exc
        self._hash.update(data)
        self.raw_bytes += len(data)
        return data

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()
