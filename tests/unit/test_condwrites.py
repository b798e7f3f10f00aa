"""pitr.condwrites: the memo's pure freshness rule, and the proof against the real
local-directory driver (which enforces the condition itself, so it needs none)."""

from __future__ import annotations

import doctest
from pathlib import Path

from pitr import condwrites
from pitr.config import load
from pitr.storage.fs import FsStorage


def test_doctests() -> None:
    assert doctest.testmod(condwrites).failed == 0


def test_local_directory_refuses_the_second_write_and_needs_no_memo(tmp_path: Path) -> None:
    storage = FsStorage(tmp_path / "repo")
    assert not condwrites.server_enforced(storage)
    assert condwrites.prove(storage, "t")  # refused, and the probe is gone again
    assert not [p for p in (tmp_path / "repo").rglob("*") if p.is_file()]
    toml = tmp_path / "pitr.toml"
    toml.write_text(f'stanza = "t"\n[repository]\nurl = "file://{tmp_path / "repo"}"\n'
                    f'[archive]\nspool_dir = "{tmp_path / "spool"}"\n')
    cfg = load(toml, env={})
    condwrites.require_conditional_writes(cfg, storage)
    assert not condwrites.memo_path(cfg).exists()
