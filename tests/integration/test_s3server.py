"""The test S3 server itself (tests/support/s3server.py): the shared server's volume budget
does not depend on the disk, and a server out of volume slots is diagnosable from its
report (docs/development.md, "The test S3 server")."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from support.s3server import MAX_VOLUMES, S3Server

pytestmark = [pytest.mark.s3]


def test_the_shared_server_has_the_pinned_volume_budget(s3_server: Any) -> None:
    slots = s3_server.volume_slots()
    assert slots is not None and slots[0] == MAX_VOLUMES


def test_a_server_out_of_volume_slots_refuses_a_new_bucket_and_says_why(
        testdir: Path) -> None:
    # Each bucket is a collection with a volume of its own: two slots hold two buckets,
    # the third bucket's first PUT is the CI flake's InternalError.
    with S3Server(testdir / "s3", max_volumes=2) as server:
        client = server.client()
        for _ in range(2):
            client.put_object(Bucket=server.make_bucket(), Key="k", Body=io.BytesIO(b"x"))
        with pytest.raises(ClientError) as caught:
            client.put_object(Bucket=server.make_bucket(), Key="k", Body=io.BytesIO(b"x"))
        assert caught.value.response["Error"]["Code"] == "InternalError"
        report = server.diagnostics(lines=200)
        assert "volume slots: 0 free of 2" in report
        assert "no free volumes left" in report
