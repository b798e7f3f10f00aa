"""The Storage contract (pitr/storage/base.py), run against every driver.

The local directory driver runs on a temp dir; the S3 driver on a fresh bucket of
a real S3 server (SeaweedFS ``weed mini``). Outage tests pause or stop a private
server. Nothing here is mocked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import random
import shutil
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pitr.config import Duration, RepositoryConfig
from pitr.errors import AlreadyExists, NotFound, StorageError, TransientStorageError
from pitr.retry import call_with_budget
from pitr.storage import Storage, open_storage, put_bytes, read_bytes
from pitr.storage.s3 import checksum_crc32, content_md5

MIB = 1 << 20


def repo_config(section: dict[str, Any], **overrides: Any) -> RepositoryConfig:
    values = {**section, **overrides}
    for key in ("timeout", "request_timeout"):
        if key in values:
            values[key] = Duration(values[key])
    return RepositoryConfig(**values)


@dataclasses.dataclass
class Driver:
    kind: str
    storage: Storage
    config: RepositoryConfig
    # Leave behind what a writer killed mid-upload would leave (temp file / multipart upload).
    make_leftover: Callable[[str], None]
    s3_client: Any = None
    bucket: str = ""
    # The same repository with generous timeouts, for setup on a loaded CI machine.
    patient: Storage | None = None


def _fs_driver(root: Path, **overrides: Any) -> Driver:
    cfg = repo_config({"url": f"file://{root}"}, **overrides)
    storage = open_storage(cfg)

    def leftover(key: str) -> None:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / f".pitr-tmp-{path.name}.dead").write_bytes(b"half")

    return Driver("fs", storage, cfg, leftover)


def _s3_driver(server: Any, section: dict[str, Any], **overrides: Any) -> Driver:
    cfg = repo_config(section, **overrides)
    storage = open_storage(cfg)
    bucket, _, prefix = cfg.url[len("s3://"):].partition("/")
    client = server.client()

    def leftover(key: str) -> None:
        up = client.create_multipart_upload(Bucket=bucket, Key=f"{prefix}/{key}")
        client.upload_part(Bucket=bucket, Key=f"{prefix}/{key}", UploadId=up["UploadId"],
                           PartNumber=1, Body=b"x" * 1024)

    return Driver("s3", storage, cfg, leftover, client, bucket)


@pytest.fixture(params=["fs", "s3"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Driver:
    # Small parts and low concurrency so the multipart paths run on modest data.
    tuning = {"part_size_mib": 5, "upload_concurrency": 2}
    if request.param == "fs":
        return _fs_driver(tmp_path / "repo", **tuning)
    server = request.getfixturevalue("s3_server")
    return _s3_driver(server, request.getfixturevalue("s3_repo"), **tuning)


class PatternStream:
    """``size`` deterministic pseudo-random bytes, handed out in irregular short reads
    (like a compressor does), with an optional failure or hook at a given offset."""

    def __init__(self, size: int, seed: int = 1, *, fail_at: int | None = None,
                 hook_at: int | None = None, hook: Callable[[], None] | None = None) -> None:
        self.size = size
        self.pos = 0
        self._block = random.Random(seed).randbytes(2 * MIB + 4093)
        self._rng = random.Random(seed + 1)
        self.fail_at = fail_at
        self.hook_at, self.hook = hook_at, hook
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        if self.fail_at is not None and self.pos >= self.fail_at:
            raise SourceBroke("source failed midway")
        if self.hook is not None and self.hook_at is not None and self.pos >= self.hook_at:
            hook, self.hook = self.hook, None
            hook()
        want = min(self.size - self.pos, n if n >= 0 else self.size,
                   self._rng.randrange(1, MIB))
        start = self.pos % (len(self._block) - MIB)
        out = self._block[start:start + want]
        self.pos += len(out)
        self.sha.update(out)
        return out


class SourceBroke(Exception):
    pass


def sha_of_object(storage: Storage, key: str) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with storage.open(key) as f:
        while chunk := f.read(MIB):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


# -- basic contract ------------------------------------------------------------------


def test_put_open_round_trip(driver: Driver) -> None:
    s = driver.storage
    before = time.time()
    assert put_bytes(s, "dir/sub/obj.bin", b"hello world") == 11
    assert read_bytes(s, "dir/sub/obj.bin") == b"hello world"
    assert read_bytes(s, "dir/sub/obj.bin", 5) == b"hello"
    info = s.stat("dir/sub/obj.bin")
    assert info.key == "dir/sub/obj.bin" and info.size == 11
    assert info.mtime.tzinfo is not None
    assert before - 5 <= info.mtime.timestamp() <= time.time() + 5
    # an upper bound of the store time, never earlier (S3 truncates to seconds and the
    # driver rounds up; a file's mtime comes from the kernel's coarse clock, a tick late)
    assert info.mtime.timestamp() >= before - 0.02
    listed = next(o for o in s.list("dir/") if o.key == "dir/sub/obj.bin")
    assert listed.mtime.timestamp() >= before - 0.02
    assert put_bytes(s, "empty", b"") == 0
    assert read_bytes(s, "empty") == b""
    assert s.stat("empty").size == 0


def test_if_absent_refuses_existing_key_and_keeps_content(driver: Driver) -> None:
    s = driver.storage
    put_bytes(s, "k", b"first", if_absent=True)
    with pytest.raises(AlreadyExists):
        put_bytes(s, "k", b"second", if_absent=True)
    assert read_bytes(s, "k") == b"first"


def test_overwrite_without_if_absent(driver: Driver) -> None:
    s = driver.storage
    put_bytes(s, "k", b"first")
    put_bytes(s, "k", b"second, longer")
    assert read_bytes(s, "k") == b"second, longer"
    assert s.stat("k").size == 14


def test_put_if_match_replaces_only_the_object_that_was_read(driver: Driver) -> None:
    s = driver.storage
    put_bytes(s, "cas/k", b"damaged", if_absent=True)
    data, etag = s.read_with_etag("cas/k")
    assert data == b"damaged" and etag
    assert s.read_with_etag("cas/k")[1] == etag  # unchanged object, same tag
    assert s.put_if_match("cas/k", b"repaired", etag) == 8
    assert read_bytes(s, "cas/k") == b"repaired"
    # the tag it was read with is stale now: refused, the object untouched
    with pytest.raises(AlreadyExists):
        s.put_if_match("cas/k", b"again", etag)
    assert read_bytes(s, "cas/k") == b"repaired"
    # an empty object (an interrupted upload's leftover) is replaced the same way
    put_bytes(s, "cas/empty", b"")
    data, etag = s.read_with_etag("cas/empty")
    assert data == b""
    s.put_if_match("cas/empty", b"whole", etag)
    assert read_bytes(s, "cas/empty") == b"whole"
    # gone since it was read: nothing is written
    s.delete(["cas/empty"])
    with pytest.raises((AlreadyExists, NotFound)):
        s.put_if_match("cas/empty", b"late", etag)
    with pytest.raises(NotFound):
        s.stat("cas/empty")
    with pytest.raises(NotFound):
        s.read_with_etag("cas/never")


def test_put_if_match_racers_exactly_one_wins(driver: Driver) -> None:
    """Writers that read the same object each replace it conditionally: one succeeds,
    the others are refused, so nobody overwrites a copy they never saw."""
    s = driver.storage
    put_bytes(s, "cas/race", b"")
    _data, etag = s.read_with_etag("cas/race")

    def attempt(i: int) -> bool:
        try:
            s.put_if_match("cas/race", f"writer {i}".encode(), etag)
        except AlreadyExists:
            return False
        return True

    with ThreadPoolExecutor(6) as pool:
        wins = [i for i, ok in enumerate(pool.map(attempt, range(6))) if ok]
    assert len(wins) == 1
    assert read_bytes(s, "cas/race") == f"writer {wins[0]}".encode()


def test_missing_key_is_not_found(driver: Driver) -> None:
    s = driver.storage
    with pytest.raises(NotFound):
        s.open("no/such/key")
    with pytest.raises(NotFound):
        s.stat("no/such/key")
    assert list(s.list("no/such/")) == []
    assert s.delete(["no/such/key"]) in (0, 1)  # absent keys are not an error


@pytest.mark.parametrize("bad", ["", "/abs", "a/../b", "a//b", "./a"])
def test_invalid_keys_are_refused(driver: Driver, bad: str) -> None:
    with pytest.raises(StorageError):
        put_bytes(driver.storage, bad, b"x")


def test_list_is_sorted_and_filters_by_prefix(driver: Driver) -> None:
    s = driver.storage
    # "a-c" and "a.x" sort before "a/..." in byte order (0x2d, 0x2e < 0x2f), which a
    # server walking a directory tree gets wrong unless the driver sorts.
    keys = ["b/x", "a/b/c", "a-c", "a.x", "ab", "a/d", "a/b/a", "B"]
    for k in keys:
        put_bytes(s, k, k.encode())
    assert [o.key for o in s.list()] == sorted(keys)
    assert [o.key for o in s.list("a/")] == ["a/b/a", "a/b/c", "a/d"]
    assert [o.key for o in s.list("a")] == sorted(k for k in keys if k.startswith("a"))
    assert [o.key for o in s.list("a/b/")] == ["a/b/a", "a/b/c"]
    assert [o.key for o in s.list("zzz")] == []
    assert {o.key: o.size for o in s.list("b/")} == {"b/x": 3}


@pytest.mark.parametrize("prefix", ["", "a", "a/", "a/b/", "b/"])
def test_list_bounds_match_a_sorted_listing(driver: Driver, prefix: str) -> None:
    """start_after / end_before cut a byte-ordered listing, also at keys holding bytes
    below '/' that a tree-walking server orders differently."""
    s = driver.storage
    keys = ["b/x", "a/b/c", "a-c", "a.x", "ab", "a/d", "a/b/a", "B", "a/b.zst", "a/b/c.zst"]
    for k in keys:
        put_bytes(s, k, k.encode())
    mine = sorted(k for k in keys if k.startswith(prefix))
    bounds = [None, "", "a", "a-c", "a.", "a/", "a/b", "a/b/a", "a/b/b", "a/b.zst", "ab",
              "b/", "zz"]
    for after in bounds:
        for before in bounds:
            want = [k for k in mine if (after is None or k > after)
                    and (before is None or k < before)]
            got = [o.key for o in s.list(prefix, start_after=after, end_before=before)]
            assert got == want, (prefix, after, before)


def test_list_streams_and_stops_at_end_before(driver: Driver) -> None:
    """A listing is fetched as it is consumed: stopping early (or at end_before) costs
    only the pages read so far (S3 requests counted, not timed)."""
    s = driver.storage
    keys = [f"st/{i // 300:02d}/{i:05d}" for i in range(2100)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: put_bytes(s, k, b"."), keys))
    put_bytes(s, "st/zz", b"z")
    it = s.list("st/")
    assert next(it).key == keys[0]
    assert [o.key for o in s.list("st/", start_after=keys[1500])] == [*keys[1501:], "st/zz"]
    if driver.kind != "s3":
        return
    counts = s.requests  # type: ignore[attr-defined]
    before = counts["ListObjectsV2"]
    assert [o.key for o in s.list("st/", end_before="st/01/")] == keys[:300]
    assert counts["ListObjectsV2"] - before == 1
    before = counts["ListObjectsV2"]
    assert [o.key for o in s.list("st/", start_after=keys[2050])][-1] == "st/zz"
    assert counts["ListObjectsV2"] - before == 1
    before = counts["ListObjectsV2"]
    assert len(list(s.list("st/"))) == len(keys) + 1
    assert counts["ListObjectsV2"] - before == 3  # each page once, read ahead or not
    before = counts["ListObjectsV2"]
    assert [o.key for o in s.list("st/", end_before="st/06")] == keys[:1800]
    time.sleep(0.3)  # a page asked for ahead would be counted by now
    assert counts["ListObjectsV2"] - before == 2  # never ahead past end_before
    before = counts["ListObjectsV2"]
    it = s.list("st/")
    assert [next(it).key for _ in range(1001)][-1] == keys[1000]  # into the second page
    it.close()
    # from the second page on the next one is asked for ahead (pitr/storage/s3.py): one
    # request more at most, maybe still on its way
    assert 2 <= counts["ListObjectsV2"] - before <= 3


def test_list_pages_and_delete_batches_past_1000_keys(driver: Driver) -> None:
    s = driver.storage
    keys = [f"many/{i:05d}" for i in range(1050)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: put_bytes(s, k, b"."), keys))
    put_bytes(s, "other/keep", b"k")
    listed = [o.key for o in s.list("many/")]
    assert listed == keys
    assert s.delete(iter(keys)) == len(keys)  # a generator: the driver batches
    assert list(s.list("many/")) == []
    assert [o.key for o in s.list()] == ["other/keep"]


# -- streaming and interrupted writes ----------------------------------------------------


def test_large_streaming_put_round_trip_with_bounded_memory(driver: Driver) -> None:
    s = driver.storage
    size = 40 * MIB
    src = PatternStream(size)
    tracemalloc.start()
    try:
        assert s.put("big/object", src, if_absent=True) == size
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 5 MiB parts: 2 uploads in flight + one part being read (15 MiB) + the test
    # stream's own buffers; far below the 40 MiB a non-streaming driver would hold.
    assert peak < 22 * MIB, f"put held {peak / MIB:.1f} MiB for a {size / MIB:.0f} MiB stream"
    assert sha_of_object(s, "big/object") == (src.sha.hexdigest(), size)
    assert s.stat("big/object").size == size
    if driver.kind == "s3":
        head = driver.s3_client.head_object(Bucket=driver.bucket, Key="pitr/big/object")
        assert head["ETag"].strip('"').endswith("-8"), head["ETag"]  # 8 parts of 5 MiB


def test_large_put_if_absent_refuses_existing(driver: Driver) -> None:
    s = driver.storage
    put_bytes(s, "big/taken", b"original")
    with pytest.raises(AlreadyExists):
        s.put("big/taken", PatternStream(12 * MIB), if_absent=True)
    assert read_bytes(s, "big/taken") == b"original"
    assert s.cleanup_incomplete("big/") == 0


def test_conditional_put_loses_race_to_a_concurrent_writer(driver: Driver) -> None:
    """Another writer creates the key while our large upload is underway: the final
    conditional step (link / CompleteMultipartUpload If-None-Match) must refuse."""
    s = driver.storage

    def racer() -> None:
        put_bytes(s, "race/key", b"the winner", if_absent=True)

    src = PatternStream(12 * MIB, hook_at=7 * MIB, hook=racer)
    with pytest.raises(AlreadyExists):
        s.put("race/key", src, if_absent=True)
    assert read_bytes(s, "race/key") == b"the winner"
    assert s.cleanup_incomplete("race/") == 0  # the failed upload was aborted


@pytest.mark.parametrize("size", [3 * MIB, 20 * MIB], ids=["single", "multipart"])
def test_interrupted_put_leaves_no_object(driver: Driver, size: int) -> None:
    s = driver.storage
    put_bytes(s, "half/sibling", b"s")
    with pytest.raises(SourceBroke):
        s.put("half/object", PatternStream(size, fail_at=size // 2))
    with pytest.raises(NotFound):
        s.stat("half/object")
    assert [o.key for o in s.list("half/")] == ["half/sibling"]
    assert s.cleanup_incomplete("half/") == 0  # the driver cleaned up after itself


def test_cleanup_during_a_write_fails_it_retryably(driver: Driver) -> None:
    """cleanup_incomplete must only run when nothing writes; if it does anyway, the
    writer gets a retryable error and no object, never a bogus NotFound or success."""
    s = driver.storage
    src = PatternStream(12 * MIB, hook_at=7 * MIB, hook=lambda: s.cleanup_incomplete("cut/"))
    with pytest.raises(TransientStorageError):
        s.put("cut/object", src, if_absent=True)
    with pytest.raises(NotFound):
        s.stat("cut/object")
    put_bytes(s, "cut/object", b"retried", if_absent=True)
    assert read_bytes(s, "cut/object") == b"retried"


def test_cleanup_incomplete_removes_leftovers_under_prefix_only(driver: Driver) -> None:
    s = driver.storage
    driver.make_leftover("wal/dead1")
    driver.make_leftover("wal/sub/dead2")
    driver.make_leftover("backups/dead3")
    put_bytes(s, "wal/alive", b"a")
    assert [o.key for o in s.list()] == ["wal/alive"]  # leftovers are never listed
    assert s.cleanup_incomplete("wal/") == 2
    assert s.cleanup_incomplete("wal/") == 0
    assert s.cleanup_incomplete() == 1
    assert read_bytes(s, "wal/alive") == b"a"


def test_concurrent_readers_and_writers(driver: Driver) -> None:
    s = driver.storage
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            data = os.urandom(1000 + i)
            put_bytes(s, f"conc/{i}", data, if_absent=True)
            assert read_bytes(s, f"conc/{i}") == data
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(list(s.list("conc/"))) == 16


# -- S3 failure modes (real server, paused / stopped / wrong credentials) ----------------


@pytest.fixture
def private_s3(s3_server_private: Any) -> Iterator[Driver]:
    from conftest import s3_repo_for

    section = s3_repo_for(s3_server_private)
    d = _s3_driver(s3_server_private, section, request_timeout=REQUEST_TIMEOUT,
                   part_size_mib=5)
    d.patient = open_storage(repo_config(section, request_timeout=30, part_size_mib=5))
    yield d
    s3_server_private.resume()


def _elapsed(fn: Callable[[], object], exc: type[BaseException]) -> float:
    t0 = time.monotonic()
    with pytest.raises(exc):
        fn()
    return time.monotonic() - t0


# One attempt per call: request_timeout (2 s), + botocore's fixed 1 s wait for
# "100 Continue" on uploads, + slack for a loaded CI machine. A multipart part is
# retried once, so a large put may take twice that.
REQUEST_TIMEOUT = 2
PAUSED_LIMIT = REQUEST_TIMEOUT + 1 + 3.0


def test_paused_server_gives_transient_error_not_a_hang(
        private_s3: Driver, s3_server_private: Any) -> None:
    s = private_s3.storage
    assert private_s3.patient is not None
    put_bytes(private_s3.patient, "x", b"data")
    private_s3.patient.put("big", PatternStream(24 * MIB))
    body = s.open("big")
    assert len(body.read(MIB)) == MIB  # a download underway when the server hangs

    def drain() -> None:
        while body.read(MIB):
            pass

    ops: dict[str, tuple[Callable[[], object], float]] = {
        "read body": (drain, PAUSED_LIMIT),
        "stat": (lambda: s.stat("x"), PAUSED_LIMIT),
        "open": (lambda: s.open("x"), PAUSED_LIMIT),
        "put": (lambda: put_bytes(s, "y", b"new"), PAUSED_LIMIT),
        "put multipart": (lambda: s.put("z", PatternStream(12 * MIB)), 2 * PAUSED_LIMIT),
        "list": (lambda: list(s.list()), PAUSED_LIMIT),
        "delete": (lambda: s.delete(["gone"]), PAUSED_LIMIT),
        "cleanup": (lambda: s.cleanup_incomplete(), PAUSED_LIMIT),
    }
    s3_server_private.pause()
    try:
        # All at once: each must give up on its own, within its limit.
        with ThreadPoolExecutor(len(ops)) as pool:
            took = {name: pool.submit(_elapsed, op, TransientStorageError)
                    for name, (op, _limit) in ops.items()}
            for name, future in took.items():
                seconds, limit = future.result(), ops[name][1]
                assert seconds < limit, f"{name} took {seconds:.1f}s against a hung server"
    finally:
        s3_server_private.resume()
        body.close()
    # The same driver works again once the server answers (the requests queued while
    # it was stopped may still run now: that is why nothing above touched "x").
    assert read_bytes(private_s3.patient, "x") == b"data"
    deadline = time.monotonic() + 20
    while True:
        try:
            assert s.stat("x").size == 4
            break
        except TransientStorageError:  # short timeouts on a busy CI machine
            if time.monotonic() > deadline:
                raise
    # An upload whose abort could not reach the server is removed by cleanup_incomplete.
    private_s3.patient.cleanup_incomplete()
    assert private_s3.patient.cleanup_incomplete() == 0


def test_stopped_server_is_transient_and_restart_recovers(
        private_s3: Driver, s3_server_private: Any) -> None:
    s = private_s3.storage
    assert private_s3.patient is not None
    put_bytes(private_s3.patient, "x", b"kept")
    s3_server_private.stop()
    assert _elapsed(lambda: s.stat("x"), TransientStorageError) < PAUSED_LIMIT
    assert _elapsed(lambda: put_bytes(s, "y", b"y"), TransientStorageError) < PAUSED_LIMIT
    s3_server_private.start()
    # A restarted weed answers "InternalError" (transient) until its volume server has
    # re-registered; pitr's callers retry transient errors within a budget, so does this.
    kept = call_with_budget(lambda: read_bytes(private_s3.patient, "x"), budget=60,
                            what="reading after the restart")
    assert kept == b"kept"


def test_wrong_credentials_give_storage_error_with_hint_and_no_secret(
        s3_server: Any, s3_repo: dict[str, Any]) -> None:
    wrong_secret = "WRONG-secret-" + os.urandom(8).hex()
    cases = {
        "bad secret": {"secret_access_key": wrong_secret},
        "unknown key": {"access_key_id": "AKIDNOSUCHKEY0000", "secret_access_key": wrong_secret},
    }
    for label, override in cases.items():
        s = open_storage(repo_config(s3_repo, **override))
        for op in (lambda s=s: put_bytes(s, "k", b"v"), lambda s=s: s.stat("k"),
                   lambda s=s: read_bytes(s, "k"), lambda s=s: list(s.list())):
            with pytest.raises(StorageError) as info:
                op()
            err = info.value
            assert not isinstance(err, TransientStorageError | NotFound), (label, err)
            assert err.hint and "access_key_id" in err.hint, (label, err)
            text = f"{err} {err.hint}"
            assert wrong_secret not in text and s3_server.secret_key not in text


def test_missing_bucket_gives_storage_error_with_hint(
        s3_server: Any, s3_repo: dict[str, Any]) -> None:
    s = open_storage(repo_config(s3_repo, url="s3://pitr-no-such-bucket-here/x"))
    for op in (lambda: put_bytes(s, "k", b"v"), lambda: read_bytes(s, "k"),
               lambda: list(s.list())):
        with pytest.raises(StorageError) as info:
            op()
        assert not isinstance(info.value, TransientStorageError | NotFound)
        assert info.value.hint and "bucket" in info.value.hint


def test_repository_prefix_isolates_keys(s3_server: Any, s3_repo: dict[str, Any]) -> None:
    bucket = s3_repo["url"][len("s3://"):].split("/")[0]
    a = open_storage(repo_config(s3_repo, url=f"s3://{bucket}/one"))
    b = open_storage(repo_config(s3_repo, url=f"s3://{bucket}/one-two/"))
    put_bytes(a, "k", b"a")
    put_bytes(b, "k", b"b")
    assert [o.key for o in a.list()] == ["k"] and read_bytes(a, "k") == b"a"
    assert [o.key for o in b.list()] == ["k"] and read_bytes(b, "k") == b"b"
    keys = sorted(o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["one-two/k", "one/k"]


def test_storage_class_and_server_side_encryption_apply_to_every_put(
        s3_server: Any, s3_repo: dict[str, Any]) -> None:
    d = _s3_driver(s3_server, s3_repo, part_size_mib=5, storage_class="STANDARD_IA",
                   sse="AES256")
    put_bytes(d.storage, "small", b"x")
    d.storage.put("big", PatternStream(12 * MIB))
    for key in ("pitr/small", "pitr/big"):
        head = d.s3_client.head_object(Bucket=d.bucket, Key=key)
        assert head.get("StorageClass") == "STANDARD_IA", key
        assert head.get("ServerSideEncryption") == "AES256", key


def test_tls_verification(testdir: Path) -> None:
    """TLS is verified by default; a CA bundle makes a private CA work; verify_tls = false
    is the explicit opt-out. A bad certificate is a permanent error, not a retryable one."""
    from support.s3server import S3Server, find_weed

    if find_weed() is None:
        pytest.skip("SeaweedFS `weed` binary not found")
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found")
    with S3Server(testdir / "s3tls", tls=True) as server:
        section = {**server.repo_section(server.make_bucket()),
                   "endpoint_url": server.https_endpoint}
        strict = open_storage(repo_config(section))
        with pytest.raises(StorageError) as info:
            put_bytes(strict, "k", b"v")
        assert not isinstance(info.value, TransientStorageError)
        assert info.value.hint and "ca_bundle" in info.value.hint
        trusting = open_storage(repo_config(section, ca_bundle=str(server.ca_file)))
        put_bytes(trusting, "k", b"over tls")
        assert read_bytes(trusting, "k") == b"over tls"
        unverified = open_storage(repo_config(section, verify_tls=False))
        assert read_bytes(unverified, "k") == b"over tls"


@pytest.mark.parametrize("checksum", ["crc32", "md5"])
def test_s3_puts_carry_a_checksum_and_the_server_checks_it(
        s3_server: Any, s3_repo: dict[str, Any], checksum: str) -> None:
    """A body that does not arrive whole must not become an object (an agent killed
    mid-upload used to leave an EMPTY object under a WAL name on SeaweedFS)."""
    bucket, _, prefix = s3_repo["url"][len("s3://"):].partition("/")
    raw = s3_server.client()
    wrong = ({"ChecksumCRC32": checksum_crc32(b"only part of it")} if checksum == "crc32"
             else {"ContentMD5": content_md5(b"only part of it")})
    with pytest.raises(Exception, match=r"BadDigest|InvalidDigest"):
        raw.put_object(Bucket=bucket, Key=f"{prefix}/bad", Body=b"the whole body", **wrong)
    assert "Contents" not in raw.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/bad")

    storage = open_storage(repo_config(s3_repo, part_size_mib=5, upload_concurrency=2,
                                       upload_checksum=checksum))
    sent: dict[str, tuple[str, str]] = {}

    def header(request: Any, name: str) -> str:
        value = request.headers.get(name) or b""
        return value.decode() if isinstance(value, bytes) else str(value)

    def record(request: Any, event_name: str, **_: Any) -> None:
        sent[event_name.split(".")[-1]] = (header(request, "Content-MD5"),
                                           header(request, "x-amz-checksum-crc32"))

    storage._client.meta.events.register("before-send.s3.PutObject", record)  # type: ignore[attr-defined]
    storage._client.meta.events.register("before-send.s3.UploadPart", record)  # type: ignore[attr-defined]
    put_bytes(storage, "small", b"segment")
    storage.put("big", io.BytesIO(os.urandom(11 << 20)), if_absent=True)
    assert sent["PutObject"] == ((content_md5(b"segment"), "") if checksum == "md5"
                                 else ("", checksum_crc32(b"segment")))
    assert sent["UploadPart"][0]  # parts always carry Content-MD5
    assert read_bytes(storage, "small") == b"segment"
