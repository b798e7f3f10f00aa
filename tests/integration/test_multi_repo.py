"""Several repositories (docs/multiple-repositories.md) with real parts: a bucket on the
shared SeaweedFS server, a bucket on a server of this test's own (stopped with SIGSTOP
mid-burst), and a local directory; PostgreSQL runs pitr as its archive_command."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import run_pitr, s3_repo_for, write_config
from support.pgcluster import PG_USER, PgCluster, chown_user, free_port, make_user_dir
from test_agent import fast_path_names

from pitr import config
from pitr.errors import RECOVERY_ABORT_OFFSET, NotFound
from pitr.fastpath import proof_dir_name
from pitr.repo import Repo
from pitr.wal.fetch import fetch_to_bytes
from pitr.wal.spool import Spool, lock_held

pytestmark = pytest.mark.integration


def repos_of(cfg_path: Path) -> dict[str, Repo]:
    cfg = config.load(cfg_path, env={})
    return {rc.name: Repo.open(cfg.for_repository(rc)) for rc in cfg.all_repositories}


def has(repo: Repo, name: str) -> bool:
    try:
        repo.storage.stat(repo.wal_key(name))
        return True
    except NotFound:
        return False


def make_segments(cluster: PgCluster, count: int) -> list[str]:
    cluster.sql("create table if not exists t (i int, note text)")
    out = []
    for _ in range(count):
        cluster.sql("insert into t select g, md5(g::text) from generate_series(1, 200) g")
        out.append(cluster.switch_wal())
    return out


@pytest.fixture
def three_repos(pitr_config: Any, s3_server: Any, s3_server_private: Any,
                testdir: Path) -> Path:
    usb = make_user_dir(testdir / "usb", mode=0o700)
    second = {**s3_repo_for(s3_server_private), "name": "second", "timeout": 4,
              "request_timeout": 1}
    return pitr_config(repository={**s3_repo_for(s3_server), "name": "first"},
                       archive={"agent_idle_exit": 0, "prefetch": 0},
                       repositories=[second, {"name": "usb", "url": f"file://{usb}"}])


def test_archiving_into_three_repositories_survives_one_stopped(
        pg_factory: Any, pitr_exe: Path, three_repos: Path, s3_server_private: Any,
        testdir: Path) -> None:
    cfg = three_repos
    pg: PgCluster = pg_factory("pg", conf={
        "archive_mode": "on", "wal_keep_size": "1GB",
        "archive_command": f"{pitr_exe} --config {cfg} archive-push %p"})
    pg.start()
    proc = run_pitr(cfg, "check", "--json", check=False)
    for name in ("repository first", "repository second", "repository usb"):
        assert f'"{name}"' in proc.stdout, proc.stdout
    repos = repos_of(cfg)

    before = make_segments(pg, 3)
    pg.wait_until(f"select last_archived_wal >= '{before[-1]}' from pg_stat_archiver")
    for name in before:
        assert all(has(r, name) for r in repos.values()), name

    # One repository stops answering during a burst: PostgreSQL keeps each segment and
    # retries; the others already hold what it could store there.
    s3_server_private.pause()
    try:
        burst = make_segments(pg, 4)
        pg.wait_until("select failed_count > 0 from pg_stat_archiver", timeout=120)
        stats = pg.archiver_stats()
        assert (stats["last_archived_wal"] or "") < burst[0], stats
        assert has(repos["first"], burst[0]) and has(repos["usb"], burst[0])
        # archive-get with the stopped repository: found elsewhere -> restored; a name in
        # no reachable repository -> "unknown" (stop recovery), never "absent"
        datadir = make_user_dir(testdir / "recovering", mode=0o700)
        make_user_dir(datadir / "global")
        make_user_dir(datadir / "pg_wal")
        shutil.copy(pg.pgdata / "global" / "pg_control", datadir / "global" / "pg_control")
        chown_user(datadir / "global" / "pg_control")
        dest = datadir / "pg_wal" / "RECOVERYXLOG"
        repos["first"].storage.delete([repos["first"].wal_key(before[0])])
        got = run_pitr(cfg, "archive-get", before[0], str(dest), check=False)
        assert got.returncode == 0, got.stderr
        assert dest.read_bytes() == (pg.pgdata / "pg_wal" / before[0]).read_bytes()
        future = "0000000100000000000000F0"
        got = run_pitr(cfg, "archive-get", future, str(dest), check=False)
        assert got.returncode > 125, got.stderr
        assert got.returncode - RECOVERY_ABORT_OFFSET in (4, 5), got.stderr
        status = run_pitr(cfg, "status", "--json", check=False)
        assert status.returncode == 14, status.stderr
        rows = {r["name"]: r for r in json.loads(status.stdout)["repositories"]}
        assert rows["second"]["reachable"] is False and rows["second"]["error"], rows
        assert rows["usb"]["last_archived"] >= burst[0], rows
    finally:
        s3_server_private.resume()
    got = run_pitr(cfg, "archive-get", future, str(dest), check=False)
    assert got.returncode == 1, got.stderr  # every repository proved it absent

    after = make_segments(pg, 1)  # wakes the archiver for its retry
    pg.wait_until(f"select last_archived_wal >= '{after[-1]}' from pg_stat_archiver",
                  timeout=180)
    for name in [*before[1:], *burst, *after]:
        original = (pg.pgdata / "pg_wal" / name).read_bytes()
        for rname, repo in repos.items():
            assert fetch_to_bytes(repo, name, budget=10) == original, (rname, name)


# -- backups into every repository, restores from each on its own ------------------------

PAUSE = 0.3


@dataclass
class Source:
    base: Path
    config: Path
    cluster: PgCluster
    server: Any  # the first repository's own S3 server (paused by a test)
    sections: dict[str, dict[str, Any]]
    rows: list[tuple[int, datetime, datetime]] = field(default_factory=list)
    restored: list[PgCluster] = field(default_factory=list)

    def between(self, k: int) -> datetime:
        """A time after row k committed and before row k+1 did."""
        a, b = self.rows[k - 1], self.rows[k]
        return a[2] + (b[1] - a[2]) / 2


@pytest.fixture(scope="module")
def source(workdir: Path, s3_server: Any, pitr_exe: Path, pg_bindir: Path) -> Iterator[Source]:
    from conftest import _start_s3_server

    base = make_user_dir(workdir / f"multi-{uuid.uuid4().hex[:6]}", mode=0o755)
    own = _start_s3_server(base / "s3")
    cluster = PgCluster(base, "src", bindir=pg_bindir)
    sections = {
        "first": {**s3_repo_for(own), "name": "first", "timeout": 4, "request_timeout": 1},
        "second": {**s3_repo_for(s3_server), "name": "second"},
        "usb": {"name": "usb", "url": f"file://{make_user_dir(base / 'usb')}"},
    }
    common = {"stanza": "multi",
              "archive": {"spool_dir": str(make_user_dir(base / "spool")), "prefetch": 0},
              "postgres": {"bindir": str(pg_bindir), "user": PG_USER, "dsn": cluster.dsn,
                           "pgdata": str(cluster.pgdata)}}
    cfg = write_config(base / "pitr.toml", {**common, "repository": sections["first"],
                                            "repositories": [sections["second"],
                                                             sections["usb"]]})
    for name, section in sections.items():  # each repository alone, as after a disaster
        write_config(base / f"{name}.toml", {**common, "repository": section})
    cluster.initdb(conf={"archive_mode": "on",
                         "archive_command": f"{pitr_exe} --config {cfg} archive-push %p"})
    src = Source(base, cfg, cluster, own, sections)
    try:
        cluster.start()
        cluster.sql("create table t (n int primary key, ts timestamptz not null)")
        started = time.monotonic()
        doc = json.loads(run_pitr(cfg, "backup", "--json").stdout)
        assert doc["repositories"] == ["first", "second", "usb"], doc
        src.backup_seconds = time.monotonic() - started  # type: ignore[attr-defined]
        with cluster.connect(autocommit=False) as conn:
            for n in range(1, 9):
                with conn.cursor() as cur:
                    cur.execute("insert into t values (%s, clock_timestamp()) returning ts",
                                (n,))
                    before = cur.fetchone()[0]  # type: ignore[index]
                conn.commit()
                with conn.cursor() as cur:
                    cur.execute("select clock_timestamp()")
                    after = cur.fetchone()[0]  # type: ignore[index]
                conn.commit()
                src.rows.append((n, before, after))
                time.sleep(PAUSE)
        seg = cluster.switch_wal()
        cluster.wait_until(f"select last_archived_wal >= '{seg}' from pg_stat_archiver "
                           "where last_archived_wal not like '%.%'", timeout=120)
        yield src
    finally:
        own.resume()
        for c in [*src.restored, cluster]:
            c.stop("immediate")
        own.close()


def restore(src: Source, config: Path, k: int, *args: str) -> tuple[list[int], dict[str, Any]]:
    target = PgCluster(src.base, f"r-{uuid.uuid4().hex[:6]}", bindir=src.cluster.bindir)
    target.port = free_port()
    target.socket_dir = src.cluster.socket_dir
    src.restored.append(target)
    proc = run_pitr(config, "restore", "--pgdata", str(target.pgdata), "--start", "--port",
                    str(target.port), "--json", "--to", src.between(k).isoformat(), *args)
    doc = json.loads(proc.stdout)
    got = [r[0] for r in target.sql("select n from t order by n")]
    target.stop("immediate")
    return got, doc


def test_the_backup_is_in_every_repository(source: Source) -> None:
    cfg = config.load(source.config, env={})
    ids = []
    for rc in cfg.all_repositories:
        repo = Repo.open(cfg.for_repository(rc))
        ids.append(sorted({k.key.split("/")[2] for k in repo.storage.list(repo.backups_prefix)}))
    assert len(ids[0]) == 1 and ids[0] == ids[1] == ids[2], ids
    plan = json.loads(run_pitr(source.config, "plan", "--latest", "--json").stdout)
    assert [(r["name"], r["state"]) for r in plan["repositories"]] == [
        ("first", "chosen"), ("second", "can reach the target"),
        ("usb", "can reach the target")], plan


@pytest.mark.parametrize("alone", ["second", "usb"])
def test_restore_from_one_repository_alone_is_exact(source: Source, alone: str) -> None:
    """A config naming only that repository: the others might as well be gone."""
    k = random.Random(alone).randint(2, 7)
    got, _ = restore(source, source.base / f"{alone}.toml", k)
    assert got == list(range(1, k + 1))


def test_restore_with_the_first_repository_down_needs_no_flag(source: Source) -> None:
    k = random.Random("down").randint(2, 7)
    source.server.pause()
    try:
        got, doc = restore(source, source.config, k)
    finally:
        source.server.resume()
    states = {r["name"]: r["state"] for r in doc["repositories"]}
    assert states == {"first": "unreachable", "second": "chosen",
                      "usb": "can reach the target"}, doc["repositories"]
    assert got == list(range(1, k + 1))
    # --repo forces one: the named repository is the only one read
    proc = run_pitr(source.config, "plan", "--latest", "--json", "--repo", "usb")
    assert [r["name"] for r in json.loads(proc.stdout)["repositories"]] == ["usb"]


def test_copy_seeds_an_empty_repository_resumes_and_verifies(source: Source) -> None:
    seed_dir = make_user_dir(source.base / "seed")
    common = config.load(source.config, env={})
    cfg = write_config(source.base / "seed.toml", {
        "stanza": "multi",
        "archive": {"spool_dir": common.archive.spool_dir, "prefetch": 0},
        "postgres": {"bindir": common.postgres.bindir, "user": PG_USER,
                     "dsn": common.postgres.dsn},
        "repository": source.sections["second"],
        "repositories": [{"name": "seed", "url": f"file://{seed_dir}"}]})
    first = json.loads(run_pitr(cfg, "copy", "--from", "second", "--to", "seed",
                                "--json").stdout)
    assert len(first["backups_copied"]) == 1 and first["wal_copied"] >= 3, first
    backup_id = first["backups_copied"][0]

    # an interrupted copy: the manifest never written, a WAL object missing, and the
    # backup's data object damaged; the next run proves what is there and refuses it
    stanza = seed_dir / "multi"
    (stanza / "backups" / backup_id / "manifest.json").unlink()
    wal = sorted((stanza / "wal").rglob("*.zst"))
    wal[-1].unlink()
    data = stanza / "backups" / backup_id / "base.tar.zst"
    good = data.read_bytes()
    data.write_bytes(good[:-10])
    proc = run_pitr(cfg, "copy", "--from", "second", "--to", "seed", check=False)
    assert proc.returncode == 9 and "no manifest was written" in proc.stderr, proc.stderr
    assert not (stanza / "backups" / backup_id / "manifest.json").exists()
    assert wal[-1].exists()  # WAL goes first: the failed run still resumed it
    data.unlink()
    again = json.loads(run_pitr(cfg, "copy", "--from", "second", "--to", "seed",
                                "--json").stdout)
    assert again["backups_copied"] == [backup_id] and again["wal_copied"] == 0, again
    assert again["wal_present"] == first["wal_copied"], again
    assert data.read_bytes() == good
    done = json.loads(run_pitr(cfg, "copy", "--from", "second", "--to", "seed",
                               "--json").stdout)
    assert (done["backups_present"], done["wal_copied"]) == ([backup_id], 0), done

    alone = write_config(source.base / "seed-alone.toml", {
        "stanza": "multi",
        "archive": {"spool_dir": common.archive.spool_dir, "prefetch": 0},
        "postgres": {"bindir": common.postgres.bindir, "user": PG_USER,
                     "dsn": common.postgres.dsn},
        "repository": {"name": "seed", "url": f"file://{seed_dir}"}})
    k = random.Random("seed").randint(2, 7)
    got, _ = restore(source, alone, k)
    assert got == list(range(1, k + 1))


def test_the_agent_receipts_a_segment_only_once_every_repository_has_it(
        pg_factory: Any, pitr_exe: Path, pitr_config: Any, s3_repo: dict[str, Any],
        testdir: Path) -> None:
    """The agent started on demand (docs/archiving-modes.md) pushes into all three; the
    fast path answers from its proofs, kept apart from those of another set."""
    usb, disk = (make_user_dir(testdir / n, mode=0o700) for n in ("usb", "disk"))
    cfg = pitr_config(repository={**s3_repo, "name": "first"},
                      archive={"fast_path_wait": 10, "agent_idle_exit": 4},
                      postgres={"pgdata": str(testdir / "pg" / "data")},
                      repositories=[{"name": "usb", "url": f"file://{usb}"},
                                    {"name": "disk", "url": f"file://{disk}"}])
    pg: PgCluster = pg_factory("pg", conf={
        "archive_mode": "on", "wal_keep_size": "1GB",
        "archive_command": f"{pitr_exe} --config {cfg} archive-push %p"})
    pg.server_env = {}  # the on-demand agent as users get it
    pg.start()
    burst = make_segments(pg, 12)
    pg.wait_until(f"select last_archived_wal >= '{burst[-1]}' from pg_stat_archiver",
                  timeout=180)
    c = config.load(cfg, env={})
    spool = Spool(c.archive.spool_dir, c.stanza)
    try:
        repos = repos_of(cfg)
        for name in burst:
            original = (pg.pgdata / "pg_wal" / name).read_bytes()
            for rname, repo in repos.items():
                assert fetch_to_bytes(repo, name, budget=10) == original, (rname, name)
        assert set(burst) & set(fast_path_names(spool)), spool.agent_log.read_text()
        proofs = [p.name for p in spool.archive_dir.glob("proofs-*")]
        assert proofs == [proof_dir_name(c.archive_target)], proofs
        assert proof_dir_name(c.archive_target) != proof_dir_name(c.repository.url)
    finally:
        if lock_held(spool.agent_lock):  # never leave the agent behind (its own lock's pid)
            words = spool.agent_lock.read_text().split()
            if words:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(words[0]), signal.SIGTERM)
