"""Several repositories in one config (docs/multiple-repositories.md): ``[repository]``
stays the first, ``[[repositories]]`` tables add named ones with the same keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from pitr import config
from pitr.config import MASK, ConfigError, load

SECRET = "other-provider-secret-that-must-never-print"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "pitr.toml"
    p.write_text(text)
    return p


THREE = f"""
[repository]
url = "s3://first/pitr"
endpoint_url = "http://127.0.0.1:8333"
path_style = true

[[repositories]]
name = "offsite"
url = "s3://second/pitr"
endpoint_url = "http://other.example:9000"
access_key_id = "AK"
secret_access_key = "{SECRET}"
timeout = "2m"

[[repositories]]
name = "usb"
url = "file:///mnt/usb/pitr"
"""


def test_a_config_without_further_repositories_has_one(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, '[repository]\nurl = "file:///srv/repo"\n'), env={})
    assert [rc.name for rc in cfg.all_repositories] == ["repo1"]
    assert cfg.repositories == ()
    # with one repository the agent's proofs are keyed exactly as before
    assert cfg.archive_target == "file:///srv/repo"


def test_further_repositories_are_named_and_typed(tmp_path: Path) -> None:
    f = write(tmp_path, THREE)
    cfg = load(f, env={})
    assert [rc.name for rc in cfg.all_repositories] == ["repo1", "offsite", "usb"]
    offsite = cfg.repository_named("offsite")
    assert offsite.timeout == 120 and offsite.endpoint_url == "http://other.example:9000"
    assert offsite.path_style is False  # each repository has its own settings, defaults apply
    assert cfg.sources["repositories.offsite.timeout"] == f"file {f}"
    one = cfg.for_repository("usb")
    assert one.repository.url == "file:///mnt/usb/pitr" and one.repositories == ()
    assert one.all_repositories == (cfg.repositories[1],)
    # a proof vouches for the whole set: another set of repositories never shares it
    assert cfg.archive_target.split("\n") == [
        "s3://first/pitr", "s3://second/pitr", "file:///mnt/usb/pitr"]
    with pytest.raises(ConfigError, match="no repository has that name"):
        cfg.repository_named("nope")


def test_secrets_of_further_repositories_are_masked_and_scrubbed(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, THREE), env={})
    rows = {k: v for k, v, _ in config.effective(cfg)}
    assert rows["repositories.offsite.secret_access_key"] == MASK
    assert rows["repositories.usb.url"] == "file:///mnt/usb/pitr"
    assert SECRET in config.secrets_of(cfg)
    revealed = {k: v for k, v, _ in config.effective(cfg, reveal=True)}
    assert revealed["repositories.offsite.secret_access_key"] == SECRET


def test_every_problem_of_further_repositories_at_once(tmp_path: Path) -> None:
    f = write(tmp_path, f"""
[repository]
url = "file:///srv/a"

[[repositories]]
name = "repo1"
url = "file:///srv/b"

[[repositories]]
name = "dup"
url = "file:///srv/a"

[[repositories]]
url = "file:///srv/c"

[[repositories]]
name = "Bad Name"
url = "ftp://x"
colour = "blue"
secret_access_key = ["{SECRET}"]
timeout = "soon"
part_size_mib = 1
""")
    with pytest.raises(ConfigError) as err:
        load(f, env={})
    text = "\n".join(err.value.problems)
    assert "repositories.repo1: the same name as repository" in text
    assert "repositories.dup: the same url as repository" in text
    assert "repositories[2]" in text and "needs a name" in text
    assert "repositories.Bad Name.name: use 1-32 lower-case" in text
    assert "repositories.Bad Name.url: expected file:///" in text
    assert "repositories.Bad Name.colour" in text and "unknown key" in text
    assert "repositories.Bad Name.timeout" in text
    assert "repositories.Bad Name.part_size_mib: must be 5..5120" in text
    assert "not shown: secret" in text and SECRET not in text


def test_repositories_must_be_tables(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"expected \[\[repositories\]\] tables"):
        load(write(tmp_path, 'repositories = "s3://x"\n'), env={})


OWN = f"""
[repository]
url = "file:///srv/first"

[retention]
daily = 7
monthly = 12

[encryption]
key = "{'A' * 43}="

[[repositories]]
name = "offsite"
url = "file:///srv/offsite"
[repositories.retention]
daily = 30
monthly = 0
[repositories.encryption]
key = "{'B' * 43}="
"""


def test_a_repository_may_have_its_own_retention_and_key(tmp_path: Path) -> None:
    """docs/multiple-repositories.md "Each repository's own retention and key"."""
    cfg = load(write(tmp_path, OWN), env={})
    first, offsite = cfg.for_repository("repo1"), cfg.for_repository("offsite")
    assert (first.retention.daily, first.retention.monthly) == (7, 12)
    assert (offsite.retention.daily, offsite.retention.monthly) == (30, 0)
    assert offsite.retention.weekly == cfg.retention.weekly  # the rest from [retention]
    assert first.encryption.key.startswith("A") and offsite.encryption.key.startswith("B")
    # the per-repository key is a secret like the top-level one
    assert any(s.startswith("B") for s in config.secrets_of(cfg))
    rows = {k: v for k, v, _ in config.effective(cfg)}
    assert rows["repositories.offsite.retention.daily"] == 30
    assert rows["repositories.offsite.encryption.key"] == MASK
    # one repository's config carries no overrides left for anybody else
    assert offsite.repository_sections == {} and offsite.repositories == ()


def test_a_repositorys_own_sections_are_checked(tmp_path: Path) -> None:
    bad = OWN.replace("daily = 30", "daily = -1")
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, bad), env={})
    text = "; ".join(caught.value.problems)
    assert "repositories.offsite: retention.daily: must be >= 0" in text
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, OWN.replace("daily = 30", "dayly = 30")), env={})
    assert "repositories.offsite.retention.dayly" in "; ".join(caught.value.problems)
