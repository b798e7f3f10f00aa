"""PostgreSQL's Manifest-Checksum, checked before a backup_manifest copy is kept
(docs/incremental-backups.md "Where the manifest is kept")."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from pitr.chains import manifest_checksum_problem


def _manifest(files: list[str]) -> bytes:
    """Laid out as pg_basebackup writes one: the checksum covers every line before its own."""
    body = b'{ "PostgreSQL-Backup-Manifest-Version": 2,\n"Files": [\n'
    body += b",\n".join(b'{ "Path": "%s", "Size": 8 }' % f.encode() for f in files)
    body += b"\n],\n"
    return body + b'"Manifest-Checksum": "%s"}\n' % hashlib.sha256(body).hexdigest().encode()


@given(st.lists(st.text("abcdef/._0123", min_size=1, max_size=12), max_size=20))
def test_a_manifest_as_written_passes(files: list[str]) -> None:
    assert manifest_checksum_problem(_manifest(files)) is None


@given(st.lists(st.text("abcdef/._0123", min_size=1, max_size=12), min_size=1, max_size=20),
       st.data())
def test_any_changed_byte_before_the_checksum_fails(files: list[str], data: st.DataObject) -> None:
    raw = bytearray(_manifest(files))
    cut = raw.rfind(b"\n", 0, raw.rfind(b'"Manifest-Checksum"')) + 1
    i = data.draw(st.integers(0, cut - 1))
    raw[i] ^= 0x01
    assert manifest_checksum_problem(bytes(raw)) is not None


def test_cut_off_or_empty_fails() -> None:
    raw = _manifest(["base/1/1"])
    assert "no Manifest-Checksum" in (manifest_checksum_problem(raw[:-30]) or "")
    assert manifest_checksum_problem(b"") is not None
    assert manifest_checksum_problem(b'"Manifest-Checksum": "' + b"0" * 64 + b'"}\n') is not None
