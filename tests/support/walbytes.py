"""Bytes shaped like PostgreSQL's own files, for tests that need no running server:
a WAL segment's long page header and a pg_control's leading system identifier."""

from __future__ import annotations

import struct
from pathlib import Path

SYSID = 7301234567890123456
PG15_PAGE_MAGIC = 0xD110


def segment_bytes(name: str, *, seg_size: int, sysid: int = SYSID,
                  fill: bytes = b"\x00") -> bytes:
    """A plausible WAL segment: a PG 15 long page header for the segment ``name``."""
    segno = int(name[8:16], 16) * (0x100000000 // seg_size) + int(name[16:24], 16)
    header = struct.pack("<HHIQI4xQII", PG15_PAGE_MAGIC, 0x0002, int(name[:8], 16),
                         segno * seg_size, 0, sysid, seg_size, 8192)
    body = seg_size - len(header)
    return header + (fill * (body // len(fill) + 1))[:body]


def write_pg_control(datadir: Path, sysid: int = SYSID) -> Path:
    """global/pg_control as far as archive-get reads it: the system identifier first."""
    path = datadir / "global" / "pg_control"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(sysid.to_bytes(8, "little") + bytes(8184))
    return path
