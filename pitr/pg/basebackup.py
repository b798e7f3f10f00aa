"""The PostgreSQL side of a base backup: probing the cluster and the pg_basebackup child.

A cluster with tablespaces cannot go through stdout (pg_basebackup writes one tar per
tablespace): ``-D DIR`` then points at a directory of named pipes, one per archive,
created once pg_basebackup has checked that the directory is empty
(:class:`DirCheckWatch`, :func:`make_fifos`, :class:`FifoStream`; docs/tablespaces.md).

``pg_basebackup -D - -Ft -X none`` writes one tar (the main data directory) to
stdout. It does not print the start/stop LSN with ``-X none``; those come from
the ``backup_label`` at the head of the tar and from the ``.backup`` history
file PostgreSQL archives when the backup stops (both parsed here).

With ``-X none`` the server waits, after the data is sent, until every WAL
segment the backup needs has been archived; it says so with a NOTICE and then
warns once a minute, forever, if archiving is broken. :class:`BaseBackupProcess`
watches stderr for that NOTICE so the wait can be bounded.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import io
import logging
import os
import re
import resource
import select
import signal
import subprocess
import tarfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO

from pitr.errors import BackupError, IncrementalError
from pitr.pg.conn import connect, dsn_without_password, query

log = logging.getLogger("pitr.backup")

_WAITING_NOTICE = "waiting for required WAL segments to be archived"
_PR_SET_PDEATHSIG = 1
_F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20


@dataclass(frozen=True)
class Tablespace:
    """A user tablespace (not pg_default/pg_global) as pg_tablespace describes it."""

    oid: int
    name: str
    location: str


@dataclass(frozen=True)
class ClusterInfo:
    system_id: str
    timeline: int
    version_num: int  # e.g. 150018
    segment_size: int
    db_size: int  # sum of pg_database_size over all databases
    tablespaces: tuple[Tablespace, ...]  # user tablespaces (not pg_default/pg_global)
    archive_mode: str
    archive_command: str
    archive_library: str
    in_recovery: bool
    # The cluster's TimeZone: a zone-less restore target is read in it
    # (docs/restore.md), so each backup records it
    timezone: str
    # summarize_wal ("on"/"off"; "" before PostgreSQL 17): incremental backups need "on"
    summarize_wal: str = ""

    @property
    def major(self) -> int:
        return self.version_num // 10000


# one line per user tablespace, parsed by _tablespace
_TABLESPACES_SQL = ("select format('%s %s %s', oid, length(spcname), spcname) || ' ' "
                    "|| pg_tablespace_location(oid) from pg_tablespace "
                    "where spcname not in ('pg_default', 'pg_global') order by oid")

_PROBE_SQL = """
select (select system_identifier::text from pg_control_system()),
       (select timeline_id from pg_control_checkpoint()),
       current_setting('server_version_num')::int,
       (select setting::bigint * case unit when 'MB' then 1048576 when '8kB' then 8192
                                           else 1 end
          from pg_settings where name = 'wal_segment_size'),
       (select sum(pg_database_size(oid))::bigint from pg_database),
       array(TABLESPACES_SQL),
       current_setting('archive_mode'),
       current_setting('archive_command'),
       coalesce(current_setting('archive_library', true), ''),
       pg_is_in_recovery(),
       current_setting('TimeZone'),
       coalesce(current_setting('summarize_wal', true), '')
""".replace("TABLESPACES_SQL", _TABLESPACES_SQL)


def probe(dsn: str) -> ClusterInfo:
    """What a backup must know about the cluster before it starts."""
    with connect(dsn, application_name="pitr-backup") as conn:
        row = query(conn, _PROBE_SQL)[0]
    return ClusterInfo(str(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4] or 0),
                       tuple(_tablespace(t) for t in row[5]), str(row[6]), str(row[7]),
                       str(row[8]), bool(row[9]), str(row[10]), str(row[11]))


def _tablespace(text: str) -> Tablespace:
    """'16384 4 fast /srv/ts' (oid, name length, name, location) -> Tablespace.

    >>> _tablespace("16384 6 a b  c /srv/t s")
    Tablespace(oid=16384, name='a b  c', location='/srv/t s')
    """
    oid, length, rest = text.split(" ", 2)
    n = int(length)
    return Tablespace(int(oid), rest[:n], rest[n + 1:])


def list_tablespaces(dsn: str) -> tuple[Tablespace, ...]:
    """The user tablespaces now: queried again just before pg_basebackup starts."""
    with connect(dsn, application_name="pitr-backup") as conn:
        rows = query(conn, _TABLESPACES_SQL)
    return tuple(_tablespace(r[0]) for r in rows)


def server_parse_times(dsn: str, texts: list[str]) -> list[datetime]:
    """Let PostgreSQL read its own time stamps (zone abbreviations such as CET)."""
    with connect(dsn, application_name="pitr-backup") as conn:
        query(conn, "set time zone 'UTC'")
        return [query(conn, "select %s::timestamptz", [t])[0][0] for t in texts]


# -- label files ------------------------------------------------------------------

_LABEL_LINE = re.compile(r"^([A-Z][A-Z ]+): (.*)$")
_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?: (UTC|GMT|[+-]\d\d(?::?\d\d)?))?$")


def parse_label_file(text: str) -> dict[str, str]:
    """``backup_label`` / ``*.backup`` lines ``KEY: value`` -> dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _LABEL_LINE.match(line.strip())
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def label_lsn(value: str) -> str:
    """'0/2000028 (file 000000010000000000000002)' -> '0/2000028'."""
    return value.split(" ", 1)[0]


def parse_pg_time(text: str) -> datetime | None:
    """A label time stamp in UTC, or None when its zone needs the server to resolve.

    >>> parse_pg_time("2025-02-15 01:30:00 UTC")
    datetime.datetime(2025, 2, 15, 1, 30, tzinfo=datetime.timezone.utc)
    >>> parse_pg_time("2025-02-15 03:30:00 +02").isoformat()
    '2025-02-15T01:30:00+00:00'
    >>> parse_pg_time("2025-02-15 02:30:00 CET") is None
    True
    """
    m = _TIME_RE.match(text.strip())
    if not m:
        return None
    base = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    zone = m.group(2) or "UTC"
    if zone in ("UTC", "GMT"):
        return base
    sign = 1 if zone[0] == "+" else -1
    digits = zone[1:].replace(":", "")
    offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
    return base - sign * offset


# -- the child process --------------------------------------------------------------

@dataclass(frozen=True)
class BaseBackupOptions:
    bindir: str
    dsn: str
    label: str
    server_zstd_level: int | None = None  # None: uncompressed tar, pitr compresses
    max_rate: str | None = None  # pg_basebackup --max-rate (tests throttle with it)
    # the parent's backup_manifest: an incremental backup (docs/incremental-backups.md)
    incremental_manifest: str | None = None
    # a directory of named pipes instead of stdout: a cluster with tablespaces
    # (docs/tablespaces.md); pg_basebackup then writes no backup_manifest
    outdir: str | None = None


def build_argv(opts: BaseBackupOptions) -> list[str]:
    """The command line; a password in the DSN is left out (see :func:`child_env`)."""
    dsn, _ = dsn_without_password(opts.dsn)
    argv = [os.path.join(opts.bindir, "pg_basebackup"), "-D", opts.outdir or "-", "-Ft",
            "-X", "none",
            "--checkpoint=fast", "--no-sync", "--no-password", "--verbose",
            f"--label={opts.label}", f"--dbname={dsn}"]
    if opts.server_zstd_level is not None:
        # pg_basebackup can only inject its backup_manifest into an uncompressed tar
        # on stdout, so server-side compression goes without one.
        argv += [f"--compress=server-zstd:level={opts.server_zstd_level}", "--no-manifest"]
    elif opts.outdir:
        # into a directory it would write backup_manifest.tmp and rename it: a file
        # on local disk, which a backup of a cluster with tablespaces never writes
        argv.append("--no-manifest")
    if opts.max_rate:
        argv.append(f"--max-rate={opts.max_rate}")
    if opts.incremental_manifest:
        argv.append(f"--incremental={opts.incremental_manifest}")
    return argv


def child_env(opts: BaseBackupOptions) -> dict[str, str]:
    # Command lines are public in `ps`; a DSN password travels in the environment,
    # which only the same user can read.
    env = {**os.environ, "PGAPPNAME": "pitr-backup", "LC_MESSAGES": "C"}
    _, password = dsn_without_password(opts.dsn)
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def _fill(fd: int) -> int:
    """Fill the pipe ``fd`` writes into (shrunk to one page first); bytes written."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, 4096)
    os.set_blocking(fd, False)
    n = 0
    for chunk in (4096, 1):  # whole pages, then the last bytes of a page
        try:
            while True:
                n += os.write(fd, b"\0" * chunk)
        except BlockingIOError:
            pass
    os.set_blocking(fd, True)
    return n


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # If pitr is SIGKILLed while the server waits for archiving (no output flows,
    # so no SIGPIPE), pg_basebackup must not linger holding the backup open.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _no_regular_files() -> None:  # pragma: no cover - runs in the child
    """pg_basebackup writing into a directory of named pipes may write no byte to a file.

    RLIMIT_FSIZE 0 binds root too and spares pipes: an archive pitr made no pipe for
    (a tablespace created during the backup, docs/tablespaces.md) fails with EFBIG
    instead of landing on local disk. SIGXFSZ ignored: pg_basebackup reports the
    error instead of dying of the signal.
    """
    _die_with_parent()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


class BaseBackupProcess:
    """pg_basebackup with its stdout as a readable stream and stderr watched.

    ``gated``: pg_basebackup's stderr starts full, so its first message, "initiating
    base backup" (with --verbose), blocks it after it checked its ``-D`` directory and
    before it sends BASE_BACKUP; :meth:`open_gate` lets it go on. The named pipes of a
    cluster with tablespaces are made while it waits (docs/tablespaces.md).
    """

    def __init__(self, opts: BaseBackupOptions, archive_wait_timeout: float,
                 *, gated: bool = False) -> None:
        self.argv = build_argv(opts)
        self.env = child_env(opts)
        self.archive_wait_timeout = archive_wait_timeout
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self.waiting_since: float | None = None
        self.archive_wait_expired = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self._gate = threading.Event()
        self._filler = 0  # bytes pitr put into the stderr pipe to hold pg_basebackup
        self._stderr: IO[bytes] | None = None
        if not gated:
            self._gate.set()

    def start(self) -> BaseBackupProcess:
        env = self.env
        to_dir = self.argv[self.argv.index("-D") + 1] != "-"
        read_end, write_end = os.pipe()
        if not self._gate.is_set():
            self._filler = _fill(write_end)
        try:
            self._proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL if to_dir
                                          else subprocess.PIPE, stderr=write_end,
                                          bufsize=0, env=env,
                                          preexec_fn=_no_regular_files if to_dir
                                          else _die_with_parent,
                                          # Ctrl-C reaches pitr only; pitr stops the child
                                          start_new_session=True)
        except OSError as exc:
            os.close(read_end)
            raise BackupError(f"cannot run {self.argv[0]}: {exc.strerror}",
                              hint="set postgres.bindir to the directory of pg_basebackup") \
                from exc
        finally:
            os.close(write_end)
        self._stderr = os.fdopen(read_end, "rb", buffering=0)
        if self._proc.stdout is not None:
            with contextlib.suppress(OSError):  # a bigger pipe: fewer stalls of the writer
                fcntl.fcntl(self._proc.stdout.fileno(), _F_SETPIPE_SZ, PIPE_SIZE)
        for target in (self._read_stderr, self._watch_archive_wait):
            t = threading.Thread(target=target, name=f"pg_basebackup-{target.__name__}",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def open_gate(self) -> None:
        self._gate.set()

    def gate_open(self) -> bool:
        return self._gate.is_set()

    def held_at_gate(self) -> bool:
        """pg_basebackup blocks writing to its full stderr (Linux /proc/PID/wchan)."""
        try:
            with open(f"/proc/{self.pid}/wchan") as fh:
                # "pipe_write"; "anon_pipe_write" since Linux 6.x
                return fh.read().strip().endswith("pipe_write")
        except OSError:
            return False

    @property
    def stdout(self) -> IO[bytes]:
        assert self._proc is not None and self._proc.stdout is not None
        return self._proc.stdout

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def poll(self) -> int | None:
        assert self._proc is not None
        return self._proc.poll()

    def _read_stderr(self) -> None:
        assert self._stderr is not None
        self._gate.wait()
        skip = self._filler
        while skip:
            skip -= len(self._stderr.read(skip)) or skip
        with self._stderr:
            for raw in self._stderr:
                line = raw.decode(errors="replace").rstrip()
                self.stderr_tail.append(line)
                log.debug("pg_basebackup: %s", line)
                if _WAITING_NOTICE in line and self.waiting_since is None:
                    self.waiting_since = time.monotonic()
                    log.info("backup data sent; PostgreSQL waits for the WAL to be archived")

    def _watch_archive_wait(self) -> None:
        assert self._proc is not None
        while self._proc.poll() is None:
            since = self.waiting_since
            if since is not None and time.monotonic() - since > self.archive_wait_timeout:
                self.archive_wait_expired = True
                self.stop()
                return
            time.sleep(0.5)

    def wait(self) -> int:
        assert self._proc is not None
        self._gate.set()  # never left holding it
        rc = self._proc.wait()
        for t in self._threads:
            t.join(timeout=5)
        return rc

    def stop(self) -> None:
        """Terminate pg_basebackup (the server then aborts the backup)."""
        self._gate.set()
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(OSError):
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait(timeout=10)

    def failure(self, rc: int) -> BackupError | IncrementalError:
        """The error to report for a non-zero exit, with pg_basebackup's own words."""
        if self.archive_wait_expired:
            return BackupError(
                f"PostgreSQL did not archive the WAL this backup needs within "
                f"{self.archive_wait_timeout:.0f} s; the backup was abandoned",
                hint="check archive_command (it must run `pitr archive-push` with this "
                     "repository) and pg_stat_archiver.last_failed_wal; backup.wal_timeout "
                     "sets how long to wait")
        tail = "\n".join(line for line in self.stderr_tail if line)
        incremental = any(a.startswith("--incremental=") for a in self.argv)
        if incremental and any(m in tail for m in _INCREMENTAL_REFUSALS):
            return IncrementalError(
                f"PostgreSQL refused the incremental backup (exit code {rc}):\n{tail}",
                hint="take a full backup (`pitr backup`); for incremental backups "
                     "summarize_wal must stay on (`pitr setup --apply`) and "
                     "wal_summary_keep_time must cover the time since the parent backup")
        hint = None
        if "no pg_hba.conf entry for replication" in tail or "replication connection" in tail:
            hint = ("pg_basebackup needs a replication connection: allow `replication` for "
                    "this user in pg_hba.conf and set max_wal_senders > 0")
        return BackupError(f"pg_basebackup failed (exit code {rc}):\n{tail}", hint=hint)


# pg_basebackup --incremental's errors about the parent manifest or the WAL summaries
# (PostgreSQL 17/18 src/backend/backup/basebackup_incremental.c)
_INCREMENTAL_REFUSALS = (
    "WAL summarization is enabled",  # "... cannot be taken unless WAL summarization ..."
    "WAL summaries are required",
    "backup manifest",  # "could not parse backup manifest", "system identifier in backup ..."
    "manifest requires WAL",
    "incremental backup",
)


class ProcessStdout:
    """pg_basebackup's stdout as a file; at EOF it fails unless the process succeeded.

    Raising at EOF (instead of returning b"") makes ``Storage.put`` abandon the
    object (abort the multipart upload, drop the temp file) rather than store a
    truncated tar under its final name.
    """

    def __init__(self, proc: BaseBackupProcess) -> None:
        self._proc = proc
        self._stream = proc.stdout
        self.exit_code: int | None = None

    def _read(self, n: int) -> bytes:
        return self._stream.read(n)

    def read(self, n: int = -1) -> bytes:
        data = self._read(n)
        if not data and n != 0:
            self.exit_code = self._proc.wait()
            if self.exit_code != 0:
                raise self._proc.failure(self.exit_code)
        return data


# -- a directory of named pipes: clusters with tablespaces (docs/tablespaces.md) -------

# Seconds pg_basebackup may take to connect before its directory check; past them,
# if /proc cannot tell that it is blocked on its stderr, the gate opens anyway.
GATE_PATIENCE = 30.0
_IN_CLOSE_NOWRITE = 0x10
_IN_CLOEXEC = 0o2000000
_IN_NONBLOCK = 0o4000


class DirCheckWatch:
    """Tells when pg_basebackup has checked that its ``-D`` directory is empty.

    pg_basebackup refuses a directory that is not empty and opens its archives later
    by name, so the pipes can only be made in between. It reads the directory once,
    after connecting, then runs IDENTIFY_SYSTEM, writes "initiating base backup" and
    sends BASE_BACKUP (PostgreSQL 15 to 18); inotify reports the close of that read.
    With the process gated (:class:`BaseBackupProcess`) it cannot send BASE_BACKUP, so
    nothing can open before the pipes are made. Nobody else opens the private directory.
    """

    def __init__(self, path: str) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(_IN_CLOEXEC | _IN_NONBLOCK)
        if self.fd < 0 or self._libc.inotify_add_watch(
                self.fd, os.fsencode(path), _IN_CLOSE_NOWRITE) < 0:
            err = ctypes.get_errno()
            self.close()
            raise BackupError(f"cannot watch {path} (inotify): {os.strerror(err)}")

    def wait(self, proc: BaseBackupProcess) -> None:
        """Until pg_basebackup has read the directory (its error raised if it ended).

        If it blocks on its gated stderr before that (a message before the check),
        the gate opens and the pipes come as soon as the check is seen; an archive
        opened before them fails the backup (RLIMIT_FSIZE: nothing lands on disk)."""
        patience = time.monotonic() + GATE_PATIENCE
        while True:
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                os.read(self.fd, 4096)
                return
            rc = proc.poll()
            if rc is not None:
                rc = proc.wait()
                raise proc.failure(rc) if rc else BackupError(
                    "pg_basebackup ended without reading its output directory")
            if not proc.gate_open() and (proc.held_at_gate()
                                         or time.monotonic() > patience):
                # an error message (a refused connection) comes before the check: let
                # it out, so pg_basebackup can say it and end
                log.warning("pg_basebackup wrote to stderr before checking its output "
                            "directory; its named pipes are made without holding it")
                proc.open_gate()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def make_fifos(outdir: str, names: list[str]) -> None:
    """One named pipe per expected archive; BackupError if pg_basebackup was first."""
    for name in names:
        try:
            os.mkfifo(os.path.join(outdir, name), 0o600)
        except FileExistsError:
            raise BackupError(
                f"pg_basebackup opened {name} before pitr's named pipe for it was in place "
                "(no byte of it was written locally); the backup was abandoned",
                hint="run the backup again") from None


class FifoStream(ProcessStdout):
    """One named pipe of pg_basebackup's output directory as a file (see ProcessStdout).

    Opened without blocking, so a pipe pg_basebackup never opens (a tablespace dropped
    during the backup) cannot hang its reader: it waits for a writer only while
    pg_basebackup runs. Linux raises no POLLHUP on a pipe no writer has opened yet.
    """

    def __init__(self, proc: BaseBackupProcess, path: str) -> None:
        self._proc = proc
        self.path = path
        self.exit_code = None
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.written = False  # a writer opened the pipe

    def _wait_writer(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN | select.POLLHUP)
        while True:
            ended = self._proc.poll() is not None
            if poller.poll(200):
                break
            if ended:  # looked again after it ended: nothing can come any more
                rc = self._proc.wait()
                if rc:
                    raise self._proc.failure(rc)
                raise BackupError(f"pg_basebackup ended without writing "
                                  f"{os.path.basename(self.path)}: its tablespace was "
                                  "dropped during the backup",
                                  hint="run the backup again")
        self.written = True
        os.set_blocking(self._fd, True)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._fd, _F_SETPIPE_SZ, PIPE_SIZE)

    def _read(self, n: int) -> bytes:
        if not self.written:
            self._wait_writer()
        return os.read(self._fd, n if n > 0 else PIPE_SIZE)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# -- the tar stream ------------------------------------------------------------------

HEAD_BYTES = 256 * 1024  # backup_label is the first member of the tar


class TarHead:
    """Keeps the first bytes of the raw tar, where pg_basebackup puts backup_label."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        if len(self.buf) < HEAD_BYTES:
            self.buf += data[:HEAD_BYTES - len(self.buf)]

    def backup_label(self) -> str:
        try:
            with tarfile.open(fileobj=io.BytesIO(bytes(self.buf)), mode="r|") as tar:
                for member in tar:
                    if member.name == "backup_label":
                        fh = tar.extractfile(member)
                        if fh is not None:
                            return fh.read().decode()
        except (tarfile.TarError, EOFError, UnicodeDecodeError) as exc:
            raise BackupError(f"cannot read backup_label from the backup's tar: {exc}") from exc
        raise BackupError("pg_basebackup's tar does not start with backup_label")


class TarMemberCapture:
    """Copies one member (by name) out of a tar stream as it passes, in bounded memory.

    pg_basebackup writing one tar to stdout appends its backup_manifest as the last
    member; an incremental backup needs the parent's, so pitr keeps a copy of it as its
    own object (docs/incremental-backups.md "Where the manifest is kept"). Spooled to a
    temporary file past 16 MiB (a manifest has a line per file of the cluster).
    """

    def __init__(self, name: str) -> None:
        import tempfile

        self.name = name
        # lives as long as the stream; value() closes it
        self.data: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=16 << 20)  # noqa: SIM115
        self._seen = False
        self._header = bytearray()
        self._skip = 0  # bytes of the current member's data (and padding) still to pass
        self._take = 0  # of which this many are the wanted member's content
        self._ended = False

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._ended:
            if self._skip:
                n = min(self._skip, len(view))
                if self._take:
                    k = min(self._take, n)
                    self.data.write(view[:k])
                    self._take -= k
                self._skip -= n
                view = view[n:]
                continue
            need = 512 - len(self._header)
            self._header += view[:need]
            view = view[need:]
            if len(self._header) == 512:
                self._on_header(bytes(self._header))
                self._header.clear()

    def _on_header(self, block: bytes) -> None:
        if block == bytes(512):  # the end-of-archive marker
            self._ended = True
            return
        name = block[:100].split(b"\0", 1)[0].decode(errors="replace")
        prefix = block[345:500].split(b"\0", 1)[0].decode(errors="replace")
        if prefix and block[257:262] == b"ustar":
            name = f"{prefix}/{name}"
        size = _tar_size(block[124:136])
        self._skip = (size + 511) // 512 * 512
        if name == self.name and block[156:157] in (b"0", b"\0"):
            self._seen = True
            self.data.seek(0)
            self.data.truncate()
            self._take = size

    @property
    def found(self) -> bool:
        """The member passed whole (a stream cut inside it found nothing)."""
        return self._seen and self._take == 0

    def value(self) -> bytes:
        """The member's content (once; the spool file is closed)."""
        with self.data:
            self.data.seek(0)
            return self.data.read()


def _tar_size(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for members of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0
