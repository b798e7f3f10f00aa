"""Console-script entry point with the per-segment fast paths.

PostgreSQL runs archive_command and restore_command once per 16 MiB segment,
and a Python process that imports typer/boto3/zstandard spends 100-250 ms
before any I/O. Two cases are answered here with :mod:`pitr.fastpath` only
(os, time, fcntl, pwd; not even json or re):

* ``[--config X] archive-push PATH``: exit 0 when the agent's proof says this
  very file is stored (docs/design-fast-path.md for why the identity check is
  sound). When no agent runs, start one (docs/archiving-modes.md). A running
  (or just started) agent that has not reached the segment yet gets up to
  ``archive.fast_path_wait`` seconds.
* ``[--config X] archive-get NAME DEST`` for a segment NAME: record NAME as the
  restore position, start the detached prefetch worker if none runs, and if
  NAME was prefetched (verified, decompressed, renamed into the spool only when
  complete), still hashes to the sha256 the repository recorded, and its page
  header names this segment and the system identifier of the cluster being
  recovered (its pg_control), rename it to DEST. All of it in this restore's own
  corner of the spool (repository, data directory, system id:
  :func:`pitr.fastpath.restore_key`). The fast path never answers "absent": that
  needs the proof only the full path gives (docs/exit-codes.md, archive-get),
  and it is asked a handful of times per restore. History files (no page header
  to prove) take the full path too.

Anything else, and every doubt or error on these paths (root included: the
full CLI refuses root over the cluster's files), falls through to the full
CLI, which behaves exactly as it would without the fast paths.
"""

from __future__ import annotations

import gc
import os
import sys
import time

FAST_COMMANDS = ("archive-push", "archive-get")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # Everything pitr writes (spool, local repository, fetched WAL, reports) holds
    # database contents: private to the owner whatever the caller's umask.
    os.umask(0o077)
    code = fast_path(args)
    if code is not None:
        return code
    code = direct_path(args)
    if code is not None:
        return code
    from pitr.cli import main as cli_main

    return cli_main(args)


def split_args(args: list[str]) -> tuple[str | None, list[str]] | None:
    """``[--config X] COMMAND ARGS`` -> (config, [COMMAND, *ARGS]); None for anything else."""
    config: str | None = None
    rest = list(args)
    if rest and rest[0] in ("--config", "-c") and len(rest) >= 2:
        config, rest = rest[1], rest[2:]
    elif rest and rest[0].startswith("--config="):
        config, rest = rest[0].split("=", 1)[1], rest[1:]
    if not rest or rest[0] not in FAST_COMMANDS or any(a.startswith("-") for a in rest):
        return None
    return config, rest


def direct_path(args: list[str]) -> int | None:
    """A fast-path miss still skips typer and the other command modules.

    The CLI's archive commands only call these same typer-free functions;
    loading the framework cost 0.3-0.8 s per segment on the synchronous path.
    """
    parsed = split_args(args)
    if parsed is None:
        return None
    config, (command, *rest) = parsed
    if (command, len(rest)) not in (("archive-push", 1), ("archive-get", 2)):
        return None  # wrong arity: the CLI reports it (archive-get with a recovery-stopping code)
    # No cyclic garbage collection in a process that handles one WAL file and exits.
    # Importing botocore and building a client makes tens of thousands of objects,
    # and the collector walked them again and again (and once more at interpreter
    # exit): a third of a synchronous archive-push's CPU (docs/benchmarks.md, "The
    # synchronous archive-push"). What such a process leaves in cycles is bounded by
    # the one file it handles; reference counting still frees everything else. On
    # the way out the survivors are frozen, so the exit-time collection skips them.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        from pitr.wal import commands

        if command == "archive-push":
            return commands.archive_push_main(config, rest[0])
        return commands.archive_get_main(config, rest[0], rest[1])
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def fast_path(args: list[str]) -> int | None:
    parsed = split_args(args)
    if parsed is None:
        return None
    config, (command, *rest) = parsed
    try:
        if command == "archive-push" and len(rest) == 1:
            return archive_push_fast(config, rest[0])
        if command == "archive-get" and len(rest) == 2:
            return archive_get_fast(config, rest[0], rest[1])
    except Exception:  # the fast path may only ever help; the full CLI owns every error
        return None
    return None


def archive_push_fast(config: str | None, path: str) -> int | None:
    from pitr import fastpath as fp

    start = time.perf_counter()
    name = os.path.basename(path)
    # root over the cluster's files never takes a shortcut: the full CLI decides
    # (pitr.security refuses it there).
    if not fp.is_wal_name(name) or os.geteuid() == 0:
        return None
    cfg = fp.load_config(config)
    st = os.stat(path)
    base = cfg.base
    if fp.proven(base, cfg.proof_tag, name, st):
        fp.note_fast_path(base, name, start)
        return 0
    if cfg.fast_path_wait <= 0:
        return None
    running = fp.agent_running(base)
    now, (spawned_at, pid) = time.time(), fp.last_spawn(base)
    alive = not running and fp.pid_alive(pid)
    if fp.spawn_due(now=now, agent_running=running, idle_exit=cfg.agent_idle_exit,
                    pgdata=cfg.pgdata, last_spawn=spawned_at, spawned_alive=alive):
        (spawned_at, pid), alive = (now, spawn_agent(config, base)), True
    # An agent started moments ago (by us or another archive-push) holds no lock yet.
    starting_until = start + fp.starting_left(now, spawned_at, alive)
    if not running and starting_until <= start:
        return None
    if not _wait_for_agent(base, name, st, cfg.proof_tag, start + cfg.fast_path_wait,
                           starting_until, pid):
        return None
    fp.note_fast_path(base, name, start)
    return 0


def _wait_for_agent(base: str, name: str, st: os.stat_result, proof_tag: str,
                    deadline: float, starting_until: float, spawned: int) -> bool:
    """Poll for the agent's proof until ``deadline``; False as soon as it cannot come.

    Before ``starting_until`` the agent just started (pid ``spawned``) may not hold
    its lock yet; if that process dies meanwhile, the wait ends.
    """
    from pitr import fastpath as fp

    pause, last_alive = 0.002, time.perf_counter()
    while time.perf_counter() < deadline:
        time.sleep(pause)
        pause = min(pause * 1.5, 0.02)
        if fp.proven(base, proof_tag, name, st):
            return True
        if fp.has_error(base, name):
            return False  # the agent failed on it: push synchronously, report properly
        now = time.perf_counter()
        if now - last_alive > 0.2:
            if not fp.agent_running(base) and (now >= starting_until
                                               or not fp.pid_alive(spawned)):
                return False
            last_alive = now
    return False


def archive_get_fast(config: str | None, name: str, dest: str) -> int | None:
    from pitr import fastpath as fp

    if not fp.is_segment_name(name) or os.geteuid() == 0:
        return None
    cfg = fp.load_config(config)
    if cfg.prefetch <= 0:
        return None
    datadir = fp.data_dir_of(dest, cfg.pgdata)
    from pitr.pg.control import system_id_or_none

    sysid = system_id_or_none(datadir)  # read once: it keys the spool and proves files
    if sysid is None:
        return None  # no pg_control to say whose restore this is: the full CLI fetches
    base = fp.restore_base(cfg.base, cfg.url, datadir, sysid)
    pdir = os.path.join(base, fp.PREFETCH_DIR)
    os.makedirs(pdir, mode=0o700, exist_ok=True)
    # Publish the request before looking for a worker: a worker that is about to
    # exit re-reads both after dropping its lock, so no request is ever stranded.
    src = os.path.join(pdir, name)
    fp.atomic_write(os.path.join(base, fp.PREFETCH_WANT), name + "\n")  # the position
    if not os.path.exists(src):  # ask for this very file
        os.close(os.open(src + fp.REQUEST_SUFFIX, os.O_WRONLY | os.O_CREAT, 0o600))
    if not fp.lock_held(os.path.join(base, fp.PREFETCH_LOCK)):
        spawn_prefetcher(config, datadir, os.path.join(base, fp.PREFETCH_WORKER_LOG))
    # The worker's window starts at NAME itself (or NAME is a request): if NAME is
    # not there yet, waiting for the warm worker beats a cold fetch of our own,
    # unless it already failed.
    missing = src + fp.MISSING_SUFFIX
    log = os.path.join(base, fp.PREFETCH_LOG)
    deadline = time.perf_counter() + max(cfg.fast_path_wait, 0)
    while not os.path.exists(src) and time.perf_counter() < deadline:
        try:
            age = time.time() - os.stat(missing).st_mtime
        except FileNotFoundError:
            age = None
        if age is not None:
            if age >= fp.MISSING_FRESH:
                _discard(missing)  # old news; the worker asks again shortly
            else:
                # The worker found no object (or failed): only the full path may say
                # "absent" (exit 1 ends recovery), after proving the repository is
                # this cluster's; any other failure it reports properly.
                word = (_read(missing).split() or ["missing"])[0]
                fp.append_line(log, f"{time.time():.3f} {word} {name}")
                return None
        time.sleep(0.005)
    if not os.path.exists(src):
        fp.append_line(log, f"{time.time():.3f} miss {name}")
        return None
    # Not what PostgreSQL asked for (unproven), or changed since the worker verified it
    # (damaged): never handed over. The full CLI fetches it and proves it itself.
    doubt = ("unproven" if not fp.segment_proven(src, name, sysid)
             else "damaged" if not fp.prefetched_intact(src) else None)
    if doubt is not None:
        _discard(src, src + fp.CHECKSUM_SUFFIX)
        fp.append_line(log, f"{time.time():.3f} {doubt} {name}")
        return None
    move_into_place(src, dest)
    _discard(src + fp.CHECKSUM_SUFFIX)
    fp.append_line(log, f"{time.time():.3f} hit {name}")
    return 0


def _discard(*paths: str) -> None:
    for path in paths:
        try:  # noqa: SIM105 - contextlib is one import more on the hot path
            os.unlink(path)
        except FileNotFoundError:
            pass


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read(200).strip()
    except OSError:
        return ""


def move_into_place(src: str, dest: str) -> None:
    """Rename a verified spool file to DEST; copy + rename when on another file system."""
    try:
        os.replace(src, dest)
        return
    except OSError as exc:
        import errno

        if exc.errno != errno.EXDEV:
            raise
    import shutil

    tmp = os.path.join(os.path.dirname(dest) or ".", f".{os.path.basename(dest)}.pitr.tmp")
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(tmp, dest)
    os.unlink(src)


def spawn_prefetcher(config: str | None, datadir: str, log_path: str) -> None:
    """Start ``pitr prefetch-worker`` for the restore into ``datadir``."""
    spawn_detached([*_pitr_argv(config), "prefetch-worker", "--datadir",
                    os.path.abspath(datadir)], log_path)


def spawn_agent(config: str | None, base: str) -> int:
    """Start ``pitr agent --on-demand`` for this stanza (docs/archiving-modes.md); its pid.

    Records the start (time and pid) in ``agent.spawned``, so the archive-pushes that
    follow within :data:`pitr.fastpath.SPAWN_GRACE` wait for this one while it lives
    instead of starting another. The agent's own lock makes it single-instance
    whatever happens.
    """
    from pitr import fastpath as fp

    os.makedirs(base, mode=0o700, exist_ok=True)
    marker = os.path.join(base, fp.AGENT_SPAWNED)
    fp.atomic_write(marker, "0\n")  # before the fork: a concurrent archive-push waits
    pid = spawn_detached([*_pitr_argv(config), "agent", "--on-demand"],
                         os.path.join(base, fp.AGENT_LOG))
    fp.atomic_write(marker, f"{pid}\n")
    return pid


def _pitr_argv(config: str | None) -> list[str]:
    argv = [sys.executable, "-m", "pitr"]
    if config:
        argv += ["--config", os.path.abspath(config)]
    return argv


def spawn_detached(argv: list[str], log_path: str) -> int:
    """Run ``argv`` detached (double fork, own session), output appended to ``log_path``;
    the detached process's pid (0: unknown).

    It must outlive this short archive-push/archive-get process and must not hold
    PostgreSQL's stdout/stderr, or PostgreSQL would wait for it.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(rfd)
            os.setsid()
            grandchild = os.fork()
            if grandchild == 0:
                os.close(wfd)
                null = os.open(os.devnull, os.O_RDWR)
                out = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                os.dup2(null, 0)
                os.dup2(out, 1)
                os.dup2(out, 2)
                os.execv(sys.executable, argv)
            os.write(wfd, str(grandchild).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    try:
        text = os.read(rfd, 32)
    finally:
        os.close(rfd)
    os.waitpid(pid, 0)
    return int(text) if text.isdigit() else 0
