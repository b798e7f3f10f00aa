"""S3 repository (``s3://bucket/prefix``) through botocore (boto3's client layer).

The never-overwrite rule rests on conditional writes: ``If-None-Match: *`` on
PutObject and on CompleteMultipartUpload (AWS since 2024, SeaweedFS, MinIO);
the server answers 412 when the key exists. Both are atomic on the server, so
there is no check-then-write race.

Large or unknown-length streams go up as multipart uploads with bounded memory:
at most ``upload_concurrency + 1`` parts are held at once. A failed upload is
aborted; if even the abort fails (server gone), ``cleanup_incomplete`` removes
the leftover later.

botocore is imported when a driver is built, never at module import, so importing
this module stays cheap. botocore does not retry: callers own the retry budget
(``repository.timeout``), so one call here fails after about ``request_timeout``
(uploads add botocore's fixed 1 s wait for ``100 Continue``). The one exception
is a multipart part, retried once so a blip does not throw away a long upload.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import io
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast

from pitr.errors import (
    AlreadyExists,
    ArchivedObject,
    NotFound,
    StorageError,
    TransientStorageError,
)
from pitr.storage.base import ObjectInfo, in_key_order, listed_past, server_start_after
from pitr.stream import Readable

if TYPE_CHECKING:
    from pitr.config import RepositoryConfig

T = TypeVar("T")
_Rules = list[dict[str, Any]]  # lifecycle rules (S3's JSON shape); `list` is a method below

MIB = 1 << 20
MIN_PART = 5 * MIB  # S3's minimum for every part but the last
MAX_PART = 5 * 1024 * MIB
MAX_PARTS = 10_000
# A stream up to part_size + this goes up as one PutObject: an incompressible 16 MiB
# WAL segment plus its codec header must not turn into a two-part upload.
SINGLE_PUT_SLACK = 1 * MIB
# Parts double in size every this many parts, so a stream can exceed
# part_size × 10000 (e.g. 16 MiB parts reach ~1 TB) while small objects keep small parts.
PARTS_PER_SIZE_STEP = 2000
DELETE_BATCH = 1000

_NO_SUCH = {"NoSuchKey", "NoSuchUpload"}  # the server itself says the object is absent
_NOT_FOUND = {"404", "NotFound"}
_CONFLICT = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
_TRANSIENT = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequests",
    "RequestLimitExceeded", "ProvisionedThroughputExceededException", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable", "503", "500",
    "OperationAborted", "PriorRequestNotComplete", "BandwidthLimitExceeded",
    "BadDigest",  # the body arrived damaged (its checksum header caught it): send it again
}
_AUTH = {
    "AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled",
    "AuthorizationHeaderMalformed", "InvalidClientTokenId", "AccountProblem",
}
_CREDENTIALS_HINT = (
    "check repository.access_key_id / secret_access_key (or the AWS credential chain: "
    "AWS_ACCESS_KEY_ID, ~/.aws/credentials, instance role) and that the IAM policy allows "
    "s3:GetObject, s3:PutObject, s3:DeleteObject, s3:ListBucket and "
    "s3:AbortMultipartUpload / s3:ListBucketMultipartUploads on the bucket and prefix"
)


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix/"); the prefix may be empty."""
    if not url.startswith("s3://"):
        raise StorageError(f"not an S3 URL: {url!r}")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise StorageError(f"repository.url {url!r} names no bucket",
                           hint="use s3://bucket/prefix")
    prefix = "/".join(p for p in prefix.split("/") if p)
    return bucket, f"{prefix}/" if prefix else ""


def content_md5(data: bytes | bytearray) -> str:
    """The Content-MD5 header: the server refuses a body that did not arrive whole.

    boto's own checksums are off (see _client), and without one SeaweedFS stores
    an EMPTY object when a PUT's connection dies between headers and body (an
    agent killed mid-upload), which then blocks that WAL name.
    """
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def checksum_crc32(data: bytes | bytearray) -> str:
    """x-amz-checksum-crc32: verified like Content-MD5 (AWS, MinIO, SeaweedFS) for a
    fifth of its CPU, which on incompressible WAL is a fifth of a segment's push cost."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def s3_options(cfg: RepositoryConfig) -> dict[str, Any]:
    """botocore's S3 options.

    Over HTTPS the body is not hashed again for the signature: TLS plus the checksum
    header the server verifies (signed itself) cover it. botocore only skips that
    sha256 by itself when it sees Content-MD5, so with x-amz-checksum-crc32 it must be
    told; over plain HTTP the payload stays signed (CRC32 is no defence against a
    man in the middle).
    """
    opts: dict[str, Any] = {"addressing_style": "path" if cfg.path_style else "auto"}
    if not cfg.endpoint_url or cfg.endpoint_url.lower().startswith("https://"):
        opts["payload_signing_enabled"] = False
    return opts


def stored_by(last_modified: datetime) -> datetime:
    """A time the object was surely stored by, from S3's LastModified.

    S3 servers truncate LastModified to whole seconds (HTTP dates; SeaweedFS and AWS
    listings say ".000"), so the raw value can precede the actual write by up to a
    second. Callers use this time as an upper bound (the planner proves that a WAL
    segment archived at or after the target covers it), so a truncated value is
    rounded up to the end of its second rather than trusted.
    """
    t = last_modified.astimezone(UTC)
    return t + timedelta(seconds=1) if t.microsecond == 0 else t


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"invalid object key {key!r}")
    return key


def parse_timestamp(value: str | int | float) -> datetime:
    """A timestamp in a response, as botocore's own parser reads it, but fast for the
    ISO 8601 form with a zone that listings use; any other form goes to botocore's."""
    if isinstance(value, str):
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if t.tzinfo is not None:
                return t
    from botocore.utils import parse_timestamp as slow

    return slow(value)  # type: ignore[arg-type]  # it takes numbers too


_LIST_TEXT = frozenset({"Name", "Prefix", "Delimiter", "EncodingType", "ContinuationToken",
                        "NextContinuationToken", "StartAfter"})
_ENTRY_TEXT = frozenset({"Key", "ETag", "StorageClass", "ChecksumType"})


def _tag(el: Any) -> str:
    return str(el.tag).rpartition("}")[2]


def read_listing(body: bytes, timestamp: Callable[[str], datetime]) -> dict[str, Any] | None:
    """A ListObjectsV2 page's body as botocore's parser reads it, for the elements pitr
    knows; None for anything else (botocore's parser then reads the page).

    botocore reads every element through its generic model walk, about 40 ms a page of
    1,000 keys here, most of a plan's client time (docs/benchmarks.md).
    """
    root = _parse_xml(body)
    return None if root is None else _read_listing_tree(root, timestamp)


def _parse_xml(body: bytes) -> Any:
    """The body's element tree, as botocore builds it to look for an error; None when
    it does not parse."""
    from xml.etree import ElementTree

    try:
        parser = ElementTree.XMLParser(target=ElementTree.TreeBuilder(), encoding="utf-8")
        parser.feed(body)
        return parser.close()
    except ElementTree.ParseError:
        return None


def _read_listing_tree(root: Any, timestamp: Callable[[str], datetime]
                       ) -> dict[str, Any] | None:
    if _tag(root) != "ListBucketResult":
        return None
    out: dict[str, Any] = {}
    contents: list[dict[str, Any]] = []
    prefixes: list[dict[str, Any]] = []
    for el in root:
        tag = _tag(el)
        if tag == "Contents":
            entry: dict[str, Any] = {}
            for f in el:
                t = _tag(f)
                if t in _ENTRY_TEXT:
                    entry[t] = f.text or ""
                elif t == "Size":
                    entry[t] = int(f.text or "")
                elif t == "LastModified":
                    entry[t] = timestamp(f.text or "")
                elif t == "ChecksumAlgorithm":
                    entry.setdefault(t, []).append(f.text or "")
                else:
                    return None  # Owner, RestoreStatus, ...: botocore reads them
            contents.append(entry)
        elif tag == "CommonPrefixes":
            if [_tag(f) for f in el] != ["Prefix"]:
                return None
            prefixes.append({"Prefix": el[0].text or ""})
        elif tag in _LIST_TEXT:
            out[tag] = el.text or ""
        elif tag in ("MaxKeys", "KeyCount"):
            out[tag] = int(el.text or "")
        elif tag == "IsTruncated":
            out[tag] = el.text == "true"
        else:
            return None
    if contents:
        out["Contents"] = contents
    if prefixes:
        out["CommonPrefixes"] = prefixes
    return out


def listing_parser_factory() -> Any:
    """botocore's response parser factory whose REST-XML parser reads ListObjectsV2 pages
    with :func:`read_listing` (every other response, and any page it does not know,
    the usual way)."""
    return _listing_factory_class()()


@functools.cache
def _listing_factory_class() -> Any:
    """Made once per process (after botocore is imported, as the client needs it)."""
    from botocore import parsers

    class ListingParser(parsers.RestXMLParser):
        def _parse_payload(self, response: Any, shape: Any, member_shapes: Any,
                           final_parsed: Any) -> None:
            if shape is not None and shape.name == "ListObjectsV2Output" \
                    and response.get("body"):
                root = response.get(_PAGE_TREE)
                stamp = self._timestamp_parser  # type: ignore[attr-defined]
                fast = (read_listing(response["body"], stamp) if root is None
                        else _read_listing_tree(root, stamp))
                if fast is not None:
                    final_parsed.update(fast)
                    return
            super()._parse_payload(  # type: ignore[misc]  # untyped in the stubs
                response, shape, member_shapes, final_parsed)

    class Factory(parsers.ResponseParserFactory):
        def create_parser(self, protocol_name: str) -> Any:
            if protocol_name == "rest-xml":
                return ListingParser(**self._defaults)  # type: ignore[attr-defined]
            return super().create_parser(protocol_name)

    return Factory


@functools.cache
def _loader_class() -> Any:
    """botocore's data loader, except that it checks a service name by looking for that
    service alone: botocore lists every service's directory (about 450) for each model
    it loads, ~40 ms of CPU in each client made (docs/benchmarks.md, "Scale: a year of
    WAL"). Made once per process, after botocore is imported."""
    from botocore import loaders
    from botocore.exceptions import DataNotFoundError

    class Known:
        """The services with a ``type_name`` model: membership looks at the one service
        asked about; listing them (botocore's message for an unknown one) walks all."""

        def __init__(self, loader: loaders.Loader, type_name: str) -> None:
            self._loader, self._type = loader, type_name

        def __contains__(self, name: object) -> bool:
            if not isinstance(name, str):
                return False
            try:
                self._loader.list_api_versions(name, self._type)
            except DataNotFoundError:
                return False
            return True

        def _all(self) -> list[str]:
            return list(loaders.Loader.list_available_services(self._loader, self._type))

        def __iter__(self) -> Iterator[str]:
            return iter(self._all())

        def __len__(self) -> int:
            return len(self._all())

        def __getitem__(self, i: Any) -> Any:
            return self._all()[i]

    class ServiceLoader(loaders.Loader):
        def list_available_services(self, type_name: str) -> Any:
            return Known(self, type_name)

    return ServiceLoader


def _data_loader(search_path: str | None) -> Any:
    """:func:`_loader_class`'s loader on the search path botocore's own would have
    (``AWS_DATA_PATH``, then its defaults)."""
    from botocore import loaders

    paths = loaders.create_loader(search_path).search_paths
    return _loader_class()(extra_search_paths=list(paths), include_default_search_paths=False)


_PAGE_TREE = "pitr_page_tree"  # a listing page's parsed body, handed to ListingParser


def _error_in_200(original: Callable[..., None]) -> Callable[..., None]:
    """botocore's check for an S3 error inside a 200 response (``original``), which
    parses the whole body, with a listing page parsed once instead of twice: its tree
    goes on to :func:`listing_parser_factory`'s parser (docs/benchmarks.md, "Scale: a
    year of WAL"). Every other response, the original check."""

    def check(operation_model: Any, response_dict: Any, **kwargs: Any) -> None:
        if operation_model.name != "ListObjectsV2" or not response_dict \
                or response_dict.get("status_code") != 200 or not response_dict.get("body"):
            original(operation_model=operation_model, response_dict=response_dict, **kwargs)
            return
        root = _parse_xml(response_dict["body"])
        if root is None or root.tag == "Error":
            # as botocore: a cut-off body or an error document is a server error (500)
            response_dict["status_code"] = 500
            return
        response_dict[_PAGE_TREE] = root

    return check


class S3Storage:
    def __init__(self, cfg: RepositoryConfig) -> None:
        self.url = cfg.url
        self.bucket, self._prefix = parse_url(cfg.url)
        self._secrets = [s for s in (cfg.secret_access_key, cfg.session_token,
                                     cfg.access_key_id) if s]
        self.part_size = min(max(cfg.part_size_mib * MIB, MIN_PART), MAX_PART)
        self.concurrency = max(1, cfg.upload_concurrency)
        self.upload_checksum = cfg.upload_checksum
        self._put_args: dict[str, str] = {}
        if cfg.storage_class:
            self._put_args["StorageClass"] = cfg.storage_class
        if cfg.sse:
            self._put_args["ServerSideEncryption"] = cfg.sse
            if cfg.sse == "aws:kms" and cfg.sse_kms_key_id:
                self._put_args["SSEKMSKeyId"] = cfg.sse_kms_key_id
        self._client = self._make_client(cfg)
        # HTTP requests sent, by operation: budgets (docs/catalog-cache.md) are counted,
        # not timed. One botocore event per attempt, so retries count too.
        self.requests: Counter[str] = Counter()
        self._requests_lock = threading.Lock()
        self._client.meta.events.register("before-send.s3", self._count_request)

    def _count_request(self, event_name: str = "", **_kwargs: Any) -> None:
        # event_name is "before-send.s3.<Operation>"; parts upload from several threads
        with self._requests_lock:
            self.requests[event_name.rsplit(".", 1)[-1]] += 1

    def _make_client(self, cfg: RepositoryConfig) -> Any:
        try:
            import botocore.session
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - boto3 is a dependency
            raise StorageError("boto3 is not installed", hint="pip install boto3") from exc
        # botocore's own session, not boto3's: the client is the same (boto3 builds it
        # with botocore and the same credential chain), but boto3 adds resources and
        # s3transfer that pitr never uses, ~0.1 s per synchronous archive-push
        # (docs/benchmarks.md, "The synchronous archive-push"). A private session: a
        # shared one is not thread-safe to create clients from.
        session = botocore.session.Session()
        session.register_component("data_loader",
                                   _data_loader(session.get_config_variable("data_path")))
        # A listing page of 1,000 keys spent most of its client time in botocore's
        # generic reader and in dateutil reading each LastModified (docs/benchmarks.md,
        # "Scale: a year of WAL").
        factory = listing_parser_factory()
        factory.set_parser_defaults(timestamp_parser=parse_timestamp)
        session.register_component("response_parser_factory", factory)
        region = cfg.region or session.get_config_variable("region") or "us-east-1"
        timeout = float(cfg.request_timeout)
        config = Config(
            region_name=region,
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},
            # Connections open lazily, so a roomy pool is free; the agent runs several
            # multipart uploads at once and a full pool would churn connections.
            max_pool_connections=max(32, 4 * self.concurrency),
            s3=cast(Any, s3_options(cfg)),  # a TypedDict in the stubs
            # Non-AWS servers reject or mishandle the newer default CRC checksums.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_extra="pitr",
        )
        verify: bool | str | None = None
        if not cfg.verify_tls:
            verify = False
            # The operator opted out in the config; one warning per request on stderr
            # (archive-push runs per segment) would only bury real messages.
            with contextlib.suppress(ImportError):
                import urllib3

                urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        elif cfg.ca_bundle:
            verify = cfg.ca_bundle
        kwargs: dict[str, Any] = {}
        if cfg.access_key_id:
            kwargs.update(aws_access_key_id=cfg.access_key_id,
                          aws_secret_access_key=cfg.secret_access_key,
                          aws_session_token=cfg.session_token or None)
        try:
            client = session.create_client("s3", endpoint_url=cfg.endpoint_url or None,
                                           config=config, verify=verify, **kwargs)
        except Exception as exc:
            raise self._translate(exc, "", "connect") from None
        from botocore import handlers

        original = getattr(handlers, "_handle_200_error", None)
        if original is not None:  # a botocore without it: both checks run, as before
            client.meta.events.unregister("before-parse.s3.*", original)
            client.meta.events.register_first("before-parse.s3.*", _error_in_200(original))
        return client

    # -- error boundary ----------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "********")
        return text

    def _translate(self, exc: BaseException, key: str, op: str) -> StorageError:
        err = _classify(exc, key, op, f"s3://{self.bucket}/{self._prefix}")
        err.message = self._scrub(err.message)
        err.args = (err.message,)
        if err.hint:
            err.hint = self._scrub(err.hint)
        return err

    def _call(self, op: str, key: str, fn: Callable[..., T], /, **kwargs: Any) -> T:
        try:
            return fn(**kwargs)
        except StorageError:
            raise
        except Exception as exc:
            raise self._translate(exc, key, op) from None

    def _full(self, key: str) -> str:
        return self._prefix + _check_key(key)

    # -- primitives --------------------------------------------------------------

    # If-None-Match is the server's to enforce: pitr.condwrites proves it does.
    conditional_by_server = True

    def put(self, key: str, src: Readable, *, if_absent: bool = False,
            storage_class: str = "") -> int:
        full = self._full(key)
        args = self._args_with(storage_class)
        reader = _Chunker(src)
        head = reader.take(self.part_size + SINGLE_PUT_SLACK)
        if len(head) < self.part_size + SINGLE_PUT_SLACK:
            self._put_single(key, full, head, if_absent, args)
            return len(head)
        if if_absent:
            # Cheap early refusal before uploading gigabytes; the conditional
            # CompleteMultipartUpload below is what actually guarantees it.
            with contextlib.suppress(NotFound):
                self.stat(key)
                raise AlreadyExists(f"{key}: already exists in {self.url}")
        reader.unread(bytes(head[self.part_size:]))
        del head[self.part_size:]  # in place: the first part is not copied
        # Handed over in a list the callee empties, so no frame here pins a part in memory.
        first = [head]
        del head
        return self._put_multipart(key, full, first, reader, if_absent, args)

    def _args_with(self, storage_class: str) -> dict[str, str]:
        """PutObject/CreateMultipartUpload arguments; a class given per object (WAL,
        backup data: pitr.tiers.upload_class) wins over repository.storage_class."""
        return {**self._put_args, "StorageClass": storage_class} if storage_class \
            else self._put_args

    def _put_single(self, key: str, full: str, data: bytearray, if_absent: bool,
                    args: dict[str, str]) -> None:
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        self._call("put", key, self._client.put_object, Bucket=self.bucket, Key=full,
                   Body=data, **args, **extra, **self._checksum(data))

    def _checksum(self, data: bytes | bytearray) -> dict[str, str]:
        """The checksum header the server verifies the body against (see content_md5)."""
        if self.upload_checksum == "crc32":
            return {"ChecksumCRC32": checksum_crc32(data)}
        return {"ContentMD5": content_md5(data)}

    def _put_multipart(self, key: str, full: str, first: list[bytearray], reader: _Chunker,
                       if_absent: bool, args: dict[str, str]) -> int:
        upload = self._call("put", key, self._client.create_multipart_upload,
                            Bucket=self.bucket, Key=full, **args)
        upload_id: str = upload["UploadId"]
        etags: dict[int, str] = {}
        total = 0
        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="pitr-s3-part") as pool:
                pending: set[Future[None]] = set()
                chunk: bytearray | None = first.pop()
                part = 1
                while True:
                    if chunk is None:
                        chunk = reader.take(self._part_size(part))
                    if not chunk:
                        break
                    if part > MAX_PARTS:
                        raise StorageError(
                            f"{key}: stream exceeds {MAX_PARTS} multipart parts",
                            hint="raise repository.part_size_mib")
                    # Bounded memory: wait for a slot before reading more of the stream.
                    while len(pending) >= self.concurrency:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for f in done:
                            f.result()
                    pending.add(pool.submit(self._upload_part, key, full, upload_id, part,
                                            chunk, etags))
                    total += len(chunk)
                    chunk = None
                    part += 1
                for f in pending:
                    f.result()
            parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
            extra = {"IfNoneMatch": "*"} if if_absent else {}
            self._call("put", key, self._client.complete_multipart_upload,
                       Bucket=self.bucket, Key=full, UploadId=upload_id,
                       MultipartUpload={"Parts": parts}, **extra)
        except BaseException as exc:
            # Runs after the pool drained, so no part lands after the abort.
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=full,
                                                    UploadId=upload_id)
            if isinstance(exc, NotFound):  # NoSuchUpload: aborted underneath us
                raise TransientStorageError(
                    f"{key}: the multipart upload was aborted while in progress "
                    "(a concurrent cleanup?); retry") from None
            raise
        return total

    def _part_size(self, part: int) -> int:
        return min(self.part_size << ((part - 1) // PARTS_PER_SIZE_STEP), MAX_PART)

    def _upload_part(self, key: str, full: str, upload_id: str, part: int, data: bytearray,
                     etags: dict[int, str]) -> None:
        args = {"Bucket": self.bucket, "Key": full, "UploadId": upload_id,
                "PartNumber": part, "Body": data, "ContentMD5": content_md5(data)}
        try:
            resp = self._call("put", key, self._client.upload_part, **args)
        except TransientStorageError:
            resp = self._call("put", key, self._client.upload_part, **args)
        etags[part] = resp["ETag"]  # distinct keys per thread: safe under the GIL

    def read_with_etag(self, key: str) -> tuple[bytes, str]:
        resp = self._call("open", key, self._client.get_object, Bucket=self.bucket,
                          Key=self._full(key))
        with contextlib.closing(_Body(resp["Body"], key, self._translate)) as body:
            return body.read(), str(resp["ETag"])

    def put_if_match(self, key: str, data: bytes, etag: str) -> int:
        """One PutObject with ``If-Match``: the server compares and writes atomically
        (412 when the ETag changed). Whole objects only: callers replace WAL objects."""
        self._call("put", key, self._client.put_object, Bucket=self.bucket,
                   Key=self._full(key), Body=data, IfMatch=etag, **self._put_args,
                   **self._checksum(data))
        return len(data)

    def open(self, key: str) -> BinaryIO:
        resp = self._call("open", key, self._client.get_object, Bucket=self.bucket,
                          Key=self._full(key))
        return cast(BinaryIO, _Body(resp["Body"], key, self._translate))

    def stat(self, key: str) -> ObjectInfo:
        resp = self._call("stat", key, self._client.head_object, Bucket=self.bucket,
                          Key=self._full(key))
        return ObjectInfo(key, int(resp["ContentLength"]), stored_by(resp["LastModified"]),
                          _class_of(resp))

    def list(self, prefix: str = "", *, start_after: str | None = None,
             end_before: str | None = None) -> Iterator[ObjectInfo]:
        # Streamed page by page: pages are fetched as the caller consumes them, so a
        # caller that stops early (or an ``end_before``) saves the remaining requests.
        # in_key_order restores byte order from servers that list in tree order.
        yield from in_key_order(
            self._list_unsorted(prefix, server_start_after(prefix, start_after), end_before),
            prefix, start_after=start_after, end_before=end_before)

    def _list_unsorted(self, prefix: str, start_after: str | None,
                       end_before: str | None = None) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` after ``start_after``, page by page.

        From the second page on, the next page is asked for while the caller reads this
        one: a long listing (a plan's WAL path, a full catalog) then waits on the server
        and works on the pages it has at the same time (docs/benchmarks.md, "Scale: a
        year of WAL"). A caller that stops after the first page never costs a request
        more; one that stops later, at most one; a page past ``end_before`` is never
        asked for ahead.
        """
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._prefix + prefix}
        if start_after:
            args["StartAfter"] = self._prefix + start_after
        where = prefix or "/"

        def fetch(token: str | None) -> dict[str, Any]:
            kwargs = {**args, "ContinuationToken": token} if token else args
            page: dict[str, Any] = self._call("list", where, self._client.list_objects_v2,
                                              **kwargs)
            return page

        cut = len(self._prefix)
        page = fetch(None)
        pool: ThreadPoolExecutor | None = None
        ahead: Future[dict[str, Any]] | None = None
        seen: set[str] = set()
        try:
            while True:
                token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
                if token is not None:
                    if token in seen:  # as botocore's paginator: never loop on the server
                        raise StorageError(f"{where}: the S3 server repeated a listing's "
                                           "continuation token")
                    seen.add(token)
                    contents = page.get("Contents") or ()
                    if len(seen) > 1 and not (  # the caller reads on: ask for the next page now
                            end_before is not None and contents and listed_past(
                                contents[-1]["Key"][cut:], len(prefix)) >= end_before):
                        pool = pool or ThreadPoolExecutor(1, thread_name_prefix="pitr-s3-list")
                        ahead = pool.submit(fetch, token)
                for obj in page.get("Contents", ()):
                    name: str = obj["Key"]
                    if name.endswith("/"):
                        continue  # a "directory" marker some tools create, not an object
                    yield ObjectInfo(name[cut:], int(obj["Size"]),
                                     stored_by(obj["LastModified"]), _class_of(obj))
                if token is None:
                    return
                if ahead is not None:
                    page, ahead = ahead.result(), None
                else:
                    page = fetch(token)
        finally:
            if pool is not None:
                if ahead is not None:
                    ahead.cancel()
                pool.shutdown(wait=False)

    def delete(self, keys: Iterable[str]) -> int:
        """Delete in batches of 1000. Returns how many keys were processed: S3 does not say
        whether a key existed, and an absent key is not an error."""
        done = 0
        failed: list[tuple[str, str, str]] = []
        batch: list[str] = []

        def flush() -> None:
            nonlocal done
            if not batch:
                return
            resp = self._call(
                "delete", batch[0], self._client.delete_objects, Bucket=self.bucket,
                Delete={"Objects": [{"Key": self._full(k)} for k in batch], "Quiet": True})
            errors = resp.get("Errors", [])
            cut = len(self._prefix)
            for e in errors:
                failed.append((e.get("Key", "?")[cut:], e.get("Code", "?"),
                               e.get("Message", "")))
            done += len(batch) - len(errors)
            batch.clear()

        for key in keys:
            _check_key(key)
            batch.append(key)
            if len(batch) >= DELETE_BATCH:
                flush()
        flush()
        if failed:
            shown = "; ".join(f"{k}: {c} {m}".strip() for k, c, m in failed[:5])
            more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
            msg = self._scrub(f"{len(failed)} object(s) not deleted from {self.url}: "
                              f"{shown}{more}")
            if all(c in _TRANSIENT for _k, c, _m in failed):
                raise TransientStorageError(msg)
            hint = _CREDENTIALS_HINT if any(c in _AUTH for _k, c, _m in failed) else None
            raise StorageError(msg, hint=hint)
        return done

    def cleanup_incomplete(self, prefix: str = "") -> int:
        """Abort unfinished multipart uploads under ``prefix``. Run it only when no writer
        is active under that prefix: S3 cannot tell an abandoned upload from a live one."""
        full_prefix = self._prefix + prefix
        found: list[tuple[str, str]] = []
        paginator = self._client.get_paginator("list_multipart_uploads")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                found += [(u["Key"], u["UploadId"]) for u in page.get("Uploads", ())]
        except Exception as exc:
            raise self._translate(exc, prefix or "/", "list uploads") from None
        removed = 0
        for full, upload_id in found:
            with contextlib.suppress(NotFound):  # finished or aborted meanwhile
                self._call("cleanup", full[len(self._prefix):],
                           self._client.abort_multipart_upload, Bucket=self.bucket,
                           Key=full, UploadId=upload_id)
                removed += 1
        return removed


    # -- storage tiers (TieredStorage, docs/storage-tiers.md) -------------------------

    @property
    def key_prefix(self) -> str:
        return self._prefix

    def get_tags(self, key: str) -> dict[str, str]:
        resp = self._call("get tags", key, self._client.get_object_tagging,
                          Bucket=self.bucket, Key=self._full(key))
        return {str(t["Key"]): str(t["Value"]) for t in resp.get("TagSet", ())}

    def set_tags(self, key: str, tags: dict[str, str]) -> None:
        self._call("set tags", key, self._client.put_object_tagging, Bucket=self.bucket,
                   Key=self._full(key),
                   Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in sorted(tags.items())]})

    def thaw_status(self, key: str) -> tuple[str, str | None]:
        resp = self._call("stat", key, self._client.head_object, Bucket=self.bucket,
                          Key=self._full(key))
        restore = resp.get("Restore")
        return _class_of(resp), None if restore is None else str(restore)

    def request_thaw(self, key: str, days: int, tier: str) -> None:
        try:
            self._client.restore_object(
                Bucket=self.bucket, Key=self._full(key),
                RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}})
        except Exception as exc:
            from botocore import exceptions as bx

            if isinstance(exc, bx.ClientError):
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code == "RestoreAlreadyInProgress":
                    return  # asked before: the running request serves us
                if code in ("MethodNotAllowed", "NotImplemented", "InvalidObjectState"):
                    raise StorageError(
                        f"{key}: the S3 server refused to restore it from its archive class "
                        f"({code})",
                        hint="this server may not support RestoreObject (SeaweedFS, MinIO "
                             "read every class directly); on AWS, InvalidObjectState means "
                             "the object is not in GLACIER or DEEP_ARCHIVE") from None
            raise self._translate(exc, key, "restore") from None

    def get_lifecycle(self) -> _Rules:
        try:
            resp = self._client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
        except Exception as exc:
            from botocore import exceptions as bx

            if isinstance(exc, bx.ClientError) and exc.response.get("Error", {}).get(
                    "Code") == "NoSuchLifecycleConfiguration":
                return []
            raise self._translate(exc, "/", "get lifecycle") from None
        return [dict(r) for r in resp.get("Rules", ())]

    def put_lifecycle(self, rules: _Rules) -> None:
        try:
            self._client.put_bucket_lifecycle_configuration(
                Bucket=self.bucket, LifecycleConfiguration={"Rules": rules})
        except Exception as exc:
            from botocore import exceptions as bx

            if isinstance(exc, bx.ClientError) and exc.response.get("Error", {}).get(
                    "Code") in ("NotImplemented", "MalformedXML", "InvalidRequest",
                                "InvalidArgument"):
                err = exc.response["Error"]
                raise StorageError(
                    self._scrub(f"the S3 server refused the lifecycle rules of bucket "
                                f"{self.bucket}: {err.get('Code')} {err.get('Message', '')}"
                                .strip()),
                    hint="this server may not support these rules (SeaweedFS has no "
                         "transitions); `pitr lifecycle --json` prints them to set up "
                         "elsewhere") from None
            raise self._translate(exc, "/", "put lifecycle") from None


def _class_of(resp: dict[str, Any]) -> str:
    """The object's storage class, "" for STANDARD (S3 leaves it out of a HEAD then), so
    every driver reports the default class alike (ObjectInfo.storage_class)."""
    found = str(resp.get("StorageClass") or "")
    return "" if found == "STANDARD" else found


class _Chunker:
    """Reads exact-size chunks from a stream whose ``read`` may return short counts
    (a compressor does; boto3's own upload_fileobj takes a short read for EOF and
    silently stores a truncated object).

    Chunks are bytearrays grown in place and handed to botocore as they are: a
    ``b"".join`` or a bytes body would briefly hold each part twice.
    """

    def __init__(self, src: Readable) -> None:
        self._src = src
        self._pending = b""
        self._eof = False

    def unread(self, data: bytes) -> None:
        self._pending = data + self._pending

    def take(self, n: int) -> bytearray:
        buf = bytearray(self._pending)
        self._pending = b""
        while len(buf) < n and not self._eof:
            data = self._src.read(n - len(buf))
            if not data:
                self._eof = True
                break
            buf += data
        return buf


class _Body(io.RawIOBase):
    """The GetObject stream with errors translated (a read can time out or be cut off)."""

    def __init__(self, stream: Any, key: str,
                 translate: Callable[[BaseException, str, str], StorageError]) -> None:
        super().__init__()
        self._stream = stream
        self._key = key
        self._translate = translate

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed S3 object stream")
        try:
            data: bytes = self._stream.read(None if size is None or size < 0 else size)
            return data
        except Exception as exc:
            raise self._translate(exc, self._key, "read") from None

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        n = len(data)
        memoryview(buffer).cast("B")[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._stream.close()
        super().close()


def _classify(exc: BaseException, key: str, op: str, where: str) -> StorageError:
    """Map a boto/urllib3/socket error to the storage contract's errors."""
    from botocore import exceptions as bx

    what = f"{key}: S3 {op} failed"
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "?"))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        text = f"{what}: {code} {err.get('Message', '')}".strip()
        if code == "NoSuchBucket":
            return StorageError(f"{what}: the bucket of {where} does not exist",
                                hint="create the bucket, or fix repository.url")
        if code in _NO_SUCH or (op == "stat" and status == 404):
            return NotFound(f"{key}: not found in the repository ({where})")
        if status == 404 or code in _NOT_FOUND:
            # Only the server's own "no such key" proves an object absent (docs/exit-codes.md,
            # archive-get); a bare 404 to a GET comes from a proxy, a wrong
            # endpoint or prefix. HEAD has no body to say more, so stat keeps 404.
            return StorageError(f"{what}: unexpected 404 ({code}) from {where}: not the "
                                "server's NoSuchKey, so the object is not known to be absent",
                                hint="check repository.endpoint_url, the bucket and any proxy "
                                     "in between")
        if code in _CONFLICT or status == 412:
            return AlreadyExists(f"{key}: already exists in the repository ({where})")
        if code in _TRANSIENT or status == 429 or status >= 500:
            return TransientStorageError(text)
        if "checksum" in text.lower() and code in ("InvalidArgument", "NotImplemented",
                                                    "InvalidRequest"):
            return StorageError(text, hint="this S3 server does not take x-amz-checksum-crc32: "
                                           "set repository.upload_checksum = \"md5\"")
        if code == "InvalidObjectState":
            # GetObject on a GLACIER / DEEP_ARCHIVE object that is not restored (a 403,
            # which must not read as "access denied": docs/storage-tiers.md)
            return ArchivedObject(f"{key}: the object is in an archive storage class and "
                                  f"must be restored before it can be read ({where})")
        if code == "RequestTimeTooSkewed":
            return StorageError(text, hint="the clock of this host is off: run NTP")
        if code in _AUTH or status in (401, 403):
            return StorageError(f"{what}: access denied ({code})", hint=_CREDENTIALS_HINT)
        return StorageError(text)
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return StorageError(f"{what}: no S3 credentials found", hint=_CREDENTIALS_HINT)
    if isinstance(exc, bx.SSLError):
        return StorageError(f"{what}: TLS error talking to the S3 endpoint: {exc}",
                            hint="check repository.endpoint_url and repository.ca_bundle "
                                 "(verify_tls = false only for testing)")
    if isinstance(exc, bx.ConnectionError | bx.HTTPClientError | bx.IncompleteReadError
                  | bx.ResponseStreamingError | bx.ReadTimeoutError | bx.ConnectTimeoutError):
        return TransientStorageError(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, bx.ParamValidationError):
        return StorageError(f"{what}: invalid request: {exc}")
    if isinstance(exc, bx.BotoCoreError):
        return StorageError(f"{what}: {type(exc).__name__}: {exc}")
    try:
        import urllib3.exceptions as ux

        if isinstance(exc, ux.HTTPError):
            return TransientStorageError(f"{what}: {type(exc).__name__}: {exc}")
    except ImportError:  # pragma: no cover - urllib3 ships with botocore
        pass
    if isinstance(exc, OSError):
        return TransientStorageError(f"{what}: {exc}")
    return StorageError(f"{what}: {type(exc).__name__}: {exc}")
