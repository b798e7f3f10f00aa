"""The filter chain (pitr/stream.py, docs/design-streams.md): read(n) semantics,
hash/count against hashlib/len, zstd round trips around chunk boundaries, the
threads' error and close paths, and a length-changing stage with a final flush
shaped like the chunked encryption stage that will plug in."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import threading
import time
from collections.abc import Iterator

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from pitr import stream
from pitr.errors import IntegrityError

SMALL = 4096  # the source chunk size for the property tests: boundaries are cheap to hit


def sizes_around(step: int, count: int = 3) -> st.SearchStrategy[int]:
    return st.builds(lambda k, d: max(0, k * step + d), st.integers(0, count),
                     st.integers(-2, 2))


def payload(n: int, seed: int) -> bytes:
    """Half compressible, half random, deterministic for a seed."""
    rnd = hashlib.sha256(seed.to_bytes(8, "little")).digest() * (n // 64 + 1)
    return bytes(b if i % 2 else 0 for i, b in enumerate(rnd[:n // 2])) + rnd[:n - n // 2]


def read_all(pipe: stream.Pipeline, n: int) -> bytes:
    out = bytearray()
    while data := pipe.read(n):
        assert len(data) <= n
        out += data
    return bytes(out)


@given(sizes_around(SMALL, 4), st.integers(0, 1000), st.sampled_from([1, 7, 512, SMALL,
                                                                       SMALL + 1, 1 << 20]),
       st.sampled_from([1, 100, SMALL, 3 * SMALL]))
@settings(max_examples=60, deadline=None)
def test_compress_decompress_round_trip_and_results(size: int, seed: int, n: int,
                                                    chunk: int) -> None:
    raw = payload(size, seed)
    rc, rh, sc, sh = stream.Count(), stream.Hash(), stream.Count(), stream.Hash()
    with stream.Pipeline(io.BytesIO(raw), [rc, rh, stream.ZstdCompress(3), sc, sh],
                         chunk=chunk) as pipe:
        stored = read_all(pipe, n)
    assert (rc.bytes, rh.sha256) == (len(raw), hashlib.sha256(raw).hexdigest())
    assert (sc.bytes, sh.sha256) == (len(stored), hashlib.sha256(stored).hexdigest())
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(stored)).read() == raw
    out_c, out_h = stream.Count(), stream.Hash()
    with stream.Pipeline(io.BytesIO(stored), [stream.ZstdDecompress(piece=chunk), out_c,
                                              out_h], chunk=chunk) as pipe:
        assert read_all(pipe, n) == raw
    assert (out_c.bytes, out_h.sha256) == (len(raw), rh.sha256)


@pytest.mark.parametrize("size", [0, 1, stream.CHUNK - 1, stream.CHUNK, stream.CHUNK + 1,
                                  2 * stream.CHUNK, 3 * stream.CHUNK + 5])
def test_round_trip_around_the_real_chunk(size: int) -> None:
    raw = payload(size, size)
    with stream.Pipeline(io.BytesIO(raw), [stream.ReadAhead(2), stream.ZstdCompress(1)]) as p:
        stored = p.read()
    with stream.Pipeline(io.BytesIO(stored), [stream.ZstdDecompress()]) as p:
        assert read_all(p, 10240) == raw


@given(st.binary(max_size=3 * SMALL), st.lists(st.integers(-1, 2 * SMALL), min_size=1,
                                                max_size=12))
@settings(max_examples=80, deadline=None)
def test_read_n_is_exact_until_the_end(raw: bytes, sizes: list[int]) -> None:
    """read(n) returns n bytes unless the stream ends first, b"" after the end,
    everything left for n < 0; readinto agrees."""
    pipe = stream.Pipeline(io.BytesIO(raw), [stream.Count()], chunk=SMALL // 3)
    pos = 0
    for n in sizes:
        data = pipe.read(n)
        want = raw[pos:] if n < 0 else raw[pos:pos + n]
        assert data == want
        pos += len(data)
    rest = bytearray(len(raw) + 1)
    got = pipe.readinto(rest)
    assert bytes(rest[:got]) == raw[pos:]
    assert pipe.read(10) == b"" and pipe.read() == b""


def test_in_memory_run_and_tap_sees_every_chunk() -> None:
    seen: list[int] = []
    raw = os.urandom(5000)
    assert stream.run(raw, [stream.Tap(lambda c: seen.append(len(c)))]) == raw
    assert sum(seen) == 5000
    assert stream.run(b"", [stream.ZstdDecompress()]) == b""


def test_decompression_output_stays_bounded() -> None:
    """256 MiB of zeros is stored in a few KiB: pieces never exceed what was asked."""
    zeros = zstandard.ZstdCompressor(level=3).compress(bytes(256 << 20))
    pieces = stream.Count()
    biggest = 0

    def size(c: bytes) -> None:
        nonlocal biggest
        biggest = max(biggest, len(c))

    with stream.Pipeline(zeros, [stream.ZstdDecompress(), pieces, stream.Tap(size)]) as p:
        p.drain()
    assert pieces.bytes == 256 << 20 and biggest <= stream.CHUNK


def test_multi_frame_streams() -> None:
    a, b = b"a" * 70000, b"b" * 5
    two = zstandard.ZstdCompressor().compress(a) + zstandard.ZstdCompressor().compress(b)
    assert stream.run(two, [stream.ZstdDecompress()]) == a + b
    assert stream.run(two, [stream.ZstdDecompress(frames="first")]) == a
    with pytest.raises(IntegrityError, match="stray bytes"):
        stream.run(two, [stream.ZstdDecompress(frames="exactly-one", name="seg")])


def test_one_frame_proof_refuses_a_cut_off_frame_and_overflow() -> None:
    frame = zstandard.ZstdCompressor().compress(os.urandom(9000))
    with pytest.raises(IntegrityError, match="seg: stored object's zstd frame is cut off"):
        stream.run(frame[:-3], [stream.ZstdDecompress(frames="exactly-one", name="seg")])
    with pytest.raises(IntegrityError, match="more than the 100 bytes"):
        stream.run(frame, [stream.ZstdDecompress(frames="first", limit=100)])
    with pytest.raises(IntegrityError, match="stored stream does not decompress"):
        stream.run(b"not zstd at all" * 10, [stream.ZstdDecompress()])


def test_frame_carries_zstd_content_checksum() -> None:
    stored = stream.run(b"page " * 200_000, [stream.ZstdCompress(1)])
    assert zstandard.get_frame_parameters(stored[:18]).has_checksum
    damaged = bytearray(stored)
    damaged[-2] ^= 0xFF  # inside the trailing checksum
    with pytest.raises(IntegrityError, match="does not decompress"):
        stream.run(bytes(damaged), [stream.ZstdDecompress()])


class _FailingSource:
    """Yields some bytes, then fails as pg_basebackup's stdout does when it exits non-zero."""

    def __init__(self, good: bytes) -> None:
        self._good = io.BytesIO(good)

    def read(self, n: int = -1, /) -> bytes:
        data = self._good.read(n)
        if not data:
            raise RuntimeError("pg_basebackup exited with 1")
        return data


def test_source_error_reaches_the_reader_through_read_ahead() -> None:
    with stream.Pipeline(_FailingSource(b"x" * (3 << 20)),
                         [stream.ReadAhead(), stream.ZstdCompress(1)]) as pipe, \
            pytest.raises(RuntimeError, match="exited with 1"):
        pipe.drain()


def _threads(name: str) -> int:
    return sum(t.name == name and t.is_alive() for t in threading.enumerate())


def _settles(name: str, want: int) -> bool:
    deadline = time.monotonic() + 5
    while _threads(name) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return _threads(name) == want


def test_close_releases_a_blocked_feeder() -> None:
    before = _threads("pitr-read-ahead")
    pipe = stream.Pipeline(io.BytesIO(os.urandom(32 << 20)), [stream.ReadAhead(1)])
    pipe.read(1024)  # the feeder is now blocked on the full queue
    pipe.close()
    assert _settles("pitr-read-ahead", before)


def test_tee_sees_a_copy_and_its_errors_fail_the_stream() -> None:
    raw = payload(300_000, 1)
    stored = stream.run(raw, [stream.ZstdCompress(3)])
    side_hash, side_count = stream.Hash(), stream.Count()
    out = stream.run(stored, [stream.Tee([stream.ZstdDecompress(), side_hash, side_count])])
    assert out == stored
    assert (side_hash.sha256, side_count.bytes) == (hashlib.sha256(raw).hexdigest(), len(raw))
    with pytest.raises(IntegrityError, match="does not decompress"):
        stream.run(b"not zstd" * (1 << 19), [stream.Tee([stream.ZstdDecompress()])])
    before = _threads("pitr-tee")
    pipe = stream.Pipeline(io.BytesIO(stored), [stream.Tee([stream.Count()], depth=1)], chunk=10)
    pipe.read(5)
    pipe.close()
    assert _settles("pitr-tee", before)


# -- the shape of the encryption stage (issue 15): chunks, a final flag, a flush ------

class _Seal:
    """Frames the stream in fixed chunks, each with a length and a final flag."""

    def __init__(self, size: int) -> None:
        self.size = size

    def apply(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        buf = bytearray()
        for chunk in chunks:
            buf += chunk
            while len(buf) > self.size:  # keep one back: only the flush knows which is last
                yield struct.pack("<IB", self.size, 0) + bytes(buf[:self.size])
                del buf[:self.size]
        yield struct.pack("<IB", len(buf), 1) + bytes(buf)


class _Open:
    def apply(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        buf = bytearray()
        final = False
        for chunk in chunks:
            buf += chunk
            while len(buf) >= 5 and len(buf) >= 5 + struct.unpack_from("<I", buf)[0]:
                if final:
                    raise IntegrityError("data after the final chunk")
                n, final_flag = struct.unpack_from("<IB", buf)
                final = bool(final_flag)
                yield bytes(buf[5:5 + n])
                del buf[:5 + n]
        if not final or buf:
            raise IntegrityError("the stream is cut off before its final chunk")


@given(sizes_around(64, 5), st.integers(1, 200))
@settings(max_examples=50, deadline=None)
def test_a_chunked_length_changing_stage_plugs_in(size: int, chunk: int) -> None:
    raw = payload(size, size)
    digest = stream.Hash()
    sealed = stream.run(raw, [digest, stream.ZstdCompress(3), _Seal(64)])
    with stream.Pipeline(io.BytesIO(sealed), [_Open(), stream.ZstdDecompress()],
                         chunk=chunk) as pipe:
        assert read_all(pipe, 33) == raw
    assert digest.sha256 == hashlib.sha256(raw).hexdigest()
    with pytest.raises(IntegrityError, match="cut off"):
        stream.run(sealed[:-1], [_Open()])


def test_sinks_get_exactly_the_main_streams_bytes() -> None:
    """`pitr backup` into several repositories: each Tee branch ending in a Sink
    reads the very bytes the main stream yields, in one pass."""
    data = bytes(range(256)) * 4099
    got: list[bytes] = [b"", b""]

    def keep(i: int, reader: stream.Readable) -> None:
        got[i] = reader.read()

    out = stream.Pipeline(data, [stream.ZstdCompress(1),
                                 stream.Tee([stream.Sink(lambda r: keep(0, r))]),
                                 stream.Tee([stream.Sink(lambda r: keep(1, r))])]).read()
    assert got == [out, out] and stream.run(out, [stream.ZstdDecompress()]) == data


def test_an_abandoned_stream_fails_its_sinks() -> None:
    """A branch never takes the part it saw for the whole stream (a truncated upload)."""
    seen: list[BaseException] = []

    def consume(reader: stream.Readable) -> None:
        try:
            while reader.read(1 << 16):
                pass
        except BrokenPipeError as exc:
            seen.append(exc)
            raise

    pipe = stream.Pipeline(b"x" * (1 << 22), [stream.Tee([stream.Sink(consume)], depth=1)])
    assert pipe.read(1 << 16)
    pipe.close()
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen
