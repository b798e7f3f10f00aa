"""Configuration: TOML file, then ``PITR_<TABLE>_<KEY>`` environment, then flags.

The schema is the dataclasses below; each field's metadata carries its doc
text and whether it is secret, so `config show`, `config check` and the
reference in docs/configuration.md are all generated from this one place. Loading collects every
problem before failing, so a user fixes a file in one pass.

This module must stay cheap to import (stdlib only): archive-push's fast path
loads the config on every WAL segment.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pitr.configfile import config_file
from pitr.errors import ConfigError

ENV_PREFIX = "PITR_"
MASK = "********"


def _f(default: Any, doc: str, *, secret: bool = False, choices: tuple[str, ...] = ()) -> Any:
    return field(default=default, metadata={"doc": doc, "secret": secret, "choices": choices})


class Duration(float):
    """Seconds; written in TOML/env as a number or as '90s', '15m', '26h', '7d'."""


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> Duration:
    if isinstance(value, bool):
        raise ValueError("expected a duration")
    if isinstance(value, int | float):
        return Duration(value)
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ValueError(f"expected a duration like 90s, 15m, 26h or 7d, got {value!r}")
    return Duration(float(m.group(1)) * _UNIT[m.group(2)])


# S3 storage classes pitr can put objects in (docs/storage-tiers.md); "" is the default.
STORAGE_CLASSES = ("", "STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
                   "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE")


@dataclass(frozen=True)
class RepositoryConfig:
    name: str = _f("repo1", "name of this repository in messages, `--repo NAME`, status and "
                   "metrics; each of the further repositories ([[repositories]] tables, "
                   "docs/multiple-repositories.md) needs its own")
    url: str = _f("file:///var/lib/pitr/repo",
                  "where backups and WAL go: file:///path or s3://bucket/prefix")
    endpoint_url: str = _f("", "S3 endpoint for non-AWS servers, e.g. http://127.0.0.1:8333")
    region: str = _f("", "S3 region (default: from the AWS credential chain, else us-east-1)")
    path_style: bool = _f(False, "use path-style S3 addressing (most non-AWS servers need it)")
    access_key_id: str = _f("", "S3 access key; empty means the standard AWS credential chain",
                            secret=True)
    secret_access_key: str = _f("", "S3 secret key; empty means the standard AWS credential chain",
                                secret=True)
    session_token: str = _f("", "S3 session token for temporary credentials", secret=True)
    verify_tls: bool = _f(True, "verify the S3 server's TLS certificate")
    ca_bundle: str = _f("", "path of a CA bundle to verify the S3 server's certificate with")
    storage_class: str = _f("", "S3 storage class for new objects (empty: the bucket default)")
    wal_storage_class: str = _f("", "S3 storage class of WAL segments and .partial files "
                                "(history and .backup files stay in storage_class, plans "
                                "read them; empty: storage_class); see "
                                "docs/storage-tiers.md", choices=STORAGE_CLASSES)
    backup_storage_class: str = _f("", "S3 storage class of backup data, the tar (its "
                                   "manifest.json and backup_manifest copy stay in "
                                   "storage_class: listings and incremental backups read "
                                   "them; empty: storage_class)", choices=STORAGE_CLASSES)
    monthly_storage_class: str = _f("", "S3 storage class that backup data kept only by the "
                                    "monthly tier moves to, by the rule `pitr lifecycle` "
                                    "writes (tag pitr-tier=monthly; empty: no transition)",
                                    choices=STORAGE_CLASSES)
    abort_multipart_days: int = _f(3, "`pitr lifecycle`: abort multipart uploads left "
                                   "unfinished this many days (longer than any backup's "
                                   "upload)")
    sse: str = _f("", "S3 server-side encryption", choices=("", "AES256", "aws:kms"))
    sse_kms_key_id: str = _f("", "KMS key id when sse = 'aws:kms'")
    timeout: Duration = _f(Duration(60), "retry budget of one repository operation before "
                           "giving up (archive-push then exits so PostgreSQL retries later)")
    request_timeout: Duration = _f(Duration(15), "timeout of one S3 request (connect and read)")
    upload_concurrency: int = _f(4, "parallel part uploads for large S3 objects")
    part_size_mib: int = _f(16, "S3 multipart part size in MiB (5..5120)")
    upload_checksum: str = _f("crc32", "checksum the S3 server verifies on every single-request "
                              "upload: crc32 (x-amz-checksum-crc32, 5x cheaper) or md5 "
                              "(Content-MD5, for servers that do not know the former); "
                              "multipart parts always carry Content-MD5",
                              choices=("crc32", "md5"))
    mode: str = _f("required", "required: archive-push exits 0 only once a segment is durable "
                   "here; catch_up: one this repository did not take is queued in the spool "
                   "and copied here later from a required repository; at least one is "
                   "required (see docs/multiple-repositories.md)",
                   choices=("required", "catch_up"))
    conditional_writes: bool = _f(True, "require proof that the S3 server refuses a second "
                                  "conditional write (If-None-Match); false runs on a server "
                                  "that ignores it, without never-overwrite and the stanza "
                                  "lock, and status then warns")


@dataclass(frozen=True)
class PostgresConfig:
    pgdata: str = _f("", "data directory of the cluster pitr protects")
    dsn: str = _f("", "libpq connection string for checks and backups, e.g. "
                  "'host=/var/run/postgresql port=5432 user=postgres'")
    bindir: str = _f("", "directory of pg_basebackup, pg_ctl, pg_waldump; empty: "
                     "/usr/lib/postgresql/<major>/bin for the major version of the cluster "
                     "(backup) or of the backup (restore, verify); pitr refuses binaries of "
                     "another major")
    user: str = _f("postgres", "OS user that runs PostgreSQL (owner of restored data)")


@dataclass(frozen=True)
class CompressionConfig:
    level: int = _f(1, "zstd level, 1 (fastest) to 19 (smallest); 1 costs about 40 % less "
                    "CPU than 3 and stores base backups as small (WAL about 10 % larger)")
    threads: int = _f(0, "zstd worker threads for base backups (0: single-threaded)")


@dataclass(frozen=True)
class ArchiveConfig:
    spool_dir: str = _f("/var/lib/pitr/spool", "local spool for the agent's receipts and "
                        "archive-get prefetch (outside pg_wal; per stanza below it)")
    prefetch: int = _f(8, "WAL segments archive-get fetches ahead in the background")
    fast_path_wait: Duration = _f(Duration(2), "how long archive-push waits for a running agent "
                                  "to store a segment before pushing it itself")
    workers: int = _f(4, "agent: segments pushed in parallel")
    agent_idle_exit: Duration = _f(Duration(60), "archive-push starts an agent when none "
                                   "runs; it exits after this long without work (0: never "
                                   "start one, push synchronously unless `pitr agent` runs)")


@dataclass(frozen=True)
class BackupConfig:
    expire_after: bool = _f(True, "run `pitr expire` after each successful scheduled backup")
    server_compression: bool = _f(False, "compress on the server (pg_basebackup "
                                  "--compress=server-zstd) instead of in pitr")
    lock_stale_after: Duration = _f(Duration(6 * 3600), "a backup lock of another host is "
                                    "taken over once its lease expired this long ago (same "
                                    "host: once its process is gone)")
    lock_lease: Duration = _f(Duration(60), "lease of the stanza lock (and of restore/verify "
                              "claims: twice this): renewed every third of it while its holder "
                              "works")
    wal_timeout: Duration = _f(Duration(600), "how long a backup waits for the WAL it needs "
                               "(up to its stop point) to be archived before it fails")
    full_interval: Duration = _f(Duration(7 * 86400), "scheduled backups (--label scheduled) "
                                 "on PostgreSQL 17+ are incremental until the chain's full "
                                 "backup is this old, then full (0: always full; see "
                                 "docs/incremental-backups.md)")


@dataclass(frozen=True)
class RetentionConfig:
    daily: int = _f(7, "keep the newest backup of each of the last N days (UTC calendar days "
                    "by stop time, today included; 0: off)")
    weekly: int = _f(4, "keep the first backup of each of the last N ISO weeks (this week "
                     "included; 0: off)")
    monthly: int = _f(12, "keep the first backup of each of the last N months (this month "
                      "included; 0: off)")
    min_backups: int = _f(1, "always keep the newest N completed backups, so never fewer "
                          "than N")


@dataclass(frozen=True)
class VerifyConfig:
    scratch_dir: str = _f("", "where the restore drill builds its scratch cluster "
                          "(empty: a temporary directory)")
    timeout: Duration = _f(Duration(3600), "give up on a drill after this long")
    checks: tuple[dict[str, Any], ...] = _f((), "user checks: [[verify.check]] tables with "
                                            "database, query, and min/max/equals")
    dbuser: str = _f("", "database role the drill's checks connect as (empty: the user in "
                     "postgres.dsn, else 'postgres')")
    amcheck: bool = _f(True, "run amcheck's bt_index_check on every btree index when the "
                       "extension is available")
    heapallindexed: bool = _f(False, "amcheck also verifies every heap tuple is indexed "
                              "(thorough, much slower)")


@dataclass(frozen=True)
class MonitorConfig:
    listen: str = _f("127.0.0.1", "address of the health/metrics HTTP endpoint")
    port: int = _f(9187, "port of the health/metrics HTTP endpoint (0: disabled)")
    max_backup_age: Duration = _f(Duration(26 * 3600), "unhealthy when the newest backup is older")
    max_archive_lag: Duration = _f(Duration(900), "unhealthy when the oldest WAL segment waiting "
                                   "for archiving (agent), else the newest archived one, is older")
    max_backlog: int = _f(64, "unhealthy (and alert) when more WAL segments than this wait "
                          "to be archived")
    max_catch_up_lag: Duration = _f(Duration(3600), "unhealthy (and alert) when the oldest "
                                    "WAL segment waiting for a catch_up repository is older "
                                    "(docs/multiple-repositories.md)")
    max_archive_failures: int = _f(3, "unhealthy (and alert) after this many archive attempts "
                                   "in a row failed (0: never)")
    max_verify_age: Duration = _f(Duration(35 * 86400), "warn when the last restore drill is "
                                  "older (0: never)")
    refresh: Duration = _f(Duration(15), "the HTTP endpoint re-reads the repository at most "
                           "this often; ages are always computed at request time")
    alert_interval: Duration = _f(Duration(60), "`pitr serve`/agent: how often archive "
                                  "backlog and failure streaks are checked for alerts")
    webhook_url: str = _f("", "Slack-compatible webhook for alerts (empty: no alerts)",
                          secret=True)


@dataclass(frozen=True)
class LogConfig:
    format: str = _f("auto", "log format", choices=("auto", "text", "json"))
    level: str = _f("info", "log level", choices=("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class EncryptionConfig:
    key: str = _f("", "the repository key itself, base64 (set it as PITR_ENCRYPTION_KEY in the "
                  "environment, not in this file); one of key, key_file, key_command",
                  secret=True)
    key_file: str = _f("", "file holding the repository key, base64 of 32 bytes, mode 0600 "
                       "(`pitr key generate FILE` writes one)")
    key_command: str = _f("", "command (run with /bin/sh) that prints the repository key, "
                          "e.g. from Vault, a KMS or a password manager")
    old_key_files: str = _f("", "comma-separated key files of earlier keys, to read objects "
                            "sealed before `pitr key rotate` (not needed after --rewrap)")


@dataclass(frozen=True)
class Config:
    stanza: str = _f("main", "name of this cluster's area in the repository")
    repository: RepositoryConfig = field(default_factory=RepositoryConfig)
    postgres: PostgresConfig = field(default_factory=PostgresConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    log: LogConfig = field(default_factory=LogConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    # further repositories ([[repositories]] tables, file only): docs/multiple-repositories.md
    repositories: tuple[RepositoryConfig, ...] = ()
    # key ("stanza", "repository.url") -> where its value came from
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    # a further repository's own [retention] / [encryption] keys, by repository name
    # (``[repositories.retention]`` inside its table): docs/multiple-repositories.md
    repository_sections: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(
        default_factory=dict, compare=False, repr=False)

    @property
    def spool_path(self) -> Path:
        return Path(self.archive.spool_dir) / self.stanza

    @property
    def all_repositories(self) -> tuple[RepositoryConfig, ...]:
        """``[repository]`` first, then every ``[[repositories]]`` table in file order."""
        return (self.repository, *self.repositories)

    def repository_named(self, name: str) -> RepositoryConfig:
        for rc in self.all_repositories:
            if rc.name == name:
                return rc
        known = ", ".join(rc.name for rc in self.all_repositories)
        raise ConfigError([f"--repo {name!r}: no repository has that name (configured: "
                           f"{known})"])

    def for_repository(self, rc: RepositoryConfig | str) -> Config:
        """This config with ``rc`` as its only repository: every single-repository piece
        (Repo.open, the catalog cache, the conditional-write memo) then serves ``rc``."""
        if isinstance(rc, str):
            rc = self.repository_named(rc)
        own = self.repository_sections.get(rc.name, {}) if rc != self.repository else {}
        changed = {s: dataclasses.replace(getattr(self, s), **kw) for s, kw in own.items()}
        return dataclasses.replace(self, repository=rc, repositories=(),
                                   repository_sections={}, **changed)

    @property
    def required_repositories(self) -> tuple[RepositoryConfig, ...]:
        """The repositories a segment must be durable in before archive-push exits 0."""
        return tuple(rc for rc in self.all_repositories if rc.mode == "required")

    @property
    def catch_up_repositories(self) -> tuple[RepositoryConfig, ...]:
        """The repositories filled later from the spool's backlog when they missed a segment."""
        return tuple(rc for rc in self.all_repositories if rc.mode == "catch_up")

    @property
    def catch_up_budget(self) -> float:
        """How long archive-push offers a segment to the catch_up repositories: the
        longest of their own ``timeout``s (0 without any)."""
        return max((float(rc.timeout) for rc in self.catch_up_repositories), default=0.0)

    @property
    def archive_target(self) -> str:
        """What an agent's receipt and proof vouch for: the repository URL, or with several
        repositories every URL a segment must be durable in before archive-push exits 0, so
        a proof made for another set of repositories never answers (docs/design-fast-path.md).
        A catch_up repository is not in it: its share is the backlog's, not the receipt's."""
        return "\n".join(rc.url for rc in self.required_repositories)


_NOT_SECTIONS = ("stanza", "sources", "repositories", "repository_sections")
SECTIONS: dict[str, type] = {
    f.name: f.type if isinstance(f.type, type) else typing.get_type_hints(Config)[f.name]
    for f in dataclasses.fields(Config)
    if f.name not in _NOT_SECTIONS
}
# TOML writes the verify checks as [[verify.check]]; the model calls them `checks`.
_ALIASES = {("verify", "check"): "checks"}


@dataclass(frozen=True)
class KeyInfo:
    section: str  # "" for top-level keys
    name: str
    type: Any
    default: Any
    doc: str
    secret: bool
    choices: tuple[str, ...]

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dotted.replace(".", "_").upper()


def schema() -> list[KeyInfo]:
    """Every configurable key, in file order: the source of docs, env names, masking."""
    keys: list[KeyInfo] = []
    top_hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        if f.name in ("sources", "repositories", "repository_sections"):
            continue
        if f.name in SECTIONS:
            cls = SECTIONS[f.name]
            hints = typing.get_type_hints(cls)
            for sf in dataclasses.fields(cls):
                keys.append(KeyInfo(f.name, sf.name, hints[sf.name], sf.default,
                                    sf.metadata["doc"], sf.metadata["secret"],
                                    sf.metadata["choices"]))
        else:
            keys.append(KeyInfo("", f.name, top_hints[f.name], f.default, f.metadata["doc"],
                                f.metadata["secret"], f.metadata["choices"]))
    return keys


def _coerce(info: KeyInfo, raw: Any, from_text: bool) -> Any:
    t = info.type
    if t is bool:
        if isinstance(raw, bool):
            return raw
        if from_text and str(raw).strip().lower() in ("1", "true", "yes", "on"):
            return True
        if from_text and str(raw).strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if t is int:
        if isinstance(raw, bool):
            raise ValueError(f"expected an integer, got {raw!r}")
        if isinstance(raw, int):
            return raw
        if from_text:
            try:
                return int(str(raw).strip())
            except ValueError:
                pass
        raise ValueError(f"expected an integer, got {raw!r}")
    if t is Duration:
        return parse_duration(raw)
    if t is str:
        if isinstance(raw, str):
            return raw
        raise ValueError(f"expected a string, got {raw!r}")
    if typing.get_origin(t) is tuple:
        if from_text:
            raise ValueError("can only be set in the config file")
        if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
            raise ValueError("expected an array of tables")
        return tuple(raw)
    raise ValueError(f"unsupported type {t!r}")  # pragma: no cover - schema bug


# sections a further repository may set for itself ([[repositories]] sub-tables)
PER_REPOSITORY_SECTIONS = ("retention", "encryption")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,31}$")


def _validate_repository(where: str, rc: RepositoryConfig) -> list[str]:
    problems: list[str] = []
    url = rc.url
    if not (url.startswith("file:///") or re.match(r"^s3://[a-z0-9][a-z0-9.\-]{1,62}(/|$)", url)):
        problems.append(f"{where}.url: expected file:///absolute/path or s3://bucket/prefix, "
                        f"got {url!r}")
    if not _NAME_RE.match(rc.name):
        problems.append(f"{where}.name: use 1-32 lower-case letters, digits, '-' or '_', "
                        f"got {rc.name!r}")
    if not 5 <= rc.part_size_mib <= 5120:
        problems.append(f"{where}.part_size_mib: must be 5..5120")
    if rc.abort_multipart_days < 1:
        problems.append(f"{where}.abort_multipart_days: must be at least 1")
    if rc.timeout <= 0:
        problems.append(f"{where}.timeout: must be positive")
    if (rc.access_key_id == "") != (rc.secret_access_key == ""):
        problems.append(f"{where}.access_key_id/secret_access_key: set both or neither")
    return problems


def _validate(cfg: Config) -> list[str]:
    problems = _validate_repository("repository", cfg.repository)
    seen: dict[str, str] = {cfg.repository.name: "repository",
                            # two entries for one place would count one copy twice
                            f"{cfg.repository.url}\0{cfg.repository.endpoint_url}": "repository"}
    for rc in cfg.repositories:
        where = f"repositories.{rc.name}"
        problems += _validate_repository(where, rc)
        for key, what in ((rc.name, "name"), (f"{rc.url}\0{rc.endpoint_url}", "url")):
            if key in seen:
                problems.append(f"{where}: the same {what} as {seen[key]}; each repository "
                                "must be its own place with its own name")
            seen[key] = where
    if not any(rc.mode == "required" for rc in cfg.all_repositories):
        problems.append("repositories: every repository is mode = \"catch_up\"; at least one "
                        "must be required, or archive-push would vouch for a segment no "
                        "repository holds")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$", cfg.stanza):
        problems.append(f"stanza: use letters, digits, '-', '_' or '.', got {cfg.stanza!r}")
    if not 1 <= cfg.compression.level <= 22:
        problems.append(f"compression.level: must be 1..22, got {cfg.compression.level}")
    if cfg.archive.prefetch < 0 or cfg.archive.workers < 1:
        problems.append("archive.prefetch must be >= 0 and archive.workers >= 1")
    for name in ("daily", "weekly", "monthly", "min_backups"):
        if getattr(cfg.retention, name) < 0:
            problems.append(f"retention.{name}: must be >= 0")
    if cfg.retention.min_backups < 1:
        problems.append("retention.min_backups: must be at least 1")
    for i, check in enumerate(cfg.verify.checks):
        if not isinstance(check.get("query"), str):
            problems.append(f"verify.check[{i}]: needs a query (SQL returning one value)")
        if not set(check) & {"min", "max", "equals"}:
            problems.append(f"verify.check[{i}]: needs a condition: min, max or equals")
    return problems


def _further_repositories(raw: Any, by_section: Mapping[tuple[str, str], KeyInfo],
                          source_name: str, problems: list[str],
                          sources: dict[str, str],
                          sections: dict[str, dict[str, dict[str, Any]]]
                          ) -> list[tuple[str, dict[str, Any]]]:
    """The ``[[repositories]]`` tables: the keys of ``[repository]``, each table named,
    and the repository's own ``retention`` / ``encryption`` sub-tables (into ``sections``).

    File only: environment variables and flags set the first repository's keys; the
    further ones take credentials from the file or the AWS credential chain."""
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        problems.append(f"repositories ({source_name}): expected [[repositories]] tables")
        return []
    out: list[tuple[str, dict[str, Any]]] = []
    for i, table in enumerate(raw):
        name = table.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"repositories[{i}] ({source_name}): needs a name")
            continue
        kwargs: dict[str, Any] = {}
        for key, sub in table.items():
            if key in PER_REPOSITORY_SECTIONS and isinstance(sub, dict):
                own = sections.setdefault(name, {}).setdefault(str(key), {})
                for k, v in sub.items():
                    info = by_section.get((str(key), str(k)))
                    where = f"repositories.{name}.{key}.{k}"
                    if info is None:
                        problems.append(f"{where} ({source_name}): unknown key")
                        continue
                    try:
                        own[str(k)] = _coerce(info, v, False)
                    except ValueError as exc:
                        shown = "invalid value (not shown: secret)" if info.secret else exc
                        problems.append(f"{where} ({source_name}): {shown}")
                        continue
                    sources[where] = source_name
                continue
            info = by_section.get(("repository", str(key)))
            where = f"repositories.{name}.{key}"
            if info is None:
                problems.append(f"{where} ({source_name}): unknown key")
                continue
            try:
                value = _coerce(info, sub, False)
            except ValueError as exc:
                problems.append(f"{where} ({source_name}): "
                                f"{'invalid value (not shown: secret)' if info.secret else exc}")
                continue
            if info.choices and value not in info.choices:
                problems.append(f"{where} ({source_name}): must be one of "
                                f"{', '.join(repr(c) for c in info.choices)}, got {value!r}")
                continue
            kwargs[str(key)] = value
            sources[where] = source_name
        out.append((name, kwargs))
    return out


def load(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective configuration.

    ``path``: explicit file (must exist); else ``$PITR_CONFIG``; else the default
    path if it exists; else defaults only. ``overrides``: dotted key -> value from flags.
    """
    env = os.environ if env is None else env
    problems: list[str] = []
    data: dict[str, Any] = {}
    source_name = ""
    name, explicit = config_file(None if path is None else str(path), env)
    file = Path(name)
    try:
        with open(file, "rb") as fh:
            data = tomllib.load(fh)
        source_name = f"file {file}"
    except FileNotFoundError:
        if explicit:
            problems.append(f"config file {file} does not exist")
    except PermissionError:
        problems.append(f"config file {file} is not readable by this user")
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"config file {file}: {exc}")

    keys = schema()
    by_section = {(k.section, k.name): k for k in keys}
    values: dict[tuple[str, str], Any] = {}
    sources: dict[str, str] = {}

    def put(info: KeyInfo, raw: Any, origin: str, from_text: bool) -> None:
        try:
            value = _coerce(info, raw, from_text)
        except ValueError as exc:
            # A mistyped secret must not be echoed back in the problem list.
            reason = "invalid value (not shown: secret)" if info.secret else str(exc)
            problems.append(f"{info.dotted} ({origin}): {reason}")
            return
        if info.choices and value not in info.choices:
            problems.append(f"{info.dotted} ({origin}): must be one of "
                            f"{', '.join(repr(c) for c in info.choices)}, got {value!r}")
            return
        values[(info.section, info.name)] = value
        sources[info.dotted] = origin

    extra: list[tuple[str, dict[str, Any]]] = []
    own_sections: dict[str, dict[str, dict[str, Any]]] = {}
    for name, raw in data.items():
        if name == "repositories":
            extra = _further_repositories(raw, by_section, source_name, problems, sources,
                                          own_sections)
        elif isinstance(raw, dict) and name in SECTIONS:
            for key, sub in raw.items():
                key = _ALIASES.get((name, str(key)), str(key))
                info = by_section.get((name, key))
                if info is None:
                    problems.append(f"{name}.{key} ({source_name}): unknown key")
                else:
                    put(info, sub, source_name, False)
        elif ("", name) in by_section:
            put(by_section[("", name)], raw, source_name, False)
        else:
            problems.append(f"{name} ({source_name}): unknown key")

    known_env = {k.env: k for k in keys}
    for var, raw in env.items():
        # PITR_TEST_* / PITR_KEEP_TEST_DIRS belong to the test harness, not to pitr.
        if (not var.startswith(ENV_PREFIX) or var in ("PITR_CONFIG", "PITR_DEBUG",
                                                      "PITR_KEEP_TEST_DIRS")
                or var.startswith("PITR_TEST_")):
            continue
        info = known_env.get(var)
        if info is None:
            problems.append(f"{var} (environment): not a pitr setting")
        else:
            put(info, raw, f"env {var}", True)

    for dotted, raw in (overrides or {}).items():
        section, _, name = dotted.rpartition(".")
        info = by_section.get((section, name))
        if info is None:  # pragma: no cover - programming error in the CLI
            raise KeyError(dotted)
        if raw is not None:
            put(info, raw, "flag", False)

    top_kwargs: dict[str, Any] = {}
    section_kwargs: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for (section, name), value in values.items():
        (section_kwargs[section] if section else top_kwargs)[name] = value
    cfg = Config(**top_kwargs, **{s: SECTIONS[s](**kw) for s, kw in section_kwargs.items()},
                 repositories=tuple(RepositoryConfig(**kw) for _, kw in extra),
                 sources=sources, repository_sections=own_sections)
    problems.extend(_validate(cfg))
    for rc in cfg.repositories:  # a repository's own retention is checked like [retention]
        if rc.name in own_sections:
            mine = _validate(cfg.for_repository(rc))
            problems.extend(f"repositories.{rc.name}: {p}" for p in mine
                            if p.split(".", 1)[0] in own_sections[rc.name])
    if problems:
        raise ConfigError(problems)
    return cfg


def effective(cfg: Config, *, reveal: bool = False) -> list[tuple[str, Any, str]]:
    """(dotted key, value, source) for every key; secrets masked unless ``reveal``."""
    rows = []
    for info in schema():
        section = getattr(cfg, info.section) if info.section else cfg
        value = getattr(section, info.name)
        if info.secret and value and not reveal:
            value = MASK
        rows.append((info.dotted, value, cfg.sources.get(info.dotted, "default")))
    for rc in cfg.repositories:
        for section, kw in cfg.repository_sections.get(rc.name, {}).items():
            for name, value in kw.items():
                info = next(i for i in schema() if (i.section, i.name) == (section, name))
                dotted = f"repositories.{rc.name}.{section}.{name}"
                rows.append((dotted, MASK if info.secret and value and not reveal else value,
                             cfg.sources.get(dotted, "default")))
        for info in schema():
            if info.section != "repository":
                continue
            value = getattr(rc, info.name)
            if info.secret and value and not reveal:
                value = MASK
            dotted = f"repositories.{rc.name}.{info.name}"
            rows.append((dotted, value, cfg.sources.get(dotted, "default")))
    return rows


def secrets_of(cfg: Config) -> list[str]:
    """Every non-empty secret value, so output and logs can be scrubbed of them."""
    out: list[str] = []
    for info in schema():
        if info.secret:
            sections = cfg.all_repositories if info.section == "repository" else (
                getattr(cfg, info.section) if info.section else cfg,)
            out.extend(str(v) for v in (getattr(s, info.name) for s in sections) if v)
            out.extend(str(kw[info.name]) for own in cfg.repository_sections.values()
                       if (kw := own.get(info.section, {})).get(info.name))
    from pitr.security import dsn_passwords  # a password inside postgres.dsn is one too

    out.extend(dsn_passwords(cfg.postgres.dsn))
    return out


def exposed_secrets_warning(cfg: Config) -> str | None:
    """A warning when the config file holds secrets and every user may read it.

    Group-readable is fine (docs/setup.md, "Security": ``chgrp postgres``, mode 640, so the
    archiver reads it); readable by others hands the repository keys to any local
    account."""
    from pitr.security import dsn_passwords

    keys = [info.dotted for info in schema()
            if cfg.sources.get(info.dotted, "").startswith("file ")
            and (info.secret or (info.dotted == "postgres.dsn"
                                 and dsn_passwords(cfg.postgres.dsn)))]
    keys += [f"repositories.{rc.name}.{info.name}" for rc in cfg.repositories
             for info in schema() if info.section == "repository" and info.secret
             and cfg.sources.get(f"repositories.{rc.name}.{info.name}", "").startswith("file ")]
    if not keys:
        return None
    path = Path(cfg.sources[keys[0]][len("file "):])
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return None
    if not mode & 0o004:
        return None
    return (f"the config file {path} holds {', '.join(keys)} and is readable by every user "
            f"(mode {mode:04o}): chmod o-rwx {path} (640 with group postgres is enough for "
            "the archiver), or move the keys to the environment of the units")
