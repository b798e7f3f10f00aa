"""The typer application, global options and the error-to-exit-code boundary.

Command modules in this package add their commands to ``app``; they parse
flags, load the config, call one service function and print. No logic here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from pitr import config as config_mod
from pitr import log
from pitr.errors import PitrError


def examples(*lines: str) -> str:
    """A command's help epilog: example command lines, shown as written.

    Every command has one (tests/unit/test_cli_help.py); click's ``\\b`` keeps the lines
    from being re-wrapped into one paragraph.
    """
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


app = typer.Typer(
    name="pitr",
    help="Point-in-time recovery for PostgreSQL: WAL archiving, base backups, restores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: rich mode renders every flag as `--debug <bool>`, as if it took a value,
    # and eats bracketed words such as "[retention]" as markup.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=examples("pitr check", "pitr backup", "pitr list",
                    "pitr restore --to 2025-02-15T01:30Z --pgdata /srv/pg-restored --start",
                    "pitr COMMAND --help    # each command's options and examples"),
)


@dataclass
class GlobalOptions:
    config_path: str | None = None
    debug: bool = False
    log_format: str | None = None


OPTS = GlobalOptions()

JsonFlag = Annotated[bool, typer.Option("--json", help="machine-readable JSON on stdout")]
NoCache = Annotated[bool, typer.Option(
    "--no-cache", help="list the whole stanza; the local catalog cache is neither read nor "
                       "written (docs/catalog-cache.md)")]



def version_callback(value: bool) -> None:
    if value:
        from pitr import __version__

        typer.echo(f"pitr {__version__}")
        raise typer.Exit(0)


@app.callback()
def _global(
    config: Annotated[str | None, typer.Option(
        "--config", "-c", help="config file (default: $PITR_CONFIG or /etc/pitr/pitr.toml)",
        show_default=False)] = None,
    debug: Annotated[bool, typer.Option("--debug", help="tracebacks and debug logs")] = False,
    log_format: Annotated[str | None, typer.Option(
        "--log-format", help="auto, text or json (default: log.format)")] = None,
    version: Annotated[bool, typer.Option(
        "--version", callback=version_callback, is_eager=True, help="print the version")] = False,
) -> None:
    OPTS.config_path = config
    OPTS.debug = debug
    OPTS.log_format = log_format


def load_config(overrides: dict[str, Any] | None = None,
                command: str = "") -> config_mod.Config:
    """Load the effective config for a command and set up logging from it."""
    cfg = config_mod.load(OPTS.config_path, overrides=overrides)
    log.register_secrets(config_mod.secrets_of(cfg))
    level = "debug" if OPTS.debug else cfg.log.level
    log.setup(OPTS.log_format or cfg.log.format, level, command)
    return cfg


def print_json(doc: Any) -> None:
    sys.stdout.write(log.scrub(json.dumps(doc, indent=2, default=str)) + "\n")
    sys.stdout.flush()


def print_doc(doc: Any, json_out: bool, render: Callable[[Any], str]) -> None:
    """A command's result: the JSON document with --json, else ``render(doc)`` for people."""
    if json_out:
        print_json(doc)
    else:
        typer.echo(render(doc))


def report_error(exc: PitrError) -> None:
    if log.json_enabled() or OPTS.log_format == "json":
        # One JSON object per line, errors included, so a log shipper never chokes.
        sys.stderr.write(log.error_line(exc.message, exc.hint, exc.exit_code) + "\n")
        sys.stderr.flush()
        return
    sys.stderr.write(log.scrub(f"ERROR: {exc.message}") + "\n")
    if exc.hint:
        sys.stderr.write(log.scrub(f"HINT: {exc.hint}") + "\n")
    sys.stderr.flush()
