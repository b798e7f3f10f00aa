"""Several repositories (docs/multiple-repositories.md) with real parts: a bucket on the
shared SeaweedFS server, a bucket on a server of this test's own (stopped with SIGSTOP
mid-burst), and a local directory; PostgreSQL runs pitr as its archive_command."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import run_pitr, s3_repo_for
from support.pgcluster import PgCluster, chown_user, make_user_dir

from pitr import config
from pitr.errors import RECOVERY_ABORT_OFFSET, NotFound
from pitr.repo import Repo
from pitr.wal.fetch import fetch_to_bytes

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
