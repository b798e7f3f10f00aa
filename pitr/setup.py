"""`pitr setup`: make a running cluster archive through pitr.

Three steps, each safe to repeat: (1) compare the server's settings with what
pitr needs and, with ``apply``, write the difference through ``ALTER SYSTEM``
and reload; (2) claim the stanza in the repository for this cluster
(``repo.json``: system id, major version, segment size); (3) run `pitr check`.
Settings PostgreSQL only reads at start (``wal_level``, ``archive_mode``,
``max_wal_senders``) make setup report a restart as needed; it never restarts
a server itself, and the check then stays pending until the operator has.

The decision (:func:`plan_settings`) is pure; the I/O sits in :func:`run_setup`.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pitr.config import Config
from pitr.configfile import config_file
from pitr.errors import ConfigError, PitrError, PostgresError

# name -> why pitr needs it (printed next to each change)
REASONS = {
    "wal_level": "archiving needs at least 'replica'",
    "archive_mode": "PostgreSQL runs archive_command only with archive_mode on",
    "archive_command": "hands every finished WAL segment to pitr",
    "archive_timeout": "bounds data loss on a quiet server: a segment closes at least this often",
    "max_wal_senders": "pitr backup streams through pg_basebackup (a WAL sender)",
    "restore_command": "used by restored clusters and standbys to fetch WAL from the repository",
    # PostgreSQL 17+ only (docs/incremental-backups.md); a reload is enough
    "summarize_wal": "pitr backup --incremental needs WAL summaries (PostgreSQL 17+)",
}
SUMMARIZE_WAL_MAJOR = 17
DEFAULT_ARCHIVE_TIMEOUT = "60s"
MIN_WAL_SENDERS = 3


@dataclass(frozen=True)
class ServerSetting:
    name: str
    value: str  # as SHOW prints it (archive_timeout '0' or '1min')
    context: str  # pg_settings.context: 'postmaster' settings need a restart


@dataclass(frozen=True)
class SettingChange:
    name: str
    current: str
    wanted: str
    change: bool
    needs_restart: bool
    reason: str


ARCHIVE_PUSH_SH = Path(__file__).with_name("archive-push.sh")


def archive_commands(exe: str, config_path: str,
                     proof_dir: str | None = None) -> tuple[str, str]:
    """(archive_command, restore_command) as PostgreSQL should run them.

    Absolute paths, shell-quoted (PostgreSQL hands the command to /bin/sh), and
    no credentials: the command line is visible in `ps` and pg_settings. With
    ``proof_dir`` (the agent's proofs for the configured repository),
    archive-push goes through pitr/archive-push.sh, which answers a segment the
    agent already stored without starting Python and runs the same
    `pitr archive-push` otherwise.
    """
    base = f"{shlex.quote(exe)} --config {shlex.quote(config_path)}"
    push = f"{base} archive-push %p"
    if proof_dir is not None:
        push = (f"/bin/sh {shlex.quote(str(ARCHIVE_PUSH_SH))} {shlex.quote(proof_dir)} %p "
                f"{base}")
    return push, f"{base} archive-get %f %p"


def proof_dir_of(cfg: Config) -> str:
    from pitr.wal.spool import Spool

    return str(Spool(cfg.archive.spool_dir, cfg.stanza).proof_dir(cfg.archive_target))


def plan_settings(current: Mapping[str, ServerSetting], archive_command: str,
                  restore_command: str, major: int = 0) -> list[SettingChange]:
    """What to change so the server archives through pitr. PURE.

    Values that already satisfy pitr are kept (``logical`` is more than
    ``replica``; ``always`` archives on standbys too; a non-zero
    archive_timeout is the operator's choice).
    """
    def get(name: str) -> ServerSetting:
        return current.get(name) or ServerSetting(name, "", "sighup")

    wanted: dict[str, str] = {}
    if get("wal_level").value == "minimal":
        wanted["wal_level"] = "replica"
    if get("archive_mode").value not in ("on", "always"):
        wanted["archive_mode"] = "on"
    wanted["archive_command"] = archive_command
    if get("archive_timeout").value in ("0", ""):
        wanted["archive_timeout"] = DEFAULT_ARCHIVE_TIMEOUT
    try:
        senders = int(get("max_wal_senders").value)
    except ValueError:
        senders = 0
    if senders < MIN_WAL_SENDERS:
        wanted["max_wal_senders"] = "10"
    wanted["restore_command"] = restore_command
    if major >= SUMMARIZE_WAL_MAJOR:
        wanted["summarize_wal"] = "on"

    changes = []
    for name in REASONS:
        if name == "summarize_wal" and major < SUMMARIZE_WAL_MAJOR:
            continue
        cur = get(name)
        want = wanted.get(name, cur.value)
        change = want != cur.value
        changes.append(SettingChange(name, cur.value, want, change,
                                     change and cur.context == "postmaster", REASONS[name]))
    return changes


def conf_snippet(changes: list[SettingChange]) -> str:
    """postgresql.conf lines for every setting pitr needs (for a manual edit)."""
    def quote(v: str) -> str:
        return "'" + v.replace("'", "''") + "'"

    return "\n".join(f"{c.name} = {quote(c.wanted)}" for c in changes) + "\n"


@dataclass
class ClusterFacts:
    system_id: int
    version_num: int
    segment_size: int
    settings: dict[str, ServerSetting]

    @property
    def major(self) -> int:
        return self.version_num // 10000


@dataclass
class SetupReport:
    applied: bool
    cluster: dict[str, Any]
    settings: list[dict[str, Any]]
    restart_needed: bool
    stanza: dict[str, Any]
    check: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    snippet: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pitr_executable() -> str:
    """The absolute path of the `pitr` PostgreSQL should run (not resolved through
    symlinks, so /usr/local/bin/pitr keeps pointing at whatever is installed)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "pitr" and os.path.isfile(argv0):
        return os.path.abspath(argv0)
    beside = Path(sys.executable).parent / "pitr"
    if beside.is_file():
        return str(beside)
    raise ConfigError(["cannot tell where the pitr executable is"],
                      hint="pass --exe /absolute/path/to/pitr")


def config_file_path(explicit: str | None, env: Mapping[str, str] | None = None) -> str:
    """Absolute path of the config file PostgreSQL's archive_command must name.

    The archiver does not see this shell's environment, so a configuration made
    only of PITR_* variables would not reach it: a file is required.
    """
    path = Path(config_file(explicit, env)[0]).absolute()
    if not path.is_file():
        raise ConfigError(
            [f"pitr setup needs a config file; {path} does not exist"],
            hint="write one (see conf/pitr.toml) and pass it with --config: PostgreSQL's "
                 "archive_command names it, and does not see this shell's PITR_* variables")
    return str(path)


def read_cluster(conn: Any) -> ClusterFacts:
    from pitr.pg import conn as pgconn

    if not pgconn.scalar(conn, "select rolsuper from pg_roles where rolname = current_user"):
        raise PostgresError("pitr setup needs a superuser connection (ALTER SYSTEM, "
                            "pg_control_system())",
                            hint="point postgres.dsn at a superuser, e.g. user=postgres")
    system_id = int(pgconn.scalar(conn, "select system_identifier from pg_control_system()"))
    version_num, seg_size = pgconn.query(
        conn, "select current_setting('server_version_num')::int, "
              "pg_size_bytes(current_setting('wal_segment_size'))")[0]
    rows = pgconn.query(conn, "select name, current_setting(name), context from pg_settings "
                              "where name = any(%s)", [list(REASONS)])
    settings = {str(n): ServerSetting(str(n), str(v), str(c)) for n, v, c in rows}
    if settings.get("archive_command", ServerSetting("", "", "")).value == "(disabled)":
        # SHOW hides archive_command while archive_mode is off; the files say what it is.
        row = pgconn.query(conn, "select setting from pg_file_settings where name = "
                                 "'archive_command' and error is null order by seqno desc "
                                 "limit 1")
        settings["archive_command"] = ServerSetting(
            "archive_command", str(row[0][0]) if row else "", "sighup")
    return ClusterFacts(system_id, int(version_num), int(seg_size), settings)


def apply_settings(conn: Any, changes: list[SettingChange]) -> None:
    import psycopg
    from psycopg import sql

    try:
        with conn.cursor() as cur:
            for c in changes:
                if c.change:
                    # ALTER SYSTEM takes no bind parameters: quote the literal client-side.
                    cur.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        sql.Identifier(c.name), sql.Literal(c.wanted)))
            cur.execute("select pg_reload_conf()")
    except psycopg.Error as exc:
        raise PostgresError(f"ALTER SYSTEM failed: {' '.join(str(exc).split())}") from exc


def env_secret_warnings(cfg: Config) -> list[str]:
    from pitr.config import schema

    out = []
    for info in schema():
        src = cfg.sources.get(info.dotted, "")
        if src.startswith("env") and (info.secret or info.section == "repository"):
            out.append(f"{info.dotted} comes from the environment ({src}); PostgreSQL's "
                       "archiver will not see it unless the server's own environment sets "
                       "it too: prefer the config file (mode 0600) or the AWS credential chain")
    return out


def replaced_command_warnings(changes: list[SettingChange]) -> list[str]:
    """Say so when setup replaces another tool's archive/restore command. PURE."""
    out = []
    for c in changes:
        if (c.change and c.name in ("archive_command", "restore_command")
                and c.current not in ("", "(disabled)") and "pitr" not in c.current):
            out.append(f"{c.name} {c.current!r} is replaced: WAL no longer goes where it "
                       "went before; keep both only if you chain them in a script")
    return out


CheckRunner = Callable[[Config], dict[str, Any]]


def run_setup(cfg: Config, *, config_path: str, exe: str, apply: bool,
              run_check: CheckRunner | None) -> SetupReport:
    archive_cmd, restore_cmd = archive_commands(exe, config_path, proof_dir_of(cfg))
    from pitr.pg import conn as pgconn

    conn = pgconn.connect(cfg.postgres.dsn, application_name="pitr setup")
    try:
        facts = read_cluster(conn)
        changes = plan_settings(facts.settings, archive_cmd, restore_cmd, facts.major)
        if apply:
            apply_settings(conn, changes)
    finally:
        conn.close()
    restart = any(c.needs_restart for c in changes)
    stanza = _stanza(cfg, facts, create=apply)
    if not apply:
        check = {"status": "skipped", "reason": "dry run: nothing was written (use --apply)"}
    elif restart:
        check = {"status": "pending",
                 "reason": "restart PostgreSQL, then run `pitr check`"}
    elif run_check is None:
        check = {"status": "skipped", "reason": "no check available"}
    else:
        check = run_check(cfg)
    return SetupReport(
        applied=apply,
        cluster={"system_id": str(facts.system_id), "version_num": facts.version_num,
                 "segment_size": facts.segment_size},
        settings=[asdict(c) for c in changes],
        restart_needed=restart,
        stanza=stanza,
        check=check,
        warnings=env_secret_warnings(cfg) + replaced_command_warnings(changes),
        snippet=conf_snippet(changes),
    )


def _stanza(cfg: Config, facts: ClusterFacts, *, create: bool) -> dict[str, Any]:
    from pitr.repo import Repo

    repo = Repo.open(cfg)
    doc: dict[str, Any] = {"name": cfg.stanza, "url": cfg.repository.url}
    existing = repo.read_identity()
    if existing is not None and (existing.system_id != str(facts.system_id) or (
            existing.pg_version and existing.pg_version != facts.major)):
        # ensure_identity raises the explained mismatch; a dry run must too.
        repo.ensure_identity(facts.system_id, facts.major, facts.segment_size)
    if create:
        from pitr.condwrites import require_conditional_writes

        require_conditional_writes(cfg, repo.storage)  # the repo.json claim rests on it
        ident = repo.ensure_identity(facts.system_id, facts.major, facts.segment_size)
        doc.update(status="exists" if existing else "created", system_id=ident.system_id)
    else:
        doc.update(status="exists" if existing else "absent (created by --apply)")
    return doc


def check_failed(report: SetupReport) -> PitrError | None:
    from pitr.errors import CheckFailed

    if report.check.get("status") == "failed":
        return CheckFailed("pitr setup: the settings are in place, but `pitr check` failed",
                           hint="see the failed checks above")
    return None
