"""What `pitr COMMAND --help` shows a person: flags without a value placeholder, the text
as written (bracketed words such as [retention] are not eaten as markup), and examples
that use only options the command has."""

from __future__ import annotations

import shlex
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from pitr.cli import _load_commands
from pitr.cli.app import app

_load_commands()
ROOT_COMMAND = get_command(app)


def _subcommands(cmd: Any) -> dict[str, Any]:
    # click's Group, duck-typed: typer vendors click in newer releases (typer._click)
    return dict(getattr(cmd, "commands", None) or {})


def _walk(cmd: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group, hidden ones included, as its argv prefix."""
    out = [path]
    for name, sub in sorted(_subcommands(cmd).items()):
        out += _walk(sub, (*path, name))
    return out


COMMANDS = _walk(ROOT_COMMAND)


def _help(*argv: str) -> str:
    result = CliRunner().invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def _resolve(words: list[str]) -> tuple[Any, list[str]]:
    """The (sub)command named by the leading words and the words after it."""
    cmd = ROOT_COMMAND
    while words and words[0] in _subcommands(cmd):
        cmd, words = _subcommands(cmd)[words[0]], words[1:]
    return cmd, words


def _options(cmd: Any) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}


def _examples(text: str) -> list[str]:
    lines = text.split("Examples:\n", 1)[1].splitlines() if "Examples:\n" in text else []
    return [ln.strip() for ln in lines if ln.startswith("    ") and ln.strip()]


def _ids(path: tuple[str, ...]) -> str:
    return " ".join(path) or "pitr"


@pytest.mark.parametrize("command", COMMANDS, ids=_ids)
def test_flags_render_without_a_value_placeholder(command: tuple[str, ...]) -> None:
    text = _help(*command)
    assert "<bool>" not in text
    assert "--help" in text


@pytest.mark.parametrize("command", COMMANDS, ids=_ids)
def test_every_command_shows_an_example_that_runs_it(command: tuple[str, ...]) -> None:
    """A command without an example in its help fails here (pitr.cli.app.examples)."""
    examples = _examples(_help(*command))
    assert examples, f"`pitr {_ids(command)} --help` has no Examples: section"
    if not command:
        return
    runs_it = [e for e in examples if f"pitr {' '.join(command)}" in e
               or (f" {command[-1]} " in f" {e} " and "pitr" in e)]
    assert runs_it, f"no example of `pitr {_ids(command)}` runs it: {examples}"


def test_examples_use_only_options_their_command_has() -> None:
    """An option renamed or removed cannot leave an example behind that no longer works."""
    global_opts = _options(ROOT_COMMAND)
    checked = 0
    for command in COMMANDS:
        for example in _examples(_help(*command)):
            words = shlex.split(example.split("#", 1)[0].replace("%", ""), posix=True)
            if "pitr" not in words or words[-1:] == ["--help"]:
                continue  # a postgresql.conf line, a curl, `pitr COMMAND --help`
            words = words[words.index("pitr") + 1:]
            while words and words[0] in global_opts:  # --config FILE before the command
                words = words[2:] if words[0] in {"--config", "-c", "--log-format"} else words[1:]
            cmd, rest = _resolve(words)
            assert cmd is not ROOT_COMMAND, example
            unknown = [w.split("=", 1)[0] for w in rest
                       if w.startswith("-") and w.split("=", 1)[0] not in _options(cmd)]
            assert not unknown, f"{example!r}: {unknown} are not options of it"
            checked += 1
    assert checked >= len(COMMANDS)


def test_bracketed_words_survive() -> None:
    assert "[retention]" in _help("expire")
