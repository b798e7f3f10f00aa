"""Catalog building from in-memory listings, the manifest format, `pitr list`'s report."""

from __future__ import annotations

import doctest
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pitr import backup, catalog, listing, manifest, progress
from pitr.catalog import build_catalog
from pitr.codec import compress_blob
from pitr.errors import IntegrityError
from pitr.manifest import BackupObject, BackupRecord
from pitr.pg import basebackup
from pitr.pg.names import parse_lsn, segment_name
from pitr.repo import Layout
from pitr.storage.base import ObjectInfo

T0 = datetime(2025, 2, 15, 1, 0, tzinfo=UTC)
SEG = 16 << 20


def record(backup_id: str, start: str, stop: str, *, tli: int = 1, minutes: int = 0,
           **kw: Any) -> BackupRecord:
    when = T0 + timedelta(minutes=minutes)
    return BackupRecord(
        id=backup_id, label="manual", start_lsn=parse_lsn(start), stop_lsn=parse_lsn(stop),
        start_time=when, stop_time=when + timedelta(seconds=30), timeline=tli,
        system_id="7001", pg_version=15, db_size=1000, raw_bytes=900, stored_bytes=100,
        objects=(BackupObject("base.tar.zst", f"s/backups/{backup_id}/base.tar.zst", 900, 100,
                              "ab" * 32, "cd" * 32),),
        pitr_version="0.1.0", **kw)


class Listing:
    """An in-memory repository: key -> (bytes, mtime)."""

    def __init__(self, stanza: str = "s") -> None:
        self.stanza = stanza
        self.objects: dict[str, tuple[bytes, datetime]] = {}
        self.reads: list[str] = []
        self.put(f"{stanza}/repo.json", json.dumps(
            {"system_id": "7001", "pg_version": 15, "segment_size": SEG, "format": 1}).encode())

    def put(self, key: str, data: bytes = b"x", at: datetime = T0) -> None:
        self.objects[key] = (data, at)

    def segment(self, tli: int, segno: int, at: datetime = T0) -> None:
        name = segment_name(tli, segno)
        self.put(f"{self.stanza}/wal/{name[:16]}/{name}.zst", b"w" * 10, at)

    def backup(self, rec: BackupRecord) -> None:
        self.put(f"{self.stanza}/backups/{rec.id}/base.tar.zst", b"b" * 100)
        self.put(f"{self.stanza}/backups/{rec.id}/manifest.json", manifest.encode(rec))

    def history(self, tli: int, text: str, at: datetime = T0) -> None:
        self.put(f"{self.stanza}/wal/{tli:08X}.history.zst", compress_blob(text.encode(), 3)[0],
                 at)

    def listing(self) -> list[ObjectInfo]:
        return [ObjectInfo(k, len(v[0]), v[1]) for k, v in sorted(self.objects.items())]

    def read(self, key: str) -> bytes:
        self.reads.append(key)
        return self.objects[key][0]

    def catalog(self) -> catalog.Catalog:
        return build_catalog(self.stanza, self.listing(), self.read)


def test_segments_ranges_gaps_and_only_small_objects_read() -> None:
    repo = Listing()
    for n in [1, 2, 3, 7, 8]:
        repo.segment(1, n, T0 + timedelta(minutes=n))
    repo.segment(1, 0x100)  # crosses into the next "log": still contiguous math by segno
    repo.put("s/wal/0000000100000000/000000010000000000000003.00000028.backup.zst")
    repo.put("s/wal/0000000100000000/000000010000000000000008.partial.zst")
    repo.put("s/wal/0000000100000000/garbage.tmp")
    repo.put("other/wal/0000000100000000/000000010000000000000004.zst")  # another stanza
    cat = repo.catalog()

    assert cat.system_id == "7001"
    assert [(r.first, r.last) for r in cat.ranges(1)] == [(1, 3), (7, 8), (0x100, 0x100)]
    assert [(g.first, g.last) for g in cat.gaps(1)] == [(4, 6), (9, 0xFF)]
    assert cat.ranges(1)[0].first_archived_at == T0 + timedelta(minutes=1)
    assert cat.ranges(1)[0].last_archived_at == T0 + timedelta(minutes=3)
    assert cat.backup_history_files == ("000000010000000000000003.00000028.backup",)
    assert cat.partial_files == ("000000010000000000000008.partial",)
    assert cat.timelines[1].history == ()
    # No WAL object is ever read: the listing carries what the catalog needs.
    assert repo.reads == ["s/repo.json"]


def test_backups_incomplete_damaged_and_pins() -> None:
    repo = Listing()
    for n in range(2, 6):
        repo.segment(1, n)
    old = record("20250215T010000Z", "0/2000028", "0/2000100")
    new = record("20250215T020000Z", "0/4000028", "0/5000100", minutes=60)
    repo.backup(new)
    repo.backup(old)
    repo.put(Layout("s").pin_key(old.id), b"{}")
    repo.put("s/backups/20250215T030000Z/base.tar.zst")  # interrupted: no manifest
    repo.put("s/backups/20250215T040000Z/manifest.json", b"{not json")
    repo.put("s/locks/backup.json")
    cat = repo.catalog()

    assert [b.id for b in cat.backups] == [old.id, new.id]  # sorted by stop time
    assert cat.backups[0].pinned and not cat.backups[1].pinned
    assert cat.backups[1] == new  # pinned is the only field the catalog adds
    assert cat.incomplete_backups == ("20250215T030000Z",)
    assert cat.damaged_backups == ("20250215T040000Z",)
    assert all(catalog.backup_restorable(cat, b) for b in cat.backups)


def test_history_files_make_timelines() -> None:
    repo = Listing()
    for n in range(1, 5):
        repo.segment(1, n)
    for n in range(4, 7):
        repo.segment(2, n, T0 + timedelta(hours=1))
    repo.history(2, "1\t0/4000A28\tno recovery target specified\n", T0 + timedelta(hours=1))
    cat = repo.catalog()
    assert sorted(cat.timelines) == [1, 2]
    assert cat.timelines[2].parent == 1
    assert cat.timelines[2].branch_lsn == parse_lsn("0/4000A28")
    assert cat.timelines[2].created_at == T0 + timedelta(hours=1)

    repo.backup(record("b1", "0/1000028", "0/1000100"))
    window = listing.recovery_window(repo.catalog())
    assert window is not None
    # Replay follows the newer timeline through the branch point to its last segment.
    assert window.latest.timeline == 2
    assert window.latest.lsn == 7 * SEG
    assert window.earliest.backup_id == "b1"


def test_a_timeline_is_dated_by_its_history_file_not_its_stored_time() -> None:
    # S3 truncates stored times to the second and the driver rounds them up, so a
    # stored time can trail the promotion; archive-push records the file's own time.
    repo = Listing()
    promoted = T0 + timedelta(minutes=5, microseconds=250_000)
    text = b"1\t0/4000A28\tno recovery target specified\n"
    repo.put("s/wal/00000002.history.zst",
             compress_blob(text, 3, written_at=promoted.isoformat())[0],
             T0 + timedelta(minutes=5, seconds=1))
    assert repo.catalog().timelines[2].created_at == promoted
    repo.history(2, text.decode(), T0 + timedelta(minutes=6))  # pushed by an older pitr
    assert repo.catalog().timelines[2].created_at == T0 + timedelta(minutes=6)


def test_recovery_window_needs_wal_of_a_backup() -> None:
    repo = Listing()
    repo.segment(1, 2)
    repo.backup(record("b1", "0/2000028", "0/3000100"))  # stop segment 3 is missing
    cat = repo.catalog()
    assert not catalog.backup_restorable(cat, cat.backups[0])
    assert listing.recovery_window(cat) is None
    doc = listing.report(cat)
    assert doc["recovery_window"] is None
    assert doc["backups"][0]["wal_complete"] is False
    assert "none" in listing.render(doc)

    repo.segment(1, 3, T0 + timedelta(minutes=5))
    repo.segment(1, 4, T0 + timedelta(minutes=9))
    repo.segment(1, 6)  # after a gap: not reachable
    window = listing.recovery_window(repo.catalog())
    assert window is not None
    assert window.earliest.time == T0 + timedelta(seconds=30)
    assert (window.latest.lsn, window.latest.time) == (5 * SEG, T0 + timedelta(minutes=9))


def test_stop_lsn_on_a_segment_boundary_needs_only_the_previous_segment() -> None:
    repo = Listing()
    repo.segment(1, 2)
    repo.backup(record("b1", "0/2000028", "0/3000000"))
    cat = repo.catalog()
    assert catalog.backup_restorable(cat, cat.backups[0])


def test_report_schema_is_stable() -> None:
    repo = Listing()
    for n in range(2, 4):
        repo.segment(1, n)
    repo.backup(record("b1", "0/2000028", "0/2000100"))
    doc = listing.report(repo.catalog())
    assert set(doc) == {"schema_version", "stanza", "system_id", "backups", "wal",
                        "recovery_window", "incomplete_backups", "damaged_backups"}
    assert doc["schema_version"] == 1
    assert set(doc["backups"][0]) == {
        "id", "label", "start_time", "stop_time", "start_lsn", "stop_lsn", "timeline",
        "pg_version", "db_size", "raw_bytes", "stored_bytes", "compression_ratio", "pinned",
        "wal_complete", "type", "parent", "chain", "chain_whole", "chain_problem"}
    assert doc["backups"][0]["compression_ratio"] == 9.0
    assert (doc["backups"][0]["type"], doc["backups"][0]["chain"]) == ("full", ["b1"])
    assert doc["wal"][0]["ranges"][0]["first"] == "000000010000000000000002"
    assert doc["wal"][0]["ranges"][0]["end_lsn"] == "0/4000000"
    assert doc["wal"][0]["gaps"] == []
    json.dumps(doc)  # serialisable as is
    text = listing.render(doc)
    assert "b1" in text and "9.0x" in text and "recovery window: 2025-02-15" in text


def test_empty_repository() -> None:
    cat = build_catalog("s", [], lambda key: b"")
    assert cat.system_id is None and cat.backups == () and cat.segments == {}
    doc = listing.report(cat)
    assert doc["recovery_window"] is None
    assert "no completed backups" in listing.render(doc)


# -- manifest ----------------------------------------------------------------------

_lsns = st.integers(min_value=0, max_value=(1 << 64) - 1)
_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                      timezones=st.just(UTC))


@given(start=_lsns, stop=_lsns, t=_times, sysid=st.integers(1, (1 << 64) - 1),
       raw=st.integers(0, 1 << 50), stored=st.integers(0, 1 << 50),
       label=st.sampled_from(["manual", "scheduled"]), tli=st.integers(1, 0xFFFFFFFF),
       tz=st.sampled_from([None, "UTC", "America/New_York", "Europe/Berlin"]))
def test_manifest_round_trip(start: int, stop: int, t: datetime, sysid: int, raw: int,
                             stored: int, label: str, tli: int, tz: str | None) -> None:
    rec = BackupRecord(
        id="20250215T013000Z", label=label, start_lsn=start, stop_lsn=stop, start_time=t,
        stop_time=t + timedelta(seconds=5), timeline=tli, system_id=str(sysid), pg_version=15,
        db_size=raw, raw_bytes=raw, stored_bytes=stored,
        objects=(BackupObject("base.tar.zst", "k", raw, stored, "a" * 64, "b" * 64),),
        pitr_version="0.1.0", extra={"compression": {"codec": "zstd", "level": 3}},
        timezone=tz)
    back = manifest.decode(manifest.encode(rec))
    assert back == rec
    assert back.extra == rec.extra


def test_manifest_is_readable_json_with_text_and_int_lsns() -> None:
    doc = json.loads(manifest.encode(record("b1", "0/2000028", "0/2000100")))
    assert doc["format"] == 1
    assert (doc["start_lsn"], doc["start_lsn_int"]) == ("0/2000028", 0x2000028)
    assert doc["stop_time"] == "2025-02-15T01:00:30+00:00"
    assert "pinned" not in doc  # pins are separate objects
    assert "timezone" not in doc  # a backup that did not record the cluster's TimeZone
    assert manifest.decode(json.dumps(doc).encode()).timezone is None
    assert doc["objects"][0]["sha256"] == "ab" * 32


def test_manifest_damage_is_an_integrity_error() -> None:
    good = json.loads(manifest.encode(record("b1", "0/2000028", "0/2000100")))
    for bad in (b"", b"[]", json.dumps({**good, "stop_time": "yesterday"}).encode(),
                json.dumps({k: v for k, v in good.items() if k != "id"}).encode()):
        with pytest.raises(IntegrityError, match="damaged backup manifest"):
            manifest.decode(bad, "s/backups/b1/manifest.json")
    with pytest.raises(IntegrityError, match="newer"):
        manifest.decode(json.dumps({**good, "format": 99}).encode())


# -- label files and small helpers --------------------------------------------------

BACKUP_FILE = """START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
STOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)
CHECKPOINT LOCATION: 0/2000060
BACKUP METHOD: streamed
BACKUP FROM: primary
START TIME: 2026-11-21 12:47:40 UTC
LABEL: pitr 20261121T124740Z
START TIMELINE: 1
STOP TIME: 2026-11-21 12:47:41 UTC
STOP TIMELINE: 1
"""


def test_parse_backup_history_file() -> None:
    fields = basebackup.parse_label_file(BACKUP_FILE)
    assert basebackup.label_lsn(fields["STOP WAL LOCATION"]) == "0/2000100"
    assert fields["LABEL"] == "pitr 20261121T124740Z"
    assert basebackup.parse_pg_time(fields["STOP TIME"]) == datetime(2026, 11, 21, 12, 47, 41,
                                                                     tzinfo=UTC)
    assert basebackup.parse_pg_time("2026-11-21 12:47:41 -0530") == datetime(
        2026, 11, 21, 18, 17, 41, tzinfo=UTC)


def test_pg_basebackup_argv() -> None:
    opts = basebackup.BaseBackupOptions("/pg/bin", "host=/s user=postgres", "pitr x")
    argv = basebackup.build_argv(opts)
    assert argv[0] == "/pg/bin/pg_basebackup"
    assert argv[1:6] == ["-D", "-", "-Ft", "-X", "none"]
    assert "--checkpoint=fast" in argv and "--dbname=host=/s user=postgres" in argv
    assert not any(a.startswith("--compress") for a in argv)
    server = basebackup.build_argv(basebackup.BaseBackupOptions(
        "/b", "d", "l", server_zstd_level=5, max_rate="1M"))
    assert "--compress=server-zstd:level=5" in server and "--no-manifest" in server
    assert "--max-rate=1M" in server


def test_progress_line_and_summary() -> None:
    import io

    out = io.StringIO()
    p = progress.Progress("backup", total=1000, estimate=True, stream=out, enabled=True,
                          interval=0)
    p.update(2000)
    assert "99%" in p.line() and "MB/s" in p.line()
    p.close()
    assert out.getvalue().endswith("\n") and "in " in out.getvalue()
    quiet = io.StringIO()
    q = progress.Progress("x", stream=quiet)  # StringIO is no tty: silent
    q.update(5)
    q.close()
    assert quiet.getvalue() == "" and q.done == 5


@pytest.mark.parametrize("module", [progress, basebackup, backup])
def test_doctests(module: Any) -> None:
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0


def test_dsn_password_stays_off_the_command_line() -> None:
    opts = basebackup.BaseBackupOptions("/b", "host=/s user=backup password=s3cret", "l")
    assert not any("s3cret" in a for a in basebackup.build_argv(opts))
    assert basebackup.child_env(opts)["PGPASSWORD"] == "s3cret"


def test_a_manifest_the_repository_did_not_answer_for_is_unknown_not_damaged() -> None:
    from pitr.catalog import _decode_manifests
    from pitr.errors import NotFound, TransientStorageError

    key = "s/backups/20250215T040000Z/manifest.json"
    with pytest.raises(TransientStorageError):
        _decode_manifests({"20250215T040000Z": key}, {key: TransientStorageError("timeout")},
                          set())
    backups, damaged = _decode_manifests({"20250215T040000Z": key}, {key: NotFound("gone")},
                                         set())
    assert (backups, damaged) == ([], ["20250215T040000Z"])


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"segment_size": 1}',
                                  b'{"system_id": 1, "segment_size": "x"}'])
def test_a_damaged_identity_is_an_integrity_error(body: bytes) -> None:
    with pytest.raises(IntegrityError, match="damaged repository identity"):
        catalog.identity_fields(body, "db/repo.json")


def test_identity_fields_default_the_segment_size() -> None:
    assert catalog.identity_fields(b'{"system_id": 7001}', "k") == ("7001", 16 << 20)
    assert catalog.identity_fields(b'{"system_id": "7", "segment_size": 1048576}', "k") == (
        "7", 1 << 20)
