"""The stanza lock on a real local repository, and its staleness rule."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pitr.errors import LockedError
from pitr.lock import LockInfo, StanzaLock, stale_reason
from pitr.repo import Repo
from pitr.storage.base import put_bytes, read_bytes
from pitr.storage.fs import FsStorage

NOW = datetime(2025, 2, 15, 2, 0, tzinfo=UTC)


def info(host: str = "db1", pid: int = 100, age_h: float = 0.1, now: datetime = NOW,
         lease_left: float = -30.0, lease: float = 60.0) -> LockInfo:
    """A lock started ``age_h`` ago whose lease ends ``lease_left`` seconds after ``now``."""
    started = (now - timedelta(hours=age_h)).isoformat(timespec="seconds")
    renewed = (now + timedelta(seconds=lease_left - lease)).isoformat(timespec="seconds")
    return LockInfo(host, pid, started, "pitr backup", "tok", renewed, lease)


def test_stale_reason_needs_an_expired_lease_and_a_gone_holder() -> None:
    def alive(pid: int) -> bool:
        return pid == 100

    def reason(holder: LockInfo) -> str | None:
        return stale_reason(holder, now=NOW, host="db1", stale_after=3600, alive=alive)

    # a running lease is respected whoever holds it, even a dead pid on this host
    assert reason(info(pid=5, lease_left=20)) is None
    assert reason(info(host="db2", pid=5, age_h=30, lease_left=20)) is None
    # expired lease, same host: only a dead process frees it, however late it renews
    assert reason(info(lease_left=-10 * 3600)) is None
    assert "process 5 on this host is gone" in str(reason(info(pid=5)))
    # another host's pid means nothing here: its lease must be expired for stale_after
    assert reason(info(host="db2", pid=5, lease_left=-3500)) is None
    assert "expired 1.0 h ago on host db2" in str(reason(info(host="db2", lease_left=-3700)))
    # a lock from before leases: its lease ends when it started
    old = LockInfo("db2", 5, (NOW - timedelta(hours=2)).isoformat(), "pitr backup", "tok")
    assert "expired 2.0 h ago" in str(reason(old))
    assert reason(LockInfo("?", 0, "unreadable", "?", "")) == "it is unreadable"


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
    gone = info(pid=dead_pid(), now=datetime.now(UTC), lease_left=-1)
    put_bytes(r.storage, r.lock_key("backup"), gone.encode())  # as after kill -9
    lock = StanzaLock(r, "backup", command="next", stale_after=3600, host="db1")
    with caplog.at_level(logging.WARNING, logger="pitr.lock"):
        held = lock.acquire()
    assert "taking over the stale lock" in caplog.text
    assert held.command == "next" and lock.took_over and "is gone" in lock.took_over
    lock.release()


def test_the_lease_is_renewed_while_the_holder_works_and_lost_when_taken(tmp_path: Path,
                                                                        ) -> None:
    r = repo(tmp_path)
    lock = StanzaLock(r, "backup", command="long", stale_after=3600, lease=0.6)
    first = lock.acquire()
    deadline = time.monotonic() + 10
    while LockInfo.decode(read_bytes(r.storage, r.lock_key("backup"))).renewed == first.renewed:
        assert time.monotonic() < deadline, "the lease was never renewed"
        time.sleep(0.1)
    assert lock.still_mine() and not lock.lost
    # someone deletes the lock and another run takes it: the renewal notices, stops,
    # and never overwrites the new holder's lock
    other = info(host="elsewhere", now=datetime.now(UTC), lease_left=3600)
    r.storage.delete([r.lock_key("backup")])
    put_bytes(r.storage, r.lock_key("backup"), other.encode())
    while not lock.lost:
        assert time.monotonic() < deadline, "the lost lock went unnoticed"
        time.sleep(0.1)
    assert not lock.still_mine()
    time.sleep(0.5)
    assert LockInfo.decode(read_bytes(r.storage, r.lock_key("backup"))) == other
    lock.release()  # leaves the other holder's lock alone
    assert LockInfo.decode(read_bytes(r.storage, r.lock_key("backup"))) == other


def test_a_live_holder_keeps_its_lock_past_its_lease_until_it_is_killed(
        tmp_path: Path) -> None:
    """A real process on this host (a pitr command line) stops renewing: still its lock."""
    r = repo(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                               "pitr-backup-holder"])
    try:
        late = info(pid=holder.pid, now=datetime.now(UTC), lease_left=-5 * 3600)
        put_bytes(r.storage, r.lock_key("backup"), late.encode())
        with pytest.raises(LockedError, match=f"pid {holder.pid} on host db1"):
            StanzaLock(r, "backup", command="x", stale_after=3600, host="db1").acquire()
        holder.kill()  # kill -9: it never releases
        holder.wait()
        lock = StanzaLock(r, "backup", command="x", stale_after=3600, host="db1")
        assert lock.acquire().command == "x"
        assert f"process {holder.pid} on this host is gone" in str(lock.took_over)
        lock.release()
    finally:
        holder.kill()
        holder.wait()


def dead_pid() -> int:
    """A pid no process here has (a pitr run killed with -9)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_old_lock_of_another_host_is_taken_over(tmp_path: Path) -> None:
    r = repo(tmp_path)
    old = info(host="elsewhere", age_h=10, now=datetime.now(UTC), lease_left=-10 * 3600)
    put_bytes(r.storage, r.lock_key("backup"), old.encode())
    with pytest.raises(LockedError):
        StanzaLock(r, "backup", command="x", stale_after=11 * 3600).acquire()
    lock = StanzaLock(r, "backup", command="x", stale_after=3600)
    assert lock.acquire().command == "x"
    lock.release()


def test_unreadable_lock_is_stale(tmp_path: Path) -> None:
    r = repo(tmp_path)
    put_bytes(r.storage, r.lock_key("backup"), b"\0garbage")
    lock = StanzaLock(r, "backup", command="x", stale_after=3600)
    assert lock.acquire().command == "x"
    lock.release()


def test_a_backup_rechecks_its_lock_and_objects_before_its_manifest(tmp_path: Path) -> None:
    """docs/fault-table.md: after a takeover a backup writes no manifest over lost objects."""
    from retention_builders import backup

    from pitr.backup import recheck_before_manifest
    from pitr.errors import BackupError
    from pitr.manifest import BackupObject

    r = repo(tmp_path)
    key = r.backup_prefix("b1") + "base.tar.zst"
    put_bytes(r.storage, key, b"x" * 100)
    rec = replace(backup("b1", NOW, 2), objects=(BackupObject("base.tar.zst", key, 300, 100,
                                                              "", ""),))
    lock = StanzaLock(r, "backup", command="pitr backup", stale_after=3600)
    lock.acquire()
    recheck_before_manifest(r, rec, lock)  # all there, lock ours
    put_bytes(r.storage, key, b"x" * 99)
    with pytest.raises(BackupError, match=r"base.tar.zst is 99 bytes, not 100"):
        recheck_before_manifest(r, rec, lock)
    r.storage.delete([key])
    lock.took_over = "its lease expired 61 s ago and its process 7 on this host is gone"
    with pytest.raises(BackupError, match=r"is gone in the repository \(this run took over a "
                                          r"stale lock: its lease expired"):
        recheck_before_manifest(r, rec, lock)
    put_bytes(r.storage, key, b"x" * 100)
    # another run took the lock over: its cleanup may remove our objects at any moment
    r.storage.delete([r.lock_key("backup")])
    put_bytes(r.storage, r.lock_key("backup"), info(host="elsewhere").encode())
    with pytest.raises(BackupError, match="the stanza lock was taken over while this backup ran"):
        recheck_before_manifest(r, rec, lock)
    lock.release()


def test_reader_claims_are_renewed_handed_over_and_released(tmp_path: Path) -> None:
    from pitr.claims import Claim, claim_backup, load_claims
    from pitr.errors import PlanError

    r = repo(tmp_path)
    with pytest.raises(PlanError, match="backup b1 was expired while this pitr restore"):
        claim_backup(r, "b1", command="pitr restore", lease=0.6)
    assert load_claims(r) == []  # a refused claim is not left behind
    put_bytes(r.storage, r.manifest_key("b1"), b"{}")
    claim = claim_backup(r, "b1", command="pitr restore", lease=0.6)
    [first] = load_claims(r)
    assert first.backup_id == "b1" and first.live(datetime.now(UTC))
    deadline = time.monotonic() + 10
    while load_claims(r)[0].renewed == first.renewed:
        assert time.monotonic() < deadline, "the claim was never renewed"
        time.sleep(0.1)
    held = claim.hand_over(3600)
    [stored] = load_claims(r)
    assert stored == held and stored.lease == 3600
    assert stored.live(datetime.now(UTC) + timedelta(minutes=59))
    assert not stored.live(datetime.now(UTC) + timedelta(minutes=61))
    claim.release()
    assert load_claims(r) == []
    put_bytes(r.storage, "main/claims/torn.json", b"{not json")
    assert load_claims(r) == []  # unreadable: holds nothing (its holder rewrites it)
    assert Claim.decode(stored.encode()) == stored
