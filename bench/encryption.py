#!/usr/bin/env python3
"""Encryption on vs off in the same run (docs/encryption.md, "Cost"): the byte paths of
bench/streams.py, each measured without a key and with one, alternately.

Phases: archive-push of 16 MiB segments of both WAL kinds (compressible, pgbench-like,
and incompressible random bytes), archive-get of the compressible ones, the backup's
compressing upload and the restore's extract, all through :class:`pitr.repo.Repo` (so
the sealing storage is what a real command uses) against the local-directory driver.
No PostgreSQL, no S3: what is measured is pitr's own CPU, the figure encryption changes.

CPU-seconds (user + system of the process, every thread) are the figure to compare
on a shared machine; wall seconds are printed too. Each (phase, mode) runs ``--rounds``
times, off and on interleaved, and the best round is kept.

    /opt/pitr-venv/bin/python bench/encryption.py [--segments 16] [--tar-mib 256]
        [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(ROOT / "bench"))

from streams import SEG, make_tar, segment, timed, wal_like  # noqa: E402

from pitr import crypto, stream  # noqa: E402
from pitr.config import Config, PostgresConfig  # noqa: E402
from pitr.manifest import BackupObject  # noqa: E402
from pitr.repo import Repo  # noqa: E402
from pitr.restore import Owner, RestoreResult, extract_backup  # noqa: E402
from pitr.storage.fs import FsStorage  # noqa: E402
from pitr.wal.fetch import fetch_wal  # noqa: E402
from pitr.wal.push import push_wal  # noqa: E402

MODES = ("off", "on")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--segments", type=int, default=16)
    ap.add_argument("--tar-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = random.Random(13)
    body = wal_like(rng, SEG)
    keyring = crypto.Keyring(os.urandom(32))
    kinds = {"pgbench": lambda i: body[i * 97:] + body[:i * 97],
             "random": lambda i: rng.randbytes(SEG)}
    tar_bytes = make_tar(rng, args.tar_mib)
    owner = Owner.for_config(Config(postgres=PostgresConfig(user="pgtest")))
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="pitr-bench-encryption-") as tmp:
        root = Path(tmp)
        names: dict[str, list[str]] = {}
        for kind, make in kinds.items():
            wal_dir = root / f"pg_wal-{kind}"
            wal_dir.mkdir()
            tli = "00000001" if kind == "pgbench" else "00000002"
            names[kind] = [f"{tli}00000000000000{i + 1:02X}" for i in range(args.segments)]
            for i, n in enumerate(names[kind]):
                (wal_dir / n).write_bytes(segment(n, make(i)))

        def repo(mode: str, where: str) -> Repo:
            return Repo(FsStorage(root / f"{where}-{mode}"), "s",
                        keyring if mode == "on" else None)

        def push(kind: str) -> Callable[[str, int], None]:
            def run(mode: str, r: int) -> None:
                rp = repo(mode, f"wal-{kind}-{r}")
                for n in names[kind]:
                    push_wal(rp, root / f"pg_wal-{kind}" / n, level=3, budget=60)
            return run

        def fetch(mode: str, r: int) -> None:
            rp = repo(mode, "wal-pgbench-0")
            out = root / f"fetched-{mode}-{r}"
            out.mkdir()
            for n in names["pgbench"]:
                fetch_wal(rp, n, out / n, budget=60)

        objs: dict[str, BackupObject] = {}

        def backup(mode: str, r: int) -> None:
            rp = repo(mode, "bk")
            key = f"s/backups/b{r}/base.tar.zst"
            raw, stored, digest = stream.Count(), stream.Count(), stream.Hash()
            with stream.Pipeline(io.BytesIO(tar_bytes), [raw, stream.ReadAhead(4),
                                                         stream.ZstdCompress(3), stored,
                                                         digest]) as pipe:
                rp.storage.put(key, pipe)
            objs[mode] = BackupObject("base.tar.zst", key, raw.bytes, stored.bytes,
                                      digest.sha256, "")

        def restore(mode: str, r: int) -> None:
            dest = root / f"restored-{mode}-{r}"
            dest.mkdir(mode=0o700)
            extract_backup(repo(mode, "bk").storage, (objs[mode],), dest, owner,
                           RestoreResult(dest))

        phases: dict[str, Callable[[str, int], None]] = {
            "push-pgbench": push("pgbench"), "push-random": push("random"),
            "fetch": fetch, "backup": backup, "restore": restore}
        for phase, fn in phases.items():
            results[phase] = {m: [] for m in MODES}
            for r in range(args.rounds):
                for mode in MODES if r % 2 == 0 else MODES[::-1]:
                    res: dict[str, float] = {}
                    with timed(res):
                        fn(mode, r)
                    results[phase][mode].append(res)
    wal_mib = args.segments * SEG / 2**20
    mib = {"push-pgbench": wal_mib, "push-random": wal_mib, "fetch": wal_mib,
           "backup": args.tar_mib, "restore": args.tar_mib}
    report: dict[str, Any] = {"segments": args.segments, "tar_mib": args.tar_mib,
                              "rounds": args.rounds}
    for phase, by_mode in results.items():
        report[phase] = {m: min(rs, key=lambda x: x["cpu"]) for m, rs in by_mode.items()}
        off, on = report[phase]["off"], report[phase]["on"]
        report[phase]["cpu_ratio"] = round(on["cpu"] / off["cpu"], 3)
        report[phase]["wall_ratio"] = round(on["wall"] / off["wall"], 3)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{'phase':13s} {'MiB':>5s}  {'cpu off':>8s} {'cpu on':>8s} {'ratio':>6s}  "
          f"{'wall off':>8s} {'wall on':>8s} {'ratio':>6s}")
    for phase in phases:
        r = report[phase]
        print(f"{phase:13s} {mib[phase]:5.0f}  {r['off']['cpu']:8.2f} {r['on']['cpu']:8.2f} "
              f"{r['cpu_ratio']:6.3f}  {r['off']['wall']:8.2f} {r['on']['wall']:8.2f} "
              f"{r['wall_ratio']:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
