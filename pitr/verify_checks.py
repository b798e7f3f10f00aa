"""Checks the restore drill runs against its scratch cluster.

Built in: the cluster accepts connections and left recovery; every database
can be connected to; every user table (and populated materialized view) in
every database can be read with ``count(*)``; ``bt_index_check`` (amcheck) on
every valid btree index when the extension is available. User checks come
from ``[[verify.check]]``: a database, a query returning one value, and
``min``/``max``/``equals``.

``judge`` (the user-check condition) is pure; the rest talks to PostgreSQL.
A check never raises: its failure becomes a :class:`DrillCheck` naming what failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from pitr.errors import Interrupted
from pitr.pg.conn import _reason

MAX_LISTED = 20  # failures listed by name in one check's detail


@dataclass
class DrillCheck:
    """One check of the restore drill (``pitr check``'s results are pitr.check.CheckResult)."""

    name: str
    ok: bool
    detail: str
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _num(v: Any) -> Decimal | None:
    if isinstance(v, bool):
        return Decimal(int(v))
    try:
        return Decimal(str(v))
    except (InvalidOperation, ValueError):
        return None


def judge(check: dict[str, Any], value: Any) -> tuple[bool, str]:
    """Whether ``value`` satisfies the check's min / max / equals; and why not."""
    problems = []
    if "equals" in check:
        want = check["equals"]
        a, b = _num(value), _num(want)
        same = (a == b) if a is not None and b is not None and not isinstance(want, str) \
            else str(value) == str(want)
        if not same:
            problems.append(f"expected {want!r}")
    for key, op in (("min", lambda x, lim: x >= lim), ("max", lambda x, lim: x <= lim)):
        if key in check:
            x, lim = _num(value), _num(check[key])
            if x is None or lim is None:
                problems.append(f"{key} = {check[key]!r} needs a number, got {value!r}")
            elif not op(x, lim):
                problems.append(f"{key} is {check[key]!r}")
    if problems:
        return False, f"got {value!r}: " + ", ".join(problems)
    return True, f"got {value!r}"


def check_name(check: dict[str, Any], index: int) -> str:
    return str(check.get("name") or f"check[{index}]")


class ClusterProbe:
    """Connections to the scratch cluster through its private socket directory."""

    def __init__(self, socket_dir: str, port: int, user: str) -> None:
        self.socket_dir, self.port, self.user = socket_dir, port, user

    def connect(self, dbname: str) -> Any:
        import psycopg

        return psycopg.connect(host=self.socket_dir, port=self.port, user=self.user,
                               dbname=dbname, autocommit=True, connect_timeout=10,
                               application_name="pitr verify")


def _timed(fn: Callable[[], DrillCheck]) -> DrillCheck:
    t0 = time.monotonic()
    try:
        res = fn()
    except Interrupted:
        raise
    except Exception as exc:  # a check's own failure is a failed check, named
        res = DrillCheck(getattr(fn, "__name__", "check").lstrip("_"), False, _reason(exc))
    res.seconds = round(time.monotonic() - t0, 3)
    return res


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


_TABLES_SQL = """
select format('%I.%I', n.nspname, c.relname), c.oid::regclass::text
-- foreign tables are left out on purpose: reading one would reach a real server
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.relkind in ('r', 'm') and (c.relkind <> 'm' or c.relispopulated)
  and c.relpersistence <> 't'
  and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_toast'
order by 1
"""

_BTREE_SQL = """
select c.oid, format('%I.%I', n.nspname, c.relname)
from pg_index i join pg_class c on c.oid = i.indexrelid
join pg_namespace n on n.oid = c.relnamespace join pg_am a on a.oid = c.relam
where a.amname = 'btree' and c.relkind = 'i' and i.indisvalid and i.indisready
  and c.relpersistence <> 't'
order by 2
"""


def run_builtin(probe: ClusterProbe, *, amcheck: bool = True,
                heapallindexed: bool = False) -> tuple[list[DrillCheck], list[str]]:
    """The built-in checks; also returns the databases found (for user checks)."""
    results: list[DrillCheck] = []
    databases: list[str] = []

    def connect() -> DrillCheck:
        with probe.connect("postgres") as conn:
            in_recovery = conn.execute("select pg_is_in_recovery()").fetchone()[0]
            version = conn.execute("show server_version").fetchone()[0]
        if in_recovery:
            return DrillCheck("connect", False, "the cluster is still in recovery")
        return DrillCheck("connect", True, f"accepts connections (PostgreSQL {version}), "
                           "recovery finished", data={"server_version": version})

    results.append(_timed(connect))
    if not results[0].ok:
        return results, databases

    def list_databases() -> DrillCheck:
        with probe.connect("postgres") as conn:
            rows = conn.execute("select datname from pg_database where datallowconn "
                                "and not datistemplate order by 1").fetchall()
        databases.extend(r[0] for r in rows)
        bad = []
        for db in databases:
            try:
                with probe.connect(db) as conn:
                    conn.execute("select 1")
            except Interrupted:
                raise
            except Exception as exc:
                bad.append(f"{db} ({_reason(exc)})")
        if bad:
            return DrillCheck("databases", False, f"cannot connect to {_listed(bad)}",
                               data={"databases": databases})
        return DrillCheck("databases", True, f"{len(databases)} databases reachable",
                           data={"databases": databases})

    results.append(_timed(list_databases))
    results.append(_timed(lambda: _read_tables(probe, databases)))
    if amcheck:
        results.append(_timed(lambda: _amcheck(probe, databases, heapallindexed)))
    return results, databases


def _read_tables(probe: ClusterProbe, databases: list[str]) -> DrillCheck:
    tables = rows = 0
    bad: list[str] = []
    for db in databases:
        with probe.connect(db) as conn:
            for name, regclass in conn.execute(_TABLES_SQL).fetchall():
                try:
                    rows += conn.execute(f"select count(*) from {regclass}").fetchone()[0]
                    tables += 1
                except Interrupted:
                    raise
                except Exception as exc:
                    bad.append(f"{db}.{name} ({_reason(exc)})")
    data = {"tables": tables, "rows": rows}
    if bad:
        return DrillCheck("tables", False, f"{len(bad)} tables unreadable: {_listed(bad)}",
                           data=data)
    return DrillCheck("tables", True, f"{tables} tables read, {rows} rows", data=data)


def _amcheck(probe: ClusterProbe, databases: list[str], heapallindexed: bool) -> DrillCheck:
    checked = 0
    bad: list[str] = []
    skipped: list[str] = []
    for db in databases:
        with probe.connect(db) as conn:
            if not conn.execute("select 1 from pg_available_extensions "
                                "where name = 'amcheck'").fetchall():
                return DrillCheck("amcheck", True, "skipped: the amcheck extension is not "
                                   "installed on this host", data={"skipped": True})
            try:
                # The scratch cluster is thrown away, so installing the extension is harmless.
                conn.execute("create extension if not exists amcheck")
            except Interrupted:
                raise
            except Exception as exc:
                skipped.append(f"{db} ({_reason(exc)})")
                continue
            for oid, name in conn.execute(_BTREE_SQL).fetchall():
                try:
                    conn.execute("select bt_index_check(%s::regclass, %s)", (oid, heapallindexed))
                    checked += 1
                except Interrupted:
                    raise
                except Exception as exc:
                    bad.append(f"{db}.{name} ({_reason(exc)})")
    data = {"indexes": checked, "heapallindexed": heapallindexed, "skipped_databases": skipped}
    if bad:
        return DrillCheck("amcheck", False, f"{len(bad)} btree indexes corrupt: {_listed(bad)}",
                           data=data)
    extra = f" (not checked in {_listed(skipped)})" if skipped else ""
    return DrillCheck("amcheck", True, f"{checked} btree indexes verified{extra}", data=data)


def run_user_checks(probe: ClusterProbe, checks: tuple[dict[str, Any], ...]) -> list[DrillCheck]:
    out = []
    for i, check in enumerate(checks):
        name = check_name(check, i)

        def one(check: dict[str, Any] = check, name: str = name) -> DrillCheck:
            db = str(check.get("database") or "postgres")
            with probe.connect(db) as conn:
                row = conn.execute(check["query"]).fetchone()
            if row is None:
                return DrillCheck(name, False, f"query returned no row (database {db})")
            ok, why = judge(check, row[0])
            value = row[0] if isinstance(row[0], int | float | str | bool | None) else str(row[0])
            return DrillCheck(name, ok, f"{why} (database {db})",
                               data={"database": db, "query": check["query"], "value": value})

        one.__name__ = name
        out.append(_timed(one))
    return out
