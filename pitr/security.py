"""Security basics: who may run a command, and private modes for what pitr writes.

Root over another user's data directory is refused for the commands that
write next to PostgreSQL (archive-push/get, backup): files root creates in
``pg_wal``, the spool or a local repository would later be unreadable or
undeletable for the PostgreSQL user, and the failure would surface hours later
as a stuck archiver. ``restore`` as root is allowed: it chowns what it writes
to ``postgres.user``.

Everything pitr creates is private to its owner (0600 files, 0700
directories): WAL and backups hold the whole database, spool receipts name
it. Stdlib only: archive-push calls this on every segment.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import sys
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from pitr.errors import PermissionRefused

FILE_MODE = 0o600
DIR_MODE = 0o700
PRIVATE_UMASK = 0o077


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def data_dir_candidates(pgdata: str | os.PathLike[str] | None,
                        cwd: str | os.PathLike[str] | None = None) -> list[Path]:
    """The data directory a command acts on: the configured one, else the working
    directory when it is a data directory (PostgreSQL runs archive_command and
    restore_command there with a relative ``%p``)."""
    out: list[Path] = []
    if pgdata:
        out.append(Path(pgdata))
    here = Path(cwd) if cwd is not None else Path.cwd()
    if (here / "PG_VERSION").exists():
        out.append(here)
    return out


def refuse_root_over_foreign_data(command: str, paths: Iterable[str | os.PathLike[str]],
                                  *, euid: int | None = None) -> None:
    """Raise :class:`PermissionRefused` when running as root over a directory
    that belongs to another user. Paths that do not exist are skipped."""
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        return
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if st.st_uid != 0:
            owner = _owner_name(st.st_uid)
            raise PermissionRefused(
                f"refusing to run {command} as root: the data directory {path} belongs to "
                f"{owner!r}; files root creates there would be unusable for PostgreSQL",
                hint=f"run it as that user, e.g. `runuser -u {owner} -- pitr {command} ...` "
                     "(systemd units set User=postgres)",
            )


def check_command_user(command: str, pgdata: str | os.PathLike[str] | None) -> None:
    """The one call archive-push/archive-get/backup make before touching anything."""
    refuse_root_over_foreign_data(command, data_dir_candidates(pgdata))


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    old = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(old)


def mkdir_private(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) as 0700; tighten it if it already exists and is ours."""
    p = Path(path)
    with private_umask():
        p.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    st = p.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        p.chmod(DIR_MODE)
    return p


def loose_modes(root: str | os.PathLike[str]) -> list[tuple[Path, int]]:
    """Files and directories below ``root`` readable or writable by group/others
    (what `pitr check` and the tests report as a leak)."""
    found: list[tuple[Path, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath, name)
            try:
                mode = p.lstat().st_mode & 0o777
            except OSError:
                continue
            if mode & 0o077 and not p.is_symlink():
                found.append((p, mode))
    st_mode = Path(root).stat().st_mode & 0o777
    if st_mode & 0o077:
        found.insert(0, (Path(root), st_mode))
    return found


# -- secrets in output ------------------------------------------------------------

_DSN_KV_PASSWORD = re.compile(r"""(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']+)""")
_DSN_URI_PASSWORD = re.compile(r"^postgres(?:ql)?://[^:/@?#]*:([^@/?#]*)@")
_DSN_QUERY_PASSWORD = re.compile(r"[?&]password=([^&#]+)")


def dsn_passwords(dsn: str) -> list[str]:
    """Passwords written into a libpq connection string (key=value or URI form), so
    they can be scrubbed like any other secret. PGPASSWORD/.pgpass are better."""
    found: list[str] = []
    for m in _DSN_KV_PASSWORD.finditer(dsn):
        raw = m.group(1)
        found.append(raw[1:-1].replace("\\'", "'").replace("\\\\", "\\")
                     if raw.startswith("'") else raw)
    for rx in (_DSN_URI_PASSWORD, _DSN_QUERY_PASSWORD):
        for m in rx.finditer(dsn):
            found += [m.group(1), urllib.parse.unquote(m.group(1))]
    return [p for p in dict.fromkeys(found) if p]


# A path segment of a webhook URL is a token when it is long or mixes in digits
# (Slack /services/T…/B…/<token>, Discord /api/webhooks/<id>/<token>); words such as
# "services" or "webhooks" are not secret and masking them would shred output.
_TOKEN_SEGMENT = re.compile(r"^(?=.*\d)[\w.~-]{8,}$|^[\w.~-]{16,}$")


def url_tokens(url: str) -> list[str]:
    """The secret parts of a URL: its path, token-like path segments, query values
    and a userinfo password; a message may quote any of them without the rest."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return []
    if not parts.scheme or not parts.netloc:
        return []
    out = []
    if parts.password:
        out.append(parts.password)
    if parts.path not in ("", "/"):
        out.append(parts.path.rstrip("/"))
        out += [seg for seg in parts.path.split("/") if _TOKEN_SEGMENT.match(seg)]
    if parts.query:
        out.append(parts.query)
        out += [v for _, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=False)]
    return out


def secret_forms(value: str) -> list[str]:
    """Every way output may render ``value``: as is, JSON-escaped, repr-escaped (both
    quote styles), URL-encoded (quote and quote_plus), and for a URL its token parts
    (each of those in every form too). Longest first, so a whole URL is masked before
    its parts."""
    import json

    base = [value, *url_tokens(value)]
    out: list[str] = []
    for v in base:
        out += [v, json.dumps(v)[1:-1], json.dumps(v, ensure_ascii=False)[1:-1],
                # repr quotes with ' (escaping ' when " is there too), or with " when
                # the text has a ' only: a trailing ' shows the double-quoted form
                repr(v)[1:-1], repr(v + "'")[1:-2] if "'" not in v else repr(v)[1:-1],
                urllib.parse.quote(v, safe=""), urllib.parse.quote_plus(v, safe=""),
                urllib.parse.quote(v)]
    return sorted(dict.fromkeys(out), key=len, reverse=True)


class ScrubbingStream:
    """A text stream that masks known secrets in everything written through it.

    Installed over stdout/stderr once secrets are known, so no output path (typer
    echo, print, tracebacks under --debug, third-party warnings) can show one.
    ``buffer`` is deliberately hidden: writers that find it would bypass the mask.
    """

    def __init__(self, stream: TextIO, scrub: Callable[[str], str]) -> None:
        self._stream = stream
        self._scrub = scrub

    def write(self, text: str) -> int:
        if isinstance(text, str):
            self._stream.write(self._scrub(text))
            return len(text)
        return self._stream.write(text)  # bytes: let the real stream raise its TypeError

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        if name == "buffer":
            raise AttributeError(name)
        return getattr(self._stream, name)


def scrub_std_streams(scrub: Callable[[str], str]) -> None:
    """Wrap sys.stdout and sys.stderr (once) in :class:`ScrubbingStream`."""
    for name in ("stdout", "stderr"):
        current = getattr(sys, name)
        if current is not None and not isinstance(current, ScrubbingStream):
            setattr(sys, name, ScrubbingStream(current, scrub))
