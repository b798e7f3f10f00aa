"""`pitr check`: is this cluster really being archived where the config says?

Each check yields one :class:`CheckResult`; later checks that depend on a
failed one are reported as skipped instead of failing with a confusing reason.
The last check is end-to-end: switch WAL and wait until that very segment is
in the repository, which proves archive_command, pitr and the repository work
together as the PostgreSQL user.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from pitr.errors import ConfigError, NotFound, PitrError

if TYPE_CHECKING:
    from pitr.config import Config
    from pitr.repo import Repo

Status = Literal["ok", "FAIL", "skip", "WARN"]  # WARN: worth fixing, exit code unaffected


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    hint: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fail(name: str, err: PitrError | str, hint: str = "") -> CheckResult:
    if isinstance(err, PitrError):
        return CheckResult(name, "FAIL", " ".join(err.message.split()), hint or err.hint or "")
    return CheckResult(name, "FAIL", err, hint)


def check_version(cfg: Config, repo: Repo | None, major: int) -> CheckResult:
    """The server's major version against the stanza's and the binaries'
    (docs/postgresql-versions.md)."""
    from pitr.pg.version import TESTED_MAJORS, require_same_major, resolve_bindir

    try:
        ident = repo.read_identity() if repo is not None else None
        if ident is not None:
            require_same_major(cfg.stanza, ident.pg_version, major, "postgres.dsn's cluster")
        bindir = resolve_bindir(cfg.postgres.bindir, major, tool="pg_basebackup",
                                what="postgres.dsn's cluster")
    except PitrError as exc:
        return _fail("version", exc)
    recorded = "not yet recorded" if ident is None else f"recorded {ident.pg_version}"
    tested = "" if major in TESTED_MAJORS else (
        f" (pitr is tested on {' and '.join(map(str, TESTED_MAJORS))}; run `pitr verify`)")
    return CheckResult("version", "ok", f"PostgreSQL {major} (stanza: {recorded}), "
                       f"binaries {bindir}{tested}")


def check_repository(repo: Repo, *, conditional_writes: bool = True) -> CheckResult:
    """Write a probe object, write it again conditionally (which must be refused), read it
    back and delete it.

    ``conditional_writes``: repository.conditional_writes; when false the user knows the
    server ignores If-None-Match, so an accepted second write is said, not failed.
    """
    from pitr.condwrites import WHAT_BREAKS, refusal, second_put_refused
    from pitr.storage.base import put_bytes, read_bytes

    key = repo.probe_key("probe", uuid.uuid4().hex)
    payload = b"pitr check probe\n"
    try:
        put_bytes(repo.storage, key, payload, if_absent=True)
        try:
            refused = second_put_refused(repo.storage, key)
            if not refused and conditional_writes:
                err = refusal(repo.storage.url)
                return _fail("repository", err.message, err.hint or "")
            if refused and read_bytes(repo.storage, key) != payload:
                return _fail("repository", f"{repo.storage.url}: probe object read back "
                             "different bytes", "the storage is not returning what was stored")
        finally:
            repo.storage.delete([key])
    except PitrError as exc:
        return _fail("repository", exc, "check repository.url, credentials and permissions")
    if not refused:
        return CheckResult("repository", "ok", f"{repo.storage.url} is reachable and writable; "
                           "WARNING: it ignores conditional writes (repository.conditional_writes"
                           f" = false), so {WHAT_BREAKS}")
    return CheckResult("repository", "ok", f"{repo.storage.url} is reachable and writable, and "
                       "refuses to overwrite with a conditional write")


def check_encryption(repo: Repo) -> CheckResult:
    """The stanza's encryption against this host's keys: new objects would be written the
    stanza's way, and the configured keys open the newest backup's manifest
    (docs/encryption.md; the archive check opens the newest WAL segment)."""
    from pitr.storage.base import read_bytes

    name = "encryption"
    keyring = repo.sealed.keyring
    try:
        ident = repo.read_identity()
        sealing = repo.sealed.sealing()
        manifests = [o.key for o in repo.storage.list(repo.backups_prefix)
                     if o.key.endswith("/manifest.json")]
        if manifests:
            read_bytes(repo.storage, max(manifests))
    except PitrError as exc:
        return _fail(name, exc)
    opened = f"; the newest manifest {max(manifests)} opens" if manifests else ""
    if sealing is None:
        if ident is not None and ident.encrypted:  # pragma: no cover - sealing() refused it
            return _fail(name, "the stanza is encrypted but this host has no key")
        return CheckResult(name, "ok", f"off (no key configured){opened}")
    assert keyring is not None
    return CheckResult(name, "ok", f"on: new objects sealed with key {keyring.current_id}; "
                       f"keys configured: {', '.join(keyring.ids)}{opened}")


def check_settings(s: dict[str, str], proof_dir: str | None = None) -> list[CheckResult]:
    """Pure: judge wal_level, archive_mode and archive_command values.

    ``proof_dir``: where the agent of this config leaves proofs for
    pitr/archive-push.sh; an archive_command naming another one still archives
    correctly, only through the slower Python path, so it is said, not failed.
    """
    out = []
    level = s.get("wal_level", "?")
    out.append(CheckResult("wal_level", "ok", level) if level in ("replica", "logical") else
               CheckResult("wal_level", "FAIL", f"wal_level is {level!r}",
                           "set wal_level = replica and restart PostgreSQL"))
    mode = s.get("archive_mode", "?")
    out.append(CheckResult("archive_mode", "ok", mode) if mode in ("on", "always") else
               CheckResult("archive_mode", "FAIL", f"archive_mode is {mode!r}",
                           "set archive_mode = on and restart PostgreSQL"))
    cmd = s.get("archive_command", "")
    if "pitr" in cmd and "archive-push" in cmd and "%p" in cmd:
        if proof_dir is not None and "archive-push.sh" in cmd and proof_dir not in cmd:
            cmd += (f" (its proof directory is not {proof_dir}, so the agent's answers "
                    "take the slower Python path: run `pitr setup --apply`)")
        out.append(CheckResult("archive_command", "ok", cmd))
    else:
        out.append(CheckResult("archive_command", "FAIL", f"archive_command is {cmd!r}",
                               "set archive_command = '/path/to/pitr archive-push %p' "
                               "(add --config FILE if not /etc/pitr/pitr.toml) and reload"))
    return out


def check_mode(cfg: Config) -> CheckResult:
    """Which archiving mode is in effect (docs/archiving-modes.md); informational."""
    from pitr.monitor.collect import read_agent_status
    from pitr.wal.modes import UNKNOWN, current

    agent = read_agent_status(cfg)
    mode = current(cfg, agent.mode if agent is not None and agent.state != "stopped" else None)
    if mode["mode"] == UNKNOWN:
        return CheckResult("archiving_mode", "WARN", mode["detail"],
                           "run pitr check as the OS user that runs PostgreSQL")
    return CheckResult("archiving_mode", "ok", mode["detail"])


def check_archiving(repos: Repo | Sequence[Repo], conn: Any, *, timeout: float,
                    sleep: Callable[[float], None] = time.sleep) -> CheckResult:
    """pg_switch_wal(), then wait until that segment is in the repository (in every one of
    ``repos``: archive-push exits 0 only once it is durable in all of them)."""
    waiting = list(repos) if isinstance(repos, Sequence) else [repos]
    from pitr.pg import conn as pgconn
    from pitr.wal.fetch import fetch_to_bytes

    name = "archive"
    try:
        if pgconn.scalar(conn, "select pg_is_in_recovery()"):
            return CheckResult(name, "skip", "server is in recovery: pg_switch_wal() is not "
                               "possible here; run pitr check on the primary")
        # The switch returns the end of the segment it completed; with nothing written
        # since the last switch that is a segment boundary, which pg_walfile_name names
        # as the segment before it on 15 but as the still-open one after it on 18.
        # One byte back names the completed segment on every major.
        segment = str(pgconn.scalar(conn, "select pg_walfile_name(pg_switch_wal() - 1)"))
    except PitrError as exc:
        return _fail(name, exc, "pg_switch_wal() needs superuser or an explicit GRANT")
    where = "the repository" if len(waiting) == 1 else f"all {len(waiting)} repositories"
    deadline = time.monotonic() + timeout
    while True:
        for repo in list(waiting):
            try:
                # Read back through the configured keys: proves they open the newest WAL
                # (one GET; a missing segment is NotFound, so no stat before it)
                fetch_to_bytes(repo, segment, budget=max(30.0, deadline - time.monotonic()))
                waiting.remove(repo)
            except NotFound:
                pass
            except PitrError as exc:
                return _fail(name, exc)
        if not waiting:
            return CheckResult(name, "ok", f"switched to a new segment; {segment} arrived "
                               f"in {where} and reads back intact")
        if time.monotonic() >= deadline:
            break
        sleep(0.5)
    hint = "see the PostgreSQL server log for archive_command errors"
    try:
        row = pgconn.query(conn, "select last_failed_wal, last_failed_time from pg_stat_archiver")
        if row and row[0][0]:
            hint = (f"pg_stat_archiver: last failure was {row[0][0]} at {row[0][1]}; " + hint)
    except PitrError:
        pass
    missing = where if where == "the repository" else ", ".join(r.storage.url for r in waiting)
    return _fail(name, f"{segment} did not reach {missing} within {timeout:g}s", hint)


def run_checks(load: Callable[[], Config], *, archive_timeout: float) -> list[CheckResult]:
    """Every check, in order; never raises for a failed check."""
    from pitr.pg import conn as pgconn
    from pitr.repo import Repo

    results: list[CheckResult] = []
    try:
        cfg = load()
    except ConfigError as exc:
        return [_fail("config", "; ".join(exc.problems), exc.hint or "")]
    results.append(CheckResult("config", "ok", f"stanza {cfg.stanza!r}, " + ", ".join(
        rc.url for rc in cfg.all_repositories)))
    from pitr.config import exposed_secrets_warning

    exposed = exposed_secrets_warning(cfg)
    if exposed:
        detail, _, hint = exposed.partition(": chmod")
        results.append(CheckResult("config_file_mode", "WARN", detail, "chmod" + hint))

    # Every repository on its own (docs/multiple-repositories.md): one that is down fails
    # its own line; archive-push needs every required one, so the archive check then is
    # skipped (a catch_up repository is filled later: the archive check does not wait
    # for it).
    several = len(cfg.all_repositories) > 1
    repos: list[Repo] = []
    required = {rc.name for rc in cfg.required_repositories}
    for rc in cfg.all_repositories:
        name = f"repository {rc.name}" if several else "repository"
        try:
            one = Repo.open(cfg.for_repository(rc))
        except PitrError as exc:
            results.append(_fail(name, exc))
            continue
        res = check_repository(one, conditional_writes=rc.conditional_writes)
        results.append(dataclasses.replace(res, name=name))
        if res.status != "ok":
            continue
        enc = check_encryption(one)
        results.append(dataclasses.replace(
            enc, name=f"encryption {rc.name}" if several else enc.name))
        if enc.status == "ok" and rc.name in required:
            repos.append(one)
    repo_ok = len(repos) == len(required)
    repo = repos[0] if repos else None

    try:
        conn = pgconn.connect(cfg.postgres.dsn)
    except PitrError as exc:
        results.append(_fail("postgres", exc))
        results += [CheckResult(n, "skip", "PostgreSQL not reachable")
                    for n in ("wal_level", "archive_mode", "archive_command", "archive")]
        return results
    with conn:
        version = pgconn.scalar(conn, "show server_version")
        results.append(CheckResult("postgres", "ok", f"connected, server version {version}"))
        major = int(pgconn.scalar(conn, "select current_setting('server_version_num')::int"))
        results.append(check_version(cfg, repo if repo_ok else None, major // 10000))
        from pitr.setup import proof_dir_of

        settings = check_settings(pgconn.settings(
            conn, ["wal_level", "archive_mode", "archive_command"]), proof_dir_of(cfg))
        results += settings
        results.append(check_mode(cfg))
        if repo_ok and all(r.status == "ok" for r in settings):
            results.append(check_archiving(repos, conn, timeout=archive_timeout))
        else:
            results.append(CheckResult("archive", "skip", "fix the failures above first"))
    return results
