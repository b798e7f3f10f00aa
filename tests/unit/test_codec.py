from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pitr.codec import compress_blob, decode_header, decompress_blob
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
