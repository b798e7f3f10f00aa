"""Backup chains (pitr/chains.py) and what the planner, retention and pg_basebackup's
error mapping make of them: pure logic on in-memory catalogs, with hypothesis over random
chain histories (docs/incremental-backups.md)."""

from __future__ import annotations

import dataclasses
import io
import tarfile
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from retention_builders import SEG, T0, catalog, segs

from pitr.chains import (
    BACKUP_MANIFEST_OBJECT,
    chain_of,
    chains,
    choose_parent,
    full_is_due,
)
from pitr.errors import IncrementalError, PlanError
from pitr.manifest import BackupObject, BackupRecord
from pitr.pg.basebackup import BaseBackupOptions, BaseBackupProcess, TarMemberCapture
from pitr.planner import plan
from pitr.retention import Policy, apply_to_catalog, decide
from pitr.targets import Target, TargetKind

OBJS = (BackupObject("base.tar.zst", "k", 1, 1, "0" * 64),
        BackupObject(BACKUP_MANIFEST_OBJECT, "m", 1, 1, "0" * 64))


def rec(bid: str, day: float, parent: str | None = None, *, tli: int = 1,
        objects: tuple[BackupObject, ...] = OBJS, pinned: bool = False) -> BackupRecord:
    """A backup stopping ``day`` days after T0, its WAL in segment int(day * 4) + 1."""
    stop = T0 + timedelta(days=day)
    seg = int(day * 4) + 1
    return BackupRecord(
        id=bid, label="scheduled", start_lsn=seg * SEG + 0x28, stop_lsn=seg * SEG + 0x138,
        start_time=stop - timedelta(minutes=5), stop_time=stop, timeline=tli,
        system_id="7000000000000000001", pg_version=18, db_size=10, raw_bytes=10,
        stored_bytes=10, objects=objects, pinned=pinned,
        extra={"parent": parent} if parent else {})


def test_chain_of_a_whole_and_of_a_broken_chain() -> None:
    a, b, c = rec("a", 0), rec("b", 1, "a"), rec("c", 2, "b")
    cat = catalog([a, c])  # b is gone
    whole = chain_of(c, {x.id: x for x in (a, b, c)})
    assert whole.whole and whole.ids == ("a", "b", "c") and whole.root is a
    broken = chain_of(c, {x.id: x for x in cat.backups}, cat)
    assert not broken.whole and broken.ids == ("c",)
    assert broken.problem == "backup c is incremental on backup b, but it is not in the repository"
    damaged = dataclasses.replace(cat, damaged_backups=("b",))
    assert "its manifest is damaged" in str(chains(damaged.backups, damaged)["c"].problem)
    no_manifest = rec("a", 0, objects=OBJS[:1])
    assert "kept no backup_manifest" in str(
        chain_of(b, {"a": no_manifest, "b": b}).problem)
    late = rec("a", 3)  # a "parent" that stopped after its child started
    assert "stopped after it started" in str(chain_of(b, {"a": late, "b": b}).problem)


def test_choose_parent_says_why_not() -> None:
    a, b = rec("a", 0), rec("b", 1, "a")
    cat = catalog([a, b])
    ok = choose_parent(cat, major=18, summarize_wal="on", server_compression=False, timeline=1)
    assert ok.parent is b and "chain a <- b" in ok.why
    for kwargs, why in [
        ({"major": 15}, "PostgreSQL 15; incremental backups need PostgreSQL 17"),
        ({"summarize_wal": "off"}, "summarize_wal is off"),
        ({"server_compression": True}, "server_compression"),
        ({"timeline": 2}, "the cluster now runs on timeline 2"),
    ]:
        args = {"major": 18, "summarize_wal": "on", "server_compression": False,
                "timeline": 1, **kwargs}
        d = choose_parent(cat, **args)  # type: ignore[arg-type]
        assert d.parent is None and why in d.why, (kwargs, d.why)
    assert "no completed backup" in choose_parent(
        catalog([]), major=18, summarize_wal="on", server_compression=False, timeline=1).why
    newer_damaged = dataclasses.replace(cat, damaged_backups=("c",))
    assert "backup c, newer" in choose_parent(
        newer_damaged, major=18, summarize_wal="on", server_compression=False, timeline=1).why


def test_full_is_due() -> None:
    a = rec("a", 0)
    week = 7 * 86400.0
    assert not full_is_due(a, a.start_time + timedelta(days=6, hours=22), week)
    assert full_is_due(a, a.start_time + timedelta(days=7), week)
    # the next week's run started a few seconds earlier in the day: still the full one
    assert full_is_due(a, a.start_time + timedelta(days=7, seconds=-40), week)
    assert full_is_due(a, a.start_time + timedelta(hours=23, minutes=59), 86400)
    assert full_is_due(a, a.start_time, 0)


def _plan(cat: object, **kw: object) -> object:
    return plan(cat, Target(TargetKind.LATEST), T0 + timedelta(days=30), **kw)  # type: ignore[arg-type]


def test_the_planner_restores_a_whole_chain_and_refuses_a_broken_one() -> None:
    a, b, c = rec("a", 0), rec("b", 1, "a"), rec("c", 2, "b")
    wal = {1: segs(1, 0, 20)}
    p = _plan(catalog([a, b, c], wal))
    assert [x.id for x in p.backups] == ["a", "b", "c"]  # type: ignore[attr-defined]
    assert p.backup.id == "c" and p.backup_bytes == 30  # type: ignore[attr-defined]
    # b damaged: c cannot be restored; the plan falls back to a, and says why
    cat = dataclasses.replace(catalog([a, c], wal), damaged_backups=("b",))
    p = _plan(cat)
    assert p.backup.id == "a" and p.chain == ()  # type: ignore[attr-defined]
    assert any("backup c is skipped" in n for n in p.notes)  # type: ignore[attr-defined]
    with pytest.raises(PlanError, match="backup c cannot be restored: backup c is incremental "
                                        "on backup b, but its manifest is damaged"):
        _plan(cat, backup_id="c")
    # nothing whole at all: refused, naming the reason
    with pytest.raises(PlanError, match="can be restored: backup c is incremental"):
        _plan(dataclasses.replace(catalog([c], wal), damaged_backups=("b",)))


def test_incremental_refusals_of_postgresql_become_incremental_errors() -> None:
    opts = BaseBackupOptions(bindir="/x", dsn="host=/tmp", label="l",
                             incremental_manifest="/tmp/m")
    proc = BaseBackupProcess(opts, 60)
    proc.stderr_tail.append(
        "pg_basebackup: error: could not initiate base backup: ERROR:  WAL summaries are "
        "required on timeline 1 from 0/2000028 to 0/9000028, but the summaries for that "
        "timeline and LSN range are incomplete")
    err = proc.failure(1)
    assert isinstance(err, IncrementalError) and "take a full backup" in str(err.hint)
    # the same words from a full backup are a plain BackupError
    full = BaseBackupProcess(dataclasses.replace(opts, incremental_manifest=None), 60)
    full.stderr_tail.extend(proc.stderr_tail)
    assert not isinstance(full.failure(1), IncrementalError)


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@given(sizes=st.lists(st.integers(0, 3000), max_size=5), manifest=st.binary(max_size=5000),
       chunk=st.integers(1, 2000))
@settings(max_examples=60, deadline=None)
def test_tar_member_capture_finds_the_manifest_whatever_the_chunking(
        sizes: list[int], manifest: bytes, chunk: int) -> None:
    members = [(f"base/{i}/backup_manifest", b"y" * n) for i, n in enumerate(sizes)]
    data = _tar([*members, ("backup_manifest", manifest)])
    cap = TarMemberCapture("backup_manifest")
    for i in range(0, len(data), chunk):
        cap.feed(data[i:i + chunk])
    assert cap.found and cap.value() == manifest


# -- retention over random chain histories ---------------------------------------------

@st.composite
def chain_histories(draw: st.DrawFn) -> list[BackupRecord]:
    """Backups in time order; each is full, or incremental on the one before it."""
    n = draw(st.integers(1, 30))
    gaps = draw(st.lists(st.floats(0.25, 9), min_size=n, max_size=n))
    out: list[BackupRecord] = []
    day = 0.0
    for i, g in enumerate(gaps):
        day += g
        incr = bool(out) and draw(st.booleans())
        out.append(rec(f"b{i:02d}", day, out[-1].id if incr else None,
                       pinned=draw(st.integers(0, 9)) == 0))
    return out


policies = st.builds(Policy, st.integers(0, 5), st.integers(0, 4), st.integers(0, 3),
                     st.integers(0, 3))


@given(history=chain_histories(), policy=policies, later=st.floats(0, 40))
@settings(max_examples=150, deadline=None)
def test_retention_never_deletes_a_parent_of_a_kept_backup(
        history: list[BackupRecord], policy: Policy, later: float) -> None:
    now = history[-1].stop_time + timedelta(days=later)
    wal = {1: segs(1, 0, int(history[-1].stop_lsn // SEG) + 2)}
    cat = catalog(history, wal)
    d = decide(cat, policy, now)
    kept = d.kept_ids
    by_id = {b.id: b for b in history}
    for i in kept:
        assert chain_of(by_id[i], {k: by_id[k] for k in kept}).whole, i
    assert history[-1].id in kept  # the newest restorable backup
    assert {b.id for b in history if b.pinned} <= kept
    # a backup kept only because a kept one depends on it says so
    for k in d.kept:
        if k.reasons == ("chain",):
            assert any(by_id[j].parent == k.backup.id for j in kept)
    # deciding again after applying it keeps the same and deletes nothing more
    again = decide(apply_to_catalog(cat, d), policy, now)
    assert again.kept_ids == kept and not again.deleted


def test_tiers_count_restore_points_and_a_broken_chain_is_left_alone() -> None:
    # a full backup on day 0, incrementals on days 1..3; daily=1 keeps day 3's, and with it
    # the whole chain (reason "chain"); weekly/monthly count the first restore point
    h = [rec("a", 0), rec("b", 1, "a"), rec("c", 2, "b"), rec("d", 3, "c")]
    wal = {1: segs(1, 0, 20)}
    d = decide(catalog(h, wal), Policy(daily=1, weekly=0, monthly=0, min_backups=1),
               T0 + timedelta(days=3, hours=12))
    assert {k.backup.id: k.reasons for k in d.kept} == {
        "a": ("chain",), "b": ("chain",), "c": ("chain",),
        "d": ("newest", "latest_timeline", "min_backups", "daily")}
    # c's parent b damaged: c and d are left alone (neither kept nor deleted), a is newest
    cat = dataclasses.replace(catalog([h[0], h[2], h[3]], wal), damaged_backups=("b",))
    d = decide(cat, Policy(0, 0, 0, 1), T0 + timedelta(days=4))
    assert d.kept_ids == {"a"} and not d.deleted
    assert any("backup c is left alone" in n for n in d.notes)


def test_a_pinned_incremental_keeps_its_chain() -> None:
    h = [rec("a", 0), rec("b", 1, "a", pinned=True), rec("c", 20), rec("d", 21)]
    d = decide(catalog(h, {1: segs(1, 0, 100)}), Policy(0, 0, 0, 1),
               datetime(2025, 3, 1, tzinfo=T0.tzinfo))
    assert d.kept_ids == {"a", "b", "d"} and {x.id for x in d.deleted} == {"c"}
