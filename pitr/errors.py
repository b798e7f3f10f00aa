"""The exception tree and the exit-code registry.

Every failure a user can meet is a :class:`PitrError` subclass with a stable
exit code. The CLI maps the exception to its code; nothing else decides codes.

==== ============================ ==============================================
code class                         meaning
==== ============================ ==============================================
0    -                            success
1    WalNotFound                  archive-get: the file is confirmed absent
2    UsageError                   bad command line (also typer's own code)
3    ConfigError                  configuration invalid (every problem listed)
4    StorageError                 repository failed in a way retries won't fix
5    TransientStorageError        repository unreachable/slow past the budget
6    NotFound                     an object or backup that must exist is absent
7    WalConflict                  an archived name exists with other content
8    SystemIdMismatch             WAL/cluster belongs to another cluster
9    IntegrityError               checksum mismatch / corrupt object
10   PostgresError                PostgreSQL unreachable or refused
11   PlanError                    no restore plan reaches the target
12   LockedError                  another backup/expire holds the stanza lock
13   TargetDirError               data directory not empty / not usable
14   CheckFailed                  `pitr check` / `pitr verify` found problems
15   PermissionRefused            refused to run (e.g. as root over another
                                  user's data directory)
16   BackupError                  pg_basebackup failed / backup incomplete
17   Interrupted                  stopped by a signal before finishing
18   VersionMismatch              PostgreSQL major versions differ (stanza,
                                  backup, cluster or binaries)
19   ReplayEndedShort             recovery ended before the end of WAL the
                                  restore plan promised
20   IncrementalError             an incremental backup cannot be taken or
                                  rebuilt (no usable parent, WAL summaries)
21   KeyNotConfigured             an object is encrypted with a key this host
                                  does not have (missing or wrong key)
22   DecryptionFailed             an encrypted object fails authentication
                                  (tampered, truncated, reordered, renamed)
23   EncryptionMismatch           an unencrypted write into an encrypted
                                  stanza, or the reverse, refused
24   KeySourceError               the configured key file/command/variable
                                  gives no usable key
25   ArchivedObject               an object a restore reads sits in an archive
                                  storage class (GLACIER, DEEP_ARCHIVE): run
                                  `pitr restore --thaw`
26   ThawTimeout                  `pitr restore --thaw`: archived objects were
                                  not readable within --thaw-timeout
31   TablespaceError              a tablespace cannot be restored where asked
                                  (bad --tablespace-map, location not empty)
70   InternalError                a bug: please report it (with --debug)
==== ============================ ==============================================

``archive-get`` (restore_command) is special: PostgreSQL reads every exit code
in 1–125 as "file not found" and would end recovery early, promoting a
half-restored cluster. So archive-get exits 1 only for :class:`WalNotFound`
and ``RECOVERY_ABORT_OFFSET + code`` (151–220) for every other error, which
makes recovery stop with FATAL instead. Under ``standby.signal`` a standby
must keep polling, so errors map to 1 there. ``archive-push`` never exits above
125 (the archiver would be restarted), which all codes here respect.
"""

from __future__ import annotations

RECOVERY_ABORT_OFFSET = 150


class PitrError(Exception):
    """Base of every error pitr reports to a user."""

    exit_code = 70
    default_hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint


class UsageError(PitrError):
    exit_code = 2


class ConfigError(PitrError):
    exit_code = 3

    def __init__(self, problems: list[str], *, hint: str | None = None) -> None:
        self.problems = list(problems)
        text = "invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(text, hint=hint or "fix the keys named above; `pitr config show` prints "
                         "every effective value and where it came from")


class StorageError(PitrError):
    exit_code = 4


class TransientStorageError(StorageError):
    """The repository did not answer in time, or answered with a retryable error."""

    exit_code = 5


class NotFound(StorageError):
    exit_code = 6


class AlreadyExists(StorageError):
    """A conditional write found the key taken. Callers decide whether that is fine."""

    exit_code = 7


class WalConflict(PitrError):
    exit_code = 7


class SystemIdMismatch(PitrError):
    exit_code = 8


class IntegrityError(PitrError):
    exit_code = 9


class PostgresError(PitrError):
    exit_code = 10


class PlanError(PitrError):
    exit_code = 11


class LockedError(PitrError):
    exit_code = 12


class TargetDirError(PitrError):
    exit_code = 13


class CheckFailed(PitrError):
    exit_code = 14


class PermissionRefused(PitrError):
    exit_code = 15


class BackupError(PitrError):
    exit_code = 16


class Interrupted(PitrError):
    exit_code = 17


class VersionMismatch(PitrError):
    """Across major versions, data directories, WAL and backups are not interchangeable."""

    exit_code = 18


class ReplayEndedShort(PitrError):
    """Recovery ended before the end of WAL the restore plan promised."""

    exit_code = 19


class IncrementalError(PitrError):
    """An incremental backup cannot be taken: no usable parent, or WAL summaries missing.

    docs/incremental-backups.md "Errors": the hint is always to take a full backup.
    """

    exit_code = 20


class TablespaceError(PitrError):
    """A tablespace of the backup cannot be restored where asked (docs/tablespaces.md).

    --tablespace-map names no tablespace of the backup or a relative path, two
    tablespaces would share a directory, or the location is not empty.
    """

    exit_code = 31


class KeyNotConfigured(PitrError):
    """An object is encrypted with a key this host does not have (missing or wrong key).

    docs/encryption.md "Errors": configure the key the message names.
    """

    exit_code = 21


class DecryptionFailed(IntegrityError):
    """An encrypted object fails authentication: tampered, truncated, reordered or renamed."""

    exit_code = 22


class EncryptionMismatch(PitrError):
    """An unencrypted write into an encrypted stanza, or the reverse, is refused."""

    exit_code = 23


class KeySourceError(PitrError):
    """The configured key file, key command or PITR_ENCRYPTION_KEY gives no usable key."""

    exit_code = 24


class ArchivedObject(StorageError):
    """An object a restore reads sits in an archive storage class: restore it first.

    GLACIER and DEEP_ARCHIVE objects cannot be read until a restore request made them
    readable; `pitr restore --thaw` makes the requests and waits (docs/storage-tiers.md).
    """

    exit_code = 25
    default_hint = ("run `pitr plan` to see what is archived and the estimated wait, then "
                    "`pitr restore --thaw ...` (docs/storage-tiers.md)")


class ThawTimeout(PitrError):
    """`pitr restore --thaw`: archived objects were not readable within --thaw-timeout.

    The restore requests keep running in S3: running the same command again waits for
    them without asking twice (docs/storage-tiers.md).
    """

    exit_code = 26


class WalNotFound(NotFound):
    """archive-get: the requested WAL file is confirmed absent from the repository."""

    exit_code = 1


class InternalError(PitrError):
    exit_code = 70


def exit_code_table() -> list[tuple[int, str, str]]:
    """(code, class name, first docstring line) for docs/exit-codes.md and `pitr --help`."""
    seen: dict[int, tuple[int, str, str]] = {}
    stack: list[type[PitrError]] = [PitrError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        doc = (cls.__doc__ or "").strip().splitlines()
        seen.setdefault(cls.exit_code, (cls.exit_code, cls.__name__, doc[0] if doc else ""))
    return sorted(seen.values())
