"""pitr/archive-push.sh: answering from the agent's proofs without Python, and its fallback.

The script runs under the real /bin/sh with GNU stat, as PostgreSQL runs it; a
stand-in `pitr` records how the fallback was called.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from pitr.setup import ARCHIVE_PUSH_SH, archive_commands
from pitr.wal.spool import FileIdentity, Receipt, Spool, proof_name

SEG = "000000010000000000000007"
URL = "s3://bucket/prefix with space"
FALLBACK_EXIT = 7


@pytest.fixture
def env(tmp_path: Path) -> tuple[Spool, Path, Path]:
    spool = Spool(tmp_path / "spool", "main").ensure()
    (tmp_path / "pg_wal").mkdir()
    seg = tmp_path / "pg_wal" / SEG
    seg.write_bytes(os.urandom(4096))
    fake = tmp_path / "pitr"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/called"\n'
                    f"exit {FALLBACK_EXIT}\n")
    fake.chmod(0o755)
    return spool, seg, fake


def stored(spool: Spool, seg: Path, url: str = URL) -> None:
    spool.write_receipt(Receipt(seg.name, url, FileIdentity.of(seg.stat()), "ab" * 32,
                                time.time()))


def run(spool: Spool, seg: Path, fake: Path, url: str = URL) -> int:
    cmd, _ = archive_commands(str(fake), "/etc/pitr/x.toml", str(spool.proof_dir(url)))
    # PostgreSQL substitutes %p (relative to the data directory) and hands it to /bin/sh.
    return subprocess.run(["/bin/sh", "-c", cmd.replace("%p", f"pg_wal/{seg.name}")],
                          cwd=seg.parent.parent, timeout=30).returncode


def called(seg: Path) -> list[str] | None:
    f = seg.parent.parent / "called"
    return f.read_text().splitlines() if f.exists() else None


def test_a_proof_of_this_very_file_answers_without_pitr(env: tuple[Spool, Path, Path]) -> None:
    spool, seg, fake = env
    stored(spool, seg)
    assert run(spool, seg, fake) == 0
    assert called(seg) is None
    assert f"{seg.name} fast-path-sh" in spool.fastpath_log.read_text()


def test_the_shell_and_python_spell_the_identity_alike(env: tuple[Spool, Path, Path]) -> None:
    _, seg, _ = env
    os.utime(seg, ns=(1_700_000_000_000_000_005, 1_700_000_000_000_000_005))  # leading zeros
    out = subprocess.run(["stat", "-L", "-c", "%d_%i_%s_%.9Y_%.9Z", str(seg)],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert f"{seg.name}_{out}" == proof_name(seg.name, FileIdentity.of(seg.stat()))


@pytest.mark.parametrize("change", ["none", "other-repository", "rewritten", "touched",
                                    "replaced", "missing"])
def test_anything_but_a_matching_proof_runs_pitr_archive_push(
        env: tuple[Spool, Path, Path], change: str) -> None:
    spool, seg, fake = env
    if change != "none":
        stored(spool, seg, "s3://other" if change == "other-repository" else URL)
    time.sleep(0.05)  # file times come from the kernel's coarse clock (a few ms a tick)
    if change == "rewritten":
        seg.write_bytes(os.urandom(4096))  # same inode and size, new mtime/ctime
    elif change == "touched":
        os.utime(seg, (time.time() - 100, time.time() - 100))
    elif change == "replaced":  # a restored file system copy: same bytes, new inode
        data, st = seg.read_bytes(), seg.stat()
        seg.unlink()
        seg.write_bytes(data)
        os.utime(seg, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif change == "missing":
        seg.unlink()
    assert run(spool, seg, fake) == FALLBACK_EXIT  # the fallback's own exit code
    assert called(seg) == ["--config", "/etc/pitr/x.toml", "archive-push", f"pg_wal/{SEG}"]
    assert not spool.fastpath_log.exists()


def run_bg(spool: Spool, seg: Path, fake: Path) -> subprocess.Popen[bytes]:
    cmd, _ = archive_commands(str(fake), "/etc/pitr/x.toml", str(spool.proof_dir(URL)))
    return subprocess.Popen(["/bin/sh", "-c", cmd.replace("%p", f"pg_wal/{seg.name}")],
                            cwd=seg.parent.parent)


def test_a_running_agent_gets_a_bounded_wait_for_its_proof(
        env: tuple[Spool, Path, Path]) -> None:
    spool, seg, fake = env
    agent = subprocess.Popen(["sleep", "60"])  # a live process named by agent.lock
    try:
        spool.agent_lock.write_text(f"{agent.pid}\n")
        proc = run_bg(spool, seg, fake)
        time.sleep(0.3)  # the agent is behind, the script polls
        assert proc.poll() is None
        stored(spool, seg)
        assert proc.wait(timeout=30) == 0
        assert called(seg) is None
        assert f"{seg.name} fast-path-sh" in spool.fastpath_log.read_text()
        # No proof ever: the wait is bounded, then pitr runs.
        other = seg.with_name("000000010000000000000008")
        other.write_bytes(os.urandom(4096))
        assert run(spool, other, fake) == FALLBACK_EXIT
        # The agent failed on it: pitr runs (and reports the failure properly).
        spool.write_error(other.name, "boom")
        assert run(spool, other, fake) == FALLBACK_EXIT
    finally:
        agent.kill()
        agent.wait()


def test_no_live_agent_pid_means_pitr_runs(env: tuple[Spool, Path, Path]) -> None:
    spool, seg, fake = env
    gone = subprocess.Popen(["true"])
    gone.wait()
    for content in (f"{gone.pid}\n", "0\n", "x\n", ""):
        spool.agent_lock.write_text(content)
        assert run(spool, seg, fake) == FALLBACK_EXIT
        (seg.parent.parent / "called").unlink()


def test_without_a_proof_dir_the_command_is_plain_pitr() -> None:
    push, get = archive_commands("/opt/pitr venv/bin/pitr", "/etc/pitr/pitr.toml")
    assert shlex.split(push) == ["/opt/pitr venv/bin/pitr", "--config", "/etc/pitr/pitr.toml",
                                 "archive-push", "%p"]
    fast, get2 = archive_commands("/opt/pitr venv/bin/pitr", "/etc/pitr/pitr.toml", "/s/p d")
    assert shlex.split(fast) == ["/bin/sh", str(ARCHIVE_PUSH_SH), "/s/p d", "%p",
                                 *shlex.split(push)[:3]]
    assert get2 == get and ARCHIVE_PUSH_SH.is_file()


def test_check_says_when_the_script_looks_for_proofs_elsewhere() -> None:
    from pitr.check import check_settings

    cmd, _ = archive_commands("/usr/bin/pitr", "/etc/pitr/pitr.toml", "/spool/main/archive/p1")
    s = {"wal_level": "replica", "archive_mode": "on", "archive_command": cmd}
    same = check_settings(s, "/spool/main/archive/p1")[2]
    other = check_settings(s, "/spool/main/archive/p2")[2]
    assert same.status == other.status == "ok"
    assert same.detail == cmd and "pitr setup --apply" in other.detail
    plain, _ = archive_commands("/usr/bin/pitr", "/etc/pitr/pitr.toml")
    assert check_settings({**s, "archive_command": plain}, "/x")[2].detail == plain
