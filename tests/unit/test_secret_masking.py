"""A known credential never appears in any command's output, error or log line.

The commands run as real subprocesses of the installed CLI (what a user or
PostgreSQL runs), with the secret coming from the environment and, separately,
from the config file; failures are provoked on purpose (unreachable S3
endpoint, a bad WAL file), since error paths are where secrets leak.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pitr.setup import archive_commands

PITR = Path(sys.executable).parent / "pitr"
SECRET = "S3cr3t-Kn0wn-Value-4f9d2c"
KEY_ID = "AKIAKNOWNKEYID7788"
TOKEN = "SessionTok-99xx-known"
HOOK = "https://hooks.example.invalid/services/T000/B000/hooksecret-31337"
PGPASS = "pgPassw0rd-known-1234"
ENC_KEY = "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM="  # a repository key (docs/encryption.md)
FILE_KEY = "jI2Oj5CRkpOUlZaXmJmam5ydnp+goaKjpKWmp6ipqqs="


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env_secrets(tmp_path: Path) -> dict[str, str]:
    cfg = tmp_path / "pitr.toml"
    cfg.write_text(
        'stanza = "masking"\n'
        "[repository]\n"
        'url = "s3://pitr-masking/prefix"\n'
        f'endpoint_url = "http://127.0.0.1:{closed_port()}"\n'
        'region = "us-east-1"\n'
        "path_style = true\n"
        'timeout = "1s"\n'
        'request_timeout = "1s"\n'
        "[postgres]\n"
        f'dsn = "host=127.0.0.1 port={closed_port()} user=postgres password={PGPASS} '
        'connect_timeout=2"\n'
        "[archive]\n"
        f'spool_dir = "{tmp_path / "spool"}"\n'
        "fast_path_wait = 0\n")
    return {
        "PITR_CONFIG": str(cfg),
        "PITR_REPOSITORY_ACCESS_KEY_ID": KEY_ID,
        "PITR_REPOSITORY_SECRET_ACCESS_KEY": SECRET,
        "PITR_REPOSITORY_SESSION_TOKEN": TOKEN,
        "PITR_MONITOR_WEBHOOK_URL": HOOK,
        "PITR_ENCRYPTION_KEY": ENC_KEY,
    }


def run(env: dict[str, str], *args: str,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("PITR_", "AWS_"))}
    full.update(env)
    return subprocess.run([str(PITR), *args], capture_output=True, text=True, env=full,
                          timeout=120, cwd=cwd)


def assert_clean(proc: subprocess.CompletedProcess[str], what: str) -> None:
    out = proc.stdout + proc.stderr
    for secret in (SECRET, KEY_ID, TOKEN, "hooksecret-31337", PGPASS, ENC_KEY, FILE_KEY,
                   ENC_KEY[:16], FILE_KEY[:16]):
        assert secret not in out, f"{what} leaked a secret:\n{out}"


COMMANDS: list[tuple[str, ...]] = [
    ("config", "show"),
    ("config", "show", "--json"),
    ("config", "check"),
    ("config", "check", "--json"),
    ("check",),
    ("--debug", "check"),
    ("--log-format", "json", "--debug", "check"),
    ("archive-push", "/nonexistent/pg_wal/000000010000000000000001"),
    ("archive-get", "000000010000000000000001", "RECOVERYXLOG"),
    ("--debug", "archive-get", "000000010000000000000001", "RECOVERYXLOG"),
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a))
def test_secret_from_env_never_printed(env_secrets: dict[str, str], tmp_path: Path,
                                       args: tuple[str, ...]) -> None:
    proc = run(env_secrets, *args, cwd=tmp_path)
    assert_clean(proc, " ".join(args))


def test_bad_wal_file_and_unreachable_repository(env_secrets: dict[str, str],
                                                 tmp_path: Path) -> None:
    bad = tmp_path / "pg_wal" / "000000010000000000000002"
    bad.parent.mkdir()
    bad.write_bytes(b"not a WAL segment" * 1000)
    for extra in ((), ("--debug",), ("--log-format", "json", "--debug")):
        proc = run(env_secrets, *extra, "archive-push", str(bad), cwd=tmp_path)
        assert 0 < proc.returncode <= 125, proc.stderr
        assert_clean(proc, "archive-push of a bad file")
    good_name = tmp_path / "pg_wal" / "000000010000000000000003"
    good_name.write_bytes(b"\0" * (16 << 20))
    proc = run(env_secrets, "--debug", "archive-push", str(good_name), cwd=tmp_path)
    assert 0 < proc.returncode <= 125
    assert_clean(proc, "archive-push to an unreachable repository")


def test_config_show_masks_but_says_where_the_secret_came_from(
        env_secrets: dict[str, str]) -> None:
    proc = run(env_secrets, "config", "show")
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("repository.secret_access"))
    assert "********" in line and "PITR_REPOSITORY_SECRET_ACCESS_KEY" in line


def test_secret_in_config_file_is_masked_too(env_secrets: dict[str, str]) -> None:
    cfg = Path(env_secrets["PITR_CONFIG"])
    text = cfg.read_text().replace("[repository]\n", "[repository]\n"
                                   f'access_key_id = "{KEY_ID}"\n'
                                   f'secret_access_key = "{SECRET}"\n')
    cfg.write_text(text)
    env = {"PITR_CONFIG": str(cfg)}
    for args in (("config", "show"), ("config", "show", "--json"), ("--debug", "check")):
        assert_clean(run(env, *args), " ".join(args))


def test_archive_command_line_carries_no_credentials() -> None:
    # What `ps` shows while PostgreSQL archives: only paths.
    for cmd in archive_commands("/usr/local/bin/pitr", "/etc/pitr/pitr.toml"):
        assert "secret" not in cmd.lower() and "key" not in cmd.lower()


def test_key_from_a_file_or_a_command_is_never_printed(env_secrets: dict[str, str],
                                                       tmp_path: Path) -> None:
    key_file = tmp_path / "repo.key"
    key_file.write_text(FILE_KEY + "\n")
    key_file.chmod(0o600)
    env = {k: v for k, v in env_secrets.items() if k != "PITR_ENCRYPTION_KEY"}
    for source in (f"PITR_ENCRYPTION_KEY_FILE={key_file}",
                   f"PITR_ENCRYPTION_KEY_COMMAND=cat {key_file}"):
        name, _, value = source.partition("=")
        for args in (("config", "show"), ("--debug", "check"),
                     ("--debug", "archive-get", "000000010000000000000001", "RECOVERYXLOG")):
            assert_clean(run({**env, name: value}, *args, cwd=tmp_path), " ".join(args))
    # a file that is not a key: the error names the file, never its content
    key_file.write_text(SECRET + "\n")
    proc = run({**env, "PITR_ENCRYPTION_KEY_FILE": str(key_file)}, "--debug", "archive-get",
               "000000010000000000000001", "RECOVERYXLOG", cwd=tmp_path)
    assert proc.returncode == 150 + 24, proc.stderr
    assert_clean(proc, "archive-get with a bad key file")
