from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from pitr.codec import (
    CompressingReader,
    DecompressingReader,
    compress_blob,
    decode_header,
    decompress_blob,
)
from pitr.errors import IntegrityError


@given(st.binary(max_size=200_000), st.integers(1, 9))
@settings(max_examples=40)
def test_blob_round_trip(raw: bytes, level: int) -> None:
    obj, digest = compress_blob(raw, level)
    assert digest == hashlib.sha256(raw).hexdigest()
    header, _ = decode_header(obj[:4096], "x")
    assert header.sha256 == digest and header.size == len(raw)
    assert decompress_blob(obj, "x") == raw


def test_corruption_is_detected_and_names_both_checksums() -> None:
    raw = os.urandom(1000) * 50
    obj, digest = compress_blob(raw, 3)
    _header, offset = decode_header(obj, "seg")
    # Same header, other content: what a bit-rotted or swapped object looks like.
    other, _ = compress_blob(raw[::-1], 3)
    _, other_offset = decode_header(other, "seg")
    forged = obj[:offset] + other[other_offset:]
    with pytest.raises(IntegrityError) as err:
        decompress_blob(forged, "seg")
    assert digest in err.value.message
    assert hashlib.sha256(raw[::-1]).hexdigest() in err.value.message


def test_garbage_is_an_integrity_error() -> None:
    with pytest.raises(IntegrityError):
        decompress_blob(b"not a pitr object at all", "seg")
    obj, _ = compress_blob(b"x" * 10000, 3)
    with pytest.raises(IntegrityError):
        decompress_blob(obj[:-5], "seg")


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd CLI not installed")
def test_standard_zstd_tool_reads_objects() -> None:
    raw = b"hello wal " * 1000
    obj, _ = compress_blob(raw, 3)
    out = subprocess.run(["zstd", "-dc"], input=obj, capture_output=True, check=True).stdout
    assert out == raw


def test_streaming_round_trip_bounded_reads() -> None:
    raw = os.urandom(3 << 20) + b"\0" * (5 << 20)
    comp = CompressingReader(io.BytesIO(raw), level=3)
    stored = bytearray()
    while chunk := comp.read(256 * 1024):
        assert len(chunk) <= 256 * 1024
        stored += chunk
    assert comp.raw_bytes == len(raw)
    assert comp.raw_sha256 == hashlib.sha256(raw).hexdigest()
    assert comp.stored_bytes == len(stored)
    assert comp.stored_sha256 == hashlib.sha256(stored).hexdigest()
    assert len(stored) < len(raw)
    dec = DecompressingReader(io.BytesIO(bytes(stored)))
    assert dec.read() == raw
    assert dec.sha256 == comp.raw_sha256


class _FailingSource:
    """Yields some bytes, then fails as pg_basebackup's stdout does when it exits non-zero."""

    def __init__(self, good: bytes) -> None:
        self._good = io.BytesIO(good)

    def read(self, n: int = -1) -> bytes:
        data = self._good.read(n)
        if not data:
            raise RuntimeError("pg_basebackup exited with 1")
        return data


def test_streaming_source_error_reaches_the_reader() -> None:
    comp = CompressingReader(_FailingSource(b"x" * (3 << 20)), level=1)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="exited with 1"):
        while comp.read(1 << 20):
            pass


def test_streaming_close_releases_a_blocked_feeder() -> None:
    comp = CompressingReader(io.BytesIO(os.urandom(32 << 20)), level=1, depth=1)
    comp.read(1024)  # the feeder is now blocked on the full queue
    comp.close()
    comp._feeder.join(timeout=5)
    assert not comp._feeder.is_alive()


def test_streamed_frame_carries_zstd_content_checksum() -> None:
    raw = b"page " * 200_000
    stored = bytearray()
    comp = CompressingReader(io.BytesIO(raw), level=1)
    while chunk := comp.read(1 << 16):
        stored += chunk
    assert zstandard.get_frame_parameters(bytes(stored[:18])).has_checksum
    damaged = bytearray(stored)
    damaged[-2] ^= 0xFF  # inside the trailing checksum
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().decompressobj().decompress(bytes(damaged))
