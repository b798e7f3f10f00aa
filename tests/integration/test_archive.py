"""archive-push / archive-get through real PostgreSQL 15 clusters, on the local
repository and on a real S3 server (SeaweedFS). No mocks: PostgreSQL runs pitr as
its archive_command/restore_command as the cluster user."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_pitr
from support.pgcluster import PgCluster, chown_user, make_user_dir, run_as
from support.walbytes import segment_bytes, write_pg_control

from pitr import codec, config
from pitr.errors import RECOVERY_ABORT_OFFSET, IntegrityError, SystemIdMismatch, WalConflict
from pitr.repo import Repo
from pitr.wal.fetch import fetch_to_bytes

pytestmark = pytest.mark.integration

SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")


@pytest.fixture(params=["local", "s3"])
def repo_section(request: pytest.FixtureRequest, local_repo: Path) -> dict[str, Any]:
    if request.param == "s3":
        return dict(request.getfixturevalue("s3_repo"))
    return {"url": f"file://{local_repo}"}


def repo_of(cfg_path: Path) -> Repo:
    cfg = config.load(cfg_path, env={})
    return Repo.open(cfg)


def archiving_cluster(pg_factory: Any, pitr_exe: Path, cfg: Path, name: str = "pg") -> PgCluster:
    cluster: PgCluster = pg_factory(name, conf={
        "archive_mode": "on",
        "archive_command": f"{pitr_exe} --config {cfg} archive-push %p",
        # Keep every segment in pg_wal so archived objects can be compared with it.
        "wal_keep_size": "2GB",
    })
    cluster.start()
    return cluster


def wait_archived(cluster: PgCluster, segment: str, timeout: float = 180) -> None:
    cluster.wait_until(f"select last_archived_wal >= '{segment}' from pg_stat_archiver",
                       timeout=timeout)


def make_segments(cluster: PgCluster, count: int) -> str:
    """Write a little and switch, ``count`` times; returns the last closed segment."""
    cluster.sql("create table if not exists t (i int, note text)")
    last = ""
    for i in range(count):
        cluster.sql("insert into t select g, md5(g::text) from generate_series(1, 200) g")
        last = cluster.switch_wal()
        assert last, f"switch {i} did not close a segment"
    return last


def archived_segments(cluster: PgCluster) -> list[str]:
    status = cluster.pgdata / "pg_wal" / "archive_status"
    return sorted(p.name[:-5] for p in status.glob("*.done") if SEGMENT_RE.match(p.name[:-5]))


def test_cluster_archives_exact_segments_and_protects_the_stanza(
        pg_factory: Any, pitr_exe: Path, pitr_config: Any, repo_section: dict[str, Any],
        testdir: Path) -> None:
    cfg = pitr_config(repository=repo_section)
    pg = archiving_cluster(pg_factory, pitr_exe, cfg)
    last = make_segments(pg, 22)
    wait_archived(pg, last)

    stats = pg.archiver_stats()
    assert stats["failed_count"] == 0, pg.log_tail()
    done = archived_segments(pg)
    assert len(done) >= 20 and stats["archived_count"] >= 20
    repo = repo_of(cfg)
    for name in done:
        original = (pg.pgdata / "pg_wal" / name).read_bytes()
        assert fetch_to_bytes(repo, name, budget=10) == original, name
    ident = repo.read_identity()
    assert ident is not None
    assert ident.system_id == str(pg.scalar("select system_identifier from pg_control_system()"))

    # Same bytes again (a retry, or a standby pushing too): success with a warning.
    seg = pg.pgdata / "pg_wal" / done[3]
    proc = run_pitr(cfg, "archive-push", str(seg))
    assert "already archived" in proc.stderr

    # Different bytes under an archived name: refused, both checksums named, original kept.
    forged_dir = make_user_dir(testdir / "forged", mode=0o755)
    forged = forged_dir / done[3]
    data = bytearray(seg.read_bytes())
    data[20000:20016] = b"not the original"
    forged.write_bytes(bytes(data))
    chown_user(forged)
    proc = run_pitr(cfg, "archive-push", str(forged), check=False)
    assert proc.returncode == WalConflict.exit_code, proc.stderr
    assert re.search(r"the repository's copy \((zstd|sha256):[0-9a-f]+, \d+ bytes\) differs from "
                     r"this file \(zstd:[0-9a-f]{8}, \d+ bytes\), first at byte \d+",
                     proc.stderr), proc.stderr
    assert fetch_to_bytes(repo, done[3], budget=10) == seg.read_bytes()

    # A second cluster (its own initdb, so its own system identifier) on the same stanza.
    other = archiving_cluster(pg_factory, pitr_exe, cfg, name="other")
    other_seg = make_segments(other, 1)
    other.wait_until("select failed_count > 0 from pg_stat_archiver", timeout=60)
    proc = run_pitr(cfg, "archive-push", str(other.pgdata / "pg_wal" / other_seg), check=False)
    assert proc.returncode == SystemIdMismatch.exit_code, proc.stderr
    assert 1 <= proc.returncode <= 125
    assert "system identifier" in proc.stderr
    assert other.archiver_stats()["archived_count"] == 0
    # Segment names of two clusters collide; the first cluster's object must be intact.
    if other_seg in done:
        assert fetch_to_bytes(repo, other_seg, budget=10) == \
            (pg.pgdata / "pg_wal" / other_seg).read_bytes()


@pytest.mark.pg_versions(15, 18)
def test_recovery_replays_wal_through_archive_get(
        pg_factory: Any, pitr_exe: Path, pitr_config: Any, repo_section: dict[str, Any],
        testdir: Path) -> None:
    cfg = pitr_config(repository=repo_section)
    pg = archiving_cluster(pg_factory, pitr_exe, cfg)
    pg.sql("create table rows (i int primary key, v text)")
    base = pg_factory("restored", init=False)
    # No WAL in the base backup: every segment recovery needs must come from pitr.
    run_as([pg.bin("pg_basebackup"), "-h", str(pg.socket_dir), "-p", str(pg.port),
            "-U", "postgres", "-D", str(base.pgdata), "-X", "none", "-c", "fast"])
    for batch in range(5):
        pg.sql(f"insert into rows select g, md5(g::text) from generate_series("
               f"{batch * 1000 + 1}, {(batch + 1) * 1000}) g")
        pg.switch_wal()
    last = pg.switch_wal() or pg.switch_wal()
    wait_archived(pg, last)
    expected = pg.scalar("select count(*) from rows")
    assert expected == 5000

    base.set_port()
    base.configure({"archive_mode": "off",
                    "restore_command": f"{pitr_exe} --config {cfg} archive-get %f %p"})
    (base.pgdata / "recovery.signal").touch()
    chown_user(base.pgdata / "recovery.signal")
    base.start()
    base.wait_until("select not pg_is_in_recovery()", timeout=180)
    assert base.scalar("select count(*) from rows") == expected
    log = base.log_file.read_text()
    assert "restored log file" in log or "archive recovery complete" in log, base.log_tail()
    assert "FATAL" not in log, base.log_tail()


def test_archive_get_missing_and_corrupt(
        pitr_exe: Path, pitr_config: Any, repo_section: dict[str, Any], testdir: Path) -> None:
    cfg = pitr_config(repository=repo_section)
    seg = "000000010000000000000003"
    src = push_synthetic(cfg, testdir, seg)
    datadir = make_user_dir(testdir / "fake-data", mode=0o700)
    make_user_dir(datadir / "pg_wal", mode=0o700)
    make_user_dir(datadir / "global", mode=0o700)
    chown_user(write_pg_control(datadir, SYNTHETIC_SYSID))  # the cluster being "recovered"
    dest = datadir / "pg_wal" / "RECOVERYXLOG"

    run_pitr(cfg, "archive-get", seg, str(dest))
    assert dest.read_bytes() == src.read_bytes()
    run_as(["rm", str(dest)])

    proc = run_pitr(cfg, "archive-get", "0000000100000000000000F0", str(dest), check=False)
    # (answered by the full command, or by the prefetch fast path's fresh "absent" proof)
    assert proc.returncode == 1 and "ERROR" not in proc.stderr, proc.stderr
    assert not dest.exists()
    proc = run_pitr(cfg, "archive-get", "00000007.history", str(dest), check=False)
    assert (proc.returncode, proc.stderr) == (1, "") and not dest.exists()

    # Corrupt the stored object behind pitr's back: flipped bytes inside the zstd frame.
    repo = repo_of(cfg)
    key = repo.wal_key(seg)
    blob = bytearray(fetch_object_raw(repo_section, repo, key))
    _, offset = codec.decode_header(bytes(blob), seg)
    blob[offset + 40] ^= 0xFF
    blob[-10] ^= 0xFF
    overwrite_object(repo_section, repo, key, bytes(blob))
    proc = run_pitr(cfg, "archive-get", seg, str(dest), check=False)
    assert proc.returncode == RECOVERY_ABORT_OFFSET + IntegrityError.exit_code, proc.stderr
    assert proc.returncode > 125 and not dest.exists()
    assert [p.name for p in (datadir / "pg_wal").iterdir()] == []

    # A standby keeps polling instead of stopping: "not found" there.
    (datadir / "standby.signal").touch()
    proc = run_pitr(cfg, "archive-get", seg, str(dest), check=False)
    assert proc.returncode == 1 and not dest.exists()

    # Pushing the same segment again proves the stored object before answering: the
    # damage is found, named, and repaired by a write conditional on its ETag.
    proc = run_pitr(cfg, "archive-push", str(src), check=False)
    assert proc.returncode == 0, proc.stderr
    assert "the archived object was damaged (" in proc.stderr, proc.stderr
    assert codec.verify_blob(fetch_object_raw(repo_section, repo, key), seg)[1] == \
        src.read_bytes()
    (datadir / "standby.signal").unlink()
    run_pitr(cfg, "archive-get", seg, str(dest))
    assert dest.read_bytes() == src.read_bytes()
    proc = run_pitr(cfg, "archive-push", str(src))
    assert "already archived" in proc.stderr


def push_synthetic(cfg: Path, testdir: Path, name: str) -> Path:
    """Archive a made-up (but header-valid, partly random) segment through the CLI."""
    src = make_user_dir(testdir / "src", mode=0o755) / name
    src.write_bytes(synthetic_segment(name))
    chown_user(src)
    run_pitr(cfg, "archive-push", str(src))
    return src


def fetch_object_raw(section: dict[str, Any], repo: Repo, key: str) -> bytes:
    if section["url"].startswith("file://"):
        return (Path(section["url"][7:]) / key).read_bytes()
    bucket, _, prefix = section["url"][5:].partition("/")
    client = _client(section)
    return bytes(client.get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read())


def overwrite_object(section: dict[str, Any], repo: Repo, key: str, data: bytes) -> None:
    if section["url"].startswith("file://"):
        (Path(section["url"][7:]) / key).write_bytes(data)
        return
    bucket, _, prefix = section["url"][5:].partition("/")
    _client(section).put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=data)


def _client(section: dict[str, Any]) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=section["endpoint_url"], region_name=section["region"],
                        aws_access_key_id=section["access_key_id"],
                        aws_secret_access_key=section["secret_access_key"],
                        config=Config(s3={"addressing_style": "path"}))


def test_archive_get_from_a_hung_s3_server_aborts_within_budget(
        pitr_exe: Path, pitr_config: Any, s3_server: Any, testdir: Path) -> None:
    from support.s3server import S3Server

    server: S3Server = s3_server
    budget, request_timeout = 6, 2
    section = {**server.repo_section(server.make_bucket()), "timeout": budget,
               "request_timeout": request_timeout}
    cfg = pitr_config(repository=section)
    name = "000000010000000000000003"
    src = push_synthetic(cfg, testdir, name)
    datadir = make_user_dir(testdir / "data", mode=0o700)
    make_user_dir(datadir / "pg_wal", mode=0o700)
    dest = datadir / "pg_wal" / "RECOVERYXLOG"

    server.pause()
    try:
        t0 = time.monotonic()
        proc = run_pitr(cfg, "archive-get", name, str(dest), check=False, timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        server.resume()
    assert proc.returncode > 125, (proc.returncode, proc.stderr)
    assert "gave up after" in proc.stderr
    # Bounded, not hung: one attempt may be in flight when the budget ends (the driver
    # bounds it by about 2 x request_timeout), plus process start-up, which a loaded CI
    # machine stretches (15.4 s seen against a 15 s bound). A hang would run into the
    # 120 s timeout; timings themselves belong in bench/, not in tests.
    assert elapsed < 60, elapsed
    assert not dest.exists() and list((datadir / "pg_wal").iterdir()) == []
    # And once the server is back the same command works.
    run_pitr(cfg, "archive-get", name, str(dest))
    assert dest.read_bytes() == src.read_bytes()


SYNTHETIC_SYSID = 7000000000000000001


def synthetic_segment(name: str, seg_size: int = 16 << 20) -> bytes:
    # Random bytes at the start so corruption tests hit real compressed data.
    head = segment_bytes(name, seg_size=seg_size, sysid=SYNTHETIC_SYSID)[:40]
    body = os.urandom(256 * 1024) + bytes(seg_size - len(head) - 256 * 1024)
    return head + body

