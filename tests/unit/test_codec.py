"""The stored WAL object (pitr/codec.py): round trips, both header versions, and the
corruptions a version 2 object must be refused for, as a version 1 object's sha256
refused them (docs/design-streams.md, "The byte format the chain must keep")."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from pitr.codec import (
    FAST_LEVEL,
    SAMPLE,
    Header,
    choose_level,
    compress_blob,
    decode_header,
    decompress_blob,
    encode_header,
    verify_blob,
)
from pitr.errors import IntegrityError

# Compressible, but not trivially: what a WAL page with tuples looks like to zstd.
RAW = b"".join(i.to_bytes(4, "little") + b"tuple data %d " % (i % 97) for i in range(4000))


def v1_blob(raw: bytes, **extra: object) -> bytes:
    """A version 1 object as pitr wrote it before: sha256 in the header, no frame checksum."""
    header = Header(len(raw), sha256=hashlib.sha256(raw).hexdigest(), extra=dict(extra),
                    version=1)
    frame = zstandard.ZstdCompressor(level=3, write_checksum=False,
                                     write_content_size=True).compress(raw)
    return encode_header(header) + frame


def refused_or_same(fn: object, obj: bytes, raw: bytes) -> None:
    """``fn(obj)`` raises IntegrityError or gives back exactly ``raw``: never other bytes."""
    try:
        out = fn(obj, "seg")  # type: ignore[operator]
    except IntegrityError:
        return
    got = out[1] if isinstance(out, tuple) else out
    assert got == raw


@given(st.binary(max_size=200_000), st.integers(1, 9))
@settings(max_examples=40)
def test_blob_round_trip(raw: bytes, level: int) -> None:
    obj, header = compress_blob(raw, level, name="seg")
    decoded, _ = decode_header(obj[:4096], "x")
    assert decoded == header and decoded.version == 2 and decoded.sha256 is None
    assert header.size == len(raw) and header.extra == {"name": "seg"}
    assert header.content_id == f"zstd:{header.frame_checksum}"
    assert decompress_blob(obj, "x") == raw
    assert verify_blob(obj, "x") == (header, raw)


def test_version_1_objects_are_still_read_and_proven() -> None:
    obj = v1_blob(RAW, name="seg")
    header, _ = decode_header(obj, "seg")
    assert header.version == 1 and header.sha256 == hashlib.sha256(RAW).hexdigest()
    assert header.extra == {"name": "seg"} and header.content_id.startswith("sha256:")
    assert decompress_blob(obj, "seg") == RAW
    assert verify_blob(obj, "seg")[1] == RAW
    # a v1 object with another content under its header: its sha256 refuses it
    other = zstandard.ZstdCompressor(level=3, write_checksum=False,
                                     write_content_size=True).compress(RAW[::-1])
    forged = obj[:decode_header(obj, "seg")[1]] + other
    with pytest.raises(IntegrityError) as err:
        decompress_blob(forged, "seg")
    assert hashlib.sha256(RAW[::-1]).hexdigest() in err.value.message


@given(st.data())
@settings(max_examples=200)
def test_any_changed_byte_is_refused_or_harmless(data: st.DataObject) -> None:
    """One byte changed anywhere (header or frame): refused, never other bytes returned."""
    obj, _ = compress_blob(RAW, 1)
    at = data.draw(st.integers(0, len(obj) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != obj[at]))
    bad = obj[:at] + bytes([new]) + obj[at + 1:]
    refused_or_same(decompress_blob, bad, RAW)
    refused_or_same(verify_blob, bad, RAW)


@given(st.data())
@settings(max_examples=100)
def test_any_flipped_bit_in_the_frame_is_refused(data: st.DataObject) -> None:
    """A bit flipped in the compressed frame (bit rot): always refused -- by zstd's
    decoder, its content checksum, or the header's copy of that checksum."""
    obj, _ = compress_blob(RAW, 1)
    offset = decode_header(obj, "seg")[1]
    at = data.draw(st.integers(offset, len(obj) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = obj[:at] + bytes([obj[at] ^ (1 << bit)]) + obj[at + 1:]
    with pytest.raises(IntegrityError):
        decompress_blob(bad, "seg")
    with pytest.raises(IntegrityError):
        verify_blob(bad, "seg")


@given(st.data())
@settings(max_examples=100)
def test_a_truncated_object_is_refused(data: st.DataObject) -> None:
    obj, _ = compress_blob(RAW, 1)
    cut = data.draw(st.integers(0, len(obj) - 1))
    with pytest.raises(IntegrityError):
        decompress_blob(obj[:cut], "seg")
    with pytest.raises(IntegrityError):
        verify_blob(obj[:cut], "seg")


@given(st.binary(min_size=1, max_size=64))
def test_bytes_after_the_frame_are_refused(tail: bytes) -> None:
    obj, _ = compress_blob(RAW, 1)
    with pytest.raises(IntegrityError):
        verify_blob(obj + tail, "seg")
    refused_or_same(decompress_blob, obj + tail, RAW)


def test_a_header_on_another_objects_frame_is_refused() -> None:
    """Same size, other content, each a valid object: the header names its own frame's
    checksum, so the splice is refused (a version 1 header's sha256 refused it too)."""
    a, _ = compress_blob(RAW, 1, name="seg")
    b, _ = compress_blob(RAW[::-1], 1, name="seg")
    forged = a[:decode_header(a, "seg")[1]] + b[decode_header(b, "seg")[1]:]
    for fn in (decompress_blob, verify_blob):
        with pytest.raises(IntegrityError, match="checksum mismatch"):
            fn(forged, "seg")


def test_a_version_2_header_needs_a_frame_with_its_checksum() -> None:
    """A frame without zstd's content checksum (as version 1 wrote them) under a version
    2 header: nothing would check the content, so it is refused."""
    _obj, header = compress_blob(RAW, 1)
    plain = zstandard.ZstdCompressor(level=1, write_checksum=False,
                                     write_content_size=True).compress(RAW)
    forged = encode_header(header) + plain
    for fn in (decompress_blob, verify_blob):
        with pytest.raises(IntegrityError):
            fn(forged, "seg")


def test_a_damaged_or_unknown_header_is_refused() -> None:
    obj, header = compress_blob(RAW, 1)
    body = obj[decode_header(obj, "seg")[1]:]
    for doc_header in (Header(header.size + 1, frame_checksum=header.frame_checksum),
                       Header(header.size, frame_checksum="zz" * 4),
                       Header(header.size, frame_checksum="00"),
                       Header(header.size, frame_checksum=header.frame_checksum, version=3)):
        with pytest.raises(IntegrityError):
            decompress_blob(encode_header(doc_header) + body, "seg")


def test_garbage_is_an_integrity_error() -> None:
    with pytest.raises(IntegrityError):
        decompress_blob(b"not a pitr object at all", "seg")
    obj, _ = compress_blob(b"x" * 10000, 3)
    with pytest.raises(IntegrityError):
        decompress_blob(obj[:-5], "seg")


def test_choose_level_only_for_data_that_will_not_compress() -> None:
    random_seg = os.urandom(16 << 20)
    assert choose_level(random_seg, 3) == FAST_LEVEL
    assert choose_level(RAW * 70, 3) == 3
    assert choose_level(os.urandom(SAMPLE), 3) == 3  # too small to sample: as configured
    obj, _header = compress_blob(random_seg, choose_level(random_seg, 3))
    assert decompress_blob(obj, "seg") == random_seg


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd CLI not installed")
def test_standard_zstd_tool_reads_objects() -> None:
    raw = b"hello wal " * 1000
    for obj in (compress_blob(raw, 3)[0], v1_blob(raw)):
        out = subprocess.run(["zstd", "-dc"], input=obj, capture_output=True,
                             check=True).stdout
        assert out == raw
