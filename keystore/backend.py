"""What a vault needs from the storage underneath it: the backend interface.

A vault is two layers.  The *cipher* layer (:mod:`keystore.cipher`,
:mod:`keystore.header`) turns rows into sealed blobs and back and wraps the two
secrets in the header; it is the same for every database.  The *backend* stores
those bytes, exactly as given, and knows no key.  This module names the second
layer's duties, read off every use of SQLite in :mod:`keystore.vault`, so a second
database (:mod:`keystore.backends.postgres`) is an adapter behind one
:class:`~typing.Protocol` rather than a second copy of the vault.

The interface is deliberately small:

* the header: one opaque blob per vault (:meth:`VaultBackend.read_header`,
  :meth:`VaultBackend.write_header`);
* rows: ``(category, key_hash, sealed_value)``, read one at a time, by category or
  all at once, and written only by :meth:`VaultBackend.apply`, which lands a whole
  batch of upserts and deletes atomically together with the nonce-budget counter;
* :meth:`VaultBackend.rewrite`: every row replaced, with header and counter, in one
  transaction (a rekey);
* the writer lease: whatever keeps a second writer out (a lock file for SQLite; a
  fenced lease row for a shared server), checked inside every write transaction;
* the schema version and per-category statistics for reports.

Blobs are opaque here: a backend must return the bytes it was given, so a sealed
row copied between backends decrypts (the AAD binds store id, category and key
hash, never where the row is stored).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = ["CategoryCount", "RowRef", "SealedRow", "VaultBackend"]

#: ``(category, key_hash, sealed_value)``: a row as the cipher produced it.
SealedRow = tuple[str, bytes, bytes]
#: ``(category, key_hash)``: the address of a row.
RowRef = tuple[str, bytes]
#: ``(category, rows, bytes)`` for a statistics report.
CategoryCount = tuple[str, int, int]


@runtime_checkable
class VaultBackend(Protocol):
    """Storage for one vault's header and sealed rows.

    Every method raises only :mod:`keystore.errors` exceptions: a backend translates
    its database's errors (busy → :class:`~keystore.errors.VaultBusy`, unreachable or
    failing storage → :class:`~keystore.errors.VaultIOError`, a lost writer lease →
    :class:`~keystore.errors.LeaseLost`).  No failure path deletes or truncates data.
    """

    @property
    def location(self) -> str:
        """Where the vault lives, for messages and reports (never a password)."""
        ...

    def read_header(self) -> bytes:
        """The stored header blob (parsed and authenticated by the caller)."""
        ...

    def write_header(self, header: bytes) -> None:
        """Replace the header atomically (a passphrase change); fenced by the lease."""
        ...

    def apply(self, upserts: Sequence[SealedRow], deletes: Sequence[RowRef]) -> None:
        """Land a batch in ONE transaction: all of it or none.

        The transaction first adds ``len(upserts)`` to the encryption counter — the
        nonce budget of the data key — and, on a backend shared between machines,
        that very update is the fencing check of the writer lease: a writer whose
        lease was taken over writes nothing.

        Raises:
            LeaseLost: another writer holds the vault now; nothing was written.
            VaultIOError: the storage failed; nothing was written.
        """
        ...

    def get(self, category: str, key_hash: bytes) -> bytes | None:
        """The sealed value of one row, or ``None``."""
        ...

    def scan(self, category: str) -> list[tuple[bytes, bytes]]:
        """``(key_hash, sealed_value)`` of one category, in key-hash order."""
        ...

    def scan_all(self) -> list[SealedRow]:
        """Every row of the vault (verify, rekey, export)."""
        ...

    def categories(self) -> list[str]:
        """The categories holding at least one row, sorted."""
        ...

    def rewrite(self, rows: Sequence[SealedRow], header: bytes, encryptions: int) -> None:
        """Replace the values of existing rows, the header and the counter, atomically."""
        ...

    def encryptions(self) -> int:
        """Encryptions made under the current data key (the nonce budget used)."""
        ...

    def category_counts(self) -> list[CategoryCount]:
        """Rows and stored bytes per category, sorted by category."""
        ...

    def schema_version(self) -> int:
        """The version of the schema holding this vault."""
        ...

    def close(self) -> None:
        """Release the writer lease and the connection (idempotent)."""
        ...
