"""The sealed object format (pitr.crypto) and the sealing storage, against the real
local-directory driver: round trips around chunk boundaries, and every tampering the
format must refuse (docs/encryption.md)."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import walbytes

from pitr import crypto, stream
from pitr.config import EncryptionConfig
from pitr.errors import (
    RECOVERY_ABORT_OFFSET,
    DecryptionFailed,
    EncryptionMismatch,
    KeyNotConfigured,
    KeySourceError,
    UsageError,
)
from pitr.keys import generate
from pitr.repo import Repo
from pitr.storage.base import put_bytes, read_bytes
from pitr.storage.fs import FsStorage
from pitr.wal.commands import archive_get_exit_code
from pitr.wal.fetch import fetch_wal
from pitr.wal.push import push_wal

LOG = 10  # 1 KiB chunks: boundaries are cheap to reach
C = 1 << LOG
K1 = crypto.Keyring(bytes(range(32)))
K2 = crypto.Keyring(bytes(range(1, 33)))
SEG = 1 << 20


def seal(data: bytes, name: str = "s/wal/x", keyring: crypto.Keyring = K1,
         pieces: int = 1) -> bytes:
    step = max(1, len(data) // pieces)
    parts = [data[i:i + step] for i in range(0, len(data), step)] or [b""]
    return b"".join(crypto.Encrypt(keyring, name, chunk_log=LOG).apply(iter(parts)))


def chunks_of(sealed: bytes) -> tuple[bytes, list[bytes]]:
    body = sealed[crypto.HEADER_SIZE:]
    size = C + crypto.TAG
    return sealed[:crypto.HEADER_SIZE], [body[i:i + size] for i in range(0, len(body), size)]


sizes = st.one_of(st.integers(0, 4 * C + 3),
                  st.sampled_from([0, 1, C - 1, C, C + 1, 2 * C - 1, 2 * C, 2 * C + 1, 3 * C]))


@settings(max_examples=150, deadline=None)
@given(size=sizes, pieces=st.integers(1, 7), seed=st.binary(min_size=1, max_size=8))
def test_round_trip_around_chunk_boundaries(size: int, pieces: int, seed: bytes) -> None:
    data = (seed * (size // len(seed) + 1))[:size]
    sealed = seal(data, pieces=pieces)
    assert len(sealed) == crypto.sealed_size(size, LOG)
    # Decrypt sees the input in any chunking, as a Pipeline hands it
    for n in (1, 7, C, C + crypto.TAG, len(sealed) or 1):
        with stream.Pipeline(io.BytesIO(sealed), [crypto.Decrypt(K1, "s/wal/x")],
                             chunk=n) as pipe:
            assert pipe.read() == data
    assert data not in sealed or size < 8  # the plaintext is not stored


def test_default_chunk_round_trip_and_size() -> None:
    for n in (0, (1 << 20) - 1, 1 << 20, (1 << 20) + 1):
        data = os.urandom(n)
        s = crypto.seal(data, K1, "a/b")
        assert len(s) == crypto.sealed_size(n)
        assert crypto.unseal(s, K1, "a/b") == data


@settings(max_examples=120, deadline=None)
@given(size=st.integers(0, 3 * C + 5), data=st.data())
def test_any_truncation_is_refused(size: int, data: st.DataObject) -> None:
    sealed = seal(os.urandom(size))
    cut = data.draw(st.integers(0, len(sealed) - 1))
    with pytest.raises(DecryptionFailed):
        crypto.unseal(sealed[:cut], K1, "s/wal/x")


@settings(max_examples=120, deadline=None)
@given(size=st.integers(0, 3 * C + 5), data=st.data())
def test_any_flipped_bit_is_refused(size: int, data: st.DataObject) -> None:
    sealed = bytearray(seal(os.urandom(size)))
    pos = data.draw(st.integers(len(crypto.MAGIC), len(sealed) - 1))
    sealed[pos] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises((DecryptionFailed, KeyNotConfigured)):
        crypto.unseal(bytes(sealed), K1, "s/wal/x")


def test_reordered_dropped_repeated_and_appended_chunks_are_refused() -> None:
    sealed = seal(os.urandom(3 * C + 10))
    head, chunks = chunks_of(sealed)
    assert len(chunks) == 4
    for bad in ([chunks[1], chunks[0], *chunks[2:]],  # reordered
                [chunks[0], chunks[2], chunks[3]],  # one dropped
                [chunks[0], *chunks],  # one repeated
                chunks[:3],  # cut at a chunk boundary: the last chunk is not final
                [*chunks, chunks[3]]):  # spliced after the final chunk
        with pytest.raises(DecryptionFailed):
            crypto.unseal(head + b"".join(bad), K1, "s/wal/x")


def test_chunks_spliced_from_another_object_are_refused() -> None:
    a, b = seal(os.urandom(2 * C + 1)), seal(os.urandom(2 * C + 1))
    ha, ca = chunks_of(a)
    _, cb = chunks_of(b)
    with pytest.raises(DecryptionFailed):
        crypto.unseal(ha + ca[0] + cb[1] + ca[2], K1, "s/wal/x")


def test_renamed_object_is_refused() -> None:
    sealed = seal(b"segment bytes", name="s/wal/0000000100000000/000000010000000000000001.zst")
    with pytest.raises(DecryptionFailed, match="another name"):
        crypto.unseal(sealed, K1, "s/wal/0000000100000000/000000010000000000000002.zst")


def test_wrong_or_missing_key_is_named() -> None:
    sealed = seal(b"x" * 100)
    with pytest.raises(KeyNotConfigured, match=K1.current_id) as exc:
        crypto.unseal(sealed, K2, "s/wal/x")
    assert K2.current_id in exc.value.message
    # both keys configured: opens
    assert crypto.unseal(sealed, crypto.Keyring(K2.current, [K1.current]), "s/wal/x") == b"x" * 100


def test_rewrap_keeps_the_chunks_and_needs_only_the_new_key() -> None:
    data = os.urandom(2 * C + 7)
    sealed = seal(data)
    both = crypto.Keyring(K2.current, [K1.current])
    rewrapped = stream.run(sealed, [crypto.Rewrap(both, "s/wal/x")])
    assert len(rewrapped) == len(sealed)
    assert rewrapped[crypto.HEADER_SIZE:] == sealed[crypto.HEADER_SIZE:]  # data untouched
    assert crypto.SealedHeader.decode(rewrapped, "s/wal/x").key_id == K2.current_id
    assert crypto.unseal(rewrapped, K2, "s/wal/x") == data
    with pytest.raises(KeyNotConfigured):
        crypto.unseal(rewrapped, K1, "s/wal/x")


def test_keys_never_show(tmp_path: Path) -> None:
    path = tmp_path / "k"
    kid = generate(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text().strip()
    ring = crypto.load_keyring(EncryptionConfig(key_file=str(path)))
    assert ring is not None and ring.current_id == kid
    assert text not in repr(ring) and text in ring.secret_forms()
    with pytest.raises(UsageError):
        generate(path)  # never overwritten
    (tmp_path / "bad").write_text("c2VjcmV0LWJ1dC1zaG9ydA==\n")
    with pytest.raises(KeySourceError) as exc:
        crypto.load_keyring(EncryptionConfig(key_file=str(tmp_path / "bad")))
    assert "c2VjcmV0" not in exc.value.message
    from_cmd = crypto.load_keyring(EncryptionConfig(key_command=f"cat {path}"))
    assert from_cmd is not None and from_cmd.current_id == kid
    with pytest.raises(KeySourceError, match="exited with 3"):
        crypto.load_keyring(EncryptionConfig(key_command="exit 3"))
    with pytest.raises(KeySourceError, match="only one"):
        crypto.load_keyring(EncryptionConfig(key=text, key_file=str(path)))


# -- the sealing storage and repo.json ----------------------------------------------

def test_write_policy_follows_the_stanza() -> None:
    assert crypto.write_keyring(None, K1, "s") is K1
    assert crypto.write_keyring(None, None, "s") is None
    assert crypto.write_keyring({"encrypted": False}, None, "s") is None
    assert crypto.write_keyring({"encrypted": True, "keys": [K1.current_id]}, K1, "s") is K1
    with pytest.raises(EncryptionMismatch, match="unencrypted push"):
        crypto.write_keyring({"encrypted": True, "keys": [K1.current_id]}, None, "s")
    with pytest.raises(EncryptionMismatch, match="encrypted push"):
        crypto.write_keyring({"encrypted": False}, K1, "s")
    with pytest.raises(EncryptionMismatch, match="not one of them"):
        crypto.write_keyring({"encrypted": True, "keys": [K1.current_id]}, K2, "s")


def name_of(i: int) -> str:
    return f"0000000100000000000000{i:02X}"


def test_encrypted_stanza_end_to_end_on_the_fs_driver(tmp_path: Path) -> None:
    storage = FsStorage(tmp_path / "repo")
    repo = Repo(storage, "s", K1)
    wal = tmp_path / "wal"
    wal.mkdir()
    seg = walbytes.segment_bytes(name_of(1), seg_size=SEG, sysid=walbytes.SYSID, fill=b"pg")
    (wal / name_of(1)).write_bytes(seg)
    assert push_wal(repo, wal / name_of(1), level=3, budget=5).status == "stored"
    ident = json.loads((tmp_path / "repo/s/repo.json").read_bytes())  # stays plaintext
    assert ident["encrypted"] is True and ident["keys"] == [K1.current_id]
    stored = (tmp_path / "repo" / repo.wal_key(name_of(1))).read_bytes()
    assert stored.startswith(crypto.MAGIC) and b"pitr" not in stored[:200]
    # re-push: proven already archived through the seal
    assert push_wal(repo, wal / name_of(1), level=3, budget=5).status == "already-archived"
    # a flipped bit in the stored object: archive-get refuses it, a re-push repairs it
    path = tmp_path / "repo" / repo.wal_key(name_of(1))
    at = crypto.HEADER_SIZE + 5
    path.write_bytes(stored[:at] + bytes([stored[at] ^ 1]) + stored[at + 1:])
    with pytest.raises(DecryptionFailed):
        fetch_wal(repo, name_of(1), tmp_path / "no", budget=5)
    assert not (tmp_path / "no").exists()
    assert push_wal(repo, wal / name_of(1), level=3, budget=5).status == "stored"
    stored = path.read_bytes()
    fetch_wal(Repo(storage, "s", K1), name_of(1), tmp_path / "got", budget=5)
    assert (tmp_path / "got").read_bytes() == seg

    # no key / wrong key: named errors, archive-get above 125, nothing written
    for keyring, err in ((None, KeyNotConfigured), (K2, KeyNotConfigured)):
        with pytest.raises(err) as exc:
            fetch_wal(Repo(storage, "s", keyring), name_of(1), tmp_path / "no", budget=5)
        assert archive_get_exit_code(exc.value, standby=False) \
            == RECOVERY_ABORT_OFFSET + exc.value.exit_code > 125
        assert not (tmp_path / "no").exists()
    # an unencrypted push into the encrypted stanza is refused
    (wal / name_of(2)).write_bytes(
        walbytes.segment_bytes(name_of(2), seg_size=SEG, sysid=walbytes.SYSID))
    with pytest.raises(EncryptionMismatch):
        push_wal(Repo(storage, "s"), wal / name_of(2), level=3, budget=5)
    # a segment copied under another name is refused
    (tmp_path / "repo" / repo.wal_key(name_of(2))).write_bytes(stored)
    with pytest.raises(DecryptionFailed):
        fetch_wal(repo, name_of(2), tmp_path / "no", budget=5)
    # a plaintext object planted in a stanza encrypted from the start is refused
    put_bytes(storage, "s/pins/x", b"{}")
    with pytest.raises(DecryptionFailed, match="unencrypted"):
        read_bytes(Repo(storage, "s", K1).storage, "s/pins/x")


def test_turning_encryption_on_keeps_old_objects_readable(tmp_path: Path) -> None:
    storage = FsStorage(tmp_path / "repo")
    plain = Repo(storage, "s")
    plain.ensure_identity(walbytes.SYSID, 15, SEG)
    put_bytes(plain.storage, "s/pins/old", b"before")
    with pytest.raises(EncryptionMismatch, match="encrypted push") as exc:
        put_bytes(Repo(storage, "s", K1).storage, "s/pins/new", b"after")
    assert "pitr key rotate" in (exc.value.hint or "")
    doc = json.loads(read_bytes(storage, "s/repo.json"))
    doc.update(encrypted=True, keys=[K1.current_id], plaintext_objects=True)  # what rotate does
    put_bytes(storage, "s/repo.json", json.dumps(doc).encode())
    enc = Repo(storage, "s", K1)
    put_bytes(enc.storage, "s/pins/new", b"after")
    assert read_bytes(storage, "s/pins/new").startswith(crypto.MAGIC)
    assert read_bytes(enc.storage, "s/pins/old") == b"before"
    assert read_bytes(enc.storage, "s/pins/new") == b"after"
    with pytest.raises(KeyNotConfigured):
        read_bytes(Repo(storage, "s").storage, "s/pins/new")


# -- pitr key rotate on an existing unencrypted stanza, then --rewrap ---------------

def test_rotate_turns_encryption_on_then_rewrap_retires_the_old_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    from pitr.config import Config, RepositoryConfig
    from pitr.keys import rotate

    def cfg(current: crypto.Keyring, old: list[Path] | None = None) -> Config:
        return Config(stanza="s", repository=RepositoryConfig(url=f"file://{tmp_path}/repo"),
                      encryption=EncryptionConfig(
                          key=base64.b64encode(current.current).decode(),
                          old_key_files=",".join(str(p) for p in old or [])))

    storage = FsStorage(tmp_path / "repo")
    plain = Repo(storage, "s")
    plain.ensure_identity(walbytes.SYSID, 15, SEG)
    put_bytes(plain.storage, "s/pins/old", b"before")

    first = rotate(cfg(K1), rewrap=False)
    assert first.turned_on and first.keys == [K1.current_id]
    assert rotate(cfg(K1), rewrap=False).added is False  # a second run changes nothing
    put_bytes(Repo.open(cfg(K1)).storage, "s/pins/k1", b"under key 1")
    big = os.urandom(3 << 20)  # several chunks, rewrapped by a streamed copy
    put_bytes(Repo.open(cfg(K1)).storage, "s/backups/b/base.tar.zst", big)

    k1_file = tmp_path / "k1"
    k1_file.write_text(base64.b64encode(K1.current).decode())
    second = rotate(cfg(K2, [k1_file]), rewrap=False)
    assert second.added and second.keys == [K2.current_id, K1.current_id]
    both = Repo.open(cfg(K2, [k1_file]))
    put_bytes(both.storage, "s/pins/k2", b"under key 2")
    assert read_bytes(both.storage, "s/pins/k1") == b"under key 1"

    monkeypatch.setattr("pitr.keys.WHOLE_IN_MEMORY", 1 << 20)  # the big one: streamed
    done = rotate(cfg(K2, [k1_file]), rewrap=True)
    assert done.rewrapped == 2 and done.plaintext == 1 and done.retired == [K1.current_id]
    assert done.keys == [K2.current_id]
    only_new = Repo.open(cfg(K2)).storage
    assert read_bytes(only_new, "s/pins/k1") == b"under key 1"
    assert read_bytes(only_new, "s/backups/b/base.tar.zst") == big
    assert read_bytes(only_new, "s/pins/old") == b"before"  # left as it was
    with pytest.raises(EncryptionMismatch, match="not one of them"):
        put_bytes(Repo.open(cfg(K1)).storage, "s/pins/again", b"x")


def test_check_opens_reads_only_the_header_and_names_the_key(tmp_path: Path) -> None:
    storage = FsStorage(tmp_path / "repo")
    put_bytes(Repo(storage, "s", K1).storage, "s/backups/b/base.tar.zst", os.urandom(3 * C))
    Repo(storage, "s", K1).sealed.check_opens("s/backups/b/base.tar.zst")
    with pytest.raises(KeyNotConfigured, match=K1.current_id):
        Repo(storage, "s", K2).sealed.check_opens("s/backups/b/base.tar.zst")
    path = tmp_path / "repo/s/backups/b/base.tar.zst"
    data = path.read_bytes()
    path.write_bytes(data[:40] + bytes([data[40] ^ 1]) + data[41:])  # inside the wrapped key
    with pytest.raises(DecryptionFailed):
        Repo(storage, "s", K1).sealed.check_opens("s/backups/b/base.tar.zst")


def test_the_agents_warm_repository_seals_with_its_keys(tmp_path: Path) -> None:
    from pitr.wal.agent import IdentityCache, WarmRepo

    storage, cache = FsStorage(tmp_path / "repo"), IdentityCache()
    wal = tmp_path / "wal"
    wal.mkdir()
    for i in (1, 2):
        (wal / name_of(i)).write_bytes(
            walbytes.segment_bytes(name_of(i), seg_size=SEG, sysid=walbytes.SYSID))
        # one handle per segment, as the agent's workers make them, one identity check
        repo = WarmRepo(storage, "s", cache, K1)
        assert push_wal(repo, wal / name_of(i), level=3, budget=5).status == "stored"
        assert read_bytes(storage, repo.wal_key(name_of(i))).startswith(crypto.MAGIC)
    # the second handle took the stanza's mode from the shared cache, not from a GET
    (tmp_path / "repo/s/repo.json").unlink()
    (wal / name_of(3)).write_bytes(
        walbytes.segment_bytes(name_of(3), seg_size=SEG, sysid=walbytes.SYSID))
    with pytest.raises(EncryptionMismatch):
        push_wal(WarmRepo(storage, "s", cache, None), wal / name_of(3), level=3, budget=5)
