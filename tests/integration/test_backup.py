"""`pitr backup` and `pitr list` against real PostgreSQL 15 clusters that archive their
WAL through `pitr archive-push`, on the local repository and on a real S3 server
(SeaweedFS). No mocks: pg_basebackup, the archiver and the storage are all real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard
from conftest import PITR_EXE, run_pitr, s3_repo_for, write_config
from support.pgcluster import PG_USER, PgCluster, as_user_cmd, make_user_dir

from pitr import config, stream
from pitr.catalog import Catalog, load_catalog
from pitr.errors import BackupError, Interrupted, LockedError, SystemIdMismatch
from pitr.pg.names import parse_lsn
from pitr.repo import Repo

pytestmark = pytest.mark.integration

STANZA = "test"


@dataclass
class Env:
    kind: str  # "local" | "s3"
    base: Path
    cluster: PgCluster
    cfg: Path
    repo_section: dict[str, Any]
    s3: Any = None  # the S3Server for "s3"

    @property
    def repo(self) -> Repo:
        cfg = config.load(self.cfg, env={})
        return Repo.open(cfg)

    def catalog(self) -> Catalog:
        return load_catalog(self.repo)


def _make_env(kind: str, workdir: Path, pitr_exe: Path, request: pytest.FixtureRequest,
              bindir: Path) -> Env:
    base = make_user_dir(workdir / f"backup-{kind}-{uuid.uuid4().hex[:6]}", mode=0o755)
    server = None
    if kind == "s3":
        server = request.getfixturevalue("s3_server")
        # Small parts so even this test's backup goes up as a multipart upload.
        section = {**s3_repo_for(server), "part_size_mib": 5}
    else:
        section = {"url": f"file://{make_user_dir(base / 'repo', mode=0o700)}", "timeout": 20}
    cluster = PgCluster(base, "pg", bindir=bindir)
    cfg = write_config(base / "pitr.toml", {
        "stanza": STANZA,
        "repository": section,
        "archive": {"spool_dir": str(base / "spool")},
        "postgres": {"bindir": str(bindir), "user": PG_USER, "dsn": cluster.dsn},
        # Retention has its own tests; here every backup must stay.
        # a short lease: the kill -9 test's rerun waits for it (docs/fault-table.md)
        "backup": {"wal_timeout": 120, "expire_after": False, "lock_lease": 3},
    })
    cluster.initdb(conf={"archive_mode": "on",
                         "archive_command": f"{pitr_exe} --config {cfg} archive-push %p"})
    cluster.start()
    # Every WAL segment costs one archive-push process: keep the S3 side small.
    cluster.pgbench_init(5 if kind == "local" else 2)
    # Incompressible rows, so the stored object outgrows one S3 part. Random bytes from
    # the core gen_random_uuid(): the PostgreSQL 18 wheel is built without pgcrypto.
    cluster.sql("create table noise as select (select string_agg(uuid_send(gen_random_uuid()),"
                " ''::bytea) from generate_series(1, 63) where g > 0) b "
                "from generate_series(1, 12000) g")
    return Env(kind, base, cluster, cfg, section, server)


@pytest.fixture(scope="module")
def envs(workdir: Path, pitr_exe: Path, request: pytest.FixtureRequest,
         pg_bindir: Path) -> Iterator[Callable[[str], Env]]:
    """One archiving cluster per repository kind for the whole module, made on first use."""
    made: dict[str, Env] = {}

    def get(kind: str) -> Env:
        if kind not in made:
            made[kind] = _make_env(kind, workdir, pitr_exe, request, pg_bindir)
        return made[kind]

    yield get
    for e in made.values():
        e.cluster.stop("immediate")


@pytest.fixture(params=["local", "s3"])
def env(request: pytest.FixtureRequest, envs: Callable[[str], Env]) -> Env:
    return envs(request.param)


@pytest.fixture
def local_env(envs: Callable[[str], Env]) -> Env:
    return envs("local")


def backup_json(env: Env, *args: str) -> dict[str, Any]:
    proc = run_pitr(env.cfg, "backup", "--json", *args)
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def list_json(env: Env) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(run_pitr(env.cfg, "list", "--json").stdout)
    return doc


def tar_members(env: Env, key: str, workdir: Path, *, sha256: str, raw_sha256: str) -> list[str]:
    """Decompress the stored base to a file (checking the stored sha256 and the frame's
    content checksum) and `tar -t` it."""
    out = workdir / f"base-{uuid.uuid4().hex[:6]}.tar"
    stored, raw = stream.Hash(), stream.Hash()
    with env.repo.storage.open(key) as src, open(out, "wb") as dst, \
            stream.Pipeline(src, [stored, stream.ZstdDecompress(), raw]) as reader:
        while chunk := reader.read(1 << 20):
            dst.write(chunk)
    assert stored.sha256 == sha256
    if raw_sha256:  # server compression: pitr hashes the tar it decompresses anyway
        assert raw.sha256 == raw_sha256
    else:  # pitr's compression: the frame's content checksum (verified while reading
        with env.repo.storage.open(key) as src:  # above) covers decompression
            assert zstandard.get_frame_parameters(src.read(18)).has_checksum
    proc = subprocess.run(["tar", "-tf", str(out)], capture_output=True, text=True, check=True)
    out.unlink()
    return proc.stdout.split()


def start_backup(env: Env, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        as_user_cmd([str(PITR_EXE), "--config", str(env.cfg),
                     "backup", *args]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}, cwd="/")


def holder_pid(env: Env, timeout: float = 60) -> int:
    """The pid of the pitr process holding the backup lock (from the lock object)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with env.repo.storage.open(env.repo.lock_key("backup")) as fh:
                return int(json.loads(fh.read())["pid"])
        except Exception:
            time.sleep(0.1)
    raise AssertionError("the backup never took its lock")


def wait_streaming(env: Env, proc: subprocess.Popen[str], timeout: float = 90) -> None:
    """Until part of the base object is on its way into the repository."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"backup ended early: {proc.communicate()}"
        if env.kind == "local":
            root = Path(env.repo_section["url"][len("file://"):]) / STANZA / "backups"
            if any(p.stat().st_size > 1 << 20 for p in root.glob("*/.pitr-tmp-*")):
                return
        elif multipart_uploads(env):
            return
        time.sleep(0.1)
    raise AssertionError("the backup never started streaming")


def multipart_uploads(env: Env) -> list[Any]:
    """Open multipart uploads of backups (a WAL segment of 16 MiB goes up in parts too)."""
    bucket = env.repo_section["url"][len("s3://"):].split("/", 1)[0]
    uploads: list[Any] = env.s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return [u for u in uploads if f"/{STANZA}/backups/" in f"/{u['Key']}"]


def leftovers(env: Env) -> list[str]:
    """Partial writes under backups/: temp files (local) or open multipart uploads (S3)."""
    if env.kind == "local":
        root = Path(env.repo_section["url"][len("file://"):]) / STANZA / "backups"
        return [str(p) for p in root.glob("*/.pitr-tmp-*")]
    return [u["Key"] for u in multipart_uploads(env)]


def no_walsender(env: Env) -> None:
    env.cluster.wait_until("select count(*) = 0 from pg_stat_activity "
                           "where backend_type = 'walsender'", timeout=60)


# -- tests ---------------------------------------------------------------------------

@pytest.mark.pg_versions(15, 18)
def test_backup_manifest_tar_and_list(env: Env, workdir: Path) -> None:
    before = time.time()
    summary = backup_json(env)
    cat = env.catalog()
    [rec] = [b for b in cat.backups if b.id == summary["id"]]
    sysid, tli = env.cluster.sql(
        "select (select system_identifier::text from pg_control_system()), "
        "(select timeline_id from pg_control_checkpoint())")[0]

    assert rec.system_id == sysid == cat.system_id
    assert rec.timeline == tli
    assert rec.stop_lsn >= rec.start_lsn
    assert rec.start_time.timestamp() >= int(before) - 1
    assert rec.stop_time > rec.start_time
    assert rec.stop_time.timestamp() <= time.time() + 1
    major = env.cluster.scalar("select current_setting('server_version_num')::int / 10000")
    assert rec.pg_version == major and rec.label == "manual" and not rec.pinned
    db_size = env.cluster.scalar("select sum(pg_database_size(oid))::bigint from pg_database")
    assert abs(rec.db_size - db_size) < db_size * 0.1
    assert rec.raw_bytes > rec.db_size * 0.8 and 0 < rec.stored_bytes < rec.raw_bytes
    assert summary["start_lsn"] == f"{rec.start_lsn >> 32:X}/{rec.start_lsn & 0xFFFFFFFF:X}"
    assert summary["stored_bytes"] == rec.stored_bytes and summary["seconds"] > 0
    # PostgreSQL 17+: a copy of the backup_manifest beside the tar, for the next
    # incremental backup (docs/incremental-backups.md "Where the manifest is kept")
    names = {"base.tar.zst", "backup_manifest.zst"} if major >= 17 else {"base.tar.zst"}
    assert {o.name for o in rec.objects} == names
    assert rec.stored_bytes == sum(o.stored_bytes for o in rec.objects)
    obj = next(o for o in rec.objects if o.name == "base.tar.zst")
    assert obj.stored_bytes == env.repo.storage.stat(obj.key).size

    members = tar_members(env, obj.key, workdir, sha256=obj.sha256, raw_sha256=obj.raw_sha256)
    assert "backup_label" in members and "global/pg_control" in members
    assert "backup_manifest" in members  # pg_basebackup's own, for pg_verifybackup
    assert not any(m.startswith("pg_wal/0") for m in members)  # WAL comes from the archive

    doc = list_json(env)
    assert doc["schema_version"] == 1
    assert summary["id"] in [b["id"] for b in doc["backups"]]
    [tl] = doc["wal"]
    assert tl["timeline"] == tli and len(tl["ranges"]) == 1 and tl["gaps"] == []
    assert doc["recovery_window"]["earliest"]["backup_id"] == cat.backups[0].id
    assert parse_lsn(doc["recovery_window"]["latest"]["lsn"]) > rec.stop_lsn
    assert doc["incomplete_backups"] == []
    text = run_pitr(env.cfg, "list").stdout
    assert summary["id"] in text and "recovery window:" in text


@pytest.mark.pg_versions(15, 18)
def test_kill_9_midway_leaves_no_backup_and_the_next_one_succeeds(env: Env) -> None:
    completed = {b.id for b in env.catalog().backups}
    proc = start_backup(env, "--max-rate", "4M")
    try:
        pid = holder_pid(env)
        wait_streaming(env, proc)
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    # pg_basebackup dies with its parent, so the server ends the backup too.
    no_walsender(env)
    assert {b.id for b in env.catalog().backups} == completed
    assert leftovers(env)

    # expire_after would expire this module's earlier same-day backups (tests/integration/
    # test_expire_restore.py covers it); this test counts them.
    nxt = run_pitr(env.cfg, "backup", "--label", "scheduled", "--pin",
                   env={"PITR_BACKUP_EXPIRE_AFTER": "false"})
    assert "taking over the stale lock" in nxt.stderr
    cat = env.catalog()
    assert len(cat.backups) == len(completed) + 1
    newest = cat.backups[-1]
    assert newest.label == "scheduled" and newest.pinned
    assert cat.incomplete_backups == ()
    assert leftovers(env) == []


def test_concurrent_backup_refused_and_sigterm_cleans_up(local_env: Env) -> None:
    env = local_env
    completed = {b.id for b in env.catalog().backups}
    first = start_backup(env, "--max-rate", "2M")
    try:
        pid = holder_pid(env)
        wait_streaming(env, first)
        second = run_pitr(env.cfg, "backup", check=False)
        assert second.returncode == LockedError.exit_code, second.stderr
        assert "another backup holds the lock" in second.stderr
        assert f"pid {pid}" in second.stderr
        os.kill(pid, signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == Interrupted.exit_code, err
    assert "SIGTERM" in err
    no_walsender(env)
    assert leftovers(env) == []
    assert [o.key for o in env.repo.storage.list(f"{STANZA}/locks/")] == []
    cat = env.catalog()
    assert {b.id for b in cat.backups} == completed and cat.incomplete_backups == ()


def test_server_side_compression(local_env: Env, workdir: Path) -> None:
    env = local_env
    summary = json.loads(run_pitr(env.cfg, "backup", "--json",
                                  env={"PITR_BACKUP_SERVER_COMPRESSION": "true"}).stdout)
    [rec] = [b for b in env.catalog().backups if b.id == summary["id"]]
    assert rec.extra["compression"]["where"] == "server"
    assert rec.raw_bytes > rec.stored_bytes > 0
    [obj] = rec.objects
    members = tar_members(env, obj.key, workdir, sha256=obj.sha256, raw_sha256=obj.raw_sha256)
    assert "backup_label" in members


def test_refusals_archiving_off_foreign_stanza(
        pg_factory: Any, pitr_config: Any, testdir: Path, local_env: Env) -> None:
    # (clusters with tablespaces are backed up: tests/integration/test_tablespaces.py)
    pg: PgCluster = pg_factory("plain")
    pg.start()
    cfg = pitr_config(postgres={"dsn": pg.dsn})
    proc = run_pitr(cfg, "backup", check=False)
    assert proc.returncode == BackupError.exit_code
    assert "archiving is off" in proc.stderr

    # A stanza that holds another cluster's WAL is refused before anything is written.
    foreign = write_config(testdir / "foreign.toml", {
        "stanza": STANZA, "repository": local_env.repo_section,
        "postgres": {"bindir": str(pg.bindir), "dsn": pg.dsn}})
    pg.configure({"archive_mode": "on", "archive_command": "/bin/true"})
    pg.stop()
    pg.start()
    proc = run_pitr(foreign, "backup", check=False)
    assert proc.returncode == SystemIdMismatch.exit_code, proc.stderr
    assert "belongs to the cluster" in proc.stderr

    # pg_basebackup itself failing (no replication line in pg_hba.conf): its own words,
    # a hint, and nothing left in the repository.
    hba = pg.pgdata / "pg_hba.conf"
    hba.write_text("".join(line for line in hba.read_text().splitlines(keepends=True)
                           if "replication" not in line))
    pg.sql("select pg_reload_conf()")
    proc = run_pitr(cfg, "backup", check=False)
    assert proc.returncode == BackupError.exit_code, proc.stderr
    assert "pg_basebackup failed" in proc.stderr and "pg_hba.conf" in proc.stderr
    assert "HINT:" in proc.stderr
    repo = testdir / "repo"  # the local_repo fixture behind pitr_config
    assert not [p for p in (repo / STANZA / "backups").rglob("*") if p.is_file()]
