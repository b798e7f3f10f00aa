"""`pitr status` says which catalog cache answered and how old its last full listing
is; `--no-cache` (status and list) lists the whole stanza and leaves the cache file alone
(docs/catalog-cache.md, "Deleting it")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pitr import config
from pitr.catalog_cache import cache_path
from pitr.cli import main as cli_main


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    cfg = tmp_path / "pitr.toml"
    repo = tmp_path / "repo"
    (repo / "t").mkdir(parents=True)
    (repo / "t" / "repo.json").write_text(json.dumps(
        {"system_id": "7001", "pg_version": 15, "segment_size": 16 << 20, "format": 1}))
    cfg.write_text(f'stanza = "t"\n[repository]\nurl = "file://{repo}"\ntimeout = 2\n'
                   f'[archive]\nspool_dir = "{tmp_path / "spool"}"\n')
    return cfg, cache_path(config.load(cfg, env={}))


def _run(cfg: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli_main(["--config", str(cfg), *argv])
    return code, capsys.readouterr().out


def test_no_cache_neither_reads_nor_writes_the_cache(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg, cache = _setup(tmp_path)
    code, out = _run(cfg, capsys, "list", "--json", "--no-cache")
    assert code == 0 and json.loads(out)["backups"] == []
    code, out = _run(cfg, capsys, "status", "--json", "--no-cache")
    assert json.loads(out)["catalog_cache"] == {"used": False}
    assert not cache.exists()
    _, text = _run(cfg, capsys, "status", "--no-cache")
    assert "not used (--no-cache)" in text


def test_status_reports_the_cache_and_its_last_full_listing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, cache = _setup(tmp_path)
    _, out = _run(cfg, capsys, "status", "--json")
    first = json.loads(out)["catalog_cache"]
    assert first["used"] and first["rebuilt"] and first["file"] == str(cache)
    assert cache.exists()
    _, out = _run(cfg, capsys, "status", "--json")
    second = json.loads(out)["catalog_cache"]
    assert not second["rebuilt"] and second["full_listing_at"] == first["full_listing_at"]
    assert second["full_listing_age_seconds"] >= first["full_listing_age_seconds"]
    # a damaged file is rebuilt from a full listing, never trusted
    cache.write_text("{not json")
    _, out = _run(cfg, capsys, "status", "--json")
    assert json.loads(out)["catalog_cache"]["rebuilt"]
    _, text = _run(cfg, capsys, "status")
    assert "catalog cache" in text and "then only what is new" in text
