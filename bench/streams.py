#!/usr/bin/env python3
"""CPU cost of pitr's byte paths, without PostgreSQL or S3: WAL push and fetch of
16 MiB segments, the backup's compressing upload and the restore's extract, all
against the local-directory driver in a temporary directory.

CPU-seconds (user + system of the whole process, every thread) are the figure to
compare on a shared machine; wall seconds are printed too. Each phase runs
``--rounds`` times and the best round is kept.

    /opt/pitr-venv/bin/python bench/streams.py [--segments 16] [--tar-mib 256]
        [--rounds 3] [--json]

Point PYTHONPATH at another checkout to measure it with the same workload
(docs/design-streams.md, "Measuring").
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(ROOT / "tests"))

from support import walbytes  # noqa: E402

from pitr.config import Config, PostgresConfig  # noqa: E402
from pitr.manifest import BackupObject  # noqa: E402
from pitr.repo import Repo  # noqa: E402
from pitr.restore import Owner, RestoreResult, extract_backup  # noqa: E402
from pitr.storage.fs import FsStorage  # noqa: E402
from pitr.wal.fetch import fetch_wal  # noqa: E402
from pitr.wal.push import push_wal  # noqa: E402

SEG = 16 << 20


def cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@contextmanager
def timed(out: dict[str, float]) -> Iterator[None]:
    c0, w0 = cpu(), time.monotonic()
    yield
    out["cpu"], out["wall"] = cpu() - c0, time.monotonic() - w0


def wal_like(rng: random.Random, size: int) -> bytes:
    """Pages that compress about 3:1, like pgbench WAL: a random third, repeated."""
    out = bytearray()
    while len(out) < size:
        part = rng.randbytes(2730)
        out += part + part[::-1] + part[:2732]
    return bytes(out[:size])


def segment(name: str, body: bytes) -> bytes:
    head = walbytes.segment_bytes(name, seg_size=SEG)[:40]
    return head + body[40:SEG]


def make_tar(rng: random.Random, mib: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|") as tar:
        for i in range(mib // 8):
            data = wal_like(rng, 8 << 20) if i % 4 else bytes(8 << 20)
            info = tarfile.TarInfo(f"base/1/{16384 + i}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def store_tar(storage: FsStorage, key: str, tar_bytes: bytes) -> BackupObject:
    """The backup's upload: compress on the way into Storage.put (old or new API)."""
    try:
        from pitr import stream
    except ImportError:
        from pitr.codec import CompressingReader

        reader = CompressingReader(io.BytesIO(tar_bytes), 3, hash_raw=False)
        try:
            storage.put(key, reader)
        finally:
            reader.close()
        return BackupObject("base.tar.zst", key, reader.raw_bytes, reader.stored_bytes,
                            reader.stored_sha256, "")
    raw, stored, digest = stream.Count(), stream.Count(), stream.Hash()
    with stream.Pipeline(io.BytesIO(tar_bytes), [raw, stream.ReadAhead(4),
                                                 stream.ZstdCompress(3), stored,
                                                 digest]) as pipe:
        storage.put(key, pipe)
    return BackupObject("base.tar.zst", key, raw.bytes, stored.bytes, digest.sha256, "")


def best(rounds: int, fn: Callable[[int], None]) -> dict[str, float]:
    results = []
    for r in range(rounds):
        res: dict[str, float] = {}
        with timed(res):
            fn(r)
        results.append(res)
    return min(results, key=lambda x: x["cpu"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--segments", type=int, default=16)
    ap.add_argument("--tar-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = random.Random(13)
    body = wal_like(rng, SEG)
    names = [f"0000000100000000000000{i + 1:02X}" for i in range(args.segments)]
    segs = {n: segment(n, body[i * 97:] + body[:i * 97]) for i, n in enumerate(names)}
    tar_bytes = make_tar(rng, args.tar_mib)
    owner = Owner.for_config(Config(postgres=PostgresConfig(user="pgtest")))
    report: dict[str, Any] = {"segments": args.segments, "tar_mib": args.tar_mib}
    with tempfile.TemporaryDirectory(prefix="pitr-bench-streams-") as tmp:
        root = Path(tmp)
        wal_dir = root / "pg_wal"
        wal_dir.mkdir()
        for n, data in segs.items():
            (wal_dir / n).write_bytes(data)

        def push(r: int) -> None:
            repo = Repo(FsStorage(root / f"repo{r}"), "s")
            for n in names:
                push_wal(repo, wal_dir / n, level=3, budget=60)

        def fetch(r: int) -> None:
            repo = Repo(FsStorage(root / "repo0"), "s")
            out = root / f"fetched{r}"
            out.mkdir()
            for n in names:
                fetch_wal(repo, n, out / n, budget=60)

        objs: list[BackupObject] = []

        def backup(r: int) -> None:
            objs.append(store_tar(FsStorage(root / "bk"), f"s/b{r}/base.tar.zst", tar_bytes))

        def restore(r: int) -> None:
            dest = root / f"restored{r}"
            dest.mkdir(mode=0o700)
            extract_backup(FsStorage(root / "bk"), (objs[0],), dest, owner, RestoreResult(dest))

        report["push"] = best(args.rounds, push)
        report["fetch"] = best(args.rounds, fetch)
        report["backup"] = best(args.rounds, backup)
        report["restore"] = best(args.rounds, restore)
    if args.json:
        print(json.dumps(report))
    else:
        wal_mib = args.segments * SEG / 2**20
        for phase, mib in (("push", wal_mib), ("fetch", wal_mib), ("backup", args.tar_mib),
                           ("restore", args.tar_mib)):
            r = report[phase]
            print(f"{phase:8s} {mib:6.0f} MiB  cpu {r['cpu']:6.2f} s  wall {r['wall']:6.2f} s  "
                  f"({mib / r['cpu']:6.0f} MiB per CPU-s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
