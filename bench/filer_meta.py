"""SeaweedFS filer metadata for bench/scale.py: read the seed object's entry that
``weed shell fs.meta.save`` wrote, and write entries that share its data chunk under other
names and times, for ``fs.meta.load`` (docs/benchmarks.md, "Scale: a year of WAL").

A meta file is a sequence of records: a 4-byte big-endian length, then one protobuf
``filer_pb.FullEntry`` (SeaweedFS ``weed/pb/filer.proto``):

    FullEntry      { string dir = 1; Entry entry = 2; }
    Entry          { string name = 1; ...; FuseAttributes attributes = 4; ... }
    FuseAttributes { uint64 file_size = 1; int64 mtime = 2; ...; int64 crtime = 6; ... }

Only the fields a clone changes are named here; every other field of the seed (its chunk
with the file id, the S3 ETag in ``extended``, the md5, the mode) is copied byte for byte,
so no protobuf library is needed. S3 reports ``attributes.mtime`` as LastModified.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5
FULL_DIR, FULL_ENTRY = 1, 2
ENTRY_NAME, ENTRY_ATTRIBUTES = 1, 4
ATTR_MTIME, ATTR_CRTIME = 2, 6

Field = tuple[int, int, int | bytes]  # (field number, wire type, value)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def varint(value: int) -> bytes:
    """Protobuf varint; a negative int64 is its 64-bit two's complement (10 bytes)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode(buf: bytes) -> list[Field]:
    """The fields of one message, in order (nested messages stay bytes)."""
    fields: list[Field] = []
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == VARINT:
            value, pos = read_varint(buf, pos)
        elif wire == FIXED64:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == FIXED32:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        elif wire == LEN:
            size, pos = read_varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
            if len(value) != size:
                raise ValueError("truncated length-delimited field")
        else:
            raise ValueError(f"unsupported wire type {wire} (field {number})")
        if number == 0:
            raise ValueError("field number 0")
        fields.append((number, wire, value))
    return fields


def field(number: int, wire: int, value: int | bytes) -> bytes:
    key = varint(number << 3 | wire)
    if wire == VARINT:
        assert isinstance(value, int)
        return key + varint(value)
    if wire == FIXED64:
        assert isinstance(value, int)
        return key + struct.pack("<Q", value)
    if wire == FIXED32:
        assert isinstance(value, int)
        return key + struct.pack("<I", value)
    if wire == LEN:
        assert isinstance(value, bytes)
        return key + varint(len(value)) + value
    raise ValueError(f"unsupported wire type {wire}")


def encode(fields: Iterable[Field]) -> bytes:
    return b"".join(field(n, w, v) for n, w, v in fields)


def _one(fields: list[Field], number: int) -> bytes:
    found = [v for n, w, v in fields if n == number and w == LEN]
    if len(found) != 1 or not isinstance(found[0], bytes):
        raise ValueError(f"expected one length-delimited field {number}")
    return found[0]


def read_records(data: bytes) -> Iterator[bytes]:
    """The FullEntry messages of a meta file's bytes."""
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise ValueError("truncated record length")
        (size,) = struct.unpack_from(">I", data, pos)
        record = data[pos + 4:pos + 4 + size]
        if len(record) != size:
            raise ValueError("truncated record")
        yield record
        pos += 4 + size


def record(full_entry: bytes) -> bytes:
    return struct.pack(">I", len(full_entry)) + full_entry


def entry_of(full_entry: bytes) -> tuple[str, str, list[Field], list[Field]]:
    """(dir, name, entry fields, attribute fields) of one FullEntry."""
    outer = decode(full_entry)
    entry = decode(_one(outer, FULL_ENTRY))
    attrs = decode(_one(entry, ENTRY_ATTRIBUTES))
    return (_one(outer, FULL_DIR).decode(), _one(entry, ENTRY_NAME).decode(), entry, attrs)


def find_seed(data: bytes, name: str) -> bytes:
    """The FullEntry named ``name`` in a meta file's bytes."""
    for rec in read_records(data):
        if entry_of(rec)[1] == name:
            return rec
    raise LookupError(f"no entry {name!r} in the meta file")


class Cloner:
    """FullEntries that are the seed under another directory, name and time.

    The seed is decoded once; each clone only encodes its name and its attributes (with
    every attribute that held the seed's mtime, i.e. mtime, crtime and the newer
    ctime-like fields, set to the clone's time), so half a million take seconds."""

    def __init__(self, seed: bytes) -> None:
        _dir, _name, entry, attrs = entry_of(seed)
        seed_mtime = next(v for n, w, v in attrs if n == ATTR_MTIME and w == VARINT)
        self._timed = {n for n, w, v in attrs if w == VARINT and v == seed_mtime}
        self._timed |= {ATTR_MTIME, ATTR_CRTIME}
        self._attrs = attrs
        before = [f for f in entry if f[0] < ENTRY_ATTRIBUTES and f[0] != ENTRY_NAME]
        after = [f for f in entry if f[0] > ENTRY_ATTRIBUTES]
        self._before = encode(before)
        self._after = encode(after)

    def attributes(self, mtime: int) -> bytes:
        return encode((n, w, mtime if n in self._timed else v) for n, w, v in self._attrs)

    def clone(self, directory: str, name: str, mtime: int) -> bytes:
        entry = (field(ENTRY_NAME, LEN, name.encode()) + self._before
                 + field(ENTRY_ATTRIBUTES, LEN, self.attributes(mtime)) + self._after)
        return field(FULL_DIR, LEN, directory.encode()) + field(FULL_ENTRY, LEN, entry)


def write_meta(path: Path, records: Iterable[bytes]) -> int:
    """Write FullEntries as a meta file for ``fs.meta.load``; returns how many."""
    count = 0
    with path.open("wb") as out:
        for rec in records:
            out.write(record(rec))
            count += 1
    return count
