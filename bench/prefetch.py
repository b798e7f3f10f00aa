#!/usr/bin/env python3
"""WAL replay time: pitr archive-get with prefetch from S3 vs. `cp` from a local archive.

One primary archives every segment twice: `cp` into a local directory (the
baseline archive) and `pitr archive-push` into a real S3 server (SeaweedFS
`weed mini`; the agent runs so the set-up is quick). A base backup without
WAL is taken first, then ``--segments`` segments of pgbench WAL are written.
Three copies of the base backup then replay all of it, timed from `pg_ctl
start` to promotion (end of the archive):

* ``cp``: ``restore_command = 'cp <local>/%f %p'`` (the baseline);
* ``pitr-prefetch``: ``pitr archive-get %f %p`` with archive.prefetch = k;
* ``pitr-no-prefetch``: the same with archive.prefetch = 0 (what prefetch saves).

All three must end with identical data. Run as root (clusters run as `pgtest`):

    /opt/pitr-venv/bin/python bench/prefetch.py [--segments 64] [--prefetch 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import write_config  # noqa: E402
from installed import installed_copy  # noqa: E402
from support.pgcluster import (  # noqa: E402
    PG_BINDIR,
    PgCluster,
    as_user_cmd,
    chown_user,
    make_user_dir,
    run_as,
)
from support.s3server import S3Server  # noqa: E402

PITR_EXE = Path(sys.executable).parent / "pitr"
CHECK = "select count(*), sum(abalance), sum(hashtext(filler)) from pgbench_accounts"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pitr_config(work: Path, name: str, repo: dict[str, Any], pgdata: Path,
                prefetch: int) -> Path:
    spool = make_user_dir(work / f"spool-{name}", mode=0o700)
    return write_config(work / f"{name}.toml", {
        "stanza": "bench", "repository": repo,
        "archive": {"spool_dir": str(spool), "prefetch": prefetch, "fast_path_wait": 60},
        "postgres": {"pgdata": str(pgdata), "bindir": str(PG_BINDIR)},
        "monitor": {"port": 0},
    })


def start_agent(cfg: Path, work: Path) -> tuple[subprocess.Popen[bytes], int]:
    from pitr import config
    from pitr.wal.spool import Spool, lock_held

    c = config.load(cfg, env={})
    lock = Spool(c.archive.spool_dir, c.stanza).agent_lock
    out = open(work / "agent.log", "ab")  # noqa: SIM115 - lives as long as the agent
    proc = subprocess.Popen(as_user_cmd([str(PITR_EXE), "--config", str(cfg), "agent"]),
                            stdout=out, stderr=subprocess.STDOUT,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
    deadline = time.monotonic() + 60
    while not lock_held(lock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"agent did not start: {(work / 'agent.log').read_text()}")
        time.sleep(0.05)
    return proc, int(lock.read_text().split()[0])


def replay(work: Path, base: Path, name: str, restore_command: str) -> tuple[float, Any]:
    cluster = PgCluster(work, name)
    run_as(["cp", "-a", str(base) + "/.", str(cluster.pgdata)])
    cluster.set_port()
    cluster.configure({"archive_mode": "off", "restore_command": restore_command,
                       "hot_standby": "on"})
    (cluster.pgdata / "recovery.signal").touch()
    chown_user(cluster.pgdata / "recovery.signal")
    t0 = time.monotonic()
    cluster.start(wait=False)
    cluster.wait_until("select not pg_is_in_recovery()", timeout=3600, interval=0.05)
    seconds = time.monotonic() - t0
    data = cluster.sql(CHECK)
    cluster.stop("immediate")
    return seconds, data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segments", type=int, default=64)
    ap.add_argument("--prefetch", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="pitr-bench-prefetch-"))
    work.chmod(0o755)
    server = S3Server(work / "s3")
    agent: tuple[subprocess.Popen[bytes], int] | None = None
    primary = PgCluster(work, "primary")
    results: dict[str, Any] = {"segments_requested": args.segments, "prefetch": args.prefetch,
                               "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        server.start()
        repo = dict(server.repo_section(server.make_bucket()))
        local = make_user_dir(work / "local-archive", mode=0o700)
        cfg_pf = pitr_config(work, "prefetch", repo, primary.pgdata, args.prefetch)
        cfg_plain = pitr_config(work, "plain", repo, primary.pgdata, 0)
        cfg_pf2 = pitr_config(work, "prefetch2", repo, primary.pgdata, args.prefetch)
        primary.initdb(conf={
            "archive_mode": "on", "max_wal_size": "4GB", "checkpoint_timeout": "30min",
            "archive_command": f"cp %p {local}/%f && {PITR_EXE} --config {cfg_pf} "
                               f"archive-push %p"})
        primary.start()
        agent = start_agent(cfg_pf, work)
        primary.pgbench_init(2)
        base = work / "base"
        make_user_dir(base, mode=0o700)
        run_as([primary.bin("pg_basebackup"), "-h", str(primary.socket_dir), "-p",
                str(primary.port), "-U", "postgres", "-D", str(base), "-X", "none", "-c", "fast"])
        start_lsn = primary.scalar("select pg_current_wal_lsn()")
        log(f"writing ~{args.segments} segments of pgbench WAL")
        primary.pgbench_init(max(1, int(args.segments / 0.77)))
        wal = int(primary.scalar(f"select pg_current_wal_lsn() - '{start_lsn}'"))
        last = primary.switch_wal()
        primary.wait_until(f"select last_archived_wal >= '{last}' from pg_stat_archiver",
                           timeout=3600)
        expected = primary.sql(CHECK)
        primary.stop()
        results["wal_mib"] = round(wal / (1 << 20), 1)
        os.kill(agent[1], signal.SIGTERM)
        agent[0].wait(60)
        agent = None

        # restore_command runs once per segment: as pip installs pitr (bench/installed.py),
        # plus once from the dev venv, whose editable-install hook costs ~15 ms a start.
        exe = installed_copy(work) / "bin" / "pitr"
        runs = {
            "cp": f"cp {local}/%f %p",
            "pitr-prefetch": f"{exe} --config {cfg_pf} archive-get %f %p",
            "pitr-prefetch-dev-venv": f"{PITR_EXE} --config {cfg_pf2} archive-get %f %p",
            "pitr-no-prefetch": f"{exe} --config {cfg_plain} archive-get %f %p",
        }
        for name, command in runs.items():
            log(f"replaying with {name}")
            seconds, data = replay(work, base, name, command)
            if data != expected:
                raise SystemExit(f"{name}: restored data {data} != primary {expected}")
            results[name] = {"seconds": round(seconds, 2),
                             "mib_per_s": round(wal / (1 << 20) / seconds, 1)}
        from pitr import config

        c = config.load(cfg_pf, env={})
        plog = Path(c.archive.spool_dir) / c.stanza / "prefetch.log"
        kinds = [line.split()[1] for line in plog.read_text().splitlines()]
        results["prefetch_hits"] = kinds.count("hit")
        results["prefetch_misses"] = kinds.count("miss")
        results["prefetch_vs_cp"] = round(results["pitr-prefetch"]["seconds"]
                                          / results["cp"]["seconds"], 2)
        results["prefetch_dev_venv_vs_cp"] = round(results["pitr-prefetch-dev-venv"]["seconds"]
                                                   / results["cp"]["seconds"], 2)
        results["no_prefetch_vs_cp"] = round(results["pitr-no-prefetch"]["seconds"]
                                             / results["cp"]["seconds"], 2)
        results["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if agent is not None:
            os.kill(agent[1], signal.SIGKILL)
        primary.stop("immediate")
        server.close()
        if os.environ.get("BENCH_KEEP"):
            log(f"kept {work}")
        else:
            run_as(["rm", "-rf", str(work)], check=False)
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"replay of {results['wal_mib']} MiB WAL (goal: pitr-prefetch within 1.2x of cp)")
        for name in ("cp", "pitr-prefetch", "pitr-prefetch-dev-venv", "pitr-no-prefetch"):
            r = results[name]
            print(f"  {name:<22} {r['seconds']:>8.2f} s {r['mib_per_s']:>8.1f} MiB/s")
        print(f"  prefetch/cp {results['prefetch_vs_cp']}x (dev venv "
              f"{results['prefetch_dev_venv_vs_cp']}x), no-prefetch/cp "
              f"{results['no_prefetch_vs_cp']}x, hits {results['prefetch_hits']}, misses "
              f"{results['prefetch_misses']}; load {results['load_avg_at_start']} -> "
              f"{results['load_avg_at_end']}")
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
