"""One small chain of stream filters for every byte pitr stores or reads back.

A :class:`Pipeline` reads a source in chunks, passes them through a list of
filters and is itself :class:`Readable`, so ``Storage.put``, ``tarfile`` or
another pipeline read from it. A filter transforms an iterator of chunks into
an iterator of chunks: it may pass them on unchanged (:class:`Hash`,
:class:`Count`, :class:`Tap`), change their length (:class:`ZstdCompress`,
:class:`ZstdDecompress`), and emit a final piece once its input ends (the
compressor's frame epilogue), which is everything a chunked encryption stage
needs too. Results (a digest, a byte count) are read from the filter objects
after the stream ended. docs/design-streams.md describes the chain, the
filters and the byte format they must keep.

Filters are generators, so pulling from the end of the chain pulls exactly as
much input as the consumer asks for: memory stays bounded even where zstd
expands a run of zeros thousands of times. :class:`ReadAhead` and
:class:`Tee` move the work before them, or a side branch, into a thread, so
reading, hashing and compressing overlap (sha256, zstd and pipe reads release
the GIL).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Literal, Protocol

from pitr.errors import IntegrityError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

CHUNK = 1 << 20


class Readable(Protocol):
    """What pitr reads bytes from: ``read(n)`` returns up to ``n`` bytes (all with
    ``n < 0``), fewer only at the end of the stream, and ``b""`` once it ended."""

    def read(self, n: int = -1, /) -> bytes: ...


class Filter(Protocol):
    """One stage: consumes the chunks before it, yields the chunks after it.

    Code after the input loop is the flush at the end of the stream; an exception
    raised there (a truncated frame, a missing final chunk) fails the whole read.
    """

    def apply(self, chunks: Iterator[bytes]) -> Iterator[bytes]: ...


def read_chunks(src: Readable, size: int = CHUNK) -> Iterator[bytes]:
    while data := src.read(size):
        yield data


class Pipeline(io.RawIOBase):
    """``src`` through ``filters``, readable with the usual ``read(n)`` contract.

    A raw binary file (not seekable, not writable), so consumers typed for files
    (``tarfile`` in stream mode) take it as it is.
    """

    def __init__(self, src: Readable | bytes, filters: Sequence[Filter] = (), *,
                 chunk: int = CHUNK) -> None:
        super().__init__()
        chunks: Iterator[bytes] = iter((src,) if src else ()) if isinstance(src, bytes) \
            else read_chunks(src, chunk)
        for f in filters:
            chunks = f.apply(chunks)
        self._chunks = chunks
        self._cur = b""  # the chunk being read out, from self._pos on
        self._pos = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1, /) -> bytes:
        cur, pos = self._cur, self._pos
        if n is None or n < 0:
            self._cur, self._pos = b"", 0
            parts = [cur[pos:]] if len(cur) > pos else []
            if not self._eof:
                self._eof = True
                parts.extend(self._chunks)
            return parts[0] if len(parts) == 1 else b"".join(parts)  # one part: no copy
        if len(cur) - pos >= n:
            self._pos = pos + n
            return cur[pos:pos + n]  # a whole chunk is passed on without a copy
        parts = [cur[pos:]] if len(cur) > pos else []
        want = n - (len(cur) - pos)
        self._cur, self._pos = b"", 0
        while want and not self._eof:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._eof = True
            elif len(chunk) <= want:
                parts.append(chunk)
                want -= len(chunk)
            else:
                parts.append(chunk[:want])
                self._cur, self._pos = chunk, want
                want = 0
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[:len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Read to the end, so every filter sees all of its input and flushes."""
        while self.read(CHUNK):
            pass

    def close(self) -> None:
        """Stop early: closes the filters (threads of :class:`ReadAhead` and :class:`Tee`
        end; a consumer that gave up must not leave them blocked)."""
        self._eof = True
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        super().close()


def run(data: bytes, filters: Sequence[Filter]) -> bytes:
    """``data`` through ``filters`` in memory (a WAL file, a manifest)."""
    with Pipeline(data, filters) as pipe:
        return pipe.read()


# -- pass-through filters ------------------------------------------------------------

class Hash:
    """sha256 of the bytes passing this point."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def apply(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self._hash.update(chunk)
            yield chunk

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class Count:
    """How many bytes passed this point; ``on_bytes`` (progress) sees each chunk's size."""

    def __init__(self, on_bytes: Callable[[int], None] | None = None) -> None:
        self.bytes = 0
        self._on_bytes = on_bytes

    def apply(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.bytes += len(chunk)
            if self._on_bytes is not None:
                self._on_bytes(len(chunk))
            yield chunk


class Tap:
    """Shows every chunk to ``fn`` (backup_label from the tar's head) and passes it on."""

    def __init__(self, fn: Callable[[bytes], None]) -> None:
        self._fn = fn

    def apply(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self._fn(chunk)
            yield chunk


# -- zstd ----------------------------------------------------------------------------

class ZstdCompress:
    """One zstd frame of everything that passes.

    ``size`` (when known) is written into the frame header, as a WAL object's must
    be; ``checksum`` adds zstd's content checksum, so every later decompression
    checks the bytes too (backups).
    """

    def __init__(self, level: int, *, threads: int = 0, checksum: bool = True,
                 size: int | None = None) -> None:
        import zstandard

        self._cctx = zstandard.ZstdCompressor(level=level, threads=threads or 0,
                                              write_checksum=checksum)
        self._size = size

    def apply(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        first = next(chunks, b"")
        second = next(chunks, None) if len(first) == self._size else b""
        if second is None:
            # All of it in one chunk (a WAL file in memory): zstd's one-shot call,
            # a little cheaper, and the very bytes pitr wrote before the chain.
            yield self._cctx.compress(first)
            return
        cobj = self._cctx.compressobj(size=-1 if self._size is None else self._size)
        for chunk in itertools.chain((first, second or b""), chunks):
            if out := cobj.compress(chunk):
                yield out
        yield cobj.flush()


class ZstdDecompress:
    """The raw bytes of the zstd stream that passes.

    ``frames="all"`` (restore): the stream may hold several frames (pg_basebackup's
    server-side compression may write more than one). Input is pulled as the
    consumer asks and output comes in pieces of at most ``piece`` bytes, so a
    backup's run of zeros, which zstd stores 30 000 times smaller, never sits
    whole in memory.

    The two modes for a stored WAL object, which is held in memory anyway:
    ``"first"`` (archive-get) decompresses the first frame and ignores what follows;
    ``"exactly-one"`` is the proof a stored object must pass before archive-push
    answers "already archived" (docs/archiving.md, "What archive-push guarantees"): one
    complete frame and nothing after it.

    More than ``limit`` bytes of output (what the object's header declares) fail
    the stream.
    """

    def __init__(self, *, frames: Literal["all", "first", "exactly-one"] = "all",
                 piece: int = CHUNK, limit: int | None = None,
                 name: str | None = None) -> None:
        self._frames = frames
        self._piece = max(piece, 1)
        self._limit = limit
        self._name = f"{name}: stored object" if name else "stored stream"

    def apply(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        import zstandard

        out = 0
        try:
            for data in self._stream(chunks) if self._frames == "all" \
                    else self._one(chunks, strict=self._frames == "exactly-one"):
                out += len(data)
                if self._limit is not None and out > self._limit:
                    raise IntegrityError(f"{self._name} decompresses to more than the "
                                         f"{self._limit} bytes its header declares")
                yield data
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{self._name} does not decompress: {exc}") from exc

    def _stream(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        import zstandard

        source = io.BufferedReader(_ChunkReader(chunks), buffer_size=CHUNK)
        reader = zstandard.ZstdDecompressor().stream_reader(
            source, read_size=CHUNK, read_across_frames=True)
        while data := reader.read(self._piece):
            yield data

    def _one(self, chunks: Iterator[bytes], *, strict: bool) -> Iterator[bytes]:
        import zstandard

        if not strict:
            # the object is in memory: zstd's one-shot call is the fastest, and it reads
            # the first frame only
            body = b"".join(chunks)
            yield zstandard.ZstdDecompressor().decompress(body, max_output_size=self._piece)
            return
        dobj = zstandard.ZstdDecompressor().decompressobj(write_size=self._piece)
        stored = 0
        for chunk in chunks:
            stored += len(chunk)
            if dobj.eof:
                raise IntegrityError(f"{self._name} has {len(chunk)} stray bytes after "
                                     "its zstd frame")
            if data := dobj.decompress(chunk):
                yield data
        if not dobj.eof:
            raise IntegrityError(f"{self._name}'s zstd frame is cut off "
                                 f"({stored} bytes stored)")
        if dobj.unused_data:
            raise IntegrityError(f"{self._name} has {len(dobj.unused_data)} stray bytes "
                                 "after its zstd frame")


class _ChunkReader(io.RawIOBase):
    """An iterator of chunks as a raw file (the source of zstd's stream reader)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._rest = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        if not self._rest:
            self._rest = memoryview(next(self._chunks, b""))
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._rest))
        view[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


# -- threads -------------------------------------------------------------------------

_END = object()


class _Handoff:
    """A bounded queue between two threads that either side can abandon."""

    def __init__(self, depth: int) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self.stopped = threading.Event()

    def put(self, item: object) -> bool:
        while not self.stopped.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> object:
        """The next item; the end marker once the other side stopped."""
        while not self.stopped.is_set():
            try:
                return self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
        return _END

    def stop(self) -> None:
        self.stopped.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()


class ReadAhead:
    """Runs everything before it in a feeder thread, ``depth`` chunks ahead.

    The backup reads pg_basebackup's pipe (and taps it) in the feeder while the
    caller's thread compresses and uploads; an error of the source (pg_basebackup
    failing at EOF) is raised in the reader's thread, so ``Storage.put`` abandons
    the object.
    """

    def __init__(self, depth: int = 4) -> None:
        self._depth = depth

    def apply(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        hand = _Handoff(self._depth)

        def feed() -> None:
            item: object = _END
            try:
                for chunk in chunks:
                    if not hand.put(chunk):
                        return
            except BaseException as exc:  # handed to the reader, raised there
                item = exc
            hand.put(item)

        feeder = threading.Thread(target=feed, name="pitr-read-ahead", daemon=True)
        feeder.start()
        try:
            while (item := hand.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, bytes)
                yield item
            feeder.join()
        finally:
            hand.stop()


class Sink:
    """Ends a :class:`Tee` branch in ``consume(reader)``, a file-like view of the branch's
    bytes: one more upload of the very bytes the main stream stores (`pitr backup` into
    several repositories, docs/multiple-repositories.md), without a second pass."""

    def __init__(self, consume: Callable[[Readable], object]) -> None:
        self._consume = consume

    def apply(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        self._consume(_ChunkReader(chunks))
        yield from ()


class Tee:
    """Passes the stream on unchanged while ``filters`` run over a copy in a thread,
    their output discarded: the stored bytes of a server-compressed backup are
    kept as they are, and a side branch decompresses them to read and hash the tar.
    An error of the branch fails the stream."""

    def __init__(self, filters: Sequence[Filter], depth: int = 4) -> None:
        self._filters = filters
        self._depth = depth

    def apply(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        hand = _Handoff(self._depth)
        failed: list[BaseException] = []

        def side() -> Iterator[bytes]:
            while (item := hand.get()) is not _END:
                assert isinstance(item, bytes)
                yield item
            if hand.stopped.is_set():
                # the main stream was abandoned: the branch must not take what it has
                # seen for the whole stream (a Sink would store a truncated object)
                raise BrokenPipeError("the stream was abandoned before its end")

        def drain() -> None:
            branch: Iterator[bytes] = side()
            for f in self._filters:
                branch = f.apply(branch)
            try:
                for _ in branch:
                    pass
            except BaseException as exc:  # raised in the main stream below
                failed.append(exc)
                hand.stop()

        worker = threading.Thread(target=drain, name="pitr-tee", daemon=True)
        worker.start()
        try:
            for chunk in chunks:
                if not hand.put(chunk):
                    break
                yield chunk
            hand.put(_END)
            worker.join()
            if failed:
                raise failed[0]
        finally:
            hand.stop()
