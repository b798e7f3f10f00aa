#!/usr/bin/env python3
"""Cost of retention at scale: the pure decision, and deleting on a real S3 server.

1. ``decide`` over a year of history (400 daily backups, one WAL segment a minute:
   576,000 segments on one timeline, two timeline switches), next to the baseline of
   merely walking every segment record once.
2. Deleting N tiny objects through the S3 driver (SeaweedFS ``weed mini``), paged by
   1,000 keys per DeleteObjects request, next to the baseline of listing the same N
   objects.

    /opt/pitr-venv/bin/python bench/expire.py [--segments-per-day 1440] [--delete 3000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pitr.catalog import Catalog, Timeline, WalSegment  # noqa: E402
from pitr.manifest import BackupRecord  # noqa: E402
from pitr.pg.names import HistoryEntry  # noqa: E402
from pitr.retention import Policy, decide  # noqa: E402

SEG = 16 * 1024 * 1024


def year_catalog(per_day: int, days: int = 400) -> Catalog:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    backups = []
    for i in range(days):
        stop = t0 + timedelta(days=i, hours=2)
        seg = i * per_day + per_day // 12
        backups.append(BackupRecord(
            id=f"b{i:04d}", label="scheduled", start_lsn=seg * SEG + 0x28,
            stop_lsn=(seg + 1) * SEG, start_time=stop, stop_time=stop,
            timeline=1 if i < 8 else 2 if i < 20 else 3, system_id="1", pg_version=15,
            db_size=1, raw_bytes=1, stored_bytes=1))
    b2, b3 = 8 * per_day, 20 * per_day
    segs = {1: tuple(WalSegment(1, n, 100, t0) for n in range(0, b2 + 1)),
            2: tuple(WalSegment(2, n, 100, t0) for n in range(b2, b3 + 1)),
            3: tuple(WalSegment(3, n, 100, t0) for n in range(b3, days * per_day))}
    h2 = (HistoryEntry(1, b2 * SEG + 0x100, ""),)
    timelines = {1: Timeline(1), 2: Timeline(2, h2),
                 3: Timeline(3, (*h2, HistoryEntry(2, b3 * SEG + 0x100, "")))}
    return Catalog("bench", "1", SEG, tuple(backups), segs, timelines)


def bench_decide(per_day: int) -> dict[str, Any]:
    cat = year_catalog(per_day)
    n = sum(len(s) for s in cat.segments.values())
    now = max(b.stop_time for b in cat.backups) + timedelta(hours=1)
    t = time.perf_counter()
    total = 0
    for segs in cat.segments.values():
        for s in segs:
            total += s.stored_bytes
    baseline = time.perf_counter() - t
    t = time.perf_counter()
    d = decide(cat, Policy(), now)
    took = time.perf_counter() - t
    return {"segments": n, "backups": len(cat.backups), "kept": len(d.kept),
            "wal_deleted": len(d.wal_deleted), "decide_s": round(took, 3),
            "baseline_walk_s": round(baseline, 3)}


def bench_delete(count: int) -> dict[str, Any]:
    from support.s3server import S3Server, find_weed

    from pitr import config as config_mod
    from pitr.storage import open_storage
    from pitr.storage.base import put_bytes

    weed = find_weed()
    if weed is None:
        return {"skipped": "weed not found"}
    with tempfile.TemporaryDirectory() as tmp:
        server = S3Server(Path(tmp) / "s3", weed=weed)
        server.start()
        try:
            section = server.repo_section(server.make_bucket(), "bench")
            cfg = config_mod.load(None, env={f"PITR_REPOSITORY_{k.upper()}": str(v)
                                             for k, v in section.items()})
            storage = open_storage(cfg.repository)
            keys = [f"bench/wal/{n:08d}.zst" for n in range(count)]
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda k: put_bytes(storage, k, b"w"), keys))
            t = time.perf_counter()
            listed = sum(1 for _ in storage.list("bench/wal/"))
            list_s = time.perf_counter() - t
            t = time.perf_counter()
            storage.delete(keys)
            delete_s = time.perf_counter() - t
            left = sum(1 for _ in storage.list("bench/wal/"))
        finally:
            server.close()
    return {"objects": count, "listed": listed, "left": left, "delete_s": round(delete_s, 3),
            "objects_per_s": round(count / delete_s), "baseline_list_s": round(list_s, 3)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--segments-per-day", type=int, default=1440)
    ap.add_argument("--delete", type=int, default=3000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = {"decide": bench_decide(args.segments_per_day), "delete": bench_delete(args.delete)}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        d, x = out["decide"], out["delete"]
        print(f"decide: {d['segments']} segments, {d['backups']} backups -> {d['kept']} kept, "
              f"{d['wal_deleted']} segments to delete in {d['decide_s']} s "
              f"(baseline: walking the segment records once {d['baseline_walk_s']} s)")
        if "skipped" in x:
            print(f"delete: skipped ({x['skipped']})")
        else:
            print(f"delete: {x['objects']} objects in {x['delete_s']} s "
                  f"({x['objects_per_s']}/s; baseline: listing them {x['baseline_list_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
