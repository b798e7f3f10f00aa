#!/usr/bin/env python3
"""Issue 5's additions to bench/archive.py: the agent, pgBackRest async, the S3 ceiling,
and archive-push fast-path latency, all in the same run on the same cluster and server.

* mode ``pitr-agent``: ``pitr agent`` runs (as the cluster user) while PostgreSQL
  calls ``pitr archive-push``; timing still ends only when PostgreSQL's archiver
  has no ``.ready`` file left, i.e. every segment was confirmed durable. The
  agent is a daemon, so it is started (and frozen with SIGSTOP) before the
  backlog is written and thawed when the timer starts; its cold start (imports,
  client) is reported separately as ``cold_start_seconds``. archive-push runs
  from a non-editable copy of pitr (bench/installed.py), as pip installs it.
* mode ``pgbackrest-async``: pgBackRest 2.45 (Debian package) with
  ``archive-async=y``, ``process-max=2``, ``compress-type=zst``, level 3, over
  HTTPS to the same SeaweedFS server (a self-signed certificate with
  ``DNS:127.0.0.1`` in its SAN, verified through ``repo1-storage-ca-file``).
  The pitr agent talks to the same HTTPS port with the same certificate.
* mode ``pitr-on-demand``: the plain ``pitr archive-push %p`` with no agent running;
  the first archive-push starts ``pitr agent --on-demand`` (cold start timed).
* mode ``pgbackrest-sync``: pgBackRest with ``archive-async=n``, otherwise as async.
* the S3 server's own ingest ceiling: 16 MiB incompressible objects PUT from
  warm boto3 clients in several threads (best of 2/4/8 threads).
* fast-path latency: wall time of ``pitr archive-push`` answered from a receipt,
  started as the cluster user, next to ``python -c pass`` and ``/bin/true``.

Run through bench/archive.py (it imports this module), as root:

    /opt/pitr-venv/bin/python bench/archive.py --segments 64 --repos local,s3 \\
        --modes cp,pitr-sync,pitr-agent,pgbackrest-async,pitr-agent,pgbackrest-async

(a mode listed twice runs twice, interleaved; the summary takes medians).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import archive as A  # the running bench/archive.py (it aliases itself before importing us)
from installed import installed_copy
from support.pgcluster import PG_USER, as_user_cmd, chown_user, make_user_dir, run_as
from support.s3server import S3Server

EXTRA: dict[str, Any] = {"ceiling": {}, "fast_path": {}, "agent": [], "on_demand": []}


# -- an S3 server that also speaks HTTPS (pgBackRest requires TLS) --------------------
class TlsS3Server(S3Server):
    """The test server with HTTPS, its certificate naming 127.0.0.1 as DNS name too:
    pgBackRest matches the host against DNS entries of the SAN only."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, tls=True)

    def _make_certificate(self) -> None:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext",
                        "subjectAltName=DNS:127.0.0.1,IP:127.0.0.1",
                        "-keyout", str(self.data_dir / "tls-key.pem"),
                        "-out", str(self.ca_file)], check=True, capture_output=True)
        self.ca_file.chmod(0o644)

    @property
    def cert(self) -> Path:
        return Path(self.ca_file)

    @property
    def https_port(self) -> int:
        return int(self.ports["s3.port.https"])

    def tls_client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.https_endpoint, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            verify=str(self.cert),
            config=Config(s3={"addressing_style": "path"}, max_pool_connections=16,
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))


class BenchCtx(A.Ctx):
    """The bench context, with the TLS-capable server; the ceiling is measured once, on it."""

    def s3_section(self) -> dict[str, Any]:
        if self.s3 is None:
            self.s3 = TlsS3Server(self.workdir / "s3")
            self.s3.start()
            self.cleanups.append(self.s3.close)
            EXTRA["ceiling"] = s3_ceiling(self.s3)
        return dict(self.s3.repo_section(self.s3.make_bucket()))

    def tls_section(self) -> dict[str, Any]:
        section = self.s3_section()
        return {**section, "endpoint_url": self.s3.https_endpoint, "ca_bundle": str(self.s3.cert)}


# -- the S3 server's own ingest ceiling -------------------------------------------------
def s3_ceiling(server: TlsS3Server,
               objects: int = int(os.environ.get("BENCH_CEILING_OBJECTS", "32"))) -> dict[str, Any]:
    payloads = [os.urandom(16 << 20) for _ in range(4)]
    out: dict[str, Any] = {}
    for transport in ("https", "http"):
        best = 0.0
        per: dict[int, float] = {}
        for threads in (2, 4, 8):
            bucket = server.make_bucket()
            clients = [server.tls_client() if transport == "https" else server.client()
                       for _ in range(threads)]
            for c in clients:  # warm: connection, TLS session, credentials
                c.put_object(Bucket=bucket, Key="warm", Body=b"x")

            def put(i: int, bucket: str = bucket, clients: list[Any] = clients,
                    threads: int = threads) -> None:
                clients[i % threads].put_object(Bucket=bucket, Key=f"o/{i}",
                                                Body=payloads[i % len(payloads)])

            t0 = time.monotonic()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(put, range(objects)))
            mibs = objects * 16 / (time.monotonic() - t0)
            per[threads] = round(mibs, 1)
            best = max(best, mibs)
            c = server.client()
            for i in range(objects):
                c.delete_object(Bucket=bucket, Key=f"o/{i}")
        out[transport] = {"best_mib_per_s": round(best, 1), "by_threads": per}
    print(f"# S3 ingest ceiling (16 MiB random objects, warm boto3 clients): "
          f"https {out['https']['by_threads']} MiB/s, http {out['http']['by_threads']} MiB/s",
          flush=True)
    return out


# -- mode: pitr with the agent ----------------------------------------------------------
def _pid_from_lock(lock: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    from pitr.wal.spool import lock_held

    deadline = time.monotonic() + timeout
    while not lock_held(lock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"pitr agent did not start (exit {proc.poll()})")
        time.sleep(0.05)
    return int(lock.read_text().split()[0])


@dataclass
class AgentRun:
    proc: subprocess.Popen[bytes]
    pid: int
    cfg: Path
    spool: Any
    log: Any
    cold_start_seconds: float


PRESTARTED: dict[str, AgentRun] = {}
# As systemd/pitr-agent.service runs it (Nice=): PostgreSQL's archive-push processes,
# one per segment in series, must not queue behind the agent's compression.
AGENT_PREFIX = ["nice", "-n", os.environ.get("BENCH_AGENT_NICE", "10")]


def start_agent(ctx: BenchCtx, repo: str) -> AgentRun:
    """Start `pitr agent` as the cluster user; returns once it is warm (first scan done)."""
    from pitr import config
    from pitr.wal.spool import Spool

    section = ctx.tls_section() if repo == "s3" else ctx.repo_section(repo)
    spool_dir = make_user_dir(ctx.workdir / f"spool-{uuid.uuid4().hex[:8]}", mode=0o700)
    cfg = A.write_pitr_config(ctx, section,
                              archive={"spool_dir": str(spool_dir), "fast_path_wait": 60,
                                       "workers": 4, "agent_idle_exit": 0},
                              postgres={"pgdata": str(ctx.workdir / "pg" / "data")},
                              monitor={"port": 0})
    c = config.load(cfg, env={})
    spool = Spool(c.archive.spool_dir, c.stanza)
    log = open(ctx.workdir / f"agent-{c.stanza}.log", "ab")  # noqa: SIM115
    t0 = time.monotonic()
    argv = [*AGENT_PREFIX, str(A.PITR_EXE), "--config", str(cfg), "agent"]
    proc = subprocess.Popen(as_user_cmd(argv),
                            stdout=log, stderr=subprocess.STDOUT,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
    pid = _pid_from_lock(spool.agent_lock, proc)
    while not spool.status_path.exists():  # written after the client is built and a scan
        time.sleep(0.01)
    return AgentRun(proc, pid, cfg, spool, log, round(time.monotonic() - t0, 2))


def prestart_agent(ctx: BenchCtx, repo: str) -> None:
    """Start the agent before the backlog is written and freeze it (SIGSTOP) meanwhile.

    The agent is a daemon: when a burst of WAL arrives it is already running,
    with its imports done and its client built. Frozen while bench/archive.py
    writes the backlog, it does no work before the timer starts; the mode thaws
    it (SIGCONT) when the timer starts. Its cold start is reported separately.
    """
    run = start_agent(ctx, repo)
    os.kill(run.pid, signal.SIGSTOP)
    PRESTARTED[repo] = run


def cpu_seconds(pid: int | None) -> float:
    """user + system CPU of a live process, from /proc (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def installed_sh_command(venv: Path, cfg: Path) -> str:
    """archive_command as `pitr setup` writes it, with the installed copy's script."""
    from pitr import config
    from pitr.setup import ARCHIVE_PUSH_SH, archive_commands, proof_dir_of

    command, _ = archive_commands(str(venv / "bin" / "pitr"), str(cfg),
                                  proof_dir_of(config.load(cfg, env={})))
    script = next(venv.glob("lib/python3*/site-packages/pitr/archive-push.sh"))
    return command.replace(str(ARCHIVE_PUSH_SH), str(script))


def _agent_mode(ctx: BenchCtx, repo: str, *, shell: bool) -> Iterator[A.Target]:
    run = PRESTARTED.pop(repo, None) or start_agent(ctx, repo)
    # PostgreSQL starts archive-push once per segment: run it as pip installs pitr,
    # not through the dev venv's editable-install import hook (bench/installed.py).
    if not (ctx.workdir / "venv-installed").exists():
        installed_copy(ctx.workdir)
    venv = ctx.workdir / "venv-installed"
    command = (installed_sh_command(venv, run.cfg) if shell
               else f"{venv / 'bin' / 'pitr'} --config {run.cfg} archive-push %p")
    weed = ctx.s3._proc.pid if ctx.s3 is not None and ctx.s3._proc is not None else None
    cpu0 = {"agent": cpu_seconds(run.pid), "weed": cpu_seconds(weed)}
    os.kill(run.pid, signal.SIGCONT)
    # runuser stops itself when its child stops (job control, like su): thaw it too.
    os.kill(run.proc.pid, signal.SIGCONT)
    try:
        yield A.Target(command, lambda: A.repo_stored_bytes(run.cfg))
    finally:
        # CPU spent during the drain (the timer stops before this runs)
        cpu = {f"{k}_cpu_s": round(cpu_seconds(p) - cpu0[k], 2)
               for k, p in (("agent", run.pid), ("weed", weed))}
        os.kill(run.pid, signal.SIGTERM)
        run.proc.wait(60)
        run.log.close()
        spool = run.spool
        lines = spool.fastpath_log.read_text().splitlines() if spool.fastpath_log.exists() else []
        inproc = [float(line.split()[3].removesuffix("ms")) for line in lines
                  if line.split()[2] == "fast-path"]
        status = spool.read_status() or {}
        EXTRA["agent"].append({"repo": repo, "shell": shell, **cpu,
                               "shell_answers": sum(line.endswith(" fast-path-sh")
                                                    for line in lines),
                               "fast_path_answers": len(inproc),
                               "fast_path_inproc_ms_p50": _pct(inproc, 50),
                               "fast_path_inproc_ms_p95": _pct(inproc, 95),
                               "fast_path_wait_total_s": round(sum(inproc) / 1000, 2),
                               "cold_start_seconds": run.cold_start_seconds,
                               "failures": status.get("failures", {}).get("total")})


@A.mode("pitr-agent", repos=("s3",))
def pitr_agent_mode(ctx: BenchCtx, repo: str) -> Iterator[A.Target]:
    """`pitr agent` pushes ahead; PostgreSQL's archive-push answers from its receipts."""
    yield from _agent_mode(ctx, repo, shell=False)


@A.mode("pitr-agent-sh", repos=("s3",))
def pitr_agent_sh_mode(ctx: BenchCtx, repo: str) -> Iterator[A.Target]:
    """The same, with `pitr setup`'s archive_command: archive-push.sh answers from proofs."""
    yield from _agent_mode(ctx, repo, shell=True)


# -- mode: the plain archive_command, agent started on demand ----------------------------
@A.mode("pitr-on-demand", repos=("s3",))
def pitr_on_demand_mode(ctx: BenchCtx, repo: str) -> Iterator[A.Target]:
    """The README's plain `pitr archive-push %p` with no agent running: the first
    archive-push starts `pitr agent --on-demand` (its cold start is timed), default
    archive settings otherwise (fast_path_wait 2 s, 4 workers), HTTPS as pitr-agent."""
    from pitr import config
    from pitr.wal.spool import Spool

    spool_dir = make_user_dir(ctx.workdir / f"spool-{uuid.uuid4().hex[:8]}", mode=0o700)
    cfg = A.write_pitr_config(ctx, ctx.tls_section(),
                              archive={"spool_dir": str(spool_dir), "agent_idle_exit": 60},
                              postgres={"pgdata": str(ctx.workdir / "pg" / "data")},
                              monitor={"port": 0})
    c = config.load(cfg, env={})
    spool = Spool(c.archive.spool_dir, c.stanza)
    if not (ctx.workdir / "venv-installed").exists():
        installed_copy(ctx.workdir)
    venv = ctx.workdir / "venv-installed"
    try:
        yield A.Target(f"{venv / 'bin' / 'pitr'} --config {cfg} archive-push %p",
                       lambda: A.repo_stored_bytes(cfg))
    finally:
        from pitr.wal.spool import lock_held

        log = spool.base / "agent.log"
        started = log.read_text().count("agent started") if log.exists() else 0
        lines = spool.fastpath_log.read_text().splitlines() if spool.fastpath_log.exists() else []
        if lock_held(spool.agent_lock):  # stop it, as its idle exit would
            with contextlib.suppress(ProcessLookupError, ValueError, IndexError):
                os.kill(int(spool.agent_lock.read_text().split()[0]), signal.SIGTERM)
        EXTRA["on_demand"].append({"repo": repo, "agents_started": started,
                                   "fast_path_answers": len(lines)})


# -- mode: pgBackRest 2.45 archiving, asynchronous and synchronous -------------------------
@A.mode("pgbackrest-async", repos=("s3",))
def pgbackrest_async_mode(ctx: BenchCtx, repo: str) -> Iterator[A.Target]:
    """pgBackRest archive-push with archive-async=y, process-max=2, zst level 3, HTTPS."""
    yield from _pgbackrest(ctx, repo, asynchronous=True)


@A.mode("pgbackrest-sync", repos=("s3",))
def pgbackrest_sync_mode(ctx: BenchCtx, repo: str) -> Iterator[A.Target]:
    """The same with archive-async=n: one pgbackrest process per segment."""
    yield from _pgbackrest(ctx, repo, asynchronous=False)


def _pgbackrest(ctx: BenchCtx, repo: str, *, asynchronous: bool) -> Iterator[A.Target]:
    exe = shutil.which("pgbackrest")
    if exe is None:
        raise SystemExit("pgbackrest missing: apt-get install -y pgbackrest")
    section = ctx.s3_section()
    server: TlsS3Server = ctx.s3
    bucket = section["url"].removeprefix("s3://").split("/", 1)[0]
    d = make_user_dir(ctx.workdir / f"pgbackrest-{uuid.uuid4().hex[:8]}", mode=0o700)
    for sub in ("spool", "lock", "log"):
        make_user_dir(d / sub, mode=0o700)
    pg = ctx.workdir / "pg"
    port = int(next(line.split("=")[1].strip() for line in
                    reversed((pg / "data" / "postgresql.conf").read_text().splitlines())
                    if line.startswith("port =")))
    conf = d / "pgbackrest.conf"
    conf.write_text("\n".join([
        "[global]", "repo1-type=s3", "repo1-path=/pgbackrest", f"repo1-s3-bucket={bucket}",
        "repo1-s3-endpoint=127.0.0.1", f"repo1-s3-port={server.https_port}",
        f"repo1-s3-region={server.region}", f"repo1-s3-key={server.access_key}",
        f"repo1-s3-key-secret={server.secret_key}", "repo1-s3-uri-style=path",
        f"repo1-storage-ca-file={server.cert}",
        f"archive-async={'y' if asynchronous else 'n'}", f"spool-path={d / 'spool'}",
        "process-max=2",
        "compress-type=zst", "compress-level=3",
        f"lock-path={d / 'lock'}", f"log-path={d / 'log'}",
        "log-level-console=warn", "log-level-stderr=warn", "log-level-file=info",
        "[bench]", f"pg1-path={pg / 'data'}", f"pg1-port={port}",
        f"pg1-socket-path={pg / 'sock'}", "pg1-user=postgres", ""]))
    conf.chmod(0o600)
    chown_user(conf)
    run_as([exe, f"--config={conf}", "--stanza=bench", "stanza-create"], timeout=120)

    def stored() -> int:
        client = server.client()
        total = 0
        for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix="pgbackrest/archive/"):
            total += sum(o["Size"] for o in page.get("Contents", []))
        return total

    yield A.Target(f"{exe} --config={conf} --stanza=bench archive-push %p", stored)


# -- archive-push fast-path latency ----------------------------------------------------
_TIMER = r"""
import json, subprocess, sys, time
cmds, n, cwd = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
out = {k: [] for k in cmds}
for _ in range(n):  # round-robin, so load from other processes hits every command alike
    for k, argv in cmds.items():
        t = time.perf_counter()
        rc = subprocess.run(argv, cwd=cwd).returncode
        out[k].append((time.perf_counter() - t) * 1000)
        if rc != 0:
            sys.exit(f"{argv} exited {rc}")
print(json.dumps(out))
"""


def _pct(xs: list[float], p: int) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))], 2)


def _time_as_user(cmds: dict[str, list[str]], n: int, cwd: Path) -> dict[str, Any]:
    proc = run_as(["/usr/bin/python3", "-c", _TIMER, json.dumps(cmds), str(n), str(cwd)],
                  timeout=1200)
    return {k: {"p50_ms": _pct(xs, 50), "p95_ms": _pct(xs, 95), "n": n}
            for k, xs in json.loads(proc.stdout).items()}


def fast_path_latency(workdir: Path,
                      n: int = int(os.environ.get("BENCH_FAST_PATH_RUNS", "200")),
                      ) -> dict[str, Any]:
    """Wall time PostgreSQL pays per segment when a receipt proves it stored."""
    from pitr.wal.spool import FileIdentity, Receipt, Spool

    base = make_user_dir(workdir / "fastpath", mode=0o755)
    wal = make_user_dir(base / "data" / "pg_wal", mode=0o700)
    name = "000000010000000000000042"
    seg = wal / name
    seg.write_bytes(os.urandom(16 << 20))
    chown_user(seg)
    spool_dir = make_user_dir(base / "spool", mode=0o700)
    cfg = A.write_pitr_config(A.Ctx(base), {"url": f"file://{base}/repo"},
                              archive={"spool_dir": str(spool_dir)})
    from pitr import config

    c = config.load(cfg, env={})
    spool = Spool(spool_dir, c.stanza)
    run_as(["mkdir", "-p", str(spool.archive_dir)])
    spool.write_receipt(Receipt(name, c.repository.url, FileIdentity.of(seg.stat()), "0" * 64,
                                time.time()))
    subprocess.run(["chown", "-R", PG_USER, str(spool.archive_dir)], check=True)
    py = str(Path(sys.executable))
    installed = installed_copy(base, with_deps=False)
    data = base / "data"
    args = ["--config", str(cfg), "archive-push", f"pg_wal/{name}"]
    sh_command = installed_sh_command(installed, cfg)
    out = _time_as_user({
        "bin_true": ["/bin/true"],
        "python_pass_dev_venv": [py, "-c", "pass"],
        "python_pass_installed": [str(installed / "bin" / "python"), "-c", "pass"],
        "fast_path_dev_venv": [str(A.PITR_EXE), *args],
        "fast_path_installed": [str(installed / "bin" / "pitr"), *args],
        "fast_path_sh_installed": shlex.split(sh_command.replace("%p", f"pg_wal/{name}")),
    }, n, data)
    lines = spool.fastpath_log.read_text().splitlines()
    assert len(lines) >= 3 * n, "the fast path was not taken"
    assert sum(line.endswith(" fast-path-sh") for line in lines) >= n, "archive-push.sh missed"
    print("# archive-push fast path (receipt present), wall ms as the cluster user: " +
          ", ".join(f"{k} p50 {v['p50_ms']} p95 {v['p95_ms']}" for k, v in out.items()),
          flush=True)
    return out


# docs/benchmarks.md: the agent must archive at least this many times as fast as
# pgBackRest's async mode on both WAL kinds, at no more CPU per GiB, in the same run.
THROUGHPUT_GOAL = 1.5


def summary(results: list[Any]) -> dict[str, Any]:
    """Medians over repeated runs (list a mode twice in --modes to interleave repeats)."""
    runs: dict[tuple[str, str, str], list[float]] = {}
    cpu: dict[tuple[str, str, str], list[float]] = {}
    own: dict[tuple[str, str, str], list[float]] = {}
    for r in results:
        runs.setdefault((r.workload, r.repo, r.mode), []).append(r.mib_per_s)
        cpu.setdefault((r.workload, r.repo, r.mode), []).append(r.cpu_s_per_gib_net)
        if r.cgroup_cpu_s_per_gib is not None:
            own.setdefault((r.workload, r.repo, r.mode), []).append(r.cgroup_cpu_s_per_gib)
    med = {k: statistics.median(v) for k, v in runs.items()}
    out: dict[str, Any] = {"median_mib_per_s": {"/".join(k): v for k, v in med.items()},
                           "median_cpu_s_per_gib_net": {"/".join(k): statistics.median(v)
                                                        for k, v in cpu.items()},
                           "median_cgroup_cpu_s_per_gib": {"/".join(k): statistics.median(v)
                                                           for k, v in own.items()}}
    ceiling = EXTRA["ceiling"].get("https", {}).get("best_mib_per_s")
    for wl in ("pgbench", "random"):
        pgbr = med.get((wl, "s3", "pgbackrest-async"))
        for m, key in (("pitr-agent", "agent"), ("pitr-agent-sh", "agent_sh")):
            agent = med.get((wl, "s3", m))
            if agent and pgbr:
                out[f"{wl}_{key}_vs_pgbackrest"] = round(agent / pgbr, 2)
        for m in ("pitr-agent", "pitr-agent-sh", "pgbackrest-async"):
            v = med.get((wl, "s3", m))
            if v and ceiling:
                out[f"{wl}_{m}_of_https_ceiling"] = round(v / ceiling, 2)
        # issue 14's goals, for the agent as `pitr setup` installs it (archive-push.sh)
        agent = med.get((wl, "s3", "pitr-agent-sh"))
        cpu_agent = own.get((wl, "s3", "pitr-agent-sh"))
        cpu_pgbr = own.get((wl, "s3", "pgbackrest-async"))
        if agent and pgbr:
            ratio = agent / pgbr
            goal: dict[str, Any] = {"throughput_vs_pgbackrest_async": round(ratio, 2),
                                    "throughput_goal": THROUGHPUT_GOAL,
                                    "throughput_met": ratio >= THROUGHPUT_GOAL}
            if cpu_agent and cpu_pgbr:
                a_cpu, p_cpu = statistics.median(cpu_agent), statistics.median(cpu_pgbr)
                goal.update(cgroup_cpu_s_per_gib=a_cpu, pgbackrest_cgroup_cpu_s_per_gib=p_cpu,
                            cpu_met=a_cpu <= p_cpu)
            out.setdefault("goals", {})[wl] = goal
    return out


def main(argv: list[str] | None = None) -> int:
    """bench/archive.py's main with the TLS server, then the extra measurements."""
    # Compiled modules, as an installed package has them: the cluster user cannot
    # write __pycache__ into the checkout, and compiling on every call would be timed.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(A.ROOT / "pitr")],
                   check=False, env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""})
    A.Ctx = BenchCtx  # type: ignore[misc]
    captured: list[Any] = []
    original_measure = A.measure

    def measure(*args: Any, **kw: Any) -> Any:
        ctx, repo, mode_name = args[1], args[3], args[4]
        if mode_name in ("pitr-agent", "pitr-agent-sh"):
            prestart_agent(ctx, repo)
        r = original_measure(*args, **kw)
        captured.append(r)
        return r

    A.measure = measure  # type: ignore[assignment]
    started = time.time()
    load = os.getloadavg()
    rc = int(A.main(argv))
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="pitr-bench-fp-"))
    tmp.chmod(0o755)
    try:
        EXTRA["fast_path"] = fast_path_latency(tmp)
    finally:
        run_as(["rm", "-rf", str(tmp / "fastpath")], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    EXTRA["summary"] = summary(captured)
    EXTRA["load_avg_at_start"] = [round(x, 2) for x in load]
    EXTRA["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    EXTRA["seconds"] = round(time.time() - started, 1)
    EXTRA["cpus"] = os.cpu_count()
    print("# extra: " + json.dumps(EXTRA, default=str), flush=True)
    return rc

