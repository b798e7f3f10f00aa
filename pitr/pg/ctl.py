"""pg_ctl and psql for a data directory pitr restored: start, stop, wait for recovery.

Used by ``pitr restore --start`` and the restore drill (verify). Commands run
as the PostgreSQL OS user (``runuser`` when pitr runs as root), because the
server refuses to run as root and peer authentication maps OS users to roles.
psql is used instead of an in-process driver for the same reason: as root,
only a process of the cluster user can log in over the socket with peer auth.

Where the server listens is read from ``postmaster.pid`` (port, socket
directory), so the restored copy's own configuration decides, not ours.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pitr.errors import PostgresError

_SBIN_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"


def current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def as_user(argv: Sequence[str], user: str | None) -> list[str]:
    """argv run as ``user``: through runuser when we are root and ``user`` is someone else."""
    if user and os.geteuid() == 0 and user != current_user():
        runuser = shutil.which("runuser", path=_SBIN_PATH) or "runuser"
        return [runuser, "-u", user, "--", *argv]
    return list(argv)


@dataclass(frozen=True)
class PostmasterInfo:
    """The first lines of postmaster.pid (see PostgreSQL's pidfile.h)."""

    pid: int
    port: int
    socket_dir: str
    listen: str
    status: str  # starting | stopping | ready | standby (empty on old servers)


@dataclass
class RecoveryOutcome:
    state: str  # promoted | paused | shutdown
    in_recovery: bool | None
    replay_timestamp: str | None  # pg_last_xact_replay_timestamp()
    replay_lsn: str | None
    timeline: int | None
    seconds: float
    log_lines: list[str] = field(default_factory=list)  # "recovery stopping ..." etc.

    def to_json(self) -> dict[str, object]:
        return {"state": self.state, "in_recovery": self.in_recovery,
                "last_replayed_transaction_time": self.replay_timestamp,
                "replay_lsn": self.replay_lsn, "timeline": self.timeline,
                "seconds": round(self.seconds, 2), "log": self.log_lines}


_INTERESTING = re.compile(r"recovery stopping|last completed transaction|selected new timeline|"
                          r"pausing at the end of recovery|recovery has paused|FATAL|PANIC|"
                          r"archive recovery complete|consistent recovery state|redo done")


class PgCtl:
    def __init__(self, pgdata: Path, *, bindir: Path, user: str | None,
                 log_file: Path | None = None, db_user: str | None = None) -> None:
        self.pgdata = Path(pgdata)
        self.bindir = Path(bindir)
        self.user = user
        self.log_file = log_file or self.pgdata / "pitr-restore.log"
        self.db_user = db_user

    def _run(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(as_user(argv, self.user), capture_output=True, text=True,
                                  timeout=timeout, cwd="/")
        except FileNotFoundError as exc:
            raise PostgresError(f"cannot run {argv[0]}: not found",
                                hint="set postgres.bindir to PostgreSQL's bin directory") from exc
        except subprocess.TimeoutExpired as exc:
            raise PostgresError(f"{Path(argv[0]).name} did not finish in {timeout:.0f}s") from exc

    def start_command(self) -> list[str]:
        return as_user([str(self.bindir / "pg_ctl"), "-D", str(self.pgdata),
                        "-l", str(self.log_file), "start"], self.user)

    def start(self) -> None:
        """Start without waiting for connections: recovery may take long, or end in shutdown."""
        proc = self._run([str(self.bindir / "pg_ctl"), "-D", str(self.pgdata), "-l",
                          str(self.log_file), "-W", "start"], timeout=120)
        if proc.returncode != 0:
            raise PostgresError(f"pg_ctl start failed: {(proc.stderr or proc.stdout).strip()}\n"
                                f"{self.log_tail()}")

    def stop(self, mode: str = "fast", timeout: int = 120) -> None:
        if not (self.pgdata / "postmaster.pid").exists():
            return
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-t",
                   str(timeout), "-w", "stop"], timeout=timeout + 30)

    def postmaster(self) -> PostmasterInfo | None:
        """The running postmaster, or None when no live server owns this directory."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        if not process_exists(pid):
            return None
        get = [*(ln.strip() for ln in lines), "", "", "", "", "", "", "", ""]
        return PostmasterInfo(pid, int(get[3] or 0), get[4], get[5], get[7])

    def psql(self, sql: str, dbname: str = "postgres", timeout: float = 30) -> list[str]:
        """Rows of ``sql`` as '|'-separated text; PostgresError if it cannot run."""
        info = self.postmaster()
        if info is None:
            raise PostgresError(f"no PostgreSQL server is running in {self.pgdata}")
        host = info.socket_dir or info.listen or "localhost"
        argv = [str(self.bindir / "psql"), "-X", "-A", "-t", "-q", "-F", "|", "-v",
                "ON_ERROR_STOP=1", "-h", host, "-p", str(info.port), "-d", dbname, "-c", sql]
        if self.db_user:
            argv[1:1] = ["-U", self.db_user]
        proc = self._run(argv, timeout)
        if proc.returncode != 0:
            raise PostgresError(f"psql failed: {proc.stderr.strip()}")
        return [line for line in proc.stdout.splitlines() if line]

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "\n".join(lines[-n:])

    def recovery_log_lines(self) -> list[str]:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return []
        return [line.strip() for line in text.splitlines() if _INTERESTING.search(line)][-12:]

    def wait_for_recovery(self, action: str, *, timeout: float,
                          poll: float = 0.5) -> RecoveryOutcome:
        """Wait until recovery reached its target and the server did ``action`` there.

        promote: the server left recovery. pause: replay is paused at the target.
        shutdown: the server stopped after logging where recovery stopped. A server
        that exits otherwise (e.g. FATAL "recovery ended before configured recovery
        target was reached") is an error carrying its log.
        """
        began = time.monotonic()
        deadline = began + timeout
        while time.monotonic() < deadline:
            info = self.postmaster()
            if info is not None and info.status in ("starting", "stopping"):
                # postmaster.pid says no connections yet: don't fill its log with
                # "not yet accepting connections" by asking
                time.sleep(poll)
                continue
            if info is None:
                lines = self.recovery_log_lines()
                if (action == "shutdown" and any("recovery stopping" in ln for ln in lines)
                        and not any("FATAL" in ln or "PANIC" in ln for ln in lines)):
                    return RecoveryOutcome("shutdown", None, None, None, None,
                                           time.monotonic() - began, self.recovery_log_lines())
                time.sleep(poll)  # pg_ctl -W returns before the pid file exists
                if self.postmaster() is None and time.monotonic() - began > 5:
                    raise PostgresError(
                        "the restored server stopped before reaching the recovery target",
                        hint=f"its log ({self.log_file}) ends with:\n{self.log_tail(15)}")
                continue
            try:
                row = self.psql("select pg_is_in_recovery(), "
                                "case when pg_is_in_recovery() "
                                "then pg_get_wal_replay_pause_state() end", timeout=10)
            except PostgresError:
                time.sleep(poll)  # not accepting connections yet (not consistent)
                continue
            in_recovery, pause_state = [*row[0].split("|"), ""][:2] if row else ("t", "")
            if in_recovery == "f":
                return self._outcome("promoted", began)
            if action == "pause" and pause_state == "paused":
                return self._outcome("paused", began)
            time.sleep(poll)
        raise PostgresError(
            f"recovery did not reach its target within {timeout:.0f}s; the server is still "
            f"running in {self.pgdata}",
            hint=f"watch its log ({self.log_file}); stop it with `{self._stop_hint()}`")

    def _stop_hint(self) -> str:
        return " ".join(as_user([str(self.bindir / "pg_ctl"), "-D", str(self.pgdata), "stop"],
                                self.user))

    def _outcome(self, state: str, began: float) -> RecoveryOutcome:
        seconds = time.monotonic() - began
        row = self.psql(
            "select pg_is_in_recovery(), pg_last_xact_replay_timestamp(), "
            "pg_last_wal_replay_lsn(), case when pg_is_in_recovery() then null "
            "else pg_walfile_name(pg_current_wal_lsn()) end")
        parts = [*row[0].split("|"), "", "", ""][:4] if row else ["", "", "", ""]
        tli = int(parts[3][:8], 16) if parts[3] else None
        return RecoveryOutcome(state, parts[0] == "t", parts[1] or None, parts[2] or None, tli,
                               seconds, self.recovery_log_lines())


def process_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (whoever owns it)."""
    from pitr.fastpath import pid_alive  # the one copy; the fast path imports only os

    return pid_alive(pid)
