"""S3 error translation: every vendor failure maps to the storage contract's errors.

The real server covers the common paths (tests/integration/test_storage_contract.py);
these cases are the ones SeaweedFS cannot be made to produce on demand (throttling,
5xx, expired tokens, TLS), built as the exception objects botocore raises.
"""

from __future__ import annotations

import pytest
from botocore import exceptions as bx

from pitr.config import RepositoryConfig
from pitr.errors import (
    AlreadyExists,
    ArchivedObject,
    NotFound,
    StorageError,
    TransientStorageError,
)
from pitr.storage.s3 import S3Storage, _check_key, _classify, parse_url, s3_options


def client_error(code: str, status: int, message: str = "msg") -> bx.ClientError:
    return bx.ClientError({"Error": {"Code": code, "Message": message},
                           "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize(("code", "status", "expected"), [
    ("NoSuchKey", 404, NotFound),
    ("NoSuchUpload", 404, NotFound),
    ("PreconditionFailed", 412, AlreadyExists),
    ("ConditionalRequestConflict", 409, AlreadyExists),
    ("SlowDown", 503, TransientStorageError),
    ("Throttling", 400, TransientStorageError),
    ("InternalError", 500, TransientStorageError),
    ("ServiceUnavailable", 503, TransientStorageError),
    ("RequestTimeout", 400, TransientStorageError),
    ("Whatever", 502, TransientStorageError),
    ("TooManyRequests", 429, TransientStorageError),
    ("BadDigest", 400, TransientStorageError),  # damaged in transit: send it again
    # a GLACIER object not restored: not "access denied" (docs/storage-tiers.md)
    ("InvalidObjectState", 403, ArchivedObject),
])
def test_client_errors(code: str, status: int, expected: type[StorageError]) -> None:
    err = _classify(client_error(code, status), "k", "put", "s3://b/p/")
    assert type(err) is expected


@pytest.mark.parametrize("code", ["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                                  "ExpiredToken", "403"])
def test_auth_errors_are_permanent_with_a_credentials_hint(code: str) -> None:
    err = _classify(client_error(code, 403), "k", "put", "s3://b/p/")
    assert type(err) is StorageError
    assert err.hint and "access_key_id" in err.hint and "IAM" in err.hint


@pytest.mark.parametrize(("code", "op"), [("404", "open"), ("NotFound", "open"),
                                          ("Whatever", "put"), ("404", "list")])
def test_a_404_that_is_not_nosuchkey_is_not_absence(code: str, op: str) -> None:
    """A proxy or a wrong endpoint answering 404 must never read as "segment absent"
    (archive-get would end recovery early on it)."""
    err = _classify(client_error(code, 404), "k", op, "s3://b/p/")
    assert type(err) is StorageError
    assert "unexpected 404" in err.message and err.hint and "proxy" in err.hint


def test_head_404_is_not_found() -> None:
    """HEAD responses carry no body: a 404 is all the server can say there."""
    assert type(_classify(client_error("404", 404), "k", "stat", "s3://b/p/")) is NotFound


def test_missing_bucket_is_permanent_with_a_hint() -> None:
    err = _classify(client_error("NoSuchBucket", 404), "k", "open", "s3://b/p/")
    assert type(err) is StorageError
    assert err.hint and "bucket" in err.hint


def test_a_server_without_crc32_checksums_gets_the_md5_hint() -> None:
    exc = bx.ClientError({"Error": {"Code": "InvalidArgument",
                                    "Message": "x-amz-checksum-crc32 is not supported"},
                          "ResponseMetadata": {"HTTPStatusCode": 400}}, "PutObject")
    err = _classify(exc, "k", "put", "s3://b/p/")
    assert type(err) is StorageError and err.hint and "upload_checksum" in err.hint


def test_clock_skew_hint() -> None:
    err = _classify(client_error("RequestTimeTooSkewed", 403), "k", "put", "s3://b/p/")
    assert type(err) is StorageError and err.hint and "clock" in err.hint


@pytest.mark.parametrize("exc", [
    bx.EndpointConnectionError(endpoint_url="http://x"),
    bx.ConnectTimeoutError(endpoint_url="http://x"),
    bx.ReadTimeoutError(endpoint_url="http://x"),
    bx.ConnectionClosedError(endpoint_url="http://x"),
    bx.IncompleteReadError(actual_bytes=1, expected_bytes=2),
    bx.ResponseStreamingError(error="reset"),
    ConnectionResetError("reset by peer"),
])
def test_network_errors_are_transient(exc: Exception) -> None:
    assert type(_classify(exc, "k", "open", "s3://b/p/")) is TransientStorageError


def test_urllib3_errors_are_transient() -> None:
    import urllib3.exceptions as ux

    err = _classify(ux.ProtocolError("broken"), "k", "open", "s3://b/p/")
    assert type(err) is TransientStorageError


def test_tls_and_credential_errors_are_permanent() -> None:
    tls = _classify(bx.SSLError(endpoint_url="https://x", error="bad cert"), "k", "put", "w")
    assert type(tls) is StorageError and tls.hint and "ca_bundle" in tls.hint
    creds = _classify(bx.NoCredentialsError(), "k", "put", "w")
    assert type(creds) is StorageError and creds.hint and "credential" in creds.hint


def test_secrets_are_scrubbed_from_messages() -> None:
    cfg = RepositoryConfig(url="s3://bucket/pre", endpoint_url="http://127.0.0.1:9",
                           region="us-east-1", access_key_id="AKIDSECRETID",
                           secret_access_key="very-secret-value", request_timeout=1)
    storage = S3Storage(cfg)
    err = storage._translate(client_error("AccessDenied", 403,
                                          "denied for very-secret-value / AKIDSECRETID"),
                             "k", "put")
    assert "very-secret-value" not in str(err) and "AKIDSECRETID" not in str(err)
    assert "very-secret-value" not in err.message


def test_parse_url() -> None:
    assert parse_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    assert parse_url("s3://bucket") == ("bucket", "")
    assert parse_url("s3://bucket//x//") == ("bucket", "x/")
    with pytest.raises(StorageError):
        parse_url("s3:///nobucket")


@pytest.mark.parametrize("key", ["", "/a", "a/", "a//b", "a/./b", "../a"])
def test_bad_keys(key: str) -> None:
    with pytest.raises(StorageError):
        _check_key(key)


@pytest.mark.parametrize(("endpoint", "signed"), [("", False), ("https://s3.example", False),
                                                  ("HTTPS://s3.example", False),
                                                  ("http://127.0.0.1:8333", True)])
def test_the_body_is_hashed_for_the_signature_only_without_tls(endpoint: str,
                                                               signed: bool) -> None:
    # botocore skips that sha256 on its own only when it sees Content-MD5; with the
    # CRC32 header it would hash every 16 MiB segment once more.
    from pitr.config import RepositoryConfig

    opts = s3_options(RepositoryConfig(url="s3://bucket/p", endpoint_url=endpoint))
    assert opts.get("payload_signing_enabled", True) is signed
