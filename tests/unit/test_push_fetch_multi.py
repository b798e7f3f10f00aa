"""archive-push and archive-get over several repositories (docs/multiple-repositories.md),
with local-directory repositories; a repository that cannot work is one whose directory
lies below a regular file (every operation on it fails, as a lost mount would)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import walbytes

from pitr.errors import PitrError, WalNotFound
from pitr.repo import Repo
from pitr.storage.fs import FsStorage
from pitr.wal.fetch import archive_get, fetch_to_bytes
from pitr.wal.push import push_wal

SEG = 1 << 20
NAME = "000000010000000000000007"


def good(tmp_path: Path, name: str) -> Repo:
    return Repo(FsStorage(tmp_path / name), "t")


def broken(tmp_path: Path) -> Repo:
    (tmp_path / "not-a-dir").write_text("a file where the repository should be mounted")
    return Repo(FsStorage(tmp_path / "not-a-dir" / "repo"), "t")


def segment(tmp_path: Path, name: str = NAME) -> Path:
    p = tmp_path / "pg_wal" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(walbytes.segment_bytes(name, seg_size=SEG))
    return p


def datadir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "pg_wal").mkdir(parents=True)
    walbytes.write_pg_control(d, walbytes.SYSID)
    return d


def test_push_stores_in_every_repository_and_fails_while_one_cannot(tmp_path: Path) -> None:
    a, b, down = good(tmp_path, "a"), good(tmp_path, "b"), broken(tmp_path)
    seg = segment(tmp_path)
    with pytest.raises(PitrError):
        push_wal([a, down, b], seg, level=1, budget=2)
    # the repositories that work got it anyway: the retry is "already archived" there
    raw = seg.read_bytes()
    assert fetch_to_bytes(a, NAME, budget=2) == raw == fetch_to_bytes(b, NAME, budget=2)
    result = push_wal([a, b], seg, level=1, budget=2)
    assert result.status == "already-archived"
    c = good(tmp_path, "c")  # a repository added later: stored there, so "stored"
    assert push_wal([a, b, c], seg, level=1, budget=2).status == "stored"


def test_archive_get_falls_back_and_says_absent_only_when_all_prove_it(
        tmp_path: Path) -> None:
    a, b, down = good(tmp_path, "a"), good(tmp_path, "b"), broken(tmp_path)
    push_wal([a, b], segment(tmp_path), level=1, budget=2)
    a.storage.delete([a.wal_key(NAME)])  # only b has it
    d = datadir(tmp_path)
    dest = d / "pg_wal" / "RECOVERYXLOG"
    archive_get([down, a, b], NAME, dest, datadir=d, budget=1)
    assert dest.read_bytes() == (tmp_path / "pg_wal" / NAME).read_bytes()
    later = "000000010000000000000009"
    with pytest.raises(WalNotFound):
        archive_get([a, b], later, dest, datadir=d, budget=1)
    # one repository cannot answer: unknown, never absent
    with pytest.raises(PitrError) as err:
        archive_get([a, down, b], later, dest, datadir=d, budget=1)
    assert not isinstance(err.value, WalNotFound)
    # ... unless a restore plan chose a repository that proves it absent (--repo)
    with pytest.raises(WalNotFound, match="the repository the restore plan chose"):
        archive_get([a, down, b], later, dest, datadir=d, budget=1, planned=True)
    with pytest.raises(PitrError) as err:
        archive_get([down, a, b], later, dest, datadir=d, budget=1, planned=True)
    assert not isinstance(err.value, WalNotFound)


def test_each_repository_seals_with_its_own_key(tmp_path: Path) -> None:
    """[[repositories]] with its own [repositories.encryption] key
    (docs/multiple-repositories.md): each repository's objects open with its key alone."""
    import base64
    import os

    from pitr.config import load
    from pitr.crypto import HEADER_SIZE, SealedHeader, key_id
    from pitr.errors import KeyNotConfigured

    ka, kb = os.urandom(32), os.urandom(32)
    conf = tmp_path / "pitr.toml"
    conf.write_text(f"""
stanza = "t"
[repository]
url = "file://{tmp_path / 'first'}"
[encryption]
key = "{base64.b64encode(ka).decode()}"
[[repositories]]
name = "offsite"
url = "file://{tmp_path / 'offsite'}"
[repositories.encryption]
key = "{base64.b64encode(kb).decode()}"
""")
    cfg = load(conf, env={})
    repos = [Repo.open(cfg.for_repository(rc)) for rc in cfg.all_repositories]
    push_wal(repos, segment(tmp_path), level=1, budget=30)
    for repo, key in zip(repos, (ka, kb), strict=True):
        head = (tmp_path / repo.storage.url.removeprefix("file://") / repo.wal_key(NAME)
                ).read_bytes()[:HEADER_SIZE]
        assert SealedHeader.decode(head, repo.wal_key(NAME)).key_id == key_id(key)
    # the offsite copy opens with the offsite key, never with the first repository's
    assert fetch_to_bytes(repos[1], NAME, budget=30) == segment(tmp_path).read_bytes()
    wrong = Repo.open(cfg.for_repository("repo1"))
    wrong.sealed.inner = repos[1].sealed.inner  # the first key against offsite's objects
    with pytest.raises(KeyNotConfigured):
        fetch_to_bytes(wrong, NAME, budget=30)
