"""Conditional writes proven (docs/archiving.md, "Conditional writes are proven, not assumed"):
against the real S3 server behind the fault proxy, whose ``ignore_if_none_match`` rule
makes it a server that accepts overwrites."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_pitr, s3_repo_for, write_config
from support.faultproxy import FaultProxy, Rule

from pitr.condwrites import ConditionalWritesIgnored, memo_path
from pitr.config import load
from pitr.errors import CheckFailed
from pitr.wal.commands import archive_push_main

pytestmark = pytest.mark.integration

SEG = 1 << 20
SYSID = 7301234567890123456


def segment_bytes(name: str) -> bytes:
    """A plausible PG 15 segment: a long page header naming this segment (1 MiB)."""
    segno = int(name[8:16], 16) * (0x100000000 // SEG) + int(name[16:24], 16)
    header = struct.pack("<HHIQI4xQII", 0xD110, 0x0002, int(name[:8], 16), segno * SEG, 0,
                         SYSID, SEG, 8192)
    return header + bytes(SEG - len(header))


@pytest.fixture(scope="module")
def proxy(s3_server: Any) -> Iterator[FaultProxy]:
    with FaultProxy.for_server(s3_server) as p:
        yield p


@pytest.fixture
def env(proxy: FaultProxy, s3_server: Any, testdir: Path) -> Iterator[dict[str, Any]]:
    proxy.clear()
    section = {**s3_repo_for(s3_server), "endpoint_url": proxy.endpoint, "timeout": 5,
               "request_timeout": 3}
    settings: dict[str, Any] = {"stanza": "cw", "repository": section,
                                "archive": {"spool_dir": str(testdir / "spool")}}
    yield {"settings": settings, "dir": testdir, "config": write_config(
        testdir / "pitr.toml", settings)}
    proxy.clear()


def _wal(env: dict[str, Any], n: int) -> Path:
    name = f"0000000100000000000000{n:02X}"
    path = env["dir"] / "wal" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(segment_bytes(name))
    return path


def test_archive_push_refuses_a_server_that_ignores_if_none_match(
        env: dict[str, Any], proxy: FaultProxy, capsys: pytest.CaptureFixture[str]) -> None:
    proxy.set_rules(Rule("ignore_if_none_match"))
    code = archive_push_main(str(env["config"]), str(_wal(env, 1)))
    err = capsys.readouterr().err
    assert code == ConditionalWritesIgnored.exit_code == 4, err
    assert "ignores conditional writes" in err and "overwrite an archived WAL" in err
    assert "repository.conditional_writes = false" in err
    assert not memo_path(load(env["config"], env={})).exists()

    # The same server, honest again: proven once, remembered, then no probe per segment.
    proxy.clear()
    assert archive_push_main(str(env["config"]), str(_wal(env, 1))) == 0
    assert memo_path(load(env["config"], env={})).exists()
    puts = proxy.count("forward", "PUT")
    assert archive_push_main(str(env["config"]), str(_wal(env, 2))) == 0
    assert proxy.count("forward", "PUT") == puts + 1  # the segment only

    # A remembered proof only makes things faster; without it the server is proven again.
    memo_path(load(env["config"], env={})).unlink()
    proxy.set_rules(Rule("ignore_if_none_match"))
    assert archive_push_main(str(env["config"]), str(_wal(env, 3))) == 4


def test_explicit_opt_out_archives_and_status_warns(
        env: dict[str, Any], proxy: FaultProxy) -> None:
    settings = env["settings"]
    settings["repository"]["conditional_writes"] = False
    cfg = write_config(env["dir"] / "optout.toml", settings)
    proxy.set_rules(Rule("ignore_if_none_match"))
    assert archive_push_main(str(cfg), str(_wal(env, 1))) == 0

    proc = run_pitr(cfg, "status", "--json", user=None, check=False)
    doc = json.loads(proc.stdout)
    warn = [p for p in doc["problems"] if p["name"] == "conditional_writes_off"]
    assert warn and warn[0]["severity"] == "warning", doc["problems"]
    assert "not proven to refuse overwrites" in warn[0]["message"]

    from pitr.monitor.collect import health_report
    from pitr.monitor.metrics import render

    metrics = render(health_report(load(cfg, env={}))).decode()
    assert 'name="conditional_writes_off",severity="warning"' in metrics

    check = run_pitr(cfg, "check", "--json", user=None, check=False)
    repo = {c["name"]: c for c in json.loads(check.stdout)["checks"]}["repository"]
    assert repo["status"] == "ok" and "WARNING: it ignores conditional writes" in repo["detail"]


def test_check_fails_and_expire_refuses_the_lock(env: dict[str, Any], proxy: FaultProxy) -> None:
    cfg = env["config"]
    proc = run_pitr(cfg, "check", "--json", user=None, check=False)
    repo = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}["repository"]
    assert repo["status"] == "ok" and "refuses to overwrite" in repo["detail"], repo

    proxy.set_rules(Rule("ignore_if_none_match"))
    proc = run_pitr(cfg, "check", "--json", user=None, check=False)
    assert proc.returncode == CheckFailed.exit_code
    repo = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}["repository"]
    assert repo["status"] == "FAIL", repo
    assert "accepted a second conditional write" in repo["detail"]
    assert "stanza lock" in repo["detail"]

    # expire (and backup, tests/integration/test_faults.py) take the stanza lock: refused
    # before the lock is written.
    proc = run_pitr(cfg, "expire", user=None, check=False)
    assert proc.returncode == 4, proc.stderr
    assert "ignores conditional writes" in proc.stderr
    assert not list(s3_client_keys(env, "cw/locks/"))


def s3_client_keys(env: dict[str, Any], prefix: str) -> list[str]:
    import boto3

    r = env["settings"]["repository"]
    bucket, _, root = r["url"][len("s3://"):].partition("/")
    client = boto3.client("s3", endpoint_url=r["endpoint_url"], region_name=r["region"],
                          aws_access_key_id=r["access_key_id"],
                          aws_secret_access_key=r["secret_access_key"])
    resp = client.list_objects_v2(Bucket=bucket, Prefix=f"{root}/{prefix}")
    return [o["Key"] for o in resp.get("Contents", [])]
