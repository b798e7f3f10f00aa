"""The fault-injecting proxy (tests/support/faultproxy.py) itself, in front of the real
SeaweedFS server, driven through pitr's own S3 driver: each rule does what it says, and
clearing it brings the real server back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.faultproxy import FaultProxy, Rule
from test_storage_contract import repo_config

from pitr.errors import AlreadyExists, NotFound, StorageError, TransientStorageError
from pitr.storage import open_storage, put_bytes, read_bytes


@pytest.fixture
def proxied(s3_server: Any) -> Iterator[tuple[FaultProxy, Any, Any]]:
    from conftest import s3_repo_for

    section = s3_repo_for(s3_server)
    with FaultProxy.for_server(s3_server) as proxy:
        cfg = repo_config(section, endpoint_url=proxy.endpoint, request_timeout=2, timeout=3)
        direct = open_storage(repo_config(section))
        yield proxy, open_storage(cfg), direct


def test_forwards_everything_without_rules(proxied: Any) -> None:
    proxy, storage, direct = proxied
    data = bytes(range(256)) * 4000  # ~1 MB, one PutObject
    put_bytes(storage, "a/b", data)
    assert read_bytes(storage, "a/b") == data == read_bytes(direct, "a/b")
    assert storage.stat("a/b").size == len(data)
    assert [o.key for o in storage.list("a/")] == ["a/b"]
    with pytest.raises(AlreadyExists):  # the real server's 412 comes through
        put_bytes(storage, "a/b", b"other", if_absent=True)
    assert proxy.count("forward", "PUT") == 2


def test_not_found_and_error_rules(proxied: Any) -> None:
    proxy, storage, direct = proxied
    put_bytes(direct, "k", b"here")
    proxy.set_rules(Rule("not_found"))
    with pytest.raises(NotFound):
        read_bytes(storage, "k")
    with pytest.raises(NotFound):
        storage.stat("k")
    proxy.set_rules(Rule("error", method="GET"))
    with pytest.raises(TransientStorageError):
        read_bytes(storage, "k")
    assert storage.stat("k").size == 4  # HEAD is not matched by a GET rule
    proxy.set_rules(Rule("error", times=1))
    with pytest.raises(TransientStorageError):
        read_bytes(storage, "k")
    assert read_bytes(storage, "k") == b"here"  # fired once only
    proxy.clear()
    assert read_bytes(storage, "k") == b"here"


def test_hang_reset_and_cut_rules(proxied: Any) -> None:
    proxy, storage, direct = proxied
    data = b"0123456789" * 10_000
    put_bytes(direct, "k", data)
    proxy.set_rules(Rule("hang"))
    started = time.monotonic()
    with pytest.raises(TransientStorageError):
        read_bytes(storage, "k")
    assert time.monotonic() - started >= 1.5  # the client's read timeout, not an answer
    proxy.set_rules(Rule("reset"))
    with pytest.raises(TransientStorageError):
        read_bytes(storage, "k")
    proxy.set_rules(Rule("cut", method="GET", arg=1000))
    with pytest.raises(StorageError):
        read_bytes(storage, "k")
    assert proxy.count("cut") >= 1
    proxy.clear()
    assert read_bytes(storage, "k") == data


def test_ignore_if_none_match_overwrites_like_a_careless_server(proxied: Any) -> None:
    proxy, storage, direct = proxied
    put_bytes(storage, "probe", b"first", if_absent=True)
    proxy.set_rules(Rule("ignore_if_none_match"))
    put_bytes(storage, "probe", b"second", if_absent=True)  # accepted: no 412
    assert read_bytes(direct, "probe") == b"second"  # and really overwritten
    assert proxy.count("ignore_if_none_match", "PUT") == 1
    proxy.clear()
    with pytest.raises(AlreadyExists):
        put_bytes(storage, "probe", b"third", if_absent=True)
