"""A plan is made without cyclic garbage collection, and the collector is back on after
it, also when the plan fails (pitr/cli/restore.py, docs/benchmarks.md)."""

from __future__ import annotations

import gc

import pytest

from pitr.cli.restore import _no_cyclic_gc


@pytest.mark.parametrize("fails", [False, True])
def test_the_collector_is_off_while_planning_and_back_on_after(fails: bool) -> None:
    assert gc.isenabled()
    try:
        with _no_cyclic_gc():
            assert not gc.isenabled()
            if fails:
                raise RuntimeError("plan failed")
    except RuntimeError:
        assert fails
    finally:
        gc.unfreeze()  # what the plan froze; other tests' objects stay collectable
    assert gc.isenabled()


def test_a_caller_that_had_it_off_keeps_it_off() -> None:
    gc.disable()
    try:
        with _no_cyclic_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()
