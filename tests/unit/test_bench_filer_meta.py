"""bench/filer_meta.py: the hand-written protobuf of SeaweedFS filer entries that
bench/scale.py clones (docs/benchmarks.md, "Scale: a year of WAL")."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import filer_meta as fm

# The FullEntry that `weed shell fs.meta.save` (SeaweedFS 4.48) wrote for a 122-byte
# object PUT through S3 as s3://scale/seed/wal: one chunk (file id 1,01387ebc0f),
# attributes with mtime/crtime 1796166680 and the S3 ETag in `extended`.
SEED = bytes.fromhex(
    "0a132f6275636b6574732f7363616c652f7365656412df010a0377616c1a3f0a0c312c303133383765626330"
    "66187a20fba882bac482d1f6182a18722f4b6f57724f3575395153426174697945454947773d3d3a09080110"
    "011d0fbc7e38223d087a1098a8bdd80618b0033098a8bdd8067210aff2a85ab3b9bbd41205ab62c841081b88"
    "018591cb89e1edcdb0ea01900198a8bdd806b00198a8bdd8062a360a12536561776565642d582d416d7a2d45"
    "546167122061666632613835616233623962626434313230356162363263383431303831622a200a13536561"
    "776565642d582d416d7a2d4f776e65721209706974722d74657374")
SEED_MTIME = 1796166680

fields = st.lists(st.one_of(
    st.tuples(st.integers(1, 2000), st.just(fm.VARINT), st.integers(0, (1 << 64) - 1)),
    st.tuples(st.integers(1, 2000), st.just(fm.FIXED64), st.integers(0, (1 << 64) - 1)),
    st.tuples(st.integers(1, 2000), st.just(fm.FIXED32), st.integers(0, (1 << 32) - 1)),
    st.tuples(st.integers(1, 2000), st.just(fm.LEN), st.binary(max_size=300)),
), max_size=20)


@given(fields)
def test_encode_decode_round_trip(msg: list[fm.Field]) -> None:
    assert fm.decode(fm.encode(msg)) == msg


@given(st.integers(-(1 << 63), (1 << 64) - 1))
def test_varint_round_trip(n: int) -> None:
    raw = fm.varint(n)
    assert fm.read_varint(raw, 0) == (n % (1 << 64), len(raw))
    assert len(raw) <= 10


def test_the_saved_seed_decodes_and_encodes_to_the_same_bytes() -> None:
    directory, name, entry, attrs = fm.entry_of(SEED)
    assert (directory, name) == ("/buckets/scale/seed", "wal")
    assert (fm.ATTR_MTIME, fm.VARINT, SEED_MTIME) in attrs
    assert dict((n, v) for n, _w, v in attrs)[1] == 122  # file_size
    outer = fm.decode(SEED)
    assert fm.encode(outer) == SEED
    assert fm.encode(entry) == outer[1][2]


def test_a_clone_changes_only_its_place_and_times() -> None:
    clone = fm.Cloner(SEED).clone("/buckets/b/pitr/x/wal/0000000100000001",
                                  "000000010000000100000002.zst", 1735689660)
    directory, name, entry, attrs = fm.entry_of(clone)
    assert (directory, name) == ("/buckets/b/pitr/x/wal/0000000100000001",
                                 "000000010000000100000002.zst")
    _d, _n, seed_entry, seed_attrs = fm.entry_of(SEED)
    # chunks (the shared file id) and extended (the ETag) byte for byte
    assert [f for f in entry if f[0] != fm.ENTRY_NAME and f[0] != fm.ENTRY_ATTRIBUTES] == \
        [f for f in seed_entry if f[0] != fm.ENTRY_NAME and f[0] != fm.ENTRY_ATTRIBUTES]
    assert len(attrs) == len(seed_attrs)
    for (n, w, v), (sn, sw, sv) in zip(attrs, seed_attrs, strict=True):
        assert (n, w) == (sn, sw)
        assert v == (1735689660 if sv == SEED_MTIME else sv)
    times = {n for n, _w, v in attrs if v == 1735689660}
    assert {fm.ATTR_MTIME, fm.ATTR_CRTIME} <= times


def test_meta_file_records_round_trip(tmp_path: Path) -> None:
    cloner = fm.Cloner(SEED)
    made = [cloner.clone("/d", f"n{i}", 1_700_000_000 + 60 * i) for i in range(5)]
    path = tmp_path / "x.meta"
    assert fm.write_meta(path, iter(made)) == 5
    data = path.read_bytes()
    assert list(fm.read_records(data)) == made
    assert fm.find_seed(data, "n3") == made[3]
    with pytest.raises(LookupError):
        fm.find_seed(data, "absent")
    with pytest.raises(ValueError, match="truncated"):
        list(fm.read_records(data[:-1]))


@pytest.mark.parametrize("bad", [b"\x08", b"\x0a\x05ab", b"\x0b", b"\x00\x01"])
def test_damaged_messages_are_refused(bad: bytes) -> None:
    with pytest.raises(ValueError):
        fm.decode(bad)
