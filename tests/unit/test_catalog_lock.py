"""The stanza lock on a real local repository, and its staleness rule."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pitr.errors import LockedError
from pitr.lock import LockInfo, StanzaLock, stale_reason
from pitr.repo import Repo
from pitr.storage.base import put_bytes, read_bytes
from pitr.storage.fs import FsStorage

NOW = datetime(2025, 2, 15, 2, 0, tzinfo=UTC)


def info(host: str = "db1", pid: int = 100, age_h: float = 0.1, now: datetime = NOW) -> LockInfo:
    started = (now - timedelta(hours=age_h)).isoformat(timespec="seconds")
    return LockInfo(host, pid, started, "pitr backup", "tok")


def test_stale_reason() -> None:
    def alive(pid: int) -> bool:
        return pid == 100

    assert stale_reason(info(), now=NOW, host="db1", stale_after=3600, alive=alive) is None
    assert "gone" in str(stale_reason(info(pid=5), now=NOW, host="db1", stale_after=3600,
                                      alive=alive))
    # Another host's pid means nothing here: only age can free its lock.
    assert stale_reason(info(host="db2", pid=5), now=NOW, host="db1", stale_after=3600,
                        alive=alive) is None
    assert "old" in str(stale_reason(info(host="db2", age_h=2), now=NOW, host="db1",
                                     stale_after=3600, alive=alive))


def repo(tmp_path: Path) -> Repo:
    return Repo(FsStorage(tmp_path), "main")


def test_second_holder_is_refused_with_who_holds_it(tmp_path: Path) -> None:
    r = repo(tmp_path)
    with StanzaLock(r, "backup", command="pitr backup --label manual", stale_after=3600) as held:
        doc = json.loads(read_bytes(r.storage, r.lock_key("backup")))
        assert doc["pid"] == held.pid and doc["command"] == "pitr backup --label manual"
        with pytest.raises(LockedError) as err:
            StanzaLock(r, "backup", command="pitr backup", stale_after=3600).acquire()
        assert f"pid {held.pid}" in err.value.message
        assert err.value.exit_code == 12
    assert list(r.storage.list("main/locks/")) == []  # released
    StanzaLock(r, "backup", command="again", stale_after=3600).acquire()


def test_dead_holder_on_this_host_is_taken_over(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    r = repo(tmp_path)
    dead = StanzaLock(r, "backup", command="crashed", stale_after=3600, pid=2 ** 22 + 7)
    dead.acquire()  # never released: as after kill -9
    lock = StanzaLock(r, "backup", command="next", stale_after=3600)
    with caplog.at_level(logging.WARNING, logger="pitr.lock"):
        held = lock.acquire()
    assert "taking over the stale lock" in caplog.text
    assert held.command == "next"
    # The crashed run's late release must not remove the new holder's lock.
    dead.release()
    assert json.loads(read_bytes(r.storage, r.lock_key("backup")))["token"] == held.token
    lock.release()


def test_old_lock_of_another_host_is_taken_over(tmp_path: Path) -> None:
    r = repo(tmp_path)
    old = info(host="elsewhere", age_h=10, now=datetime.now(UTC))
    put_bytes(r.storage, r.lock_key("backup"), old.encode())
    with pytest.raises(LockedError):
        StanzaLock(r, "backup", command="x", stale_after=11 * 3600).acquire()
    assert StanzaLock(r, "backup", command="x", stale_after=3600).acquire().command == "x"


def test_unreadable_lock_is_stale(tmp_path: Path) -> None:
    r = repo(tmp_path)
    put_bytes(r.storage, r.lock_key("backup"), b"\0garbage")
    assert StanzaLock(r, "backup", command="x", stale_after=3600).acquire().command == "x"
