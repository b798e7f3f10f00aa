"""How many buckets and bytes the test S3 server takes before a PUT fails.

Starts ``weed mini`` the way the test fixtures do (tests/support/s3server.py), then makes
buckets one after another and PUTs into each (storage classes cycling through none,
STANDARD_IA and GLACIER, as tests/integration/test_storage_tiers.py uses them) until the
planned amount is written or the first request fails. Prints the numbers reached, and on
a failure the server's state and log tail (docs/development.md, "The test S3 server").

    python scripts/s3_capacity.py                  # the fixture's settings
    python scripts/s3_capacity.py --weed-defaults  # weed mini's disk-derived defaults

Exit 0 when every PUT succeeded, 1 at the first failure.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.s3server import MAX_VOLUMES, VOLUME_SIZE_MB, S3Server

CLASSES = ("", "STANDARD_IA", "GLACIER")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--buckets", type=int, default=300)
    ap.add_argument("--mib-per-bucket", type=int, default=10,
                    help="MiB written into each bucket (default 10: 300 buckets = 2.9 GiB)")
    ap.add_argument("--object-mib", type=int, default=5, help="size of one PUT (default 5)")
    ap.add_argument("--weed-defaults", action="store_true",
                    help="leave volume size and count to weed mini (the settings before "
                         "the fix)")
    ap.add_argument("--volume-size-mb", type=int, default=VOLUME_SIZE_MB)
    ap.add_argument("--max-volumes", type=int, default=MAX_VOLUMES)
    args = ap.parse_args(argv)

    server = S3Server(volume_size_mb=None if args.weed_defaults else args.volume_size_mb,
                      max_volumes=None if args.weed_defaults else args.max_volumes)
    body = os.urandom(args.object_mib * 2**20)
    puts = written = 0
    started = time.monotonic()
    with server:
        slots = server.volume_slots()
        print(f"weed mini {server.endpoint}: volume slots {slots and slots[0]}, "
              f"volume size {'auto' if args.weed_defaults else args.volume_size_mb} MB, "
              f"data in {server.data_dir}")
        client = server.client()

        def report(state: str) -> None:
            print(f"{state}: {bucket_no} buckets made, {puts} PUTs, "
                  f"{written / 2**30:.2f} GiB written in {time.monotonic() - started:.0f} s")

        bucket_no = 0
        for i in range(args.buckets):
            storage_class = CLASSES[i % len(CLASSES)]
            try:
                bucket = server.make_bucket()
                bucket_no += 1
                for j in range(max(1, args.mib_per_bucket // args.object_mib)):
                    extra = {"StorageClass": storage_class} if storage_class else {}
                    client.put_object(Bucket=bucket, Key=f"obj-{j}", Body=io.BytesIO(body),
                                      **extra)
                    puts += 1
                    written += len(body)
            except Exception as exc:
                report(f"FAILED at bucket {i + 1} (class {storage_class or 'none'})")
                print(f"error: {exc}")
                print(server.diagnostics(60))
                return 1
        report("ok")
        print(server.diagnostics(5))
    return 0


if __name__ == "__main__":
    sys.exit(main())
