"""The keystore's exception tree.

Every failure the keystore can detect raises a subclass of :class:`KeystoreError`;
the base class itself is never raised, so ``except KeystoreError`` catches exactly
the keystore's own, documented failures.  Misuse of the API (wrong types, a key of
the wrong length, an empty passphrase) raises :class:`TypeError` / :class:`ValueError`
instead, because it is a bug in the caller, not a condition of the vault.

No message produced here ever contains plaintext: integrity failures name the
category and the *hashed* row key only.
"""

from __future__ import annotations

__all__ = [
    "InsecurePermissionsWarning",
    "IntegrityError",
    "KeystoreError",
    "LeaseLost",
    "MigrationError",
    "MigrationRequired",
    "NotAVault",
    "RollbackDetected",
    "SchemaTooNew",
    "UnsafeFile",
    "VaultBusy",
    "VaultClosed",
    "VaultIOError",
    "VaultLocked",
    "WrongPassphrase",
]


class KeystoreError(Exception):
    """Base class of every keystore error; never raised itself."""


class WrongPassphrase(KeystoreError):
    """The passphrase (or raw key) does not unwrap the vault's secrets.

    AES-GCM cannot tell a wrong key from an edited header: both fail the same tag
    check.  The message says so instead of guessing.
    """


class VaultLocked(KeystoreError):
    """The operation needs the vault's keys, but the vault is locked."""


class VaultClosed(KeystoreError):
    """The vault object was closed; open the file again."""


class IntegrityError(KeystoreError):
    """A row or the header failed authentication (tampering, corruption, misplacement).

    Attributes:
        category: the category of the failing row, or ``None`` for the header.
        key_hash: the hex keyed hash of the row key (never the key itself), or ``None``.
    """

    def __init__(self, message: str, *, category: str | None = None, key_hash: str | None = None):
        super().__init__(message)
        self.category = category
        self.key_hash = key_hash


class NotAVault(KeystoreError):
    """The path is missing, not a file, not SQLite, or a SQLite file of another application."""


class SchemaTooNew(KeystoreError):
    """The vault was written by a newer version of this package; it is left untouched."""


class VaultBusy(KeystoreError):
    """Another writer holds the vault (another process, or another ``Vault`` object).

    Attributes:
        holder_pid: the pid recorded by the current holder, when known.
    """

    def __init__(self, message: str, *, holder_pid: int | None = None):
        super().__init__(message)
        self.holder_pid = holder_pid


class VaultIOError(KeystoreError):
    """The storage underneath failed (disk full, I/O error, read-only or vanished file).

    The vault's bytes are left as they were; the failed transaction was rolled back.
    """


class MigrationError(KeystoreError):
    """A schema migration failed, was rolled back, or does not match its record."""


class MigrationRequired(MigrationError):
    """The vault's schema is older than this code; run ``mls-keystore migrate``.

    Opening never upgrades someone's only copy silently: pass ``auto_migrate=True``
    to :meth:`keystore.Vault.open` or run the command, which makes a backup first.
    """


class LeaseLost(VaultBusy):
    """This writer's lease on a shared vault was taken over; nothing was written.

    A vault on a database server is written by one holder of its lease at a time.
    A writer that was paused or cut off past the lease's expiry may find another
    worker holding it: its write is refused (the lease epoch it carries no longer
    matches), and it must drop the state it holds in memory and reload, because the
    new holder may have moved on.
    """


class UnsafeFile(KeystoreError):
    """A file the vault would use is not safe to trust, so nothing was opened or written.

    Raised for a symlink, FIFO, device or directory where a vault companion file
    (``-wal``, ``-shm``, ``.lock``, ``.header``) belongs, for one owned by another
    user or writable by group or others, and for a file created by the package
    that turned out not to be the one it created.  In a folder that others can
    write, such a file may have been planted to read or inject pages.

    Attributes:
        path: the offending file.
    """

    def __init__(self, message: str, *, path: str | None = None):
        super().__init__(message)
        self.path = path


class InsecurePermissionsWarning(UserWarning):
    """Something others can read or write, which the package uses anyway (a warning).

    Issued when a vault's folder is writable by group or others (another user
    could plant files beside the vault, which the open then refuses), and when a
    passphrase or key file can be read by someone else.  It is a warning, not an
    error, so a caller who knows the folder is safe can ignore it with
    ``warnings.simplefilter("ignore", InsecurePermissionsWarning)``.
    """


class RollbackDetected(IntegrityError):
    """The rows or the vault as a whole are not the latest state the vault recorded.

    Every row authenticates on its own, yet the set of rows, or the vault's
    generation, is not the one the vault's authenticated state record (or the
    application's anchor) vouches for: an older copy of a row was put back, a row
    was deleted or re-inserted, or an older copy of the whole vault was restored.
    Nothing is repaired or written when this is raised.

    Attributes:
        reason: what disagrees: ``"record"`` (the state record is missing or fails
            authentication), ``"rows"`` (the rows differ from the set the record
            vouches for) or ``"anchor"`` (the vault is older than its anchor).
        generation: the vault generation found in the file, when known.
        expected_generation: the generation the anchor holds (``"anchor"`` only).
        rows_found: the number of rows read (``"rows"`` only).
        rows_expected: the number of rows the record vouches for (``"rows"`` only).
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        generation: int | None = None,
        expected_generation: int | None = None,
        rows_found: int | None = None,
        rows_expected: int | None = None,
    ):
        super().__init__(message)
        self.reason = reason
        self.generation = generation
        self.expected_generation = expected_generation
        self.rows_found = rows_found
        self.rows_expected = rows_expected
