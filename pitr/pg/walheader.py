"""Read the long page header at the start of every WAL segment.

Layout (PostgreSQL ``XLogLongPageHeaderData``, little-endian on the platforms
PostgreSQL packages for): magic u16, info u16, timeline u32, pageaddr u64,
rem_len u32, padding u32, system identifier u64, segment size u32, block size u32.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pitr.errors import IntegrityError

_LONG_HEADER = struct.Struct("<HHIQI4xQII")
XLP_LONG_HEADER = 0x0002

# XLOG_PAGE_MAGIC changes with each major version's WAL format.
PAGE_MAGIC_TO_VERSION = {0xD106: 13, 0xD10D: 14, 0xD110: 15, 0xD113: 16, 0xD116: 17, 0xD118: 18}


@dataclass(frozen=True, slots=True)
class WalHeader:
    magic: int
    timeline: int
    pageaddr: int
    system_id: int
    seg_size: int
    block_size: int

    @property
    def pg_version(self) -> int | None:
        return PAGE_MAGIC_TO_VERSION.get(self.magic)


def parse_header(data: bytes, name: str = "segment") -> WalHeader:
    if len(data) < _LONG_HEADER.size:
        raise IntegrityError(f"{name}: too short to be a WAL segment ({len(data)} bytes)")
    magic, info, tli, pageaddr, _rem, sysid, seg_size, blcksz = _LONG_HEADER.unpack_from(data)
    if not info & XLP_LONG_HEADER or seg_size == 0 or seg_size & (seg_size - 1):
        raise IntegrityError(f"{name}: no valid WAL long page header (magic {magic:#06x})",
                             hint="the file is not a PostgreSQL WAL segment, or it is damaged")
    return WalHeader(magic, tli, pageaddr, sysid, seg_size, blcksz)


def check_segment(raw: bytes, name: str, *, whole: bool) -> WalHeader:
    """The header of the (partial) segment ``raw``, proven to belong under ``name``.

    ``whole``: a complete segment, whose length must be the header's segment size.
    The first page of a segment always starts at the segment's own LSN; a
    mismatch means the bytes under this name hold some other segment.
    """
    from pitr.pg.names import parse_segment_name

    header = parse_header(raw, name)
    _tli, segno = parse_segment_name(name[:24], header.seg_size)
    if whole and len(raw) != header.seg_size:
        raise IntegrityError(f"{name}: {len(raw)} bytes, but its header says segments are "
                             f"{header.seg_size} bytes", hint="the file is truncated")
    if header.pageaddr != segno * header.seg_size:
        raise IntegrityError(f"{name}: first page is for LSN {header.pageaddr:#x}, not for this "
                             f"segment", hint="the file is not the segment its name says")
    return header
