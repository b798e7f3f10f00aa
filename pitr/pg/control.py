"""The cluster's identity from its data directory, without asking the server.

``global/pg_control`` starts with ``ControlFileData.system_identifier`` (a
uint64 in the platform's byte order, little-endian on every platform PostgreSQL
packages for). archive-get runs once per WAL segment and needs the identity of
the cluster it restores into (docs/exit-codes.md: archive-get answers "absent"
only for the right repository), so it reads these 8 bytes instead of running
pg_controldata.
"""

from __future__ import annotations

from pathlib import Path

from pitr.errors import TargetDirError

CONTROL_FILE = "global/pg_control"


def _head(path: Path | str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(8)


def system_id_or_none(datadir: Path | str) -> int | None:
    """The system identifier, or None when pg_control cannot be read whole (the fast
    paths, which then leave the decision to the full command)."""
    try:
        head = _head(Path(datadir) / CONTROL_FILE)
    except OSError:
        return None
    return int.from_bytes(head, "little") if len(head) == 8 else None


def read_system_id(datadir: Path) -> int:
    """The system identifier recorded in ``datadir``'s pg_control."""
    path = Path(datadir) / CONTROL_FILE
    try:
        head = _head(path)
    except OSError as exc:
        raise TargetDirError(
            f"cannot read {path}: {exc.strerror or exc}",
            hint="archive-get proves a segment absent only for the cluster being recovered; "
                 "it runs in that data directory (restore_command's working directory) as "
                 "the PostgreSQL user") from exc
    if len(head) < 8:
        raise TargetDirError(f"{path} is too short to be a pg_control file")
    return int.from_bytes(head, "little")
