"""Which PostgreSQL major version a data directory, a server or a set of binaries is.

A data directory, its WAL and its base backups belong to one major version: a
server of another major refuses to start on them, and a stanza mixing two
majors could never be restored (docs/postgresql-versions.md). pitr
reads the major from the server (``server_version_num``), from ``PG_VERSION`` in
a data directory, from the WAL page magic (pitr/pg/walheader.py) and from the
binaries' ``--version``, and refuses to mix them with :class:`VersionMismatch`.
"""

from __future__ import annotations

import os
import re
import subprocess
from functools import lru_cache
from pathlib import Path

from pitr.errors import ConfigError, PostgresError, VersionMismatch

# docs/postgresql-versions.md: the majors CI runs the integration tests on
# (16 and 17 are expected to work; `pitr check` says when a cluster is neither).
TESTED_MAJORS = (15, 18)

# Debian's postgresql-common layout; postgres.bindir = "" means this, for the major
# version of the cluster (backup) or of the backup being restored.
DEBIAN_BINDIR = "/usr/lib/postgresql/{major}/bin"

# "pg_ctl (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)", "postgres (PostgreSQL) 18.6",
# "pg_basebackup (PostgreSQL) 19beta1"
_VERSION_RE = re.compile(r"\(PostgreSQL\) (\d+)")


def parse_version_output(text: str) -> int:
    m = _VERSION_RE.search(text)
    if m is None:
        raise PostgresError(f"cannot read a PostgreSQL version from {text.strip()!r}")
    return int(m.group(1))


def data_dir_major(pgdata: Path) -> int | None:
    """The major version in ``PG_VERSION`` ("15", "18"); None when the file is absent."""
    try:
        text = (pgdata / "PG_VERSION").read_text().strip()
    except FileNotFoundError:
        return None
    if not text.isdigit():
        raise PostgresError(f"{pgdata}/PG_VERSION holds {text!r}, not a major version")
    return int(text)


@lru_cache(maxsize=32)
def tool_major(tool: Path) -> int:
    """The major version of one PostgreSQL program, from its ``--version``."""
    try:
        proc = subprocess.run([str(tool), "--version"], capture_output=True, text=True,
                              timeout=30, check=False, env={**os.environ, "LC_ALL": "C"})
    except OSError as exc:
        raise PostgresError(f"cannot run {tool}: {exc.strerror}",
                            hint="set postgres.bindir to PostgreSQL's bin directory") from exc
    if proc.returncode != 0:
        raise PostgresError(f"{tool} --version failed: {proc.stderr.strip()}")
    return parse_version_output(proc.stdout)


def resolve_bindir(configured: str, major: int | None, *, what: str,
                   tool: str = "pg_ctl") -> Path:
    """The bin directory for a cluster or backup of ``major``, proven to be that major.

    ``configured`` is ``postgres.bindir``; empty picks the Debian directory of ``major``.
    ``what`` names the side the binaries must match, for the message. ``major`` is None
    or 0 for a backup whose manifest predates the field: the configuration decides.
    """
    if not major:
        if not configured:
            raise ConfigError([f"the PostgreSQL version of {what} is not recorded, and "
                               "postgres.bindir is empty"],
                              hint="set postgres.bindir to the binaries of the major version "
                                   "that took it")
        return Path(configured)
    bindir = Path(configured or DEBIAN_BINDIR.format(major=major))
    if not (bindir / tool).exists():
        where = ("postgres.bindir" if configured
                 else f"postgres.bindir is empty, so pitr looked in {bindir}, and")
        raise ConfigError([f"{where} {bindir} has no {tool} for {what} (PostgreSQL {major})"],
                          hint=f"install PostgreSQL {major}'s server binaries, or set "
                               f"postgres.bindir to their directory")
    found = tool_major(bindir / tool)
    if found != major:
        raise VersionMismatch(
            f"{what} is PostgreSQL {major}, but postgres.bindir {bindir} holds PostgreSQL "
            f"{found} binaries; a major version only runs data of its own major",
            hint=f"set postgres.bindir to PostgreSQL {major}'s bin directory (Debian: "
                 f"{DEBIAN_BINDIR.format(major=major)}), or leave it empty to pick that")
    return bindir


def require_same_major(stanza: str, recorded: int | None, found: int, source: str) -> None:
    """Refuse WAL or a backup of another major version than the stanza records."""
    if recorded and found and recorded != found:
        raise VersionMismatch(
            f"stanza {stanza!r} holds PostgreSQL {recorded} WAL and backups, but {source} is "
            f"PostgreSQL {found}; one stanza cannot mix major versions (a restore could "
            "never replay across them)",
            hint="after pg_upgrade, give the upgraded cluster a new stanza (`stanza` in "
                 "pitr.toml), run `pitr setup --apply` and take a full backup; keep the "
                 "old stanza until its retention ends")
