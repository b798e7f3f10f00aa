"""Writers and readers fenced from each other, on a real PostgreSQL 15 cluster archiving
to a local repository (docs/fault-table.md).

* `pitr expire` while a restore of an old backup runs: the restore's claim keeps that
  backup and its WAL, expire says which claim held it back, and the restore is exact.
* `kill -9` of a backup mid-upload and of expire mid-delete, each followed by a rerun:
  the repository stays consistent and a restore to a random time is exact.

Faults are real: SIGSTOP/SIGKILL of the pitr processes; expire is frozen mid-delete by
a full stderr pipe (its first log line comes after the manifests are deleted).
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import PITR_EXE, run_pitr, write_config
from support.pgcluster import PG_BINDIR, PG_USER, PgCluster, as_user_cmd, free_port, make_user_dir

from pitr import config as config_mod
from pitr.catalog import Catalog, load_catalog
from pitr.pg.names import parse_segment_name
from pitr.repo import Repo

pytestmark = [pytest.mark.integration]

STANZA = "fence"
_F_SETPIPE_SZ = 1031


@dataclass
class Src:
    base: Path
    cfg: Path
    cluster: PgCluster
    times: dict[int, datetime] = field(default_factory=dict)  # row -> right after its commit
    restored: list[PgCluster] = field(default_factory=list)

    def repo(self) -> Repo:
        cfg = config_mod.load(self.cfg, env={})
        return Repo.open(cfg)

    def catalog(self) -> Catalog:
        return load_catalog(self.repo())

    def keys(self, prefix: str = "") -> set[str]:
        return {o.key for o in self.repo().storage.list(f"{STANZA}/{prefix}")}

    def rows(self, numbers: range) -> None:
        for n in numbers:
            self.cluster.sql(f"insert into t values ({n})")
            self.times[n] = self.cluster.scalar("select clock_timestamp()")
            time.sleep(0.2)

    def switch(self) -> None:
        seg = self.cluster.switch_wal()
        self.cluster.wait_until(f"select last_archived_wal >= '{seg}' from pg_stat_archiver "
                                "where last_archived_wal not like '%.%'", timeout=120)

    def backup(self) -> str:
        return str(json.loads(run_pitr(self.cfg, "backup", "--json").stdout)["id"])

    def pitr(self, *args: str, env: dict[str, str] | None = None,
             stderr: int | None = subprocess.PIPE) -> subprocess.Popen[str]:
        """A pitr command in the background, as the cluster user."""
        return subprocess.Popen(
            as_user_cmd([str(PITR_EXE), "--config", str(self.cfg), *args]),
            stdout=subprocess.PIPE, stderr=stderr, text=True, cwd="/",
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", **(env or {})})

    def new_restored(self) -> PgCluster:
        restored = PgCluster(self.base, f"restored-{uuid.uuid4().hex[:6]}")
        restored.port = free_port()
        restored.socket_dir = self.cluster.socket_dir
        self.restored.append(restored)
        return restored

    def restore_args(self, restored: PgCluster, target: datetime, *extra: str) -> list[str]:
        return ["restore", "--pgdata", str(restored.pgdata), "--start", "--port",
                str(restored.port), "--json", "--to", target.isoformat(), *extra]

    def rows_until(self, target: datetime) -> list[int]:
        return sorted(n for n, t in self.times.items() if t <= target)


@pytest.fixture
def src(testdir: Path, pitr_exe: Path) -> Iterator[Src]:
    cluster = PgCluster(testdir, "src")
    cfg = write_config(testdir / "pitr.toml", {
        "stanza": STANZA,
        "repository": {"url": f"file://{make_user_dir(testdir / 'repo')}", "timeout": 20},
        "archive": {"spool_dir": str(make_user_dir(testdir / "spool"))},
        "postgres": {"bindir": str(PG_BINDIR), "user": PG_USER, "dsn": cluster.dsn,
                     "pgdata": str(cluster.pgdata)},
        # a short lease: a killed holder's lock is free seconds later, not after a minute
        "backup": {"lock_lease": 3, "expire_after": False, "wal_timeout": 120},
        # today's newest backup only: a plain expire deletes every older one
        "retention": {"daily": 1, "weekly": 0, "monthly": 0, "min_backups": 1},
    })
    cluster.initdb(conf={"archive_mode": "on",
                         "archive_command": f"{pitr_exe} --config {cfg} archive-push %p"})
    s = Src(testdir, cfg, cluster)
    try:
        cluster.start()
        cluster.sql("create table t (n int primary key)")
        yield s
    finally:
        for c in [*s.restored, cluster]:
            c.stop("immediate")


def wal_keys(src: Src) -> set[str]:
    return {k for k in src.keys("wal/") if not k.endswith(".history.zst")}


def segno(key: str) -> int:
    name = Repo.wal_name_of(key) or ""
    return parse_segment_name(name[:24])[1]


def lock_holder(src: Src) -> int:
    """The pid of the pitr process holding the stanza lock (runuser's child)."""
    key = src.repo().lock_key("backup")
    wait_for("the stanza lock", lambda: key in src.keys("locks/"))
    return int(json.loads(src.repo().storage.open(key).read())["pid"])


def wait_for(what: str, cond: object, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_expire_during_a_running_restore_deletes_nothing_it_needs(src: Src) -> None:
    a = src.backup()
    src.rows(range(1, 4))
    src.switch()
    b = src.backup()
    src.rows(range(4, 6))
    src.switch()
    plain = json.loads(run_pitr(src.cfg, "expire", "--dry-run", "--json").stdout)
    assert [d["id"] for d in plain["deleted"]] == [a]  # without a claim, A would go
    [rec_a] = [x for x in src.catalog().backups if x.id == a]
    needed = {k for k in wal_keys(src) if segno(k) >= rec_a.start_lsn // (16 << 20)}

    target = src.times[2] + (src.times[3] - src.times[2]) / 2
    restored = src.new_restored()
    # a long claim lease for the restore: it is stopped below for as long as expire runs
    proc = src.pitr(*src.restore_args(restored, target, "--backup", a),
                    env={"PITR_BACKUP_LOCK_LEASE": "60"})
    claim: dict[str, Any] = {}
    try:
        wait_for("the restore's claim", lambda: src.keys("claims/") or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        [claim_key] = src.keys("claims/")
        claim = json.loads(src.repo().storage.open(claim_key).read())
        assert claim["backup_id"] == a and claim["command"] == "pitr restore"
        os.kill(claim["pid"], signal.SIGSTOP)  # the restore is mid-way, whatever it does now

        out = run_pitr(src.cfg, "expire", "--json")
        doc = json.loads(out.stdout)
        assert doc["deleted"] == [], doc
        assert {k["id"]: k["reasons"] for k in doc["kept"]}[a] == ["claimed"]
        [note] = doc["notes"]
        assert note.startswith(f"kept backup {a} and the WAL after it: in use by claim "
                               f"{claim['id']} ('pitr restore', pid {claim['pid']}")
        assert note in out.stderr  # and said so in the log
        assert needed <= wal_keys(src)  # everything from A's start on (older WAL may go)
        assert src.repo().manifest_key(a) in src.keys("backups/")
    finally:
        if claim:
            os.kill(claim["pid"], signal.SIGCONT)
        os.kill(proc.pid, signal.SIGCONT)  # runuser stops itself when its child stops
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    assert json.loads(out)["plan"]["backup"]["id"] == a
    assert [r[0] for r in restored.sql("select n from t order by n")] == [1, 2]
    restored.stop("immediate")

    # the restore is over and its claim gone: now the same expire deletes A
    assert src.keys("claims/") == set()
    doc = json.loads(run_pitr(src.cfg, "expire", "--json").stdout)
    assert [d["id"] for d in doc["deleted"]] == [a] and doc["notes"] == []
    assert [x.id for x in src.catalog().backups] == [b]


def frozen_stderr() -> tuple[int, int]:
    """A pipe whose buffer is full: the first line written to it blocks the writer."""
    r, w = os.pipe()
    size = fcntl.fcntl(w, _F_SETPIPE_SZ, 4096)
    os.set_blocking(w, False)
    os.write(w, b"#" * size)
    os.set_blocking(w, True)
    return r, w


def drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    out = b""
    try:
        while chunk := os.read(fd, 65536):
            out += chunk
    except BlockingIOError:
        pass
    return out


def test_kill_9_of_backup_mid_upload_and_of_expire_mid_delete_then_reruns_stay_consistent(
        src: Src) -> None:
    a = src.backup()
    src.rows(range(1, 4))
    src.switch()
    b = src.backup()
    src.rows(range(4, 7))
    src.switch()
    cat = src.catalog()
    [rec_b] = [x for x in cat.backups if x.id == b]
    wal_before_b = {k for k in wal_keys(src)
                    if segno(k) < rec_b.start_lsn // cat.segment_size}
    assert wal_before_b

    # -- kill -9 of a backup mid-upload, then a rerun ----------------------------------
    proc = src.pitr("backup", "--max-rate", "512k")  # ~45 s for this cluster's 23 MB
    try:
        repo_root = src.base / "repo" / STANZA / "backups"
        pid = lock_holder(src)
        # the base object is being written (a temp file, renamed once complete)
        wait_for("the backup's upload", lambda: any(repo_root.glob("*/.pitr-tmp-*")))
        assert proc.poll() is None
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    src.cluster.wait_until("select count(*) = 0 from pg_stat_activity "
                           "where backend_type = 'walsender'", timeout=60)
    assert [x.id for x in src.catalog().backups] == [a, b]  # no manifest, no backup
    rerun = run_pitr(src.cfg, "backup", "--json")
    assert "taking over the stale lock" in rerun.stderr
    c = json.loads(rerun.stdout)["id"]
    cat = src.catalog()
    assert [x.id for x in cat.backups] == [a, b, c] and cat.incomplete_backups == ()
    assert not list(repo_root.glob("*/.pitr-tmp-*"))
    src.rows(range(7, 10))
    src.switch()

    # -- kill -9 of expire mid-delete, then a rerun -------------------------------------
    r, w = frozen_stderr()
    proc = src.pitr("--log-format", "json", "expire", stderr=w)
    os.close(w)
    try:
        pid = lock_holder(src)
        # expire deleted the manifests first, then blocked on its first log line
        wait_for("expire's first deletions",
                 lambda: src.repo().manifest_key(a) not in src.keys("backups/"))
        assert proc.poll() is None
        assert src.repo().backup_prefix(a) + "base.tar.zst" in src.keys("backups/")
        assert wal_before_b <= wal_keys(src)  # WAL not deleted yet
        os.kill(pid, signal.SIGKILL)
        # runuser reports the signal on the same stderr: keep the pipe flowing now
        wait_for("expire's end", lambda: [drain(r)] and proc.poll() is not None, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        drain(r)
        os.close(r)
    # what is left is a consistent repository: the planner sees only C (today's newest);
    # A and B are objects without a manifest, which no plan ever chooses
    cat = src.catalog()
    assert [x.id for x in cat.backups] == [c] and sorted(cat.incomplete_backups) == [a, b]
    doc = json.loads(run_pitr(src.cfg, "expire", "--json").stdout)
    assert sorted(doc["incomplete_deleted"]) == [a, b] and doc["deleted"] == []
    assert {k.split("/")[2] for k in src.keys("backups/")} == {c}
    assert not (wal_before_b & wal_keys(src))
    cat = src.catalog()
    assert [x.id for x in cat.backups] == [c] and cat.incomplete_backups == ()
    assert src.keys("locks/") == set()

    # a restore to a random time after the oldest kept backup is exact
    [rec_c] = cat.backups
    candidates = [n for n in range(7, 10) if src.times[n] > rec_c.stop_time]
    seed = random.SystemRandom().randrange(2**31)
    n = random.Random(seed).choice(candidates[:-1])
    target = src.times[n] + (src.times[n + 1] - src.times[n]) / 2
    restored = src.new_restored()
    run_pitr(src.cfg, *src.restore_args(restored, target))
    got = [row[0] for row in restored.sql("select n from t order by n")]
    assert got == src.rows_until(target), f"seed {seed}: target {target}"
