"""`pitr expire`, `pin`, `unpin` on a real S3 server (SeaweedFS) over 400 days of synthetic
history: one backup a day at 01:00 UTC, two WAL segments a day, and two restores into the
past early on (timeline 1 -> 2 on day 8, 2 -> 3 on day 20).

The history ends on ``support.dates.today()`` (a fixed date, or
``PITR_TEST_TODAY``), never the wall clock's, and expiry runs at noon of that day
through ``run_expire(now=...)``, the function behind `pitr expire`. Each test that
deletes builds its own stanza: no test reads what another left behind.

Manifests are written with pitr's own manifest encoder; base objects and WAL segments are a
few bytes each (the catalog never opens them). Object mtimes cannot be set on S3, so the
history's timing lives in the manifests' stop times and in LSNs, never in WAL mtimes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from conftest import run_pitr, s3_repo_for, write_config
from support.dates import today
from support.pgcluster import make_user_dir

from pitr import config as config_mod
from pitr import manifest
from pitr.catalog import Catalog, load_catalog
from pitr.codec import compress_blob
from pitr.errors import TransientStorageError
from pitr.expire import expire, run_expire
from pitr.manifest import BackupObject, BackupRecord
from pitr.pg.names import backup_history_name, format_lsn, history_name, segment_name
from pitr.repo import Repo
from pitr.retention import Policy
from pitr.storage.base import ObjectInfo, Storage, put_bytes

pytestmark = [pytest.mark.integration, pytest.mark.s3]

SEG = 16 * 1024 * 1024
DAYS = 400
BRANCH2, BRANCH3 = 8, 20  # day indexes of the two timeline switches
PINNED_DAY = 12  # a backup on timeline 2
SYSTEM_ID = 7300000000000000042


@dataclass
class Day:
    i: int
    day: date
    tli: int
    backup: BackupRecord


def _tli(i: int) -> int:
    return 1 if i < BRANCH2 else 2 if i < BRANCH3 else 3


def _history(today: date) -> list[Day]:
    first = today - timedelta(days=DAYS - 1)  # the last backup stops today at 01:00
    out = []
    for i in range(DAYS):
        d = first + timedelta(days=i)
        stop = datetime(d.year, d.month, d.day, 1, 0, tzinfo=UTC)
        bid = stop.strftime("%Y%m%dT%H%M%SZ")
        rec = BackupRecord(
            id=bid, label="scheduled", start_lsn=(2 * i + 1) * SEG + 0x28,
            stop_lsn=(2 * i + 1) * SEG + 0x100, start_time=stop - timedelta(minutes=10),
            stop_time=stop, timeline=_tli(i), system_id=str(SYSTEM_ID), pg_version=15,
            db_size=3000, raw_bytes=3000, stored_bytes=100,
            objects=(BackupObject("base.tar.zst", f"backups/{bid}/base.tar.zst", 3000, 100,
                                  "0" * 64),))
        out.append(Day(i, d, _tli(i), rec))
    return out


def _segments() -> dict[int, range]:
    """Archived segments per timeline: each switch happens inside the first segment of
    the day it happens on, which both timelines then have."""
    return {1: range(0, 2 * BRANCH2 + 1), 2: range(2 * BRANCH2, 2 * BRANCH3 + 1),
            3: range(2 * BRANCH3, 2 * DAYS)}


def _switch(day_index: int) -> str:
    return format_lsn(2 * day_index * SEG + 0x100)


def _write_history(repo: Repo, days: list[Day]) -> None:
    repo.ensure_identity(SYSTEM_ID, 15, SEG)
    objects: list[tuple[str, bytes]] = []
    for d in days:
        b = d.backup
        objects.append((repo.backup_prefix(b.id) + "base.tar.zst", b"x" * 100))
        objects.append((repo.wal_key(backup_history_name(b.timeline, b.start_lsn, SEG)),
                        b"START WAL LOCATION"))
    for tli, segnos in _segments().items():
        objects += [(repo.wal_key(segment_name(tli, n, SEG)), b"w" * 50) for n in segnos]
    h2 = f"1\t{_switch(BRANCH2)}\tbefore 2\n"
    h3 = h2 + f"2\t{_switch(BRANCH3)}\tbefore 3\n"
    for tli, text in ((2, h2), (3, h3)):
        objects.append((repo.wal_key(history_name(tli)), compress_blob(text.encode(), 3)[0]))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: put_bytes(repo.storage, kv[0], kv[1]), objects))
        # manifests last, as pitr backup writes them
        list(pool.map(lambda d: put_bytes(repo.storage, repo.manifest_key(d.backup.id),
                                          manifest.encode(d.backup)), days))


def _expected_kept(days: list[Day], today: date, daily: int, weekly: int,
                   monthly: int) -> set[str]:
    """The tiers, spelled out for one backup a day (so 'first' and 'newest' of a day agree)."""
    by_day = {d.day: d.backup.id for d in days}
    kept = {by_day[today - timedelta(days=k)] for k in range(daily)
            if today - timedelta(days=k) in by_day}
    monday = today - timedelta(days=today.weekday())
    for w in range(weekly):
        week = [monday - timedelta(weeks=w) + timedelta(days=k) for k in range(7)]
        present = [x for x in week if x in by_day]
        if present:
            kept.add(by_day[present[0]])
    y, m = today.year, today.month
    for _ in range(monthly):
        present = sorted(x for x in by_day if (x.year, x.month) == (y, m))
        if present:
            kept.add(by_day[present[0]])
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    kept.add(days[-1].backup.id)  # newest (also min_backups = 1)
    return kept


@dataclass
class Env:
    base: Path
    cfg: Path
    repo: Repo
    days: list[Day]
    today: date

    @property
    def now(self) -> datetime:
        return datetime.combine(self.today, time(12, 0), tzinfo=UTC)

    def catalog(self) -> Catalog:
        return load_catalog(self.repo)

    def expire(self, env: dict[str, str] | None = None) -> dict[str, Any]:
        """`pitr expire --json` at noon of ``today``, with ``env`` as PITR_* overrides."""
        cfg = config_mod.load(self.cfg, env=env or {})
        return run_expire(cfg, now=self.now).summary()

    def day(self, i: int) -> Day:
        return self.days[i]


def _year(workdir: Path, s3_server: Any, stanza: str) -> Env:
    """A fresh stanza holding the whole synthetic year."""
    base = make_user_dir(workdir / f"expire-{stanza}", mode=0o755)
    cfg_path = write_config(base / "pitr.toml", {
        "stanza": stanza, "repository": s3_repo_for(s3_server),
        "archive": {"spool_dir": str(base / "spool")},
    })
    cfg = config_mod.load(cfg_path, env={})
    repo = Repo.open(cfg)
    days = _history(today())
    _write_history(repo, days)
    return Env(base, cfg_path, repo, days, today())


@pytest.fixture(scope="module")
def env(workdir: Path, s3_server: Any, pitr_exe: Path) -> Env:
    """The year, shared by the tests that only read it."""
    return _year(workdir, s3_server, "year")


def _present(cat: Catalog) -> dict[int, set[int]]:
    return {t: {s.segno for s in segs} for t, segs in cat.segments.items()}


def test_dry_run_plans_and_deletes_nothing(env: Env) -> None:
    before = env.catalog()
    assert len(before.backups) == DAYS
    cfg = config_mod.load(env.cfg, env={})
    doc = run_expire(cfg, dry_run=True, now=env.now).summary()
    assert doc["dry_run"] and doc["deleted_objects"] == 0
    assert len(doc["deleted"]) == DAYS - len(doc["kept"]) > 300
    assert doc["bytes_freed"] > 0
    # the CLI, at the wall clock's now (which may be any date: nothing here depends on it)
    cli = json.loads(run_pitr(env.cfg, "expire", "--dry-run", "--json").stdout)
    assert cli["dry_run"] and cli["deleted_objects"] == 0
    assert len(cli["deleted"]) == DAYS - len(cli["kept"])
    after = env.catalog()
    assert len(after.backups) == DAYS and _present(after) == _present(before)


def test_pin_validates_the_id(env: Env) -> None:
    proc = run_pitr(env.cfg, "pin", "20000101T000000Z", check=False)
    assert proc.returncode == 6 and "no completed backup" in proc.stderr
    proc = run_pitr(env.cfg, "unpin", "nonsense", check=False)
    assert proc.returncode == 6


def test_a_year_expires_to_exactly_the_tiers(workdir: Path, s3_server: Any,
                                             pitr_exe: Path) -> None:
    env = _year(workdir, s3_server, "year-tiers")
    pinned = env.day(PINNED_DAY).backup
    assert "pinned" in run_pitr(env.cfg, "pin", pinned.id).stdout
    assert "already" in run_pitr(env.cfg, "pin", pinned.id).stdout
    assert env.catalog().backups[PINNED_DAY].pinned

    # 1: default tiers; the pinned backup on timeline 2 keeps timeline 2 from its start
    #    on and all of timeline 3 (it can restore onto both); timeline 1 goes.
    doc = env.expire()
    expected = _expected_kept(env.days, env.today, 7, 4, 12) | {pinned.id}
    assert {k["id"] for k in doc["kept"]} == expected
    # sanity of the history: every tier is full (tiers may share a backup, e.g. on the
    # first of a month the daily and the monthly tier)
    tiers = {r: {k["id"] for k in doc["kept"] if r in k["reasons"]}
             for r in ("daily", "weekly", "monthly")}
    assert {r: len(ids) for r, ids in tiers.items()} == {"daily": 7, "weekly": 4, "monthly": 12}
    reasons = {k["id"]: k["reasons"] for k in doc["kept"]}
    assert reasons[pinned.id] == ["pinned"]
    cat = env.catalog()
    assert {b.id for b in cat.backups} == expected
    assert not cat.incomplete_backups  # every object of deleted backups went
    seg = _segments()
    assert _present(cat) == {2: set(range(2 * PINNED_DAY + 1, seg[2].stop)), 3: set(seg[3])}
    assert set(cat.timelines) >= {2, 3}
    assert doc["history_deleted"] == []
    assert len(cat.backup_history_files) == len(expected)

    # running again changes nothing
    again = env.expire()
    assert again["deleted_objects"] == 0 and {k["id"] for k in again["kept"]} == expected

    # 2: unpinned, the backup goes, and with it timeline 2's WAL and history file
    assert "unpinned" in run_pitr(env.cfg, "unpin", pinned.id).stdout
    doc = env.expire()
    assert [b["id"] for b in doc["deleted"]] == [pinned.id]
    assert doc["history_deleted"] == [2]
    cat = env.catalog()
    oldest = min(cat.backups, key=lambda b: b.stop_time)
    assert oldest.id == min(expected - {pinned.id})
    assert _present(cat) == {3: set(range(oldest.start_lsn // SEG, seg[3].stop))}
    assert 2 not in cat.timelines and 3 in cat.timelines
    assert doc["restorable_from"] == oldest.stop_time.isoformat()


class _FailingStorage:
    """A real storage that fails with a transient error on the n-th delete call."""

    def __init__(self, inner: Storage, fail_on: int) -> None:
        self.inner, self.fail_on, self.calls = inner, fail_on, 0
        self.url = inner.url

    def delete(self, keys: Iterable[str]) -> int:
        self.calls += 1
        if self.calls == self.fail_on:
            raise TransientStorageError("simulated outage during expire")
        return self.inner.delete(keys)

    def put(self, key: str, src: BinaryIO, *, if_absent: bool = False,
            storage_class: str = "") -> int:
        return self.inner.put(key, src, if_absent=if_absent, storage_class=storage_class)

    def open(self, key: str) -> BinaryIO:
        return self.inner.open(key)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "", **bounds: str | None) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix, **bounds)

    def cleanup_incomplete(self, prefix: str = "") -> int:
        return self.inner.cleanup_incomplete(prefix)

    def read_with_etag(self, key: str) -> tuple[bytes, str]:
        return self.inner.read_with_etag(key)

    def put_if_match(self, key: str, data: bytes, etag: str) -> int:
        return self.inner.put_if_match(key, data, etag)


def test_interrupted_expiry_is_finished_by_a_rerun(workdir: Path, s3_server: Any,
                                                   pitr_exe: Path) -> None:
    """Tighter tiers (env overrides) expire a year of backups and WAL. The first attempt
    dies when it starts on the WAL; by then every expired backup has lost its manifest, so
    nothing half-deleted is ever offered as a backup; a rerun finishes the job."""
    env = _year(workdir, s3_server, "year-interrupted")
    tight = Policy(daily=7, weekly=0, monthly=0, min_backups=1)
    before = env.catalog()
    flaky = Repo(_FailingStorage(env.repo.storage, fail_on=3), env.repo.stanza)
    # delete calls: 1 manifests, 2 other backup objects, 3 the first WAL page
    with pytest.raises(TransientStorageError):
        expire(flaky, tight, now=env.now)
    mid = env.catalog()
    expected = _expected_kept(env.days, env.today, 7, 0, 0)
    assert {b.id for b in mid.backups} == expected  # manifests went first
    assert _present(mid) == _present(before)
    assert len(mid.incomplete_backups) == 0  # the rest of their objects went too

    doc = env.expire(env={"PITR_RETENTION_WEEKLY": "0", "PITR_RETENTION_MONTHLY": "0"})
    assert {k["id"] for k in doc["kept"]} == expected and doc["deleted"] == []
    assert doc["wal_deleted"]["segments"] > 0 and doc["steps"]["wal"] > 0
    cat = env.catalog()
    oldest = min(cat.backups, key=lambda b: b.stop_time)
    assert _present(cat) == {3: set(range(oldest.start_lsn // SEG, 2 * DAYS))}
    assert not cat.incomplete_backups


def test_more_than_1000_wal_objects_in_one_run(workdir: Path, s3_server: Any) -> None:
    """A fresh stanza: 1,500 segments before the only kept backup go in one expire call."""
    base = make_user_dir(workdir / "expire-bulk", mode=0o755)
    cfg_path = write_config(base / "pitr.toml", {
        "stanza": "bulk", "repository": s3_repo_for(s3_server),
        "archive": {"spool_dir": str(base / "spool")},
        "retention": {"daily": 1, "weekly": 0, "monthly": 0, "min_backups": 1}})
    cfg = config_mod.load(cfg_path, env={})
    repo = Repo.open(cfg)
    repo.ensure_identity(SYSTEM_ID, 15, SEG)
    # one hour before now, whatever the date: retention keeps the only backup on any date
    stop = datetime.now(UTC) - timedelta(hours=1)
    rec = BackupRecord(id="b1", label="manual", start_lsn=1500 * SEG + 0x28,
                       stop_lsn=1500 * SEG + 0x200, start_time=stop, stop_time=stop,
                       timeline=1, system_id=str(SYSTEM_ID), pg_version=15, db_size=1,
                       raw_bytes=1, stored_bytes=1)
    keys = [repo.wal_key(segment_name(1, n, SEG)) for n in range(1510)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: put_bytes(repo.storage, k, b"w"), keys))
    put_bytes(repo.storage, repo.manifest_key("b1"), manifest.encode(rec))
    doc = json.loads(run_pitr(cfg_path, "expire", "--json").stdout)
    assert doc["wal_deleted"]["segments"] == 1500 and doc["steps"]["wal"] == 1500
    cat = load_catalog(repo)
    assert [s.segno for s in cat.segments[1]] == list(range(1500, 1510))
