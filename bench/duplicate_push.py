#!/usr/bin/env python3
"""The cost of archive-push's duplicate path: answering "already archived" for a 16 MiB
segment that is stored, now that the whole stored object is proven first (docs/archiving.md,
"What archive-push guarantees").

Pushes N synthetic segments (a valid long page header; compressible text-like or
random bytes) into a local-directory repository and into a SeaweedFS S3 server,
then pushes each again, in-process (no process start-up), and prints the median
ms per push for: the first push, the duplicate push (read, compress, refused
conditional PUT, proof), reading the stored header alone (what the old duplicate
path read) and the proof alone (whole-object GET + zstd + sha256): the proof
minus the header read is what proving costs.

    /opt/pitr-venv/bin/python bench/duplicate_push.py [--segments 8] [--repos local,s3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from support.walbytes import segment_bytes  # noqa: E402

from pitr.repo import Repo  # noqa: E402
from pitr.storage import open_storage  # noqa: E402
from pitr.storage.base import read_bytes  # noqa: E402
from pitr.wal.push import prove_stored, push_wal  # noqa: E402

SEG = 16 << 20


def synthetic(name: str, kind: str) -> bytes:
    if kind == "random":
        fill = os.urandom(SEG)
    else:  # text-like: compresses about 4:1, like pgbench WAL
        fill = b"".join(os.urandom(16).hex().encode() + b" pgbench_accounts row;" * 2
                        for _ in range(SEG // 76 + 1))
    return segment_bytes(name, seg_size=SEG, fill=fill)


def ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 1)


def run(repo: Repo, tmp: Path, kind: str, n: int, base: int) -> dict[str, float]:
    first: list[float] = []
    dup: list[float] = []
    header: list[float] = []
    proof: list[float] = []
    for i in range(n):
        name = f"00000001000000000000{base + i:04X}"
        path = tmp / name
        path.write_bytes(synthetic(name, kind))
        t = time.perf_counter()
        assert push_wal(repo, path, level=3, budget=60).status == "stored"
        first.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert push_wal(repo, path, level=3, budget=60).status == "already-archived"
        dup.append(time.perf_counter() - t)
        t = time.perf_counter()
        read_bytes(repo.storage, repo.wal_key(name), 4096)
        header.append(time.perf_counter() - t)
        t = time.perf_counter()
        stored, _etag = repo.storage.read_with_etag(repo.wal_key(name))
        assert not isinstance(prove_stored(stored, name), str)
        proof.append(time.perf_counter() - t)
        path.unlink()
    return {"first_push_ms": ms(first), "duplicate_push_ms": ms(dup),
            "header_read_ms": ms(header), "whole_object_proof_ms": ms(proof)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segments", type=int, default=8)
    ap.add_argument("--repos", default="local,s3")
    args = ap.parse_args()
    from pitr.config import Duration, RepositoryConfig

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for repo_kind in args.repos.split(","):
            server = None
            if repo_kind == "s3":
                from support.s3server import S3Server

                server = S3Server(tmp / "s3")
                server.start()
                section = server.repo_section(server.make_bucket())
            else:
                section = {"url": f"file://{tmp / 'repo'}"}
            section["timeout"] = Duration(60)
            section["request_timeout"] = Duration(30)
            try:
                repo = Repo(open_storage(RepositoryConfig(**section)), "bench")
                for j, kind in enumerate(("text-like", "random")):
                    res = run(repo, tmp, kind, args.segments, 0x10 + j * 0x40)
                    print(f"{repo_kind:5} {kind:9} " + "  ".join(f"{k} {v}"
                                                              for k, v in res.items()))
            finally:
                if server is not None:
                    server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
