"""The PostgreSQL backend: many vaults in one database, one writer per vault across machines.

Needs the ``[postgres]`` extra (psycopg 3), imported only when a connection is
made; without it :class:`PostgresUnavailable` is raised.  The server stores only
what the SQLite backend stores — the wrapped header and sealed rows, byte for byte
— so the database operator sees store ids, category names, row counts and sizes,
and never a key or a plaintext (``docs/postgres.md``).

Tables, in their own schema (default ``mls_keystore``)::

    stores  (store_id, name, header, encryptions, lease_epoch, lease_holder, lease_expires,
             state)                                -- state: the rollback-detection record
    rows    (store_id, category, key_hash, value)     -- the SQLite row, plus store_id
    schema_migrations (version, name, checksum, applied_at)

**Migrations** are an ordered list of SQL steps (:data:`PG_MIGRATIONS`), each run
with its record in one transaction that first takes a transaction-scoped advisory
lock, so workers starting together apply each step exactly once; recorded
checksums are compared with the shipped steps by every new database handle.

**The writer lease** is a row-level fact, not a session lock: ``lease_holder`` and
``lease_expires`` say who may write, and ``lease_epoch`` grows by one at every
acquisition.  Every write transaction starts with
``UPDATE stores SET encryptions = encryptions + n WHERE store_id = $id AND
lease_epoch = $mine AND lease_holder = $me``: the epoch is a fencing token, so a
writer that was paused or cut off while another worker took the lease over writes
nothing and gets :class:`~keystore.errors.LeaseLost`.  That update also locks the store's row until
commit, so a takeover waits for an apply in flight and never interleaves with it.
Expiry is judged by the server's clock alone, so the workers' clocks do not matter.
Leases are taken and renewed by :mod:`keystore.backends.postgres_leases`; a
:class:`LeaseManager` renews all of one worker's leases in one statement.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from keystore.backend import AdoptState, CategoryCount, RowRef, SealedRow, StateUpdate
from keystore.backends._psycopg import PostgresUnavailable
from keystore.backends._psycopg import first_line as _first_line
from keystore.backends._psycopg import require as _psycopg
from keystore.backends.postgres_leases import DEFAULT_LEASE_TTL, Lease, LeaseManager
from keystore.errors import (
    LeaseLost,
    MigrationError,
    MigrationRequired,
    NotAVault,
    SchemaTooNew,
    VaultBusy,
    VaultClosed,
    VaultIOError,
)
from keystore.migrations import Migration

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "DEFAULT_LEASE_TTL",
    "DEFAULT_RETRY_FOR",
    "DEFAULT_SCHEMA",
    "IMPORTED_LEASE_EPOCH",
    "PG_LATEST_VERSION",
    "PG_MIGRATIONS",
    "Lease",
    "LeaseManager",
    "PostgresBackend",
    "PostgresDatabase",
    "PostgresUnavailable",
    "StateFor",
    "StateUpdate",
]

logger = logging.getLogger("keystore.postgres")

DEFAULT_SCHEMA = "mls_keystore"
#: Seconds an idempotent operation keeps reconnecting and retrying through a lost
#: connection (a restarted server, a terminated backend) before VaultIOError.
DEFAULT_RETRY_FOR = 15.0
#: Called inside ``import_store(replace=True)``'s transaction with the stored state
#: record of the vault it replaces (``None``: none, or one without a record); returns
#: the new vault's record (one above the replaced generation).
StateFor = Callable[[bytes | None], bytes]
#: The lease epoch of a vault that ``import_store(hold_lease=True)`` inserts: the
#: first, as for a vault ``create_store`` makes.
IMPORTED_LEASE_EPOCH = 1
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_T = TypeVar("_T")

#: The stored value's bytes a digest contribution covers: its last 16, the AES-GCM
#: tag (docs/format.md §15.2).
_TAIL = 16

#: Test seam: called inside every apply transaction, after the fencing update (a
#: test stops the process there).  ``None`` in production.
_apply_hook: Callable[[], None] | None = None

#: Test seam: called inside ``import_store``'s transaction after every row was
#: inserted, before the commit (a test fails or stops the process there).  ``None``
#: in production.
_import_hook: Callable[[], None] | None = None

#: Test seam: called with the version of a migration step after its statements ran,
#: before its record and commit (the concurrency test stalls there).  ``None`` in
#: production.
_migration_step_hook: Callable[[int], None] | None = None


# ---------------------------------------------------------------------- migrations

#: The schema's steps.  ``{s}`` stands for the schema name; the checksum covers the
#: text with the placeholder, so it is the same in every schema.  Append, never edit.
PG_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "stores with header, nonce counter and writer lease; sealed rows",
        (
            "CREATE TABLE {s}.stores ("
            " store_id bytea PRIMARY KEY CHECK (length(store_id) = 16),"
            " name text UNIQUE,"
            " header bytea NOT NULL,"
            " encryptions bigint NOT NULL DEFAULT 0 CHECK (encryptions >= 0),"
            " lease_epoch bigint NOT NULL DEFAULT 0,"
            " lease_holder text,"
            " lease_expires timestamptz,"
            " created_at timestamptz NOT NULL DEFAULT statement_timestamp())",
            # Renewal finds a worker's leases by holder.
            "CREATE INDEX stores_lease_holder ON {s}.stores (lease_holder)"
            " WHERE lease_holder IS NOT NULL",
            # "C" collation: categories sort bytewise, as in SQLite.
            "CREATE TABLE {s}.rows ("
            " store_id bytea NOT NULL,"
            ' category text COLLATE "C" NOT NULL,'
            " key_hash bytea NOT NULL,"
            " value bytea NOT NULL,"
            " PRIMARY KEY (store_id, category, key_hash))",
            # Sealed values are random bytes: trying to compress them only costs CPU.
            "ALTER TABLE {s}.rows ALTER COLUMN value SET STORAGE EXTERNAL",
        ),
    ),
    Migration(
        2,
        "per-vault state record for rollback detection",
        (
            # The 81-byte authenticated state record (docs/format.md §15.3); NULL
            # until the vault's first writable unlock adopts it.
            "ALTER TABLE {s}.stores ADD COLUMN state bytea"
            " CHECK (state IS NULL OR length(state) = 81)",
        ),
    ),
)
PG_LATEST_VERSION = PG_MIGRATIONS[-1].version


def _check_schema_name(schema: str) -> str:
    if not isinstance(schema, str) or not _SCHEMA_RE.fullmatch(schema):
        raise ValueError("schema must be a lowercase SQL identifier: [a-z_][a-z0-9_]{0,62}")
    return schema


def _advisory_key(schema: str) -> int:
    """The advisory-lock key serialising migrations of one schema (64-bit, signed)."""
    digest = hashlib.sha256(b"mls-keystore migrations\x00" + schema.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _redact(dsn: str) -> str:
    """The DSN without its password, for messages.

    Parsed the way libpq parses it (``conninfo_to_dict``), so every form it reads a
    password from is covered (URL user info, a ``password`` query parameter, the
    keyword form with quotes and escapes); a DSN with a password comes back in the
    keyword form with ``password=***``.  One that does not parse is not shown at all.
    """
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "<a PostgreSQL connection string that does not parse>"
    if "password" not in params:
        return dsn
    params["password"] = "***"
    return make_conninfo("", **params)


@dataclass(frozen=True, slots=True)
class _Records:
    version: int
    checksums: dict[int, str]


# ---------------------------------------------------------------------- binary arrays

#: PostgreSQL type oids of the arrays an apply sends (``pg_type``): ``text[]`` of
#: ``text`` elements, ``bytea[]`` of ``bytea`` elements.
_TEXT_ARRAY_OID, _TEXT_OID = 1009, 25
_BYTEA_ARRAY_OID, _BYTEA_OID = 1001, 17
_ARRAY_HEADER = struct.Struct(">iiIii")  # ndim, has-nulls, element oid, length, lower bound
_INT4 = struct.Struct(">i").pack


class _BinaryArray:
    """A one-dimensional array already in PostgreSQL's binary wire format.

    psycopg's own list adapter visits every element from Python; a batch of
    thousands of rows is cheaper framed here with ``map``/``join`` (C calls, no
    bytecode per element) and handed over as one buffer, which the server reads as
    it reads any binary array parameter.
    """

    __slots__ = ("data",)
    #: The array type's oid (set by each subclass).
    oid = 0
    element_oid = 0

    def __init__(self, items: Sequence[bytes]) -> None:
        self.data = b"".join(
            (
                _ARRAY_HEADER.pack(1, 0, self.element_oid, len(items), 1),
                *chain.from_iterable(zip(map(_INT4, map(len, items)), items, strict=True)),
            )
        )


class _TextArray(_BinaryArray):
    """``text[]``: elements are encoded strings (category names are ASCII, so the
    bytes are the same in every client encoding)."""

    __slots__ = ()
    oid, element_oid = _TEXT_ARRAY_OID, _TEXT_OID

    def __init__(self, items: Sequence[str]) -> None:
        super().__init__([item.encode() for item in items])


class _ByteaArray(_BinaryArray):
    """``bytea[]``."""

    __slots__ = ()
    oid, element_oid = _BYTEA_ARRAY_OID, _BYTEA_OID


def _register_array_dumpers(conn: psycopg.Connection[Any]) -> None:
    """Teach one connection to send :class:`_BinaryArray` buffers as they are."""
    from psycopg.adapt import Dumper
    from psycopg.pq import Format

    for cls in (_TextArray, _ByteaArray):

        class _Dump(Dumper):
            format = Format.BINARY
            oid = cls.oid

            def dump(self, obj: Any) -> bytes:
                return obj.data  # type: ignore[no-any-return]

        conn.adapters.register_dumper(cls, _Dump)


# ---------------------------------------------------------------------- the database


class PostgresDatabase:
    """One worker's view of a database holding many vaults.

    Holds one data connection (shared by every vault opened through it; an
    internal lock serialises its transactions) and a :class:`LeaseManager` with its
    own connection, so renewals never wait behind a long scan.  Idempotent
    operations reconnect and retry for ``retry_for`` seconds through a lost
    connection; after that, or when the server cannot be reached at all, they raise
    :class:`~keystore.errors.VaultIOError`.

    Args:
        dsn: a libpq connection string or ``postgresql://`` URL.
        schema: the schema holding the tables (several deployments may share a database).
        lease_ttl: seconds a writer lease lives without renewal.
        worker_id: the name this worker holds leases under (default: host, pid, random).
        renew: renew leases on a background thread every ``lease_ttl / 3`` seconds.
        retry_for: seconds to keep retrying an idempotent operation.
        connect_timeout: seconds one connection attempt may take.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        worker_id: str | None = None,
        renew: bool = True,
        retry_for: float = DEFAULT_RETRY_FOR,
        connect_timeout: float = 5.0,
    ) -> None:
        _psycopg()
        self.dsn = dsn
        self.schema = _check_schema_name(schema)
        self.retry_for = retry_for
        self.connect_timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        # The connection whose session has the staging table for COPY upserts.  A
        # table created inside a transaction that rolled back is gone, so a failed
        # apply forgets it (see PostgresBackend.apply).
        self._staged: psycopg.Connection[Any] | None = None
        self._lock = threading.RLock()
        self._closed = False
        # Checked once per handle: a worker opening 10,000 vaults asks once.  Newer
        # code migrating underneath is caught by its own checksums, not ours.
        self._schema_checked = False
        self.leases = LeaseManager(self, ttl=lease_ttl, worker_id=worker_id, renew=renew)

    @property
    def location(self) -> str:
        """The DSN without its password, and the schema."""
        return f"{_redact(self.dsn)} schema {self.schema}"

    # -- connections ------------------------------------------------------------

    def connect(self) -> psycopg.Connection[Any]:
        """A new autocommit connection (the caller closes it).

        Raises:
            VaultIOError: the server cannot be reached or refuses us.
        """
        pg = _psycopg()
        try:
            return pg.connect(  # type: ignore[no-any-return]
                self.dsn,
                autocommit=True,
                connect_timeout=max(1, int(self.connect_timeout)),
                application_name="mls-keystore",
            )
        except pg.Error as exc:
            raise VaultIOError(
                f"cannot connect to the PostgreSQL vault database ({self.location}): "
                f"{_first_line(exc)}"
            ) from None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise VaultClosed(f"the database handle for {self.location} is closed")
        if self._conn is None or self._conn.closed:
            conn = self.connect()
            # apply() promises the batch is durable when it returns: a role or
            # database configured with synchronous_commit = off would break that
            # silently, so this session raises it to "on" (stronger settings, such
            # as remote_apply for synchronous standbys, are kept).
            pg = _psycopg()
            try:
                row = conn.execute("SHOW synchronous_commit").fetchone()
                if row is not None and row[0] == "off":
                    conn.execute("SET synchronous_commit = on")
                # A writer stopped inside a transaction (SIGSTOP, a debugger) would
                # hold its vault's row lock, and so block every takeover, for as long
                # as its connection lives: the server ends such a session after one
                # lease period, and the fencing check refuses the writer on resume.
                idle_ms = max(1000, int(self.leases.ttl * 1000))
                conn.execute(f"SET idle_in_transaction_session_timeout = {idle_ms}")
                _register_array_dumpers(conn)
            except pg.Error as exc:
                conn.close()
                raise VaultIOError(
                    f"cannot set up a session on {self.location}: {_first_line(exc)}"
                ) from None
            self._conn = conn
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._staged = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def run(self, fn: Callable[[psycopg.Connection[Any]], _T], *, idempotent: bool = True) -> _T:
        """Run ``fn(conn)`` under the connection lock, translating errors.

        ``fn`` opens its own transaction.  A lost connection (server restart,
        ``pg_terminate_backend``, network) is retried on a fresh connection, with
        backoff, for ``retry_for`` seconds when ``idempotent``: a write whose commit
        was cut off may have landed, and running it again must change nothing.
        """
        pg = _psycopg()
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        with self._lock:
            while True:
                try:
                    conn = self._connection()
                except VaultIOError:
                    # connect() failed: the server is down or refusing; keep trying.
                    if time.monotonic() + delay > deadline:
                        raise
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                try:
                    return fn(conn)
                except pg.Error as exc:
                    # A lost session shows as OperationalError, or, when the server
                    # ended it (idle-in-transaction timeout), as whatever class its
                    # last message had: a broken connection is what says it.
                    lost = isinstance(exc, pg.OperationalError) or conn.closed or conn.broken
                    if not lost:
                        raise VaultIOError(
                            f"PostgreSQL vault database {self.location} refused an "
                            f"operation: {_first_line(exc)}"
                        ) from None
                    self._drop_connection()
                    if not idempotent or time.monotonic() + delay > deadline:
                        raise VaultIOError(
                            f"PostgreSQL vault database {self.location} failed: "
                            f"{_first_line(exc)}; nothing was written by this attempt "
                            "(or it landed whole)"
                        ) from None
                logger.info("PostgreSQL connection lost; retrying in %.2fs", delay)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def close(self) -> None:
        """Release every lease this worker holds and close both connections."""
        with self._lock:
            if self._closed:
                return
            self.leases.close()
            self._closed = True
            self._drop_connection()

    def __enter__(self) -> PostgresDatabase:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- schema -----------------------------------------------------------------

    def _records(self, conn: psycopg.Connection[Any]) -> _Records:
        s = self.schema
        exists = conn.execute(
            "SELECT 1 FROM information_schema.tables"
            " WHERE table_schema = %s AND table_name = 'schema_migrations'",
            (s,),
        ).fetchone()
        if exists is None:
            return _Records(0, {})
        rows = conn.execute(
            f"SELECT version, checksum FROM {s}.schema_migrations ORDER BY version"
        ).fetchall()
        checksums = {int(v): str(c) for v, c in rows}
        return _Records(max(checksums, default=0), checksums)

    def _check_records(self, records: _Records) -> None:
        shipped = {m.version: m for m in PG_MIGRATIONS}
        if records.version > PG_LATEST_VERSION:
            raise SchemaTooNew(
                f"the vault schema in {self.location} is version {records.version}; this "
                f"code reads up to {PG_LATEST_VERSION}. Upgrade mls-keystore; nothing "
                "was changed."
            )
        if sorted(records.checksums) != list(range(1, records.version + 1)):
            raise MigrationError(
                f"the recorded migrations in {self.location} are not 1..{records.version}"
            )
        for version, checksum in records.checksums.items():
            if shipped[version].checksum != checksum:
                raise MigrationError(
                    f"migration {version} recorded in {self.location} has checksum "
                    f"{checksum[:16]}…, but this code ships {shipped[version].checksum[:16]}…"
                )

    def schema_version(self) -> int:
        """The schema version recorded in the database (0: not installed).  Never writes."""
        return self.run(lambda conn: self._records(conn).version)

    def migration_records(self) -> list[tuple[int, str, str, str]]:
        """The applied steps, ``(version, name, checksum, applied_at)``.  Never writes."""
        s = self.schema
        if self.schema_version() == 0:
            return []
        rows = self.run(
            lambda conn: conn.execute(
                f"SELECT version, name, checksum, applied_at::text"
                f" FROM {s}.schema_migrations ORDER BY version"
            ).fetchall()
        )
        return [(int(v), str(n), str(c), str(a)) for v, n, c, a in rows]

    def schema_problems(self) -> list[str]:
        """What is wrong with the recorded steps (unknown, edited, missing); never writes."""
        try:
            self._check_records(self.run(self._records))
        except (MigrationError, SchemaTooNew) as exc:
            return [str(exc)]
        return []

    def lease_states(self) -> list[tuple[bytes, str | None, str | None, str | None, int, bool]]:
        """Every vault with its lease, in one query: ``(store_id, name, holder, expires,
        epoch, live)`` by name then id.  Never writes; for ``mls-keystore status``."""
        s = self.schema
        if self.schema_version() == 0:
            return []
        rows = self.run(
            lambda conn: conn.execute(
                f"SELECT store_id, name, lease_holder, lease_expires::text, lease_epoch,"
                f" coalesce(lease_expires > statement_timestamp(), false)"
                f" FROM {s}.stores ORDER BY name, store_id"
            ).fetchall()
        )
        return [(bytes(r[0]), r[1], r[2], r[3], int(r[4]), bool(r[5])) for r in rows]

    def lease_state(self, store_id: bytes) -> tuple[str | None, str | None, int, bool]:
        """``(holder, expires, epoch, live)`` of a vault's writer lease, by the server's
        clock.  Never writes; for reports (``mls-keystore status``).

        Raises:
            NotAVault: no such vault.
        """
        s = self.schema
        row = self.run(
            lambda conn: conn.execute(
                f"SELECT lease_holder, lease_expires::text, lease_epoch,"
                f" coalesce(lease_expires > statement_timestamp(), false)"
                f" FROM {s}.stores WHERE store_id = %s",
                (bytes(store_id),),
            ).fetchone()
        )
        if row is None:
            raise NotAVault(f"no vault with id {store_id.hex()} in {self.location}")
        return row[0], row[1], int(row[2]), bool(row[3])

    def check_schema(self, *, auto_migrate: bool = False) -> int:
        """Check the schema; install or upgrade it when it is absent or ``auto_migrate``.

        Installing into an empty schema is always allowed (there is nothing to
        lose); upgrading existing data needs ``auto_migrate`` or :meth:`migrate`.

        Raises:
            SchemaTooNew, MigrationError, MigrationRequired.
        """
        if self._schema_checked:
            return PG_LATEST_VERSION
        records = self.run(self._records)
        self._check_records(records)
        if records.version == PG_LATEST_VERSION:
            self._schema_checked = True
            return records.version
        if records.version > 0 and not auto_migrate:
            raise MigrationRequired(
                f"the vault schema in {self.location} is version {records.version}; this "
                f"code needs {PG_LATEST_VERSION}. Run the migration (it is transactional)."
            )
        self.migrate()
        self._schema_checked = True
        return PG_LATEST_VERSION

    def migrate(self) -> list[int]:
        """Apply every pending schema step, each in one transaction; return those applied.

        Each step takes ``pg_advisory_xact_lock`` first and re-reads the records
        under it, so concurrent callers apply each step exactly once; a failing step
        is rolled back whole, record included.

        Raises:
            MigrationError: a step failed (rolled back) or the records do not match.
            SchemaTooNew: the database is newer than this code.
        """
        pg = _psycopg()
        done: list[int] = []
        for step in PG_MIGRATIONS:

            def apply_step(conn: psycopg.Connection[Any], m: Migration = step) -> bool:
                s = self.schema
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_advisory_key(s),))
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
                    conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {s}.schema_migrations ("
                        " version integer PRIMARY KEY, name text NOT NULL,"
                        " checksum text NOT NULL, applied_at timestamptz NOT NULL)"
                    )
                    records = self._records(conn)
                    self._check_records(records)
                    if m.version in records.checksums:
                        return False
                    if records.version != m.version - 1:
                        raise MigrationError(
                            f"schema changed underneath: expected version {m.version - 1}"
                        )
                    try:
                        for statement in m.statements:
                            conn.execute(statement.replace("{s}", s))
                        if _migration_step_hook is not None:
                            _migration_step_hook(m.version)
                        conn.execute(
                            f"INSERT INTO {s}.schema_migrations"
                            " (version, name, checksum, applied_at)"
                            " VALUES (%s, %s, %s, statement_timestamp())",
                            (m.version, m.name, m.checksum),
                        )
                    except pg.OperationalError:
                        raise
                    except pg.Error as exc:
                        raise MigrationError(
                            f"migration {m.version} ({m.name!r}) failed and was rolled "
                            f"back: {_first_line(exc)}"
                        ) from None
                return True

            if self.run(apply_step):
                done.append(step.version)
        return done

    # -- stores -----------------------------------------------------------------

    def create_store(
        self, store_id: bytes, header: bytes, name: str | None, *, lease_ttl: float,
        state: bytes | None = None,
    ) -> int:
        """Insert a new vault, its lease already held by this worker; return the epoch.

        Raises:
            FileExistsError: the store id or name is taken (nothing is overwritten).
        """
        pg = _psycopg()
        s = self.schema
        holder = self.leases.worker_id

        def insert(conn: psycopg.Connection[Any]) -> int:
            try:
                with conn.transaction():
                    row = conn.execute(
                        f"INSERT INTO {s}.stores (store_id, name, header, state, lease_epoch,"
                        " lease_holder, lease_expires) VALUES (%s, %s, %s, %s, 1, %s,"
                        " statement_timestamp() + %s * interval '1 second')"
                        " RETURNING lease_epoch",
                        (store_id, name, header, state, holder, lease_ttl),
                    ).fetchone()
            except pg.errors.UniqueViolation:
                raise FileExistsError(
                    f"a vault named {name!r} already exists in {self.location}"
                ) from None
            assert row is not None
            return int(row[0])

        # Not retried: after a lost commit, a retry would report our own row as taken.
        return self.run(insert, idempotent=False)

    def import_store(
        self, header: bytes, rows: Sequence[SealedRow], *, name: str | None = None,
        encryptions: int | None = None, state: bytes | StateFor | None = None,
        hold_lease: bool = False, replace: bool = False,
    ) -> bytes:
        """Insert a vault from its header and sealed rows, as they are; return its store id.

        Nothing is decrypted or re-encrypted: rows are stored byte for byte, which is
        why a SQLite vault's header and rows (``keystore_header``, ``keystore_rows``)
        open here with the same passphrase.  ``state`` is the vault's state record
        (``keystore_state.record`` of a SQLite vault: the same bytes vouch for the
        same rows here; an import from an export file seals one at the generation it
        carries), or a :data:`StateFor` that makes it inside the transaction from the
        record of the vault being replaced.

        The store row, header, state record and every row land in ONE transaction:
        a crash or error at any point leaves either no vault or the whole one, never
        a vault with only some rows or with an older record.  The lease is left free,
        or with ``hold_lease`` taken by this worker in that same transaction at epoch
        :data:`IMPORTED_LEASE_EPOCH` (track it with ``leases.adopt``), so that no
        other worker can write the vault between the import and its first use.

        With ``replace``, a vault already named ``name`` is replaced in that same
        transaction -- its store row and rows deleted, the new vault inserted -- but
        only while no worker holds its lease (free, or expired by the server's
        clock); its row is locked first, so no worker can take the lease meanwhile,
        and a worker whose lease had expired finds its next write fenced off
        (``LeaseLost``).  A failure rolls back the whole step: the old vault stays.

        Raises:
            FileExistsError: the store id or name is taken (without ``replace``).
            VaultBusy: (``replace``) a worker holds the lease of the vault named
                ``name``; nothing was written.
            IntegrityError: ``header`` is not a vault header.
        """
        from keystore.header import Header

        if replace and name is None:
            raise ValueError("replace needs the name of the vault to replace")
        store_id = Header.from_bytes(header).store_id
        pg = _psycopg()
        s = self.schema
        count = len(rows) if encryptions is None else encryptions
        holder = self.leases.worker_id if hold_lease else None
        epoch = IMPORTED_LEASE_EPOCH if hold_lease else 0
        ttl = self.leases.ttl

        def insert(conn: psycopg.Connection[Any]) -> None:
            try:
                with conn.transaction():
                    replaced = self._remove_replaced(conn, name) if replace else None
                    record = state(replaced) if callable(state) else state
                    conn.execute(
                        f"INSERT INTO {s}.stores (store_id, name, header, encryptions, state,"
                        " lease_epoch, lease_holder, lease_expires)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, CASE WHEN %s::text IS NULL"
                        " THEN NULL ELSE statement_timestamp() + %s * interval '1 second' END)",
                        (store_id, name, header, count, record, epoch, holder, holder, ttl),
                    )
                    if rows:
                        # Binary COPY straight into the table: the store is new, so no
                        # row can conflict, and bytea travels as raw bytes (no hex).
                        with conn.cursor() as cur, cur.copy(
                            f"COPY {s}.rows (store_id, category, key_hash, value)"
                            " FROM STDIN (FORMAT BINARY)"
                        ) as copy:
                            copy.set_types(["bytea", "text", "bytea", "bytea"])
                            for category, key_hash, value in rows:
                                copy.write_row((store_id, category, key_hash, value))
                    if _import_hook is not None:
                        _import_hook()
            except pg.errors.UniqueViolation:
                raise FileExistsError(
                    f"vault {store_id.hex()} or name {name!r} already exists in {self.location}"
                ) from None

        self.check_schema()
        self.run(insert, idempotent=False)
        return store_id

    def _remove_replaced(self, conn: psycopg.Connection[Any], name: str | None) -> bytes | None:
        """Inside an import's transaction: delete the vault named ``name``, if any, unless
        a worker holds its lease; return its stored state record (``None``: no vault, or
        one without a record).  Its row is locked first (``FOR UPDATE``): a worker taking
        the lease meanwhile waits for the import's commit, and then finds no vault."""
        s = self.schema
        row = conn.execute(
            f"SELECT store_id, state, lease_holder IS NOT NULL"
            " AND lease_expires > statement_timestamp()"
            f" FROM {s}.stores WHERE name = %s FOR UPDATE",
            (name,),
        ).fetchone()
        if row is None:
            return None
        old_id, record, held = bytes(row[0]), row[1], bool(row[2])
        if held:
            raise VaultBusy(
                f"vault {name!r} in {self.location} is held by a worker (its writer lease "
                "is taken): stop that worker, or wait for its lease to expire; nothing was "
                "replaced"
            )
        conn.execute(f"DELETE FROM {s}.rows WHERE store_id = %s", (old_id,))
        conn.execute(f"DELETE FROM {s}.stores WHERE store_id = %s", (old_id,))
        return None if record is None else bytes(record)

    def find_store(
        self, *, store_id: bytes | None, name: str | None
    ) -> tuple[bytes, str | None, bytes]:
        """Resolve a vault by id or name to ``(store_id, name, header)`` in one query.

        Raises:
            NotAVault: no such vault in this database.
        """
        if (store_id is None) == (name is None):
            raise TypeError("give exactly one of store_id and name")
        s = self.schema
        if store_id is not None:
            where, arg = "store_id = %s", bytes(store_id)
        else:
            where, arg = "name = %s", name  # type: ignore[assignment]
        row = self.run(
            lambda conn: conn.execute(
                f"SELECT store_id, name, header FROM {s}.stores WHERE {where}", (arg,)
            ).fetchone()
        )
        if row is None:
            what = f"id {store_id.hex()}" if store_id is not None else f"name {name!r}"
            raise NotAVault(f"no vault with {what} in {self.location}")
        return bytes(row[0]), row[1], bytes(row[2])

    def list_stores(self) -> list[tuple[bytes, str | None]]:
        """Every vault in the database: ``(store_id, name)``, by name then id."""
        s = self.schema
        if self.schema_version() == 0:
            return []  # nothing installed yet, so no vault
        rows = self.run(
            lambda conn: conn.execute(
                f"SELECT store_id, name FROM {s}.stores ORDER BY name, store_id"
            ).fetchall()
        )
        return [(bytes(r[0]), r[1]) for r in rows]

    def backend(self, store_id: bytes, lease: Lease | None) -> PostgresBackend:
        """The :class:`~keystore.backend.VaultBackend` of one vault in this database."""
        return PostgresBackend(self, store_id, lease)


# ---------------------------------------------------------------------- one vault


def _tails(found: Sequence[tuple[Any, ...]]) -> list[SealedRow]:
    """Rows read back as ``(category, key_hash, last 16 bytes of the value)``: all a
    digest contribution covers (docs/format.md §15.2)."""
    return [(str(c), bytes(k), bytes(t)) for c, k, t in found]


class _Snapshot:
    """The rows and state record of one repeatable-read scan (see ``read_snapshot``)."""

    in_memory = True

    def __init__(self, rows: list[SealedRow], record: bytes | None) -> None:
        self._rows = rows
        self._record = record
        self.count = len(rows)

    def batches(self) -> Iterator[list[SealedRow]]:
        """All the rows, as one batch (they are in memory already)."""
        if self._rows:
            yield self._rows

    def state_record(self) -> bytes | None:
        """The record read with the rows."""
        return self._record


class PostgresBackend:
    """The :class:`~keystore.backend.VaultBackend` of one vault in a PostgreSQL database.

    Writes need the vault's :class:`Lease`; its epoch fences every write
    transaction.  Scans use binary result format (``bytea`` arrives as raw bytes,
    not hex text to decode).
    """

    #: How an apply sends its rows.  ``"arrays"`` (the default): one ``INSERT …
    #: SELECT FROM unnest`` of three arrays framed in binary, the fence returning
    #: the state record (see :meth:`_apply_arrays`).  The others read the record
    #: separately and differ in the upsert: ``"copy"`` (binary COPY into a
    #: temporary table, then one ``INSERT … ON CONFLICT``), ``"executemany"``
    #: (pipelined), ``"unnest"`` (arrays as text, slow for ``bytea``).
    #: ``bench/postgres_bench.py`` measures them all.
    upsert_method = "arrays"

    def __init__(self, db: PostgresDatabase, store_id: bytes, lease: Lease | None) -> None:
        self._db = db
        self.store_id = store_id
        self.lease = lease
        s = db.schema
        self._s = s
        # The epoch alone would do if acquisitions were never lost; the holder too
        # makes a reused epoch harmless all the same.
        self._sql_fence = (
            f"UPDATE {s}.stores SET encryptions = encryptions + %s"
            " WHERE store_id = %s AND lease_epoch = %s AND lease_holder = %s RETURNING 1"
        )
        self._sql_upsert_unnest = (
            f"INSERT INTO {s}.rows (store_id, category, key_hash, value)"
            " SELECT %s, c, k, v FROM unnest(%s::text[], %s::bytea[], %s::bytea[]) AS t(c, k, v)"
            " ON CONFLICT (store_id, category, key_hash) DO UPDATE SET value = excluded.value"
        )
        self._sql_upsert_one = (
            f"INSERT INTO {s}.rows (store_id, category, key_hash, value) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (store_id, category, key_hash) DO UPDATE SET value = excluded.value"
        )
        self._sql_set_state = f"UPDATE {s}.stores SET state = %s WHERE store_id = %s"
        # The fence of an "arrays" apply also returns the record of the row it locks.
        self._sql_fence_state = self._sql_fence.replace("RETURNING 1", "RETURNING state")
        self._sql_upsert_arrays = (
            f"INSERT INTO {s}.rows (store_id, category, key_hash, value)"
            " SELECT %b, c, k, v FROM unnest(%b::text[], %b::bytea[], %b::bytea[]) AS t(c, k, v)"
            " ON CONFLICT (store_id, category, key_hash) DO UPDATE SET value = excluded.value"
        )
        self._sql_upsert_arrays_state = (
            f"WITH new_state AS (UPDATE {s}.stores SET state = %b WHERE store_id = %b) "
            + self._sql_upsert_arrays
        )
        self._sql_delete_arrays = (
            f"DELETE FROM {s}.rows r USING unnest(%b::text[], %b::bytea[]) AS t(c, k)"
            " WHERE r.store_id = %b AND r.category = t.c AND r.key_hash = t.k"
        )
        # Only the bytes a row's digest contribution covers travel back: its last 16
        # (docs/format.md §15.2), not the whole value.
        self._sql_old_values = (
            f"SELECT r.category, r.key_hash,"
            f" substr(r.value, greatest(octet_length(r.value) - {_TAIL - 1}, 1))"
            f" FROM {s}.rows r"
            " JOIN unnest(%b::text[], %b::bytea[]) AS t(c, k)"
            " ON r.category = t.c AND r.key_hash = t.k WHERE r.store_id = %b"
        )
        self._sql_delete = (
            f"DELETE FROM {s}.rows r USING unnest(%s::text[], %s::bytea[]) AS t(c, k)"
            " WHERE r.store_id = %s AND r.category = t.c AND r.key_hash = t.k"
        )

    @property
    def location(self) -> str:
        """Database, schema and store id (no password)."""
        return f"{self._db.location} store {self.store_id.hex()}"

    # -- fenced writes ----------------------------------------------------------------

    def _fence(self, conn: psycopg.Connection[Any], encryptions: int) -> None:
        lease = self._lease()
        row = conn.execute(
            self._sql_fence,
            (encryptions, self.store_id, lease.epoch, self._db.leases.worker_id),
        ).fetchone()
        if row is None:
            self._lost(lease)

    def _lease(self) -> Lease:
        if self.lease is None:
            raise VaultIOError(f"vault {self.location} was opened without a writer lease")
        return self.lease

    def _lost(self, lease: Lease) -> None:
        lease.lost = True
        raise LeaseLost(
            f"the writer lease on vault {self.location} (epoch {lease.epoch}) was "
            "taken over by another worker; nothing was written. Drop the state held "
            "in memory and open the vault again."
        )

    def apply(
        self, upserts: Sequence[SealedRow], deletes: Sequence[RowRef],
        state: StateUpdate | None = None, *, old_known: bool = False,
    ) -> None:
        """See :meth:`keystore.backend.VaultBackend.apply`.  Retried through reconnects:
        the same sealed bytes upserted twice leave the same rows (the counter may
        over-count, which only spends nonce budget early).

        With ``state``, the vault's state record is advanced in the same transaction:
        after the fencing update (which locks the vault's ``stores`` row), the record
        and the stored values of every row the batch replaces or deletes are read in
        one statement each, ``state(record, old_rows)`` computes the next record, and
        it is written with the rows.  A retry after a lost commit reads the rows it
        already wrote as the "old" values, so the record stays consistent with them.
        """
        sid = self.store_id
        # ``old_known`` holds for the first attempt only: once one was sent, it may
        # have committed, and only a read-back describes the rows a retry replaces.
        skip_old_read = [old_known]
        if self.upsert_method == "arrays":

            def arrays_txn(conn: psycopg.Connection[Any]) -> None:
                read_old, skip_old_read[0] = not skip_old_read[0], False
                self._apply_arrays(conn, upserts, deletes, state, read_old)

            self._db.run(arrays_txn)
            return

        def txn(conn: psycopg.Connection[Any]) -> None:
            read_old, skip_old_read[0] = not skip_old_read[0], False
            try:
                with conn.transaction():
                    self._fence(conn, len(upserts))
                    if _apply_hook is not None:
                        _apply_hook()
                    record: bytes | None = None
                    if state is not None:
                        old: list[SealedRow] | None = None
                        if read_old:
                            targets = [(c, k) for c, k, _ in upserts]
                            targets.extend(deletes)
                            old = self._old_values(conn, targets)
                        record = state(self._read_state(conn), old)
                    if upserts:
                        self._upsert(conn, upserts)
                    if deletes:
                        conn.execute(
                            self._sql_delete,
                            ([c for c, _ in deletes], [k for _, k in deletes], sid),
                        )
                    if record is not None:
                        conn.execute(self._sql_set_state, (record, sid))
            except BaseException:
                self._db._staged = None  # its creation may have been rolled back
                raise

        self._db.run(txn)

    def _apply_arrays(
        self, conn: psycopg.Connection[Any], upserts: Sequence[SealedRow],
        deletes: Sequence[RowRef], state: StateUpdate | None, read_old: bool = True,
    ) -> None:
        """One apply transaction in three statements (four with deletes), each array
        framed once.

        The fencing update returns the state record of the row it locks (no
        separate read); the replaced values are read next (unless ``read_old`` is
        false: the vault holds their tails, on a first attempt only), with the
        category and key-hash arrays the upsert then reuses; the upsert is one
        ``INSERT … SELECT FROM unnest`` of three binary arrays (see
        :class:`_BinaryArray`), with no staging table and no per-row Python, and
        carries the new state record in a data-modifying ``WITH``.  Nothing is sent
        to be written before the fence has answered.
        """
        lease = self._lease()
        sid = self.store_id
        cats = _TextArray([r[0] for r in upserts])
        keys = _ByteaArray([r[1] for r in upserts])
        with conn.transaction(), conn.cursor(binary=True) as cur:
            fenced = cur.execute(
                self._sql_fence_state, (len(upserts), sid, lease.epoch, self._db.leases.worker_id)
            ).fetchone()
            if fenced is None:
                self._lost(lease)
                return  # unreachable: _lost raises
            if _apply_hook is not None:
                _apply_hook()
            old_rows: list[SealedRow] | None = None
            if state is not None and read_old:
                # One statement for the rows the batch replaces or deletes (none when
                # the caller holds their tails: ``read_old`` false).
                old_rows = self._old_values(
                    conn, [(c, k) for c, k, _ in upserts] + list(deletes)
                )
            # The record depends only on what was read above and on the sealed
            # rows, so it is computed before anything is written and travels in the
            # upsert statement itself (one statement fewer; a record that cannot be
            # advanced stops the batch before any row is sent).
            record = None
            if state is not None:
                record = state(None if fenced[0] is None else bytes(fenced[0]), old_rows)
            if upserts:
                values = _ByteaArray([r[2] for r in upserts])
                if record is None:
                    cur.execute(self._sql_upsert_arrays, (sid, cats, keys, values))
                else:
                    cur.execute(
                        self._sql_upsert_arrays_state, (record, sid, sid, cats, keys, values)
                    )
            if deletes:
                cur.execute(
                    self._sql_delete_arrays,
                    (_TextArray([c for c, _ in deletes]), _ByteaArray([k for _, k in deletes]),
                     sid),
                )
            if record is not None and not upserts:
                cur.execute(self._sql_set_state, (record, sid))

    def _upsert(self, conn: psycopg.Connection[Any], upserts: Sequence[SealedRow]) -> None:
        sid = self.store_id
        method = self.upsert_method
        if method == "unnest":
            conn.execute(
                self._sql_upsert_unnest,
                (sid, [r[0] for r in upserts], [r[1] for r in upserts], [r[2] for r in upserts]),
            )
        elif method == "executemany":
            with conn.cursor() as cur:
                cur.executemany(self._sql_upsert_one, [(sid, c, k, v) for c, k, v in upserts])
        elif method == "copy":
            if self._db._staged is not conn:  # once per connection, not per batch
                conn.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS mlks_stage"
                    ' (category text COLLATE "C", key_hash bytea, value bytea)'
                    " ON COMMIT DELETE ROWS"
                )
                self._db._staged = conn
            with conn.cursor() as cur:
                with cur.copy(
                    "COPY mlks_stage (category, key_hash, value) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(["text", "bytea", "bytea"])
                    for row in upserts:
                        copy.write_row(row)
                cur.execute(
                    f"INSERT INTO {self._s}.rows (store_id, category, key_hash, value)"
                    " SELECT %s, category, key_hash, value FROM mlks_stage"
                    " ON CONFLICT (store_id, category, key_hash)"
                    " DO UPDATE SET value = excluded.value",
                    (sid,),
                )
        else:
            raise ValueError(f"unknown upsert method {method!r}")

    def write_header(self, header: bytes) -> None:
        """Replace the header (a passphrase change), fenced by the lease."""
        s, sid = self._s, self.store_id

        def txn(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                self._fence(conn, 0)
                conn.execute(f"UPDATE {s}.stores SET header = %s WHERE store_id = %s",
                             (header, sid))

        self._db.run(txn)

    # -- the state record --------------------------------------------------------------

    def _read_state(self, conn: psycopg.Connection[Any]) -> bytes | None:
        row = conn.execute(
            f"SELECT state FROM {self._s}.stores WHERE store_id = %s", (self.store_id,)
        ).fetchone()
        if row is None:
            raise NotAVault(f"vault {self.location} does not exist")
        return None if row[0] is None else bytes(row[0])

    def _old_values(
        self, conn: psycopg.Connection[Any], targets: Sequence[RowRef]
    ) -> list[SealedRow]:
        """The stored rows among ``targets``, in one indexed statement (binary format).

        Each value comes back as its last 16 bytes only: the same digest contribution
        as the stored value (which covers exactly those), for a fraction of the
        transfer.  The values are used for nothing else.
        """
        if not targets:
            return []
        with conn.cursor(binary=True) as cur:
            cur.execute(
                self._sql_old_values,
                (_TextArray([c for c, _ in targets]), _ByteaArray([k for _, k in targets]),
                 self.store_id),
            )
            return _tails(cur.fetchall())

    def read_state(self) -> bytes | None:
        """The vault's state record, or ``None`` when it has none."""
        return self._db.run(self._read_state)

    def scan_with_state(self) -> tuple[list[SealedRow], bytes | None]:
        """Every row and the state record, from ONE snapshot (a repeatable-read,
        read-only transaction), so a batch committed meanwhile is in both or neither."""
        s, sid = self._s, self.store_id

        def q(conn: psycopg.Connection[Any]) -> tuple[list[SealedRow], bytes | None]:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                with conn.cursor(binary=True) as cur:
                    cur.execute(
                        f"SELECT category, key_hash, value FROM {s}.rows WHERE store_id = %s"
                        " ORDER BY category, key_hash",
                        (sid,),
                    )
                    rows = [(str(c), bytes(k), bytes(v)) for c, k, v in cur.fetchall()]
                return rows, self._read_state(conn)

        return self._db.run(q)

    @contextlib.contextmanager
    def read_snapshot(self, *, ordered: bool = True) -> Iterator[_Snapshot]:
        """The rows and record of one statement snapshot, fetched whole.

        A snapshot held open across a ``with`` block would pin a server transaction
        (and the lease's connection) for as long as the caller iterates; one
        repeatable-read scan gives the same consistency without that.
        """
        rows, record = self.scan_with_state()
        yield _Snapshot(rows, record)

    def adopt_state(self, build: AdoptState) -> None:
        """Give the vault a state record: one fenced transaction reads every row and
        the current record, ``build(rows, record)`` returns ``(record, header)`` (or
        raises, which writes nothing), and both are stored (the header left as it is
        when ``build`` gives ``None``: a record carried over to a newer format)."""
        s, sid = self._s, self.store_id

        def txn(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                self._fence(conn, 0)
                with conn.cursor(binary=True) as cur:
                    cur.execute(
                        f"SELECT category, key_hash, value FROM {s}.rows WHERE store_id = %s",
                        (sid,),
                    )
                    rows = [(str(c), bytes(k), bytes(v)) for c, k, v in cur.fetchall()]
                record, header = build(rows, self._read_state(conn))
                conn.execute(
                    f"UPDATE {s}.stores SET state = %s, header = coalesce(%s, header)"
                    " WHERE store_id = %s",
                    (record, header, sid),
                )

        self._db.run(txn)

    def rehash(
        self,
        rows: Sequence[tuple[str, bytes, bytes, bytes]],
        header: bytes,
        encryptions: int,
        record: bytes | None,
        expected_record: bytes | None,
    ) -> None:
        """A rekey's write: every row gets a new key hash and value, with the new
        header, counter and state record, in one fenced transaction.

        ``rows`` are ``(category, old_key_hash, new_key_hash, new_value)`` and must be
        every row of the vault; ``expected_record`` is the record they were checked
        against.  If the stored record or the set of rows changed since (someone
        wrote underneath), :class:`~keystore.errors.RollbackDetected` is raised and
        the transaction is rolled back: nothing is written.  Retried through a lost
        connection: finding ``record`` already stored means the first attempt landed.
        """
        from keystore.errors import RollbackDetected

        s, sid = self._s, self.store_id

        def txn(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                self._fence(conn, 0)
                stored = self._read_state(conn)
                if record is not None and stored == record:
                    return  # a retry after a lost commit reply: it landed whole
                if stored != expected_record:
                    raise RollbackDetected(
                        f"the state record of vault {self.location} changed during the "
                        "rekey; nothing was written",
                        reason="record",
                    )
                changed = 0
                if rows:
                    cur = conn.execute(
                        f"UPDATE {s}.rows r SET key_hash = t.nk, value = t.v"
                        " FROM unnest(%s::text[], %s::bytea[], %s::bytea[], %s::bytea[])"
                        " AS t(c, ok, nk, v)"
                        " WHERE r.store_id = %s AND r.category = t.c AND r.key_hash = t.ok",
                        ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                         [r[3] for r in rows], sid),
                    )
                    changed = cur.rowcount
                total = conn.execute(
                    f"SELECT count(*) FROM {s}.rows WHERE store_id = %s", (sid,)
                ).fetchone()
                if changed != len(rows) or total is None or int(total[0]) != len(rows):
                    raise RollbackDetected(
                        f"the rows of vault {self.location} changed during the rekey; "
                        "nothing was written",
                        reason="rows",
                    )
                conn.execute(
                    f"UPDATE {s}.stores SET header = %s, encryptions = %s,"
                    " state = coalesce(%s, state) WHERE store_id = %s",
                    (header, encryptions, record, sid),
                )

        self._db.run(txn)

    def rewrite(self, rows: Sequence[SealedRow], header: bytes, encryptions: int) -> None:
        """Replace existing rows' values, the header and the counter in one fenced txn."""
        s, sid = self._s, self.store_id

        def txn(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                self._fence(conn, 0)
                if rows:
                    conn.execute(
                        f"UPDATE {s}.rows r SET value = t.v"
                        " FROM unnest(%s::text[], %s::bytea[], %s::bytea[]) AS t(c, k, v)"
                        " WHERE r.store_id = %s AND r.category = t.c AND r.key_hash = t.k",
                        ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], sid),
                    )
                conn.execute(
                    f"UPDATE {s}.stores SET header = %s, encryptions = %s WHERE store_id = %s",
                    (header, encryptions, sid),
                )

        self._db.run(txn)

    # -- reads ------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        def q(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            with conn.cursor(binary=True) as cur:
                cur.execute(sql, params)
                return cur.fetchall()

        return self._db.run(q)

    def read_header(self) -> bytes:
        """The header blob of this vault."""
        rows = self._query(f"SELECT header FROM {self._s}.stores WHERE store_id = %s",
                           (self.store_id,))
        if not rows:
            raise NotAVault(f"vault {self.location} does not exist")
        return bytes(rows[0][0])

    def get(self, category: str, key_hash: bytes) -> bytes | None:
        """One sealed value, or ``None``."""
        rows = self._query(
            f"SELECT value FROM {self._s}.rows"
            " WHERE store_id = %s AND category = %s AND key_hash = %s",
            (self.store_id, category, key_hash),
        )
        return bytes(rows[0][0]) if rows else None

    def scan(self, category: str) -> list[tuple[bytes, bytes]]:
        """``(key_hash, value)`` of one category in key-hash order (binary format)."""
        rows = self._query(
            f"SELECT key_hash, value FROM {self._s}.rows"
            " WHERE store_id = %s AND category = %s ORDER BY key_hash",
            (self.store_id, category),
        )
        return [(bytes(k), bytes(v)) for k, v in rows]

    def scan_all(self) -> list[SealedRow]:
        """Every row of this vault (binary format)."""
        rows = self._query(
            f"SELECT category, key_hash, value FROM {self._s}.rows WHERE store_id = %s"
            " ORDER BY category, key_hash",
            (self.store_id,),
        )
        return [(str(c), bytes(k), bytes(v)) for c, k, v in rows]

    def categories(self) -> list[str]:
        """Categories holding rows, sorted bytewise."""
        rows = self._query(
            f"SELECT DISTINCT category FROM {self._s}.rows WHERE store_id = %s"
            " ORDER BY category",
            (self.store_id,),
        )
        return [str(r[0]) for r in rows]

    def encryptions(self) -> int:
        """The nonce-budget counter."""
        rows = self._query(f"SELECT encryptions FROM {self._s}.stores WHERE store_id = %s",
                           (self.store_id,))
        return int(rows[0][0]) if rows else 0

    def category_counts(self) -> list[CategoryCount]:
        """Rows and bytes per category."""
        rows = self._query(
            f"SELECT category, count(*), coalesce(sum(octet_length(value)), 0)"
            f" FROM {self._s}.rows WHERE store_id = %s GROUP BY category ORDER BY category",
            (self.store_id,),
        )
        return [(str(c), int(n), int(b)) for c, n, b in rows]

    def schema_version(self) -> int:
        """The recorded schema version."""
        return self._db.schema_version()

    def close(self) -> None:
        """Release the lease (the database handle belongs to its owner)."""
        lease, self.lease = self.lease, None
        if lease is not None:
            self._db.leases.release(lease)

