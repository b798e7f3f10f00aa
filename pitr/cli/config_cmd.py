"""`pitr config show|check`."""

from __future__ import annotations

import typer

from pitr import config as config_mod
from pitr.cli.app import JsonFlag, app, examples, load_config, print_json

config_app = typer.Typer(help="Show or check the effective configuration.", no_args_is_help=True,
                         epilog=examples("pitr config show", "pitr config check"))
app.add_typer(config_app, name="config")


@config_app.command("show", epilog=examples(
    "pitr --config /etc/pitr/pitr.toml config show", "pitr config show --json"))
def show(json_out: JsonFlag = False) -> None:
    """Print every effective value and where it came from (secrets masked)."""
    cfg = load_config(command="config show")
    rows = config_mod.effective(cfg)
    if json_out:
        print_json({key: {"value": value, "source": source} for key, value, source in rows})
        return
    width = max(len(k) for k, _, _ in rows)
    for key, value, source in rows:
        typer.echo(f"{key:<{width}}  {value!r:<40}  ({source})")


@config_app.command("check", epilog=examples(
    "pitr config check", "PITR_REPOSITORY_URL=s3://bucket/pitr pitr config check"))
def check(json_out: JsonFlag = False) -> None:
    """Validate the configuration; lists every problem at once (exit 3 if any)."""
    cfg = load_config(command="config check")
    warning = config_mod.exposed_secrets_warning(cfg)
    if json_out:
        print_json({"ok": True, "problems": [], "warnings": [warning] if warning else []})
    else:
        if warning:
            typer.echo(f"WARNING: {warning}", err=True)
        typer.echo("configuration OK")
