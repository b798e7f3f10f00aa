"""Storage tiers (docs/storage-tiers.md): upload classes, retention-tier tags, the lifecycle
rules a policy implies, the thaw decision and the thaw loop (clock passed in), and the
planner's report of archived objects. Pure functions; the loop runs on an in-memory
storage that behaves like S3's restore state machine."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from planner_catalogs import backup as pbackup
from planner_catalogs import catalog as pcatalog
from planner_catalogs import minutes, seg
from retention_builders import backup, catalog

from pitr import tiers
from pitr.config import STORAGE_CLASSES, RepositoryConfig
from pitr.errors import ThawTimeout, UsageError
from pitr.planner import plan
from pitr.retention import REASONS, Policy, decide
from pitr.targets import Target, TargetKind
from pitr.thaw import ThawOptions, thaw
from pitr.tiers import ThawState, thaw_state

NOW = datetime(2025, 6, 15, 12, tzinfo=UTC)
CLASSES = [c for c in STORAGE_CLASSES if c]


def repo_cfg(**kw: Any) -> RepositoryConfig:
    return RepositoryConfig(url="s3://bucket/pfx", **kw)


# -- upload classes ----------------------------------------------------------------------

def test_each_kind_gets_its_class_and_falls_back_to_storage_class() -> None:
    cfg = repo_cfg(storage_class="STANDARD_IA", wal_storage_class="GLACIER_IR")
    assert tiers.upload_class(cfg, tiers.WAL) == "GLACIER_IR"
    assert tiers.upload_class(cfg, tiers.BACKUP) == "STANDARD_IA"
    assert tiers.upload_class(cfg, tiers.OTHER) == "STANDARD_IA"
    cfg = repo_cfg(backup_storage_class="GLACIER")
    # manifests and control objects never follow the backup class into an archive class
    assert tiers.upload_class(cfg, tiers.OTHER) == ""
    assert tiers.upload_class(cfg, tiers.BACKUP) == "GLACIER"


def test_history_and_backup_files_stay_with_the_control_objects() -> None:
    assert tiers.wal_kind("000000010000000000000003") == tiers.WAL
    assert tiers.wal_kind("000000010000000000000003.partial") == tiers.WAL
    assert tiers.wal_kind("00000002.history") == tiers.OTHER
    assert tiers.wal_kind("000000010000000000000003.00000028.backup") == tiers.OTHER


def test_only_the_tar_is_backup_data() -> None:
    assert tiers.is_backup_data("s/backups/b1/base.tar.zst")
    assert not tiers.is_backup_data("s/backups/b1/manifest.json")
    assert not tiers.is_backup_data("s/backups/b1/backup_manifest.zst")


def test_an_unknown_class_is_a_config_error(tmp_path: Any) -> None:
    from pitr import config as config_mod
    from pitr.errors import ConfigError

    with pytest.raises(ConfigError, match="monthly_storage_class"):
        config_mod.load(None, env={"PITR_REPOSITORY_MONTHLY_STORAGE_CLASS": "GLACIERR"})


# -- tier tags ---------------------------------------------------------------------------

@pytest.mark.parametrize(("reasons", "tier"), [
    (("newest", "daily", "weekly", "monthly"), "recent"),
    (("daily", "monthly"), "recent"),
    (("chain", "monthly"), "recent"),  # a parent a recent incremental needs stays hot
    (("claimed",), "recent"),
    (("weekly", "monthly"), "weekly"),
    (("pinned", "monthly"), "pinned"),
    (("monthly",), "monthly"),
    ((), "recent"),
])
def test_tier_is_the_hottest_reason(reasons: tuple[str, ...], tier: str) -> None:
    assert tiers.tier_of(reasons) == tier


@given(st.sets(st.sampled_from(REASONS)))
def test_only_the_monthly_tier_alone_tags_monthly(reasons: set[str]) -> None:
    tier = tiers.tier_of(reasons)
    assert tier in tiers.TIERS
    assert (tier == "monthly") == (reasons == {"monthly"})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 400 * 24), min_size=1, max_size=25, unique=True),
       st.integers(0, 10), st.integers(0, 6), st.integers(1, 14))
def test_tags_only_cool_down_as_time_passes(hours: list[int], daily: int, weekly: int,
                                            monthly: int) -> None:
    """What expire writes over successive runs: a backup's tag moves recent -> weekly ->
    monthly, never back (one timeline, full backups, no pins or claims)."""
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    backups = [backup(f"b{i:03d}", t0 + timedelta(hours=h), i + 1)
               for i, h in enumerate(sorted(hours))]
    cat = catalog(backups)
    policy = Policy(daily, weekly, monthly, 1)
    order = {"recent": 0, "weekly": 1, "monthly": 2}
    last: dict[str, int] = {}
    start = backups[-1].stop_time
    for day in range(0, 400, 9):
        d = decide(cat, policy, start + timedelta(days=day))
        for k in d.kept:
            tier = order[tiers.tier_of(k.reasons)]
            assert tier >= last.get(k.backup.id, 0), (k.backup.id, k.reasons)
            last[k.backup.id] = tier


# -- lifecycle rules -----------------------------------------------------------------------

def _rules(policy: Policy, **kw: Any) -> tiers.LifecyclePlan:
    return tiers.lifecycle_rules("pfx/main/", repo_cfg(**kw), policy)


def test_default_policy_without_a_monthly_class_only_aborts_uploads() -> None:
    p = _rules(Policy())
    assert [r["ID"] for r in p.rules] == ["pitr:pfx/main/:abort-multipart"]
    assert p.rules[0]["Filter"] == {"Prefix": "pfx/main/"}
    assert p.rules[0]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 3}
    assert any("monthly_storage_class" in n for n in p.notes)


def test_monthly_glacier_moves_monthly_tagged_backup_data_at_once() -> None:
    p = _rules(Policy(daily=7, weekly=4, monthly=12), backup_storage_class="STANDARD_IA",
               monthly_storage_class="GLACIER", abort_multipart_days=5)
    move = p.rules[1]
    assert move["Filter"] == {"And": {"Prefix": "pfx/main/backups/",
                                      "Tags": [{"Key": "pitr-tier", "Value": "monthly"}]}}
    assert move["Transitions"] == [{"Days": 0, "StorageClass": "GLACIER"}]
    assert p.rules[0]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 5


def test_infrequent_access_waits_the_30_days_s3_requires() -> None:
    p = _rules(Policy(monthly=3), monthly_storage_class="STANDARD_IA")
    assert p.rules[1]["Transitions"] == [{"Days": 30, "StorageClass": "STANDARD_IA"}]


def test_no_monthly_tier_means_no_transition() -> None:
    p = _rules(Policy(daily=7, weekly=4, monthly=0), monthly_storage_class="GLACIER")
    assert len(p.rules) == 1 and any("monthly = 0" in n for n in p.notes)


def test_a_monthly_class_not_colder_than_the_upload_class_moves_nothing() -> None:
    p = _rules(Policy(), backup_storage_class="GLACIER", monthly_storage_class="STANDARD_IA")
    assert len(p.rules) == 1 and any("not colder" in n for n in p.notes)


@settings(max_examples=200)
@given(daily=st.integers(0, 30), weekly=st.integers(0, 10), monthly=st.integers(0, 36),
       storage=st.sampled_from(STORAGE_CLASSES), backup_cls=st.sampled_from(STORAGE_CLASSES),
       monthly_cls=st.sampled_from(STORAGE_CLASSES), days=st.integers(1, 30),
       prefix=st.sampled_from(["", "pitr/", "a/b/"]), stanza=st.sampled_from(["main", "db-2"]))
def test_rules_follow_the_policy_and_nothing_more(daily: int, weekly: int, monthly: int,
                                                  storage: str, backup_cls: str,
                                                  monthly_cls: str, days: int, prefix: str,
                                                  stanza: str) -> None:
    key_prefix = f"{prefix}{stanza}/"
    cfg = repo_cfg(storage_class=storage, backup_storage_class=backup_cls,
                   monthly_storage_class=monthly_cls, abort_multipart_days=days)
    p = tiers.lifecycle_rules(key_prefix, cfg, Policy(daily, weekly, monthly, 1))
    assert p == tiers.lifecycle_rules(key_prefix, cfg, Policy(daily, weekly, monthly, 1))
    ids = [r["ID"] for r in p.rules]
    assert len(set(ids)) == len(ids) and all(i.startswith(p.id_prefix) for i in ids)
    for r in p.rules:
        assert r["Status"] == "Enabled"
        assert "Expiration" not in r and "NoncurrentVersionExpiration" not in r
        f = r["Filter"].get("And", r["Filter"])
        assert f["Prefix"].startswith(key_prefix)
    aborts = [r for r in p.rules if "AbortIncompleteMultipartUpload" in r]
    assert len(aborts) == 1 and aborts[0]["AbortIncompleteMultipartUpload"] == {
        "DaysAfterInitiation": days}
    moves = [r for r in p.rules if "Transitions" in r]
    uploaded = backup_cls or storage or "STANDARD"
    implied = bool(monthly > 0 and monthly_cls and tiers.CLASS_ORDER.index(monthly_cls)
                   > tiers.CLASS_ORDER.index(uploaded))
    assert bool(moves) == implied
    assert bool(p.notes) == (not implied)
    for r in moves:
        assert r["Filter"]["And"]["Tags"] == [{"Key": "pitr-tier", "Value": "monthly"}]
        assert r["Filter"]["And"]["Prefix"] == f"{key_prefix}backups/"
        (t,) = r["Transitions"]
        assert t["StorageClass"] == monthly_cls
        assert t["Days"] == tiers.MIN_TRANSITION_DAYS.get(monthly_cls, 0)


def test_merge_replaces_only_this_stanzas_rules_and_is_idempotent() -> None:
    mine = _rules(Policy(), monthly_storage_class="GLACIER")
    other_stanza = tiers.lifecycle_rules("pfx/main2/", repo_cfg(), Policy()).rules[0]
    foreign = {"ID": "logs-expire", "Filter": {"Prefix": "logs/"}, "Status": "Enabled",
               "Expiration": {"Days": 30}}
    stale = {"ID": "pitr:pfx/main/:old-rule", "Filter": {"Prefix": "pfx/main/"},
             "Status": "Enabled", "Expiration": {"Days": 1}}
    merged = tiers.merge_rules([foreign, stale, other_stanza], mine)
    assert foreign in merged and other_stanza in merged and stale not in merged
    assert [r for r in merged if r["ID"].startswith(mine.id_prefix)] == list(mine.rules)
    assert tiers.merge_rules(merged, mine) == merged


# -- thaw decision -----------------------------------------------------------------------------

def _http(t: datetime) -> str:
    return format_datetime(t, usegmt=True)


@pytest.mark.parametrize(("cls", "header", "state"), [
    ("STANDARD", None, ThawState.READABLE),
    ("GLACIER_IR", None, ThawState.READABLE),
    ("STANDARD_IA", 'ongoing-request="true"', ThawState.READABLE),
    ("GLACIER", None, ThawState.FROZEN),
    ("DEEP_ARCHIVE", "", ThawState.FROZEN),
    ("GLACIER", 'ongoing-request="true"', ThawState.THAWING),
    ("GLACIER", f'ongoing-request="false", expiry-date="{_http(NOW + timedelta(days=1))}"',
     ThawState.READABLE),
    ("GLACIER", f'ongoing-request="false", expiry-date="{_http(NOW - timedelta(seconds=1))}"',
     ThawState.FROZEN),  # the restored copy is gone again
    ("GLACIER", 'ongoing-request="false"', ThawState.FROZEN),
    ("GLACIER", "garbage", ThawState.FROZEN),
    ("DEEP_ARCHIVE", 'ongoing-request="false", expiry-date="not a date"', ThawState.FROZEN),
])
def test_thaw_state(cls: str, header: str | None, state: ThawState) -> None:
    assert thaw_state(cls, header, NOW) is state


@given(st.sampled_from(sorted(tiers.COLD_CLASSES)), st.text(max_size=80),
       st.integers(-10**6, 10**6))
def test_an_archived_object_is_readable_only_before_its_copy_expires(
        cls: str, junk: str, offset: int) -> None:
    assert thaw_state(cls, junk, NOW) is not ThawState.READABLE or "expiry-date" in junk.lower()
    expiry = NOW + timedelta(seconds=offset)
    header = f'ongoing-request="false", expiry-date="{_http(expiry)}"'
    readable = thaw_state(cls, header, NOW) is ThawState.READABLE
    assert readable == (expiry.replace(microsecond=0) > NOW)


def test_thaw_estimate_takes_the_slowest_class() -> None:
    assert tiers.thaw_estimate(["STANDARD"], "Standard") is None
    assert tiers.thaw_estimate(["GLACIER"], "Standard") == (3, 5)
    assert tiers.thaw_estimate(["GLACIER", "DEEP_ARCHIVE", "STANDARD"], "Bulk") == (5, 48)
    with pytest.raises(ValueError, match="Expedited"):
        tiers.thaw_estimate(["DEEP_ARCHIVE"], "Expedited")
    assert tiers.describe_wait((3, 5)) == "3 h to 5 h"
    assert tiers.describe_wait((0, 12)) == "up to 12 h"


# -- the thaw loop --------------------------------------------------------------------------------

@dataclass
class FakeClock:
    t: float = 0.0

    def sleep(self, s: float) -> None:
        self.t += s


class ArchiveStore:
    """S3's restore state machine: a request makes the object readable ``delay`` seconds
    later; a second request while one runs is answered RestoreAlreadyInProgress (a no-op
    for the driver)."""

    url = "s3://fake/"
    key_prefix = ""

    def __init__(self, clock: FakeClock, classes: dict[str, str], delay: float) -> None:
        self.clock, self.classes, self.delay = clock, classes, delay
        self.requested_at: dict[str, float] = {}
        self.requests: list[str] = []

    def thaw_status(self, key: str) -> tuple[str, str | None]:
        at = self.requested_at.get(key)
        if at is None:
            return self.classes[key], None
        if self.clock.t < at + self.delay:
            return self.classes[key], 'ongoing-request="true"'
        return self.classes[key], (f'ongoing-request="false", '
                                   f'expiry-date="{_http(NOW + timedelta(days=2))}"')

    def request_thaw(self, key: str, days: int, tier: str) -> None:
        self.requests.append(key)
        self.requested_at.setdefault(key, self.clock.t)

    def get_tags(self, key: str) -> dict[str, str]:
        return {}

    def set_tags(self, key: str, tags: dict[str, str]) -> None:
        pass

    def get_lifecycle(self) -> list[dict[str, Any]]:
        return []

    def put_lifecycle(self, rules: list[dict[str, Any]]) -> None:
        pass


def _run(store: ArchiveStore, clock: FakeClock, cold: tuple[tuple[str, str], ...],
         **opts: Any) -> tuple[Any, list[str]]:
    lines: list[str] = []
    res = thaw(store, cold, ThawOptions(poll=60, **opts), report=lines.append,  # type: ignore[arg-type]
               clock=lambda: clock.t, now=lambda: NOW, sleep=clock.sleep)
    return res, lines


def test_thaw_requests_each_frozen_object_once_and_waits_with_progress() -> None:
    clock = FakeClock()
    cold = (("a", "GLACIER"), ("b", "DEEP_ARCHIVE"))
    store = ArchiveStore(clock, dict(cold), delay=3 * 3600)
    res, lines = _run(store, clock, cold, tier="Standard")
    assert sorted(store.requests) == ["a", "b"]  # never asked twice while thawing
    assert res.requested == 2 and res.objects == 2
    assert 3 * 3600 <= res.seconds <= 3 * 3600 + 60
    assert "estimated 3 h to 12 h" in lines[0]
    assert lines[-1].startswith("thaw: 2/2 readable")
    assert any("0/2 readable, 2 being restored" in line for line in lines)


def test_thaw_does_not_ask_again_for_a_running_request() -> None:
    clock = FakeClock()
    cold = (("a", "GLACIER"),)
    store = ArchiveStore(clock, dict(cold), delay=600)
    store.requested_at["a"] = -300.0  # an earlier run asked
    res, _ = _run(store, clock, cold)
    assert store.requests == [] and res.requested == 0


def test_thaw_times_out_with_a_named_error_and_the_requests_keep_running() -> None:
    clock = FakeClock()
    cold = (("a", "GLACIER"),)
    store = ArchiveStore(clock, dict(cold), delay=10 * 3600)
    with pytest.raises(ThawTimeout, match="still being restored") as exc:
        _run(store, clock, cold, timeout=2 * 3600)
    assert exc.value.exit_code == 26 and "again" in (exc.value.hint or "")
    assert clock.t <= 2 * 3600 and store.requests == ["a"]


def test_thaw_refuses_a_tier_the_class_does_not_offer() -> None:
    clock = FakeClock()
    with pytest.raises(UsageError, match="Expedited"):
        _run(ArchiveStore(clock, {"a": "DEEP_ARCHIVE"}, 0), clock, (("a", "DEEP_ARCHIVE"),),
             tier="Expedited")


def test_nothing_cold_is_nothing_to_do() -> None:
    clock = FakeClock()
    res, lines = _run(ArchiveStore(clock, {}, 0), clock, ())
    assert res.objects == 0 and lines == []


# -- the planner reports archived objects ---------------------------------------------------------

def test_plan_names_archived_backup_data_and_wal_with_the_wait() -> None:
    b = pbackup("b1", 1, 2, minutes(5))
    segs = [seg(1, n, minutes(n * 5)) for n in range(1, 6)]
    segs[2] = replace(segs[2], key="w/3", storage_class="DEEP_ARCHIVE")
    cat = replace(pcatalog(segs, [b]),
                  cold_objects={"b1": (("test/backups/b1/base.tar.zst", "GLACIER"),)})
    p = plan(cat, Target(TargetKind.LATEST), minutes(60))
    assert p.cold == (("test/backups/b1/base.tar.zst", "GLACIER"), ("w/3", "DEEP_ARCHIVE"))
    assert p.thaw_estimate == (3, 12)
    note = next(n for n in p.notes if "archive storage class" in n)
    assert "1 in DEEP_ARCHIVE, 1 in GLACIER" in note and "up to 12 h" not in note
    assert "3 h to 12 h" in note and "--thaw" in note
    doc = p.to_json()
    assert doc["thaw_estimate_hours"] == [3, 12]
    assert {"key": "w/3", "storage_class": "DEEP_ARCHIVE"} in doc["archived_objects"]


def test_plan_ignores_archived_objects_it_does_not_read() -> None:
    old, new = pbackup("old", 1, 1, minutes(5)), pbackup("new", 3, 3, minutes(15))
    segs = [replace(seg(1, 1, minutes(5)), storage_class="GLACIER"),
            *[seg(1, n, minutes(n * 5)) for n in range(2, 6)]]
    cat = replace(pcatalog(segs, [old, new]),
                  cold_objects={"old": (("test/backups/old/base.tar.zst", "GLACIER"),)})
    p = plan(cat, Target(TargetKind.LATEST), minutes(60))
    assert p.backup.id == "new" and p.cold == () and p.thaw_estimate is None
    assert not any("archive storage class" in n for n in p.notes)
    assert p.to_json()["archived_objects"] == []
