"""What `pitr COMMAND --help` shows a person: flags without a value placeholder, and the
text as written (bracketed words such as [retention] are not eaten as markup)."""

from __future__ import annotations

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from pitr.cli import _load_commands
from pitr.cli.app import app

_load_commands()
COMMANDS = sorted(get_command(app).commands)  # a group: one entry per command


def _help(*argv: str) -> str:
    result = CliRunner().invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_flags_render_without_a_value_placeholder(command: str) -> None:
    text = _help(*([command] if command else []))
    assert "<bool>" not in text
    assert "--help" in text


def test_bracketed_words_survive() -> None:
    assert "[retention]" in _help("expire")
