"""pitr/pg/version.py: reading major versions and refusing to mix them."""

from __future__ import annotations

from pathlib import Path

import pytest

from pitr.errors import ConfigError, PostgresError, VersionMismatch
from pitr.pg.version import (
    data_dir_major,
    parse_version_output,
    require_same_major,
    resolve_bindir,
)
from pitr.pg.walheader import PAGE_MAGIC_TO_VERSION


@pytest.mark.parametrize(("text", "major"), [
    ("pg_ctl (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)\n", 15),
    ("postgres (PostgreSQL) 18.6\n", 18),
    ("pg_basebackup (PostgreSQL) 19beta1\n", 19),
])
def test_parse_version_output(text: str, major: int) -> None:
    assert parse_version_output(text) == major


def test_parse_version_output_refuses_other_text() -> None:
    with pytest.raises(PostgresError):
        parse_version_output("bash: pg_ctl: command not found")


def test_data_dir_major(tmp_path: Path) -> None:
    assert data_dir_major(tmp_path) is None
    (tmp_path / "PG_VERSION").write_text("18\n")
    assert data_dir_major(tmp_path) == 18
    (tmp_path / "PG_VERSION").write_text("9.6\n")
    with pytest.raises(PostgresError):
        data_dir_major(tmp_path)


def test_same_major_passes_and_unknown_sides_are_not_judged() -> None:
    require_same_major("s", 15, 15, "x")
    require_same_major("s", None, 18, "x")  # a stanza from before the field
    require_same_major("s", 15, 0, "x")  # WAL with a page magic pitr does not know


def test_other_major_is_refused_with_a_new_stanza_hint() -> None:
    with pytest.raises(VersionMismatch) as err:
        require_same_major("main", 15, 18, "cluster 7")
    assert "PostgreSQL 15" in err.value.message and "PostgreSQL 18" in err.value.message
    assert err.value.hint is not None and "new stanza" in err.value.hint
    assert err.value.exit_code == 18


def _fake_bindir(tmp_path: Path, version: str) -> Path:
    """A bin directory whose pg_ctl is a real program printing ``version``."""
    bindir = tmp_path / f"bin-{version}"
    bindir.mkdir()
    tool = bindir / "pg_ctl"
    tool.write_text(f"#!/bin/sh\necho 'pg_ctl (PostgreSQL) {version}'\n")
    tool.chmod(0o755)
    return bindir


def test_resolve_bindir_checks_the_binaries_major(tmp_path: Path) -> None:
    b17 = _fake_bindir(tmp_path, "17.2")
    assert resolve_bindir(str(b17), 17, what="backup X") == b17
    with pytest.raises(VersionMismatch) as err:
        resolve_bindir(str(b17), 18, what="backup X")
    assert "backup X is PostgreSQL 18" in err.value.message
    assert err.value.hint is not None and "/usr/lib/postgresql/18/bin" in err.value.hint


def test_resolve_bindir_without_binaries_or_version(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="has no pg_ctl"):
        resolve_bindir(str(tmp_path), 16, what="backup X")
    with pytest.raises(ConfigError, match="/usr/lib/postgresql/99/bin"):
        resolve_bindir("", 99, what="backup X")
    # a manifest without pg_version: the configured directory is taken as is
    assert resolve_bindir(str(tmp_path), 0, what="backup X") == tmp_path
    with pytest.raises(ConfigError, match="not recorded"):
        resolve_bindir("", None, what="backup X")


def test_every_supported_major_has_its_wal_page_magic() -> None:
    # docs/postgresql-versions.md: 15 and 18 tested, 16 and 17 expected to work
    assert {15, 16, 17, 18} <= set(PAGE_MAGIC_TO_VERSION.values())
