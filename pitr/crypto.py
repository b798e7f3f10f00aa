"""Client-side encryption: AES-256-GCM in a STREAM-like chunked format (docs/encryption.md).

Every object pitr stores, except a stanza's ``repo.json``, is sealed when a key is
configured: the bucket's owner sees sizes and names, never a byte of the database.

The object format (integers big-endian)::

    magic       8   b"PITRENC1"
    key id      8   first 8 bytes of sha256("pitr key id" || repository key)
    wrap nonce 12   random
    wrapped key 48  AES-256-GCM(repository key, wrap nonce, data key,
                                aad = magic || key id || object key name)
    prefix      7   random, per object
    chunk log   1   log2 of the plaintext chunk size (20: 1 MiB)
    chunks ...      AES-256-GCM(data key, nonce = prefix || counter (4) || final (1),
                                aad = magic || prefix || chunk log || object key name)

Each chunk holds ``2**chunk_log`` plaintext bytes plus a 16-byte tag, the last one
fewer (an empty object is one empty final chunk). The counter in the nonce makes a
reordered or repeated chunk fail authentication, the final flag makes a cut at a
chunk boundary or bytes spliced after the end fail it, and the object's key name in
the associated data refuses a valid object copied under another name.

The wrapped data key is a fixed-size field that no chunk authenticates (the chunks
bind only to the data key itself, through GCM), so ``pitr key rotate --rewrap``
replaces those 68 header bytes and copies the chunks verbatim: the data is not
re-encrypted. Object stores cannot patch an object in place, so the rewrap still
rewrites each object (a streamed copy, at about the speed of a download plus an
upload); it never needs the plaintext.

:class:`SealedStorage` applies the format to a driver: the per-object header decides
how an object is read (sealed or stored before encryption was turned on), the
repository's ``repo.json`` decides how new objects are written. The keys are a property
of one opened repository handle (:meth:`pitr.repo.Repo.open`), never global.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import itertools
import json
import os
import struct
import subprocess
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from pitr import stream
from pitr.errors import (
    DecryptionFailed,
    EncryptionMismatch,
    IntegrityError,
    KeyNotConfigured,
    KeySourceError,
    NotFound,
)
from pitr.storage.base import ObjectInfo, Storage

if TYPE_CHECKING:
    from pitr.config import EncryptionConfig

MAGIC = b"PITRENC1"
KEY_BYTES = 32
TAG = 16
ID_BYTES = 8
PREFIX_BYTES = 7
_WRAP = struct.Struct(f">{ID_BYTES}s12s{KEY_BYTES + TAG}s")
_TAIL = struct.Struct(f">{PREFIX_BYTES}sB")
HEADER_SIZE = len(MAGIC) + _WRAP.size + _TAIL.size
CHUNK_LOG = 20
MAX_CHUNKS = 1 << 32


def key_id(key: bytes) -> str:
    """The public fingerprint of a repository key (16 hex digits), as repo.json records it."""
    return hashlib.sha256(b"pitr key id\0" + key).digest()[:ID_BYTES].hex()


def _aesgcm(key: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # imported on first use

    return AESGCM(key)


def _invalid_tag() -> type[Exception]:
    from cryptography.exceptions import InvalidTag

    return InvalidTag


class Keyring:
    """The repository keys one handle may use: ``current`` seals, all of them open.

    Holds key bytes only in memory; its repr names key ids, never a key.
    """

    def __init__(self, current: bytes, others: Iterable[bytes] = ()) -> None:
        self.current = current
        self.current_id = key_id(current)
        self._keys = {key_id(k): k for k in (*others, current)}

    @property
    def ids(self) -> list[str]:
        return sorted(self._keys)

    def get(self, kid: str, name: str) -> bytes:
        try:
            return self._keys[kid]
        except KeyError:
            raise KeyNotConfigured(
                f"{name}: sealed with key {kid}; this host has "
                f"{', '.join(self.ids)} configured",
                hint="configure that key (encryption.old_key_files), or restore the "
                     "repository key from its safe place (docs/encryption.md)") from None

    def secret_forms(self) -> list[str]:
        """The keys as text (base64, hex), for the log's scrubber."""
        return [form for k in self._keys.values()
                for form in (base64.b64encode(k).decode(), k.hex())]

    def __repr__(self) -> str:
        return f"Keyring(current={self.current_id}, ids={self.ids})"


# -- the format ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SealedHeader:
    key_id: str
    wrap_nonce: bytes
    wrapped: bytes
    prefix: bytes
    chunk_log: int

    def encode(self) -> bytes:
        return (MAGIC + _WRAP.pack(bytes.fromhex(self.key_id), self.wrap_nonce, self.wrapped)
                + _TAIL.pack(self.prefix, self.chunk_log))

    @classmethod
    def decode(cls, head: bytes, name: str) -> SealedHeader:
        if len(head) < HEADER_SIZE or not head.startswith(MAGIC):
            raise DecryptionFailed(f"{name}: sealed object is truncated inside its header")
        kid, nonce, wrapped = _WRAP.unpack_from(head, len(MAGIC))
        prefix, chunk_log = _TAIL.unpack_from(head, len(MAGIC) + _WRAP.size)
        if not 10 <= chunk_log <= 26:
            raise DecryptionFailed(f"{name}: sealed object has a damaged header")
        return cls(kid.hex(), nonce, wrapped, prefix, chunk_log)

    def wrap_aad(self, name: str) -> bytes:
        return MAGIC + bytes.fromhex(self.key_id) + name.encode()

    def chunk_aad(self, name: str) -> bytes:
        return MAGIC + _TAIL.pack(self.prefix, self.chunk_log) + name.encode()

    def data_key(self, keyring: Keyring, name: str) -> bytes:
        kek = keyring.get(self.key_id, name)
        try:
            return cast(bytes, _aesgcm(kek).decrypt(self.wrap_nonce, self.wrapped,
                                                    self.wrap_aad(name)))
        except _invalid_tag():
            raise DecryptionFailed(
                f"{name}: its data key does not open with key {self.key_id}: the object "
                "was stored under another name or its header was altered",
                hint="the object in the repository is not the one pitr wrote under this "
                     "name; restore it from another copy") from None


def new_header(keyring: Keyring, name: str, chunk_log: int = CHUNK_LOG) -> tuple[SealedHeader,
                                                                                 bytes]:
    """A fresh header (and its data key) for the object stored under ``name``."""
    dek = os.urandom(KEY_BYTES)
    return wrap(keyring.current, dek, name, os.urandom(PREFIX_BYTES), chunk_log), dek


def wrap(kek: bytes, dek: bytes, name: str, prefix: bytes, chunk_log: int) -> SealedHeader:
    partial = SealedHeader(key_id(kek), os.urandom(12), b"", prefix, chunk_log)
    wrapped = _aesgcm(kek).encrypt(partial.wrap_nonce, dek, partial.wrap_aad(name))
    return SealedHeader(partial.key_id, partial.wrap_nonce, wrapped, prefix, chunk_log)


def sealed_size(plain: int, chunk_log: int = CHUNK_LOG) -> int:
    """The stored size of ``plain`` bytes once sealed (a backup checks its upload by it)."""
    chunks = max(1, -(-plain // (1 << chunk_log)))
    return HEADER_SIZE + plain + TAG * chunks


def _nonce(prefix: bytes, counter: int, final: bool) -> bytes:
    return prefix + counter.to_bytes(4, "big") + (b"\x01" if final else b"\x00")


def _blocks(chunks: Iterator[bytes] | Iterator[bytes | memoryview],
            size: int) -> Iterator[tuple[bytes | memoryview, bool]]:
    """``chunks`` regrouped into blocks of ``size`` bytes and (last, flagged final) the
    rest: 0..size bytes, never held back empty after a full block unless nothing came.

    A block inside one input chunk is a view of it (no copy); only a block that spans
    chunks is joined, once. Reads that match the block size (:meth:`SealedStorage.open`)
    copy nothing: the format's cost stays AES-GCM's own (docs/encryption.md, "Cost").
    """
    parts: list[memoryview] = []
    have = 0
    for chunk in chunks:
        if not chunk:
            continue
        parts.append(memoryview(chunk))
        have += len(chunk)
        while have > size:
            first = parts[0]
            if len(first) >= size:
                block: bytes | memoryview = first[:size]
                if len(first) > size:
                    parts[0] = first[size:]
                else:
                    parts.pop(0)
            else:
                pieces, need = [], size
                while need:
                    part = parts[0]
                    pieces.append(part[:need])
                    if len(part) > need:
                        parts[0] = part[need:]
                        need = 0
                    else:
                        parts.pop(0)
                        need -= len(part)
                block = b"".join(pieces)
            have -= size
            yield block, False
    yield b"".join(parts), True


class Encrypt:
    """Filter: the header, then the input sealed in chunks (the last held back and
    sealed with the final flag once the input ends)."""

    def __init__(self, keyring: Keyring, name: str, *, chunk_log: int = CHUNK_LOG) -> None:
        self.keyring, self.name, self.chunk_log = keyring, name, chunk_log

    def apply(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        header, dek = new_header(self.keyring, self.name, self.chunk_log)
        gcm, aad = _aesgcm(dek), header.chunk_aad(self.name)
        yield header.encode()
        for counter, (block, final) in enumerate(_blocks(chunks, 1 << self.chunk_log)):
            if counter >= MAX_CHUNKS:  # pragma: no cover - 4 PiB at 1 MiB chunks
                raise DecryptionFailed(f"{self.name}: too large to seal")
            yield gcm.encrypt(_nonce(header.prefix, counter, final), block, aad)


class Decrypt:
    """Filter: the inverse of :class:`Encrypt`; any truncation, reordering, splice,
    rename or altered byte raises :class:`DecryptionFailed` (a missing key
    :class:`KeyNotConfigured`) before the bytes concerned are passed on."""

    def __init__(self, keyring: Keyring, name: str) -> None:
        self.keyring, self.name = keyring, name
        self.header: SealedHeader | None = None

    def apply(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        it = iter(chunks)
        first = b""
        for chunk in it:  # once, unless the first chunks are shorter than the header
            first = first + chunk if first else chunk
            if len(first) >= HEADER_SIZE:
                break
        view = memoryview(first)
        header = SealedHeader.decode(bytes(view[:HEADER_SIZE]), self.name)  # raises if cut
        self.header = header
        gcm = _aesgcm(header.data_key(self.keyring, self.name))
        aad = header.chunk_aad(self.name)
        size = (1 << header.chunk_log) + TAG
        body: Iterator[bytes | memoryview] = itertools.chain([view[HEADER_SIZE:]], it)
        for counter, (block, final) in enumerate(_blocks(body, size)):
            if final and len(block) < TAG:
                raise DecryptionFailed(f"{self.name}: sealed object is truncated")
            yield self._open(gcm, header.prefix, counter, final, block, aad)

    def _open(self, gcm: Any, prefix: bytes, counter: int, final: bool,
              data: bytes | memoryview, aad: bytes) -> bytes:
        try:
            return cast(bytes, gcm.decrypt(_nonce(prefix, counter, final), data, aad))
        except _invalid_tag():
            where = "its end" if final else f"chunk {counter}"
            raise DecryptionFailed(
                f"{self.name}: sealed object fails authentication at {where}: it was "
                "truncated, reordered, extended or altered",
                hint="the object in the repository is damaged or tampered with; restore "
                     "it from another copy") from None


class Rewrap:
    """Filter: the same sealed object with its data key wrapped by ``keyring.current``;
    the chunks pass through untouched (never decrypted)."""

    def __init__(self, keyring: Keyring, name: str) -> None:
        self.keyring, self.name = keyring, name

    def apply(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        buf = bytearray()
        done = False
        for chunk in chunks:
            if done:
                yield chunk
                continue
            buf += chunk
            if len(buf) >= HEADER_SIZE:
                old = SealedHeader.decode(bytes(buf[:HEADER_SIZE]), self.name)
                dek = old.data_key(self.keyring, self.name)
                yield wrap(self.keyring.current, dek, self.name, old.prefix,
                           old.chunk_log).encode()
                yield bytes(buf[HEADER_SIZE:])
                done = True
        if not done:
            SealedHeader.decode(bytes(buf), self.name)


def seal(data: bytes, keyring: Keyring, name: str) -> bytes:
    return stream.run(data, [Encrypt(keyring, name)])


def unseal(data: bytes, keyring: Keyring, name: str) -> bytes:
    return stream.run(data, [Decrypt(keyring, name)])


# -- keys ---------------------------------------------------------------------

def generate_key() -> str:
    """A new repository key, base64 (what ``pitr key generate`` writes)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def parse_key(text: bytes, source: str) -> bytes:
    """32 bytes from a key's base64 text (or the raw 32 bytes); never echoes the text."""
    stripped = text.strip()
    try:
        key = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES and len(text) == KEY_BYTES:
        key = text
    if len(key) != KEY_BYTES:
        raise KeySourceError(f"{source}: not a repository key (expected 32 bytes, base64)",
                             hint="create one with `pitr key generate FILE`")
    return key


def _read_key_file(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return parse_key(fh.read(4096), f"key file {path}")
    except OSError as exc:
        raise KeySourceError(f"key file {path}: cannot be read ({exc.strerror})",
                             hint="the key file must be readable by the user pitr runs as "
                                  "(mode 0600)") from None


def _run_key_command(command: str) -> bytes:
    try:
        done = subprocess.run(["/bin/sh", "-c", command], stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KeySourceError(f"encryption.key_command could not run: {type(exc).__name__}") \
            from None
    if done.returncode != 0:
        raise KeySourceError(f"encryption.key_command exited with {done.returncode}",
                             hint="run the command by hand as the same user to see why")
    return parse_key(done.stdout, "the output of encryption.key_command")


def load_keyring(cfg: EncryptionConfig) -> Keyring | None:
    """The configured keys (None: encryption not configured). The current key comes from
    exactly one of ``key`` (PITR_ENCRYPTION_KEY), ``key_file`` or ``key_command``."""
    sources = [s for s in (cfg.key, cfg.key_file, cfg.key_command) if s]
    if len(sources) > 1:
        raise KeySourceError("set only one of PITR_ENCRYPTION_KEY (encryption.key), "
                             "encryption.key_file and encryption.key_command")
    old = [p.strip() for p in cfg.old_key_files.split(",") if p.strip()]
    if not sources:
        if old:
            raise KeySourceError("encryption.old_key_files is set but no current key is")
        return None
    if cfg.key:
        current = parse_key(cfg.key.encode(), "PITR_ENCRYPTION_KEY")
    elif cfg.key_file:
        current = _read_key_file(cfg.key_file)
    else:
        current = _run_key_command(cfg.key_command)
    return Keyring(current, [_read_key_file(p) for p in old])


# -- what repo.json says, and the storage that applies it -----------------------

def write_keyring(ident: dict[str, Any] | None, keyring: Keyring | None,
                  stanza: str) -> Keyring | None:
    """How a new object is written: sealed with ``keyring`` or (None) as it is.

    The repository decides (docs/encryption.md, "Mixed repositories"); a host whose
    configuration disagrees with it is refused rather than writing the other kind.
    """
    encrypted = bool(ident and ident.get("encrypted"))
    if ident is None:
        return keyring
    if not encrypted:
        if keyring is not None:
            raise EncryptionMismatch(
                f"stanza {stanza!r} is not encrypted, but this host has an encryption key "
                "configured: an encrypted push into it is refused",
                hint="turn encryption on for the stanza with `pitr key rotate` (objects "
                     "stored before stay readable), or remove the key from this host")
        return None
    if keyring is None:
        raise EncryptionMismatch(
            f"stanza {stanza!r} is encrypted, but this host has no encryption key "
            "configured: an unencrypted push into it is refused",
            hint="configure encryption.key_file, encryption.key_command or "
                 "PITR_ENCRYPTION_KEY (docs/encryption.md)")
    keys = list(ident.get("keys") or [])
    if keyring.current_id not in keys:
        raise EncryptionMismatch(
            f"stanza {stanza!r} is sealed with key {', '.join(keys)}; this host's key "
            f"{keyring.current_id} is not one of them",
            hint="after `pitr key rotate` every host needs the new key; or this host's "
                 "key is not the repository's (docs/encryption.md)")
    return keyring


class _Joined(io.RawIOBase):
    """``head`` then the rest of ``src`` (the bytes peeked to tell sealed from plain)."""

    def __init__(self, head: bytes, src: BinaryIO) -> None:
        super().__init__()
        self._head, self._src = head, src

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1, /) -> bytes:
        if n is None or n < 0:
            out, self._head = self._head + self._src.read(), b""
            return out
        if self._head:
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._src.read(n)

    def readinto(self, buffer: Any, /) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._src.close()
        super().close()


def _read_upto(src: BinaryIO, n: int) -> bytes:
    """``n`` bytes, fewer only at the end (a body may return short reads)."""
    out = src.read(n)
    while 0 < len(out) < n and (more := src.read(n - len(out))):
        out += more
    return out


class _Unsealed(stream.Pipeline):
    def __init__(self, src: BinaryIO, filters: list[stream.Filter]) -> None:
        super().__init__(src, filters, chunk=(1 << CHUNK_LOG) + TAG)
        self._src = src

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._src.close()


class SealedStorage:
    """A :class:`~pitr.storage.base.Storage` that seals what it stores and opens what
    it reads; ``repo.json`` of every stanza passes through as it is.

    ``stat``/``list`` report the stored (sealed) sizes. The write mode is decided
    once per handle from the stanza's repo.json (:func:`write_keyring`); the
    repository handle tells it what it read so no extra request is made.
    """

    def __init__(self, inner: Storage, keyring: Keyring | None, stanza: str) -> None:
        self.inner, self.keyring, self.stanza = inner, keyring, stanza
        self.url = inner.url
        self._identity_key = f"{stanza}/repo.json"
        self._ident: dict[str, Any] | None = None
        self._known = False
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:  # driver extras (e.g. the S3 client's tests)
        return getattr(self.inner, name)

    @staticmethod
    def _plain_key(key: str) -> bool:
        return key.endswith("/repo.json") and key.count("/") == 1

    def learn_identity(self, ident: dict[str, Any] | None) -> None:
        with self._lock:
            self._ident, self._known = ident, True

    def identity(self) -> dict[str, Any] | None:
        with self._lock:
            if self._known:
                return self._ident
        try:
            with self.inner.open(self._identity_key) as fh:
                doc = json.loads(fh.read())
        except NotFound:
            doc = None
        except ValueError as exc:  # never guess the stanza's mode from a damaged file
            raise IntegrityError(f"{self._identity_key}: not valid JSON") from exc
        self.learn_identity(doc)
        return doc

    def sealing(self) -> Keyring | None:
        return write_keyring(self.identity(), self.keyring, self.stanza)

    def stored_size(self, plain: int) -> int:
        """What ``plain`` bytes written now occupy in the repository."""
        return plain if self.sealing() is None else sealed_size(plain)

    # -- the Storage protocol ----------------------------------------------
    def put(self, key: str, src: stream.Readable, *, if_absent: bool = False,
            storage_class: str = "") -> int:
        keyring = None if self._plain_key(key) else self.sealing()
        if keyring is None:
            return self.inner.put(key, src, if_absent=if_absent, storage_class=storage_class)
        with stream.Pipeline(src, [Encrypt(keyring, key)]) as pipe:
            return self.inner.put(key, pipe, if_absent=if_absent, storage_class=storage_class)

    def open(self, key: str) -> BinaryIO:
        src = self.inner.open(key)
        if self._plain_key(key):
            return src
        try:
            head = _read_upto(src, len(MAGIC))
            if head != MAGIC:
                self._plain_allowed(key)
                return cast(BinaryIO, _Joined(head, src))
            keyring = self._read_keyring(key)
            # the whole header first, then reads of one sealed chunk each: aligned with
            # the chunks, so Decrypt copies nothing (see _blocks)
            head += _read_upto(src, HEADER_SIZE - len(MAGIC))
        except BaseException:
            src.close()
            raise
        return cast(BinaryIO, _Unsealed(cast(BinaryIO, _Joined(head, src)),
                                        [Decrypt(keyring, key)]))

    def read_with_etag(self, key: str) -> tuple[bytes, str]:
        data, etag = self.inner.read_with_etag(key)
        return self.unseal_bytes(key, data), etag

    def put_if_match(self, key: str, data: bytes, etag: str) -> int:
        keyring = None if self._plain_key(key) else self.sealing()
        return self.inner.put_if_match(key, data if keyring is None
                                       else seal(data, keyring, key), etag)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "", *, start_after: str | None = None,
             end_before: str | None = None) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix, start_after=start_after, end_before=end_before)

    def delete(self, keys: Iterable[str]) -> int:
        return self.inner.delete(keys)

    def cleanup_incomplete(self, prefix: str = "") -> int:
        return self.inner.cleanup_incomplete(prefix)

    # -- helpers -----------------------------------------------------------
    def check_opens(self, key: str) -> None:
        """Prove the configured keys open ``key`` (its header and data key), reading
        only the header: a restore checks every backup object before it writes."""
        with self.inner.open(key) as fh:
            head = _read_upto(fh, HEADER_SIZE)
        if not head.startswith(MAGIC):
            self._plain_allowed(key)
            return
        SealedHeader.decode(head, key).data_key(self._read_keyring(key), key)

    def unseal_bytes(self, key: str, data: bytes) -> bytes:
        if self._plain_key(key):
            return data
        if not data.startswith(MAGIC):
            self._plain_allowed(key)
            return data
        return unseal(data, self._read_keyring(key), key)

    def _read_keyring(self, key: str) -> Keyring:
        if self.keyring is None:
            raise KeyNotConfigured(
                f"{key}: the object is encrypted and this host has no encryption key "
                "configured",
                hint="configure encryption.key_file, encryption.key_command or "
                     "PITR_ENCRYPTION_KEY (docs/encryption.md)")
        return self.keyring

    def _plain_allowed(self, key: str) -> None:
        """An object stored without encryption is read as it is, unless the stanza was
        encrypted from its first object on (then someone put it there)."""
        if self.keyring is None:
            return
        ident = self.identity()
        if ident and ident.get("encrypted") and not ident.get("plaintext_objects"):
            raise DecryptionFailed(
                f"{key}: stored unencrypted in a stanza that is encrypted from its first "
                "object on: refused",
                hint="the object was not written by pitr; someone with write access to "
                     "the bucket replaced it")
