"""A pg_verifybackup that cannot run is said, never passed over in silence
(docs/incremental-backups.md "The drill")."""

from __future__ import annotations

import getpass
import os
from pathlib import Path

from pitr.restore import Owner, RestoreResult, _verifybackup


def _owner() -> Owner:
    return Owner(getpass.getuser(), os.getuid(), os.getgid())


def test_no_manifest_is_recorded_as_unverified(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "pg_verifybackup").write_text("#!/bin/sh\nexit 99\n")  # must not be run
    (bindir / "pg_verifybackup").chmod(0o755)
    d = tmp_path / "pgdata"
    d.mkdir()
    result = RestoreResult(d, bindir=bindir)
    _verifybackup(bindir, d, _owner(), result)
    assert result.verified == ()
    assert result.unverified == (("pgdata", result.unverified[0][1]),)
    assert "no backup_manifest" in result.unverified[0][1]


def test_missing_tool_is_recorded_as_unverified(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    d = tmp_path / "pgdata"
    d.mkdir()
    (d / "backup_manifest").write_text("{}")
    result = RestoreResult(d, bindir=bindir)
    _verifybackup(bindir, d, _owner(), result)
    assert result.verified == ()
    assert result.unverified and "has no pg_verifybackup" in result.unverified[0][1]
