"""Spool receipts, locks, the archive-push/archive-get fast paths and prefetch planning.

The fast-path tests run the real entry point in a fresh interpreter, because
what matters is what that process imports and how it exits.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pitr import fastpath
from pitr.entry import fast_path, split_args
from pitr.pg.control import system_id_or_none
from pitr.pg.names import parse_segment_name, segment_name
from pitr.wal.agent import BACKOFF_MAX, backoff_delay
from pitr.wal.prefetch import is_stale, plan_window
from pitr.wal.spool import FileIdentity, Receipt, Spool, lock_held, try_lock

sys.path.insert(0, str(Path(__file__).parents[1]))
from support.pgcluster import PG_USER, as_user_cmd
from support.walbytes import SYSID, segment_bytes, write_pg_control

SEG = "000000010000000000000003"
HEAVY = ("boto3", "botocore", "zstandard", "typer", "click", "pydantic", "psycopg", "watchdog")


def receipt_for(path: Path, url: str) -> Receipt:
    return Receipt(name=path.name, repository=url, identity=FileIdentity.of(path.stat()),
                   checksum="zstd:0a1b2c3d", stored_at=time.time())


@pytest.fixture
def tmp_user_path() -> Iterator[Path]:
    """A directory the fast path can run in as a non-root user (root never takes it)."""
    d = Path(tempfile.mkdtemp(prefix="pitr-spool-test-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def give_to_user(root: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", PG_USER, str(root)], check=True)


def write_prefetched(spool: Spool, name: str, data: bytes) -> None:
    """What the worker leaves: the checksum record, then the file renamed into place."""
    spool.checksum(name).write_text(hashlib.sha256(data).hexdigest() + "\n")
    tmp = spool.prefetch_dir / f".{name}.part"
    tmp.write_bytes(data)
    os.replace(tmp, spool.prefetched(name))


@pytest.fixture
def setup(tmp_user_path: Path) -> tuple[Spool, Path, Path]:
    """The data directory is tmp_user_path itself (archive-get runs there)."""
    tmp_path = tmp_user_path
    write_pg_control(tmp_path)  # restore_command runs in the data directory: tmp_path
    restore = Spool.for_restore(tmp_path / "spool", "main", f"file://{tmp_path}/repo", tmp_path)
    assert restore is not None
    spool = restore.ensure()
    wal = tmp_path / "pg_wal"
    wal.mkdir()
    seg = wal / SEG
    seg.write_bytes(os.urandom(4096))
    cfg = tmp_path / "pitr.toml"
    cfg.write_text(f'stanza = "main"\n[repository]\nurl = "file://{tmp_path}/repo"\n'
                   f'[archive]\nspool_dir = "{tmp_path}/spool"\nfast_path_wait = 0\n')
    give_to_user(tmp_path)  # before any receipt: chown changes ctime, part of the identity
    return spool, seg, cfg


def test_receipt_round_trip_and_proof(setup: tuple[Spool, Path, Path]) -> None:
    spool, seg, _ = setup
    url = "file:///r"
    spool.write_receipt(receipt_for(seg, url))
    assert spool.read_receipt(SEG) == receipt_for(seg, url).__class__.from_json(
        spool.ok_path(SEG).read_text())
    assert spool.receipt_proves(SEG, seg.stat(), url)
    assert not spool.receipt_proves(SEG, seg.stat(), "file:///other-repo")


def test_rewritten_file_is_not_proved(setup: tuple[Spool, Path, Path]) -> None:
    spool, seg, _ = setup
    spool.write_receipt(receipt_for(seg, "u"))
    before = seg.stat()
    time.sleep(0.01)
    with open(seg, "r+b") as fh:  # same inode, same size, other bytes
        fh.write(b"x")
    os.utime(seg, ns=(before.st_atime_ns, before.st_mtime_ns))  # even with mtime forged
    assert not spool.receipt_proves(SEG, seg.stat(), "u")  # ctime gives it away


def test_recycled_file_under_the_name_is_not_proved(setup: tuple[Spool, Path, Path]) -> None:
    spool, seg, _ = setup
    spool.write_receipt(receipt_for(seg, "u"))
    other = seg.with_name("000000010000000000000001")
    other.write_bytes(os.urandom(4096))
    os.replace(other, seg)  # what recycling (or a restored copy) would look like
    assert not spool.receipt_proves(SEG, seg.stat(), "u")


def test_torn_receipt_proves_nothing(setup: tuple[Spool, Path, Path]) -> None:
    spool, seg, _ = setup
    spool.ok_path(SEG).write_text('{"format": 1, "name": ')
    assert spool.read_receipt(SEG) is None
    assert not spool.receipt_proves(SEG, seg.stat(), "u")


def test_flock_shows_a_live_holder_only(tmp_path: Path) -> None:
    lock = tmp_path / "agent.lock"
    assert not lock_held(lock)
    fd = try_lock(lock)
    assert fd is not None
    assert lock_held(lock)
    assert try_lock(lock) is None
    os.close(fd)
    assert not lock_held(lock)  # a stale file is not a running agent


def test_split_args_takes_only_the_exact_fast_forms() -> None:
    assert split_args(["archive-push", "pg_wal/x"]) == (None, ["archive-push", "pg_wal/x"])
    assert split_args(["--config", "c", "archive-push", "p"]) == ("c", ["archive-push", "p"])
    assert split_args(["--config=c", "archive-get", "a", "b"]) == ("c", ["archive-get", "a", "b"])
    assert split_args(["--debug", "archive-push", "p"]) is None
    assert split_args(["archive-push", "--help"]) is None
    assert split_args(["backup"]) is None


def test_fast_path_declines_without_proof(setup: tuple[Spool, Path, Path],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    spool, seg, cfg = setup
    monkeypatch.chdir(seg.parent.parent)
    monkeypatch.delenv("PITR_CONFIG", raising=False)
    assert fast_path(["--config", str(cfg), "archive-push", f"pg_wal/{SEG}"]) is None
    spool.write_receipt(receipt_for(seg, "file:///somewhere-else"))
    assert fast_path(["--config", str(cfg), "archive-push", f"pg_wal/{SEG}"]) is None


def run_entry(cwd: Path, *args: str, env: dict[str, str] | None = None,
              ) -> subprocess.CompletedProcess[str]:
    """The real entry point in a fresh interpreter, as the cluster user; prints heavy imports."""
    give_to_user(cwd / "spool")
    code = ("import sys\nfrom pitr.entry import main\nrc = main(sys.argv[1:])\n"
            f"print(','.join(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
            "sys.exit(rc)\n")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", **(env or {})}
    argv = [sys.executable, "-c", code, *args]
    if os.geteuid() == 0:  # runuser would drop the environment's PITR_* variables
        argv = ["env", *(f"{k}={v}" for k, v in env.items() if k.startswith("PITR_")), *argv]
    return subprocess.run(as_user_cmd(argv), cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_fast_path_answers_from_a_receipt_without_heavy_imports(
        setup: tuple[Spool, Path, Path]) -> None:
    spool, seg, cfg = setup
    spool.write_receipt(receipt_for(seg, f"file://{cfg.parent}/repo"))
    proc = run_entry(cfg.parent, "--config", str(cfg), "archive-push", f"pg_wal/{SEG}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"fast path imported {proc.stdout.strip()}"
    assert f"{SEG} fast-path" in spool.fastpath_log.read_text()


def test_archive_get_fast_path_renames_a_prefetched_segment(
        setup: tuple[Spool, Path, Path]) -> None:
    spool, seg, cfg = setup
    data = segment_bytes(SEG, seg_size=1 << 20, fill=os.urandom(64))
    write_prefetched(spool, SEG, data)
    # Pretend a worker runs, so the fast path does not start a real one.
    fd = try_lock(spool.prefetch_lock)
    try:
        proc = run_entry(cfg.parent, "--config", str(cfg), "archive-get", SEG,
                         "pg_wal/RECOVERYXLOG")
    finally:
        assert fd is not None
        os.close(fd)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"fast path imported {proc.stdout.strip()}"
    assert (seg.parent / "RECOVERYXLOG").read_bytes() == data
    assert not spool.prefetched(SEG).exists() and not spool.checksum(SEG).exists()
    assert spool.read_want() == SEG
    assert f"hit {SEG}" in spool.prefetch_log.read_text()


def test_archive_get_never_hands_over_a_prefetched_file_that_changed(
        setup: tuple[Spool, Path, Path]) -> None:
    spool, seg, cfg = setup
    # this very segment of this cluster (its header proves it), then one byte of its body
    # flipped in the spool: only the checksum can tell
    write_prefetched(spool, SEG, segment_bytes(SEG, seg_size=1 << 20, fill=os.urandom(64)))
    with open(spool.prefetched(SEG), "r+b") as fh:
        fh.seek(1000)
        first = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([first[0] ^ 1]))
    fd = try_lock(spool.prefetch_lock)
    try:
        proc = run_entry(cfg.parent, "--config", str(cfg), "archive-get", SEG,
                         "pg_wal/RECOVERYXLOG")
    finally:
        assert fd is not None
        os.close(fd)
    # The full CLI took over and asked the (empty) repository itself.
    assert proc.returncode != 0 and not (seg.parent / "RECOVERYXLOG").exists()
    assert not spool.prefetched(SEG).exists()
    assert f"damaged {SEG}" in spool.prefetch_log.read_text()


def test_restores_are_keyed_by_repository_data_directory_and_system_id(
        tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_pg_control(a, 1)
    write_pg_control(b, 1)
    key = fastpath.restore_key
    keys = {key("s3://x/p", str(a), 1), key("s3://y/p", str(a), 1),
            key("s3://x/p", str(b), 1), key("s3://x/p", str(a), 2)}
    assert len(keys) == 4
    assert system_id_or_none(str(a)) == 1
    assert system_id_or_none(str(tmp_path)) is None  # no pg_control: no key, no prefetch
    assert Spool.for_restore(tmp_path, "s", "u", tmp_path) is None
    assert fastpath.data_dir_of(str(a / "pg_wal" / "RECOVERYXLOG"), "") == str(a)


names = st.builds(lambda tli, segno: segment_name(tli, segno),
                  st.integers(1, 0xFFFF), st.integers(0, 2**32))


@given(names, st.integers(1, 64))
def test_window_is_want_and_next_k_on_its_timeline_and_never_stale(want: str, k: int) -> None:
    window = plan_window(want, k)
    tli, segno = parse_segment_name(want)
    assert [parse_segment_name(n) for n in window] == [(tli, segno + i) for i in range(k + 1)]
    assert not any(is_stale(n, want, k) for n in window)
    assert is_stale(want, plan_window(want, 1)[1], k)  # older than the request


@given(st.integers(1, 100))
def test_backoff_grows_and_is_capped(attempts: int) -> None:
    d = backoff_delay(attempts)
    assert 0 < d <= BACKOFF_MAX
    assert d >= min(BACKOFF_MAX, 2 ** (attempts - 1)) / 2


# -- pitr.fastpath: the stdlib-light twins must agree with the full implementations ---
def fast_proves(spool: Spool, seg: Path, url: str) -> bool:
    return fastpath.proven(str(spool.base), fastpath.proof_dir_name(url), SEG, seg.stat())


def test_python_and_spool_check_the_one_proof_file(setup: tuple[Spool, Path, Path]) -> None:
    spool, seg, _ = setup
    for url in ("s3://bucket/prefix", "file:///var/lib/pitr/repo", 's3://bucket/pré"fix'):
        spool.write_receipt(receipt_for(seg, url))
        proof = Path(fastpath.proof_path(str(spool.base), fastpath.proof_dir_name(url), SEG,
                                         seg.stat()))
        assert proof.parent == spool.proof_dir(url) and proof.is_file()
        assert fast_proves(spool, seg, url) and spool.receipt_proves(SEG, seg.stat(), url)
        assert not fast_proves(spool, seg, url + "x")
        proof.unlink()  # the receipt alone proves nothing, to either of them
        assert spool.read_receipt(SEG) is not None
        assert not fast_proves(spool, seg, url)
        assert not spool.receipt_proves(SEG, seg.stat(), url)


def test_fast_proof_rejects_another_version_of_the_file(setup: tuple[Spool, Path, Path]) -> None:
    spool, seg, _ = setup
    spool.write_receipt(receipt_for(seg, "u"))
    other = seg.with_name("000000010000000000000001")
    other.write_bytes(seg.read_bytes())  # even the very same bytes: a new file, no proof
    os.replace(other, seg)
    assert not fast_proves(spool, seg, "u")


def test_fast_config_cache_key_holds_pitrs_version(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    key = fastpath._cache_key(str(cfg), cfg.stat())
    from pitr import __version__

    assert f"\n{__version__}\n" in key
    monkeypatch.setattr(fastpath, "__version__", __version__ + ".1")  # an upgrade
    assert fastpath._cache_key(str(cfg), cfg.stat()) != key


wal_like = st.one_of(
    st.text(alphabet="0123456789ABCDEFabcdefgx.historypartilbck", max_size=42),
    names, names.map(lambda n: n + ".partial"), names.map(lambda n: n[:8] + ".history"),
    names.map(lambda n: n + ".00000028.backup"))


# PostgreSQL's names, written as a regular expression: the spec the string checks meet.
WAL_NAME = re.compile(r"([0-9A-F]{24}(\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)")


@given(wal_like)
def test_fast_name_check_matches_the_regex(name: str) -> None:
    from pitr.pg.names import WalKind, classify

    assert fastpath.is_wal_name(name) == bool(WAL_NAME.fullmatch(name))
    assert fastpath.is_segment_name(name) == bool(re.fullmatch(r"[0-9A-F]{24}", name))
    try:
        kind: WalKind | None = classify(name)
    except ValueError:
        kind = None
    assert (kind is not None) == fastpath.is_wal_name(name)


def test_config_cache_follows_the_file_and_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # pwd decides; check it is this user's home
    home = fastpath._cache_path(str(tmp_path / "c.toml"))
    if home is None:
        pytest.skip("this user has no home directory for the cache")
    cfg = tmp_path / "c.toml"
    cfg.write_text('stanza = "one"\n[archive]\nspool_dir = "/s"\nprefetch = 3\n')
    for k in [k for k in os.environ if k.startswith("PITR_")]:
        monkeypatch.delenv(k)
    first = fastpath.load_config(str(cfg))
    assert (first.stanza, first.spool_dir, first.prefetch) == ("one", "/s", 3)
    cache = Path(home)
    assert cache.exists() and cache.stat().st_mode & 0o077 == 0
    assert fastpath.load_config(str(cfg)).dump() == first.dump()  # served from the cache
    time.sleep(0.01)
    cfg.write_text('stanza = "two"\n[archive]\nspool_dir = "/s"\nprefetch = 3\n')
    assert fastpath.load_config(str(cfg)).stanza == "two"
    monkeypatch.setenv("PITR_ARCHIVE_PREFETCH", "5")
    assert fastpath.load_config(str(cfg)).prefetch == 5
    monkeypatch.delenv("PITR_ARCHIVE_PREFETCH")
    assert fastpath.load_config(str(cfg)).prefetch == 3
    # A cache others could have written is ignored, never trusted.
    cache.write_text(cache.read_text().replace("stanza=two", "stanza=evil"))
    cache.chmod(0o666)
    assert fastpath.load_config(str(cfg)).stanza == "two"


@pytest.mark.parametrize("other_sysid", [False, True])
def test_archive_get_fast_path_never_hands_over_an_unproven_segment(
        setup: tuple[Spool, Path, Path], other_sysid: bool) -> None:
    """Another cluster's segment, or another segment under this name, is not handed to
    PostgreSQL: the fast path drops it and the full path decides."""
    spool, seg, cfg = setup
    name = "000000010000000000000004" if not other_sysid else SEG
    spool.prefetched(SEG).write_bytes(
        segment_bytes(name, seg_size=1 << 20, sysid=SYSID + other_sysid))
    fd = try_lock(spool.prefetch_lock)
    try:
        proc = run_entry(cfg.parent, "--config", str(cfg), "archive-get", SEG,
                         "pg_wal/RECOVERYXLOG")
    finally:
        assert fd is not None
        os.close(fd)
    assert proc.returncode > 125, proc.stderr  # the full path: no repository here
    assert f"unproven {SEG}" in spool.prefetch_log.read_text()
    assert not (seg.parent / "RECOVERYXLOG").exists()
    assert not spool.prefetched(SEG).exists()


@pytest.mark.parametrize("repository", ["vanished", "this cluster's", "another cluster's"])
def test_an_absent_marker_is_proven_by_the_full_path(
        setup: tuple[Spool, Path, Path], repository: str) -> None:
    """The worker's "absent" only sends archive-get to the full path, which answers 1
    for the right repository and above 125 for a vanished or foreign one."""
    from pitr.repo import Repo
    from pitr.storage.fs import FsStorage

    spool, seg, cfg = setup
    if repository != "vanished":
        sysid = SYSID if repository == "this cluster's" else SYSID + 1
        Repo(FsStorage(cfg.parent / "repo"), "main").ensure_identity(sysid, 15, 1 << 20)
        give_to_user(cfg.parent / "repo")
    fd = try_lock(spool.prefetch_lock)  # a worker "runs"
    marker = spool.missing(SEG)
    marker.write_text("absent")
    done = threading.Event()

    def worker_keeps_answering() -> None:
        # like the worker, which asks again every MISSING_FRESH seconds: the marker stays
        # fresh however long the interpreter takes to start on a loaded host
        while not done.wait(0.2):
            os.utime(marker)

    keeper = threading.Thread(target=worker_keeps_answering, daemon=True)
    keeper.start()
    try:
        proc = run_entry(cfg.parent, "--config", str(cfg), "archive-get", SEG,
                         "pg_wal/RECOVERYXLOG", env={"PITR_ARCHIVE_FAST_PATH_WAIT": "5"})
    finally:
        done.set()
        keeper.join()
        assert fd is not None
        os.close(fd)
    assert f"absent {SEG}" in spool.prefetch_log.read_text()
    assert not (seg.parent / "RECOVERYXLOG").exists()
    if repository == "this cluster's":
        assert proc.returncode == 1, proc.stderr
    else:
        assert proc.returncode > 125, proc.stderr
        assert ("repo.json" if repository == "vanished" else str(SYSID + 1)) in proc.stderr


def test_archive_get_waits_for_the_worker_and_ignores_a_stale_marker(
        setup: tuple[Spool, Path, Path]) -> None:
    spool, seg, cfg = setup
    fd = try_lock(spool.prefetch_lock)
    marker = spool.missing(SEG)
    marker.write_text("absent")
    old = time.time() - 60
    os.utime(marker, (old, old))  # last minute's answer is no answer now
    give_to_user(spool.base)
    data = segment_bytes(SEG, seg_size=1 << 20)

    def worker_delivers() -> None:  # like the worker: on the request, a verified file
        request = spool.prefetch_dir / (SEG + ".request")
        deadline = time.monotonic() + 30
        while not request.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        write_prefetched(spool, SEG, data)  # the directory is the user's: it may rename

    import threading

    t = threading.Thread(target=worker_delivers)
    t.start()
    try:
        proc = run_entry(cfg.parent, "--config", str(cfg), "archive-get", SEG,
                         "pg_wal/RECOVERYXLOG", env={"PITR_ARCHIVE_FAST_PATH_WAIT": "10"})
    finally:
        t.join()
        assert fd is not None
        os.close(fd)
    assert proc.returncode == 0, proc.stderr
    assert (seg.parent / "RECOVERYXLOG").read_bytes() == data
    assert not marker.exists()
    assert spool.prefetch_dir.joinpath(SEG + ".request").exists()  # it asked the worker


def test_agent_status_is_what_the_monitor_reads(tmp_path: Path) -> None:
    from pitr import config as config_mod
    from pitr.wal.agent import Agent
    from pitr.wal.status import AgentStatus

    status_dir = tmp_path / "data" / "pg_wal" / "archive_status"
    status_dir.mkdir(parents=True)
    for name in ("000000010000000000000007", "000000010000000000000008"):
        (status_dir / f"{name}.ready").touch()
    cfg = config_mod.load(None, env={}, overrides={
        "postgres.pgdata": str(tmp_path / "data"), "archive.spool_dir": str(tmp_path / "spool")})
    agent = Agent(cfg)
    agent.scan()
    agent.state.counters.failed = 2
    agent.state.counters.consecutive_failures = 1
    agent.state.counters.last_stored = "000000010000000000000006"
    agent.state.counters.last_stored_at = time.time()
    doc = agent.status("running").to_json()
    parsed = AgentStatus.from_json(doc)
    assert AgentStatus.from_json(parsed.to_json()) == parsed
    assert parsed.backlog == 2
    assert parsed.oldest_ready_age is not None and parsed.oldest_ready_age >= 0
    assert (parsed.total_failures, parsed.consecutive_failures) == (2, 1)
    assert parsed.last_stored == "000000010000000000000006"
    assert doc["backlog"]["oldest_ready"] == "000000010000000000000007"


def test_cleanup_drops_receipts_and_proofs_once_postgresql_is_done(tmp_path: Path) -> None:
    from pitr import config as config_mod
    from pitr.wal.agent import RECEIPT_KEEP, Agent

    wal = tmp_path / "data" / "pg_wal"
    (wal / "archive_status").mkdir(parents=True)
    cfg = config_mod.load(None, env={}, overrides={
        "postgres.pgdata": str(tmp_path / "data"), "archive.spool_dir": str(tmp_path / "spool")})
    agent = Agent(cfg)
    agent.spool.ensure()
    names = ["000000010000000000000007", "000000010000000000000008"]
    for name in names:
        (wal / name).write_bytes(b"x" * 100)
        agent.spool.write_receipt(receipt_for(wal / name, cfg.repository.url))
    proofs = agent.spool.proof_dir(cfg.repository.url)
    assert len(list(proofs.iterdir())) == 2
    old = time.time() - RECEIPT_KEEP - 5
    for p in [*agent.spool.archive_dir.glob("*.ok"), *proofs.iterdir()]:
        os.utime(p, (old, old))
    agent.cleanup({names[1]}, time.time())  # 08 is still .ready: its proof must stay
    assert [p.name for p in agent.spool.archive_dir.glob("*.ok")] == [f"{names[1]}.ok"]
    assert [p.name.split("_")[0] for p in proofs.iterdir()] == [names[1]]


def test_a_receipt_written_before_version_2_objects_is_still_read(tmp_path: Path) -> None:
    seg = tmp_path / "000000010000000000000001"
    seg.write_bytes(b"x")
    old = json.loads(receipt_for(seg, "file:///r").to_json())
    old["sha256"] = old.pop("checksum").replace("zstd:0a1b2c3d", "ab" * 32)
    back = Receipt.from_json(json.dumps(old))
    assert back.checksum == "sha256:" + "ab" * 32 and back.name == seg.name
    assert Receipt.from_json(back.to_json()) == back
