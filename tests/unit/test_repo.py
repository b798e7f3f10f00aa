from __future__ import annotations

from pathlib import Path

import pytest

from pitr.errors import AlreadyExists, NotFound, SystemIdMismatch
from pitr.repo import Repo
from pitr.storage.base import put_bytes, read_bytes
from pitr.storage.fs import FsStorage


def test_wal_keys_round_trip() -> None:
    repo = Repo(FsStorage(Path("/nonexistent")), "main")
    for name in ["000000010000000000000003", "00000002.history",
                 "000000010000000000000003.partial",
                 "000000010000000000000002.00000028.backup"]:
        key = repo.wal_key(name)
        assert key.startswith("main/wal/")
        assert Repo.wal_name_of(key) == name
    assert repo.wal_key("000000010000000A00000003") == \
        "main/wal/000000010000000A/000000010000000A00000003.zst"
    assert Repo.wal_name_of("main/backups/x/manifest.json") is None
    with pytest.raises(ValueError):
        repo.wal_key("../../etc/passwd")


def test_identity_claimed_once(tmp_path: Path) -> None:
    repo = Repo(FsStorage(tmp_path), "main")
    assert repo.read_identity() is None
    ident = repo.ensure_identity(7001, 15, 16 << 20)
    assert ident.system_id == "7001"
    assert repo.ensure_identity(7001, 15, 16 << 20).system_id == "7001"
    with pytest.raises(SystemIdMismatch) as err:
        repo.ensure_identity(7002, 15, 16 << 20)
    assert "7001" in err.value.message and "7002" in err.value.message


def test_fs_storage_conditional_and_atomic(tmp_path: Path) -> None:
    st = FsStorage(tmp_path)
    put_bytes(st, "a/b/c", b"one", if_absent=True)
    with pytest.raises(AlreadyExists):
        put_bytes(st, "a/b/c", b"two", if_absent=True)
    assert read_bytes(st, "a/b/c") == b"one"
    put_bytes(st, "a/b/c", b"three")
    assert read_bytes(st, "a/b/c") == b"three"
    assert [o.key for o in st.list("a/")] == ["a/b/c"]
    assert not [p for p in (tmp_path / "a" / "b").iterdir() if p.name != "c"]
    assert (tmp_path / "a" / "b" / "c").stat().st_mode & 0o777 == 0o600
    with pytest.raises(NotFound):
        st.stat("a/missing")
    assert st.delete(["a/b/c", "a/missing"]) == 1
