"""`pitr expire` on the local-directory repository: the lock it shares with backup, incomplete
backups (stale ones go, a running one stays), damaged manifests, the text plan, and the
error path of expiry after a backup. No PostgreSQL needed: the history is written with
pitr's own manifest encoder, the storage is the real local driver (written as root here,
so the CLI runs as root too)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from conftest import run_pitr

from pitr import config as config_mod
from pitr import manifest
from pitr.catalog import load_catalog
from pitr.errors import LockedError
from pitr.expire import expire_after_backup, render, run_expire
from pitr.lock import StanzaLock
from pitr.manifest import BackupRecord
from pitr.pg.names import segment_name
from pitr.repo import Repo
from pitr.storage.base import put_bytes

pytestmark = pytest.mark.integration

SEG = 16 * 1024 * 1024


def _backup(repo: Repo, bid: str, stop: datetime, seg: int) -> BackupRecord:
    rec = BackupRecord(id=bid, label="scheduled", start_lsn=seg * SEG + 0x28,
                       stop_lsn=seg * SEG + 0x100, start_time=stop, stop_time=stop, timeline=1,
                       system_id="1", pg_version=15, db_size=10, raw_bytes=10, stored_bytes=7)
    put_bytes(repo.storage, repo.backup_prefix(bid) + "base.tar.zst", b"1234567")
    put_bytes(repo.storage, repo.manifest_key(bid), manifest.encode(rec))
    return rec


class Setup(NamedTuple):
    path: Path
    cfg: config_mod.Config
    repo: Repo


@pytest.fixture
def setup(pitr_config: Any) -> Setup:
    # No calendar tier: which backups these tests keep must not depend on the date or the
    # hour they run at (b2 stops a minute before now, which is yesterday just after midnight).
    path = pitr_config(retention={"daily": 0, "weekly": 0, "monthly": 0, "min_backups": 1})
    cfg = config_mod.load(path, env={})
    repo = Repo.open(cfg)
    repo.ensure_identity(1, 15, SEG)
    now = datetime.now(UTC)
    for i, days in enumerate((30, 20, 0)):
        _backup(repo, f"b{i}", now - timedelta(days=days, minutes=1), 10 * i + 1)
    for n in range(25):
        put_bytes(repo.storage, repo.wal_key(segment_name(1, n, SEG)), b"w")
    return Setup(path, cfg, repo)


def test_stale_incomplete_backups_go(setup: Setup, local_repo: Path) -> None:
    cfg, repo = setup.cfg, setup.repo
    key = repo.backup_prefix("stale") + "base.tar.zst"
    put_bytes(repo.storage, key, b"x")
    old = (datetime.now(UTC) - timedelta(hours=1)).timestamp()
    os.utime(local_repo / key, (old, old))  # left by a run that crashed an hour ago
    result = run_expire(cfg)
    d = result.decision
    assert d.deleted_ids == {"b0", "b1"} and d.incomplete_deleted == ("stale",)
    cat = load_catalog(repo)
    assert [b.id for b in cat.backups] == ["b2"] and cat.incomplete_backups == ()
    assert [s.segno for s in cat.segments[1]] == list(range(21, 25))
    assert result.bytes_freed == 2 * 7 + 21 * 1 + sum(
        len(manifest.encode(b)) for b in d.deleted) + 1
    text = render(result)
    assert "delete  b0" in text and "keep    b2" in text and "freed" in text


def test_a_running_backup_refuses_expire(setup: Setup) -> None:
    cfg, repo = setup.cfg, setup.repo
    with StanzaLock(repo, "backup", command="pitr backup", stale_after=3600):
        put_bytes(repo.storage, repo.backup_prefix("running") + "base.tar.zst", b"x")
        with pytest.raises(LockedError):
            run_expire(cfg)
        # a dry run reads the lock: the running backup's objects are not in the plan
        dry = run_expire(cfg, dry_run=True)
        assert dry.decision.incomplete_kept == ("running",)
        assert dry.decision.incomplete_deleted == ()
        assert "still writing" in render(dry)
        # expiry after a backup that finds the next backup running leaves it to that one
        summary, err = expire_after_backup(cfg, "bX")
        assert err is None and "another" in summary["skipped"]
    # any other failure is reported after the (successful) backup
    broken = replace(cfg, repository=replace(cfg.repository, url="file:///proc/nonexistent"))
    summary, err = expire_after_backup(broken, "bY")
    assert err is not None and "bY completed, but expiry after it failed" in summary["error"]
    assert len(load_catalog(repo).backups) == 3  # nothing deleted while locked


def test_damaged_manifest_is_left_alone_and_reported(setup: Setup) -> None:
    path, repo = setup.path, setup.repo
    put_bytes(repo.storage, repo.manifest_key("broken"), b"{not json")
    proc = run_pitr(path, "expire", "--json", user=None)
    doc = json.loads(proc.stdout)
    assert doc["damaged_backups_left_alone"] == ["broken"]
    assert repo.storage.stat(repo.manifest_key("broken"))
    text = run_pitr(path, "expire", user=None).stdout
    assert "nothing to expire" in text and "skip    broken" in text


def test_cli_dry_run_and_pins(setup: Setup) -> None:
    path, repo = setup.path, setup.repo
    assert "pinned" in run_pitr(path, "pin", "b0", user=None).stdout
    doc = json.loads(run_pitr(path, "expire", "--dry-run", "--json", user=None).stdout)
    assert doc["dry_run"] and [b["id"] for b in doc["deleted"]] == ["b1"]
    assert {k["id"]: k["reasons"] for k in doc["kept"]} == {
        "b0": ["pinned"], "b2": ["newest", "latest_timeline", "min_backups"]}
    assert len(load_catalog(repo).backups) == 3
    out = json.loads(run_pitr(path, "unpin", "b0", "--json", user=None).stdout)
    assert out == {"id": "b0", "pinned": False, "changed": True}
    assert "was not pinned" in run_pitr(path, "unpin", "b0", user=None).stdout
