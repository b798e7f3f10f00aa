"""The per-segment fast paths' toolbox: nothing but os/time/fcntl/pwd at import.

PostgreSQL runs archive_command once per WAL segment and waits for it. A bare
``python -c pass`` costs about 9 ms here; importing ``pitr.config`` (tomllib,
dataclasses, typing, pathlib) costs about as much again, and even ``json``
drags in ``re`` and ``enum``. So the fast paths in :mod:`pitr.entry` use only
this module:

* **Config cache.** The few settings a fast path needs are cached in
  ``~/.cache/pitr/`` (the OS user's home, mode 0700), keyed by the config
  file's path and full stat identity (dev, inode, size, mtime_ns, ctime_ns)
  and by every ``PITR_*`` environment variable. Any change to either means a
  miss, and a miss loads the config with :func:`pitr.config.load` (which also
  reports config errors exactly as the CLI does) and rewrites the cache. The
  cache file must belong to this user and not be group/world-writable: it
  decides where receipts are read from.
* **Receipt proof without a JSON parser.** Receipts are JSON written by
  :class:`pitr.wal.spool.Receipt` with sorted keys, so the part that proves a
  file (format, identity, name, repository) is one contiguous, canonical
  fragment. We build that fragment from ``os.stat`` of the file and look for
  it; JSON escaping cannot forge it (a quote inside a value is escaped). URLs
  whose JSON form could differ from the raw text fall back to a real parse.
  tests/unit/test_spool.py pins the fragment to the writer's output.
"""

from __future__ import annotations

import os
import time

from pitr.atomic import atomic_write
from pitr.configfile import config_file
from pitr.pg.walname import is_segment_name, is_wal_name

# the fast paths ask these through fp.*
__all__ = ["atomic_write", "is_segment_name", "is_wal_name"]

CACHE_FORMAT = "pitr-fast-config 1"
RECEIPT_FORMAT = 1

# Spool layout, relative to <archive.spool_dir>/<stanza> (see pitr.wal.spool).
ARCHIVE_DIR = "archive"
PREFETCH_DIR = "prefetch"
AGENT_LOCK = "agent.lock"
STATUS_FILE = "agent-status.json"
FASTPATH_LOG = "fastpath.log"  # inside ARCHIVE_DIR
PREFETCH_LOCK = "prefetch.lock"
PREFETCH_WANT = "prefetch.want"
PREFETCH_LOG = "prefetch.log"
PREFETCH_WORKER_LOG = "prefetch-worker.log"
MISSING_SUFFIX = ".missing"  # prefetch/<name>.missing: the worker could not fetch <name>
MISSING_FRESH = 2.0  # seconds a .missing marker stands; the worker retries after as long
ABSENT = "absent"  # .missing content when the repository said "no such object"
REQUEST_SUFFIX = ".request"  # prefetch/<name>.request: archive-get wants this one file
CHECKSUM_SUFFIX = ".sha256"  # prefetch/<name>.sha256: the raw sha256 the repository recorded
# Prefetch state lives in <spool>/<stanza>/restore-<key>/, one per restore: see restore_key.
RESTORE_PREFIX = "restore-"
PG_CONTROL = os.path.join("global", "pg_control")



# -- config ---------------------------------------------------------------------------
class FastConfig:
    """The settings the fast paths read (a subset of pitr.config.Config)."""

    KEYS = ("stanza", "spool_dir", "url", "fast_path_wait", "prefetch", "pgdata")
    __slots__ = KEYS

    def __init__(self, stanza: str, spool_dir: str, url: str, fast_path_wait: float,
                 prefetch: int, pgdata: str) -> None:
        self.stanza = stanza
        self.spool_dir = spool_dir
        self.url = url
        self.fast_path_wait = fast_path_wait
        self.prefetch = prefetch
        self.pgdata = pgdata

    @property
    def base(self) -> str:
        return os.path.join(self.spool_dir, self.stanza)

    def dump(self) -> str:
        return "".join(f"{k}={getattr(self, k)}\n" for k in self.KEYS)

    @classmethod
    def parse(cls, text: str) -> FastConfig:
        kv = dict(line.split("=", 1) for line in text.splitlines() if line)
        return cls(kv["stanza"], kv["spool_dir"], kv["url"], float(kv["fast_path_wait"]),
                   int(kv["prefetch"]), kv["pgdata"])


def _cache_path(config_path: str) -> str | None:
    try:
        import pwd

        home = pwd.getpwuid(os.geteuid()).pw_dir
    except (KeyError, ImportError):
        return None
    if not home or home == "/":
        return None
    return os.path.join(home, ".cache", "pitr", "fast-" + config_path.replace("/", "%"))


def _cache_key(config_path: str, st: os.stat_result) -> str:
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith("PITR_"))
    lines = [CACHE_FORMAT, config_path,
             f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}",
             *(f"{k}={v}" for k, v in env), "--"]
    return "\n".join(lines) + "\n"


def _private_to_me(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def load_config(explicit: str | None) -> FastConfig:
    """The fast-path settings, from the cache when the config and env are unchanged."""
    path = os.path.abspath(config_file(explicit)[0])
    try:
        st = os.stat(path)
    except OSError:
        return _full_load(explicit, None, None)  # defaults only, or an error to report
    key = _cache_key(path, st)
    cache = _cache_path(path)
    if cache is not None:
        try:
            fd = os.open(cache, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                if _private_to_me(os.fstat(fd)):
                    text = os.read(fd, 65536).decode()
                    if text.startswith(key):
                        return FastConfig.parse(text[len(key):])
            finally:
                os.close(fd)
        except (OSError, ValueError, KeyError):
            pass
    return _full_load(explicit, cache, key)


def _full_load(explicit: str | None, cache: str | None, key: str | None) -> FastConfig:
    from pitr.config import load

    cfg = load(explicit)  # raises ConfigError: the caller falls through to the CLI
    fc = FastConfig(cfg.stanza, cfg.archive.spool_dir, cfg.repository.url,
                    float(cfg.archive.fast_path_wait), int(cfg.archive.prefetch),
                    cfg.postgres.pgdata)
    body = fc.dump()
    # Newlines could make two different inputs read alike: such setups are not cached.
    if cache is not None and key is not None and body.count("\n") == len(FastConfig.KEYS) \
            and not any("\n" in v for k, v in os.environ.items() if k.startswith("PITR_")):
        try:
            os.makedirs(os.path.dirname(cache), mode=0o700, exist_ok=True)
            if _private_to_me(os.stat(os.path.dirname(cache))):
                atomic_write(cache, key + body)
        except OSError:
            pass  # no cache, just slower
    return fc


# -- small file operations ------------------------------------------------------------
def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append one short line; O_APPEND keeps concurrent writers' lines whole."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
    finally:
        os.close(fd)


def lock_held(path: str | os.PathLike[str]) -> bool:
    """True when another process holds the exclusive flock on ``path``.

    flock dies with its holder (even on kill -9), so unlike a pid file this
    cannot be fooled by a stale file or a recycled pid.
    """
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also drops our shared lock if we got it
    return False


# -- one restore's prefetch state ---------------------------------------------------
def read_system_id(datadir: str) -> int | None:
    """The cluster's system identifier: the first 8 bytes of global/pg_control (native,
    little-endian on every platform PostgreSQL 15 packages exist for). None: unreadable."""
    try:
        with open(os.path.join(datadir, PG_CONTROL), "rb") as fh:
            raw = fh.read(8)
    except OSError:
        return None
    return int.from_bytes(raw, "little") if len(raw) == 8 else None


def restore_key(url: str, datadir: str, system_id: int) -> str:
    """Who a prefetched file is for: this repository, this cluster, this data directory.

    Two restores on one host (two repositories, or one repository restored twice into
    two directories) get two keys, so neither can hand the other a segment or an
    "absent" marker.
    """
    import hashlib

    text = f"{url}\0{os.path.realpath(datadir)}\0{system_id}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def restore_base(base: str, url: str, datadir: str, system_id: int) -> str:
    """``<spool>/<stanza>/restore-<key>`` for this restore (:func:`restore_key`)."""
    return os.path.join(base, RESTORE_PREFIX + restore_key(url, datadir, system_id))


def prefetched_intact(path: str) -> bool:
    """Does the prefetched file still hash to the sha256 the repository recorded for it?

    Checked at hand-over (one read of the file, 27 ms p50 for 16 MiB on a loaded 2-core
    host; docs/design.md, "Prefetch"): a file changed or
    damaged in the spool after the worker verified it is never given to PostgreSQL.
    """
    import hashlib

    try:
        with open(path + CHECKSUM_SUFFIX) as fh:
            expected = fh.read(100).strip()
        with open(path, "rb") as fh:
            got = hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return False
    return bool(expected) and got == expected


# -- receipts ---------------------------------------------------------------------------
def identity_of(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def receipt_fragment(name: str, url: str, st: os.stat_result) -> str | None:
    """The canonical JSON text a receipt for exactly this file must contain (None: can't tell)."""
    if not (url.isascii() and url.isprintable()) or '"' in url or "\\" in url:
        return None
    dev, ino, size, mtime_ns, ctime_ns = identity_of(st)
    return (f'"format": {RECEIPT_FORMAT}, "identity": {{"ctime_ns": {ctime_ns}, "dev": {dev}, '
            f'"ino": {ino}, "mtime_ns": {mtime_ns}, "size": {size}}}, "name": "{name}", '
            f'"repository": "{url}", ')


def receipt_proves(base: str, name: str, st: os.stat_result, url: str) -> bool:
    """Does the receipt in the spool prove THIS file's content is stored in ``url``?"""
    path = os.path.join(base, ARCHIVE_DIR, name + ".ok")
    fragment = receipt_fragment(name, url, st)
    if fragment is None:
        from pitr.wal.spool import Spool

        spool = Spool(os.path.dirname(base), os.path.basename(base))
        return spool.receipt_proves(name, st, url)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(65536)
    except (OSError, ValueError):
        return False
    return text.endswith("}") and fragment in text


def note_fast_path(base: str, name: str, started: float) -> None:
    ms = (time.perf_counter() - started) * 1000
    try:  # noqa: SIM105 - contextlib is one import more on the hot path
        append_line(os.path.join(base, ARCHIVE_DIR, FASTPATH_LOG),
                    f"{time.time():.3f} {name} fast-path {ms:.2f}ms")
    except OSError:
        pass  # the proof stands; only the log line is lost


def agent_running(base: str) -> bool:
    return lock_held(os.path.join(base, AGENT_LOCK))


def has_error(base: str, name: str) -> bool:
    return os.path.exists(os.path.join(base, ARCHIVE_DIR, name + ".error"))


# -- archive-get: proving a prefetched segment ---------------------------------------
def data_dir_of(dest: str, pgdata: str) -> str:
    """Same answer as :func:`pitr.wal.commands.data_dir_of`, without pathlib."""
    parent = os.path.dirname(os.path.abspath(dest))
    if os.path.basename(parent) == "pg_wal":
        return os.path.dirname(parent)
    return pgdata or os.getcwd()


def segment_proven(path: str, name: str, cluster: int) -> bool:
    """Is the spool file at ``path`` segment ``name`` of the cluster whose system
    identifier (from its ``global/pg_control``, :func:`read_system_id`) is ``cluster``?

    The long page header at its start (layout in :mod:`pitr.pg.walheader`) names
    the segment's first LSN and the system identifier. Any doubt: False.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(40)
    except OSError:
        return False
    if len(head) < 40 or not int.from_bytes(head[2:4], "little") & 2:
        return False
    seg_size = int.from_bytes(head[32:36], "little")
    if seg_size <= 0 or seg_size & (seg_size - 1) or seg_size > 1 << 32:
        return False
    segno = int(name[8:16], 16) * (0x100000000 // seg_size) + int(name[16:24], 16)
    return (int.from_bytes(head[8:16], "little") == segno * seg_size
            and int.from_bytes(head[24:32], "little") == cluster)
