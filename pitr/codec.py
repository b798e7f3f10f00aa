"""The stored WAL object: a pitr header, then one zstd frame (filters in pitr.stream).

A stored WAL object is a zstd *skippable frame* holding a small JSON header
followed by one ordinary zstd frame. Standard tools (`zstd -d`) skip the header
and yield the segment; pitr reads the header to verify what it decompressed and
to compare a re-push with what is stored, without any storage-specific metadata
API. The two versions (docs/design-streams.md, "The byte format the chain must keep"):

* ``v`` 2, written since 2026-12: the frame carries zstd's content checksum and the
  header repeats it (``frame_checksum``), which binds the header to its frame;
  every decompression checks the content against it. No hash of the raw bytes is
  computed: a segment's sha256 was a fifth of the agent's CPU (docs/benchmarks.md).
* ``v`` 1: the header holds the sha256 of the raw bytes and the frame no checksum.
  Still read, and proven, exactly as before.

Both versions record the raw size. Whether a re-push is the same content is decided
on the raw bytes themselves (pitr/wal/push.py), never on a checksum.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from pitr import stream
from pitr.errors import IntegrityError

SKIPPABLE_MAGIC = 0x184D2A50
_FRAME_HEAD = struct.Struct("<II")
FORMAT_VERSION = 2  # what pitr writes; every older version is still read
CHECKSUM_BYTES = 4  # zstd's content checksum: the low 32 bits of the XXH64 of the content
_HEADER_FIELDS = ("v", "sha256", "frame_checksum", "size")

# Which level a segment is compressed at: zstd's fast level when samples show it will
# not shrink. WAL full of random bytes (encrypted or compressed columns) costs level 3
# about 4x the CPU of level -1 for the same (no) gain, CPU the upload needs.
INCOMPRESSIBLE = 0.9  # sampled size ratio above which the content is treated as random
FAST_LEVEL = -1  # zstd's fast mode: same format, ~4x less CPU on data that will not shrink
SAMPLE = 256 << 10


@dataclass(frozen=True, slots=True)
class Header:
    size: int  # of the raw bytes
    sha256: str | None = None  # v1: sha256 of the raw bytes
    frame_checksum: str | None = None  # v2: the frame's content checksum, 8 hex digits
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION

    @property
    def content_id(self) -> str:
        """How the header names its content: ``sha256:<hex>`` (v1), ``zstd:<8 hex>`` (v2).
        A record, not a comparison: two objects hold the same content only if their raw
        bytes are equal."""
        return f"sha256:{self.sha256}" if self.sha256 is not None \
            else f"zstd:{self.frame_checksum}"


def encode_header(header: Header) -> bytes:
    doc: dict[str, Any] = {"v": header.version, "size": header.size, **header.extra}
    if header.sha256 is not None:
        doc["sha256"] = header.sha256
    if header.frame_checksum is not None:
        doc["frame_checksum"] = header.frame_checksum
    payload = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
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
        version = int(doc.get("v", 1))
        extra = {k: v for k, v in doc.items() if k not in _HEADER_FIELDS}
        if version == 1:
            header = Header(int(doc["size"]), sha256=str(doc["sha256"]), extra=extra, version=1)
        elif version == 2:
            checksum = str(doc["frame_checksum"])
            if len(bytes.fromhex(checksum)) != CHECKSUM_BYTES:
                raise ValueError(checksum)
            header = Header(int(doc["size"]), frame_checksum=checksum, extra=extra, version=2)
        else:
            raise IntegrityError(f"{name}: stored object has header version {version}, "
                                 "which this pitr does not know",
                                 hint="upgrade pitr on this host")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{name}: stored object has a damaged header") from exc
    return header, end


def choose_level(raw: bytes, level: int) -> int:
    """``level``, or :data:`FAST_LEVEL` when three samples (start, middle, end) of ``raw``
    show it will not compress."""
    import zstandard

    if len(raw) < 4 * SAMPLE:
        return level
    samples = [raw[:SAMPLE], raw[len(raw) // 2:len(raw) // 2 + SAMPLE], raw[-SAMPLE:]]
    comp = zstandard.ZstdCompressor(level=1)
    packed = sum(len(comp.compress(s)) for s in samples)
    return FAST_LEVEL if packed / (3 * SAMPLE) > INCOMPRESSIBLE else level


def compress_blob(raw: bytes, level: int, **extra: Any) -> tuple[bytes, Header]:
    """Header + compressed ``raw`` (version 2); returns the object bytes and its header.

    The frame declares its content size and carries zstd's content checksum, which
    the header repeats: the format every WAL object pitr writes now has.
    """
    body = stream.run(raw, [stream.ZstdCompress(level, checksum=True, size=len(raw))])
    header = Header(len(raw), frame_checksum=body[-CHECKSUM_BYTES:].hex(), extra=extra)
    return encode_header(header) + body, header


def decompress_blob(obj: bytes, name: str) -> bytes:
    """Inverse of :func:`compress_blob`, verifying the content against the header."""
    header, offset = decode_header(obj[:65536], name)
    body = obj[offset:]
    _check_frame(header, body, name, whole=False)
    raw = stream.run(body, [stream.ZstdDecompress(frames="first", piece=header.size,
                                                  limit=header.size, name=name)])
    _check_content(header, raw, name)
    return raw


def verify_blob(obj: bytes, name: str) -> tuple[Header, bytes]:
    """Prove a whole stored object: header, one complete zstd frame and nothing after it,
    its size and the checksum of what it decompresses to; returns the header and raw bytes.

    Stricter than :func:`decompress_blob` (which would not notice bytes appended after
    a version 1 frame) and a little slower: archive-push runs it before answering
    "already archived" (docs/archiving.md, "What archive-push guarantees"), archive-get
    does not need it.
    """
    header, offset = decode_header(obj[:65536], name)
    body = obj[offset:]
    _check_frame(header, body, name, whole=True)
    raw = stream.run(body, [stream.ZstdDecompress(frames="exactly-one", piece=header.size,
                                                  limit=header.size, name=name)])
    _check_content(header, raw, name)
    return header, raw


def _check_frame(header: Header, body: bytes, name: str, *, whole: bool) -> None:
    """The frame's own parameters against the header, before anything is decompressed.

    For version 2 the frame must carry a content checksum (zstd then verifies the
    content against it) and end with the one the header names: a header spliced onto
    another object's frame, or a frame whose checksum flag was flipped, is refused.
    """
    import zstandard

    if not whole and header.version < 2:
        return  # v1: the frame's size is checked as it decompresses, the content by sha256
    try:
        params = zstandard.get_frame_parameters(body)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{name}: stored object has no valid zstd frame: {exc}") from exc
    if params.content_size != header.size:
        raise IntegrityError(f"{name}: stored zstd frame declares {params.content_size} "
                             f"bytes, its header says {header.size}")
    if header.version < 2:
        return
    if not params.has_checksum or body[-CHECKSUM_BYTES:].hex() != header.frame_checksum:
        raise IntegrityError(
            f"{name}: checksum mismatch: stored header says frame checksum "
            f"{header.frame_checksum}, the frame ends with "
            f"{body[-CHECKSUM_BYTES:].hex() if params.has_checksum else 'none'}",
            hint="the object in the repository is damaged; restore it from another copy")


def _check_content(header: Header, raw: bytes, name: str) -> None:
    """The decompressed bytes against the header: their size, and for version 1 their
    sha256 (version 2's checksum zstd verified while decompressing)."""
    digest = hashlib.sha256(raw).hexdigest() if header.sha256 is not None else None
    if len(raw) != header.size or digest != header.sha256:
        said = f"sha256 {header.sha256}" if header.sha256 is not None else "its frame checksum"
        got = f"sha256 {digest}" if digest is not None else "content"
        raise IntegrityError(
            f"{name}: checksum mismatch: stored header says {said} "
            f"({header.size} bytes), content is {got} ({len(raw)} bytes)",
            hint="the object in the repository is damaged; restore it from another copy",
        )
