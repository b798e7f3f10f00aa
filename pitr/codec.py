"""The stored WAL object: a pitr header, then one zstd frame (filters in pitr.stream).

A stored WAL object is a zstd *skippable frame* holding a small JSON header
(sha256 and size of the raw bytes, format version) followed by one ordinary
zstd frame. Standard tools (`zstd -d`) skip the header and yield the segment;
pitr reads the header to verify what it decompressed and to compare a
re-push with what is stored, without any storage-specific metadata API.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from pitr import stream
from pitr.errors import IntegrityError

SKIPPABLE_MAGIC = 0x184D2A50
_FRAME_HEAD = struct.Struct("<II")
FORMAT_VERSION = 1


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
    """Header + compressed ``raw``; returns the object bytes and sha256 of ``raw``.

    The frame declares its content size and carries no content checksum (the
    header's sha256 proves the bytes): the format every stored WAL object has.
    """
    digest = stream.Hash()
    body = stream.run(raw, [digest, stream.ZstdCompress(level, checksum=False, size=len(raw))])
    return encode_header(digest.sha256, len(raw), **extra) + body, digest.sha256


def decompress_blob(obj: bytes, name: str) -> bytes:
    """Inverse of :func:`compress_blob`, verifying size and sha256."""
    header, offset = decode_header(obj[:65536], name)
    digest = stream.Hash()
    raw = stream.run(obj[offset:], [
        stream.ZstdDecompress(frames="first", piece=header.size, limit=header.size, name=name),
        digest])
    _check_content(header, raw, digest.sha256, name)
    return raw


def _check_content(header: Header, raw: bytes, digest: str, name: str) -> None:
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
    digest = stream.Hash()
    raw = stream.run(body, [stream.ZstdDecompress(frames="exactly-one", piece=header.size,
                                                  limit=header.size, name=name), digest])
    _check_content(header, raw, digest.sha256, name)
    return header, raw
