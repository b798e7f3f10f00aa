"""The Docker image's entrypoint, run on this host (no Docker engine here): first
start initialises a cluster, configures it with `pitr setup --apply`, restarts it,
proves archiving with `pitr check`, then serves; `pitr backup` and `pitr list`
work through it. Only the image's fixed paths, OS user and port are overridden."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_config
from support.pgcluster import PG_BINDIR, PG_USER, free_port, make_user_dir, run_as

pytestmark = pytest.mark.integration
ENTRYPOINT = Path(__file__).resolve().parents[2] / "docker" / "entrypoint.sh"


def test_entrypoint_first_start_archives_and_backs_up(testdir: Path, pitr_exe: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the entrypoint starts as root, like in the container")
    sock = make_user_dir(testdir / "sock", mode=0o755)
    repo = make_user_dir(testdir / "repo", mode=0o700)
    pgdata = testdir / "pg" / "data"
    port = free_port()
    cfg = write_config(testdir / "pitr.toml", {
        "stanza": "docker",
        "repository": {"url": f"file://{repo}"},
        "postgres": {"pgdata": str(pgdata), "bindir": str(PG_BINDIR), "user": PG_USER,
                     "dsn": f"host={sock} port={port} user={PG_USER} dbname=postgres"},
        "archive": {"spool_dir": str(testdir / "state" / "spool")},
    })
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "PGDATA": str(pgdata), "PGPORT": str(port), "PITR_CONFIG": str(cfg),
        "ENTRYPOINT_OS_USER": PG_USER, "ENTRYPOINT_SOCKDIR": str(sock), "ENTRYPOINT_LISTEN": "",
        "ENTRYPOINT_STATE_DIR": str(testdir / "state"), "ENTRYPOINT_PGBIN": str(PG_BINDIR),
    }
    log = open(testdir / "entrypoint.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["bash", str(ENTRYPOINT), "postgres"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)

    def entry(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(ENTRYPOINT), *args], env=env, capture_output=True,
                              text=True, timeout=300)

    try:
        deadline = time.monotonic() + 180
        while True:
            ready = run_as([str(PG_BINDIR / "pg_isready"), "-q", "-h", str(sock), "-p",
                            str(port)], check=False)
            # the serving postmaster is the child of the entrypoint's final `exec runuser`,
            # not one of the temporary servers setup runs against
            if ready.returncode == 0 and _postmaster_parent(pgdata) == proc.pid:
                break
            assert proc.poll() is None, (testdir / "entrypoint.log").read_text()
            assert time.monotonic() < deadline, (testdir / "entrypoint.log").read_text()
            time.sleep(0.5)
        out = (testdir / "entrypoint.log").read_text()
        assert "RESTART NEEDED" in out and "check" in out, out
        # setup claimed the stanza, check proved a switched segment arrived
        assert json.loads((repo / "docker" / "repo.json").read_text())["pg_version"] == 15
        assert any((repo / "docker" / "wal").rglob("*.zst"))
        settings = entry("pitr", "config", "show", "--json")
        assert settings.returncode == 0, settings.stderr

        backup = entry("pitr", "backup", "--json")
        assert backup.returncode == 0, backup.stdout + backup.stderr
        listing = entry("pitr", "list", "--json")
        assert listing.returncode == 0, listing.stderr
        assert json.loads(backup.stdout)["id"] in listing.stdout
        assert (pgdata.parent.stat().st_mode & 0o777) == 0o700

        # docs/setup.md's Docker walkthrough: a table, the time, an accident, a restore.
        def psql(sql: str) -> str:
            return run_as([str(PG_BINDIR / "psql"), "-h", str(sock), "-p", str(port), "-d",
                           "postgres", "-XAtc", sql]).stdout.strip()

        psql("create table t as select g from generate_series(1, 1000) g")
        time.sleep(1.1)
        target = psql("select to_char(now() at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
        time.sleep(1.1)
        psql("drop table t")
        assert entry("pitr", "check").returncode == 0  # switches WAL, waits for the archive
        run_as([str(PG_BINDIR / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"])
        proc.wait(60)
        restore = entry("pitr", "restore", "--to", target, "--pgdata", str(pgdata), "--force",
                        "--archive-mode", "preserve", "--yes")
        assert restore.returncode == 0, restore.stdout + restore.stderr
        proc = subprocess.Popen(["bash", str(ENTRYPOINT), "postgres"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while psql_ok(sock, port, "select not pg_is_in_recovery()") != "t":
            assert proc.poll() is None, (testdir / "entrypoint.log").read_text()
            assert time.monotonic() < deadline, (testdir / "entrypoint.log").read_text()
            time.sleep(0.5)
        assert psql("select count(*) from t") == "1000"
        assert any(testdir.joinpath("pg").glob("data.pitr-old-*")), "old data is moved aside"
    finally:
        run_as([str(PG_BINDIR / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
               check=False)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _postmaster_parent(pgdata: Path) -> int | None:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def psql_ok(sock: Path, port: int, sql: str) -> str:
    proc = run_as([str(PG_BINDIR / "psql"), "-h", str(sock), "-p", str(port), "-d", "postgres",
                   "-XAtc", sql], check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""
