"""The local catalog cache (pitr/catalog_cache.py) against a full listing.

Repositories are real local directories (FsStorage); every step is followed by a
refresh, and the catalog it returns must equal the one a full listing builds.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pitr import manifest
from pitr.backup import new_backup_id
from pitr.catalog import load_catalog
from pitr.catalog_cache import SWEEP_EVERY, CatalogCache, read_state
from pitr.catalog_scope import Scope
from pitr.codec import compress_blob
from pitr.errors import TransientStorageError
from pitr.expire import expire
from pitr.manifest import BackupObject, BackupRecord
from pitr.pg.names import format_lsn, segment_name, segno_to_lsn
from pitr.repo import Repo
from pitr.retention import Policy
from pitr.storage.base import put_bytes, server_start_after
from pitr.storage.fs import FsStorage
from pitr.targets import TargetKind

T0 = datetime(2025, 3, 1, tzinfo=UTC)
SEG = 16 << 20


class World:
    """A stanza in a local directory plus a fake clock, driven step by step."""

    def __init__(self, root: Path) -> None:
        self.repo = Repo(FsStorage(root / "repo"), "s")
        self.cache_file = root / "spool" / "catalog-test.json"
        self.clock = 1_000_000.0
        self.next_segno: dict[int, int] = {1: 250}  # near a directory boundary (256)
        self.backups = 0
        self.stale_old_timeline = False  # WAL added to a timeline that is not the newest
        put_bytes(self.repo.storage, self.repo.identity_key, json.dumps(
            {"system_id": "7001", "pg_version": 15, "segment_size": SEG, "format": 1}).encode())

    def cache(self) -> CatalogCache:
        return CatalogCache(self.repo, self.cache_file, clock=lambda: self.clock)

    def append(self, tli: int, count: int) -> None:
        tli = min(tli, max(self.next_segno))
        if tli != max(self.next_segno):
            self.stale_old_timeline = True
        for _ in range(count):
            n = self.next_segno[tli]
            put_bytes(self.repo.storage, self.repo.wal_key(segment_name(tli, n, SEG)), b"w" * n)
            self.next_segno[tli] = n + 1

    def backup(self) -> None:
        tli = max(self.next_segno)
        start = self.next_segno[tli]
        self.append(tli, 2)
        self.backups += 1
        when = T0 + timedelta(days=self.backups)
        bid = new_backup_id(when, set())  # named by when it began, as pitr names them
        rec = BackupRecord(
            id=bid, label="manual", start_lsn=segno_to_lsn(start, SEG),
            stop_lsn=segno_to_lsn(start + 1, SEG) + 100, start_time=when,
            stop_time=when + timedelta(seconds=30), timeline=tli, system_id="7001",
            pg_version=15, db_size=1, raw_bytes=1, stored_bytes=1,
            objects=(BackupObject("base.tar.zst", f"s/backups/{bid}/base.tar.zst", 1, 1,
                                  "ab" * 32, "cd" * 32),), pitr_version="0")
        put_bytes(self.repo.storage, f"s/backups/{bid}/base.tar.zst", b"b")
        put_bytes(self.repo.storage, self.repo.manifest_key(bid), manifest.encode(rec))

    def new_timeline(self) -> None:
        parent = max(self.next_segno)
        at = self.next_segno[parent]
        tli = parent + 1
        text = f"{parent}\t{format_lsn(segno_to_lsn(at, SEG))}\tno recovery target specified\n"
        put_bytes(self.repo.storage, self.repo.wal_key(f"{tli:08X}.history"),
                  compress_blob(text.encode(), 3)[0])
        self.next_segno[tli] = at
        self.append(tli, 1)

    def expire(self, cache: CatalogCache | None = None) -> None:
        expire(self.repo, Policy(daily=1, weekly=0, monthly=0, min_backups=1),
               now=T0 + timedelta(days=self.backups + 1), cache=cache)


STEPS = st.one_of(
    st.tuples(st.just("append"), st.integers(1, 3), st.integers(1, 12)),
    st.tuples(st.sampled_from(["backup", "expire", "expire_cached", "timeline", "drop_cache",
                               "corrupt_cache", "foreign_cache", "idle"])),
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(st.lists(STEPS, min_size=1, max_size=10))
def test_the_cached_catalog_is_the_full_listings(steps: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        w = World(Path(tmp))
        cache = w.cache()
        assert cache.refresh() == load_catalog(w.repo)
        for step in steps:
            kind = step[0]
            if kind == "append":
                w.append(step[1], step[2])
            elif kind == "backup":
                w.backup()
            elif kind == "expire":
                w.expire()
            elif kind == "expire_cached":  # as `pitr expire` runs: through the cache
                w.expire(w.cache())
            elif kind == "timeline":
                w.new_timeline()
            elif kind == "drop_cache":
                w.cache_file.unlink(missing_ok=True)
            elif kind == "corrupt_cache" and w.cache_file.exists():
                data = bytearray(w.cache_file.read_bytes())
                data[len(data) // 2] ^= 0x20
                w.cache_file.write_bytes(bytes(data))
            elif kind == "foreign_cache" and w.cache_file.exists():
                other = World(Path(tmp) / "other")
                other.cache_file = w.cache_file
                other.cache().refresh()  # another repository's state in our file
            # A fresh process each time: state comes from the file, as for `pitr list`.
            w.clock += 1
            full = load_catalog(w.repo)
            if not w.stale_old_timeline:
                assert w.cache().refresh() == full
            w.clock += SWEEP_EVERY  # older timelines are listed at least this often
            assert w.cache().refresh() == full
            w.stale_old_timeline = False
            # a plan's fallback to the full catalog, from its head listing
            assert Scope(w.repo).full() == full


def test_a_damaged_or_foreign_cache_is_rebuilt_not_trusted(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.append(1, 5)
    w.cache().refresh()
    state = read_state(w.cache_file, w.repo.storage.url, "s")
    assert state is not None and len(state.segments["00000001"]) == 5
    assert read_state(w.cache_file, w.repo.storage.url, "other") is None
    w.cache_file.write_bytes(w.cache_file.read_bytes()[:-10])  # torn write
    assert read_state(w.cache_file, w.repo.storage.url, "s") is None
    cache = w.cache()
    assert cache.refresh() == load_catalog(w.repo) and cache.rebuilt


def test_an_idle_refresh_lists_only_what_is_new_and_writes_nothing(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.append(1, 20)
    w.backup()
    w.new_timeline()
    w.append(2, 10)
    cache = w.cache()
    cache.refresh()
    seen: list[tuple[str, str | None, str | None]] = []
    inner = w.repo.storage.list

    def spy(prefix: str = "", **bounds: str | None) -> Any:
        seen.append((prefix, bounds.get("start_after"), bounds.get("end_before")))
        return inner(prefix, **bounds)

    w.repo.storage.list = spy  # type: ignore[method-assign]
    mtime = w.cache_file.stat().st_mtime_ns
    w.clock += 60
    got = cache.refresh()
    listed = list(seen)
    assert got == load_catalog(w.repo) and not cache.rebuilt
    newest = w.repo.wal_key(segment_name(2, w.next_segno[2] - 1, SEG))
    assert listed == [("s/", None, "s/wal"), ("s/wal/", newest, None)]
    assert w.cache_file.stat().st_mtime_ns == mtime


def test_a_segment_stored_after_a_later_one_is_not_lost(tmp_path: Path) -> None:
    """The agent stores segments in parallel: N+1 can be listed before N lands."""
    w = World(tmp_path)
    w.clock = time.time()  # "recent" is judged against the objects' stored times
    w.append(1, 3)
    cache = w.cache()
    cache.refresh()
    put_bytes(w.repo.storage, w.repo.wal_key(segment_name(1, 254, SEG)), b"late")
    w.clock += 1
    assert [s.segno for s in cache.refresh().segments[1]] == [250, 251, 252, 254]
    put_bytes(w.repo.storage, w.repo.wal_key(segment_name(1, 253, SEG)), b"late")
    w.clock += 1
    assert cache.refresh() == load_catalog(w.repo)
    assert [s.segno for s in w.cache().refresh().segments[1]] == [250, 251, 252, 253, 254]


def test_a_late_segment_is_found_by_a_refresh_an_hour_later(tmp_path: Path) -> None:
    """The window for late segments counts from the previous listing, not from now:
    hourly `pitr status` runs must not report a gap that filled in between."""
    w = World(tmp_path)
    w.clock = time.time()
    w.append(1, 3)
    cache = w.cache()
    cache.refresh()
    put_bytes(w.repo.storage, w.repo.wal_key(segment_name(1, 254, SEG)), b"late")
    cache.refresh()  # sees 254 while 253 is still uploading
    put_bytes(w.repo.storage, w.repo.wal_key(segment_name(1, 253, SEG)), b"late")
    w.clock += 3600
    assert [s.segno for s in w.cache().refresh().segments[1]] == [250, 251, 252, 253, 254]


def test_a_timeline_with_only_its_history_resumes_after_the_parents_segments(
        tmp_path: Path) -> None:
    """A promotion's first refreshes must not list the whole archive again."""
    w = World(tmp_path)
    w.append(1, 3)
    put_bytes(w.repo.storage, w.repo.wal_key("00000002.history"),
              compress_blob(b"1\t0/5000000\tno recovery target specified\n", 3)[0])
    cache = w.cache()
    cache.refresh()
    state = cache.state
    assert state is not None
    marker = cache._resume_after(state, "00000002", w.clock)
    assert marker == f"{w.repo.wal_prefix}00000001G/"
    assert server_start_after(w.repo.wal_prefix, marker) == marker  # a real StartAfter
    assert cache.refresh() == load_catalog(w.repo)


PLAN_STEPS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 3), st.integers(1, 8)),
    st.tuples(st.sampled_from(["backup", "timeline", "gap"]))), min_size=1, max_size=8)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(PLAN_STEPS, st.lists(st.tuples(
    st.sampled_from(["time", "lsn", "latest", "immediate"]), st.integers(0, 40),
    st.sampled_from([None, 1, 2])), min_size=1, max_size=6))
def test_a_scoped_plan_is_the_full_planners(steps: list[tuple[Any, ...]],
                                            asks: list[tuple[str, int, int | None]]) -> None:
    """Planning from one backup's path of WAL gives the full catalog's plan, or defers
    to it (None); never another answer."""
    from pitr import planner
    from pitr.catalog_scope import scoped_plan
    from pitr.errors import PlanError
    from pitr.targets import Target

    with tempfile.TemporaryDirectory() as tmp:
        w = World(Path(tmp))
        w.append(1, 3)
        w.backup()
        for step in steps:
            if step[0] == "append":
                w.append(step[1], step[2])
            elif step[0] == "backup":
                w.backup()
            elif step[0] == "timeline":
                w.new_timeline()
            else:  # a hole in the newest timeline
                w.next_segno[max(w.next_segno)] += 1
        full_cat = load_catalog(w.repo)
        now = datetime.now(UTC)
        segs = sorted(s.archived_at for v in full_cat.segments.values() for s in v)
        for kind, pick, tli in asks:
            if kind == "time":
                target = Target.at_time(segs[pick % len(segs)] - timedelta(microseconds=1), tli)
            elif kind == "lsn":
                target = Target.at_lsn(segno_to_lsn(250 + pick, SEG) + 8, tli)
            elif kind == "latest":
                target = Target.latest(tli)
            else:
                target = Target(TargetKind.IMMEDIATE, timeline=tli)
            try:
                want: Any = planner.plan(full_cat, target, now)
            except PlanError as exc:
                want = exc.message
            got = scoped_plan(Scope(w.repo), target, now)
            assert got is None or got == want, (target, got, want)


def test_a_scoped_plan_answers_for_the_usual_targets(tmp_path: Path) -> None:
    from pitr import planner
    from pitr.catalog_scope import scoped_plan
    from pitr.targets import Target

    w = World(tmp_path)
    w.append(1, 30)
    w.backup()
    w.append(1, 30)
    w.new_timeline()
    w.append(2, 30)
    full, now = load_catalog(w.repo), datetime.now(UTC)
    mid = full.segments[2][10].archived_at
    for target in (Target.latest(), Target.at_lsn(segno_to_lsn(300, SEG)),
                   Target.at_time(mid), Target(TargetKind.IMMEDIATE)):
        got = scoped_plan(Scope(w.repo), target, now)
        assert got is not None and got == planner.plan(full, target, now), target


def test_expire_through_the_cache_leaves_it_current_without_a_full_listing(
        tmp_path: Path) -> None:
    """`pitr expire` decides from the cache and then tells it what it deleted: the next
    refresh costs two listings, not the whole stanza, and equals a full listing."""
    w = World(tmp_path)
    for _ in range(4):
        w.append(1, 6)
        w.backup()
    w.new_timeline()
    w.append(2, 5)
    w.backup()
    w.cache().refresh()
    before = load_catalog(w.repo)
    w.clock += 60
    w.expire(w.cache())
    after = load_catalog(w.repo)
    assert sum(map(len, after.segments.values())) < sum(map(len, before.segments.values()))
    assert len(after.backups) < len(before.backups)

    cache = w.cache()
    seen: list[str] = []
    inner = w.repo.storage.list

    def spy(prefix: str = "", **bounds: str | None) -> Any:
        seen.append(prefix)
        return inner(prefix, **bounds)

    w.repo.storage.list = spy  # type: ignore[method-assign]
    w.clock += 60
    assert cache.refresh() == after and not cache.rebuilt
    assert seen == ["s/", "s/wal/"]


def test_expire_that_fails_midway_makes_the_cache_list_everything_again(
        tmp_path: Path) -> None:
    """Only a run whose every deletion succeeded patches the cache; otherwise the expire
    marker it left changed makes the next refresh a full listing."""
    w = World(tmp_path)
    for _ in range(3):
        w.append(1, 4)
        w.backup()
    w.cache().refresh()
    inner = w.repo.storage.delete
    calls = 0

    def failing(keys: list[str]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise TransientStorageError("injected: the repository went away")
        inner(keys)

    w.repo.storage.delete = failing  # type: ignore[method-assign]
    with contextlib.suppress(TransientStorageError):
        w.expire(w.cache())
    w.repo.storage.delete = inner  # type: ignore[method-assign]
    cache = w.cache()
    w.clock += 60
    assert cache.refresh() == load_catalog(w.repo) and cache.rebuilt


def test_the_cache_file_holds_segments_as_compact_columns(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.append(1, 3000)
    w.cache().refresh()
    # as JSON rows a segment took ~30 bytes; as columns at most 8 bytes per column
    assert w.cache_file.stat().st_size < 3000 * 10
    state = read_state(w.cache_file, w.repo.storage.url, "s")
    assert state is not None and list(state.segments["00000001"].segnos) == list(
        range(250, 3250))


def test_a_time_target_reads_only_the_manifests_it_needs(tmp_path: Path) -> None:
    """Backups are named by when they began, under the lock they hold until their manifest
    is written: a plan to a time reads the newest manifests begun before it, a few at a
    time, until one can be restored, and plans as the full catalog does."""
    from pitr import planner
    from pitr.catalog_scope import scoped_plan
    from pitr.targets import Target

    w = World(tmp_path)
    for _ in range(12):
        w.append(1, 3)
        w.backup()
    w.append(1, 5)
    full, now = load_catalog(w.repo), datetime.now(UTC)
    reads: list[str] = []
    inner = w.repo.storage.open

    def spy(key: str) -> Any:
        reads.append(key)
        return inner(key)

    w.repo.storage.open = spy  # type: ignore[method-assign]
    newest = full.segments[1][-1].archived_at
    for target in (Target.at_time(newest), Target.at_time(full.backups[5].stop_time)):
        reads.clear()
        got = scoped_plan(Scope(w.repo), target, now)
        assert got is not None and got == planner.plan(full, target, now)
        manifests = [k for k in reads if k.endswith("manifest.json")]
        assert 1 <= len(manifests) <= 4, manifests
        assert got.backup.id in "".join(manifests)
    # before the first backup: every manifest is read, and the answer is the full one's
    reads.clear()
    early = Target.at_time(full.backups[0].start_time)
    assert scoped_plan(Scope(w.repo), early, now) is None
    assert len([k for k in reads if k.endswith("manifest.json")]) == 12


def test_the_backups_alone_are_read_without_listing_wal(tmp_path: Path) -> None:
    """`pitr backup` chooses full or incremental from Scope.base (pitr/backup.py): the same
    backups as the full catalog, and of the WAL only each timeline's first key."""
    w = World(tmp_path)
    w.append(1, 40)
    w.backup()
    w.append(1, 40)
    w.backup()
    w.new_timeline()
    w.append(2, 40)
    listed: list[str] = []

    class Counting(FsStorage):
        def list(self, prefix: str = "", *, start_after: str | None = None,
                 end_before: str | None = None) -> Any:
            for o in super().list(prefix, start_after=start_after, end_before=end_before):
                listed.append(o.key)
                yield o

    base = Scope(Repo(Counting(tmp_path / "repo"), "s")).base
    full = load_catalog(w.repo)
    assert base.backups == full.backups and len(base.backups) == 2
    assert (base.damaged_backups, base.incomplete_backups) == (
        full.damaged_backups, full.incomplete_backups)
    wal = [k for k in listed if k.startswith("s/wal/")]
    assert len(wal) <= 2 * len(full.timelines)  # a timeline's first key, not its 80 segments
