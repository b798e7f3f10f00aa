"""Repository storage: pick a driver from the repository URL.

Drivers are imported lazily so a command that only touches the local
directory never pays for importing boto3.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pitr.errors import ConfigError
from pitr.storage.base import ObjectInfo, Storage, put_bytes, read_bytes

if TYPE_CHECKING:
    from pitr.config import RepositoryConfig

__all__ = ["ObjectInfo", "Storage", "open_storage", "put_bytes", "read_bytes"]


def open_storage(cfg: RepositoryConfig) -> Storage:
    url = cfg.url
    if url.startswith("file://"):
        from pitr.storage.fs import FsStorage

        return FsStorage(Path(url[len("file://"):]))
    if url.startswith("s3://"):
        from pitr.storage.s3 import S3Storage

        return S3Storage(cfg)
    raise ConfigError([f"repository.url: unsupported scheme in {url!r}"])
