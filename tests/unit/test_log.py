"""JSON and text logging: one object per line with the fixed keys, secrets masked."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from pitr import log
from pitr.cli import main
from pitr.errors import UsageError


@pytest.fixture
def stream() -> io.StringIO:
    return io.StringIO()


def lines(s: io.StringIO) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in s.getvalue().splitlines()]


def test_json_line_has_fixed_keys_and_fields(stream: io.StringIO) -> None:
    log.setup("json", "info", "verify", stream=stream)
    logger = logging.getLogger("pitr.verify")
    log.event(logger, logging.INFO, "drill finished", ok=True, rto_seconds=12.5,
              checks=["connect", "tables"])
    logger.debug("not shown at info")
    (doc,) = lines(stream)
    assert doc["level"] == "info" and doc["command"] == "verify"
    assert doc["event"] == "drill finished"
    assert doc["ok"] is True and doc["rto_seconds"] == 12.5
    assert doc["checks"] == ["connect", "tables"]
    assert doc["timestamp"].endswith("+00:00")


def test_fields_never_overwrite_fixed_keys(stream: io.StringIO) -> None:
    log.setup("json", "info", "backup", stream=stream)
    log.event(logging.getLogger("pitr.x"), logging.WARNING, "real", event="fake", command="y")
    (doc,) = lines(stream)
    assert doc["event"] == "real" and doc["command"] == "backup"


def test_plain_extra_and_exceptions_in_json(stream: io.StringIO) -> None:
    log.setup("json", "debug", "agent", stream=stream)
    logger = logging.getLogger("pitr.agent")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("push failed", extra={"segment": "000000010000000000000003"})
    (doc,) = lines(stream)
    assert doc["segment"] == "000000010000000000000003"
    assert "RuntimeError: boom" in doc["exc"] and doc["level"] == "error"


def test_secrets_are_masked_in_json_and_text(stream: io.StringIO) -> None:
    log.register_secrets(["s3cr3t-key-value"])
    log.setup("json", "info", "x", stream=stream)
    logger = logging.getLogger("pitr.x")
    log.event(logger, logging.ERROR, "auth failed for s3cr3t-key-value",
              detail={"key": "s3cr3t-key-value"}, items=["a s3cr3t-key-value"])
    text = stream.getvalue()
    assert "s3cr3t-key-value" not in text and log.MASK in text
    log.setup("text", "info", "x", stream=stream)
    log.event(logger, logging.ERROR, "again s3cr3t-key-value", k="s3cr3t-key-value")
    assert "s3cr3t-key-value" not in stream.getvalue()


def test_text_is_default(stream: io.StringIO) -> None:
    log.setup("auto", "info", "status", stream=stream)
    log.event(logging.getLogger("pitr.s"), logging.INFO, "hello", a=1)
    assert stream.getvalue() == "pitr info: hello a=1\n"
    assert not log.json_enabled()


def test_unknown_format_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        log.setup("yaml")


def test_cli_errors_are_json_lines_with_log_format_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--log-format", "json", "--config", str(tmp_path / "missing.toml"),
                 "config", "check"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert len(err) == 1
    doc = json.loads(err[0])
    assert doc["level"] == "error" and doc["exit_code"] == 3
    assert "does not exist" in doc["event"] and "hint" in doc
    code = main(["--log-format", "text", "--config", str(tmp_path / "missing.toml"),
                 "config", "check"])
    assert capsys.readouterr().err.startswith("ERROR: ")
