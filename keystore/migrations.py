"""Versioned schema migrations: an ordered list of small named steps.

Each step runs together with its record (version, name, checksum, time) in one
``BEGIN IMMEDIATE`` transaction, and bumps ``PRAGMA user_version`` inside that same
transaction, so a crash leaves the file entirely at the old version or entirely at
the new one.  :func:`applied` and :func:`pending` only read.

A step is SQL, optionally followed by Python on the connection and, for a *data*
step, Python that also receives the vault's unlocked :class:`~keystore.cipher.StoreCipher`
(to re-encrypt rows, say).  A data step runs only when the caller passes the
cipher, and inside the step's single transaction like everything else, so a
half re-encrypted table is never committed.

Rules for adding a step: append, never edit a shipped one (its checksum is
recorded in every vault that applied it and a mismatch is reported), and keep the
SQL deterministic.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from keystore.errors import IntegrityError, MigrationError, VaultLocked

if TYPE_CHECKING:
    from keystore.cipher import StoreCipher

__all__ = [
    "BOOKKEEPING_TABLE",
    "LATEST_VERSION",
    "MIGRATIONS",
    "AppliedMigration",
    "DataStep",
    "Migration",
    "StatementHook",
    "applied",
    "check_recorded",
    "migrate",
    "pending",
    "schema_version",
]

BOOKKEEPING_TABLE = "keystore_migrations"

#: Called with ``(version, point)`` at every point of a step where the process could
#: die: after ``BEGIN``, after each statement (the step's own and the bookkeeping
#: ones), and once more after ``COMMIT``.  ``point`` counts from 0 within the step.
#: A seam for the kill -9 campaign; ``None`` in production.
StatementHook = Callable[[int, int], None]

#: A data step: re-encrypts or rewrites rows with the unlocked vault's cipher, on the
#: step's connection, inside its transaction (it must not commit).
DataStep = Callable[[sqlite3.Connection, "StoreCipher"], None]


@dataclass(frozen=True, slots=True)
class Migration:
    """One step from ``version - 1`` to ``version``.

    Attributes:
        version: the schema version this step produces.
        name: short, stable, human-readable name.
        statements: SQL run in order inside the step's transaction.
        python: optional extra work on the connection, in the same transaction.
        python_id: a stable string naming the Python parts (part of the checksum).
        data: optional work that needs the unlocked cipher, in the same transaction.
    """

    version: int
    name: str
    statements: tuple[str, ...]
    python: Callable[[sqlite3.Connection], None] | None = field(default=None, compare=False)
    python_id: str = ""
    data: DataStep | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if (self.python is not None or self.data is not None) and not self.python_id:
            # Without an id, editing the Python part would leave the checksum unchanged.
            raise ValueError(f"migration {self.version} has Python code but no python_id")

    @property
    def needs_keys(self) -> bool:
        """Whether the step can only run on an unlocked vault."""
        return self.data is not None

    @property
    def checksum(self) -> str:
        """SHA-256 over name, SQL and the id of the Python part."""
        h = hashlib.sha256()
        for part in (str(self.version), self.name, *self.statements, self.python_id):
            data = part.encode("utf-8")
            h.update(len(data).to_bytes(4, "big"))
            h.update(data)
        return h.hexdigest()


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    """The record of a step applied to a vault."""

    version: int
    name: str
    checksum: str
    applied_at: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial schema: header and encrypted rows",
        (
            "CREATE TABLE keystore_header ("
            " id INTEGER PRIMARY KEY CHECK (id = 1),"
            " header BLOB NOT NULL)",
            "CREATE TABLE keystore_rows ("
            " category TEXT NOT NULL,"
            " key_hash BLOB NOT NULL,"
            " value BLOB NOT NULL,"
            " PRIMARY KEY (category, key_hash)) WITHOUT ROWID",
        ),
    ),
    Migration(
        2,
        "nonce-budget counter",
        (
            "CREATE TABLE keystore_counters ("
            " name TEXT PRIMARY KEY,"
            " value INTEGER NOT NULL CHECK (value >= 0)) WITHOUT ROWID",
            # Version 1 kept no count: every stored row was encrypted at least once
            # under the current key, so the row count is a lower bound to start from.
            "INSERT INTO keystore_counters (name, value)"
            " SELECT 'encryptions', COUNT(*) FROM keystore_rows",
        ),
    ),
    Migration(
        3,
        "rows in a rowid table with a unique (category, key_hash) index",
        (
            # Encrypted values are ~1 KiB and their keys are random hashes: in a
            # WITHOUT ROWID table every insert lands on a random leaf holding whole
            # values, and bench/keystore_bench.py measured batch writes 3-4x slower
            # than in a rowid table, whose random inserts touch only the small index.
            "CREATE TABLE keystore_rows_v3 ("
            " id INTEGER PRIMARY KEY,"
            " category TEXT NOT NULL,"
            " key_hash BLOB NOT NULL,"
            " value BLOB NOT NULL,"
            " UNIQUE (category, key_hash))",
            "INSERT INTO keystore_rows_v3 (category, key_hash, value)"
            " SELECT category, key_hash, value FROM keystore_rows ORDER BY category, key_hash",
            "DROP TABLE keystore_rows",
            "ALTER TABLE keystore_rows_v3 RENAME TO keystore_rows",
        ),
    ),
    Migration(
        4,
        "authenticated state record",
        (
            # The record (keystore.digest) needs the vault's keys, which a migration
            # does not have: the first writable unlock computes it over the rows and
            # sets the header flag that makes it mandatory from then on.
            "CREATE TABLE keystore_state ( id INTEGER PRIMARY KEY CHECK (id = 1),"
            " record BLOB NOT NULL)",
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


def schema_version(conn: sqlite3.Connection) -> int:
    """The version mirrored in ``PRAGMA user_version`` (0 for an empty database)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _has_bookkeeping(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (BOOKKEEPING_TABLE,)
    ).fetchone()
    return row is not None


def applied(conn: sqlite3.Connection) -> list[AppliedMigration]:
    """The recorded steps, oldest first.  Never writes.

    Raises:
        IntegrityError: a record holds a value of the wrong type (the file was edited).
    """
    if not _has_bookkeeping(conn):
        return []
    rows = conn.execute(
        f"SELECT version, name, checksum, applied_at FROM {BOOKKEEPING_TABLE} ORDER BY version"
    ).fetchall()
    records = []
    for v, n, c, t in rows:
        # Read back from a file someone else may have edited: a TEXT version or a
        # BLOB name is corruption, reported as such rather than a TypeError.
        if type(v) is not int or not all(type(x) is str for x in (n, c, t)):
            raise IntegrityError(
                f"the migration record {v!r} in {BOOKKEEPING_TABLE} is corrupt "
                "(a column holds the wrong type)"
            )
        records.append(AppliedMigration(v, n, c, t))
    return records


def _steps(migrations: Sequence[Migration] | None) -> Sequence[Migration]:
    # Defaults are resolved at call time, not bound at definition, so that every
    # caller (the vault's auto-migrate included) sees one list: the one shipped,
    # or the one a test puts in its place.
    return MIGRATIONS if migrations is None else migrations


def pending(
    conn: sqlite3.Connection,
    target: int | None = None,
    migrations: Sequence[Migration] | None = None,
) -> list[Migration]:
    """The steps that would bring the vault to ``target`` (default: the last one).

    Never writes.
    """
    steps = _steps(migrations)
    last = target if target is not None else (steps[-1].version if steps else 0)
    current = schema_version(conn)
    return [m for m in steps if current < m.version <= last]


def check_recorded(
    conn: sqlite3.Connection, migrations: Sequence[Migration] | None = None
) -> None:
    """Compare the recorded steps with the shipped ones.  Never writes.

    Raises:
        MigrationError: a recorded checksum differs from the shipped step, or the
            records disagree with ``user_version``.
    """
    shipped = {m.version: m for m in _steps(migrations)}
    records = applied(conn)
    for rec in records:
        m = shipped.get(rec.version)
        if m is None:
            continue  # a newer version's step: SchemaTooNew is raised elsewhere
        if rec.checksum != m.checksum:
            raise MigrationError(
                f"migration {rec.version} ({rec.name!r}) recorded in the vault has checksum "
                f"{rec.checksum[:16]}…, but this code ships {m.checksum[:16]}…"
            )
    version = schema_version(conn)
    recorded = [rec.version for rec in records]
    if recorded != list(range(1, version + 1)):
        raise MigrationError(
            f"schema version {version} disagrees with the recorded migrations {recorded}"
        )


def migrate(
    conn: sqlite3.Connection,
    target: int | None = None,
    *,
    migrations: Sequence[Migration] | None = None,
    cipher: StoreCipher | None = None,
    hook: StatementHook | None = None,
) -> list[Migration]:
    """Apply every pending step up to ``target``, each in its own transaction.

    ``conn`` must be in autocommit mode (``isolation_level=None``).  A failing step
    is rolled back entirely (its record and ``user_version`` included) and reported
    as :class:`MigrationError`; the steps before it stay applied, so a re-run
    continues where it stopped and applies each step exactly once.

    Args:
        target: the version to reach; default the last step of ``migrations``.
        migrations: the steps; default the shipped :data:`MIGRATIONS`.
        cipher: the unlocked vault's cipher; required when a pending step is a data step.
        hook: test seam, see :data:`StatementHook`.

    Returns:
        The steps applied.

    Raises:
        MigrationError: a step failed (and was rolled back) or the records are inconsistent.
        VaultLocked: a pending step needs the keys and ``cipher`` is ``None``;
            checked before anything is written.
    """
    shipped = _steps(migrations)
    versions = [m.version for m in shipped]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError("migrations must be numbered 1, 2, 3, … without gaps")
    if target is None:
        target = len(versions)
    if not 0 <= target <= len(versions):
        raise ValueError(f"no migration produces version {target}")
    check_recorded(conn, shipped)
    steps = pending(conn, target, shipped)
    locked_steps = [m.version for m in steps if m.needs_keys and cipher is None]
    if locked_steps:
        raise VaultLocked(
            f"migration {locked_steps[0]} rewrites encrypted rows and needs the vault "
            "unlocked: run `mls-keystore migrate` with the passphrase"
        )
    for m in steps:
        _apply_step(conn, m, cipher, hook)
    return steps


def _apply_step(
    conn: sqlite3.Connection,
    m: Migration,
    cipher: StoreCipher | None,
    hook: StatementHook | None,
) -> None:
    point = 0

    def reached() -> None:
        nonlocal point
        if hook is not None:
            hook(m.version, point)
        point += 1

    try:
        conn.execute("BEGIN IMMEDIATE")
        reached()
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {BOOKKEEPING_TABLE} ("
            " version INTEGER PRIMARY KEY,"
            " name TEXT NOT NULL,"
            " checksum TEXT NOT NULL,"
            " applied_at TEXT NOT NULL)"
        )
        reached()
        if schema_version(conn) != m.version - 1:
            raise MigrationError(f"vault changed underneath: expected version {m.version - 1}")
        for statement in m.statements:
            conn.execute(statement)
            reached()
        if m.python is not None:
            m.python(conn)
            reached()
        if m.data is not None:
            assert cipher is not None  # checked by migrate() before the first step
            m.data(conn, cipher)
            reached()
        conn.execute(
            f"INSERT INTO {BOOKKEEPING_TABLE} (version, name, checksum, applied_at)"
            " VALUES (?, ?, ?, ?)",
            (m.version, m.name, m.checksum, datetime.now(UTC).isoformat(timespec="seconds")),
        )
        reached()
        conn.execute(f"PRAGMA user_version = {int(m.version)}")
        reached()
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, MigrationError):
            raise
        if isinstance(exc, Exception):
            raise MigrationError(
                f"migration {m.version} ({m.name!r}) failed and was rolled back: {exc}"
            ) from exc
        raise
    reached()
