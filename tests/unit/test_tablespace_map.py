"""Where a restore puts each tablespace, and what it refuses (docs/tablespaces.md)."""

from __future__ import annotations

import doctest
import os
from pathlib import Path

import pytest
from planner_catalogs import T0, backup

from pitr import restore as restore_mod
from pitr.errors import TablespaceError
from pitr.manifest import BackupRecord
from pitr.pg import basebackup as pgbb
from pitr.restore import (
    RestoreOptions,
    check_tablespace_targets,
    parse_tablespace_map,
    tablespace_targets,
)

SPACES = [{"oid": 16384, "name": "fast", "location": "/srv/fast",
           "object": "tablespace-16384.tar.zst"},
          {"oid": 16385, "name": "slow", "location": "/srv/slow/",
           "object": "tablespace-16385.tar.zst"}]


def _backup(spaces: list[dict[str, object]]) -> BackupRecord:
    b = backup("b1", 2, 3, T0)
    b.extra["tablespaces"] = spaces
    return b


def test_doctests() -> None:
    assert doctest.testmod(restore_mod).failed == 0
    assert doctest.testmod(pgbb).failed == 0


def test_the_map_parses_absolute_pairs_and_refuses_the_rest() -> None:
    assert parse_tablespace_map(["/srv/fast/=/r/fast", "/srv/slow=/r/s=low"]) == {
        "/srv/fast": "/r/fast", "/srv/slow": "/r/s=low"}
    for bad in ("/srv/fast", "srv=/r", "/srv=r", "=/r", "/srv="):
        with pytest.raises(TablespaceError):
            parse_tablespace_map([bad])
    with pytest.raises(TablespaceError, match="twice"):
        parse_tablespace_map(["/srv/a=/r/1", "/srv/a/=/r/2"])


def test_mapped_and_unmapped_tablespaces(tmp_path: Path) -> None:
    b = _backup(SPACES)
    opts = RestoreOptions(pgdata=tmp_path / "data", tablespace_map={"/srv/fast": "/r/fast"})
    got = {t.name: (t.oid, t.location, t.object, str(t.dest))
           for t in tablespace_targets(b, opts)}
    assert got == {"fast": (16384, "/srv/fast", "tablespace-16384.tar.zst", "/r/fast"),
                   "slow": (16385, "/srv/slow", "tablespace-16385.tar.zst", "/srv/slow")}


def test_a_map_naming_no_tablespace_or_sharing_a_directory_is_refused(tmp_path: Path) -> None:
    b = _backup(SPACES)
    with pytest.raises(TablespaceError, match="/srv/other, which is no tablespace location"):
        tablespace_targets(b, RestoreOptions(
            pgdata=tmp_path, tablespace_map={"/srv/other": "/r"}))
    with pytest.raises(TablespaceError, match="it has no tablespaces"):
        tablespace_targets(_backup([]), RestoreOptions(
            pgdata=tmp_path, tablespace_map={"/srv/fast": "/r"}))
    with pytest.raises(TablespaceError, match="two tablespaces"):
        tablespace_targets(b, RestoreOptions(
            pgdata=tmp_path, tablespace_map={"/srv/fast": "/srv/slow"}))


def test_the_drill_puts_every_tablespace_into_its_scratch_directory(tmp_path: Path) -> None:
    b = _backup(SPACES)
    opts = RestoreOptions(pgdata=tmp_path / "scratch" / "data", isolated=True,
                          tablespace_map={"/srv/fast": "/srv/fast"})
    dests = [t.dest for t in tablespace_targets(b, opts)]
    assert dests == [tmp_path / "scratch" / "tablespaces" / "16384",
                     tmp_path / "scratch" / "tablespaces" / "16385"]


def test_occupied_or_inside_the_data_directory_is_refused(tmp_path: Path) -> None:
    free, full = tmp_path / "free", tmp_path / "full"
    full.mkdir()
    (full / "PG_15_202209061").mkdir()
    b = _backup([{**SPACES[0], "location": str(full)}, {**SPACES[1], "location": "/x"}])
    opts = RestoreOptions(pgdata=tmp_path / "data")
    with pytest.raises(TablespaceError, match="its original location, which is not empty"):
        check_tablespace_targets(tablespace_targets(b, opts), opts)
    opts.tablespace_map = {str(full): str(free), "/x": str(tmp_path / "new" / "x")}
    check_tablespace_targets(tablespace_targets(b, opts), opts)
    opts.tablespace_map = {str(full): str(free), "/x": str(tmp_path / "data" / "ts")}
    with pytest.raises(TablespaceError, match="into the data directory"):
        check_tablespace_targets(tablespace_targets(b, opts), opts)
    (free / "f").parent.mkdir()
    (free / "f").write_text("x")
    opts.tablespace_map = {str(full): str(free)}
    with pytest.raises(TablespaceError, match=f"into {free}, which is not empty"):
        check_tablespace_targets(tablespace_targets(b, opts), opts)
    assert os.listdir(free) == ["f"]
