"""zstd + sha256 as stream wrappers, kept out of the storage drivers.

A stored WAL object is a zstd *skippable frame* holding a small JSON header
(sha256 and size of the raw bytes, format version) followed by one ordinary
zstd frame. Standard tools (`zstd -d`) skip the header and yield the segment;
pitr reads the header to verify what it decompressed and to compare a
re-push with what is stored, without any storage-specific metadata API.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
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
    digest = hashlib.sha256(raw).hexdigest()
    if len(raw) != header.size or digest != header.sha256:
        raise IntegrityError(
            f"{name}: checksum mismatch: stored header says sha256 {header.sha256} "
            f"({header.size} bytes), content is sha256 {digest} ({len(raw)} bytes)",
            hint="the object in the repository is damaged; restore it from another copy",
        )
    return raw


class CompressingReader:
    """File-like: reads ``src`` (raw), yields zstd-compressed bytes; hashes both sides.

    Used to stream an unbounded input (pg_basebackup's tar) into ``Storage.put``
    with bounded memory. After EOF, ``raw_sha256``/``raw_bytes`` and
    ``stored_sha256``/``stored_bytes`` describe what went through.
    """

    def __init__(self, src: BinaryIO, level: int, threads: int = 0) -> None:
        import zstandard

        self._src = src
        self._cctx = zstandard.ZstdCompressor(level=level, threads=threads or 0)
        self._chunks: Iterator[bytes] = self._cctx.read_to_iter(
            _Tee(src, self), read_size=CHUNK, write_size=CHUNK)  # type: ignore[arg-type]
        self._buf = bytearray()
        self._raw = hashlib.sha256()
        self._stored = hashlib.sha256()
        self.raw_bytes = 0
        self.stored_bytes = 0
        self._eof = False

    def _saw_raw(self, data: bytes) -> None:
        self._raw.update(data)
        self.raw_bytes += len(data)

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._buf) < n):
            try:
                self._buf += next(self._chunks)
            except StopIteration:
                self._eof = True
        if n < 0 or n >= len(self._buf):
            out = bytes(self._buf)
            self._buf.clear()
        else:
            out = bytes(self._buf[:n])
            del self._buf[:n]
        self._stored.update(out)
        self.stored_bytes += len(out)
        return out

    @property
    def raw_sha256(self) -> str:
        return self._raw.hexdigest()

    @property
    def stored_sha256(self) -> str:
        return self._stored.hexdigest()


class _Tee:
    def __init__(self, src: BinaryIO, owner: CompressingReader) -> None:
        self._src = src
        self._owner = owner

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        self._owner._saw_raw(data)
        return data


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
