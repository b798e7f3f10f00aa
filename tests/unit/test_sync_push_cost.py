"""What keeps the synchronous archive-push cheap (docs/benchmarks.md, "The synchronous
archive-push"): no boto3 layer over botocore, and no cyclic GC in the one-shot process."""

from __future__ import annotations

import subprocess
import sys


def _run(script: str) -> None:
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_s3_driver_builds_its_client_without_boto3() -> None:
    # Building a client opens no connection, so an unreachable endpoint is fine.
    _run(
        "import sys\n"
        "from pitr.config import RepositoryConfig\n"
        "from pitr.storage.s3 import S3Storage\n"
        "cfg = RepositoryConfig(url='s3://b/p', endpoint_url='https://127.0.0.1:9',\n"
        "                       region='eu-west-3', access_key_id='AKIDEXAMPLE',\n"
        "                       secret_access_key='x' * 40)\n"
        "s = S3Storage(cfg)\n"
        "assert s._client.meta.region_name == 'eu-west-3'\n"
        "heavy = [m for m in ('boto3', 's3transfer') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )


def test_region_comes_from_the_aws_chain_when_not_configured() -> None:
    proc = subprocess.run(
        [sys.executable, "-c",
         "from pitr.config import RepositoryConfig\n"
         "from pitr.storage.s3 import S3Storage\n"
         "s = S3Storage(RepositoryConfig(url='s3://b/p', endpoint_url='https://127.0.0.1:9'))\n"
         "print(s._client.meta.region_name)\n"],
        capture_output=True, text=True,
        env={"AWS_DEFAULT_REGION": "ap-south-2", "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
             "AWS_SECRET_ACCESS_KEY": "x" * 40, "AWS_CONFIG_FILE": "/nonexistent",
             "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ap-south-2"


def test_direct_path_runs_the_command_without_cyclic_gc_and_freezes_after() -> None:
    _run(
        "import gc\n"
        "from pitr import entry\n"
        "from pitr.wal import commands\n"
        "seen = []\n"
        "def fake(config, path):\n"
        "    seen.append((gc.isenabled(), config, path))\n"
        "    return 7\n"
        "commands.archive_push_main = fake\n"
        "assert gc.isenabled() and gc.get_freeze_count() == 0\n"
        "assert entry.direct_path(['--config', 'c.toml', 'archive-push', 'p']) == 7\n"
        "assert seen == [(False, 'c.toml', 'p')], seen\n"
        "assert gc.isenabled() and gc.get_freeze_count() > 0\n"
        "assert entry.direct_path(['archive-push', 'a', 'b']) is None  # the CLI reports arity\n"
    )
