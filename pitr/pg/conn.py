"""Small psycopg helpers. psycopg is imported lazily: the WAL hot paths never need it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pitr.errors import ConfigError, PostgresError

if TYPE_CHECKING:
    import psycopg


def parse_dsn(dsn: str) -> dict[str, str]:
    """The settings of a libpq connection string, key=value or URI form (libpq's own parser).

    The one DSN parser: every reader of postgres.dsn asks it, so quoting, escapes
    and ``postgresql://user:pw@host/db?opt=v`` URIs mean the same everywhere.
    """
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    if dsn.strip() and "=" not in dsn and not dsn.startswith(("postgres://",
                                                              "postgresql://")):
        return {"dbname": dsn}  # libpq reads a bare word as a database name
    try:
        return {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except ProgrammingError as exc:
        raise ConfigError([f"postgres.dsn: not a valid connection string: {exc}"],
                          hint="key=value pairs (host=/run/postgresql user=postgres) or a "
                               "postgresql:// URI") from exc


def dsn_user(dsn: str) -> str | None:
    """The role postgres.dsn connects as, None when it names none."""
    return parse_dsn(dsn).get("user") or None


def dsn_without_password(dsn: str) -> tuple[str, str | None]:
    """(dsn with its password removed, the password or None).

    For child processes (pg_basebackup, psql): their command line is public in
    `ps`, so the password travels in ``PGPASSWORD`` (readable only by the same
    user through /proc/PID/environ) instead. A DSN without a password is returned
    as written.
    """
    from psycopg.conninfo import make_conninfo

    params = parse_dsn(dsn)
    password = params.pop("password", None)
    if password is None:
        return dsn, None
    return make_conninfo(**params), password


def connect(dsn: str, *, timeout: int = 10, application_name: str = "pitr") -> psycopg.Connection:
    """An autocommit connection, or PostgresError with libpq's reason."""
    if not dsn:
        raise ConfigError(["postgres.dsn: needed to reach PostgreSQL, but it is empty"])
    import psycopg

    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=timeout,
                               application_name=application_name)
    except psycopg.Error as exc:
        raise PostgresError(f"cannot connect to PostgreSQL ({dsn}): {_reason(exc)}",
                            hint="check postgres.dsn and that the server is running") from exc


def query(conn: psycopg.Connection, sql: str,
          params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    """Rows of ``sql``, translating driver errors into PostgresError."""
    import psycopg

    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []
    except psycopg.Error as exc:
        raise PostgresError(f"query failed: {_reason(exc)}") from exc


def scalar(conn: psycopg.Connection, sql: str, params: Sequence[Any] | None = None) -> Any:
    rows = query(conn, sql, params)
    return rows[0][0] if rows else None


def settings(conn: psycopg.Connection, names: Iterable[str]) -> dict[str, str]:
    """Current values of server settings (as `SHOW` prints them)."""
    wanted = list(names)
    rows = query(conn, "select name, setting from pg_settings where name = any(%s)", [wanted])
    return {str(n): str(v) for n, v in rows}


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
