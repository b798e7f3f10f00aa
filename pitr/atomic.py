"""Replace a small file atomically: the one way pitr writes one (spool, %p, auto.conf, caches).

``os`` only: the per-segment fast paths import it (see pitr/fastpath.py).
"""

from __future__ import annotations

import os

FILE_MODE = 0o600  # everything pitr writes is private to its owner (pitr/security.py)


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *,
                 durable: bool = False) -> None:
    """Replace ``path`` with ``data`` as a 0600 file: readers see the old or the new
    content, never a part (temp file + rename). ``durable``: fsync before the rename,
    for what must survive a crash (a restored WAL file, the recovery settings)."""
    p = os.fspath(path)
    tmp = os.path.join(os.path.dirname(p), f".{os.path.basename(p)}.{os.getpid()}.tmp")
    view = memoryview(data.encode() if isinstance(data, str) else data)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        try:
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)
    except BaseException:
        try:  # noqa: SIM105 - contextlib is one import more on the hot path
            os.unlink(tmp)
        except OSError:
            pass
        raise
