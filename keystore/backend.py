"""What a vault needs from the storage underneath it: the backend interface.

A vault's bytes pass two layers below the vault itself.  The *cipher*
(:mod:`keystore.cipher`, :mod:`keystore.header`) turns rows into sealed blobs and
back and wraps the two secrets in the header; it is the same for every database.
The *backend* stores those bytes, exactly as given, and knows no key.  This module
names the backend's duties, so that each database (:mod:`keystore.backends.sqlite`,
:mod:`keystore.backends.postgres`) is an adapter behind one
:class:`~typing.Protocol` and the vault above them is written once.

The interface is deliberately small:

* the header: one opaque blob per vault (:meth:`VaultBackend.read_header`,
  :meth:`VaultBackend.write_header`);
* rows: ``(category, key_hash, sealed_value)``, read one at a time, by category or
  all at once, and written only by :meth:`VaultBackend.apply`, which lands a whole
  batch of upserts and deletes atomically together with the nonce-budget counter;
* :meth:`VaultBackend.rehash`: a rekey's write — every row a new key hash and value,
  with the header, counter and state record, in one transaction that refuses to land
  if the rows or the record changed since they were read;
  :meth:`VaultBackend.rewrite` replaces values under unchanged key hashes (a new data
  key alone);
* the writer lease: whatever keeps a second writer out (a lock file for SQLite; a
  fenced lease row for a shared server), checked inside every write transaction;
* the schema version and per-category statistics for reports;
* the vault's *state record* (docs/format.md §15): one opaque blob beside the header
  that the layer above seals and checks.  The backend only stores it, reads it in the
  same snapshot as the rows (:meth:`VaultBackend.scan_with_state`), and hands the
  layer above, inside a write transaction, the record and the stored values a batch
  replaces, so that the next record is computed from exactly what the write
  overwrites (:data:`StateUpdate`) — or, when the layer above says it knows those
  values already (``old_known``), the record alone.

The layer above — unlock, the state record, ``apply``, reads, passphrase change,
rekey, verify — is written once, in :class:`keystore.vault_core.VaultCore`, typed
only against this Protocol.

Blobs are opaque here: a backend must return the bytes it was given, so a sealed
row copied between backends decrypts (the AAD binds store id, category and key
hash, never where the row is stored).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

__all__ = [
    "AdoptState", "CategoryCount", "RowRef", "RowSnapshot", "SealedRow", "StateUpdate",
    "VaultBackend",
]

#: ``(category, key_hash, sealed_value)``: a row as the cipher produced it.
SealedRow = tuple[str, bytes, bytes]
#: ``(category, key_hash)``: the address of a row.
RowRef = tuple[str, bytes]
#: ``(category, rows, bytes)`` for a statistics report.
CategoryCount = tuple[str, int, int]
#: Called inside an apply's transaction as ``state(record, old_rows)``: the stored
#: state record and the stored rows the batch replaces or deletes (read before the
#: write touches them); returns the record to store with the batch.  ``old_rows`` is
#: ``None`` when the caller said it knows them (``apply(..., old_known=True)``) and
#: this attempt did not read them.  On a backend that retries a transaction it may be
#: called more than once; the last call's is stored.
StateUpdate = Callable[[bytes | None, list[SealedRow] | None], bytes]
#: Called inside an adoption's transaction as ``build(rows, record)`` with every row
#: and the stored record (or ``None``); returns ``(record, header)`` to store, the
#: header ``None`` to leave it as it is (a record carried over to a newer format).
AdoptState = Callable[[list[SealedRow], bytes | None], tuple[bytes, bytes | None]]


class RowSnapshot(Protocol):
    """The rows of a vault as of one moment, from :meth:`VaultBackend.read_snapshot`.

    Values are as stored: a damaged store may hand back a category that is not a
    ``str`` or a blob that is not ``bytes``; the vault checks every row it reads.
    """

    @property
    def count(self) -> int:
        """How many rows the snapshot holds."""
        ...

    @property
    def in_memory(self) -> bool:
        """Whether every row was already fetched (then the vault checks them all up front)."""
        ...

    def batches(self) -> Iterator[list[SealedRow]]:
        """The rows in category and key-hash order, a batch at a time."""
        ...

    def state_record(self) -> bytes | None:
        """The state record of the same moment as the rows."""
        ...


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

    def apply(
        self, upserts: Sequence[SealedRow], deletes: Sequence[RowRef],
        state: StateUpdate | None = None, *, old_known: bool = False,
    ) -> None:
        """Land a batch in ONE transaction: all of it or none.

        The transaction first adds ``len(upserts)`` to the encryption counter — the
        nonce budget of the data key — and, on a backend shared between machines,
        that very update is the fencing check of the writer lease: a writer whose
        lease was taken over writes nothing.  With ``state``, the state record is
        advanced in the same transaction (see :data:`StateUpdate`): a batch and the
        record vouching for it land together or not at all.

        ``old_known=True`` says the caller already knows the stored values the batch
        replaces (the vault keeps their tails in memory while it is the one writer):
        the first attempt then calls ``state(record, None)`` without reading them.
        A retried attempt (a backend that retries after a lost connection, when the
        first attempt may have committed) reads them back as usual, since what the
        caller knew describes the rows before the first attempt only.

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

    def read_state(self) -> bytes | None:
        """The stored state record, or ``None`` when the vault has none (yet)."""
        ...

    def scan_with_state(self) -> tuple[list[SealedRow], bytes | None]:
        """Every row and the state record, from ONE consistent snapshot.

        A batch committed meanwhile is in both or in neither, so checking the rows
        against the record never mistakes a concurrent write for a rollback.  Rows
        are as stored (see :class:`RowSnapshot`).
        """
        ...

    def read_snapshot(self, *, ordered: bool = True) -> AbstractContextManager[RowSnapshot]:
        """A read snapshot held open for the ``with`` block (what an export streams).

        ``ordered``: rows in category and key-hash order (an export's promise); a
        full load, which builds dicts, passes ``False`` so the backend may read them
        in storage order, which is cheaper (no index walk)."""
        ...

    def adopt_state(self, build: AdoptState) -> None:
        """Give a vault from before the state record its record, in ONE write transaction.

        Reads every row and the stored record, calls ``build`` (which authenticates
        them and may raise: then nothing is written), and stores the record and the
        header it returns (a backend whose header lives outside it stores the record
        only).
        """
        ...

    def rehash(
        self,
        rows: Sequence[tuple[str, bytes, bytes, bytes]],
        header: bytes,
        encryptions: int,
        record: bytes | None,
        expected_record: bytes | None,
    ) -> None:
        """A rekey's write, in ONE transaction: every row a new key hash and value.

        ``rows`` are ``(category, old_key_hash, new_key_hash, new_value)`` and must be
        every row of the vault; the header, counter and (when not ``None``) the state
        record are replaced with them.  If the stored record is no longer
        ``expected_record`` or the set of rows changed, nothing is written and
        :class:`~keystore.errors.RollbackDetected` is raised.
        """
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
