"""catch_up repositories (docs/multiple-repositories.md): the backlog in the spool, the pure
decisions (clock passed in), archive-push recording what a catch_up repository missed,
the drain copying it from a required repository, and archive-get never taking a
catch_up repository's absence as proof. Local-directory repositories; one that cannot
work lies below a regular file (every operation on it fails, as a lost mount would)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import walbytes

from pitr.config import Config, ConfigError, RepositoryConfig, load
from pitr.errors import PitrError, WalNotFound
from pitr.monitor.health import Thresholds
from pitr.repo import Repo
from pitr.storage.fs import FsStorage
from pitr.wal.catchup import (
    Backlog,
    Lag,
    drain,
    drain_due,
    lag_of,
    lag_problem,
    try_inline,
)
from pitr.wal.fetch import archive_get, fetch_to_bytes
from pitr.wal.push import push_wal

SEG = 1 << 20
NAMES = [f"0000000100000000000000{i:02X}" for i in range(1, 6)]


def fs_repo(root: Path) -> Repo:
    return Repo(FsStorage(root), "t")


def broken(tmp_path: Path) -> Repo:
    (tmp_path / "not-a-dir").write_text("a file where the repository should be mounted")
    return Repo(FsStorage(tmp_path / "not-a-dir" / "repo"), "t")


def holds(repo: Repo, name: str) -> bool:
    return any(o.key == repo.wal_key(name) for o in repo.storage.list(repo.wal_prefix))


def segment(tmp_path: Path, name: str) -> Path:
    p = tmp_path / "pg_wal" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(walbytes.segment_bytes(name, seg_size=SEG))
    return p


# -- pure decisions -------------------------------------------------------------------

def test_lag_of_counts_and_dates_the_oldest() -> None:
    assert lag_of("r", [], 100.0) == Lag("r", 0, None, None)
    lag = lag_of("r", [(NAMES[1], 50.0), (NAMES[0], 40.0), (NAMES[2], 60.0)], 100.0)
    assert lag == Lag("r", 3, NAMES[0], 60.0)
    assert lag.to_json() == {"repository": "r", "segments": 3, "oldest": NAMES[0],
                             "oldest_age": 60.0}


@given(st.lists(st.floats(min_value=0, max_value=1e9), min_size=1, max_size=20),
       st.floats(min_value=0, max_value=2e9))
def test_lag_age_is_never_negative_and_counts_every_entry(times: list[float],
                                                          now: float) -> None:
    lag = lag_of("r", [(f"{i:024X}", t) for i, t in enumerate(times)], now)
    assert lag.segments == len(times)
    assert lag.oldest_age == max(0.0, now - min(times))


def test_lag_problem_only_past_the_threshold() -> None:
    assert lag_problem(Lag("r", 0, None, None), 10) is None
    assert lag_problem(Lag("r", 2, NAMES[0], 10.0), 10) is None
    msg = lag_problem(Lag("r", 2, NAMES[0], 10.5), 10)
    assert msg is not None and "repository r" in msg and NAMES[0] in msg
    assert lag_problem(Lag("r", 2, NAMES[0], 1e6), 0) is None  # 0: never


def test_inline_only_while_not_behind_and_drain_paced_by_the_clock() -> None:
    assert try_inline(0) and not try_inline(1)
    assert drain_due(None, 100.0, 30.0)
    assert not drain_due(90.0, 100.0, 30.0)
    assert drain_due(70.0, 100.0, 30.0)
    assert drain_due(200.0, 100.0, 30.0)  # the clock went back: do not wait for it


# -- the backlog ----------------------------------------------------------------------

def test_backlog_records_durably_once_and_reports_lag(tmp_path: Path) -> None:
    b = Backlog(tmp_path, "off")
    assert b.entries() == [] and b.lag(5.0).segments == 0
    b.add(NAMES[1], now=20.0)
    b.add(NAMES[0], now=30.0)
    b.add(NAMES[1], now=99.0)  # the first record of a name keeps its time
    b.mark_try()  # bookkeeping files are not segments
    assert b.entries() == [(NAMES[0], 30.0), (NAMES[1], 20.0)]
    assert b.lag(50.0) == Lag("off", 2, NAMES[1], 30.0)
    assert (tmp_path / "catch-up" / "off" / NAMES[0]).stat().st_mode & 0o777 == 0o600
    b.remove(NAMES[1])
    b.remove(NAMES[1])  # twice is fine
    assert [n for n, _ in b.entries()] == [NAMES[0]]
    with pytest.raises(ValueError):
        b.add("../../etc/passwd", now=1.0)  # only WAL names become file names
    (b.dir / NAMES[3]).write_text("garbage")  # unreadable: still waiting, oldest
    assert b.lag(50.0).oldest == NAMES[3]


# -- archive-push, the drain, archive-get ---------------------------------------------

def test_push_exits_once_required_holds_it_and_the_drain_fills_the_gap(
        tmp_path: Path) -> None:
    req, later = fs_repo(tmp_path / "req"), fs_repo(tmp_path / "later")
    down = broken(tmp_path)
    backlog = Backlog(tmp_path / "spool", "later")
    for name in NAMES[:3]:
        result = push_wal([req], segment(tmp_path, name), level=1, budget=1,
                          catch_up=[(down, backlog)])
        assert result.status == "stored"
    assert [n for n, _ in backlog.entries()] == NAMES[:3]
    # the WAL files are gone (PostgreSQL recycled them): the drain copies from req
    for name in NAMES[:3]:
        (tmp_path / "pg_wal" / name).unlink()
    assert drain(backlog, [req], down).error is not None  # still down: stays queued
    assert len(backlog.entries()) == 3
    res = drain(backlog, [req], later)
    assert res.copied == 3 and res.error is None and backlog.entries() == []
    for name in NAMES[:3]:
        assert fetch_to_bytes(later, name, budget=1) == fetch_to_bytes(req, name, budget=1)
    assert later.read_identity().system_id == req.read_identity().system_id  # type: ignore[union-attr]


def test_push_while_behind_queues_without_trying_and_the_deadline_bounds_a_drain(
        tmp_path: Path) -> None:
    req, cu = fs_repo(tmp_path / "req"), fs_repo(tmp_path / "cu")
    backlog = Backlog(tmp_path / "spool", "cu")
    backlog.add(NAMES[0], now=1.0)  # behind already
    push_wal([req], segment(tmp_path, NAMES[0]), level=1, budget=1, catch_up=[(cu, backlog)])
    push_wal([req], segment(tmp_path, NAMES[1]), level=1, budget=1, catch_up=[(cu, backlog)])
    assert not holds(cu, NAMES[1])  # not offered: left to the drain
    ticks = iter([0.0, 10.0])
    res = drain(backlog, [req], cu, deadline=5.0, clock=lambda: next(ticks))
    assert res.copied == 1 and [n for n, _ in backlog.entries()] == [NAMES[1]]
    # a catch_up repository that keeps up is stored inline, no backlog
    assert drain(backlog, [req], cu).copied == 1
    push_wal([req], segment(tmp_path, NAMES[2]), level=1, budget=1, catch_up=[(cu, backlog)])
    assert holds(cu, NAMES[2]) and backlog.entries() == []


def test_a_failing_required_repository_fails_the_push_and_queues_nothing(
        tmp_path: Path) -> None:
    backlog = Backlog(tmp_path / "spool", "cu")
    with pytest.raises(PitrError):
        push_wal([broken(tmp_path)], segment(tmp_path, NAMES[0]), level=1, budget=1,
                 catch_up=[(fs_repo(tmp_path / "cu"), backlog)])
    assert backlog.entries() == []


def test_the_drain_refuses_other_content_under_the_name(tmp_path: Path) -> None:
    req, cu = fs_repo(tmp_path / "req"), fs_repo(tmp_path / "cu")
    push_wal([req], segment(tmp_path, NAMES[0]), level=1, budget=1)
    other = tmp_path / "other"
    raw = bytearray(walbytes.segment_bytes(NAMES[0], seg_size=SEG))
    raw[-1] ^= 1
    (other / "pg_wal").mkdir(parents=True)
    (other / "pg_wal" / NAMES[0]).write_bytes(bytes(raw))
    push_wal([cu], other / "pg_wal" / NAMES[0], level=1, budget=1)
    backlog = Backlog(tmp_path / "spool", "cu")
    backlog.add(NAMES[0], now=1.0)
    assert "other content" in (drain(backlog, [req], cu).error or "")
    assert len(backlog.entries()) == 1  # kept: an operator must look


def test_archive_get_never_takes_a_catch_up_absence_as_proof(tmp_path: Path) -> None:
    req, cu = fs_repo(tmp_path / "req"), fs_repo(tmp_path / "cu")
    push_wal([req, cu], segment(tmp_path, NAMES[0]), level=1, budget=1)
    d = tmp_path / "data"
    (d / "pg_wal").mkdir(parents=True)
    walbytes.write_pg_control(d, walbytes.SYSID)
    dest = d / "pg_wal" / "RECOVERYXLOG"
    # required proves absent: absent, whatever the catch_up one says or cannot say
    with pytest.raises(WalNotFound):
        archive_get([req, cu], NAMES[1], dest, datadir=d, budget=1, catch_up=[False, True])
    with pytest.raises(WalNotFound):
        archive_get([broken(tmp_path), req], NAMES[1], dest, datadir=d, budget=1,
                    catch_up=[True, False])
    # the catch_up one serves what it has when the required one cannot answer
    archive_get([broken(tmp_path), cu], NAMES[0], dest, datadir=d, budget=1,
                catch_up=[False, True])
    assert dest.read_bytes() == (tmp_path / "pg_wal" / NAMES[0]).read_bytes()
    # ... but its absence is not proof: unknown
    with pytest.raises(PitrError) as err:
        archive_get([broken(tmp_path), cu], NAMES[1], dest, datadir=d, budget=1,
                    catch_up=[False, True])
    assert not isinstance(err.value, WalNotFound)
    # a restore plan that chose the catch_up repository gets no authority from it either
    with pytest.raises(PitrError) as err:
        archive_get([cu, broken(tmp_path)], NAMES[1], dest, datadir=d, budget=1,
                    planned=True, catch_up=[True, False])
    assert not isinstance(err.value, WalNotFound)


# -- config and health ----------------------------------------------------------------

def test_config_refuses_no_required_repository(tmp_path: Path) -> None:
    cfg = tmp_path / "pitr.toml"
    cfg.write_text('[repository]\nurl = "file:///tmp/a"\nmode = "catch_up"\n')
    with pytest.raises(ConfigError, match="at least one"):
        load(str(cfg), env={})
    cfg.write_text('[repository]\nurl = "file:///tmp/a"\n[[repositories]]\nname = "b"\n'
                   'url = "file:///tmp/b"\nmode = "catch_up"\n')
    loaded = load(str(cfg), env={})
    assert [rc.name for rc in loaded.required_repositories] == ["repo1"]
    assert [rc.name for rc in loaded.catch_up_repositories] == ["b"]
    assert loaded.archive_target == "file:///tmp/a"  # the receipt vouches for required only
    cfg.write_text('[repository]\nurl = "file:///tmp/a"\nmode = "sometimes"\n')
    with pytest.raises(ConfigError, match="mode"):
        load(str(cfg), env={})
    assert Config(repository=RepositoryConfig()).repository.mode == "required"


def test_health_metrics_and_alerts_report_the_lag() -> None:
    from datetime import UTC, datetime

    from pitr.catalog import Catalog
    from pitr.monitor.health import evaluate
    from pitr.monitor.metrics import render
    from pitr.monitor.watch import AlertWatcher

    th = Thresholds(1e9, 1e9, 1000, 0, 0, max_catch_up_lag=60)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    cat = Catalog(stanza="t", system_id=None)
    ok = evaluate(cat, None, None, th, now, catch_up=[Lag("off", 0, None, None)])
    late = evaluate(cat, None, None, th, now, catch_up=[Lag("off", 4, NAMES[0], 61.0)])
    assert "catch_up_lag" not in {f.name for f in ok.findings}
    assert "catch_up_lag" in {f.name for f in late.findings} and not late.healthy
    assert late.to_dict()["catch_up"][0]["segments"] == 4
    text = render(late).decode()
    assert 'pitr_repository_wal_lag_segments{repo="off",stanza="t"} 4.0' in text
    assert 'pitr_repository_wal_lag_seconds{repo="off",stanza="t"} 61.0' in text
    sent: list[str] = []
    watcher = AlertWatcher(Config(), send=lambda _c, ev, _t, _f: sent.append(ev) or True)
    watcher.observe(late)
    watcher.observe(ok)
    assert "catch_up_lag" in sent and "catch_up_lag_resolved" in sent


def test_a_segment_gone_from_every_required_repository_does_not_block_the_rest(
        tmp_path: Path) -> None:
    req, cu = fs_repo(tmp_path / "req"), fs_repo(tmp_path / "cu")
    backlog = Backlog(tmp_path / "spool", "cu")
    for name in NAMES[:2]:
        push_wal([req], segment(tmp_path, name), level=1, budget=1)
        backlog.add(name, now=1.0)
    req.storage.delete([req.wal_key(NAMES[0])])  # expired while cu was behind
    res = drain(backlog, [req], cu)
    assert res.missing == [NAMES[0]] and res.copied == 1 and res.error is None
    assert [n for n, _ in backlog.entries()] == [NAMES[0]]  # still reported as lag
    assert holds(cu, NAMES[1]) and not holds(cu, NAMES[0])
