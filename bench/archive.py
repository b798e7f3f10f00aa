#!/usr/bin/env python3
"""Archive throughput through PostgreSQL's real archiver: `cp` baseline vs pitr modes.

For each workload (compressible pgbench WAL, incompressible random bytes) the
bench builds a backlog of N ready segments with archiving paused (archive_mode
on, archive_command empty), then sets the mode's archive_command, reloads, and
times until the archiver has no .ready file left. It prints ms/segment,
MiB/s of raw WAL and the machine's CPU-seconds per GiB archived for every
(workload, repository, mode).

CPU per GiB is the whole machine's busy time over the timed drain, from
/proc/stat (user, nice, system, irq, softirq, steal), so PostgreSQL, every
archive-push process, agents, pgBackRest's processes and the S3 server all
count. Other load on the machine counts too: the busy rate of a short sample
just before each drain (archiving paused) is reported, and ``cpu_s_per_gib_net``
subtracts it; on a shared machine read the net figure with its noise in mind.
When it can (root, cgroup v1 cpuacct or cgroup v2), the bench also runs in a
cgroup of its own, which every process it starts inherits (PostgreSQL, each
archive-push, agents started on demand, pgBackRest, the S3 server):
``cgroup_cpu_s_per_gib`` is that cgroup's CPU over the drain, exact whatever else
the machine runs.

Run as root (clusters run as the `pgtest` user, like the tests):

    /opt/pitr-venv/bin/python bench/archive.py [--segments 64] [--modes cp,pitr-sync]
        [--repos local,s3] [--workloads pgbench,random] [--json]

Adding a mode is adding one function: decorate a context manager that yields a
:class:`Target` (the archive_command, and how to measure what it stored) with
``@mode("name", repos=(...))``; set-up before the yield, tear-down after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.pgcluster import PG_BINDIR, PgCluster, make_user_dir, run_as  # noqa: E402

PITR_EXE = Path(sys.executable).parent / "pitr"
SEG = 16 << 20
BACKGROUND_SAMPLE = 5.0  # seconds


# -- what a mode is --------------------------------------------------------------------
@dataclass
class Target:
    command: str  # archive_command
    stored_bytes: Callable[[], int] | None = None  # bytes the mode left in its repository


@dataclass
class Ctx:
    workdir: Path
    s3: Any = None  # support.s3server.S3Server, started on demand
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def s3_section(self) -> dict[str, Any]:
        if self.s3 is None:
            from support.s3server import S3Server

            self.s3 = S3Server(self.workdir / "s3")
            self.s3.start()
            self.cleanups.append(self.s3.close)
        return dict(self.s3.repo_section(self.s3.make_bucket()))

    def repo_section(self, repo: str) -> dict[str, Any]:
        if repo == "s3":
            return self.s3_section()
        d = make_user_dir(self.workdir / f"repo-{uuid.uuid4().hex[:8]}", mode=0o700)
        return {"url": f"file://{d}"}


ModeFn = Callable[[Ctx, str], contextlib.AbstractContextManager[Target]]
MODES: dict[str, tuple[ModeFn, tuple[str, ...]]] = {}


def mode(name: str, repos: tuple[str, ...] = ("local", "s3")) -> Callable[[Any], ModeFn]:
    def register(fn: Callable[[Ctx, str], Iterator[Target]]) -> ModeFn:
        cm = contextlib.contextmanager(fn)
        MODES[name] = (cm, repos)
        return cm

    return register


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def write_pitr_config(ctx: Ctx, section: dict[str, Any], **extra: dict[str, Any]) -> Path:
    from conftest import write_config

    settings: dict[str, Any] = {"stanza": f"bench-{uuid.uuid4().hex[:8]}",
                                "repository": section, **extra}
    if os.environ.get("BENCH_LEVEL"):  # compare zstd levels without editing the defaults
        settings["compression"] = {"level": int(os.environ["BENCH_LEVEL"])}
    return write_config(ctx.workdir / f"pitr-{uuid.uuid4().hex[:8]}.toml", settings)


def repo_stored_bytes(cfg_path: Path) -> int:
    from pitr import config
    from pitr.storage import open_storage

    cfg = config.load(cfg_path, env={})
    return sum(o.size for o in open_storage(cfg.repository).list(f"{cfg.stanza}/wal/"))


# -- the modes -------------------------------------------------------------------------
@mode("cp", repos=("local",))
def cp_mode(ctx: Ctx, repo: str) -> Iterator[Target]:
    """PostgreSQL's documented example: not durable (no fsync), no compression, no checks."""
    d = make_user_dir(ctx.workdir / f"cp-{uuid.uuid4().hex[:8]}", mode=0o700)
    yield Target(f"test ! -f {d}/%f && cp %p {d}/%f", lambda: dir_bytes(d))


@mode("pitr-sync")
def pitr_sync_mode(ctx: Ctx, repo: str) -> Iterator[Target]:
    """`pitr archive-push` as archive_command, no agent: one process per segment."""
    cfg = write_pitr_config(ctx, ctx.repo_section(repo), archive={"agent_idle_exit": 0})
    yield Target(f"{PITR_EXE} --config {cfg} archive-push %p", lambda: repo_stored_bytes(cfg))


@mode("pitr-sync-enc")
def pitr_sync_enc_mode(ctx: Ctx, repo: str) -> Iterator[Target]:
    """`pitr-sync` with client-side encryption on (docs/encryption.md): compare the two
    in the same run."""
    keydir = make_user_dir(ctx.workdir / f"key-{uuid.uuid4().hex[:8]}", mode=0o700)
    run_as([str(PITR_EXE), "key", "generate", str(keydir / "repo.key")])
    cfg = write_pitr_config(ctx, ctx.repo_section(repo), archive={"agent_idle_exit": 0},
                            encryption={"key_file": str(keydir / "repo.key")})
    yield Target(f"{PITR_EXE} --config {cfg} archive-push %p", lambda: repo_stored_bytes(cfg))


@mode("pitr-nocli")
def pitr_nocli_mode(ctx: Ctx, repo: str) -> Iterator[Target]:
    """The same push through pitr.wal.commands directly, without typer's start-up cost
    (what pitr.entry can do for archive-push when no agent answers)."""
    cfg = write_pitr_config(ctx, ctx.repo_section(repo))
    code = ("import sys; from pitr.wal.commands import archive_push_main as m; "
            f"sys.exit(m({str(cfg)!r}, sys.argv[1]))")
    yield Target(f"{sys.executable} -c {shlex.quote(code)} %p", lambda: repo_stored_bytes(cfg))


# -- workloads: fill the backlog with N ready segments ----------------------------------
def current_segno(pg: PgCluster) -> int:
    return int(pg.scalar("select (pg_current_wal_lsn() - '0/0') / %s", [SEG]))


def workload_pgbench(pg: PgCluster, segments: int) -> None:
    start = current_segno(pg)
    scale = 1
    while current_segno(pg) - start < segments:
        # pgbench -i writes ~0.77 segments per scale unit; re-running it drops and refills.
        need = segments - (current_segno(pg) - start)
        scale = max(1, min(int(need / 0.77) + 1, 200))
        pg.pgbench_init(scale)


def workload_random(pg: PgCluster, segments: int) -> None:
    pg.sql("create extension if not exists pgcrypto")
    pg.sql("create table if not exists noise (b bytea)")
    start = current_segno(pg)
    while current_segno(pg) - start < segments:
        pg.sql("insert into noise select gen_random_bytes(1000) from generate_series(1, 8000)")
        pg.sql("truncate noise")


WORKLOADS: dict[str, Callable[[PgCluster, int], None]] = {
    "pgbench": workload_pgbench,
    "random": workload_random,
}


# -- one measurement ---------------------------------------------------------------------
def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine has been busy since boot (/proc/stat, all CPUs)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CgroupCpu:
    """CPU-seconds of this process and everything it starts, from a cgroup of its own."""

    V1 = Path("/sys/fs/cgroup/cpuacct")
    V2 = Path("/sys/fs/cgroup")

    def __init__(self) -> None:
        self.path: Path | None = None
        self.parent: Path | None = None
        for root, usage in ((self.V1, "cpuacct.usage"), (self.V2, "cpu.stat")):
            if not (root / usage).exists() and not (root / "cgroup.procs").exists():
                continue
            path = root / f"pitr-bench-{os.getpid()}"
            try:
                path.mkdir()
                (path / "cgroup.procs").write_text(f"{os.getpid()}\n")
            except OSError:
                with contextlib.suppress(OSError):
                    path.rmdir()
                continue
            if (path / usage).exists():
                self.path, self.parent, self.usage = path, root, usage
                return

    def seconds(self) -> float | None:
        if self.path is None:
            return None
        text = (self.path / self.usage).read_text()
        if self.usage == "cpuacct.usage":
            return int(text) / 1e9
        return int(dict(line.split() for line in text.splitlines())["usage_usec"]) / 1e6

    def close(self) -> None:
        if self.path is None or self.parent is None:
            return
        with contextlib.suppress(OSError):
            (self.parent / "cgroup.procs").write_text(f"{os.getpid()}\n")
            self.path.rmdir()  # fails while a straggler lives in it: harmless


CGROUP: CgroupCpu | None = None


@dataclass
class Result:
    workload: str
    repo: str
    mode: str
    segments: int
    seconds: float
    ms_per_segment: float
    mib_per_s: float
    stored_ratio: float | None
    failed: int
    cpu_s: float = 0.0  # machine busy CPU-seconds over the drain
    cpu_s_per_gib: float = 0.0
    background_cpu_per_s: float = 0.0  # busy rate just before, archiving paused
    cpu_s_per_gib_net: float = 0.0  # minus that background rate over the drain
    cgroup_cpu_s_per_gib: float | None = None  # the bench's own processes only


def ready_count(pg: PgCluster) -> int:
    return sum(1 for p in (pg.pgdata / "pg_wal" / "archive_status").iterdir()
               if p.name.endswith(".ready"))


def set_archive_command(pg: PgCluster, command: str) -> None:
    # ALTER SYSTEM takes no bind parameters.
    pg.sql("alter system set archive_command to " + quote_literal(command))
    pg.sql("select pg_reload_conf()")


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def measure(pg: PgCluster, ctx: Ctx, workload: str, repo: str, mode_name: str,
            segments: int, timeout: float) -> Result:
    set_archive_command(pg, "")
    WORKLOADS[workload](pg, segments)
    pg.switch_wal()
    time.sleep(0.5)  # let the last segment's .ready appear
    backlog = ready_count(pg)
    failed_before = pg.archiver_stats()["failed_count"]
    fn, _ = MODES[mode_name]
    # Before the mode's set-up: a prestarted agent is thawed there and starts working.
    b0, s0 = machine_busy_seconds(), time.monotonic()
    time.sleep(BACKGROUND_SAMPLE)
    background = (machine_busy_seconds() - b0) / (time.monotonic() - s0)
    with fn(ctx, repo) as target:
        own0 = CGROUP.seconds() if CGROUP is not None else None
        cpu0 = machine_busy_seconds()
        t0 = time.monotonic()
        set_archive_command(pg, target.command)
        while ready_count(pg) > 0:
            if time.monotonic() - t0 > timeout:
                raise SystemExit(f"{mode_name}/{repo}: {ready_count(pg)} segments still "
                                 f"waiting after {timeout}s\n{pg.log_tail()}")
            time.sleep(0.02)
        seconds = time.monotonic() - t0
        cpu = machine_busy_seconds() - cpu0
        own1 = CGROUP.seconds() if CGROUP is not None else None
        set_archive_command(pg, "")
        stored = target.stored_bytes() if target.stored_bytes else None
    failed = pg.archiver_stats()["failed_count"] - failed_before
    raw = backlog * SEG
    gib = raw / (1 << 30)
    return Result(workload, repo, mode_name, backlog, round(seconds, 3),
                  round(seconds * 1000 / backlog, 1), round(raw / (1 << 20) / seconds, 1),
                  round(stored / raw, 4) if stored is not None else None, failed,
                  round(cpu, 2), round(cpu / gib, 1), round(background, 3),
                  round(max(0.0, cpu - background * seconds) / gib, 1),
                  round((own1 - own0) / gib, 1) if own0 is not None and own1 is not None
                  else None)


def main(argv: list[str] | None = None) -> int:
    global BACKGROUND_SAMPLE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segments", type=int, default=64)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--repos", default="local,s3")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--background-sample", type=float, default=5.0,
                    help="seconds of machine CPU sampled before each drain (other load)")
    args = ap.parse_args(argv)
    BACKGROUND_SAMPLE = args.background_sample
    if not (PG_BINDIR / "initdb").exists() or not PITR_EXE.exists():
        print(f"need PostgreSQL in {PG_BINDIR} and {PITR_EXE}", file=sys.stderr)
        return 2

    global CGROUP
    CGROUP = CgroupCpu()  # before anything is started: they all inherit it
    base = Path(tempfile.mkdtemp(prefix="pitr-bench-"))
    base.chmod(0o755)
    ctx = Ctx(base)
    results: list[Result] = []
    pg = PgCluster(base, "pg")
    try:
        pg.initdb(conf={"archive_mode": "on", "archive_command": "",
                        "max_wal_size": "4GB", "checkpoint_timeout": "30min"})
        pg.server_env = {}  # each mode's config says whether archive-push starts an agent
        pg.start()
        for workload in args.workloads.split(","):
            for mode_name in args.modes.split(","):
                for repo in args.repos.split(","):
                    if repo not in MODES[mode_name][1]:
                        continue
                    r = measure(pg, ctx, workload, repo, mode_name, args.segments,
                                args.timeout)
                    results.append(r)
                    if not args.json:
                        print_row(r)
    finally:
        pg.stop("immediate")
        for cleanup in reversed(ctx.cleanups):
            with contextlib.suppress(Exception):
                cleanup()
        run_as(["rm", "-rf", str(base / "pg")], check=False)
        shutil.rmtree(base, ignore_errors=True)
        CGROUP.close()
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    return 0


_HEADER_DONE = False


def print_row(r: Result) -> None:
    global _HEADER_DONE
    if not _HEADER_DONE:
        print(f"{'workload':<9} {'repo':<6} {'mode':<17} {'segs':>5} {'seconds':>8} "
              f"{'ms/seg':>8} {'MiB/s':>7} {'stored':>7} {'failed':>6} {'cpu-s/GiB':>9} "
              f"{'net':>6} {'bg cpu':>6} {'cgroup':>6}")
        _HEADER_DONE = True
    stored = f"{r.stored_ratio:.1%}" if r.stored_ratio is not None else "-"
    print(f"{r.workload:<9} {r.repo:<6} {r.mode:<17} {r.segments:>5} {r.seconds:>8.2f} "
          f"{r.ms_per_segment:>8.1f} {r.mib_per_s:>7.1f} {stored:>7} {r.failed:>6} "
          f"{r.cpu_s_per_gib:>9.1f} {r.cpu_s_per_gib_net:>6.1f} {r.background_cpu_per_s:>6.2f} "
          f"{r.cgroup_cpu_s_per_gib if r.cgroup_cpu_s_per_gib is not None else '-':>6}",
          flush=True)


if __name__ == "__main__":
    os.umask(0o022)
    # Issue 5's modes (pitr-agent, pgbackrest-async), the S3 ceiling and fast-path
    # latency live in bench/archive_agent.py, which registers on this module.
    sys.modules.setdefault("archive", sys.modules[__name__])
    import archive_agent

    sys.exit(archive_agent.main())
