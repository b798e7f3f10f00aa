"""WAL held as columns (pitr.catalog.SegmentList) answers as the segments it holds would.

Every fast answer (ranges, membership of a run, the newest segment, one by number,
retention's deleted indexes by bisection) is checked against the plain computation
over the same segments as objects, on random sets of segment numbers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from pitr.catalog import Catalog, SegmentList, WalSegment, from_us, to_us
from pitr.catalog_cache import Columns, _pack, _unpack
from pitr.pg.names import segment_name
from pitr.repo import Layout
from pitr.retention import _INF, _merge, _WalKeeper

T0 = datetime(2025, 3, 1, tzinfo=UTC)
SEG = 16 << 20

segnos_st = st.sets(st.integers(0, 600), max_size=120)


def _segments(tli: int, numbers: set[int], jitter: list[int]) -> list[WalSegment]:
    out = []
    for i, n in enumerate(sorted(numbers)):
        at = T0 + timedelta(seconds=60 * n + (jitter[i % len(jitter)] if jitter else 0))
        out.append(WalSegment(tli, n, 1000 + n % 7, at, f"k{n}", "GLACIER" if n % 11 == 0
                              else ""))
    return out


def _runs(numbers: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for n in numbers:
        if runs and runs[-1][1] + 1 == n:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


@given(segnos_st, st.lists(st.integers(-300, 300), max_size=5), st.integers(-5, 605),
       st.integers(0, 40))
def test_columns_answer_as_the_segments_do(numbers: set[int], jitter: list[int], first: int,
                                           span: int) -> None:
    segs = _segments(3, numbers, jitter)
    col = SegmentList.of(3, reversed(segs))  # any order in, by number out
    assert list(col) == segs and len(col) == len(segs) and col == tuple(segs)
    ordered = sorted(numbers)
    assert [(r.first, r.last) for r in col.ranges()] == _runs(ordered)
    for r in col.ranges():
        inside = [s for s in segs if r.first <= s.segno <= r.last]
        assert r.stored_bytes == sum(s.stored_bytes for s in inside)
        assert r.first_archived_at == inside[0].archived_at
        assert r.last_archived_at == max(s.archived_at for s in inside)
    last = first + span
    assert col.has_all(first, last) == all(n in numbers for n in range(first, last + 1))
    assert col.get(first) == next((s for s in segs if s.segno == first), None)
    # the newest is the one stored last; of several stored at once, the lowest number
    newest = max(segs, key=lambda s: (s.archived_at, -s.segno), default=None)
    assert col.newest() == newest
    gone = {n for n in numbers if n % 3 == 0}
    assert list(col.without(gone)) == [s for s in segs if s.segno not in gone]
    if segs:
        assert col[-1] == segs[-1] and col[1:3] == tuple(segs[1:3])


def test_keys_follow_the_repository_layout() -> None:
    col = SegmentList(2, [5, 6], [1, 1], [0, 0], stanza="db", segment_size=SEG)
    assert col[1].key == Layout("db").segment_key(segment_name(2, 6, SEG))
    assert from_us(to_us(T0)) == T0


def test_a_catalog_holds_any_sequence_of_segments_as_columns() -> None:
    segs = _segments(1, {1, 2, 5}, [])
    cat = Catalog("s", "1", segments={1: tuple(segs)})
    assert isinstance(cat.segments[1], SegmentList)
    assert [(r.first, r.last) for r in cat.ranges()] == [(1, 2), (5, 5)]
    assert cat.range_holding(1, 2) is not None and cat.range_holding(1, 3) is None
    assert [(g.first, g.last) for g in cat.gaps()] == [(3, 4)]


@given(st.lists(st.integers(-(1 << 62), 1 << 62), max_size=50))
def test_cache_columns_pack_and_unpack(values: list[int]) -> None:
    from array import array

    assert list(_unpack(_pack(array("q", values)))) == values


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 10)), max_size=40,
                unique_by=lambda t: t[0]))
def test_cache_columns_add_keeps_order_and_ignores_repeats(adds: list[tuple[int, int]]) -> None:
    c = Columns()
    for n, size in [*adds, *adds]:
        c.add(n, size, n * 10, "")
    assert list(c.segnos) == sorted(n for n, _ in adds)
    assert dict(zip(c.segnos, c.sizes, strict=True)) == dict(adds)
    back = Columns.from_json(c.to_json())
    assert (back.segnos, back.sizes, back.mtimes) == (c.segnos, c.sizes, c.mtimes)


@given(st.lists(st.tuples(st.integers(0, 500), st.integers(0, 60)), max_size=8),
       segnos_st, st.integers(0, 700))
def test_retention_deletes_by_bisection_what_it_would_one_by_one(
        raw: list[tuple[int, int]], numbers: set[int], guard: int) -> None:
    keeper = _WalKeeper.__new__(_WalKeeper)
    keeper._default = [(guard, _INF)]
    keeper.kept = {1: _merge([(lo, lo + n) for lo, n in raw] + keeper._default)}
    keeper._starts = {t: [lo for lo, _ in iv] for t, iv in keeper.kept.items()}
    ordered = sorted(numbers)
    for tli in (1, 2):
        by_one = [j for j, n in enumerate(ordered) if not keeper.keeps(tli, n)]
        assert keeper.deleted(tli, ordered) == by_one
        expect = [j for j, n in enumerate(ordered) if not (
            n >= guard or (tli == 1 and any(lo <= n <= lo + k for lo, k in raw)))]
        assert by_one == expect



@given(st.permutations(list(range(250, 262))), st.sampled_from([16 << 20, 1 << 20]))
def test_a_listing_in_any_order_builds_the_same_columns(order: list[int], seg_size: int) -> None:
    """build_catalog takes segment names' halves into columns before repo.json gives the
    segment size; any listing order (a server that lists differently) ends sorted."""
    import json

    from pitr.catalog import build_catalog
    from pitr.storage.base import ObjectInfo

    layout = Layout("s")

    def listing(numbers: list[int]) -> list[ObjectInfo]:
        out = [ObjectInfo(layout.identity_key, 1, T0)]
        for n in numbers:
            out.append(ObjectInfo(layout.segment_key(segment_name(1, n, seg_size)), n,
                                  T0 + timedelta(minutes=n), "STANDARD_IA" if n % 5 else ""))
        return out

    def read(key: str) -> bytes:
        return json.dumps({"system_id": "7", "segment_size": seg_size}).encode()

    cat = build_catalog("s", listing(order), read)
    assert cat == build_catalog("s", listing(sorted(order)), read)
    segs = list(cat.segments[1])
    assert [s.segno for s in segs] == list(range(250, 262))
    assert all(s.stored_bytes == s.segno for s in segs)
    assert [s.storage_class for s in segs] == ["STANDARD_IA" if n % 5 else ""
                                               for n in range(250, 262)]
    assert segs[3].key == layout.segment_key(segment_name(1, 253, seg_size))
