#!/usr/bin/env python3
"""The synchronous archive-push: one `pitr archive-push` process per segment, no agent.

What a plain ``archive_command`` costs when the agent cannot start (or is off:
``archive.agent_idle_exit = 0``): SeaweedFS over HTTPS (``--http``: plain HTTP),
N synthetic 16 MiB segments (zeros: compressible, or ``--random``), each pushed by
a fresh process through pitr's console-script entry (:func:`pitr.entry.main`).
Reported per push: wall time and CPU time of the process (median after the first,
which also proves conditional writes once a day) and its S3 requests, counted by
the driver's botocore event hook (pitr/storage/s3.py). docs/benchmarks.md, "The
synchronous archive-push", has figures.

    /opt/pitr-venv/bin/python bench/sync_push.py [--segments 12] [--random] [--http]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

SEG = 16 << 20

# The child: pitr's entry point as the console script runs it, with the S3 driver's
# request counters printed to stderr at exit (after everything pitr does).
CHILD = """
import atexit, json, sys
from pitr.storage import s3
made = []
init = s3.S3Storage.__init__
def tracking_init(self, *a, **k):
    init(self, *a, **k)
    made.append(self)
s3.S3Storage.__init__ = tracking_init
def report():
    counts = {}
    for s in made:
        for k, v in s.requests.items():
            counts[k] = counts.get(k, 0) + v
    sys.stderr.write("REQUESTS " + json.dumps(counts) + "\\n")
atexit.register(report)
from pitr.entry import main
sys.exit(main(sys.argv[1:]))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--segments", type=int, default=12)
    ap.add_argument("--random", action="store_true", help="incompressible segments")
    ap.add_argument("--http", action="store_true", help="plain HTTP instead of HTTPS")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from conftest import write_config
    from support.s3server import S3Server
    from support.walbytes import segment_bytes

    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="pitr-syncpush-") as tmp, \
            S3Server(Path(tmp) / "s3", tls=not args.http) as server:
        section = server.repo_section(server.make_bucket())
        if not args.http:
            section.update(endpoint_url=server.https_endpoint, ca_bundle=str(server.ca_file))
        config = write_config(Path(tmp) / "pitr.toml", {
            "stanza": "bench", "repository": section,
            "archive": {"agent_idle_exit": 0, "fast_path_wait": 0,
                        "spool_dir": str(Path(tmp) / "spool")}})
        for i in range(1, args.segments + 2):
            name = f"00000001000000000000{i:04X}"
            seg = Path(tmp) / name
            raw = segment_bytes(name, seg_size=SEG)
            if args.random:
                raw = raw[:40] + os.urandom(SEG - 40)
            seg.write_bytes(raw)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, "--config", str(config), "archive-push", str(seg)],
                capture_output=True, text=True, cwd=tmp)
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if proc.returncode != 0:
                raise SystemExit(f"archive-push failed ({proc.returncode}):\n{proc.stderr}")
            line = [x for x in proc.stderr.splitlines() if x.startswith("REQUESTS ")][-1]
            rows.append({"segment": name, "wall_ms": round(wall * 1000, 1),
                         "cpu_ms": round((after.ru_utime + after.ru_stime - before.ru_utime
                                          - before.ru_stime) * 1000, 1),
                         "requests": json.loads(line.split(" ", 1)[1])})
            seg.unlink()
    steady = rows[1:]
    summary = {
        "segments": len(steady), "transport": "http" if args.http else "https",
        "content": "random" if args.random else "zeros",
        "median_wall_ms": statistics.median(r["wall_ms"] for r in steady),
        "median_cpu_ms": statistics.median(r["cpu_ms"] for r in steady),
        "requests_first": rows[0]["requests"], "requests_steady": steady[-1]["requests"],
        "load_average": [round(x, 2) for x in (*load_before, *os.getloadavg())[:4]],
    }
    if args.json:
        print(json.dumps({"summary": summary, "pushes": rows}, indent=2))
        return
    for r in rows:
        print(f"{r['segment']}  {r['wall_ms']:7.1f} ms wall  {r['cpu_ms']:7.1f} ms CPU  "
              f"{r['requests']}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
