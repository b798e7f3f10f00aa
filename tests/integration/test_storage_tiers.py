"""Storage tiers against the real S3 server (docs/storage-tiers.md).

SeaweedFS takes storage classes on upload and reports them in listings and HEAD, and
implements object tagging: classes per object kind, `pitr plan` reporting objects put
in GLACIER through the S3 API, `pitr restore` refusing them, and expire's tier tags run
for real. SeaweedFS answers RestoreObject with MethodNotAllowed and lifecycle
transitions with NotImplemented: the tests check that pitr says so clearly (and that
`pitr lifecycle --apply` writes the abort rule it does accept, keeping other rules).
No PostgreSQL: the history is written with pitr's own encoders.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import run_pitr
from support import walbytes

from pitr import manifest, tiers
from pitr.backup import _store_pg_manifest
from pitr.catalog import load_catalog
from pitr.catalog_cache import CatalogCache
from pitr.config import Config, Duration, RepositoryConfig
from pitr.errors import NotFound, StorageError
from pitr.expire import expire, render
from pitr.manifest import BackupRecord
from pitr.pg.names import segment_name
from pitr.repo import Repo, upload_classes
from pitr.retention import Policy
from pitr.storage.base import TieredStorage, put_bytes
from pitr.wal.push import push_wal

pytestmark = pytest.mark.integration

SEG = 16 * 1024 * 1024
SYSID = walbytes.SYSID


def _cfg(section: dict[str, Any], **repo: Any) -> Config:
    values = {**section, **repo}
    for key in ("timeout", "request_timeout"):
        values[key] = Duration(values[key])
    return Config(stanza="tiers", repository=RepositoryConfig(**values))


def _classes(repo: Repo, prefix: str) -> dict[str, str]:
    return {o.key: o.storage_class for o in repo.storage.list(prefix)}


def _push(repo: Repo, tmp: Path, segno: int) -> str:
    name = segment_name(1, segno, SEG)
    path = tmp / name
    path.write_bytes(walbytes.segment_bytes(name, seg_size=SEG))
    push_wal(repo, path, level=1, budget=30)
    return name


def _backup(repo: Repo, bid: str, stop: datetime, segno: int, data_class: str = "") -> None:
    rec = BackupRecord(id=bid, label="scheduled", start_lsn=segno * SEG + 0x28,
                       stop_lsn=segno * SEG + 0x100, start_time=stop - timedelta(minutes=1),
                       stop_time=stop, timeline=1, system_id=str(SYSID), pg_version=15,
                       db_size=10, raw_bytes=10, stored_bytes=7)
    put_bytes(repo.storage, repo.backup_prefix(bid) + "base.tar.zst", b"1234567",
              storage_class=data_class)
    put_bytes(repo.storage, repo.backup_prefix(bid) + "backup_manifest.zst", b"{}")
    put_bytes(repo.storage, repo.manifest_key(bid), manifest.encode(rec))


def test_each_kind_of_object_is_uploaded_in_its_class(s3_repo: dict[str, Any],
                                                      tmp_path: Path) -> None:
    cfg = _cfg(s3_repo, part_size_mib=5, wal_storage_class="GLACIER",
               backup_storage_class="STANDARD_IA")
    repo = Repo.open(cfg)
    name = _push(repo, tmp_path, 1)  # repo.json on the way: a control object
    history = tmp_path / "00000002.history"
    history.write_text("1\t0/1000000\tpromoted\n")
    push_wal(repo, history, level=1, budget=30)
    _store_pg_manifest([repo], "b1", b"{}", 1)
    big = os.urandom(7 * 1024 * 1024)  # multipart: CreateMultipartUpload carries the class
    repo.storage.put(repo.backup_prefix("b1") + "base.tar.zst", _Reader(big),
                     storage_class=repo.upload_class(tiers.BACKUP))
    put_bytes(repo.storage, repo.manifest_key("b1"), b"{}")
    listed = _classes(repo, "")
    assert listed[repo.wal_key(name)] == "GLACIER"
    assert listed[repo.identity_key] == ""  # STANDARD, like a local file
    assert listed[repo.wal_key("00000002.history")] == ""  # every plan reads it
    # the next incremental backup reads the backup_manifest copy: not in the data's class
    assert listed[repo.backup_prefix("b1") + "backup_manifest.zst"] == ""
    assert listed[repo.backup_prefix("b1") + "base.tar.zst"] == "STANDARD_IA"
    assert listed[repo.manifest_key("b1")] == ""  # STANDARD: every listing reads it
    assert repo.storage.stat(repo.wal_key(name)).storage_class == "GLACIER"
    # the agent's warm repository uploads in the same classes
    assert upload_classes(cfg) == {tiers.WAL: "GLACIER", tiers.BACKUP: "STANDARD_IA"}


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        n = len(self.data) - self.pos if n < 0 else min(n, 1 << 20)  # short reads
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


def test_tags_round_trip_and_seaweedfs_refusals_are_clear(s3_repo: dict[str, Any]) -> None:
    storage = Repo.open(_cfg(s3_repo)).storage
    assert isinstance(storage, TieredStorage)
    put_bytes(storage, "k", b"x", storage_class="GLACIER")
    assert storage.get_tags("k") == {}
    storage.set_tags("k", {"pitr-tier": "monthly", "owner": "ops"})
    assert storage.get_tags("k") == {"pitr-tier": "monthly", "owner": "ops"}
    with pytest.raises(NotFound):
        storage.set_tags("absent", {"pitr-tier": "recent"})
    assert storage.thaw_status("k") == ("GLACIER", None)
    with pytest.raises(StorageError, match="refused to restore") as exc:
        storage.request_thaw("k", 1, "Standard")
    assert "MethodNotAllowed" in exc.value.message


def test_lifecycle_apply_keeps_other_rules_and_a_refused_transition_is_named(
        s3_server: Any, s3_repo: dict[str, Any], pitr_config: Any) -> None:
    bucket = s3_repo["url"][len("s3://"):].split("/")[0]
    client = s3_server.client()
    foreign = {"ID": "logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled",
               "Expiration": {"Days": 30}}
    client.put_bucket_lifecycle_configuration(Bucket=bucket,
                                              LifecycleConfiguration={"Rules": [foreign]})
    path = pitr_config(repository=s3_repo, retention={"monthly": 12})
    shown = run_pitr(path, "lifecycle")
    assert "abort multipart uploads unfinished after 3 day(s)" in shown.stdout
    assert "not applied" in shown.stdout
    assert client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"] == [foreign]

    doc = json.loads(run_pitr(path, "lifecycle", "--apply", "--json").stdout)
    assert doc["changed"] is True and doc["other_rules"] == 1
    rules = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert foreign in rules
    assert {r["ID"] for r in rules} == {"logs", "pitr:pitr/test/:abort-multipart"}
    again = json.loads(run_pitr(path, "lifecycle", "--apply", "--json").stdout)
    assert again["changed"] is False

    cold = pitr_config("cold.toml", repository={**s3_repo, "monthly_storage_class": "GLACIER"},
                       retention={"monthly": 12})
    plan = json.loads(run_pitr(cold, "lifecycle", "--json").stdout)
    assert [r["ID"].rsplit(":", 1)[-1] for r in plan["rules"]] == ["abort-multipart",
                                                                  "monthly"]
    refused = run_pitr(cold, "lifecycle", "--apply", check=False)
    assert refused.returncode == 4, refused.stderr
    assert "refused the lifecycle rules" in refused.stderr and "NotImplemented" in refused.stderr
    assert len(client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]) == 2


def test_plan_reports_glacier_objects_and_restore_refuses_before_writing(
        s3_repo: dict[str, Any], pitr_config: Any, testdir: Path, tmp_path: Path) -> None:
    path = pitr_config(repository=s3_repo)
    cfg = _cfg(s3_repo)
    repo = Repo(Repo.open(cfg).sealed.inner, "test", classes={tiers.WAL: ""})
    frozen_wal = Repo(repo.sealed.inner, "test", classes={tiers.WAL: "GLACIER"})
    stop = datetime.now(UTC) - timedelta(hours=1)
    _push(repo, tmp_path, 1)
    _backup(repo, "b1", stop, 1, data_class="GLACIER")
    cold_seg = _push(frozen_wal, tmp_path, 2)
    _push(repo, tmp_path, 3)

    full = load_catalog(repo)
    assert full.cold_objects == {"b1": ((repo.backup_prefix("b1") + "base.tar.zst",
                                         "GLACIER"),)}
    assert [s.storage_class for s in full.segments[1]] == ["", "GLACIER", ""]
    # the catalog cache (list, status, monitoring) carries the classes too
    assert CatalogCache(repo, tmp_path / "cache.json").refresh() == full
    assert CatalogCache(repo, tmp_path / "cache.json").refresh() == full  # from the file

    doc = json.loads(run_pitr(path, "plan", "--latest", "--json").stdout)
    assert doc["backup"]["id"] == "b1"
    assert sorted(o["key"] for o in doc["archived_objects"]) == [
        repo.backup_prefix("b1") + "base.tar.zst", repo.wal_key(cold_seg)]
    assert {o["storage_class"] for o in doc["archived_objects"]} == {"GLACIER"}
    assert doc["thaw_estimate_hours"] == [3, 5]
    text = run_pitr(path, "plan", "--latest").stdout
    assert "2 object(s) this restore reads are in an archive storage class (2 in GLACIER)" \
        in text and "estimated 3 h to 5 h" in text

    dest = testdir / "restored"
    refused = run_pitr(path, "restore", "--latest", "--pgdata", str(dest), check=False)
    assert refused.returncode == 25, refused.stderr
    assert "nothing restored" in refused.stderr and "--thaw" in refused.stderr
    assert not dest.exists()
    # --thaw asks the server; SeaweedFS has no RestoreObject, and says so
    thawing = run_pitr(path, "restore", "--latest", "--pgdata", str(dest), "--thaw",
                       check=False)
    assert thawing.returncode == 4, thawing.stderr
    assert "thaw: 2 archived object(s), Standard retrieval, estimated 3 h to 5 h" \
        in thawing.stderr
    assert "refused to restore" in thawing.stderr and "MethodNotAllowed" in thawing.stderr
    assert not dest.exists()
    assert list(repo.storage.list(repo.claims_prefix)) == []  # the claim was released
    # the restore drill fails its check before it builds a scratch cluster
    drill = run_pitr(path, "verify", "--json", check=False)
    assert drill.returncode == 14, drill.stderr
    checks = json.loads(drill.stdout)["checks"]
    assert any(not c["ok"] and "drill cannot read archived objects" in c["detail"]
               for c in checks), checks


def test_expire_tags_follow_the_retention_tier(s3_repo: dict[str, Any]) -> None:
    repo = Repo.open(_cfg(s3_repo))
    repo.ensure_identity(SYSID, 15, SEG)
    _backup(repo, "march", datetime(2025, 3, 1, 10, tzinfo=UTC), 1)
    _backup(repo, "april1", datetime(2025, 4, 1, 10, tzinfo=UTC), 3)
    _backup(repo, "april2", datetime(2025, 4, 2, 10, tzinfo=UTC), 5)
    policy = Policy(daily=2, weekly=0, monthly=3, min_backups=1)

    def tag(bid: str) -> str | None:
        assert isinstance(repo.storage, TieredStorage)
        return repo.storage.get_tags(repo.backup_prefix(bid) + "base.tar.zst").get(
            tiers.TAG_KEY)

    planned = expire(repo, policy, now=datetime(2025, 4, 2, 12, tzinfo=UTC), dry_run=True)
    assert {(b, new) for b, _k, _o, new in planned.retagged} == {
        ("march", "monthly"), ("april1", "recent"), ("april2", "recent")}
    assert tag("march") is None  # a dry run writes nothing
    assert "tag     march" in render(planned)

    expire(repo, policy, now=datetime(2025, 4, 2, 12, tzinfo=UTC))
    assert (tag("march"), tag("april1"), tag("april2")) == ("monthly", "recent", "recent")
    assert isinstance(repo.storage, TieredStorage)
    for control in (repo.manifest_key("march"), repo.backup_prefix("march")
                    + "backup_manifest.zst"):
        assert repo.storage.get_tags(control) == {}  # never archived

    # a week later April 1st is kept by the monthly tier alone: its tag cools down
    later = expire(repo, policy, now=datetime(2025, 4, 9, 12, tzinfo=UTC))
    assert [(b, old, new) for b, _k, old, new in later.retagged] == [
        ("april1", "recent", "monthly")]
    assert (tag("march"), tag("april1"), tag("april2")) == ("monthly", "monthly", "recent")
    again = expire(repo, policy, now=datetime(2025, 4, 9, 12, tzinfo=UTC))
    assert again.retagged == []
    assert later.summary()["retagged"][0]["to"] == "monthly"
