"""Faults in the repository while PostgreSQL replays from it (docs/fault-table.md).

A real PostgreSQL 15 cluster archives into a local-directory repository: one base
backup, then a numbered row per segment, each segment switched and archived. Each
test restores it with ``pitr restore --latest --start`` and injects its fault at a
fixed point of the replay by real means: the restored server's startup process is
stopped with SIGSTOP as soon as it has restored its first segment, the repository
is changed under it, and SIGCONT lets replay go on. The fault is undone afterwards,
so no test depends on another's leftovers.

Every scenario asserts: no early promotion, and no segment lost (the archive still
holds every segment, and the restore finishes exact to the row once the fault is gone).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import PITR_EXE, run_pitr, write_config
from support.pgcluster import (
    PG_BINDIR,
    PG_USER,
    PgCluster,
    as_user_cmd,
    chown_user,
    free_port,
    make_user_dir,
)

from pitr import codec
from pitr.errors import IntegrityError, ReplayEndedShort
from pitr.pg.names import format_lsn, parse_lsn, parse_segment_name, segno_to_lsn
from pitr.repo import Repo
from pitr.storage.fs import FsStorage

pytestmark = [pytest.mark.integration]

SEGMENTS = 8  # archived after the backup, one row each
HEAVY = 4  # the row whose segment also holds a few MB of table data
MARKED = 5  # the row after which the wall clock is read (zone-less target)
ZONE = "America/New_York"  # the source cluster's TimeZone
RESTORED = re.compile(r'restored log file "([0-9A-F]{24})" from archive')


@dataclass
class Source:
    base: Path
    config: Path
    repo_dir: Path
    stanza: str
    rows: list[int]
    segments: list[str]  # archived after the backup, in order
    restored: list[PgCluster] = field(default_factory=list)
    marked: str = ""  # local wall-clock time (no zone) after row MARKED committed

    def key_path(self, name: str) -> Path:
        return self.repo_dir / Repo(FsStorage(self.repo_dir), self.stanza).wal_key(name)

    def archived(self) -> set[str]:
        repo = Repo(FsStorage(self.repo_dir), self.stanza)
        return {n for o in repo.storage.list(repo.wal_prefix)
                if (n := Repo.wal_name_of(o.key)) is not None}


@pytest.fixture(scope="module")
def source(workdir: Path, pitr_exe: Path) -> Iterator[Source]:
    base = make_user_dir(workdir / f"proven-{uuid.uuid4().hex[:6]}", mode=0o755)
    repo_dir = make_user_dir(base / "repo", mode=0o700)
    cluster = PgCluster(base, "src")
    cfg = write_config(base / "pitr.toml", {
        "stanza": "proven",
        "repository": {"url": f"file://{repo_dir}", "timeout": 10},
        # archive-get goes to the repository itself for every segment, so the fault
        # meets the startup process's own restore_command (not a prefetched copy)
        "archive": {"spool_dir": str(make_user_dir(base / "spool")), "prefetch": 0},
        "postgres": {"bindir": str(PG_BINDIR), "user": PG_USER, "dsn": cluster.dsn,
                     "pgdata": str(cluster.pgdata)},
    })
    cluster.initdb(conf={"archive_mode": "on",
                         "archive_command": f"{pitr_exe} --config {cfg} archive-push %p",
                         # zone-less restore targets are read in this (test_zone_less_...)
                         "timezone": ZONE})
    src = Source(base, cfg, repo_dir, "proven", [], [])
    try:
        cluster.start()
        cluster.sql("create table t (n int primary key)")
        cluster.sql("create table bulk (v text)")
        run_pitr(cfg, "backup")
        for n in range(1, SEGMENTS + 1):
            cluster.sql("insert into t values (%s)", (n,))
            if n == HEAVY:  # a segment whose object is well past 64 KiB
                cluster.sql("insert into bulk select repeat(md5(random()::text), 20) "
                            "from generate_series(1, 4000)")
            if n == MARKED:  # a wall-clock time in the cluster's zone, between two rows
                src.marked = str(cluster.scalar(
                    "select to_char(clock_timestamp(), 'YYYY-MM-DD HH24:MI:SS.US')"))
                time.sleep(0.5)
            src.rows.append(n)
            seg = cluster.switch_wal()
            src.segments.append(seg)
        cluster.wait_until(f"select last_archived_wal >= '{src.segments[-1]}' "
                           "from pg_stat_archiver where last_archived_wal not like '%.%'",
                           timeout=120)
        cluster.stop()  # the archive is complete and stays as it is
        yield src
    finally:
        for c in [*src.restored, cluster]:
            c.stop("immediate")


def startup_pid(pgdata: Path) -> int | None:
    """The restored server's startup process (the one running restore_command)."""
    try:
        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == postmaster and cmd.startswith(b"postgres: startup"):
            return int(entry)
    return None


def restore_with_fault(src: Source, name: str, fault: Callable[[list[str]], None],
                       ) -> tuple[subprocess.CompletedProcess[str], PgCluster, str]:
    """`pitr restore --latest --start`, with ``fault(restored_so_far)`` applied while the
    startup process is stopped right after its first restored segment."""
    target = PgCluster(src.base, name)
    target.port = free_port()
    src.restored.append(target)
    argv = [str(PITR_EXE), "--config", str(src.config), "restore", "--pgdata",
            str(target.pgdata), "--latest", "--start", "--port", str(target.port),
            "--wait-timeout", "120"]
    proc = subprocess.Popen(as_user_cmd(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd="/")
    log = target.pgdata / "pitr-restore.log"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert time.monotonic() < deadline, "replay never restored a segment"
            assert proc.poll() is None, proc.communicate()
            text = log.read_text(errors="replace") if log.exists() else ""
            if RESTORED.search(text) and (pid := startup_pid(target.pgdata)):
                os.kill(pid, signal.SIGSTOP)
                break
            time.sleep(0.005)
        try:
            time.sleep(0.5)  # an archive-get already running finishes meanwhile
            fault(RESTORED.findall(log.read_text(errors="replace")))
        finally:
            os.kill(pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return (subprocess.CompletedProcess(argv, proc.returncode, out, err), target,
            log.read_text(errors="replace"))


def not_promoted(log: str, pgdata: Path) -> bool:
    return ("selected new timeline ID" not in log and "archive recovery complete" not in log
            and (pgdata / "recovery.signal").exists())


def numbers(cluster: PgCluster) -> list[int]:
    return [r[0] for r in cluster.sql("select n from t order by n")]


def bulk_rows(cluster: PgCluster) -> int:
    return int(cluster.scalar("select count(*) from bulk"))


def finish_recovery(target: PgCluster) -> None:
    """Start the copy again (the fault gone): recovery resumes where it stopped."""
    target.start()
    target.wait_until("select not pg_is_in_recovery()", timeout=120)


def test_repository_vanishing_mid_replay_stops_recovery(source: Source) -> None:
    away = source.base / "repo.unmounted"
    before = source.archived()

    def vanish(restored: list[str]) -> None:
        assert len(restored) < SEGMENTS - 1, f"replay was too fast to fault: {restored}"
        source.repo_dir.rename(away)  # an unmounted share, a wrong path

    try:
        proc, target, log = restore_with_fault(source, "vanish", vanish)
    finally:
        if away.exists():
            away.rename(source.repo_dir)
    assert proc.returncode == 10, proc.stderr  # the restored server stopped: failure
    assert "stopped before reaching the recovery target" in proc.stderr
    # archive-get: no repo.json, so nothing is proven absent -> 150 + NotFound
    assert "exit code 156" in log, log[-3000:]
    assert not_promoted(log, target.pgdata), log[-3000:]
    # no segment lost: the archive is whole, and once it is back the same copy
    # finishes recovery with every row
    assert source.archived() == before
    finish_recovery(target)
    assert numbers(target) == source.rows and bulk_rows(target) == 4000


def test_archive_ending_early_is_replay_ended_short(source: Source) -> None:
    """A segment the plan counted on, gone mid-replay, is a real "absent" (the right
    repository, no such object), so PostgreSQL ends recovery there: pitr compares
    where replay ended with the plan and fails with ReplayEndedShort."""
    # the plan's last segment: the source's shutdown may have archived one more
    last = json.loads(run_pitr(source.config, "plan", "--latest", "--json").stdout)["wal"]["last"]
    assert last >= source.segments[-1]
    kept = source.key_path(last).read_bytes()

    def lose_last(restored: list[str]) -> None:
        assert last not in restored, f"replay was too fast to fault: {restored}"
        source.key_path(last).unlink()

    try:
        proc, _target, _log = restore_with_fault(source, "short", lose_last)
    finally:
        source.key_path(last).write_bytes(kept)
    assert proc.returncode == ReplayEndedShort.exit_code, proc.stderr
    promised = format_lsn(segno_to_lsn(parse_segment_name(last)[1]))
    err = " ".join(proc.stderr.split())  # the message may be wrapped
    assert f"before any record of {last}" in err and f"starts at {promised}" in err, err
    ended = re.search(r"recovery ended at ([0-9A-F]+/[0-9A-F]+)", err)
    assert ended is not None and parse_lsn(ended.group(1)) <= parse_lsn(promised)


def _damaged(blob: bytes, how: str) -> bytes:
    if how == "truncated to 64 KiB":
        return blob[:65536]
    i = len(blob) // 2  # one bit, inside the compressed frame
    return blob[:i] + bytes([blob[i] ^ 0x04]) + blob[i + 1:]


@pytest.mark.parametrize("how", ["truncated to 64 KiB", "bit flipped"])
def test_damaged_object_is_refused_by_archive_get_and_repaired_by_push(
        source: Source, how: str) -> None:
    seg = source.segments[HEAVY - 1]
    key = source.key_path(seg)
    good = key.read_bytes()
    assert len(good) > 2 * 65536, "the heavy segment compressed too well to cut"
    raw = codec.decompress_blob(good, seg)
    before = source.archived()
    key.write_bytes(_damaged(good, how))
    try:
        target = PgCluster(source.base, f"damaged-{how.split()[0]}")
        target.port = free_port()
        source.restored.append(target)
        restore = ("restore", "--pgdata", str(target.pgdata), "--latest", "--start",
                   "--port", str(target.port), "--wait-timeout", "120")
        proc = run_pitr(source.config, *restore, check=False)
        # restore reads every planned segment before it writes anything (the tablespace
        # scan, docs/restore.md): the damage stops it there, named, and nothing is
        # started. (archive-get's own refusal, exit 159, is test_archive's
        # test_archive_get_missing_and_corrupt: damage found during a replay.)
        assert proc.returncode == IntegrityError.exit_code, proc.stderr
        assert seg in proc.stderr, proc.stderr
        assert "damaged" in proc.stderr or "does not decompress" in proc.stderr, proc.stderr
        assert not (target.pgdata / "PG_VERSION").exists()

        # PostgreSQL's archiver pushing the same segment again finds the damage, names
        # it and replaces the object (conditional on the ETag it read)
        wal = make_user_dir(source.base / f"pg_wal-{how.split()[0]}")
        (wal / seg).write_bytes(raw)
        chown_user(wal / seg)
        push = run_pitr(source.config, "archive-push", str(wal / seg), check=False)
        assert push.returncode == 0, push.stderr
        assert "the archived object was damaged (" in push.stderr, push.stderr
        assert codec.verify_blob(key.read_bytes(), seg)[1] == raw
    finally:
        try:  # a failed test leaves the archive whole for the others
            codec.verify_blob(key.read_bytes(), seg)
        except IntegrityError:
            key.write_bytes(good)
    # no segment lost: the same restore now runs, exact to the row
    assert source.archived() == before
    run_pitr(source.config, *restore[:4], "--force")
    finish_recovery(target)
    assert numbers(target) == source.rows and bulk_rows(target) == 4000


def test_zone_less_target_is_read_in_the_cluster_timezone(source: Source) -> None:
    """The backup records the cluster's TimeZone; a zone-less --to is read in it (not in
    UTC), plan shows the UTC instant beside the input, and the restore is exact."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from pitr.catalog import load_catalog
    from pitr.targets import format_time

    catalog = load_catalog(Repo(FsStorage(source.repo_dir), source.stanza))
    assert [b.timezone for b in catalog.backups] == [ZONE]
    instant = datetime.fromisoformat(source.marked).replace(tzinfo=ZoneInfo(ZONE))
    utc_text = format_time(instant)
    plan = run_pitr(source.config, "plan", "--to", source.marked)
    assert f"time {utc_text} (UTC; input '{source.marked}', read in the cluster's " \
           f"TimeZone {ZONE})" in plan.stdout, plan.stdout
    target = PgCluster(source.base, "zoned")
    target.port = free_port()
    target.socket_dir = source.base / "src" / "sock"  # the restored copy keeps the source's
    source.restored.append(target)
    run_pitr(source.config, "restore", "--pgdata", str(target.pgdata), "--to", source.marked,
             "--start", "--port", str(target.port), "--wait-timeout", "120")
    assert numbers(target) == list(range(1, MARKED + 1))
