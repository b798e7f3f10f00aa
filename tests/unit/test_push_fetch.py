"""push_wal / fetch_wal / call_with_budget and the archive-get exit-code contract,
against the real local-directory driver (S3 runs in tests/integration)."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import zstandard
from support import walbytes

from pitr import codec
from pitr.cli import main as cli_main
from pitr.errors import (
    RECOVERY_ABORT_OFFSET,
    AlreadyExists,
    IntegrityError,
    SystemIdMismatch,
    TransientStorageError,
    UsageError,
    WalConflict,
    WalNotFound,
)
from pitr.repo import Repo
from pitr.retry import call_with_budget
from pitr.storage.base import put_bytes
from pitr.storage.fs import FsStorage
from pitr.wal.commands import archive_get_exit_code, is_standby
from pitr.wal.fetch import fetch_to_bytes, fetch_wal
from pitr.wal.push import push_wal

SEG = 1 << 20  # 1 MiB segments (initdb --wal-segsize=1) keep these tests fast
SYSID = walbytes.SYSID


def segment_bytes(name: str, *, sysid: int = SYSID, fill: bytes = b"\x00") -> bytes:
    return walbytes.segment_bytes(name, seg_size=SEG, sysid=sysid, fill=fill)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(FsStorage(tmp_path / "repo"), "t")


def write_wal(dirpath: Path, name: str, data: bytes) -> Path:
    dirpath.mkdir(parents=True, exist_ok=True)
    p = dirpath / name
    p.write_bytes(data)
    return p


# -- push -------------------------------------------------------------------------
def test_push_then_fetch_round_trip(repo: Repo, tmp_path: Path) -> None:
    name = "000000010000000000000003"
    data = segment_bytes(name, fill=b"pitr")
    res = push_wal(repo, write_wal(tmp_path / "wal", name, data), level=3, budget=5)
    assert (res.status, res.raw_bytes) == ("stored", SEG)
    assert res.stored_bytes < SEG // 10
    ident = repo.read_identity()
    assert ident is not None and ident.system_id == str(SYSID) and ident.pg_version == 15
    dest = tmp_path / "pg_wal" / "RECOVERYXLOG"
    dest.parent.mkdir()
    got = fetch_wal(repo, name, dest, budget=5, sha256=True)
    assert dest.read_bytes() == data and got.sha256 == hashlib.sha256(data).hexdigest()
    assert res.checksum.startswith("zstd:")  # a version 2 object: no sha256 computed
    assert fetch_wal(repo, name, dest, budget=5).sha256 is None
    assert fetch_to_bytes(repo, name, budget=5) == data
    assert [p.name for p in dest.parent.iterdir()] == ["RECOVERYXLOG"]  # no temp left


def test_duplicate_push_same_bytes_is_success(repo: Repo, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    name = "000000010000000000000004"
    p = write_wal(tmp_path / "wal", name, segment_bytes(name))
    first = push_wal(repo, p, level=3, budget=5)
    again = push_wal(repo, p, level=9, budget=5)  # another level: same raw bytes still match
    assert again.status == "already-archived" and again.checksum == first.checksum
    assert "already archived" in caplog.text


def test_a_version_1_object_is_compared_by_content(repo: Repo, tmp_path: Path) -> None:
    """An archive written before version 2 objects: a re-push of the same bytes is
    "already archived", other bytes a conflict, whatever the header version."""
    name = "000000010000000000000007"
    data = segment_bytes(name, fill=b"v1")
    old = zstandard.ZstdCompressor(level=3, write_checksum=False,
                                   write_content_size=True).compress(data)
    v1 = codec.encode_header(codec.Header(SEG, sha256=hashlib.sha256(data).hexdigest(),
                                          extra={"name": name, "system_id": str(SYSID)},
                                          version=1)) + old
    push_wal(repo, write_wal(tmp_path / "seed", "000000010000000000000001",
                             segment_bytes("000000010000000000000001")), level=3, budget=5)
    put_bytes(repo.storage, repo.wal_key(name), v1)
    same = push_wal(repo, write_wal(tmp_path / "a", name, data), level=3, budget=5)
    assert same.status == "already-archived"
    with pytest.raises(WalConflict) as err:
        push_wal(repo, write_wal(tmp_path / "b", name, segment_bytes(name, fill=b"v2")),
                 level=3, budget=5)
    assert "sha256:" + hashlib.sha256(data).hexdigest() in err.value.message
    assert repo.storage.root.joinpath(repo.wal_key(name)).read_bytes() == v1  # type: ignore[attr-defined]


def _damage(blob: bytes, how: str) -> bytes:
    header_len = codec.decode_header(blob, "x")[1]
    if how == "truncated to 64 KiB":
        return blob[:65536]
    if how == "bit flipped in the frame":
        i = header_len + (len(blob) - header_len) // 2
        return blob[:i] + bytes([blob[i] ^ 0x10]) + blob[i + 1:]
    if how == "bit flipped in the header":
        i = blob.index(b'"frame_checksum":"') + 20  # inside the recorded checksum
        return blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1:]
    if how == "bytes appended":
        return blob + b"\x00" * 100
    assert how == "empty"
    return b""


DAMAGES = ["truncated to 64 KiB", "bit flipped in the frame", "bit flipped in the header",
           "bytes appended", "empty"]


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_stored_object_is_never_already_archived(
        repo: Repo, tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str) -> None:
    """PostgreSQL recycles a segment once archive-push says 0: a damaged copy must be
    detected and replaced, not taken for "already archived"."""
    name = "000000010000000000000006"
    p = write_wal(tmp_path / "wal", name, segment_bytes(name, fill=os.urandom(SEG)))
    push_wal(repo, p, level=3, budget=5)
    path = repo.storage.root / repo.wal_key(name)  # type: ignore[attr-defined]
    good = path.read_bytes()
    assert len(good) > 65536
    path.write_bytes(_damage(good, how))
    with pytest.raises(IntegrityError):
        codec.verify_blob(path.read_bytes(), name)
    again = push_wal(repo, p, level=3, budget=5)
    assert again.status == "stored"
    assert codec.verify_blob(path.read_bytes(), name)[1] == p.read_bytes()
    if how == "empty":
        assert "empty object" in caplog.text
    else:
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert errors and "damaged" in errors[0].getMessage()
        assert str(len(_damage(good, how))) in errors[0].getMessage()
    assert push_wal(repo, p, level=3, budget=5).status == "already-archived"


def test_pushers_racing_over_a_damaged_object_both_succeed(repo: Repo, tmp_path: Path) -> None:
    """Each replaces only the object it read (conditional on its ETag): the loser reads
    the winner's copy, proves it and answers "already archived"."""
    from concurrent.futures import ThreadPoolExecutor

    name = "000000010000000000000007"
    p = write_wal(tmp_path / "wal", name, segment_bytes(name, fill=os.urandom(SEG)))
    push_wal(repo, p, level=3, budget=5)
    path = repo.storage.root / repo.wal_key(name)  # type: ignore[attr-defined]
    for how in ("empty", "truncated to 64 KiB"):
        path.write_bytes(_damage(path.read_bytes(), how) if how != "empty" else b"")
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _i: push_wal(repo, p, level=3, budget=10).status,
                                    range(4)))
        assert sorted(set(results)) in (["already-archived", "stored"], ["stored"])
        assert codec.verify_blob(path.read_bytes(), name)[1] == p.read_bytes()


def test_a_conflict_is_judged_on_a_proven_object(repo: Repo, tmp_path: Path) -> None:
    """A whole, valid object with other content is a conflict and stays; the stored
    header's name must be this file's too."""
    name, other = "000000010000000000000008", "000000010000000000000009"
    p = write_wal(tmp_path / "wal", name, segment_bytes(name))
    q = write_wal(tmp_path / "wal", other, segment_bytes(other))
    push_wal(repo, q, level=3, budget=5)
    foreign = (repo.storage.root / repo.wal_key(other)).read_bytes()  # type: ignore[attr-defined]
    path = repo.storage.root / repo.wal_key(name)  # type: ignore[attr-defined]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(foreign)
    with pytest.raises(WalConflict):
        push_wal(repo, p, level=3, budget=5)
    assert path.read_bytes() == foreign


def test_conflicting_push_fails_and_keeps_original(repo: Repo, tmp_path: Path) -> None:
    name = "000000010000000000000005"
    original = segment_bytes(name, fill=b"a")
    first = push_wal(repo, write_wal(tmp_path / "a", name, original), level=3, budget=5)
    stored_before = (repo.storage.root / repo.wal_key(name)).read_bytes()  # type: ignore[attr-defined]
    other = write_wal(tmp_path / "b", name, segment_bytes(name, fill=b"b"))
    with pytest.raises(WalConflict) as err:
        push_wal(repo, other, level=3, budget=5)
    assert first.checksum in err.value.message
    assert codec.decompress_blob(stored_before, name) == original
    assert (repo.storage.root / repo.wal_key(name)).read_bytes() == stored_before  # type: ignore[attr-defined]
    assert err.value.exit_code <= 125


def test_history_backup_and_partial_files_are_protected_too(repo: Repo, tmp_path: Path) -> None:
    hist = write_wal(tmp_path / "a", "00000002.history", b"1\t0/3000000\tno recovery target\n")
    assert push_wal(repo, hist, level=3, budget=5).status == "stored"
    assert push_wal(repo, hist, level=3, budget=5).status == "already-archived"
    other = write_wal(tmp_path / "b", "00000002.history", b"1\t0/4000000\tother\n")
    with pytest.raises(WalConflict):
        push_wal(repo, other, level=3, budget=5)
    backup = write_wal(tmp_path / "a", "000000010000000000000002.00000028.backup",
                       b"START WAL LOCATION: 0/2000028\n")
    assert push_wal(repo, backup, level=3, budget=5).status == "stored"
    partial_name = "000000010000000000000006.partial"
    partial = write_wal(tmp_path / "a", partial_name,
                        segment_bytes("000000010000000000000006"))
    assert push_wal(repo, partial, level=3, budget=5).status == "stored"
    assert fetch_to_bytes(repo, partial_name, budget=5) == partial.read_bytes()


def test_a_history_file_carries_its_write_time(repo: Repo, tmp_path: Path) -> None:
    hist = write_wal(tmp_path, "00000002.history", b"1\t0/3000000\tno recovery target\n")
    os.utime(hist, (1_700_000_000.5, 1_700_000_000.5))
    push_wal(repo, hist, level=3, budget=5)
    blob = repo.storage.open(repo.wal_key("00000002.history")).read()
    written = codec.decode_header(blob, "00000002.history")[0].extra["written_at"]
    assert datetime.fromisoformat(written) == datetime.fromtimestamp(1_700_000_000.5, UTC)


def test_second_cluster_is_refused(repo: Repo, tmp_path: Path) -> None:
    a = "000000010000000000000001"
    push_wal(repo, write_wal(tmp_path / "a", a, segment_bytes(a)), level=3, budget=5)
    b = "000000010000000000000002"
    with pytest.raises(SystemIdMismatch) as err:
        push_wal(repo, write_wal(tmp_path / "b", b, segment_bytes(b, sysid=SYSID + 1)),
                 level=3, budget=5)
    assert str(SYSID) in err.value.message and str(SYSID + 1) in err.value.message
    assert not (repo.storage.root / repo.wal_key(b)).exists()  # type: ignore[attr-defined]


@pytest.mark.parametrize("mangle", ["truncate", "wrong-segment", "not-wal"])
def test_bad_files_are_refused(repo: Repo, tmp_path: Path, mangle: str) -> None:
    name = "000000010000000000000007"
    data = segment_bytes(name)
    if mangle == "truncate":
        data = data[: SEG // 2]
    elif mangle == "wrong-segment":
        data = segment_bytes("000000010000000000000008")
    else:
        data = b"\x00" * SEG
    with pytest.raises(IntegrityError):
        push_wal(repo, write_wal(tmp_path / "x", name, data), level=3, budget=5)


def test_bad_names_and_missing_files_are_usage_errors(repo: Repo, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        push_wal(repo, write_wal(tmp_path, "postgresql.conf", b"x"), level=3, budget=5)
    with pytest.raises(UsageError):
        push_wal(repo, tmp_path / "000000010000000000000009", level=3, budget=5)
    with pytest.raises(UsageError):
        fetch_wal(repo, "../etc/passwd", tmp_path / "x", budget=5)


# -- fetch ------------------------------------------------------------------------
def test_fetch_missing_is_wal_not_found(repo: Repo, tmp_path: Path) -> None:
    with pytest.raises(WalNotFound):
        fetch_wal(repo, "0000000100000000000000AA", tmp_path / "dest", budget=5)
    assert not (tmp_path / "dest").exists()


def test_fetch_corrupt_object_leaves_no_dest(repo: Repo, tmp_path: Path) -> None:
    name = "00000001000000000000000A"
    push_wal(repo, write_wal(tmp_path / "a", name, segment_bytes(name, fill=b"xyz")),
             level=3, budget=5)
    path = repo.storage.root / repo.wal_key(name)  # type: ignore[attr-defined]
    header, offset = codec.decode_header(path.read_bytes(), name)
    # Same header, another valid frame (with its own checksum): only the header's copy
    # of the frame checksum can notice.
    forged = codec.encode_header(header) + zstandard.ZstdCompressor(
        write_checksum=True).compress(segment_bytes(name, fill=b"xyZ"))
    path.write_bytes(forged)
    dest_dir = tmp_path / "pg_wal"
    dest_dir.mkdir()
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        fetch_wal(repo, name, dest_dir / "RECOVERYXLOG", budget=5)
    assert list(dest_dir.iterdir()) == []
    path.write_bytes(path.read_bytes()[: offset + 100])  # truncated body
    with pytest.raises(IntegrityError):
        fetch_wal(repo, name, dest_dir / "RECOVERYXLOG", budget=5)
    assert list(dest_dir.iterdir()) == []


# -- retry ------------------------------------------------------------------------
class FlakyStorage(FsStorage):
    """The local driver, failing the first ``failures`` calls as a network would."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root)
        self.failures = failures
        self.calls = 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise TransientStorageError("simulated timeout")

    def put(self, key: str, src: BinaryIO, *, if_absent: bool = False,
            storage_class: str = "") -> int:
        self._maybe_fail()
        return super().put(key, src, if_absent=if_absent, storage_class=storage_class)

    def open(self, key: str) -> BinaryIO:
        self._maybe_fail()
        return super().open(key)


def test_transient_errors_are_retried(tmp_path: Path) -> None:
    storage = FlakyStorage(tmp_path / "repo", failures=3)
    repo = Repo(storage, "t")
    name = "00000001000000000000000B"
    res = push_wal(repo, write_wal(tmp_path / "a", name, segment_bytes(name)), level=1, budget=30)
    assert res.status == "stored" and storage.calls > 3


def test_budget_is_bounded_and_named() -> None:
    calls = 0

    def always_down() -> None:
        nonlocal calls
        calls += 1
        raise TransientStorageError("connection refused")

    t0 = time.monotonic()
    with pytest.raises(TransientStorageError) as err:
        call_with_budget(always_down, budget=1.5, what="fetching X")
    elapsed = time.monotonic() - t0
    assert elapsed < 1.5 + 0.5 and calls >= 2  # margin: sleeps overshoot on a loaded machine
    assert "fetching X" in err.value.message and "gave up after" in err.value.message


def test_non_transient_errors_are_not_retried() -> None:
    calls = 0

    def taken() -> None:
        nonlocal calls
        calls += 1
        raise AlreadyExists("k")

    with pytest.raises(AlreadyExists):
        call_with_budget(taken, budget=5, what="x")
    assert calls == 1


def test_zero_budget_means_one_attempt() -> None:
    seen: list[int] = []

    def once() -> int:
        seen.append(1)
        return 42

    assert call_with_budget(once, budget=0, what="x") == 42 and seen == [1]


# -- archive-get exit codes -------------------------------------------------------
def test_exit_code_mapping() -> None:
    assert archive_get_exit_code(WalNotFound("x"), standby=False) == 1
    assert archive_get_exit_code(IntegrityError("x"), standby=False) == RECOVERY_ABORT_OFFSET + 9
    assert archive_get_exit_code(TransientStorageError("x"), standby=False) > 125
    assert archive_get_exit_code(TransientStorageError("x"), standby=True) == 1


def test_is_standby_uses_the_data_dir_of_dest(tmp_path: Path) -> None:
    (tmp_path / "pg_wal").mkdir()
    dest = tmp_path / "pg_wal" / "RECOVERYXLOG"
    assert not is_standby(dest, "")
    (tmp_path / "standby.signal").touch()
    assert is_standby(dest, "")
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert not is_standby(other / "x", str(other))
    assert is_standby(other / "x", str(tmp_path))


def _config(tmp_path: Path, **repo: Any) -> Path:
    cfg = tmp_path / "pitr.toml"
    url = repo.pop("url", f"file://{tmp_path / 'repo'}")
    cfg.write_text(f'stanza = "t"\n[repository]\nurl = "{url}"\ntimeout = 2\n')
    return cfg


def _get(cfg: Path, name: str, dest: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli_main(["--config", str(cfg), "archive-get", name, str(dest)])
    return code, capsys.readouterr().err


def make_datadir(path: Path, sysid: int = SYSID) -> Path:
    """A data directory as archive-get sees it: pg_wal and the pg_control identity."""
    (path / "pg_wal").mkdir(parents=True)
    walbytes.write_pg_control(path, sysid)
    return path


def test_cli_archive_get_contract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path)
    pgdata = make_datadir(tmp_path / "data")
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    name = "00000001000000000000000C"
    seg = write_wal(tmp_path / "src", name, segment_bytes(name))
    assert cli_main(["--config", str(cfg), "archive-push", str(seg)]) == 0
    assert _get(cfg, name, dest, capsys)[0] == 0 and dest.read_bytes() == seg.read_bytes()
    dest.unlink()

    code, err = _get(cfg, "00000001000000000000000D", dest, capsys)
    assert code == 1 and "not in the repository" in err and "ERROR" not in err
    assert not dest.exists()
    code, err = _get(cfg, "00000005.history", dest, capsys)
    assert code == 1 and err == ""  # PostgreSQL probes history files all the time

    key = tmp_path / "repo" / Repo(FsStorage(tmp_path), "t").wal_key(name)
    key.write_bytes(key.read_bytes()[:-50])
    code, err = _get(cfg, name, dest, capsys)
    assert code == RECOVERY_ABORT_OFFSET + IntegrityError.exit_code and not dest.exists()
    assert "ERROR" in err
    (pgdata / "standby.signal").touch()
    code, err = _get(cfg, name, dest, capsys)
    assert code == 1 and "standby" in err and not dest.exists()


ABORT = RECOVERY_ABORT_OFFSET


@pytest.fixture
def archived(tmp_path: Path) -> tuple[Path, Path, str]:
    """A repository holding one segment of cluster SYSID, and its config."""
    cfg = _config(tmp_path)
    name = "00000001000000000000000C"
    seg = write_wal(tmp_path / "src", name, segment_bytes(name))
    assert cli_main(["--config", str(cfg), "archive-push", str(seg)]) == 0
    return cfg, tmp_path / "repo", name


def test_archive_get_absent_only_for_the_right_repository(
        archived: tuple[Path, Path, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg, repo_dir, _name = archived
    absent = "00000001000000000000000D"
    ours = make_datadir(tmp_path / "ours")
    assert _get(cfg, absent, ours / "pg_wal" / "RECOVERYXLOG", capsys)[0] == 1
    assert _get(cfg, "00000002.history", ours / "pg_wal" / "RECOVERYHISTORY", capsys)[0] == 1

    other = make_datadir(tmp_path / "other", sysid=SYSID + 1)
    code, err = _get(cfg, absent, other / "pg_wal" / "RECOVERYXLOG", capsys)
    assert code == ABORT + SystemIdMismatch.exit_code
    assert str(SYSID) in err and str(SYSID + 1) in err

    nowhere = make_datadir(tmp_path / "nowhere")  # no pg_control: cannot prove anything
    (nowhere / "global" / "pg_control").unlink()
    code, err = _get(cfg, absent, nowhere / "pg_wal" / "RECOVERYXLOG", capsys)
    assert code == ABORT + 13 and "cannot be proven" in err

    (repo_dir / "t" / "repo.json").rename(tmp_path / "repo.json.away")
    code, err = _get(cfg, absent, ours / "pg_wal" / "RECOVERYXLOG", capsys)
    assert code == ABORT + 6 and "repo.json" in err
    (tmp_path / "repo.json.away").rename(repo_dir / "t" / "repo.json")

    repo_dir.rename(tmp_path / "repo.unmounted")  # the repository vanished
    code, err = _get(cfg, absent, ours / "pg_wal" / "RECOVERYXLOG", capsys)
    assert code > 125 and "repo.json" in err
    assert not (ours / "pg_wal" / "RECOVERYXLOG").exists()


def test_archive_get_proves_every_file_it_writes(
        archived: tuple[Path, Path, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg, repo_dir, name = archived
    ours = make_datadir(tmp_path / "ours")
    dest = ours / "pg_wal" / "RECOVERYXLOG"
    assert _get(cfg, name, dest, capsys)[0] == 0
    dest.unlink()
    # another cluster's segment: its page header names that cluster
    other = make_datadir(tmp_path / "other", sysid=SYSID + 1)
    code, err = _get(cfg, name, other / "pg_wal" / "RECOVERYXLOG", capsys)
    assert code == ABORT + SystemIdMismatch.exit_code
    assert not (other / "pg_wal" / "RECOVERYXLOG").exists()
    # the object of one segment stored under another's name
    key = repo_dir / Repo(FsStorage(repo_dir), "t").wal_key(name)
    moved = "00000001000000000000000E"
    target = repo_dir / Repo(FsStorage(repo_dir), "t").wal_key(moved)
    target.write_bytes(key.read_bytes())
    code, err = _get(cfg, moved, dest, capsys)
    assert code == ABORT + IntegrityError.exit_code and "holds" in err and not dest.exists()
    # the same bytes with the name left out of the header: the page address tells
    raw = segment_bytes(name)
    blob, _digest = codec.compress_blob(raw, 3)
    target.write_bytes(blob)
    code, err = _get(cfg, moved, dest, capsys)
    assert code == ABORT + IntegrityError.exit_code and "first page" in err
    assert not dest.exists()


def test_cli_archive_get_config_error_aborts(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _get(tmp_path / "missing.toml", "00000001000000000000000C",
                     tmp_path / "x", capsys)
    assert code == RECOVERY_ABORT_OFFSET + 3 and "does not exist" in err
    bad = _config(tmp_path, url="ftp://nowhere")
    code, _ = _get(bad, "00000001000000000000000C", tmp_path / "x", capsys)
    assert code == RECOVERY_ABORT_OFFSET + 3


def test_cli_archive_get_bad_command_line_aborts(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path)
    assert cli_main(["--config", str(cfg), "archive-get", "00000001000000000000000C"]) == \
        RECOVERY_ABORT_OFFSET + UsageError.exit_code
    assert cli_main(["--config", str(cfg), "archive-get", "a", "b", "c"]) > 125
    assert "archive-get" in capsys.readouterr().err
    assert cli_main(["--config", str(cfg), "archive-get", "--help"]) == 0


def test_cli_archive_push_never_exceeds_125(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path)
    codes = [
        cli_main(["--config", str(tmp_path / "nope.toml"), "archive-push", "x"]),
        cli_main(["--config", str(cfg), "archive-push",
                  str(tmp_path / "000000010000000000000001")]),
        cli_main(["--config", str(cfg), "archive-push"]),
    ]
    capsys.readouterr()
    assert all(1 <= c <= 125 for c in codes), codes


def test_unreadable_dest_dir_is_reported(tmp_path: Path, repo: Repo) -> None:
    name = "00000001000000000000000E"
    push_wal(repo, write_wal(tmp_path / "a", name, segment_bytes(name)), level=1, budget=5)
    with pytest.raises(Exception) as err:
        fetch_wal(repo, name, tmp_path / "no" / "such" / "dir", budget=5)
    assert getattr(err.value, "exit_code", 0) > 0
    assert not os.path.exists(tmp_path / "no")


def test_command_functions_need_no_cli_framework(tmp_path: Path) -> None:
    """archive-push/get as plain functions: what the entry point can call per segment."""
    import subprocess
    import sys

    cfg = _config(tmp_path)
    name = "00000001000000000000000F"
    seg = write_wal(tmp_path / "src", name, segment_bytes(name))
    dest = make_datadir(tmp_path / "data") / "pg_wal" / "X"
    script = (
        "import sys\n"
        "from pitr.wal.commands import archive_get_main, archive_push_main\n"
        f"assert archive_push_main({str(cfg)!r}, {str(seg)!r}) == 0\n"
        f"assert archive_get_main({str(cfg)!r}, {name!r}, {str(dest)!r}) == 0\n"
        f"assert archive_get_main({str(cfg)!r}, 'AAAAAAAA0000000000000000', {str(dest)!r}) == 1\n"
        "heavy = [m for m in ('typer', 'pydantic', 'boto3', 'psycopg') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == seg.read_bytes()
