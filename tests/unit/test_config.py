"""The config loader: precedence file < env < flag, every problem at once, secrets masked,
and conf/pitr.toml showing every key with its real default."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pitr import config
from pitr.cli import main as cli_main
from pitr.config import MASK, Config, ConfigError, load, parse_duration, schema

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-Value-that-must-never-print"


def write(tmp_path: Path, text: str, name: str = "pitr.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_precedence_file_then_env_then_flag(tmp_path: Path) -> None:
    f = write(tmp_path, 'stanza = "fromfile"\n[compression]\nlevel = 5\n')
    cfg = load(f, env={})
    assert (cfg.stanza, cfg.compression.level) == ("fromfile", 5)
    assert cfg.sources["compression.level"] == f"file {f}"
    cfg = load(f, env={"PITR_COMPRESSION_LEVEL": "7"})
    assert cfg.compression.level == 7
    assert cfg.sources["compression.level"] == "env PITR_COMPRESSION_LEVEL"
    assert cfg.stanza == "fromfile"  # untouched keys keep the file's value
    cfg = load(f, env={"PITR_COMPRESSION_LEVEL": "7"}, overrides={"compression.level": 9})
    assert cfg.compression.level == 9 and cfg.sources["compression.level"] == "flag"
    # A flag left unset (None) does not override.
    cfg = load(f, env={"PITR_COMPRESSION_LEVEL": "7"}, overrides={"compression.level": None})
    assert cfg.compression.level == 7
    assert load(f, env={}).sources.get("repository.url") is None  # default


def test_config_file_from_environment_and_defaults(tmp_path: Path) -> None:
    f = write(tmp_path, 'stanza = "viaenv"\n')
    assert load(None, env={"PITR_CONFIG": str(f)}).stanza == "viaenv"
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load(None, env={"PITR_CONFIG": str(tmp_path / "missing.toml")})


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    f = write(tmp_path, "\n".join([
        'stanza = "bad stanza!"',
        "colour = 1",
        "[repository]",
        'url = "ftp://example"',
        'timeout = "soon"',
        'access_key_id = "only-half"',
        "[compression]",
        "level = 40",
        "[archive]",
        'workers = "many"',
        "[nosuchtable]",
        "x = 1",
    ]))
    with pytest.raises(ConfigError) as err:
        load(f, env={"PITR_LOG_LEVEL": "loud", "PITR_NOT_A_KEY": "1"})
    problems = "\n".join(err.value.problems)
    for needle in ["stanza", "colour", "repository.url", "repository.timeout",
                   "access_key_id", "compression.level", "archive.workers", "nosuchtable",
                   "PITR_LOG_LEVEL", "PITR_NOT_A_KEY"]:
        assert needle in problems, (needle, problems)
    assert len(err.value.problems) >= 10
    assert err.value.exit_code == 3


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    f = write(tmp_path, "stanza = \n")
    with pytest.raises(ConfigError, match=re.escape(str(f))):
        load(f, env={})


@pytest.mark.parametrize(("raw", "expected"), [
    ("true", True), ("on", True), ("1", True), ("no", False), ("off", False), ("", False)])
def test_env_booleans(raw: str, expected: bool) -> None:
    assert load(None, env={"PITR_REPOSITORY_PATH_STYLE": raw}).repository.path_style is expected


def test_env_rejects_a_non_boolean() -> None:
    with pytest.raises(ConfigError, match="PITR_REPOSITORY_PATH_STYLE"):
        load(None, env={"PITR_REPOSITORY_PATH_STYLE": "maybe"})


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["", "s", "m", "h", "d", "w"]))
def test_durations(n: int, unit: str) -> None:
    factor = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert parse_duration(f"{n}{unit}") == n * factor


def test_bad_duration() -> None:
    with pytest.raises(ValueError):
        parse_duration("ten minutes")


def _secret_config(tmp_path: Path) -> Path:
    return write(tmp_path, f'[repository]\nurl = "s3://bucket/p"\naccess_key_id = "AKIAEXAMPLE"\n'
                           f'secret_access_key = "{SECRET}"\n[monitor]\n'
                           f'webhook_url = "https://hooks.example/{SECRET}"\n')


def test_config_show_masks_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _secret_config(tmp_path)
    assert cli_main(["--config", str(f), "config", "show"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out and "AKIAEXAMPLE" not in out
    assert MASK in out and "repository.secret_access_key" in out
    assert "s3://bucket/p" in out  # non-secrets are shown
    assert cli_main(["--config", str(f), "config", "show", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["repository.secret_access_key"] == {"value": MASK, "source": f"file {f}"}
    assert doc["monitor.webhook_url"]["value"] == MASK
    assert doc["repository.url"]["value"] == "s3://bucket/p"


def test_a_mistyped_secret_is_not_echoed(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, '[repository]\nsecret_access_key = 918273645546372819\n'
                        'access_key_id = "AK12"\n')
    code = cli_main(["--config", str(f), "config", "check"])
    err = capsys.readouterr().err
    assert code == 3 and "repository.secret_access_key" in err and "not shown" in err
    assert "918273645546372819" not in err
    with pytest.raises(ConfigError) as exc:
        load(None, env={"PITR_MONITOR_WEBHOOK_URL": "x", "PITR_REPOSITORY_TIMEOUT": "x"})
    assert "PITR_REPOSITORY_TIMEOUT" in str(exc.value)


def test_effective_reveal_is_explicit(tmp_path: Path) -> None:
    cfg = load(_secret_config(tmp_path), env={})
    masked = dict((k, v) for k, v, _ in config.effective(cfg))
    revealed = dict((k, v) for k, v, _ in config.effective(cfg, reveal=True))
    assert masked["repository.secret_access_key"] == MASK
    assert revealed["repository.secret_access_key"] == SECRET
    assert SECRET in config.secrets_of(cfg)


# -- conf/pitr.toml ------------------------------------------------------------------
def test_conf_example_is_current() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_conf_example.py"),
                           "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_conf_example_uncommented_gives_the_defaults(tmp_path: Path) -> None:
    text = (ROOT / "conf" / "pitr.toml").read_text()
    for info in schema():
        name = "check" if (info.section, info.name) == ("verify", "checks") else info.name
        assert re.search(rf"^#(\[\[verify\.)?{name}\b", text, re.M), info.dotted
    as_is = load(write(tmp_path, text, "asis.toml"), env={})
    assert as_is == Config()
    uncommented = re.sub(r"^#(?=\w+ = |\[\[)", "", text, flags=re.M)
    cfg = load(write(tmp_path, uncommented, "all.toml"), env={})
    defaults = Config()
    for info in schema():
        if info.section == "verify" and info.name == "checks":
            assert len(cfg.verify.checks) == 1
            continue
        got = getattr(cfg, info.section) if info.section else cfg
        want = getattr(defaults, info.section) if info.section else defaults
        assert getattr(got, info.name) == getattr(want, info.name), info.dotted


def test_config_check_warns_about_a_world_readable_file_with_keys(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _secret_config(tmp_path)
    f.chmod(0o644)
    assert cli_main(["--config", str(f), "config", "check"]) == 0  # a warning, not a failure
    captured = capsys.readouterr()
    assert "configuration OK" in captured.out
    assert "WARNING: the config file" in captured.err and "(mode 0644)" in captured.err
    assert SECRET not in captured.err
    assert cli_main(["--config", str(f), "config", "check", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and "monitor.webhook_url" in doc["warnings"][0]
    f.chmod(0o600)
    assert cli_main(["--config", str(f), "config", "check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == []
