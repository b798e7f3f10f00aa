"""The S3 driver's fast timestamp reader answers as botocore's own does (pitr/storage/s3.py).

Listings spent most of their client time in dateutil reading each entry's LastModified;
the fast reader must give the very same datetimes, zone included, for every form a
server sends (ISO 8601 in listings, RFC 1123 in headers, epoch numbers).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
