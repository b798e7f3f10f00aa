#!/usr/bin/env python3
"""Base backup throughput: local `pg_basebackup -Ft -D dir` vs `pitr backup` (local, S3).

Builds a pgbench database (default scale 140, about 2.1 GB; several minutes:
the data is loaded with wal_level = minimal, then the cluster restarts with
archiving on), warms the page cache, then times in one run:

* ``pg_basebackup``: ``pg_basebackup -D <dir> -Ft -X none --checkpoint=fast`` to a
  local directory (the baseline, run before and after every pitr run);
* each pitr mode: ``pitr backup --json`` into a local or S3 (SeaweedFS weed mini)
  repository, with zstd in pitr (``compression.threads`` 0 or 2) or on the server.

It prints raw MB/s (tar bytes / wall seconds), the ratio to the baseline runs
just before and after it (interleaved, so load drift on a shared host hits both
sides), the stored size, the peak RSS of the pitr process (VmHWM from /proc,
polled) and the client CPU seconds (pitr + its pg_basebackup, or the baseline's
pg_basebackup: getrusage of the bench's children), which load does not distort
the way wall time is.
Both sides wait for WAL archiving at the end (``-X none``), which is fair and
part of what a user waits for. Run as root (clusters run as the `pgtest` user):

    /opt/pitr-venv/bin/python bench/backup.py [--scale 140] [--modes ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.pgcluster import (  # noqa: E402
    PG_BINDIR,
    PG_USER,
    PgCluster,
    as_user_cmd,
    make_user_dir,
    run_as,
)

PITR_EXE = Path(sys.executable).parent / "pitr"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

# mode -> (repository kind, [backup] / [compression] settings)
MODES: dict[str, tuple[str, dict[str, dict[str, Any]]]] = {
    "pitr-local": ("local", {}),
    "pitr-local-threads1": ("local", {"compression": {"threads": 1}}),
    "pitr-local-threads2": ("local", {"compression": {"threads": 2}}),
    "pitr-local-level1": ("local", {"compression": {"level": 1}}),
    "pitr-local-level1-t2": ("local", {"compression": {"level": 1, "threads": 2}}),
    "pitr-local-server": ("local", {"backup": {"server_compression": True}}),
    "pitr-s3": ("s3", {}),
    "pitr-s3-threads2": ("s3", {"compression": {"threads": 2}}),
}


@dataclass
class Result:
    name: str
    seconds: float
    raw_bytes: int
    stored_bytes: int
    peak_rss_mb: float | None  # pitr's own process; None for pg_basebackup
    cpu_s: float = 0.0  # user + sys of the client process tree
    vs_base: float = 1.0  # MB/s relative to the neighbouring baseline runs

    @property
    def mb_per_s(self) -> float:
        return self.raw_bytes / self.seconds / 1e6


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return json.dumps(str(v))


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    lines = [f"{k} = {toml_value(v)}" for k, v in settings.items() if not isinstance(v, dict)]
    for section, values in settings.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return path


def build_cluster(work: Path, scale: int) -> PgCluster:
    pg = PgCluster(work, "pg")
    # Load fast: wal_level = minimal skips WAL for the COPY into new tables.
    pg.initdb(conf={"wal_level": "minimal", "max_wal_senders": 0, "archive_mode": "off",
                    "shared_buffers": "256MB", "max_wal_size": "4GB"})
    pg.start()
    t = time.monotonic()
    pg.pgbench_init(scale)
    pg.sql("checkpoint")
    size = pg.scalar("select sum(pg_database_size(oid))::bigint from pg_database")
    print(f"# pgbench -i -s {scale}: {size / 1e9:.2f} GB in {time.monotonic() - t:.0f} s",
          flush=True)
    pg.stop()
    return pg


def archive_script(work: Path, configs: list[Path]) -> Path:
    """archive_command pushing each segment to every repository a mode backs up into."""
    script = work / "archive.sh"
    pushes = " && ".join(f'{PITR_EXE} --config {c} archive-push "$1"' for c in configs)
    script.write_text(f"#!/bin/sh\n{pushes}\n")
    script.chmod(0o755)
    return script


def peak_rss_watch(root_pid: int, needle: str, stop: threading.Event, out: list[float]) -> None:
    """Max VmHWM (MiB) of the descendant of ``root_pid`` whose cmdline contains ``needle``."""
    best = 0.0
    while not stop.is_set():
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
                if needle.encode() not in cmd or b"pitr" not in cmd or b"runuser" in cmd:
                    continue
                for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        best = max(best, int(line.split()[1]) / 1024)
            except OSError:
                continue
        time.sleep(0.05)
    out.append(best)


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_pitr_backup(name: str, cfg: Path) -> Result:
    cpu0 = children_cpu()
    stop = threading.Event()
    rss: list[float] = []
    t = time.monotonic()
    proc = subprocess.Popen(as_user_cmd([str(PITR_EXE), "--config", str(cfg), "backup",
                                         "--json"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            cwd="/")
    watcher = threading.Thread(target=peak_rss_watch, args=(proc.pid, str(cfg), stop, rss))
    watcher.start()
    out, err = proc.communicate()
    seconds = time.monotonic() - t
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"{name}: pitr backup failed ({proc.returncode}):\n{err}")
    doc = json.loads(out)
    return Result(name, seconds, int(doc["raw_bytes"]), int(doc["stored_bytes"]), rss[0],
                  children_cpu() - cpu0)


def run_baseline(pg: PgCluster, work: Path, name: str = "pg_basebackup") -> Result:
    target = make_user_dir(work / f"basebackup-{uuid.uuid4().hex[:6]}")
    cpu0 = children_cpu()
    t = time.monotonic()
    run_as([pg.bin("pg_basebackup"), "-D", str(target), "-Ft", "-X", "none",
            "--checkpoint=fast", "-d", pg.dsn], timeout=3600)
    seconds = time.monotonic() - t
    size = (target / "base.tar").stat().st_size
    shutil.rmtree(target)
    return Result(name, seconds, size, size, None, children_cpu() - cpu0)


def print_table(results: list[Result]) -> None:
    print(f"{'run':<22} {'seconds':>8} {'raw MB':>8} {'MB/s':>7} {'vs base':>8} "
          f"{'stored MB':>10} {'ratio':>6} {'peak RSS MiB':>13} {'client CPU s':>13}")
    for r in results:
        rss = f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb is not None else "-"
        print(f"{r.name:<22} {r.seconds:>8.2f} {r.raw_bytes / 1e6:>8.0f} {r.mb_per_s:>7.1f} "
              f"{r.vs_base:>7.0%} {r.stored_bytes / 1e6:>10.1f} "
              f"{r.raw_bytes / max(r.stored_bytes, 1):>6.1f} {rss:>13} {r.cpu_s:>13.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--scale", type=int, default=140, help="pgbench scale (140: ~2.1 GB)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"of {', '.join(MODES)}")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        ap.error(f"unknown modes: {', '.join(sorted(unknown))}")
    if not (PG_BINDIR / "pg_basebackup").exists() or not PITR_EXE.exists():
        print(f"need PostgreSQL in {PG_BINDIR} and {PITR_EXE}", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="pitr-bench-backup-"))
    work.chmod(0o755)
    s3 = None
    pg: PgCluster | None = None
    try:
        pg = build_cluster(work, args.scale)
        repos: dict[str, dict[str, Any]] = {}
        if any(MODES[m][0] == "local" for m in modes):
            repos["local"] = {"url": f"file://{make_user_dir(work / 'repo', mode=0o700)}"}
        if any(MODES[m][0] == "s3" for m in modes):
            from support.s3server import S3Server

            s3 = S3Server(work / "s3")
            s3.start()
            repos["s3"] = dict(s3.repo_section(s3.make_bucket()))
            repos["s3"]["timeout"] = 120
        base = {"stanza": "bench", "postgres": {"bindir": str(PG_BINDIR), "user": PG_USER,
                                                  "dsn": pg.dsn},
                "archive": {"spool_dir": str(work / "spool")}}
        archive_cfgs = {kind: write_config(work / f"archive-{kind}.toml",
                                           {**base, "repository": repos[kind]})
                        for kind in repos}
        mode_cfgs = {m: write_config(work / f"{m}.toml", {**base, "repository": repos[kind],
                                                          **extra})
                     for m, (kind, extra) in MODES.items() if m in modes}
        pg.configure({"wal_level": "replica", "max_wal_senders": 4, "archive_mode": "on",
                      "archive_command": f"{archive_script(work, list(archive_cfgs.values()))}"
                                         f" %p"})
        pg.start()

        print("# warming the page cache (one untimed pg_basebackup)", flush=True)
        run_baseline(pg, work)
        # Interleaved: each pitr run sits between two baseline runs.
        results = [run_baseline(pg, work, "pg_basebackup")]
        for m in modes:
            print(f"# {m}", flush=True)
            results.append(run_pitr_backup(m, mode_cfgs[m]))
            results.append(run_baseline(pg, work, "pg_basebackup"))
        for i in range(1, len(results), 2):
            base_mbs = (results[i - 1].mb_per_s + results[i + 1].mb_per_s) / 2
            results[i].vs_base = results[i].mb_per_s / base_mbs
        print(f"# {os.cpu_count()} CPUs; load average at the end: "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (other work shares the host)")
        print_table(results)
        if args.json:
            print(json.dumps([{**asdict(r), "mb_per_s": round(r.mb_per_s, 1),
                               "vs_base": round(r.vs_base, 3)}
                              for r in results], indent=2))
    finally:
        if pg is not None:
            pg.stop("immediate")
        if s3 is not None:
            s3.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
