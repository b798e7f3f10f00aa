#!/usr/bin/env python3
"""Incremental vs full backup on PostgreSQL 18 (docs/incremental-backups.md), in one run.

Builds a pgbench database with the PostgreSQL 18 binaries of the test extra (default
scale 100, about 1.5 GB; ``--scale 10`` for a quick run), archiving into a local
repository, then:

1. ``pitr backup --full``: the parent;
2. changes about ``--changed`` (5 %) of pgbench_accounts' rows in 50 runs spread
   over the table (so about that share of its heap pages, plus the pages the new
   row versions and their index entries go to);
3. ``pitr backup --incremental`` and, at the same point, ``pitr backup --full``:
   time, raw and stored bytes of each;
4. a marker row, then ``pitr restore --to T --start`` once from the chain (full +
   incremental, rebuilt by pg_combinebackup) and once from the second full backup,
   to the same target T: total wall time, and the part spent downloading and
   extracting (and combining).

pgBackRest would be compared where it supports PostgreSQL 18: the bench asks the
installed one (``stanza-create`` against the cluster) and reports its answer; Debian
12's 2.45 refuses, so the comparison is with pitr's own full backup.
Run as root (the cluster runs as the `pgtest` user):

    /opt/pitr-venv/bin/python bench/incremental.py [--scale 100] [--changed 0.05] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.pgcluster import (  # noqa: E402
    PG_USER,
    PgCluster,
    bindir_for,
    free_port,
    make_user_dir,
    run_as,
)

PITR_EXE = Path(sys.executable).parent / "pitr"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_config(path: Path, repo: Path, spool: Path, cluster: PgCluster, bindir: Path) -> Path:
    path.write_text("\n".join([
        'stanza = "bench"', "[repository]", f'url = "file://{repo}"',
        "[archive]", f'spool_dir = "{spool}"',
        "[backup]", "expire_after = false",
        "[postgres]", f'bindir = "{bindir}"', f'user = "{PG_USER}"', f'dsn = "{cluster.dsn}"',
        f'pgdata = "{cluster.pgdata}"']) + "\n")
    path.chmod(0o644)
    return path


def pitr(cfg: Path, *args: str) -> tuple[dict[str, Any], float]:
    t = time.monotonic()
    proc = run_as([str(PITR_EXE), "--config", str(cfg), *args, "--json"], timeout=7200)
    return json.loads(proc.stdout), time.monotonic() - t


def wait_archived(cluster: PgCluster) -> None:
    seg = cluster.switch_wal()
    cluster.wait_until(f"select last_archived_wal >= '{seg}' from pg_stat_archiver "
                       "where last_archived_wal not like '%.%'", timeout=3600, interval=1)


def pgbackrest_note(src: PgCluster, work: Path) -> str:
    """Whether pgBackRest can back this PostgreSQL 18 cluster up: asked, not assumed."""
    exe = shutil.which("pgbackrest")
    if exe is None:
        return ("pgBackRest is not installed (Debian 12 packages 2.45): compared with pitr's "
                "own full backup")
    version = subprocess.run([exe, "version"], capture_output=True, text=True).stdout.strip()
    repo = make_user_dir(work / "pgbackrest-repo")
    conf = repo / "pgbackrest.conf"  # empty: /etc/pgbackrest.conf is not ours to read
    conf.write_text("")
    conf.chmod(0o644)
    proc = run_as([exe, f"--config={conf}", "--stanza=bench", f"--pg1-path={src.pgdata}",
                   f"--pg1-socket-path={src.socket_dir}", f"--pg1-port={src.port}",
                   "--pg1-user=postgres",
                   f"--repo1-path={repo}", f"--lock-path={repo}", f"--log-path={repo}",
                   "--log-level-console=error", "stanza-create"], check=False)
    if proc.returncode == 0:
        return (f"{version} accepted this PostgreSQL 18 cluster (stanza-create); its full/incr "
                "backups are not part of this run yet")
    said = " ".join(f"{proc.stdout} {proc.stderr}".split())[:300]
    if "VersionNotSupportedError" in said:
        return (f"{version} refuses PostgreSQL 18 (stanza-create exit {proc.returncode}: "
                f"{said}); compared with pitr's own full backup")
    return (f"{version} could not be asked (stanza-create exit {proc.returncode}: {said}); "
            "compared with pitr's own full backup")


def change_pages(cluster: PgCluster, scale: int, share: float) -> None:
    rows = scale * 100_000
    runs = 50
    per_run = max(1, int(rows * share / runs))
    stride = rows // runs
    for i in range(runs):
        lo = i * stride + 1
        cluster.sql(f"update pgbench_accounts set abalance = abalance + 1 "
                    f"where aid between {lo} and {lo + per_run - 1}")


def restore(cfg: Path, base: Path, name: str, backup_id: str, target: str,
            src: PgCluster) -> dict[str, Any]:
    dest = PgCluster(base, name, bindir=src.bindir)
    dest.port = free_port()
    dest.socket_dir = src.socket_dir
    try:
        doc, seconds = pitr(cfg, "restore", "--pgdata", str(dest.pgdata), "--backup", backup_id,
                            "--to", target, "--start", "--port", str(dest.port))
        r = doc["restore"]
        marker = dest.scalar("select count(*) from bench_marker")
        return {"seconds": round(seconds, 1),
                "download_extract_combine_s": round(r["extract_seconds"], 1),
                "combine_s": r.get("combine_seconds", 0.0),
                "replay_and_start_s": round(seconds - r["extract_seconds"], 1),
                "downloaded_bytes": r["downloaded_bytes"], "chain": r.get("chain") or [backup_id],
                "wal_segments": doc["plan"]["wal"]["count"], "marker_rows": marker}
    finally:
        dest.stop("immediate")
        shutil.rmtree(dest.pgdata, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=int, default=100, help="pgbench scale (100: ~1.5 GB)")
    ap.add_argument("--changed", type=float, default=0.05, help="share of rows updated")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    bindir = bindir_for(18)
    if bindir is None or not (bindir / "pg_combinebackup").exists():
        print("PostgreSQL 18 binaries not found: install the test extra", file=sys.stderr)
        return 2
    work = make_user_dir(Path(tempfile.mkdtemp(prefix="pitr-bench-incr-")), mode=0o755)
    src = PgCluster(work, "src", bindir=bindir)
    try:
        cfg = write_config(work / "pitr.toml", make_user_dir(work / "repo"),
                           make_user_dir(work / "spool"), src, bindir)
        src.initdb(conf={"wal_level": "minimal", "max_wal_senders": 0, "archive_mode": "off",
                         "shared_buffers": "256MB", "max_wal_size": "4GB"})
        src.start()
        t = time.monotonic()
        src.pgbench_init(args.scale)
        src.sql("checkpoint")
        src.stop()
        src.configure({"wal_level": "replica", "max_wal_senders": 10, "archive_mode": "on",
                       "summarize_wal": "on", "checkpoint_timeout": "30min",
                       "archive_command": f"{PITR_EXE} --config {cfg} archive-push %p"})
        src.start()
        db = int(src.scalar("select sum(pg_database_size(oid))::bigint from pg_database"))
        log(f"pgbench -i -s {args.scale}: {db / 1e9:.2f} GB in {time.monotonic() - t:.0f} s")
        src.sql("create table bench_marker (n int)")
        full1, full1_s = pitr(cfg, "backup", "--full")
        log(f"full backup {full1['id']}: {full1_s:.1f} s, {full1['stored_bytes'] / 1e6:.1f} MB")
        pages = int(src.scalar("select pg_relation_size('pgbench_accounts') / 8192"))
        change_pages(src, args.scale, args.changed)
        log(f"updated {args.changed:.0%} of pgbench_accounts' rows ({pages} heap pages)")
        incr, incr_s = pitr(cfg, "backup", "--incremental")
        log(f"incremental {incr['id']}: {incr_s:.1f} s, {incr['stored_bytes'] / 1e6:.1f} MB")
        full2, full2_s = pitr(cfg, "backup", "--full")
        log(f"full backup {full2['id']}: {full2_s:.1f} s, {full2['stored_bytes'] / 1e6:.1f} MB")
        src.sql("insert into bench_marker values (1)")
        time.sleep(1.5)
        target = str(src.scalar("select clock_timestamp()"))
        time.sleep(1.5)
        src.sql("insert into bench_marker values (2)")
        wait_archived(src)
        note = pgbackrest_note(src, work)
        log(note)
        log(f"restoring to {target}: from the chain, then from the full backup")
        r_chain = restore(cfg, work, "r-chain", incr["id"], target, src)
        r_full = restore(cfg, work, "r-full", full2["id"], target, src)
        src.stop()
        doc = {
            "postgres": 18, "scale": args.scale, "db_bytes": db, "changed_rows": args.changed,
            "accounts_heap_pages": pages,
            "full": {"seconds": round(full2_s, 1), "raw_bytes": full2["raw_bytes"],
                     "stored_bytes": full2["stored_bytes"]},
            "first_full": {"seconds": round(full1_s, 1), "stored_bytes": full1["stored_bytes"]},
            "incremental": {"seconds": round(incr_s, 1), "raw_bytes": incr["raw_bytes"],
                            "stored_bytes": incr["stored_bytes"]},
            "incremental_vs_full": {"time": round(incr_s / full2_s, 3),
                                    "stored_bytes": round(incr["stored_bytes"]
                                                          / full2["stored_bytes"], 3)},
            "restore_chain": r_chain, "restore_full": r_full,
            "pgbackrest": note,
        }
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            print(f"database {db / 1e9:.2f} GB (pgbench scale {args.scale}), "
                  f"{args.changed:.0%} of the rows changed")
            print(f"{'':14}{'time s':>9}{'stored MB':>11}")
            print(f"{'full':14}{full2_s:9.1f}{full2['stored_bytes'] / 1e6:11.1f}")
            print(f"{'incremental':14}{incr_s:9.1f}{incr['stored_bytes'] / 1e6:11.1f}  "
                  f"({doc['incremental_vs_full']['time']:.0%} of the time, "
                  f"{doc['incremental_vs_full']['stored_bytes']:.0%} of the bytes)")
            for name, r in (("restore chain", r_chain), ("restore full", r_full)):
                print(f"{name:14}{r['seconds']:9.1f} s total: {r['download_extract_combine_s']}"
                      f" s download+extract (combine {r['combine_s']} s), "
                      f"{r['replay_and_start_s']} s replay+start, "
                      f"{r['downloaded_bytes'] / 1e6:.1f} MB downloaded")
            print(doc["pgbackrest"])
        assert r_chain["marker_rows"] == r_full["marker_rows"] == 1, "not the same target"
        return 0
    finally:
        if src.is_running():
            src.stop("immediate")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")


if __name__ == "__main__":
    sys.exit(main())
