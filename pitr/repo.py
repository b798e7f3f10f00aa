"""Repository layout and identity.

::

    <stanza>/repo.json                      system id, PG version, segment size, format
    <stanza>/wal/<tli+log, 16 hex>/<segment>.zst      (also .partial.zst, .backup.zst)
    <stanza>/wal/<tli>.history.zst
    <stanza>/backups/<id>/base.tar.zst      ... other objects of the backup
    <stanza>/backups/<id>/tablespace-<oid>.tar.zst  a tablespace's tar (docs/tablespaces.md)
    <stanza>/backups/<id>/manifest.json     written LAST: no manifest, no backup
    <stanza>/pins/<id>                      its existence pins the backup
    <stanza>/claims/<id>.json               a reader's lease on a backup (pitr.claims)
    <stanza>/locks/<name>.json
    <stanza>/verify/<time>.json
    <stanza>/check/<probe>                  short-lived probes of `pitr check`

:class:`Repo` owns every key of this layout; nothing else spells one.

Every WAL object is compressed with the header from :mod:`pitr.codec`. Every
object but ``repo.json`` is sealed by :mod:`pitr.crypto` when the stanza is
encrypted: the repository handle carries its own keys (docs/encryption.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pitr.crypto import Keyring, SealedStorage
from pitr.errors import AlreadyExists, IntegrityError, NotFound, SystemIdMismatch
from pitr.pg.names import WalKind, classify
from pitr.pg.version import require_same_major
from pitr.storage.base import Storage, put_bytes, read_bytes

if TYPE_CHECKING:
    from pitr.config import Config

REPO_FORMAT = 1
WAL_SUFFIX = ".zst"
MANIFEST_OBJECT = "manifest.json"  # a backup's record, written last


@dataclass(frozen=True)
class RepoIdentity:
    system_id: str  # decimal string: JSON numbers lose precision past 2**53
    pg_version: int | None
    segment_size: int
    format: int = REPO_FORMAT
    created: str = ""
    # docs/encryption.md: new objects are sealed; ``keys`` are the fingerprints of the
    # keys in use (newest first); ``plaintext_objects``: it held unencrypted objects
    # before encryption was turned on, which stay readable
    encrypted: bool = False
    keys: list[str] = field(default_factory=list)
    plaintext_objects: bool = False


class Layout:
    """Every key of one stanza's repository layout (no storage needed to spell one)."""

    def __init__(self, stanza: str) -> None:
        self.stanza = stanza

    @property
    def root(self) -> str:
        return f"{self.stanza}/"

    @property
    def identity_key(self) -> str:
        return f"{self.stanza}/repo.json"

    @property
    def wal_prefix(self) -> str:
        return f"{self.stanza}/wal/"

    def wal_key(self, name: str) -> str:
        """Object key of a WAL file name PostgreSQL hands us (%f)."""
        if classify(name) is WalKind.HISTORY:
            return f"{self.wal_prefix}{name}{WAL_SUFFIX}"
        return self.segment_key(name)

    def segment_key(self, name: str) -> str:
        """:meth:`wal_key` of a name known to be a segment's (or a .partial/.backup
        file's): without classifying it again, for catalogs of many segments."""
        return f"{self.wal_prefix}{name[:16]}/{name}{WAL_SUFFIX}"

    @staticmethod
    def wal_name_of(key: str) -> str | None:
        """Inverse of :meth:`wal_key` (None for keys that are not WAL objects)."""
        base = key.rsplit("/", 1)[-1]
        if not base.endswith(WAL_SUFFIX):
            return None
        name = base[: -len(WAL_SUFFIX)]
        try:
            classify(name)
        except ValueError:
            return None
        return name

    @property
    def backups_prefix(self) -> str:
        return f"{self.stanza}/backups/"

    def backup_prefix(self, backup_id: str) -> str:
        return f"{self.backups_prefix}{backup_id}/"

    def manifest_key(self, backup_id: str) -> str:
        return f"{self.backup_prefix(backup_id)}{MANIFEST_OBJECT}"

    def backup_id_of(self, key: str) -> tuple[str, bool] | None:
        """(backup id, whether ``key`` is its manifest) for a key under backups/."""
        if not key.startswith(self.backups_prefix):
            return None
        parts = key[len(self.backups_prefix):].split("/")
        if len(parts) < 2 or not parts[0]:
            return None
        return parts[0], parts[1:] == [MANIFEST_OBJECT]

    @property
    def pins_prefix(self) -> str:
        return f"{self.stanza}/pins/"

    def pin_key(self, backup_id: str) -> str:
        """``<stanza>/pins/<id>``: its existence pins the backup (retention never deletes it)."""
        return f"{self.pins_prefix}{backup_id}"

    @property
    def claims_prefix(self) -> str:
        return f"{self.stanza}/claims/"

    def lock_key(self, name: str) -> str:
        return f"{self.stanza}/locks/{name}.json"

    @property
    def verify_prefix(self) -> str:
        return f"{self.stanza}/verify/"

    def probe_key(self, kind: str, token: str) -> str:
        """A short-lived probe object (``pitr check``, the conditional-write proof)."""
        return f"{self.stanza}/check/{kind}-{token}"


def upload_classes(cfg: Config) -> dict[str, str]:
    """Storage class per object kind for :class:`Repo` (pitr.tiers.upload_class)."""
    from pitr import tiers

    return {k: tiers.upload_class(cfg.repository, k) for k in (tiers.WAL, tiers.BACKUP)}


class Repo(Layout):
    """Keys and identity of one stanza inside a storage."""

    def __init__(self, storage: Storage, stanza: str, keyring: Keyring | None = None, *,
                 classes: Mapping[str, str] | None = None) -> None:
        super().__init__(stanza)
        self.sealed = SealedStorage(storage, keyring, stanza)
        self.storage: Storage = self.sealed
        # object kind (pitr.tiers.WAL, BACKUP) -> S3 storage class at upload ("" = default)
        self.classes: Mapping[str, str] = classes or {}

    @classmethod
    def open(cls, cfg: Config) -> Repo:
        """The configured stanza in the configured repository (the one way to open it),
        with this configuration's encryption keys."""
        from pitr.storage import open_storage

        return cls(open_storage(cfg.repository), cfg.stanza, open_keyring(cfg),
                   classes=upload_classes(cfg))

    def stored_size(self, plain: int) -> int:
        """The size ``plain`` bytes written now take in the repository (sealed or not)."""
        return self.sealed.stored_size(plain)

    def upload_class(self, kind: str) -> str:
        """The storage class a new object of ``kind`` is put in (docs/storage-tiers.md)."""
        return self.classes.get(kind, "")

    # -- identity ---------------------------------------------------------
    def read_identity(self) -> RepoIdentity | None:
        try:
            doc = json.loads(read_bytes(self.storage, self.identity_key))
        except NotFound:
            self.sealed.learn_identity(None)
            return None
        except ValueError as exc:
            raise IntegrityError(f"{self.identity_key}: not valid JSON") from exc
        self.sealed.learn_identity(doc)
        known = {f.name for f in fields(RepoIdentity)}  # keys a newer pitr adds are kept out
        return RepoIdentity(**{k: v for k, v in doc.items() if k in known})

    def ensure_identity(self, system_id: int, pg_version: int | None,
                        segment_size: int) -> RepoIdentity:
        """Claim the stanza for this cluster, or prove it is already ours.

        The first writer wins through a conditional create, so two clusters
        racing to claim one stanza cannot both succeed.
        """
        current = self.read_identity()
        if current is None:
            keyring = self.sealed.keyring
            mine = RepoIdentity(str(system_id), pg_version, segment_size,
                                created=datetime.now(UTC).isoformat(timespec="seconds"),
                                encrypted=keyring is not None,
                                keys=[keyring.current_id] if keyring is not None else [])
            try:
                put_bytes(self.storage, self.identity_key,
                          json.dumps(asdict(mine), indent=2).encode(), if_absent=True)
                self.sealed.learn_identity(asdict(mine))
                return mine
            except AlreadyExists:
                current = self.read_identity()
                assert current is not None
        # Before the system id: after pg_upgrade both differ, and the version says why.
        require_same_major(self.stanza, current.pg_version, pg_version or 0,
                           f"cluster {system_id}")
        if current.system_id != str(system_id):
            raise SystemIdMismatch(
                f"stanza {self.stanza!r} belongs to the cluster with system identifier "
                f"{current.system_id}, but this WAL comes from cluster {system_id}",
                hint="give each cluster its own stanza (`stanza` in pitr.toml); after "
                     "initdb/pg_upgrade a cluster needs a new stanza",
            )
        self.sealed.sealing()  # refuses a host whose key disagrees with the stanza's
        return current


def open_keyring(cfg: Config) -> Keyring | None:
    """The configured encryption keys; their text is kept out of every log line."""
    from pitr import log
    from pitr.crypto import load_keyring

    keyring = load_keyring(cfg.encryption)
    if keyring is not None:
        log.register_secrets(keyring.secret_forms())
    return keyring
