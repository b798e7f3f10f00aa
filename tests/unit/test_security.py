"""pitr.security: root refusal, private modes, DSN passwords, scrubbed output streams."""

from __future__ import annotations

import io
import json
import os
import stat
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pitr import log
from pitr.atomic import atomic_write
from pitr.errors import PermissionRefused
from pitr.security import (
    ScrubbingStream,
    data_dir_candidates,
    dsn_passwords,
    loose_modes,
    mkdir_private,
    refuse_root_over_foreign_data,
)


def test_root_over_another_users_data_directory_is_refused(tmp_path: Path) -> None:
    pgdata = tmp_path / "data"
    pgdata.mkdir()
    if os.geteuid() == 0:
        os.chown(pgdata, 4242, 4242)
    elif os.stat(pgdata).st_uid == 0:  # pragma: no cover - cannot set up the case
        pytest.skip("needs a directory not owned by root")
    with pytest.raises(PermissionRefused) as err:
        refuse_root_over_foreign_data("archive-push", [pgdata], euid=0)
    assert err.value.exit_code == 15
    assert "runuser -u" in (err.value.hint or "")
    assert "archive-push" in err.value.message and str(pgdata) in err.value.message


def test_non_root_and_root_owned_and_missing_dirs_are_fine(tmp_path: Path) -> None:
    refuse_root_over_foreign_data("archive-push", [tmp_path], euid=1000)
    refuse_root_over_foreign_data("archive-push", [tmp_path / "missing"], euid=0)
    if os.geteuid() == 0:
        refuse_root_over_foreign_data("archive-push", [tmp_path], euid=0)  # root's own dir


def test_working_directory_counts_when_it_is_a_data_directory(tmp_path: Path) -> None:
    assert data_dir_candidates("", tmp_path) == []
    (tmp_path / "PG_VERSION").write_text("15\n")
    assert data_dir_candidates("", tmp_path) == [tmp_path]
    assert data_dir_candidates("/srv/pg", tmp_path) == [Path("/srv/pg"), tmp_path]


def test_private_files_and_directories(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        d = mkdir_private(tmp_path / "spool" / "main")
        atomic_write(d / "receipt.ok", b"x", durable=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / "receipt.ok").stat().st_mode) == 0o600
    atomic_write(d / "receipt.ok", "y" * 300_000)  # replaced whole, no temp file left
    assert (d / "receipt.ok").read_text() == "y" * 300_000 and os.listdir(d) == ["receipt.ok"]
    (tmp_path / "spool").chmod(0o700)
    tmp_path.chmod(0o700)
    assert loose_modes(tmp_path) == []
    (d / "leak").write_text("x")
    (d / "leak").chmod(0o644)
    assert loose_modes(tmp_path) == [(d / "leak", 0o644)]


@pytest.mark.parametrize(("dsn", "expected"), [
    ("host=/run/pg user=postgres", []),
    ("host=db password=s3cr3t user=x", ["s3cr3t"]),
    ("password = 'with space' host=db", ["with space"]),
    ("password='it\\'s' host=db", ["it's"]),
    ("postgresql://app:p%40ss@db:5432/x", ["p%40ss", "p@ss"]),
    ("postgres://db/x?sslmode=require&password=qs3cret", ["qs3cret"]),
])
def test_dsn_passwords(dsn: str, expected: list[str]) -> None:
    assert dsn_passwords(dsn) == expected


@given(st.text(alphabet=st.characters(blacklist_characters=" '\\\t\n\r\x0b\x0c\x1c\x1d\x1e"
                                      "\x1f\x85\xa0\u1680\u2028\u2029",
                                      blacklist_categories=("Zs", "Cs")), min_size=1))
def test_any_unquoted_dsn_password_is_found(pw: str) -> None:
    assert pw in dsn_passwords(f"host=db password={pw} user=x")


def test_scrubbing_stream_masks_every_write() -> None:
    log.register_secrets(["hunter2-known"])
    raw = io.StringIO()
    s = ScrubbingStream(raw, log.scrub)
    s.write("token hunter2-known here\n")
    s.writelines(["a hunter2-known\n"])
    assert "hunter2-known" not in raw.getvalue() and raw.getvalue().count(log.MASK) == 2
    assert not hasattr(s, "buffer"), "a writer finding .buffer would bypass the mask"
    with pytest.raises(TypeError):
        s.write(b"bytes")  # type: ignore[arg-type]


# -- every rendered form of a secret (docs/fault-table.md) --------------------------

_ODD = 'k3y"with\\back\'slash/+é&=%'
_HOOK = "https://hooks.example.invalid/services/T000/B000/hooksecret-31337"
_HOOK_Q = "https://alerts.example.invalid/hook?channel=ops&token=qT0ken-99x"
_HOOK_DISCORD = "https://discord.example.invalid/api/webhooks/123456789012/AbCdEfghIJklmnopQR"


@pytest.mark.parametrize("render", [
    pytest.param(lambda v: v, id="plain"),
    pytest.param(lambda v: json.dumps({"v": v}), id="json"),
    pytest.param(lambda v: json.dumps({"v": v}, ensure_ascii=False), id="json-unicode"),
    pytest.param(lambda v: repr({"v": v}), id="repr"),
    pytest.param(lambda v: repr([v, v + "'"]), id="repr-both-quotes"),
    pytest.param(lambda v: f"{v!r:<60}", id="config-show"),
    pytest.param(lambda v: urllib.parse.quote(v, safe=""), id="url-encoded"),
    pytest.param(lambda v: urllib.parse.quote_plus(v), id="url-plus"),
    pytest.param(lambda v: urllib.parse.urlencode({"secret": v}), id="query"),
])
@pytest.mark.parametrize("secret", [_ODD, "AbC+/xyz0123456789==", _HOOK])
def test_a_secret_is_masked_in_every_rendered_form(render: Any, secret: str) -> None:
    log.register_secrets([secret])
    out = log.scrub(f"before {render(secret)} after")
    assert secret not in out and log.MASK in out, out
    for form in (json.dumps(secret)[1:-1], repr(secret)[1:-1],
                 urllib.parse.quote(secret, safe="")):
        assert form not in out, out
    assert out.startswith("before ") and out.endswith(" after")


@pytest.mark.parametrize(("url", "leaks"), [
    (_HOOK, ["/services/T000/B000/hooksecret-31337", "hooksecret-31337"]),
    (_HOOK_Q, ["channel=ops&token=qT0ken-99x", "qT0ken-99x"]),
    (_HOOK_DISCORD, ["AbCdEfghIJklmnopQR", "123456789012"]),
])
def test_webhook_path_and_query_tokens_are_masked_alone(url: str, leaks: list[str]) -> None:
    log.register_secrets([url])
    for part in leaks:
        out = log.scrub(f"POST {part} failed: 404; retry with {urllib.parse.quote(part)}")
        assert part not in out and log.MASK in out, out
    # the host and words of the path are not secret: output stays readable
    assert log.scrub("hooks.example.invalid services webhooks api") == \
        "hooks.example.invalid services webhooks api"


def test_url_tokens() -> None:
    from pitr.security import url_tokens

    assert url_tokens(_HOOK) == ["/services/T000/B000/hooksecret-31337", "hooksecret-31337"]
    assert url_tokens("https://u:pw-123456@h.example/") == ["pw-123456"]
    assert url_tokens("not a url") == [] and url_tokens("") == []


def test_config_check_warns_when_a_file_with_keys_is_world_readable(tmp_path: Path) -> None:
    from pitr import config

    path = tmp_path / "pitr.toml"
    path.write_text('stanza = "s"\n[repository]\nurl = "s3://pitr-bucket/pitr"\n'
                    'access_key_id = "AKIA0000"\nsecret_access_key = "sekret-value"\n')
    path.chmod(0o644)
    warning = config.exposed_secrets_warning(config.load(path, env={}))
    assert warning and "repository.access_key_id, repository.secret_access_key" in warning
    assert "readable by every user (mode 0644)" in warning and f"chmod o-rwx {path}" in warning
    path.chmod(0o640)  # group postgres may read it: the recommended mode
    assert config.exposed_secrets_warning(config.load(path, env={})) is None
    # keys from the environment, not the file: nothing in the file to protect
    path.write_text('stanza = "s"\n[repository]\nurl = "s3://pitr-bucket/pitr"\n')
    path.chmod(0o644)
    cfg = config.load(path, env={"PITR_REPOSITORY_ACCESS_KEY_ID": "AKIA0000",
                                 "PITR_REPOSITORY_SECRET_ACCESS_KEY": "sekret-value"})
    assert config.exposed_secrets_warning(cfg) is None
    # a password inside postgres.dsn counts
    path.write_text('stanza = "s"\n[postgres]\ndsn = "host=db password=pw-12345"\n')
    warning = config.exposed_secrets_warning(config.load(path, env={}))
    assert warning and "holds postgres.dsn" in warning
