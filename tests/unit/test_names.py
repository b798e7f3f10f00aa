from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pitr.pg import names
from pitr.pg.names import (
    WalKind,
    backup_history_name,
    classify,
    format_lsn,
    history_name,
    lsn_to_segno,
    parse_history,
    parse_lsn,
    parse_segment_name,
    segment_name,
    segno_to_lsn,
    timeline_of,
)

SEG_SIZES = st.sampled_from([1 << 20, 16 << 20, 64 << 20, 1 << 30])


def test_doctests() -> None:
    assert doctest.testmod(names).failed == 0


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_lsn_round_trip(lsn: int) -> None:
    assert parse_lsn(format_lsn(lsn)) == lsn


@given(st.integers(1, 0xFFFFFFFF), st.integers(0, (1 << 40)), SEG_SIZES)
def test_segment_name_round_trip(tli: int, segno: int, seg_size: int) -> None:
    segno %= (1 << 64) // seg_size
    name = segment_name(tli, segno, seg_size)
    assert len(name) == 24 and name == name.upper()
    assert parse_segment_name(name, seg_size) == (tli, segno)
    assert classify(name) is WalKind.SEGMENT
    assert timeline_of(name) == tli


@given(st.integers(0, (1 << 64) - 1), SEG_SIZES)
def test_lsn_lies_in_its_segment(lsn: int, seg_size: int) -> None:
    segno = lsn_to_segno(lsn, seg_size)
    assert segno_to_lsn(segno, seg_size) <= lsn < segno_to_lsn(segno + 1, seg_size)


def test_known_names() -> None:
    assert segment_name(1, 0x1FF) == "0000000100000001000000FF"
    assert history_name(0x1A) == "0000001A.history"
    backup = backup_history_name(1, parse_lsn("0/2000028"))
    assert backup == "000000010000000000000002.00000028.backup"
    assert classify("00000002.history") is WalKind.HISTORY
    assert classify("000000010000000000000003.partial") is WalKind.PARTIAL
    assert classify("000000010000000000000002.00000028.backup") is WalKind.BACKUP


@pytest.mark.parametrize("bad", ["", "0/", "x/1", "1/2/3", "123456789/0"])
def test_bad_lsn(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_lsn(bad)


@pytest.mark.parametrize("bad", ["00000001000000000000000", "0000000100000000000001000",
                                 "000000000000000000000001", "00000001000000000000010G",
                                 "../etc/passwd", "00000001.history.zst"])
def test_bad_names(bad: str) -> None:
    with pytest.raises(ValueError):
        classify(bad) if "history" in bad or "/" in bad else parse_segment_name(bad)


def test_segment_beyond_log_rejected() -> None:
    with pytest.raises(ValueError):
        parse_segment_name("000000010000000000000100")


def test_parse_history() -> None:
    text = "1\t0/3000160\tno recovery target specified\n\n2\t0/5000000\tbefore 2025-02-15\n"
    entries = parse_history(text)
    assert [(e.parent, e.switch_lsn) for e in entries] == [(1, 0x3000160), (2, 0x5000000)]
