"""docs/fault-table.md names only tests that exist (the rows are written by hand)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_fault_table_row_without_its_test() -> None:
    """Every `tests/...::name` in the table is a file that defines that test."""
    table = (ROOT / "docs" / "fault-table.md").read_text()
    tests = ROOT / "tests"
    refs = [chunk.split("`", 1)[0] for line in table.splitlines() if line.startswith("|")
            for chunk in line.split("`tests/")[1:]]
    assert refs
    for ref in refs:
        path, _, test = ref.partition("::")
        assert (tests / path).exists(), ref
        if test:
            assert f"def {test}(" in (tests / path).read_text(), ref
