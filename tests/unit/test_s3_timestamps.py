"""The S3 driver's fast timestamp reader answers as botocore's own does (pitr/storage/s3.py).

Listings spent most of their client time in dateutil reading each entry's LastModified;
the fast reader must give the very same datetimes, zone included, for every form a
server sends (ISO 8601 in listings, RFC 1123 in headers, epoch numbers).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.utils import parse_timestamp as botocore_parse
from hypothesis import given
from hypothesis import strategies as st

from pitr.storage.s3 import parse_timestamp

TIMES = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2200, 1, 1),
                     timezones=st.just(UTC))


@given(TIMES)
def test_every_form_reads_as_botocore_reads_it(t: datetime) -> None:
    forms = [t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z",
             t.strftime("%Y-%m-%dT%H:%M:%SZ"), t.isoformat(),
             t.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00"),
             t.strftime("%a, %d %b %Y %H:%M:%S GMT"), int(t.timestamp())]
    for form in forms:
        fast, slow = parse_timestamp(form), botocore_parse(form)  # type: ignore[arg-type]
        assert fast == slow and fast.utcoffset() == slow.utcoffset(), form


def test_an_offset_is_kept_and_a_naive_time_goes_to_botocore() -> None:
    t = parse_timestamp("2026-12-01T10:00:00+02:00")
    assert t == datetime(2026, 12, 1, 8, tzinfo=UTC) and t.utcoffset() == timedelta(hours=2)
    assert parse_timestamp("2026-12-01T10:00:00") == botocore_parse("2026-12-01T10:00:00")


# -- listing pages: pitr's reader against botocore's ------------------------------------

KEYS = st.text(alphabet="abcdefXYZ0123456789/._-&<>'\"é ", min_size=1, max_size=30)


@st.composite
def listing_pages(draw: st.DrawFn) -> bytes:
    from xml.sax.saxutils import escape

    ns = draw(st.sampled_from([' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"', ""]))
    parts = [f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult{ns}>",
             "<Name>bucket</Name>", f"<Prefix>{escape(draw(KEYS))}</Prefix>"]
    if draw(st.booleans()):
        parts.append(f"<StartAfter>{escape(draw(KEYS))}</StartAfter>")
    n = draw(st.integers(0, 6))
    parts.append(f"<KeyCount>{n}</KeyCount><MaxKeys>1000</MaxKeys>")
    truncated = draw(st.booleans())
    parts.append(f"<IsTruncated>{str(truncated).lower()}</IsTruncated>")
    if truncated:
        parts.append("<NextContinuationToken>tok+/=</NextContinuationToken>")
    for _ in range(n):
        t = draw(TIMES)
        entry = [f"<Key>{escape(draw(KEYS))}</Key>",
                 f"<LastModified>{t.strftime('%Y-%m-%dT%H:%M:%S.')}"
                 f"{t.microsecond // 1000:03d}Z</LastModified>",
                 '<ETag>"d41d8cd98f00b204e9800998ecf8427e"</ETag>',
                 f"<Size>{draw(st.integers(0, 1 << 40))}</Size>"]
        if draw(st.booleans()):
            entry.append(f"<StorageClass>{draw(st.sampled_from(['STANDARD', 'GLACIER']))}"
                         "</StorageClass>")
        if draw(st.booleans()):
            entry.append("<ChecksumAlgorithm>CRC32</ChecksumAlgorithm>")
        if draw(st.booleans()):  # not read by pitr's reader: the whole page goes to botocore
            entry.append("<Owner><ID>abc</ID><DisplayName>me</DisplayName></Owner>")
        draw(st.randoms()).shuffle(entry)
        parts.append("<Contents>" + "".join(entry) + "</Contents>")
    if draw(st.booleans()):
        parts.append(f"<CommonPrefixes><Prefix>{escape(draw(KEYS))}</Prefix></CommonPrefixes>")
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()


@given(listing_pages())
def test_a_listing_page_reads_as_botocore_reads_it(body: bytes) -> None:
    import botocore.session
    from botocore.parsers import RestXMLParser

    from pitr.storage.s3 import listing_parser_factory

    shape = botocore.session.Session().get_service_model("s3").operation_model(
        "ListObjectsV2").output_shape
    response = {"body": body, "status_code": 200,
                "headers": {"x-amz-request-id": "r1", "x-amz-id-2": "h"}}
    factory = listing_parser_factory()
    factory.set_parser_defaults(timestamp_parser=parse_timestamp)
    ours = factory.create_parser("rest-xml").parse(dict(response), shape)
    theirs = RestXMLParser().parse(dict(response), shape)  # botocore's defaults throughout
    assert ours == theirs


def _driver_events() -> Any:
    from pitr.config import RepositoryConfig
    from pitr.storage.s3 import S3Storage

    cfg = RepositoryConfig(url="s3://bucket/pre", endpoint_url="http://127.0.0.1:9",
                           region="us-east-1", access_key_id="AKID", secret_access_key="s",
                           request_timeout=1)
    return S3Storage(cfg)._client.meta.events  # no request is sent


PAGE = (b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazon'
        b'aws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p/</Prefix><KeyCount>1</KeyCount>'
        b'<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated><Contents><Key>p/a</Key>'
        b'<LastModified>2025-01-02T03:04:05.000Z</LastModified><ETag>"e"</ETag><Size>3</Size>'
        b'<StorageClass>STANDARD</StorageClass></Contents></ListBucketResult>')
ERROR = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
         b'<Message>We encountered an internal error.</Message></Error>')


@pytest.mark.parametrize("operation", ["ListObjectsV2", "CompleteMultipartUpload"])
@pytest.mark.parametrize("body", [PAGE, ERROR, PAGE[:len(PAGE) // 2], b""])
def test_an_error_inside_a_200_response_is_found_as_botocore_finds_it(
        operation: str, body: bytes) -> None:
    """The driver parses a listing page once (not once more to look for an error, as
    botocore's own check does), and still turns an error document or a cut-off body
    into a server error (500) exactly where botocore's check does."""
    import botocore.session
    from botocore import handlers
    from botocore.parsers import RestXMLParser

    from pitr.storage.s3 import listing_parser_factory

    model = botocore.session.Session().get_service_model("s3").operation_model(operation)
    events = _driver_events()
    ours: dict[str, Any] = {"body": body, "status_code": 200, "headers": {}}
    ran = events.emit(f"before-parse.s3.{operation}", operation_model=model,
                      response_dict=ours, customized_response_dict={})
    assert handlers._handle_200_error not in [h for h, _ in ran]
    theirs: dict[str, Any] = {"body": body, "status_code": 200, "headers": {}}
    handlers._handle_200_error(operation_model=model, response_dict=theirs)
    assert ours["status_code"] == theirs["status_code"]
    if ours["status_code"] == 200 and body:
        factory = listing_parser_factory()
        factory.set_parser_defaults(timestamp_parser=parse_timestamp)
        parsed = factory.create_parser("rest-xml").parse(ours, model.output_shape)
        assert parsed == RestXMLParser().parse(theirs, model.output_shape)


def test_the_drivers_model_loader_answers_as_botocores() -> None:
    """The S3 driver's loader looks for the one service it is asked about (botocore's
    lists all of them): the same models, the same error for an unknown service."""
    from botocore.exceptions import UnknownServiceError
    from botocore.loaders import Loader

    from pitr.storage.s3 import _data_loader

    ours, theirs = _data_loader(None), Loader()
    assert ours.search_paths == theirs.search_paths
    for name in ("s3", "sts"):
        assert name in ours.list_available_services("service-2")
        assert ours.load_service_model(name, "service-2") == \
            theirs.load_service_model(name, "service-2")
    assert ours.load_service_model("s3", "endpoint-rule-set-1") == \
        theirs.load_service_model("s3", "endpoint-rule-set-1")
    assert list(ours.list_available_services("service-2")) == \
        theirs.list_available_services("service-2")
    for loader in (ours, theirs):
        with pytest.raises(UnknownServiceError, match="s3"):  # the known ones are named
            loader.load_service_model("no-such-service", "service-2")
