#!/usr/bin/env python3
"""`pitr backup` into three repositories (two S3 servers and a local directory, one
pass: docs/multiple-repositories.md) against the same backup into one (``--repo``).

Builds a pgbench database (default scale 20, about 300 MB), then times the two
interleaved, ``--rounds`` times each, and prints wall seconds and raw MB/s. Run as
root (clusters run as the `pgtest` user):

    /opt/pitr-venv/bin/python bench/multi_repo.py [--scale 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import toml_value  # noqa: E402
from support.pgcluster import PG_USER, PgCluster, make_user_dir, run_as  # noqa: E402
from support.s3server import S3Server, find_weed  # noqa: E402

PITR_EXE = Path(sys.executable).parent / "pitr"


def _section(values: dict[str, Any]) -> list[str]:
    return [f"{k} = {toml_value(v)}" for k, v in values.items()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--scale", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pitr-bench-multi-"))
    base.chmod(0o755)
    weed = find_weed()
    servers = [S3Server(base / f"s3-{i}", weed=weed) for i in (1, 2)]
    cluster = PgCluster(base, "pg")
    try:
        for s in servers:
            s.start()
        cfg = base / "pitr.toml"
        lines = ['stanza = "bench"',
                 "[archive]", *_section({"spool_dir": str(make_user_dir(base / "spool"))}),
                 "[postgres]", *_section({"user": PG_USER, "dsn": cluster.dsn,
                                          "pgdata": str(cluster.pgdata)}),
                 "[repository]", *_section({**servers[0].repo_section(servers[0].make_bucket()),
                                            "name": "first", "timeout": 120})]
        lines += ["[[repositories]]", *_section({**servers[1].repo_section(
            servers[1].make_bucket()), "name": "second", "timeout": 120})]
        lines += ["[[repositories]]", *_section({"name": "usb", "url": "file://" + str(
            make_user_dir(base / "usb"))})]
        cfg.write_text("\n".join(lines) + "\n")
        cfg.chmod(0o644)
        cluster.initdb(conf={"archive_mode": "on",
                             "archive_command": f"{PITR_EXE} --config {cfg} archive-push %p"})
        cluster.start()
        cluster.pgbench_init(args.scale)
        results: dict[str, list[float]] = {"one": [], "three": []}
        raw = 0
        for _ in range(args.rounds):
            for mode, extra in (("one", ["--repo", "first"]), ("three", [])):
                t0 = time.monotonic()
                proc = run_as([str(PITR_EXE), "--config", str(cfg), "backup", "--json", *extra],
                              timeout=3600)
                results[mode].append(time.monotonic() - t0)
                raw = json.loads(proc.stdout)["raw_bytes"]
        for mode, secs in results.items():
            best = min(secs)
            print(f"{mode:>5} repositories: {', '.join(f'{s:.1f}s' for s in secs)} "
                  f"(best {best:.1f}s, {raw / best / 1e6:.0f} MB/s of {raw / 1e6:.0f} MB raw)")
        print(f"three/one (best of each): {min(results['three']) / min(results['one']):.2f}x")
        return 0
    finally:
        cluster.stop("immediate")
        for s in servers:
            s.close()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
