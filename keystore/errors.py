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
    "IntegrityError",
    "KeystoreError",
    "MigrationError",
    "MigrationRequired",
    "NotAVault",
    "RollbackDetected",
    "SchemaTooNew",
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
