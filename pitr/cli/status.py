"""`pitr status [--json]` and `pitr serve`: backup health for people and for monitors."""

from __future__ import annotations

import signal
from typing import Annotated, Any

import typer

from pitr.cli.app import JsonFlag, NoCache, app, examples, load_config, print_doc
from pitr.errors import CheckFailed


def _line(label: str, value: Any) -> str:
    return f"{label:<18} {value if value not in (None, '') else '-'}"


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return str(n)  # pragma: no cover


def render_text(doc: dict[str, Any]) -> str:
    lb = doc["last_backup"] or {}
    wal, arch, ver, win = doc["wal"], doc["archive"], doc["last_verify"], doc["recovery_window"]
    agent = arch.get("agent") or {}
    out = [
        _line("status", doc["status"].upper()),
        _line("stanza", doc["stanza"]),
        _line("repository", doc["location"]),
        _line("retention", ", ".join(f"{k}={v}" for k, v in doc["retention"].items())),
        _line("backups", doc["backups"]),
        _line("last backup", f"{lb['id']} at {lb['stop_time']} ({lb['age_seconds']:.0f}s ago, "
              f"{_human_bytes(lb['stored_bytes'])} stored, {_human_bytes(lb['db_size'])} "
              f"database, took {lb['duration_seconds']:.0f}s)" if lb else None),
        _line("recovery window", f"{win['start']} .. {win['end']}" if win else None),
        _line("last WAL", f"{wal['last_archived']} at {wal['last_archived_at']} "
              f"({wal['last_archived_age_seconds']:.0f}s ago)" if wal["last_archived"] else None),
        _line("archive lag", f"{arch['lag_seconds']:.0f}s ({arch['lag_source']})"
              if arch["lag_seconds"] is not None else None),
        _line("archive mode", (arch.get("mode") or {}).get("detail")),
        _line("archive backlog", f"{agent['backlog']} segments, "
              f"{agent['consecutive_failures']} failures in a row" if agent else
              "unknown (no agent status)"),
        _line("last verify", (f"{'passed' if ver['ok'] else 'FAILED'} at {ver['finished_at']} "
                              f"(backup {ver['backup_id']}, RTO {ver['rto_seconds']}s)")
              if ver else "never"),
    ]
    cache = doc.get("catalog_cache")
    if cache is not None:
        out.append(_line("catalog cache", (
            f"full listing {cache['full_listing_age_seconds']:.0f}s ago"
            f"{' (this run)' if cache['rebuilt'] else ', then only what is new'}; "
            f"{cache['file']}") if cache["used"] else "not used (--no-cache): full listing"))
    for r in doc.get("repositories", ()):
        out.append(_line(f"repository {r['name']}", (
            f"last WAL {r['last_archived'] or '-'}, last backup {r['last_backup'] or '-'}"
            + (f" ({r['last_backup_age_seconds']:.0f}s ago)" if r["last_backup"] else ""))
            if r["reachable"] else f"UNREACHABLE: {r['error']}"))
    for lag in doc.get("catch_up", ()):
        out.append(_line(f"catch-up {lag['repository']}", "up to date" if not lag["segments"]
                         else f"{lag['segments']} WAL segment(s) waiting, the oldest "
                              f"{lag['oldest']} for {lag['oldest_age']:.0f}s"))
    for p in doc["problems"]:
        out.append(f"{p['severity'].upper():<8} {p['name']}: {p['message']}")
    return "\n".join(out)


@app.command("status", epilog=examples("pitr status", "pitr status --json",
                                        "pitr status --no-cache"))
def status(json_out: JsonFlag = False, no_cache: NoCache = False) -> None:
    """Backup health: last backup, WAL archiving, recovery window, last restore drill.

    Exits 14 (CheckFailed) when unhealthy, like /health/backup returning 503.
    """
    from pitr.catalog_cache import CatalogCache, cache_path, describe
    from pitr.monitor.collect import gather, report_from
    from pitr.repo import Repo

    cfg = load_config(command="status")
    cache = None if no_cache else CatalogCache(Repo.open(cfg), cache_path(cfg))
    report = report_from(cfg, gather(cfg, cache, use_cache=not no_cache))
    doc = {**report.to_dict(), "catalog_cache": describe(cache)}
    print_doc(doc, json_out, render_text)
    if not report.healthy:
        raise CheckFailed("unhealthy: " + "; ".join(
            f.message for f in report.findings if f.severity == "critical"))


@app.command("serve", epilog=examples(
    "pitr serve", "pitr serve --listen 0.0.0.0 --port 9187",
    "curl -s localhost:9187/health/backup"))
def serve(
    port: Annotated[int | None, typer.Option(help="port (default: monitor.port)")] = None,
    listen: Annotated[str | None, typer.Option(help="address (default: monitor.listen)")] = None,
) -> None:
    """Serve GET /health/backup and GET /metrics until stopped (SIGTERM/SIGINT)."""
    from pitr.monitor.server import start_server

    cfg = load_config({"monitor.port": port, "monitor.listen": listen}, command="serve")
    handle = start_server(cfg)
    typer.echo(f"serving {handle.url}/health/backup and {handle.url}/metrics", err=True)

    def _stop(*_: Any) -> None:
        handle._stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    handle.wait()
    handle.stop()
