"""The fault table (docs/fault-table.md): real PostgreSQL 15, the real S3 server behind the
fault proxy (tests/support/faultproxy.py), real kill -9 and real full file systems.

Every scenario asserts the same three things where they apply: no segment lost (each one
PostgreSQL finished is in the repository and the catalog has no gap), no early promotion
(a restore that cannot get its WAL stops, it never ends as a success), and a restore exact
to the row (the restored table's checksum is the source's).

One source cluster archiving through the proxy serves the module (its config has short
repository timeouts so a fault costs seconds, not minutes); each scenario adds a few
segments. Scenarios run in file order and leave no fault behind (the proxy is cleared
around each).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import run_pitr, s3_repo_for, write_config
from support.faultproxy import FaultProxy, Rule
from support.pgcluster import PG_BINDIR, PG_USER, PgCluster, as_user_cmd, make_user_dir
from test_agent import AgentProc

from pitr import config as config_mod
from pitr.catalog import load_catalog
from pitr.config import Config, Duration
from pitr.errors import TargetDirError
from pitr.repo import Repo
from pitr.storage import open_storage
from pitr.wal.spool import Spool

pytestmark = [pytest.mark.integration, pytest.mark.s3]

STANZA = "faults"
CHECKSUM = "select count(*), coalesce(sum(hashtext(v)), 0), coalesce(max(i), 0) from rows"
SEED = int(os.environ.get("PITR_FAULT_SEED", str(random.SystemRandom().randrange(1 << 30))))


@dataclass
class Source:
    base: Path
    cluster: PgCluster
    config: Path  # through the proxy
    settings: dict[str, Any]
    direct: Config  # the same repository without the proxy, for assertions
    proxy: FaultProxy
    rows: int = 0
    restored: list[PgCluster] = field(default_factory=list)

    def burst(self, n: int) -> list[str]:
        """n segments, each with a few rows; their names (not waited for)."""
        names = []
        for _ in range(n):
            self.cluster.sql(f"insert into rows select g, md5(g::text) from generate_series("
                             f"{self.rows + 1}, {self.rows + 300}) g")
            self.rows += 300
            names.append(self.cluster.switch_wal())
        return names

    def archived(self, segment: str, timeout: float = 180) -> None:
        self.cluster.wait_until(f"select last_archived_wal >= '{segment}' from pg_stat_archiver"
                                " where last_archived_wal not like '%.%'", timeout=timeout)

    def failures(self) -> int:
        return int(self.cluster.archiver_stats()["failed_count"])

    def repo(self) -> Repo:
        return Repo(open_storage(self.direct.repository), STANZA)

    def stored(self) -> set[str]:
        repo = self.repo()
        return {n for n in (Repo.wal_name_of(o.key) for o in repo.storage.list(repo.wal_prefix))
                if n}

    def resumes(self, names: list[str]) -> list[str]:
        """After a fault: one more segment wakes PostgreSQL's archiver (after three failures
        in a row it otherwise sleeps up to a minute); wait until all are archived."""
        names = [*names, *self.burst(1)]
        self.archived(names[-1])
        return names

    def assert_nothing_lost(self, names: list[str]) -> None:
        missing = set(names) - self.stored()
        assert not missing, f"segments lost: {sorted(missing)}"
        assert load_catalog(self.repo()).gaps() == []

    def backups(self) -> int:
        return len(load_catalog(self.repo()).backups)

    def expected(self) -> list[tuple[Any, ...]]:
        return self.cluster.sql(CHECKSUM)

    def variant(self, name: str, **sections: dict[str, Any]) -> Path:
        """This source's config with some sections changed (same repository and stanza)."""
        settings = json.loads(json.dumps(self.settings))
        for key, values in sections.items():
            settings.setdefault(key, {}).update(values)
        return write_config(self.base / name, settings)

    def restore(self, name: str, *args: str, config: Path | None = None,
                pgdata: Path | None = None, check: bool = True,
                timeout: float = 600) -> tuple[PgCluster, Any]:
        """`pitr restore --latest --start` into a fresh directory (or ``pgdata``)."""
        target = PgCluster(self.base, name)
        target.socket_dir = self.cluster.socket_dir
        if pgdata is not None:
            target.pgdata = pgdata
        self.restored.append(target)
        proc = run_pitr(config or self.config, "restore", "--pgdata", str(target.pgdata),
                        "--latest", "--start", "--port", str(target.port), "--json",
                        "--wait-timeout", "300", *args, check=False, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"restore {name} failed ({proc.returncode}): {proc.stderr}\n"
                                 f"last proxy log: {list(self.proxy.log)[-20:]}")
        return target, proc


def make_source(base: Path, server: Any, proxy: FaultProxy, exe: Path, name: str,
                spool: Path | None = None) -> Source:
    home = make_user_dir(base / name, mode=0o755)
    cluster = PgCluster(home, "pg")
    section = s3_repo_for(server)
    spool_dir = spool or make_user_dir(home / "spool")
    settings: dict[str, Any] = {
        "stanza": STANZA,
        "repository": {**section, "endpoint_url": proxy.endpoint, "timeout": 3,
                       "request_timeout": 2},
        "archive": {"spool_dir": str(spool_dir), "prefetch": 4, "fast_path_wait": 2},
        "backup": {"wal_timeout": 120, "expire_after": False},
        "postgres": {"bindir": str(PG_BINDIR), "user": PG_USER, "dsn": cluster.dsn,
                     "pgdata": str(cluster.pgdata)},
        "monitor": {"port": 0},
    }
    cfg = write_config(home / "pitr.toml", settings)
    loaded = config_mod.load(cfg, env={})
    direct = dataclasses.replace(loaded, repository=dataclasses.replace(
        loaded.repository, endpoint_url=section["endpoint_url"], timeout=Duration(30),
        request_timeout=Duration(10)))
    cluster.initdb(conf={"archive_mode": "on",
                         "archive_command": f"{exe} --config {cfg} archive-push %p"})
    cluster.start()
    cluster.sql("create table rows (i int primary key, v text)")
    src = Source(home, cluster, cfg, settings, direct, proxy)
    src.burst(1)
    run_pitr(cfg, "backup")
    return src


@dataclass
class Lab:
    base: Path
    proxy: FaultProxy
    server: Any
    exe: Path
    sources: list[Source] = field(default_factory=list)


@pytest.fixture(scope="module")
def lab(workdir: Path, s3_server: Any, pitr_exe: Path) -> Iterator[Lab]:
    print(f"fault scenarios: random seed {SEED} (PITR_FAULT_SEED to repeat)")
    base = make_user_dir(workdir / f"faults-{uuid.uuid4().hex[:6]}", mode=0o755)
    with FaultProxy.for_server(s3_server) as proxy:
        lab = Lab(base, proxy, s3_server, pitr_exe)
        try:
            yield lab
        finally:
            proxy.clear()
            counts = collections.Counter(e.action for e in proxy.log)
            print(f"fault proxy: {dict(counts)}")
            for s in lab.sources:
                for c in [*s.restored, s.cluster]:
                    c.stop("immediate")


@pytest.fixture(scope="module")
def src(lab: Lab) -> Source:
    s = make_source(lab.base, lab.server, lab.proxy, lab.exe, "src")
    lab.sources.append(s)
    return s


@pytest.fixture(autouse=True)
def no_fault_left(lab: Lab) -> Iterator[None]:
    lab.proxy.clear()
    yield
    lab.proxy.clear()


def wait_for(pred: Any, what: str, timeout: float = 120, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def assert_exact(restored: PgCluster, src: Source, expected: list[tuple[Any, ...]]) -> None:
    assert restored.sql(CHECKSUM) == expected
    assert restored.scalar("select pg_is_in_recovery()") is False


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at ``path`` owned by the cluster user; skips when mounting is refused."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}): "
                    "the disk-full scenarios need root and mount permission")
    try:
        subprocess.run(["chown", PG_USER, str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> None:
    """Fill the file system holding ``path`` to the last byte."""
    with open(path / "filler", "wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * (1 << 16))
            fh.flush()
    subprocess.run(["chown", PG_USER, str(path / "filler")], check=True)


# -- a server that ignores conditional writes ---------------------------------------------
def test_server_ignoring_conditional_writes_gets_no_segment_and_no_backup(
        lab: Lab, src: Source) -> None:
    backups, failed = src.backups(), src.failures()
    memo = next((Path(src.settings["archive"]["spool_dir"]) / STANZA).glob(
        "conditional-writes-*"))
    memo.unlink()  # a new host, or a day later: the server is proven again
    lab.proxy.set_rules(Rule("ignore_if_none_match"))
    proc = run_pitr(src.config, "backup", check=False)
    assert proc.returncode == 4 and "ignores conditional writes" in proc.stderr, proc.stderr
    names = src.burst(2)
    wait_for(lambda: src.failures() > failed, "archive-push to refuse the server")
    assert not set(names) & src.stored()  # PostgreSQL keeps them: nothing recycled
    assert src.backups() == backups and not list(src.repo().storage.list(f"{STANZA}/locks/"))
    lab.proxy.clear()
    src.assert_nothing_lost(src.resumes(names))


# -- S3 outage during a burst -----------------------------------------------------------
def test_s3_outage_during_a_burst_without_the_agent(lab: Lab, src: Source) -> None:
    failed = src.failures()
    lab.proxy.set_rules(Rule("error", arg=503))
    names = src.burst(3)
    wait_for(lambda: src.failures() > failed, "archive-push to fail during the outage")
    assert not set(names) & src.stored()
    lab.proxy.clear()
    src.assert_nothing_lost(src.resumes(names))


def test_s3_outage_during_a_burst_with_the_agent(lab: Lab, src: Source) -> None:
    c = config_mod.load(src.config, env={})
    spool = Spool(c.archive.spool_dir, c.stanza)
    agent = AgentProc(lab.exe, src.config, spool, src.base / "agent.log")
    try:
        lab.proxy.set_rules(Rule("reset"))
        names = src.burst(3)
        wait_for(lambda: (spool.read_status() or {}).get("failures", {}).get("consecutive"),
                 "the agent to see the outage")
        assert not set(names) & src.stored()
        lab.proxy.clear()
        src.assert_nothing_lost(src.resumes(names))
    finally:
        agent.signal(signal.SIGTERM)


# -- hangs --------------------------------------------------------------------------------
def test_hang_during_archive_push(lab: Lab, src: Source) -> None:
    failed = src.failures()
    lab.proxy.set_rules(Rule("hang", method="PUT"))
    names = src.burst(2)
    wait_for(lambda: src.failures() > failed, "archive-push to give up on the hung server")
    assert not set(names) & src.stored()
    lab.proxy.clear()
    src.assert_nothing_lost(src.resumes(names))


def test_hang_during_backup(lab: Lab, src: Source) -> None:
    backups = src.backups()
    lab.proxy.set_rules(Rule("hang", method="PUT", path_contains="/backups/"))
    started = time.monotonic()
    proc = run_pitr(src.config, "backup", check=False, timeout=300)
    assert proc.returncode != 0, proc.stdout
    print(f"backup against a hung server failed after {time.monotonic() - started:.1f}s "
          f"with exit {proc.returncode}")
    assert src.backups() == backups  # nothing half-done is counted as a backup
    lab.proxy.clear()
    run_pitr(src.config, "backup")
    assert src.backups() == backups + 1


def test_hang_during_replay_stops_recovery_then_it_finishes_exact(
        lab: Lab, src: Source) -> None:
    names = src.burst(3)
    src.archived(names[-1])
    expected = src.expected()
    # The restore reads every planned segment once before it writes anything (the
    # tablespace scan, docs/restore.md): the last one's second read is replay's.
    lab.proxy.set_rules(Rule("hang", method="GET", path_contains=f"/{names[-1]}", after=1))
    target, proc = src.restore("hang-replay", check=False)
    assert proc.returncode != 0, "a restore whose WAL hangs must not succeed"
    assert not target.is_running() or target.scalar("select pg_is_in_recovery()") is True
    assert (target.pgdata / "recovery.signal").exists()  # never promoted
    server_log = (target.pgdata / "pitr-restore.log").read_text(errors="replace")
    assert "FATAL" in server_log and "archive-get" in server_log, server_log[-3000:]
    print(f"restore during a WAL hang: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    target.stop("immediate")
    lab.proxy.clear()
    target.start()
    target.wait_until("select not pg_is_in_recovery()", timeout=300)
    assert_exact(target, src, expected)
    target.stop("immediate")


def test_hang_while_a_restore_downloads_the_base_backup(lab: Lab, src: Source) -> None:
    expected = src.expected()
    # The manifests first: a backup whose manifest did not arrive is unknown, not "no
    # completed backup" (it used to be read as damaged: exit 11).
    lab.proxy.set_rules(Rule("hang", method="GET", path_contains="/manifest.json"))
    target, proc = src.restore("hang-base", check=False)
    assert proc.returncode == 5, proc.stderr  # TransientStorageError, after the budget
    assert "no completed backup" not in proc.stderr
    # Then the base backup's tar itself, mid-restore.
    lab.proxy.set_rules(Rule("hang", method="GET", path_contains="/base.tar"))
    proc = run_pitr(src.config, "restore", "--pgdata", str(target.pgdata), "--latest",
                    "--start", "--port", str(target.port), check=False)
    assert proc.returncode == 5, proc.stderr
    assert not target.is_running()
    lab.proxy.clear()
    restored, _ = src.restore("hang-base-rerun", "--force", pgdata=target.pgdata)
    assert_exact(restored, src, expected)
    restored.stop("immediate")


# -- kill -9 at a random point --------------------------------------------------------------
def _popen_as_user(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(as_user_cmd(argv), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _kill9_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _postmasters_of(pgdata: Path) -> list[int]:
    """Live processes started with ``-D pgdata`` (a postmaster still starting has no
    postmaster.pid yet, so pg_ctl cannot see it)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(pgdata).encode() in argv and b"-D" in argv:
                out.append(int(entry.name))
    return out


def _stop_every_postmaster_of(cluster: PgCluster) -> None:
    """Stop what a killed `restore --start` had started, also a postmaster caught while
    it was still starting (pg_ctl stop would miss it and the rerun rightly refuses)."""
    deadline = time.monotonic() + 30
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 2 and time.monotonic() < deadline:
        cluster.stop("immediate")
        pids = _postmasters_of(cluster.pgdata)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)  # immediate shutdown
        if pids:
            quiet_since = time.monotonic()
        time.sleep(0.2)
    assert not _postmasters_of(cluster.pgdata), "a postmaster of the killed restore survived"


def test_kill9_of_the_agent_then_a_rerun(lab: Lab, src: Source) -> None:
    rng = random.Random(SEED)
    c = config_mod.load(src.config, env={})
    spool = Spool(c.archive.spool_dir, c.stanza)
    agent = AgentProc(lab.exe, src.config, spool, src.base / "agent.log")
    names = src.burst(4)
    time.sleep(rng.uniform(0, 1.5))
    agent.signal(signal.SIGKILL)
    again = AgentProc(lab.exe, src.config, spool, src.base / "agent.log")
    try:
        src.archived(names[-1])
        src.assert_nothing_lost(names)
    finally:
        again.signal(signal.SIGTERM)


def test_kill9_of_a_backup_then_a_rerun(lab: Lab, src: Source) -> None:
    rng = random.Random(SEED + 1)
    backups = src.backups()
    proc = _popen_as_user([str(lab.exe), "--config", str(src.config), "backup"],
                          src.base / "backup-killed.log")
    time.sleep(rng.uniform(0.2, 3.0))
    _kill9_group(proc)
    assert src.backups() <= backups + 1  # done before the kill, or not counted at all
    done = src.backups()
    run_pitr(src.config, "backup")  # the dead run's lock is taken over, its leftovers cleaned
    assert src.backups() == done + 1


def test_kill9_of_a_restore_then_a_rerun_is_exact(lab: Lab, src: Source) -> None:
    rng = random.Random(SEED + 2)
    names = src.burst(2)
    src.archived(names[-1])
    expected = src.expected()
    target = PgCluster(src.base, "killed-restore")
    src.restored.append(target)
    proc = _popen_as_user([str(lab.exe), "--config", str(src.config), "restore", "--pgdata",
                           str(target.pgdata), "--latest", "--start", "--port",
                           str(target.port)], src.base / "restore-killed.log")
    time.sleep(rng.uniform(0.2, 4.0))
    _kill9_group(proc)
    _stop_every_postmaster_of(target)  # whatever it had started: the operator stops it first
    restored, _ = src.restore("killed-restore-rerun", "--force", pgdata=target.pgdata)
    assert_exact(restored, src, expected)
    restored.stop("immediate")


# -- disk full ---------------------------------------------------------------------------
def test_full_spool_during_a_restore_still_restores_exact(lab: Lab, src: Source) -> None:
    names = src.burst(2)
    src.archived(names[-1])
    expected = src.expected()
    with tmpfs(src.base / "spool-tmpfs", "1m") as mnt:
        fill(mnt)
        cfg = src.variant("full-spool.toml",
                          archive={"spool_dir": str(mnt), "fast_path_wait": 0.3})
        restored, _ = src.restore("full-spool", config=cfg)
        assert_exact(restored, src, expected)
        restored.stop("immediate")


def test_full_spool_while_archiving_with_the_agent(lab: Lab, src: Source) -> None:
    with tmpfs(src.base / "agent-spool-tmpfs", "1m") as mnt:
        cfg = src.variant("agent-full-spool.toml", archive={"spool_dir": str(mnt)})
        spool = Spool(mnt, STANZA)
        agent = AgentProc(lab.exe, cfg, spool, src.base / "agent-full.log")
        try:
            fill(mnt)  # from now on no receipt, proof, status or memo can be written
            src.cluster.sql(f"alter system set archive_command = "
                            f"'{lab.exe} --config {cfg} archive-push %p'")
            src.cluster.sql("select pg_reload_conf()")
            names = src.burst(3)
            src.archived(names[-1])
            src.assert_nothing_lost(names)
        finally:
            src.cluster.sql("alter system reset archive_command")
            src.cluster.sql("select pg_reload_conf()")
            agent.signal(signal.SIGTERM)


def test_full_restore_destination_fails_clearly_then_a_rerun_is_exact(
        lab: Lab, src: Source) -> None:
    expected = src.expected()
    with tmpfs(src.base / "dest-tmpfs", "8m") as mnt:
        target, proc = src.restore("full-dest", pgdata=mnt, check=False)
        assert proc.returncode != 0, "a restore that ran out of space must not succeed"
        assert proc.returncode == TargetDirError.exit_code, proc.stderr
        assert "No space left on device" in proc.stderr and "free space" in proc.stderr
        assert not target.is_running()
    restored, _ = src.restore("after-full-dest")
    assert_exact(restored, src, expected)
    restored.stop("immediate")


# -- two restores at once on one host -------------------------------------------------------
def test_two_restores_at_once_from_two_repositories_stay_apart(lab: Lab) -> None:
    # Two clusters made the same way archive the same segment names into two repositories;
    # both restores share one spool directory and one stanza name.
    spool = make_user_dir(lab.base / "shared-spool")
    a = make_source(lab.base, lab.server, lab.proxy, lab.exe, "two-a", spool=spool)
    lab.sources.append(a)
    b = make_source(lab.base, lab.server, lab.proxy, lab.exe, "two-b", spool=spool)
    lab.sources.append(b)
    for s in (a, b):
        names = s.burst(4)
        s.archived(names[-1])
    expected = {"a": a.expected(), "b": b.expected()}
    results: dict[str, Any] = {}

    def run(name: str, s: Source) -> None:
        results[name] = s.restore(f"restored-{name}", check=False)

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, s in (("a", a), ("b", b)):
        restored, proc = results[name]
        assert proc.returncode == 0, proc.stderr
        assert_exact(restored, s, expected[name])
        assert restored.scalar("select system_identifier from pg_control_system()") == \
            s.cluster.scalar("select system_identifier from pg_control_system()")
        restored.stop("immediate")
    corners = sorted((spool / STANZA).glob("restore-*"))
    assert len(corners) == 2, corners  # one per restore, nothing shared
    for corner in corners:  # and both really were served by their own prefetch worker
        assert " hit " in (corner / "prefetch.log").read_text()

