"""The restore executor's file handling, on real files, tar and zstd (no PostgreSQL needed):
streamed extraction with checksum verification, unsafe tar members, the target
directory rules (refuse / move aside / confirm production) and the recovery settings."""

from __future__ import annotations

import io
import tarfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pitr import stream
from pitr.config import Config, PostgresConfig
from pitr.errors import IntegrityError, TargetDirError
from pitr.manifest import BackupObject
from pitr.planner import plan
from pitr.restore import (
    Owner,
    RestoreOptions,
    RestoreResult,
    check_destination,
    extract_backup,
    prepare_directory,
    recovery_conf,
)
from pitr.storage.fs import FsStorage
from pitr.targets import Target

NOW = datetime(2025, 2, 15, 12, 0, tzinfo=UTC)


def make_tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def reg(name: str, data: bytes = b"x", mode: int = 0o600) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def directory(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o700
    return info, b""


def store(tmp: Path, tar_bytes: bytes) -> tuple[FsStorage, BackupObject]:
    storage = FsStorage(tmp / "repo")
    raw, raw_hash = stream.Count(), stream.Hash()
    stored, stored_hash = stream.Count(), stream.Hash()
    with stream.Pipeline(io.BytesIO(tar_bytes), [raw, raw_hash, stream.ReadAhead(),
                                                 stream.ZstdCompress(3), stored,
                                                 stored_hash]) as pipe:
        storage.put("s/backups/b1/base.tar.zst", pipe)
    obj = BackupObject("base.tar.zst", "s/backups/b1/base.tar.zst", raw.bytes,
                       stored.bytes, stored_hash.sha256, raw_hash.sha256)
    return storage, obj


def owner() -> Owner:
    return Owner.for_config(Config(postgres=PostgresConfig(user="pgtest")))


def test_extracts_verifies_and_drops_pid_files(tmp_path: Path) -> None:
    tar = make_tar([directory("base"), reg("base/1", b"a" * 100_000), reg("PG_VERSION", b"15\n"),
                    reg("postmaster.pid", b"123\n"), reg("postmaster.opts", b"x"),
                    directory("pg_wal")])
    storage, obj = store(tmp_path, tar)
    dest = tmp_path / "data"
    dest.mkdir()
    result = RestoreResult(dest)
    extract_backup(storage, (obj,), dest, owner(), result)
    assert (dest / "base" / "1").read_bytes() == b"a" * 100_000
    assert (dest / "PG_VERSION").read_text() == "15\n"
    assert not (dest / "postmaster.pid").exists() and not (dest / "postmaster.opts").exists()
    assert result.downloaded_bytes == obj.stored_bytes and result.extracted_bytes == len(tar)
    assert result.files == 6
    assert (dest / "base" / "1").stat().st_uid == owner().uid


def test_checksum_mismatch_fails_loudly(tmp_path: Path) -> None:
    storage, obj = store(tmp_path, make_tar([reg("PG_VERSION", b"15\n")]))
    bad = replace(obj, sha256="0" * 64)
    with pytest.raises(IntegrityError, match=r"checksum mismatch.*0000000000") as exc:
        extract_backup(storage, (bad,), tmp_path, owner(), RestoreResult(tmp_path))
    assert "no recovery settings were written" in (exc.value.hint or "")


def test_damaged_object_fails(tmp_path: Path) -> None:
    storage, obj = store(tmp_path, make_tar([reg("f", bytes(range(256)) * 4000)]))
    path = tmp_path / "repo" / "s" / "backups" / "b1" / "base.tar.zst"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    dest = tmp_path / "d"
    dest.mkdir()
    with pytest.raises(IntegrityError):
        extract_backup(storage, (obj,), dest, owner(), RestoreResult(dest))


@pytest.mark.parametrize("member", [
    reg("../escape"), reg("/tmp/pitr-abs-escape"), reg("a/../../escape"),
])
def test_paths_outside_the_directory_are_refused(tmp_path: Path,
                                                 member: tuple[tarfile.TarInfo, bytes]) -> None:
    storage, obj = store(tmp_path, make_tar([member]))
    dest = tmp_path / "d"
    dest.mkdir()
    with pytest.raises(IntegrityError, match="unsafe tar member"):
        extract_backup(storage, (obj,), dest, owner(), RestoreResult(dest))
    assert not (tmp_path / "escape").exists() and not Path("/tmp/pitr-abs-escape").exists()


def test_links_leaving_the_directory_are_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("conf")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc"
    storage, obj = store(tmp_path, make_tar([(link, b""), reg("conf/passwd")]))
    dest = tmp_path / "d"
    dest.mkdir()
    with pytest.raises(IntegrityError, match="symlink"):
        extract_backup(storage, (obj,), dest, owner(), RestoreResult(dest))
    dev = tarfile.TarInfo("dev")
    dev.type = tarfile.CHRTYPE
    storage, obj = store(tmp_path / "2", make_tar([(dev, b"")]))
    with pytest.raises(IntegrityError, match="device"):
        extract_backup(storage, (obj,), dest, owner(), RestoreResult(dest))


def test_a_tablespace_link_in_the_backup_is_refused(tmp_path: Path) -> None:
    """A base with pg_tblspc/<oid> -> /srv/ts would write into that tablespace."""
    ts = tmp_path / "ts"
    ts.mkdir()
    (ts / "live").write_text("production")
    link = tarfile.TarInfo("pg_tblspc/16388")
    link.type = tarfile.SYMTYPE
    link.linkname = str(ts)
    storage, obj = store(tmp_path, make_tar([directory("pg_tblspc"), (link, b""),
                                             reg("pg_tblspc/16388/live", b"replaced")]))
    dest = tmp_path / "d"
    dest.mkdir()
    with pytest.raises(TargetDirError, match=r"tablespace link pg_tblspc/16388 -> "):
        extract_backup(storage, (obj,), dest, owner(), RestoreResult(dest))
    assert (ts / "live").read_text() == "production"
    assert sorted(p.name for p in ts.iterdir()) == ["live"]


def test_setuid_bits_are_dropped(tmp_path: Path) -> None:
    storage, obj = store(tmp_path, make_tar([reg("f", b"x", mode=0o4777)]))
    dest = tmp_path / "d"
    dest.mkdir()
    extract_backup(storage, (obj,), dest, owner(), RestoreResult(dest))
    assert (dest / "f").stat().st_mode & 0o7777 == 0o755


def test_destination_rules(tmp_path: Path) -> None:
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "old").write_text("keep me")
    cfg = Config(postgres=PostgresConfig(user="pgtest", pgdata=str(dest)))
    with pytest.raises(TargetDirError, match="not empty") as exc:
        check_destination(cfg, RestoreOptions(dest), lambda q: True)
    assert "--force" in (exc.value.hint or "")
    with pytest.raises(TargetDirError, match="production"):
        check_destination(cfg, RestoreOptions(dest, force=True), lambda q: False)
    asked: list[str] = []
    check_destination(cfg, RestoreOptions(dest, force=True), lambda q: asked.append(q) or True)
    assert asked and "production data directory" in asked[0]
    check_destination(cfg, RestoreOptions(dest, force=True, yes=True), lambda q: False)
    moved = prepare_directory(RestoreOptions(dest, force=True), owner(), NOW)
    assert moved == tmp_path / "data.pitr-old-20250215T120000Z"
    assert (moved / "old").read_text() == "keep me"
    assert dest.is_dir() and not any(dest.iterdir())
    assert dest.stat().st_mode & 0o777 == 0o700 and dest.stat().st_uid == owner().uid
    (tmp_path / "file").write_text("")
    with pytest.raises(TargetDirError, match="not a directory"):
        check_destination(cfg, RestoreOptions(tmp_path / "file"), lambda q: True)


def _pid_nobody_here_has() -> int:
    """A pid no process of this pid namespace has: what a containerised server's looks like."""
    import os

    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in range(pid_max - 1, 300, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    raise AssertionError("every pid is taken")


@pytest.mark.parametrize("visible", [False, True])
def test_a_postmaster_pid_refuses_the_directory_even_with_force(tmp_path: Path,
                                                                visible: bool) -> None:
    import os

    dest = tmp_path / "data"
    dest.mkdir()
    pid = os.getpid() if visible else _pid_nobody_here_has()
    pid_file = dest / "postmaster.pid"
    pid_file.write_text(f"{pid}\n{dest}\n1733000000\n5499\n/tmp\n*\n  5499001 1\nready\n")
    (dest / "PG_VERSION").write_text("15\n")
    cfg = Config(postgres=PostgresConfig(user="pgtest"))
    for opts in (RestoreOptions(dest), RestoreOptions(dest, force=True, yes=True)):
        with pytest.raises(TargetDirError, match=f"names postmaster pid {pid} "
                                                 r"\(port 5499\)") as exc:
            check_destination(cfg, opts, lambda q: True)
        assert ("another pid namespace" in exc.value.message) is not visible
        assert "even with --force" in exc.value.message
        hint = exc.value.hint or ""
        assert f"pg_ctl status -D {dest}" in hint and f"delete {pid_file}" in hint
    assert pid_file.exists() and (dest / "PG_VERSION").exists()  # nothing moved aside
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_recovery_settings(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
    from planner_catalogs import backup, catalog, minutes, seg

    cat = catalog([seg(1, n, minutes(n)) for n in range(1, 6)], [backup("A", 1, 1, minutes(1))])
    p = plan(cat, Target.at_time(minutes(3)), minutes(100))
    conf = recovery_conf(p, RestoreOptions(tmp_path, port=5499), "/opt/pitr venv/bin/pitr",
                         Path("/etc/pitr/pitr.toml"))
    assert conf["restore_command"] == ("'/opt/pitr venv/bin/pitr' --config /etc/pitr/pitr.toml "
                                       "archive-get %f %p")
    assert conf["recovery_target_time"] == "2025-01-01 00:03:00+00"
    assert conf["recovery_target_action"] == "promote"
    assert conf["archive_mode"] == "off" and conf["port"] == "5499"
    kept = recovery_conf(p, RestoreOptions(tmp_path, archive_mode="preserve",
                                           target_action="pause"), "/x/pitr", Path("/c"))
    assert "archive_mode" not in kept and kept["recovery_target_action"] == "pause"


def test_recovery_settings_replace_an_earlier_restores_targets(tmp_path: Path) -> None:
    import sys

    from pitr.restore import write_recovery_settings

    sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
    from planner_catalogs import backup, catalog, minutes, seg

    auto = tmp_path / "postgresql.auto.conf"
    auto.write_text("# Do not edit this file manually!\narchive_command = 'pitr archive-push %p'\n"
                    "restore_command = 'old'\nrecovery_target_time = '2020-01-01 00:00:00+00'\n"
                    "recovery_target_inclusive = 'off'\n")
    cat = catalog([seg(1, n, minutes(n)) for n in range(1, 6)], [backup("A", 1, 1, minutes(1))])
    p = plan(cat, Target.latest(), minutes(100))
    conf = recovery_conf(p, RestoreOptions(tmp_path), "/x/pitr", Path("/c"))
    write_recovery_settings(tmp_path, conf, p, owner(), NOW)
    active = [ln for ln in auto.read_text().splitlines() if ln and not ln.startswith("#")]
    assert active == ["archive_command = 'pitr archive-push %p'",
                      "restore_command = '/x/pitr --config /c archive-get %f %p'",
                      "recovery_target_timeline = '1'", "hot_standby = 'on'",
                      "archive_mode = 'off'"]
    assert (tmp_path / "recovery.signal").exists()


def test_a_drills_settings_go_through_the_restore_quoted(tmp_path: Path) -> None:
    """The drill hands its settings to the restore (RestoreOptions.extra_settings): they
    replace the restored ones in the one write, quoted like every other value."""
    import sys

    from pitr.restore import write_recovery_settings
    from pitr.verify import _scratch_settings

    sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
    from planner_catalogs import backup, catalog, minutes, seg

    auto = tmp_path / "postgresql.auto.conf"
    auto.write_text("port = '5432'\nlisten_addresses = '*'\n")
    scratch = tmp_path / "it's a \\ dir"
    extra = _scratch_settings(scratch, 5499, scratch / "pg_hba.verify.conf")
    cat = catalog([seg(1, n, minutes(n)) for n in range(1, 6)], [backup("A", 1, 1, minutes(1))])
    p = plan(cat, Target.latest(), minutes(100))
    conf = recovery_conf(p, RestoreOptions(tmp_path, port=5499, extra_settings=extra),
                         "/x/pitr", Path("/c"))
    write_recovery_settings(tmp_path, conf, p, owner(), NOW)
    active = [ln for ln in auto.read_text().splitlines() if ln and not ln.startswith("#")]
    assert "port = '5432'" not in active and "listen_addresses = '*'" not in active
    assert "listen_addresses = ''" in active and "port = '5499'" in active
    assert f"unix_socket_directories = '{tmp_path}/it''s a \\\\ dir/sock'" in active
    assert len(active) == len({ln.split(" = ")[0] for ln in active})  # each setting once
