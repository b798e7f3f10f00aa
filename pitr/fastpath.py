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
* **One proof.** A segment is proven stored by one empty file, its proof:
  ``<spool>/<stanza>/archive/proofs-<tag>/<name>_<dev>_<ino>_<size>_<mtime>_<ctime>``
  (tag: :func:`proof_dir_name` of the repository URL, or of every repository's URL
  when there are several: ``Config.archive_target``), which the agent creates after
  every repository acknowledged the object. This module, :mod:`pitr.wal.spool` and
  pitr/archive-push.sh all check that same file; nothing else answers
  (docs/design-fast-path.md gives the soundness argument).
* **The agent on demand.** When no agent runs for the stanza, archive-push starts
  one (:func:`spawn_due` decides, :func:`pitr.entry.spawn_agent` forks it); it exits
  after ``archive.agent_idle_exit`` seconds without work (docs/archiving-modes.md).
"""

from __future__ import annotations

import os
import time

from pitr import __version__
from pitr.atomic import atomic_write
from pitr.configfile import config_file
from pitr.pg.walname import is_segment_name, is_wal_name

# the fast paths ask these through fp.*
__all__ = ["atomic_write", "is_segment_name", "is_wal_name"]

CACHE_FORMAT = "pitr-fast-config 3"
RECEIPT_FORMAT = 1

# Spool layout, relative to <archive.spool_dir>/<stanza> (see pitr.wal.spool).
ARCHIVE_DIR = "archive"
PREFETCH_DIR = "prefetch"
AGENT_LOCK = "agent.lock"
AGENT_SPAWNED = "agent.spawned"  # touched by the archive-push that last started an agent
AGENT_LOG = "agent.log"  # stdout/stderr of agents started on demand
SPAWN_GRACE = 30.0  # seconds a started agent has to take its lock before another try
RESPAWN_AFTER = 5.0  # seconds before a started agent that died is replaced
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


# -- config ---------------------------------------------------------------------------
class FastConfig:
    """The settings the fast paths read (a subset of pitr.config.Config)."""

    KEYS = ("stanza", "spool_dir", "url", "fast_path_wait", "prefetch", "pgdata",
            "agent_idle_exit", "proof_tag")
    __slots__ = KEYS

    def __init__(self, stanza: str, spool_dir: str, url: str, fast_path_wait: float,
                 prefetch: int, pgdata: str, agent_idle_exit: float, proof_tag: str) -> None:
        self.stanza = stanza
        self.spool_dir = spool_dir
        self.url = url
        self.fast_path_wait = fast_path_wait
        self.prefetch = prefetch
        self.pgdata = pgdata
        self.agent_idle_exit = agent_idle_exit
        self.proof_tag = proof_tag  # proof_dir_name(url), cached: hashlib is not imported

    @property
    def base(self) -> str:
        return os.path.join(self.spool_dir, self.stanza)

    def dump(self) -> str:
        return "".join(f"{k}={getattr(self, k)}\n" for k in self.KEYS)

    @classmethod
    def parse(cls, text: str) -> FastConfig:
        kv = dict(line.split("=", 1) for line in text.splitlines() if line)
        return cls(kv["stanza"], kv["spool_dir"], kv["url"], float(kv["fast_path_wait"]),
                   int(kv["prefetch"]), kv["pgdata"], float(kv["agent_idle_exit"]),
                   kv["proof_tag"])


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
    import hashlib

    # Values as digests: PITR_ENCRYPTION_KEY and other secrets never land in the cache
    # file (docs/encryption.md, "Keeping the key safe"); any change still means a miss.
    env = sorted((k, hashlib.sha256(v.encode()).hexdigest()) for k, v in os.environ.items()
                 if k.startswith("PITR_"))
    # pitr's version: an upgrade may change defaults, which the cache would otherwise keep
    lines = [CACHE_FORMAT, __version__, config_path,
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
                    cfg.postgres.pgdata, float(cfg.archive.agent_idle_exit),
                    proof_dir_name(cfg.archive_target))
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
    return lock_state(path) is True


def lock_state(path: str | os.PathLike[str]) -> bool | None:
    """:func:`lock_held`, but None when this process cannot tell (e.g. no permission)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # also drops our shared lock if we got it
    return False


# -- one restore's prefetch state ---------------------------------------------------
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


# -- the proof ------------------------------------------------------------------------
def identity_of(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def proof_dir_name(repository: str) -> str:
    """The proof directory of one repository URL (a URL can hold any character)."""
    import hashlib

    return "proofs-" + hashlib.sha256(repository.encode()).hexdigest()[:16]


def _stat_time(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    return f"{sec}.{frac:09d}"


def proof_name(name: str, identity: tuple[int, int, int, int, int]) -> str:
    """``<name>_<identity>`` as ``stat -c '%d_%i_%s_%.9Y_%.9Z'`` prints the identity."""
    dev, ino, size, mtime_ns, ctime_ns = identity
    return f"{name}_{dev}_{ino}_{size}_{_stat_time(mtime_ns)}_{_stat_time(ctime_ns)}"


def proof_path(base: str, proof_tag: str, name: str, st: os.stat_result) -> str:
    return os.path.join(base, ARCHIVE_DIR, proof_tag, proof_name(name, identity_of(st)))


def proven(base: str, proof_tag: str, name: str, st: os.stat_result) -> bool:
    """Does the agent's proof say THIS file (``st``) is durably stored in the repository
    ``proof_tag`` names? The only question the fast paths may answer (the same file
    pitr/archive-push.sh tests; docs/design-fast-path.md)."""
    return os.path.isfile(proof_path(base, proof_tag, name, st))


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


# -- the agent on demand (docs/archiving-modes.md) ------------------------------------
def spawn_due(*, now: float, agent_running: bool, idle_exit: float, pgdata: str,
              last_spawn: float | None, spawned_alive: bool) -> bool:
    """PURE: should this archive-push start an agent?

    Only when none runs, the on-demand agent is enabled (``archive.agent_idle_exit``
    > 0) and can run at all (it watches ``<pgdata>/pg_wal``), and the agent an
    archive-push started last (at ``last_spawn``, same clock as ``now``) is not
    still starting: alive within :data:`SPAWN_GRACE` seconds it may still be
    importing, and a second would only lose the lock. One that died (killed, or a
    broken setup) is replaced, but not sooner than :data:`RESPAWN_AFTER` after the
    last start, so a broken setup costs no Python start per segment.
    """
    if agent_running or idle_exit <= 0 or not pgdata:
        return False
    if last_spawn is None:
        return True
    age = now - last_spawn
    if not 0 <= age < SPAWN_GRACE:
        return True
    return not spawned_alive and age >= RESPAWN_AFTER


def starting_left(now: float, last_spawn: float | None, spawned_alive: bool) -> float:
    """PURE: seconds an agent started at ``last_spawn`` may still take to hold its lock
    (0: it is not starting: never started, died, or had its grace)."""
    if last_spawn is None or not spawned_alive or not 0 <= now - last_spawn < SPAWN_GRACE:
        return 0.0
    return SPAWN_GRACE - (now - last_spawn)


def last_spawn(base: str) -> tuple[float | None, int]:
    """When an agent was last started on demand and its pid (0: unknown)."""
    path = os.path.join(base, AGENT_SPAWNED)
    try:
        with open(path) as fh:
            at = os.fstat(fh.fileno()).st_mtime
            text = fh.read(32).strip()
    except OSError:
        return None, 0
    return at, int(text) if text.isdigit() else 0


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (whoever owns it: EPERM says it does)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- archive-get: proving a prefetched segment ---------------------------------------
def data_dir_of(dest: str, pgdata: str) -> str:
    """Same answer as :func:`pitr.wal.commands.data_dir_of`, without pathlib."""
    parent = os.path.dirname(os.path.abspath(dest))
    if os.path.basename(parent) == "pg_wal":
        return os.path.dirname(parent)
    return pgdata or os.getcwd()


def segment_proven(path: str, name: str, cluster: int) -> bool:
    """Is the spool file at ``path`` segment ``name`` of the cluster whose system
    identifier (from its ``global/pg_control``) is ``cluster``?

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
