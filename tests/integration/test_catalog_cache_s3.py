"""The catalog cache on a real S3 server (SeaweedFS): same catalog as a full listing,
at the request counts docs/catalog-cache.md promises (counted, never timed)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pitr import manifest
from pitr.catalog import load_catalog
from pitr.catalog_cache import SWEEP_EVERY, CatalogCache
from pitr.codec import compress_blob
from pitr.config import Duration, RepositoryConfig
from pitr.manifest import BackupObject, BackupRecord
from pitr.pg.names import format_lsn, segment_name, segno_to_lsn
from pitr.repo import Repo
from pitr.storage import open_storage, put_bytes
from pitr.storage.s3 import S3Storage

SEG = 16 << 20
T0 = datetime(2025, 3, 1, tzinfo=UTC)


def _storage(section: dict[str, Any]) -> S3Storage:
    values = dict(section)
    for key in ("timeout", "request_timeout"):
        if key in values:
            values[key] = Duration(values[key])
    storage = open_storage(RepositoryConfig(**values))
    assert isinstance(storage, S3Storage)
    return storage


def _segments(repo: Repo, tli: int, segnos: range) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: put_bytes(repo.storage, repo.wal_key(
            segment_name(tli, n, SEG)), b"w"), segnos))


def test_cache_equals_full_listing_at_counted_requests(s3_repo: dict[str, Any],
                                                       tmp_path: Path) -> None:
    storage = _storage(s3_repo)
    repo = Repo(storage, "db")
    put_bytes(storage, repo.identity_key, json.dumps(
        {"system_id": "7001", "pg_version": 15, "segment_size": SEG, "format": 1}).encode())
    _segments(repo, 1, range(1, 1101))  # two listing pages, five WAL directories
    rec = BackupRecord(
        id="20250301T000000Z", label="manual", start_lsn=segno_to_lsn(10, SEG),
        stop_lsn=segno_to_lsn(11, SEG), start_time=T0, stop_time=T0 + timedelta(minutes=1),
        timeline=1, system_id="7001", pg_version=15, db_size=1, raw_bytes=1, stored_bytes=1,
        objects=(BackupObject("base.tar.zst", "db/backups/20250301T000000Z/base.tar.zst", 1, 1,
                              "ab" * 32, "cd" * 32),), pitr_version="0")
    put_bytes(storage, "db/backups/20250301T000000Z/base.tar.zst", b"b")
    put_bytes(storage, repo.manifest_key(rec.id), manifest.encode(rec))
    history = f"1\t{format_lsn(segno_to_lsn(1100, SEG))}\tpromoted\n"
    put_bytes(storage, repo.wal_key("00000002.history"), compress_blob(history.encode(), 3)[0])
    _segments(repo, 2, range(1100, 1103))

    clock = [1_000_000.0]
    path = tmp_path / "catalog.json"

    def cache() -> CatalogCache:
        return CatalogCache(repo, path, clock=lambda: clock[0])

    def counted(fn: Any) -> tuple[Any, dict[str, int]]:
        before = dict(storage.requests)
        out = fn()
        return out, {k: v - before.get(k, 0) for k, v in storage.requests.items()
                     if v != before.get(k, 0)}

    # cold: the non-WAL keys (1 page), all WAL (2 pages), repo.json, manifest, history
    cat, n = counted(lambda: cache().refresh())
    assert cat == load_catalog(repo)
    assert n == {"ListObjectsV2": 3, "GetObject": 3}

    # idle, from the file as a new process reads it: two listings, nothing read
    clock[0] += 60
    cat, n = counted(lambda: cache().refresh())
    assert cat == load_catalog(repo)
    assert n == {"ListObjectsV2": 2}

    # new WAL on the newest timeline, and a new timeline: still two listings
    _segments(repo, 2, range(1103, 1110))
    put_bytes(storage, repo.wal_key("00000003.history"), compress_blob(
        f"1\t{format_lsn(segno_to_lsn(1100, SEG))}\tpromoted\n2\t"
        f"{format_lsn(segno_to_lsn(1109, SEG))}\tagain\n".encode(), 3)[0])
    _segments(repo, 3, range(1109, 1111))
    clock[0] += 60
    cat, n = counted(lambda: cache().refresh())
    assert cat == load_catalog(repo)
    assert n == {"ListObjectsV2": 2, "GetObject": 1}  # the new history file

    # planning lists the backups, one request per timeline for the history files, and
    # only the path's WAL from the backup on (here: 1,100 segments on timeline 1 -> 2
    # pages, then timelines 2 and 3): far below a full listing's pages plus reads
    from pitr import planner
    from pitr.catalog_scope import Scope, scoped_plan
    from pitr.targets import Target

    now = datetime.now(UTC)
    plan, n = counted(lambda: scoped_plan(Scope(repo), Target.latest(), now))
    assert plan is not None and plan == planner.plan(load_catalog(repo), Target.latest(), now)
    assert n["ListObjectsV2"] <= 1 + 4 + 4 and n["GetObject"] == 4

    # a plan that falls back to the full catalog adds only the WAL listing: the head
    # listing and the small objects read for the base are not listed or read again
    scope, n_base = counted(lambda: (s := Scope(repo), s.base)[0])
    full, n_full = counted(scope.full)
    _, n_wal = counted(lambda: list(storage.list(repo.wal_prefix)))
    assert full == load_catalog(repo)
    assert n_full == n_wal == {"ListObjectsV2": 2}
    assert n_base["GetObject"] == 4

    # the hourly sweep lists timelines 1 and 2 after their last keys
    _segments(repo, 1, range(1101, 1103))  # the old primary archived late
    clock[0] += SWEEP_EVERY
    cat, n = counted(lambda: cache().refresh())
    assert cat == load_catalog(repo)
    assert n == {"ListObjectsV2": 4}

    # a deleted backup (what expire does first) is noticed: full listing again
    storage.delete([repo.manifest_key(rec.id)])
    storage.delete([repo.wal_key(segment_name(1, n, SEG)) for n in range(1, 5)])
    clock[0] += 60
    c = cache()
    assert c.refresh() == load_catalog(repo) and c.rebuilt

    # a damaged cache file is rebuilt, not trusted
    path.write_bytes(path.read_bytes()[:-100])
    c = cache()
    assert c.refresh() == load_catalog(repo) and c.rebuilt
