"""docs/exit-codes.md is generated from pitr.errors and current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pitr.errors import RECOVERY_ABORT_OFFSET, exit_code_table

ROOT = Path(__file__).resolve().parents[2]


def test_the_exit_code_table_is_current() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_exit_codes.py"),
                           "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_code_fits_both_contracts() -> None:
    table = (ROOT / "docs" / "exit-codes.md").read_text()
    for code, name, _ in exit_code_table():
        assert 1 <= code <= 125, name  # archive-push may use every code
        assert code == 1 or 125 < RECOVERY_ABORT_OFFSET + code <= 255, name
        if name != "PitrError":
            assert f"`{name}`" in table, name
