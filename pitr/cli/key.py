"""`pitr key generate FILE`, `pitr key rotate [--rewrap]` (docs/encryption.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pitr.cli.app import JsonFlag, app, examples, load_config, print_json

key_app = typer.Typer(help="Create and rotate the repository's encryption key.",
                      no_args_is_help=True,
                      epilog=examples("pitr key generate /etc/pitr/repo.key",
                                      "pitr key rotate --rewrap"))
app.add_typer(key_app, name="key")


@key_app.command("generate", epilog=examples("pitr key generate /etc/pitr/repo.key"))
def generate(path: Annotated[Path, typer.Argument(help="new key file (never overwritten)")],
             json_out: JsonFlag = False) -> None:
    """Write a new random key (base64, mode 0600); prints its id, never the key."""
    from pitr.keys import generate as gen

    kid = gen(path)
    if json_out:
        print_json({"path": str(path), "key_id": kid})
    else:
        typer.echo(f"wrote key {kid} to {path} (mode 0600); keep a copy in a safe place: "
                   "without it the repository cannot be read")


@key_app.command("rotate", epilog=examples(
    "pitr key rotate            # new objects use the configured key",
    "pitr key rotate --rewrap   # old data keys re-wrapped; old keys retired"))
def rotate(rewrap: Annotated[bool, typer.Option(
        "--rewrap", help="re-wrap every older object's data key with the configured key "
                         "(the data is copied, not re-encrypted), then retire the old keys")]
           = False,
           json_out: JsonFlag = False) -> None:
    """Make the configured key the stanza's key (turns encryption on if it was off)."""
    from pitr.keys import rotate as run

    cfg = load_config(command="key rotate")
    result = run(cfg, rewrap=rewrap)
    if json_out:
        print_json(result.summary())
        return
    if result.turned_on:
        typer.echo(f"stanza {result.stanza}: encryption turned on with key {result.key}; "
                   "objects stored before stay readable as they are")
    elif result.added:
        typer.echo(f"stanza {result.stanza}: new objects are sealed with key {result.key}")
    else:
        typer.echo(f"stanza {result.stanza}: key {result.key} is already in use")
    if rewrap:
        typer.echo(f"re-wrapped {result.rewrapped} objects ({result.rewrapped_bytes} bytes "
                   f"copied); {result.plaintext} unencrypted objects left as they are")
        if result.retired:
            typer.echo(f"retired keys: {', '.join(result.retired)} (no object needs them)")
    typer.echo(f"keys in use: {', '.join(result.keys)}")
