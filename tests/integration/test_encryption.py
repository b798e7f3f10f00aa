"""Client-side encryption end to end (docs/encryption.md): a real PostgreSQL 15 cluster
archiving into a real S3 server (SeaweedFS) with a repository key, one backup, WAL under
two keys (a rotation in the middle), a restore to a random time between two commits,
the drill after ``pitr key rotate --rewrap`` with only the new key, and every refusal:
no key, a wrong key, a renamed object, an unencrypted push.

The workload and restore helpers are test_restore_exactness's (one source of truth for
"exact to the row"); the module builds one cluster and one backup for all its tests.
"""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_pitr, s3_repo_for, write_config
from support.pgcluster import PG_USER, PgCluster, make_user_dir
from test_restore_exactness import Source, numbers, restore, switch_and_wait, write_rows

from pitr import config as config_mod
from pitr import crypto
from pitr.errors import (
    RECOVERY_ABORT_OFFSET,
    DecryptionFailed,
    EncryptionMismatch,
    KeyNotConfigured,
)
from pitr.storage import open_storage
from pitr.storage.base import Storage, read_bytes

pytestmark = [pytest.mark.integration, pytest.mark.s3]


@dataclasses.dataclass
class Enc:
    src: Source
    settings: dict[str, Any]
    keys: dict[str, Path]  # name -> key file (owned by the cluster user, 0600)
    rotated_at: int  # rows up to this one are in WAL sealed with key1

    def config(self, name: str, **encryption: str) -> Path:
        settings = json.loads(json.dumps(self.settings))
        settings["encryption"] = encryption
        return write_config(self.src.base / f"{name}.toml", settings)

    def raw(self) -> Storage:
        """The bucket as its owner sees it: no keys."""
        return open_storage(config_mod.load(self.src.config, env={}).repository)


def fetched(enc: Enc, seg: str, tag: str) -> Path:
    """An archived segment, back as a file the cluster user owns (for re-pushing)."""
    dest = make_user_dir(enc.src.base / f"pg_wal-{tag}") / seg
    run_pitr(enc.src.config, "archive-get", seg, str(dest))
    return dest


def key_ids(enc: Enc, *names: str) -> list[str]:
    return [crypto.key_id(crypto.parse_key(enc.keys[n].read_bytes(), n)) for n in names]


@pytest.fixture(scope="module")
def enc(workdir: Path, s3_server: Any, pitr_exe: Path, pg_bindir: Path) -> Iterator[Enc]:
    base = make_user_dir(workdir / f"encryption-{uuid.uuid4().hex[:6]}", mode=0o755)
    cluster = PgCluster(base, "src", bindir=pg_bindir)
    settings: dict[str, Any] = {
        "stanza": "enc",
        "repository": s3_repo_for(s3_server),
        # synchronous pushes: each archive-push reads the config (and key) as it is now
        "archive": {"spool_dir": str(make_user_dir(base / "spool")), "agent_idle_exit": 0},
        "postgres": {"bindir": str(pg_bindir), "user": PG_USER, "dsn": cluster.dsn,
                     "pgdata": str(cluster.pgdata)},
        "verify": {"scratch_dir": str(make_user_dir(base / "scratch", mode=0o755))},
    }
    keydir = make_user_dir(base / "keys")
    keys = {}
    for name in ("key1", "key2", "stranger"):
        keys[name] = keydir / name
        run_pitr(base / "none.toml", "key", "generate", str(keys[name]))  # as the cluster user
    settings["encryption"] = {"key_file": str(keys["key1"])}
    cfg = write_config(base / "pitr.toml", settings)
    cluster.initdb(conf={"archive_mode": "on",
                         "archive_command": f"{pitr_exe} --config {cfg} archive-push %p"})
    src = Source(base, cfg, cluster, [], {})
    try:
        cluster.start()
        cluster.sql("create table t (n int primary key, ts timestamptz not null)")
        run_pitr(cfg, "backup")
        rows = write_rows(cluster, range(1, 5))
        src.rows += rows
        src.segments[switch_and_wait(cluster)] = [r.n for r in rows]
        # rotation: the archiver's config now names key2 (key1 for older objects)
        settings["encryption"] = {"key_file": str(keys["key2"]),
                                  "old_key_files": str(keys["key1"])}
        write_config(cfg, settings)
        out = run_pitr(cfg, "key", "rotate")
        assert "new objects are sealed with key" in out.stdout
        rows = write_rows(cluster, range(5, 9))
        src.rows += rows
        src.segments[switch_and_wait(cluster)] = [r.n for r in rows]
        yield Enc(src, settings, keys, rotated_at=4)
    finally:
        for c in [*src.restored, cluster]:
            c.stop("immediate")


def test_everything_but_repo_json_is_sealed_and_check_opens_the_newest(enc: Enc) -> None:
    raw = enc.raw()
    objs = [o.key for o in raw.list("enc/")]
    assert any("/backups/" in k for k in objs) and any("/wal/" in k for k in objs)
    ident = json.loads(read_bytes(raw, "enc/repo.json"))
    (k2,) = key_ids(enc, "key2")
    assert ident["encrypted"] is True and set(ident["keys"]) >= {k2}
    for key in objs:
        if key != "enc/repo.json":
            head = read_bytes(raw, key, crypto.HEADER_SIZE)
            assert head.startswith(crypto.MAGIC), key
    # WAL archived after the rotation is sealed with key2
    newest = max(k for k in objs if k.endswith(f"{max(enc.src.segments)}.zst"))
    assert crypto.SealedHeader.decode(read_bytes(raw, newest, crypto.HEADER_SIZE),
                                      newest).key_id == k2
    proc = run_pitr(enc.src.config, "check", "--json", check=False)
    results = {r["name"]: r for r in json.loads(proc.stdout)["checks"]}
    assert results["encryption"]["status"] == "ok", results
    assert k2 in results["encryption"]["detail"]
    assert results["archive"]["status"] == "ok", results
    assert enc.keys["key1"].read_text().strip() not in proc.stdout + proc.stderr


def test_missing_wrong_key_renamed_object_and_unencrypted_push_are_refused(enc: Enc) -> None:
    src = enc.src
    nokey = enc.config("nokey")
    stranger = enc.config("stranger", key_file=str(enc.keys["stranger"]))
    seg = min(src.segments)
    for cfg in (nokey, stranger):
        # plan names the key instead of treating the backup as absent
        proc = run_pitr(cfg, "plan", "--latest", check=False)
        assert proc.returncode == KeyNotConfigured.exit_code, proc.stderr
        assert "key" in proc.stderr
        # archive-get: above 125, and nothing written
        dest = make_user_dir(src.base / f"get-{cfg.stem}") / "seg"
        proc = run_pitr(cfg, "archive-get", seg, str(dest), check=False)
        assert proc.returncode == RECOVERY_ABORT_OFFSET + KeyNotConfigured.exit_code, proc.stderr
        assert not dest.exists()
        # restore refuses before touching the directory
        target = src.base / f"restore-{cfg.stem}"
        proc = run_pitr(cfg, "restore", "--pgdata", str(target), "--latest", check=False)
        assert proc.returncode == KeyNotConfigured.exit_code, proc.stderr
        assert not (target / "PG_VERSION").exists()
    # an unencrypted push into the encrypted stanza
    wal = fetched(enc, seg, "plain")
    proc = run_pitr(nokey, "archive-push", str(wal), check=False)
    assert proc.returncode == EncryptionMismatch.exit_code, proc.stderr
    assert "unencrypted push" in proc.stderr
    # a valid sealed segment copied under another name
    raw = enc.raw()
    key = next(o.key for o in raw.list("enc/wal/") if o.key.endswith(f"{seg}.zst"))
    other_name = seg[:-1] + "F"
    other = key.replace(seg, other_name)
    raw.put(other, raw.open(key))
    try:
        dest = make_user_dir(src.base / "get-renamed") / "seg"
        proc = run_pitr(src.config, "archive-get", other_name, str(dest), check=False)
        assert proc.returncode == RECOVERY_ABORT_OFFSET + DecryptionFailed.exit_code, \
            proc.stderr
        assert "another name" in proc.stderr and not dest.exists()
    finally:
        raw.delete([other])


def test_two_keys_restore_to_a_random_time_then_rewrap_and_drill_with_the_new_key(
        enc: Enc) -> None:
    src = enc.src
    k = random.Random().randrange(1, len(src.rows))  # any gap, before or after the rotation
    print(f"restoring to between rows {k} and {k + 1}")
    restored, _ = restore(src, f"r{k}", "--to", src.between(k).isoformat())
    assert numbers(restored) == list(range(1, k + 1))
    restored.stop("immediate")

    out = run_pitr(src.config, "key", "rotate", "--rewrap", "--json")
    doc = json.loads(out.stdout)
    k1, k2 = key_ids(enc, "key1", "key2")
    assert doc["rewrapped"] > 0 and doc["keys"] == [k2] and k1 in doc["retired"]
    raw = enc.raw()
    for obj in raw.list("enc/"):
        if obj.key not in ("enc/repo.json",):
            head = read_bytes(raw, obj.key, crypto.HEADER_SIZE)
            assert crypto.SealedHeader.decode(head, obj.key).key_id == k2, obj.key

    only_new = enc.config("key2-only", key_file=str(enc.keys["key2"]))
    proc = run_pitr(only_new, "verify", "--json", check=False)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["ok"] is True, proc.stdout + proc.stderr
    # the old key alone no longer writes into the stanza, nor reads it
    only_old = enc.config("key1-only", key_file=str(enc.keys["key1"]))
    proc = run_pitr(only_old, "archive-push", str(fetched(enc, min(src.segments), "old")),
                    check=False)
    assert proc.returncode == EncryptionMismatch.exit_code, proc.stderr
    proc = run_pitr(only_old, "plan", "--latest", check=False)
    assert proc.returncode == KeyNotConfigured.exit_code, proc.stderr
