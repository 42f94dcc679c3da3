"""The SQLite backend: one vault per file, its rows and header as SQLite stores them.

The SQL that reads and writes a vault file's sealed rows, and the translation of
SQLite's errors into the keystore's own, live here; :class:`keystore.Vault` owns the
file itself (creation, the writer lock file, SQLCipher keying, migrations, WAL
hardening) and hands this backend its open connection and its write transaction.
:class:`SqliteBackend` is the :class:`~keystore.backend.VaultBackend` of a file, as
:class:`~keystore.backends.postgres.PostgresBackend` is that of a vault in
PostgreSQL: both store the same sealed bytes.

Tables (see ``docs/format.md``)::

    keystore_header   (id = 1, header)                 -- the wrapped secrets
    keystore_rows     (category, key_hash, value)      -- sealed rows
    keystore_counters (name, value)                    -- 'encryptions': the nonce budget
    keystore_state    (id = 1, record)                 -- the state record (format.md §15)
"""

from __future__ import annotations

import contextlib
import operator
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from itertools import chain
from pathlib import Path
from typing import Any

from keystore import migrations
from keystore import sqlcipher as sqlcipher_layer
from keystore.backend import AdoptState, CategoryCount, RowRef, SealedRow, StateUpdate
from keystore.errors import (
    IntegrityError,
    KeystoreError,
    RollbackDetected,
    VaultBusy,
    VaultIOError,
)
from keystore.sidecar import sidecar_path_for

__all__ = ["SqliteBackend", "stored_count"]

#: A header blob larger than this is damage, not a header (the format's is 149 bytes).
_MAX_HEADER_BLOB = 4096
#: The counter row naming the key generation the rows of a SQLCipher vault are
#: encrypted under; it changes in the same transaction as the rows themselves.
ROW_GENERATION = "key_generation"
#: Rows per lookup of the values a write replaces: two variables each, under SQLite's
#: historical limit of 999.
_OLD_VALUES_CHUNK = 400


_UPSERT_HEAD = "INSERT INTO keystore_rows (category, key_hash, value) VALUES "
_UPSERT_TAIL = " ON CONFLICT (category, key_hash) DO UPDATE SET value = excluded.value"
#: Rows per multi-row upsert statement: 768 parameters, under SQLite's historical
#: limit of 999 variables per statement.
_UPSERT_ROWS = 256
_UPSERT_ONE = _UPSERT_HEAD + "(?, ?, ?)" + _UPSERT_TAIL
_UPSERT_MANY = _UPSERT_HEAD + ", ".join(["(?, ?, ?)"] * _UPSERT_ROWS) + _UPSERT_TAIL


def _upsert_rows(conn: sqlite3.Connection, rows: list[tuple[str, bytes, bytes]]) -> None:
    """Upsert sealed rows, 256 per statement execution.

    The sqlite3 module releases and retakes the GIL around every statement step:
    with one step per row, a thread that wants the GIL back (any CPU-bound thread
    beside an event loop) makes each of those retakes wait its switch interval.
    One step per 256 rows cuts those hand-offs 256-fold, and the per-row cost of
    the statement machinery with them.  Same rows, same order, same transaction.
    """
    n = _UPSERT_ROWS
    full = len(rows) - len(rows) % n
    groups = map(rows.__getitem__, map(slice, range(0, full, n), range(n, full + 1, n)))
    conn.executemany(_UPSERT_MANY, map(tuple, map(chain.from_iterable, groups)))
    if full < len(rows):
        conn.executemany(_UPSERT_ONE, rows[full:])


def _translate(exc: Exception, path: Path) -> KeystoreError:
    """Map a SQLite/SQLCipher error to the keystore's own exception (never leak it raw)."""
    msg = str(exc).lower()
    if "locked" in msg or "busy" in msg:
        return VaultBusy(f"vault {path} is busy (a SQLite lock is held elsewhere): {exc}")
    if sqlcipher_layer.is_database_error(exc) and (
        "malformed" in msg or "not a database" in msg or "corrupt" in msg
    ):
        if "not a database" in msg and sidecar_path_for(path).exists():
            # A SQLCipher page failed its HMAC under the key this connection holds.
            return IntegrityError(
                f"vault {path} cannot be read with the page key in use: its writer "
                "rekeyed it (lock and unlock again), or the file is corrupt"
            )
        return IntegrityError(f"vault {path} is corrupt: {exc}")
    if "could not decode to utf-8" in msg:  # a damaged TEXT field: corruption, not I/O
        return IntegrityError(f"vault {path} is corrupt: a text field is not UTF-8")
    return VaultIOError(f"storage failure on vault {path}: {exc}")


@contextlib.contextmanager
def _db_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlcipher_layer.db_error_types() as exc:
        raise _translate(exc, path) from exc
    except UnicodeDecodeError:
        # sqlite3 decodes TEXT columns (category names, the schema) as it fetches them:
        # a damaged page surfaces here, before any row authentication could run.
        raise IntegrityError(f"vault {path} is corrupt: a text field is not UTF-8") from None


def _sql_type(value: object) -> str:
    """The SQLite storage class a fetched value had, for error messages."""
    if value is None:
        return "NULL"
    if isinstance(value, bool | int):
        return "INTEGER"
    if isinstance(value, float):
        return "REAL"
    if isinstance(value, str):
        return "TEXT"
    return "an oversized BLOB" if isinstance(value, bytes) else type(value).__name__


def stored_count(value: object, what: str, path: Path) -> int:
    """A counter read back from the file: a non-negative INTEGER, or corruption."""
    if type(value) is not int or value < 0:
        raise IntegrityError(
            f"vault {path} is corrupt: {what} is stored as {_sql_type(value)}, "
            "not a non-negative integer"
        )
    return value



def _stored(value: object, path: Path) -> bytes:
    """A BLOB read back from the file; a NULL, number or text there means corruption."""
    if isinstance(value, bytes):
        return value
    raise IntegrityError(f"vault {path} is corrupt: a stored key hash or value is not a blob")


def read_state_record(conn: sqlite3.Connection, path: Path) -> bytes | None:
    """The state record (docs/format.md §15.3), or ``None`` when there is none."""
    try:
        row = conn.execute("SELECT record FROM keystore_state WHERE id = 1").fetchone()
    except sqlcipher_layer.db_error_types() as exc:
        if "no such table" in str(exc):  # dropped: reported as a missing record
            return None
        raise
    if row is None:
        return None
    if not isinstance(row[0], bytes):
        raise IntegrityError(f"vault {path} is corrupt: its state record is not a BLOB")
    return row[0]


def write_state_record(conn: sqlite3.Connection, record: bytes) -> None:
    """Store the state record, inside a transaction the caller holds."""
    conn.execute(
        "INSERT INTO keystore_state (id, record) VALUES (1, ?)"
        " ON CONFLICT (id) DO UPDATE SET record = excluded.record",
        (record,),
    )


def store_row_generation(conn: sqlite3.Connection, generation: int) -> None:
    """Record the key generation of a SQLCipher vault's rows (with the rows' write)."""
    conn.execute(
        "INSERT INTO keystore_counters (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (ROW_GENERATION, generation),
    )


def _old_values(
    conn: sqlite3.Connection, targets: Iterable[RowRef], path: Path
) -> list[SealedRow]:
    """``(category, key_hash, last 16 bytes of the value)`` of the rows a write replaces
    or deletes: all a digest contribution covers (docs/format.md §15.2).

    One statement per chunk of rows, in the write's own transaction, so the digest
    subtracts exactly what the write overwrites: the batch's keys as a ``VALUES``
    list driving one indexed lookup each (``CROSS JOIN`` keeps that order).  Only
    the tail is fetched (``substr``; ``coalesce`` because SQLite gives NULL for an
    empty blob's), not the whole value.
    """
    refs = list(targets)
    found: list[SealedRow] = []
    for lo in range(0, len(refs), _OLD_VALUES_CHUNK):
        chunk = refs[lo : lo + _OLD_VALUES_CHUNK]
        rows = conn.execute(
            f"WITH t(c, k) AS (VALUES {', '.join(['(?, ?)'] * len(chunk))})"
            " SELECT r.category, r.key_hash, coalesce(substr(r.value, -16), r.value)"
            " FROM t CROSS JOIN keystore_rows r ON r.category = t.c AND r.key_hash = t.k",
            list(chain.from_iterable(chunk)),
        ).fetchall()
        # Checked in bulk (no Python loop per row): a tail that is not a blob.
        if not set(map(type, map(operator.itemgetter(2), rows))) <= {bytes}:
            raise IntegrityError(f"vault {path} is corrupt: a stored value is not a blob")
        found += rows
    return found


class _Snapshot:
    """A read transaction held open on the vault's connection (see ``read_snapshot``)."""

    _BATCH = 256
    in_memory = False

    def __init__(
        self, conn: sqlite3.Connection, path: Path, count: int, *, ordered: bool = True
    ) -> None:
        self._conn = conn
        self._path = path
        self.count = count
        self._ordered = ordered

    def batches(self) -> Iterator[list[SealedRow]]:
        """The rows, 256 at a time (never all in memory): in category and key-hash
        order, or in table order (one pass over the table, no index walk)."""
        with _db_errors(self._path):
            cursor = self._conn.execute(
                "SELECT category, key_hash, value FROM keystore_rows"
                + (" ORDER BY category, key_hash" if self._ordered else "")
            )
        while True:
            with _db_errors(self._path):
                batch: list[Any] = cursor.fetchmany(self._BATCH)
            if not batch:
                return
            yield batch

    def state_record(self) -> bytes | None:
        """The state record, read in the snapshot's transaction."""
        with _db_errors(self._path):
            return read_state_record(self._conn, self._path)


class SqliteBackend:
    """The sealed rows, header and counters of one vault file.

    Built by :class:`keystore.Vault` over its connection (which a SQLCipher vault
    only has once unlocked, so it is fetched per call) and its write transaction
    (``BEGIN IMMEDIATE`` under the writer lock file, checking that the file is
    still the one opened).  The writer "lease" of a file is that lock file, held by
    the vault from open to close, so :meth:`close` releases nothing here.
    """

    def __init__(
        self,
        path: Path,
        connection: Callable[[], sqlite3.Connection],
        write_txn: Callable[[], AbstractContextManager[sqlite3.Connection]],
        *,
        header_in_database: bool = True,
    ) -> None:
        self._path = path
        self._connection = connection
        self._write_txn = write_txn
        # False for a SQLCipher vault: its header is in its header file (the database
        # cannot be read before the key derived from that header is known), so the
        # writes that would store a header record the rows' key generation instead.
        self._header_in_database = header_in_database

    @property
    def location(self) -> str:
        """The vault file's path."""
        return str(self._path)

    def _fetch(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        with _db_errors(self._path):
            return self._connection().execute(sql, params).fetchall()

    def read_header(self) -> bytes:
        """The header blob of a plain vault (a SQLCipher vault's is in its header file)."""
        rows = self._fetch("SELECT header FROM keystore_header WHERE id = 1")
        if not rows:
            raise IntegrityError(f"vault {self._path} has no header row")
        value = rows[0][0]
        if not isinstance(value, bytes) or len(value) > _MAX_HEADER_BLOB:
            raise IntegrityError(
                f"vault {self._path} is corrupt: its header is stored as "
                f"{_sql_type(value)}, not as a header blob"
            )
        return value

    def write_header(self, header: bytes) -> None:
        """Replace the header row in one write transaction.

        Raises:
            VaultIOError: a SQLCipher vault, whose header is in its header file
                (written by the vault); nothing was written.
        """
        if not self._header_in_database:
            raise VaultIOError(
                f"vault {self._path} keeps its header in its header file, not in the database"
            )
        with self._write_txn() as conn:
            conn.execute("UPDATE keystore_header SET header = ? WHERE id = 1", (header,))

    def apply(
        self, upserts: Sequence[SealedRow], deletes: Sequence[RowRef],
        state: StateUpdate | None = None, *, old_known: bool = False,
    ) -> None:
        """Upserts, deletes, the nonce counter and (with ``state``) the state record,
        in ONE write transaction; the replaced values are read before the write
        unless ``old_known`` (then ``state`` gets ``None`` for them: one attempt
        only, this backend never retries)."""
        with self._write_txn() as conn:
            record: bytes | None = None
            if state is not None:
                old: list[SealedRow] | None = None
                if not old_known:
                    targets = list(map(operator.itemgetter(0, 1), upserts))
                    targets += deletes
                    old = _old_values(conn, targets, self._path)
                record = state(read_state_record(conn, self._path), old)
            self.write_rows(conn, upserts, deletes)
            if record is not None:
                write_state_record(conn, record)

    @staticmethod
    def write_rows(
        conn: sqlite3.Connection, upserts: Sequence[SealedRow], deletes: Sequence[RowRef]
    ) -> None:
        """The statements of :meth:`apply`, inside a transaction the caller holds."""
        if upserts:
            _upsert_rows(conn, list(upserts))
            conn.execute(
                "UPDATE keystore_counters SET value = value + ? WHERE name = 'encryptions'",
                (len(upserts),),
            )
        if deletes:
            conn.executemany(
                "DELETE FROM keystore_rows WHERE category = ? AND key_hash = ?", deletes
            )

    def get(self, category: str, key_hash: bytes) -> bytes | None:
        """The sealed value of one row, or ``None``."""
        rows = self._fetch(
            "SELECT value FROM keystore_rows WHERE category = ? AND key_hash = ?",
            (category, key_hash),
        )
        return None if not rows else _stored(rows[0][0], self._path)

    def scan(self, category: str) -> list[tuple[bytes, bytes]]:
        """``(key_hash, sealed_value)`` of one category, in key-hash order."""
        rows = self._fetch(
            "SELECT key_hash, value FROM keystore_rows WHERE category = ? ORDER BY key_hash",
            (category,),
        )
        path = self._path
        return [(_stored(k, path), _stored(v, path)) for k, v in rows]

    def scan_all(self) -> list[SealedRow]:
        """Every row, in category and key-hash order."""
        rows = self._fetch(
            "SELECT category, key_hash, value FROM keystore_rows ORDER BY category, key_hash"
        )
        path = self._path
        return [(str(c), _stored(k, path), _stored(v, path)) for c, k, v in rows]

    def categories(self) -> list[str]:
        """The categories holding at least one row, sorted (names unchecked)."""
        rows = self._fetch("SELECT DISTINCT category FROM keystore_rows ORDER BY category")
        return [str(r[0]) for r in rows]

    def rewrite(self, rows: Sequence[SealedRow], header: bytes, encryptions: int) -> None:
        """Replace the values of existing rows, the header and the counter, atomically."""
        with self._write_txn() as conn:
            conn.executemany(
                "UPDATE keystore_rows SET value = ? WHERE category = ? AND key_hash = ?",
                [(blob, category, key_hash) for category, key_hash, blob in rows],
            )
            conn.execute("UPDATE keystore_header SET header = ? WHERE id = 1", (header,))
            conn.execute(
                "UPDATE keystore_counters SET value = ? WHERE name = 'encryptions'",
                (encryptions,),
            )

    def read_state(self) -> bytes | None:
        """The state record, or ``None``."""
        with _db_errors(self._path):
            return read_state_record(self._connection(), self._path)

    def scan_with_state(self) -> tuple[list[SealedRow], bytes | None]:
        """Every row (as stored) and the state record, from one read transaction."""
        conn = self._connection()
        with _db_errors(self._path):
            conn.execute("BEGIN")
            try:
                rows: list[Any] = conn.execute(
                    "SELECT category, key_hash, value FROM keystore_rows"
                ).fetchall()
                record = read_state_record(conn, self._path)
            finally:
                conn.execute("COMMIT")
        return rows, record

    @contextlib.contextmanager
    def read_snapshot(self, *, ordered: bool = True) -> Iterator[_Snapshot]:
        """One read transaction for the ``with`` block: WAL keeps its view fixed."""
        conn = self._connection()
        with _db_errors(self._path):
            conn.execute("BEGIN")
        try:
            with _db_errors(self._path):
                # The first read fixes the snapshot: every later one sees the same.
                (count,) = conn.execute("SELECT COUNT(*) FROM keystore_rows").fetchone()
            yield _Snapshot(conn, self._path, int(count), ordered=ordered)
        finally:
            with contextlib.suppress(*sqlcipher_layer.db_error_types()):
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def adopt_state(self, build: AdoptState) -> None:
        """Read every row and the record, store what ``build`` returns: one transaction."""
        with self._write_txn() as conn:
            rows: list[Any] = conn.execute(
                "SELECT category, key_hash, value FROM keystore_rows"
            ).fetchall()
            record, header = build(rows, read_state_record(conn, self._path))
            write_state_record(conn, record)
            if self._header_in_database and header is not None:
                conn.execute("UPDATE keystore_header SET header = ? WHERE id = 1", (header,))

    def rehash(
        self,
        rows: Sequence[tuple[str, bytes, bytes, bytes]],
        header: bytes,
        encryptions: int,
        record: bytes | None,
        expected_record: bytes | None,
        *,
        key_generation: int | None = None,
    ) -> None:
        """A rekey's write in one transaction (see the Protocol).

        ``key_generation``: for a SQLCipher vault, whose header is written to its
        header file by the vault, the generation the rows are now under, recorded
        with them (the truth an interrupted rekey is completed from).
        """
        with self._write_txn() as conn:
            if read_state_record(conn, self._path) != expected_record:
                raise RollbackDetected(
                    f"the state record of vault {self._path} changed during the rekey; "
                    "nothing was written",
                    reason="record",
                )
            before = conn.total_changes
            conn.executemany(
                "UPDATE keystore_rows SET key_hash = ?, value = ?"
                " WHERE category = ? AND key_hash = ?",
                [(nk, value, c, ok) for c, ok, nk, value in rows],
            )
            changed = conn.total_changes - before
            (total,) = conn.execute("SELECT COUNT(*) FROM keystore_rows").fetchone()
            if changed != len(rows) or total != len(rows):
                raise RollbackDetected(
                    f"the rows of vault {self._path} changed during the rekey; "
                    "nothing was written",
                    reason="rows",
                )
            if record is not None:
                write_state_record(conn, record)
            conn.execute(
                "UPDATE keystore_counters SET value = ? WHERE name = 'encryptions'",
                (encryptions,),
            )
            if self._header_in_database:
                conn.execute("UPDATE keystore_header SET header = ? WHERE id = 1", (header,))
            if key_generation is not None:
                store_row_generation(conn, key_generation)

    def encryptions(self) -> int:
        """Encryptions made under the current data key (the nonce budget used)."""
        rows = self._fetch("SELECT value FROM keystore_counters WHERE name = 'encryptions'")
        return stored_count(rows[0][0], "the nonce counter", self._path) if rows else 0

    def category_counts(self) -> list[CategoryCount]:
        """Rows and stored bytes per category, sorted by category."""
        rows = self._fetch(
            "SELECT category, COUNT(*), COALESCE(SUM(LENGTH(value)), 0)"
            " FROM keystore_rows GROUP BY category ORDER BY category"
        )
        return [(str(c), int(n), int(b)) for c, n, b in rows]  # type: ignore[call-overload]

    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        with _db_errors(self._path):
            return migrations.schema_version(self._connection())

    def close(self) -> None:
        """Nothing to release: the vault owns the connection and the lock file."""
