"""`pitr check` against real clusters: all good, and each misconfiguration named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run_pitr

from pitr.errors import CheckFailed

pytestmark = pytest.mark.integration


@pytest.mark.pg_versions(15, 18)
def test_check_passes_on_an_archiving_cluster(pg_factory: Any, pitr_exe: Path,
                                              pitr_config: Any, testdir: Path) -> None:
    pg = pg_factory("pg")
    cfg = pitr_config(postgres={"dsn": pg.dsn})
    pg.configure({"archive_mode": "on",
                  "archive_command": f"{pitr_exe} --config {cfg} archive-push %p"})
    pg.start()
    pg.sql("create table t as select generate_series(1, 100) i")

    proc = run_pitr(cfg, "check")
    lines = proc.stdout.splitlines()
    names = [line.split()[0] for line in lines if line.strip()]
    assert names == ["config", "repository", "encryption", "postgres", "version", "wal_level",
                     "archive_mode", "archive_command", "archiving_mode", "archive"], proc.stdout
    assert all(line.split()[1] == "ok" for line in lines), proc.stdout

    doc = json.loads(run_pitr(cfg, "check", "--json").stdout)
    assert doc["ok"] is True and {c["status"] for c in doc["checks"]} == {"ok"}

    # a key in a file every user can read: a warning, not a failure (docs/fault-table.md)
    hook = "https://hooks.example.invalid/services/T1/B1/tok-12345678"
    cfg.write_text(cfg.read_text() + f'\n[monitor]\nwebhook_url = "{hook}"\n')
    assert cfg.stat().st_mode & 0o004
    proc = run_pitr(cfg, "check", "--json")
    doc = json.loads(proc.stdout)
    warned = {c["name"]: c for c in doc["checks"] if c["status"] == "WARN"}
    assert doc["ok"] is True and set(warned) == {"config_file_mode"}, doc
    assert "monitor.webhook_url" in warned["config_file_mode"]["detail"]
    assert warned["config_file_mode"]["hint"].startswith("chmod o-rwx")
    assert "tok-12345678" not in proc.stdout + proc.stderr


def test_check_names_every_failure(pg_factory: Any, pitr_exe: Path, pitr_config: Any,
                                   testdir: Path) -> None:
    pg = pg_factory("pg", conf={"wal_level": "minimal", "max_wal_senders": 0})
    pg.start()
    cfg = pitr_config(postgres={"dsn": pg.dsn})
    proc = run_pitr(cfg, "check", "--json", check=False)
    assert proc.returncode == CheckFailed.exit_code, proc.stderr
    doc = json.loads(proc.stdout)
    by_name = {c["name"]: c for c in doc["checks"]}
    assert doc["ok"] is False
    assert by_name["repository"]["status"] == "ok"
    assert by_name["wal_level"]["status"] == "FAIL" and "replica" in by_name["wal_level"]["hint"]
    assert by_name["archive_mode"]["status"] == "FAIL"
    assert by_name["archive_command"]["status"] == "FAIL"
    assert by_name["archive"]["status"] == "skip"

    # PostgreSQL down and the repository unwritable: both reported in one run.
    pg.stop()
    cfg = pitr_config(name="bad.toml", postgres={"dsn": pg.dsn},
                      repository={"url": "file:///proc/pitr-cannot-write-here"})
    proc = run_pitr(cfg, "check", check=False)
    assert proc.returncode == CheckFailed.exit_code
    text = proc.stdout
    assert "repository" in text and "FAIL" in text and "hint:" in text
    assert "postgres " in text and "cannot connect" in text, text


def test_check_reports_an_invalid_config(pitr_config: Any, pitr_exe: Path) -> None:
    cfg = pitr_config(compression={"level": 99})
    proc = run_pitr(cfg, "check", check=False)
    assert proc.returncode == CheckFailed.exit_code
    assert proc.stdout.startswith("config") and "compression.level" in proc.stdout
