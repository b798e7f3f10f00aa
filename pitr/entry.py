"""Console-script entry point with the per-segment fast paths.

PostgreSQL runs archive_command and restore_command once per 16 MiB segment,
and a Python process that imports typer/boto3/zstandard spends 100-250 ms
before any I/O. Two cases are answered here with the standard library only
(plus pitr.config and pitr.wal.spool, which are stdlib-only too):

* ``[--config X] archive-push PATH``: exit 0 when the agent's receipt proves
  this very file is stored (see :mod:`pitr.wal.spool` for why the identity
  check is sound). A running agent that has not reached the segment yet gets
  up to ``archive.fast_path_wait`` seconds.
* ``[--config X] archive-get NAME DEST``: record NAME as the restore position,
  start the detached prefetch worker if none runs, and if NAME was prefetched
  (verified, decompressed, renamed into the spool only when complete) rename
  it to DEST.

Anything else, and every doubt or error on these paths, falls through to the
full CLI, which behaves exactly as it would without the fast paths.
"""

from __future__ import annotations

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
    from pitr.config import Config, load
    from pitr.security import check_command_user
    from pitr.wal.spool import WAL_NAME_RE, Spool

    start = time.perf_counter()
    name = os.path.basename(path)
    if not WAL_NAME_RE.match(name):
        return None
    cfg: Config = load(config)
    # root over the cluster user's files: no shortcut, the full CLI refuses it
    check_command_user("archive-push", cfg.postgres.pgdata)
    spool = Spool(cfg.archive.spool_dir, cfg.stanza)
    st = os.stat(path)
    url = cfg.repository.url
    proved = spool.receipt_proves(name, st, url)
    if not proved and cfg.archive.fast_path_wait > 0 and spool.agent_running():
        proved = _wait_for_agent(spool, name, st, url, start + cfg.archive.fast_path_wait)
    if not proved:
        return None
    try:  # noqa: SIM105 - contextlib is one import more on the hot path
        spool.note_fast_path(name, (time.perf_counter() - start) * 1000)
    except OSError:
        pass  # the proof stands; only the log line is lost
    return 0


def _wait_for_agent(spool: object, name: str, st: os.stat_result, url: str,
                    deadline: float) -> bool:
    from pitr.wal.spool import Spool

    assert isinstance(spool, Spool)
    pause, last_alive = 0.002, time.perf_counter()
    while time.perf_counter() < deadline:
        time.sleep(pause)
        pause = min(pause * 1.5, 0.02)
        if spool.receipt_proves(name, st, url):
            return True
        if spool.has_error(name):
            return False  # the agent failed on it: push synchronously, report properly
        if time.perf_counter() - last_alive > 0.2:
            if not spool.agent_running():
                return False
            last_alive = time.perf_counter()
    return False


def archive_get_fast(config: str | None, name: str, dest: str) -> int | None:
    from pitr.config import Config, load
    from pitr.security import check_command_user
    from pitr.wal.spool import SEGMENT_RE, Spool

    if not SEGMENT_RE.match(name):
        return None  # history/partial files: rare, never prefetched
    cfg: Config = load(config)
    check_command_user("archive-get", cfg.postgres.pgdata)
    if cfg.archive.prefetch <= 0:
        return None
    spool = Spool(cfg.archive.spool_dir, cfg.stanza).ensure()
    # Publish the position before looking for a worker: a worker that is about to
    # exit re-reads it after dropping its lock, so no request is ever stranded.
    spool.set_want(name)
    if not spool.prefetcher_running():
        spawn_prefetcher(config, spool.base / "prefetch-worker.log")
    src = spool.prefetched(name)
    if not src.exists() and spool.inflight(name).exists():
        deadline = time.perf_counter() + max(cfg.archive.fast_path_wait, 0)
        while (time.perf_counter() < deadline and not src.exists()
               and spool.inflight(name).exists()):
            time.sleep(0.005)
    if not src.exists():
        spool.note_prefetch("miss", name)
        return None
    move_into_place(str(src), dest)
    spool.note_prefetch("hit", name)
    return 0


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


def spawn_prefetcher(config: str | None, log_path: object) -> None:
    """Start ``pitr prefetch-worker`` detached (double fork, own session).

    It must outlive this short archive-get process and must not hold
    PostgreSQL's stdout/stderr, or the startup process would wait for it.
    """
    argv = [sys.executable, "-m", "pitr"]
    if config:
        argv += ["--config", os.path.abspath(config)]
    argv.append("prefetch-worker")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.setsid()
            if os.fork() == 0:
                null = os.open(os.devnull, os.O_RDWR)
                out = os.open(str(log_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                os.dup2(null, 0)
                os.dup2(out, 1)
                os.dup2(out, 2)
                os.execv(sys.executable, argv)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
