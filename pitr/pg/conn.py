"""Small psycopg helpers. psycopg is imported lazily: the WAL hot paths never need it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pitr.errors import ConfigError, PostgresError

if TYPE_CHECKING:
    import psycopg


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
