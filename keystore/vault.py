"""The vault: encrypted rows in one SQLite file, locked and unlocked as a whole.

A vault is a SQLite database (WAL, ``synchronous=FULL`` by default) holding

* ``keystore_header`` — one row: the wrapped secrets (:mod:`keystore.header`);
* ``keystore_rows`` — ``(category, key_hash, value)``: the row key hidden by a keyed
  hash, the value AES-256-GCM encrypted and bound to vault, category and key hash;
* ``keystore_counters`` — encryptions made under the current data key;
* ``keystore_migrations`` — the schema's history (:mod:`keystore.migrations`).

Every write goes through :meth:`Vault.apply`, one ``BEGIN IMMEDIATE`` transaction:
all of a batch lands or none of it.  No failure path deletes, truncates or rewrites
the file: errors roll back and are raised as :mod:`keystore.errors` exceptions.

A vault created with ``sqlcipher=True`` is additionally encrypted page by page with
SQLCipher (:mod:`keystore.sqlcipher`).  Its header then lives in ``<vault>.header``
(:mod:`keystore.sidecar`), because the database cannot be read before the key
derived from that header is known: such a vault connects to its database only on
unlock, and ``keystore_header`` stays empty.  See ``docs/sqlcipher.md``.
"""

from __future__ import annotations

import contextlib
import hmac
import operator
import os
import re
import sqlite3
import stat
import threading
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from keystore import migrations, safefile
from keystore import sqlcipher as sqlcipher_layer
from keystore.anchor import GenerationAnchor
from keystore.backends.sqlite import (
    SqliteBackend,
    _db_errors,
    _sql_type,
    _stored,
    _translate,
    stored_count,
)
from keystore.cipher import (
    StoreCipher,
    check_raw_key,
    derive_wrapping_key,
    normalize_passphrase,
    unwrap_secrets,
    wrap_secrets,
)
from keystore.digest import (
    STATE_FORMAT,
    DigestKeys,
    RowSetDigest,
    VaultState,
    check_anchor,
    check_rows,
    reseal,
)
from keystore.errors import (
    IntegrityError,
    KeystoreError,
    MigrationError,
    MigrationRequired,
    NotAVault,
    RollbackDetected,
    SchemaTooNew,
    VaultBusy,
    VaultClosed,
    VaultIOError,
    VaultLocked,
    WrongPassphrase,
)
from keystore.header import (
    FLAG_SQLCIPHER,
    FLAG_STATE_DIGEST,
    HEADER_FORMAT,
    KDF_ARGON2ID,
    KDF_RAW_KEY,
    NONCE_LEN,
    SALT_LEN,
    STORE_ID_LEN,
    WRAPPED_LEN,
    Header,
)
from keystore.lockfile import WriterLock, lock_path_for
from keystore.profiles import RFC_9106_LOW_MEMORY, KdfParameters
from keystore.sidecar import Sidecar, sidecar_path_for

if TYPE_CHECKING:
    # pydantic costs ~0.5 s of import time; the reports load only when a report is made.
    from keystore.reports import KdfInfo, StatsReport, VerifyReport

__all__ = [
    "MAX_KEY_LEN", "MAX_VALUE_LEN", "Change", "ChangeLike", "RowVault", "Snapshot", "Vault",
]

SQLITE_MAGIC = b"SQLite format 3\x00"
MAX_KEY_LEN = 64 * 1024
MAX_VALUE_LEN = 64 * 1024 * 1024
_CATEGORY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")
_SYNC_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
ProgressCallback = Callable[[int, int], None]
#: Overwrite deleted content with zeros: whether SQLite does by default depends on how
#: it was built (on for many system builds, off for sqlcipher3's), so say it.
_SECURE_DELETE = "PRAGMA secure_delete = ON"
#: Seconds SQLite waits on a lock taken outside our writer lock (a reader's
#: checkpoint, a foreign connection) before the operation raises VaultBusy.
DEFAULT_BUSY_TIMEOUT = 5.0
#: Test seam for the kill -9 campaign: called with the name of each completed step
#: of a SQLCipher rekey ("pending-written", "rows-committed", "page-rekeyed",
#: "done").  ``None`` in production.
_rekey_step_hook: Callable[[str], None] | None = None
#: The counter row naming the key generation the rows of a SQLCipher vault are
#: encrypted under; it changes in the same transaction as the rows themselves.
_ROW_GENERATION = "key_generation"
#: Benchmark seam (bench/rollback_bench.py's same-run baseline): ``False`` makes
#: ``apply`` skip the state record and loads skip the row-set check.  Always ``True``
#: in production; a write made with it off leaves a record the next load refuses.
_state_digest_enabled = True
#: Rows per lookup of the values a write replaces: two variables each, under SQLite's
#: historical limit of 999.
_OLD_VALUES_CHUNK = 400


class ChangeLike(Protocol):
    """Anything with ``category``, ``key`` and ``value`` (``None`` deletes the row)."""

    @property
    def category(self) -> str: ...
    @property
    def key(self) -> bytes: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Change:
    """One row to write (``value`` set) or delete (``value=None``) in :meth:`Vault.apply`."""

    category: str
    key: bytes
    value: bytes | None = field(repr=False)  # row values are secrets: never in a repr


@runtime_checkable
class RowVault(Protocol):
    """An unlocked vault as the layers above it use it, whatever stores it.

    ``GranularStorage.load`` reads every row with :meth:`open_rows`, the drainer
    writes batches with :meth:`apply`; :class:`Vault` (SQLite) and
    :class:`keystore.postgres_vault.PostgresVault` both provide them, so the MLS
    layer is written once for both backends.
    """

    def apply(self, changes: Iterable[ChangeLike], *, yield_gil: bool = False) -> int:
        """Land a batch in one transaction (all or nothing); the distinct rows written."""
        ...

    def open_rows(self) -> dict[str, dict[bytes, bytes]]:
        """Every row, authenticated: ``{category: {key: value}}``."""
        ...

    def close(self) -> None:
        """Lock and release the vault (idempotent)."""
        ...


def check_category(category: object) -> str:
    """Validate a category name: 1-128 chars of ``[A-Za-z0-9_.:/-]``, starting alphanumeric."""
    if not isinstance(category, str):
        raise TypeError(f"category must be str, not {type(category).__name__}")
    if not _CATEGORY_RE.fullmatch(category):
        raise ValueError(
            "category must be 1-128 characters of A-Z a-z 0-9 _ . : / - "
            "starting with a letter or digit"
        )
    return category


def check_key(key: object) -> bytes:
    """Validate a row key: bytes, at most 64 KiB."""
    if not isinstance(key, bytes | bytearray):
        raise TypeError(f"row key must be bytes, not {type(key).__name__}")
    if len(key) > MAX_KEY_LEN:
        raise ValueError(f"row key is {len(key)} bytes; the limit is {MAX_KEY_LEN}")
    return bytes(key)


def check_value(value: object) -> bytes:
    """Validate a row value: bytes, at most 64 MiB."""
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"value must be bytes, not {type(value).__name__}")
    if len(value) > MAX_VALUE_LEN:
        raise ValueError(f"value is {len(value)} bytes; the limit is {MAX_VALUE_LEN}")
    return bytes(value)


_CHANGE_FIELDS = operator.attrgetter("category", "key", "value")
_VALUE_TYPES = {bytes, type(None)}
_FIRST, _SECOND, _THIRD = (operator.itemgetter(i) for i in range(3))
_COALESCE_SLICE = 4096
#: Seconds ``apply(yield_gil=True)`` sleeps between two slices of rows it encrypts.
_YIELD_PAUSE = 0.0001


def _coalesce(
    rows: list[tuple[object, object, object]],
) -> dict[tuple[str, bytes], bytes | None]:
    """Validate ``(category, key, value)`` rows; the last change of each row wins.

    The common case — exact ``str``/``bytes`` within the limits — is checked slice
    by slice with ``map`` and ``set`` (no bytecode per row); anything else
    goes through the per-row checks, which normalize bytes-like input and raise
    the precise error.
    """
    latest: dict[tuple[str, bytes], bytes | None] = {}
    # Slices, so that no single C-level step holds the GIL for long (see
    # StoreCipher.seal_changes); an unusual slice sends the whole batch the slow way.
    for lo in range(0, len(rows), _COALESCE_SLICE):
        part = rows[lo : lo + _COALESCE_SLICE]
        # Columns by itemgetter: zip(*part) would make one iterator object per row.
        categories = list(map(_FIRST, part))
        keys = list(map(_SECOND, part))
        values = list(map(_THIRD, part))
        try:
            fast = (
                set(map(type, categories)) == {str}
                and set(map(type, keys)) == {bytes}
                and set(map(type, values)) <= _VALUE_TYPES
                and max(map(len, keys)) <= MAX_KEY_LEN
                and max(map(len, filter(None, values)), default=0) <= MAX_VALUE_LEN
            )
        except TypeError:
            fast = False
        if not fast:
            break
        for category in set(categories):
            check_category(category)
        latest.update(zip(zip(categories, keys, strict=True), values, strict=True))
    else:
        return latest
    latest.clear()
    for category, key, value in rows:
        row = (check_category(category), check_key(key))
        latest[row] = None if value is None else check_value(value)
    return latest



def _connect(
    path: Path, *, readonly: bool, create: bool = False,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
) -> sqlite3.Connection:
    mode = "ro" if readonly else ("rwc" if create else "rw")
    uri = f"file:{urllib.parse.quote(str(path))}?mode={mode}"
    if readonly and _on_read_only_media(path):
        uri += "&immutable=1"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                           timeout=busy_timeout)
    return conn


def _on_read_only_media(path: Path) -> bool:
    """Whether a read-only open needs SQLite's ``immutable`` flag to work at all.

    A WAL database opened read-only still wants to create ``-shm`` beside it, so on
    a read-only mount, or in a folder we may not write with no ``-wal`` present,
    SQLite fails with "unable to open database file".  There, nobody can be
    writing through a WAL we could miss, so reading the file as immutable is exact.
    """
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return True
    except OSError:
        return False
    wal = Path(f"{path}-wal")
    return not os.access(path.parent, os.W_OK) and not (wal.exists() or wal.is_symlink())


def _row_generation(conn: sqlite3.Connection, path: Path) -> int | None:
    """The key generation a SQLCipher vault's rows are under (``None``: not recorded)."""
    has_counters = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'keystore_counters'"
    ).fetchone()
    if has_counters is None:
        return None
    row = conn.execute(
        "SELECT value FROM keystore_counters WHERE name = ?", (_ROW_GENERATION,)
    ).fetchone()
    if row is None:
        return None
    return stored_count(row[0], "the key-generation counter", path)


#: A header is 149 bytes; a bigger blob in its place is not one.
_MAX_HEADER_BYTES = 4096


def read_header_row(conn: sqlite3.Connection, path: Path) -> Header:
    """Read and parse the header row of a plain vault, checking its stored type.

    The column holds whatever was stored there: ``bytes(10**18)`` of a huge
    INTEGER would try to allocate an exabyte, and TEXT or REAL would raise
    ``TypeError``.  Anything but a blob of a plausible size is corruption.

    Raises:
        IntegrityError: no header row, a value of the wrong type or size, or a
            malformed header.
    """
    row = conn.execute("SELECT header FROM keystore_header WHERE id = 1").fetchone()
    if row is None:
        raise IntegrityError(f"vault {path} has no header row")
    value = row[0]
    if not isinstance(value, bytes) or len(value) > _MAX_HEADER_BYTES:
        raise IntegrityError(
            f"vault {path} is corrupt: its header is stored as "
            f"{_sql_type(value)}, not as a header blob"
        )
    return Header.from_bytes(value)


def _refuse_header_row(conn: sqlite3.Connection, path: Path) -> None:
    """A SQLCipher vault's one header is its header file; a row in ``keystore_header``
    is a second header no unlock authenticated, so the file is refused as tampered."""
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'keystore_header'"
    ).fetchone()
    if has_table is not None and conn.execute("SELECT 1 FROM keystore_header").fetchone():
        raise IntegrityError(
            f"SQLCipher vault {path} has a row in keystore_header, which must be empty "
            "(its header is in the header file); nothing was changed"
        )


def _store_row_generation(conn: sqlite3.Connection, generation: int) -> None:
    conn.execute(
        "INSERT INTO keystore_counters (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (_ROW_GENERATION, generation),
    )


def _read_state_record(conn: sqlite3.Connection, path: Path) -> bytes | None:
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


def _write_state_record(conn: sqlite3.Connection, record: bytes) -> None:
    conn.execute(
        "INSERT INTO keystore_state (id, record) VALUES (1, ?)"
        " ON CONFLICT (id) DO UPDATE SET record = excluded.record",
        (record,),
    )


def _old_values(
    conn: sqlite3.Connection, targets: Iterable[tuple[str, bytes]], path: Path
) -> list[tuple[str, bytes, bytes]]:
    """``(category, key_hash, last 16 bytes of the value)`` of the rows a write replaces
    or deletes: all a contribution covers (docs/format.md §15.2).

    One statement per chunk of rows, in the write's own transaction, so the digest
    subtracts exactly what the write overwrites: the batch's keys as a ``VALUES``
    list driving one indexed lookup each (``CROSS JOIN`` keeps that order).  Only
    the tail is fetched (``substr``; ``coalesce`` because SQLite gives NULL for an
    empty blob's), not the whole value.
    """
    refs = list(targets)
    found: list[tuple[str, bytes, bytes]] = []
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


def _load_anchor(anchor: GenerationAnchor, store_id: bytes, path: Path) -> int | None:
    """``anchor.load``, with an application anchor's own failure turned into ours."""
    try:
        return anchor.load(store_id)
    except KeystoreError:
        raise
    except Exception as exc:
        raise VaultIOError(
            f"the anchor of vault {path} could not be read ({type(exc).__name__}); "
            "nothing was opened"
        ) from exc


def _wipe(*buffers: bytearray | None) -> None:
    for buf in buffers:
        if buf is not None:
            buf[:] = bytes(len(buf))


def companion_paths(path: Path) -> tuple[Path, ...]:
    """The files SQLite and the package keep beside a vault: ``-wal``, ``-shm``,
    ``.lock`` and ``.header``."""
    return (
        Path(f"{path}-wal"), Path(f"{path}-shm"), lock_path_for(path), sidecar_path_for(path)
    )


def check_companion_files(path: Path, owner: int | None = None) -> None:
    """Refuse to open a vault beside which another user could have planted files.

    Each companion (:func:`companion_paths`) must be absent, or a regular,
    single-linked file owned by ``owner`` (default: the vault's owner), us or root,
    and not writable by group or others.  A planted ``-wal`` would receive every
    page written, or inject its own; a symlinked ``.lock`` would be cut; a FIFO
    ``.header`` would hang the open.

    Raises:
        UnsafeFile: naming the offending file.
    """
    if owner is None:
        try:
            owner = os.stat(path).st_uid
        except OSError:
            owner = None
    safefile.check_companions(companion_paths(path), owner)


def _is_wal_database(path: Path) -> bool:
    """Whether the SQLite header of ``path`` says WAL mode (file format versions 2)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        head = os.pread(fd, 20, 0)
    finally:
        os.close(fd)
    return head.startswith(SQLITE_MAGIC) and head[18:20] == b"\x02\x02"


def prepare_wal_files(path: Path, *, encrypted: bool = False) -> None:
    """Create a vault's missing ``-wal`` and ``-shm`` ourselves, private, before SQLite.

    SQLite opens them by name without ``O_EXCL``, and when run as root it even
    ``chown``s an existing one to the vault's owner, hiding who planted it.  Made
    here with ``O_EXCL | O_NOFOLLOW`` at ``0600`` (empty files are valid for
    SQLite), they are ours; if one appeared since the last check, creating it
    fails and it is checked, then refused unless it is safe.  ``encrypted``: a
    SQLCipher vault, whose header cannot be read to confirm WAL mode.

    Raises:
        UnsafeFile: a planted file is there.
    """
    owner: int | None
    try:
        owner = os.stat(path).st_uid
    except OSError:
        owner = None
    if not encrypted and not _is_wal_database(path):
        # Not a WAL database (another application's file, about to be refused):
        # SQLite would never use these, so none are left behind; check only.
        safefile.check_companions((Path(f"{path}-wal"), Path(f"{path}-shm")), owner)
        return
    for companion in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            fd, _ = safefile.create_private_file(companion)
        except FileExistsError:
            continue
        except OSError:
            continue  # a read-only folder: SQLite reports that itself
        os.close(fd)
        if owner is not None and owner != os.geteuid():
            # Root opening a user's vault: the files stay the user's, as SQLite would.
            with contextlib.suppress(OSError):
                os.chown(companion, owner, -1)
    safefile.check_companions((Path(f"{path}-wal"), Path(f"{path}-shm")), owner)


def probe(path: Path) -> Sidecar | None:
    """Check, without writing, that ``path`` looks like a vault, and say which kind.

    Returns:
        ``None`` for a plain-SQLite vault; the parsed header file for a SQLCipher one.

    Raises:
        NotAVault: missing, a directory, empty, or neither a SQLite file nor a file
            with a SQLCipher vault header file beside it.
        IntegrityError: a plain SQLite file with a SQLCipher vault header file beside
            it (the encrypted database may have been swapped for a plain one), or a
            malformed header file.
        UnsafeFile: a ``-wal``, ``-shm``, ``.lock`` or ``.header`` file beside it is
            not safe to use (:func:`check_companion_files`).
    """
    if not path.exists():
        raise NotAVault(f"no vault at {path}: the file does not exist")
    if not path.is_file():
        raise NotAVault(f"{path} is not a regular file")
    try:
        # Non-blocking: a FIFO swapped in after the check above must not hang us.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotAVault(f"{path} is not a regular file")
            magic = os.pread(fd, len(SQLITE_MAGIC), 0)
        finally:
            os.close(fd)
    except OSError as exc:
        raise NotAVault(f"cannot read {path}: {exc.strerror}") from None
    check_companion_files(path, st.st_uid)
    if not magic:
        raise NotAVault(f"{path} is an empty file, not a vault")
    try:
        sidecar = Sidecar.read(path)
    except NotAVault:
        sidecar = None  # a stray file of someone else's; not ours to judge
        if magic != SQLITE_MAGIC:
            raise
    if magic == SQLITE_MAGIC:
        if sidecar is not None:
            raise IntegrityError(
                f"{path} is plain SQLite, but a SQLCipher vault header file is beside it: "
                "the encrypted database may have been replaced; nothing was opened"
            )
        return None
    if sidecar is None:
        raise NotAVault(
            f"{path} is not an mls-keystore vault (not a SQLite file, and no SQLCipher "
            f"vault header file {sidecar_path_for(path).name} beside it)"
        )
    return sidecar


class Vault:
    """An encrypted key-value store of MLS state.  See the module docstring.

    Use :meth:`create`, :meth:`create_with_key` or :meth:`open`; a vault is a context
    manager and is thread-safe (one internal lock serializes access).
    """

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection | None,
        header: Header,
        *,
        readonly: bool,
        writer_lock: WriterLock | None,
        sidecar: Sidecar | None = None,
        auto_migrate: bool = False,
        synchronous: Synchronous = "FULL",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        anchor: GenerationAnchor | None = None,
    ):
        self._path = path
        # None while a SQLCipher vault is locked: its database cannot be read then.
        self._conn: sqlite3.Connection | None = conn
        self._closed = False
        self._header = header
        self._sidecar = sidecar
        self._readonly = readonly
        self._writer_lock = writer_lock
        self._auto_migrate = auto_migrate
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._cipher: StoreCipher | None = None
        self._kek: bytearray | None = None
        # The state digest's keys and the state last authenticated or written
        # (docs/format.md §15); None while locked or before the record exists.
        self._digest: DigestKeys | None = None
        self._state: VaultState | None = None
        self._anchor = anchor
        self._mutex = threading.RLock()
        self._file_id = _file_identity(path)
        self._opened_by = os.getpid()
        self._forked = False
        # The rows' SQL, behind the interface a PostgreSQL vault's backend also has.
        self._backend = SqliteBackend(path, self._connection, self._write_txn)
        _LIVE_VAULTS.add(self)

    def _abandon_after_fork(self) -> None:
        """In a forked child: make this inherited object unusable, touching nothing shared.

        The SQLite connection is the parent's (closing it here could checkpoint or
        drop locks under the parent), so it is parked, never closed; the writer
        lock's descriptor is closed by :mod:`keystore.lockfile`'s own fork handler,
        never unlocked.  Keys are wiped from this process's copy of memory.
        """
        self._forked = True
        self._closed = True
        self._mutex = threading.RLock()  # one held by a parent thread would never be released
        conn, self._conn = self._conn, None
        if conn is not None:
            _ORPHANED_AFTER_FORK.append(conn)
        self._writer_lock = None
        self._drop_keys()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        passphrase: str | bytes,
        kdf: KdfParameters = RFC_9106_LOW_MEMORY,
        *,
        sqlcipher: bool = False,
        synchronous: Synchronous = "FULL",
    ) -> Vault:
        """Create a new vault at ``path`` (which must not exist), returned unlocked.

        Args:
            sqlcipher: also encrypt the whole file with SQLCipher (needs the
                ``[sqlcipher]`` extra); the header then lives in ``<path>.header``.

        Raises:
            FileExistsError: something is already at ``path`` (or ``<path>.header``).
            SQLCipherUnavailable: ``sqlcipher=True`` without the extra installed.
            VaultIOError: the folder cannot be written (read-only, no permission, full).
            ValueError/TypeError: empty or non-string passphrase, bad parameters.
        """
        if not isinstance(kdf, KdfParameters):
            raise TypeError("kdf must be a keystore.profiles.KdfParameters")
        secret = normalize_passphrase(passphrase)
        return cls._create(Path(path), KDF_ARGON2ID, kdf, secret, synchronous, sqlcipher)

    @classmethod
    def create_with_key(
        cls,
        path: str | os.PathLike[str],
        key: bytes,
        *,
        sqlcipher: bool = False,
        synchronous: Synchronous = "FULL",
    ) -> Vault:
        """Create a new vault whose secrets are wrapped by a caller-held 32-byte key.

        For applications that already hold a strong secret (e.g. from the OS
        keychain): the KEK is HKDF-SHA256 of it, no password hashing.
        ``sqlcipher`` is as in :meth:`create`.
        """
        return cls._create(
            Path(path), KDF_RAW_KEY, None, check_raw_key(key), synchronous, sqlcipher
        )

    @classmethod
    def _create(
        cls,
        path: Path,
        kdf_id: int,
        kdf: KdfParameters | None,
        secret: bytes,
        synchronous: Synchronous,
        sqlcipher: bool = False,
    ) -> Vault:
        if synchronous not in _SYNC_MODES:
            raise ValueError(f"synchronous must be one of {_SYNC_MODES}")
        if sqlcipher:
            sqlcipher_layer.require()  # fail before anything touches the disk
        side = sidecar_path_for(path)
        if path.exists() or path.is_symlink():
            raise FileExistsError(f"{path} already exists; refusing to overwrite it")
        if lock_path_for(path).exists():
            # A writer may still hold the lock of a vault whose file was moved away
            # (its -wal/-shm still here): say that, before anything is built.
            WriterLock.acquire(path, owner=os.geteuid()).release()
        for existing in (side, Path(f"{path}-wal"), Path(f"{path}-shm")):
            # A leftover -wal/-shm would be read as the new vault's own (or be
            # someone's plant): refuse, as for the vault itself.
            if (existing != side or sqlcipher) and (existing.exists() or existing.is_symlink()):
                raise FileExistsError(f"{existing} already exists; refusing to overwrite it")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"directory {path.parent} does not exist")
        safefile.check_folder(path.parent)
        store_id = os.urandom(STORE_ID_LEN)
        header = Header(
            store_id=store_id,
            kdf_id=kdf_id,
            kdf=kdf,
            salt=os.urandom(SALT_LEN),
            key_generation=1,
            wrap_nonce=bytes(NONCE_LEN),
            wrapped=bytes(WRAPPED_LEN),
            flags=(FLAG_SQLCIPHER if sqlcipher else 0) | FLAG_STATE_DIGEST,
        )
        kek = derive_wrapping_key(header, secret)
        cipher = StoreCipher.generate(store_id)
        secrets = cipher.secrets()
        page_key = sqlcipher_layer.derive_page_key(secrets, store_id) if sqlcipher else None
        try:
            header = wrap_secrets(kek, header, secrets)
            digest_keys = DigestKeys(secrets, store_id)
            first_record = digest_keys.seal(VaultState(0, 0, 0))
            digest_keys.wipe()
        finally:
            secrets[:] = bytes(len(secrets))
        # Build the file in a private directory beside ``path`` and link it into
        # place: nobody else can read it or plant SQLite's -wal/-shm/-journal next
        # to it while it is built, a crash leaves nothing readable by others and
        # never a half-initialized vault at ``path``, and ``os.link`` refuses to
        # replace a file that appeared meanwhile.  A SQLCipher vault's header file
        # is linked first: a crash in between leaves only that small file (and
        # ``create`` refusing to overwrite it), never a database whose keys are
        # nowhere.
        side_written = linked = False
        writer_lock: WriterLock | None = None
        workdir: Path | None = None
        try:
            safefile.remove_stale_temporaries(path)
            workdir = safefile.private_directory(path, "creating")
            tmp = workdir / "vault"
            fd, created = safefile.create_private_file(tmp)
            os.close(fd)
            safefile.step("file-created")
            # The file exists and is ours: SQLite opens it by name ("rw", never
            # "rwc"), and the inode is checked again once SQLite is done with it.
            if page_key is None:
                conn = _connect(tmp, readonly=False)
            else:
                conn = sqlcipher_layer.connect(tmp, page_key, readonly=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                migrations.migrate(conn)
                conn.execute("BEGIN IMMEDIATE")
                if page_key is None:
                    conn.execute(
                        "INSERT INTO keystore_header (id, header) VALUES (1, ?)",
                        (header.to_bytes(),),
                    )
                else:
                    _store_row_generation(conn, header.key_generation)
                _write_state_record(conn, first_record)
                conn.execute("COMMIT")
                version = migrations.schema_version(conn)
            finally:
                conn.close()
            safefile.step("header-written")
            safefile.verify_same_file(tmp, created)
            safefile.fsync_path(tmp)
            # Held from before the link until the vault is open: nobody (an
            # import --force, another create) can replace the file in between, and
            # a writer still holding the lock of a vault moved away fails us first.
            writer_lock = WriterLock.acquire(path, owner=os.geteuid())
            if page_key is not None:
                Sidecar(header, None, version).write(path, create=True)
                side_written = True
                safefile.step("header-file-linked")
            os.link(tmp, path)
            linked = True
            _fsync_dir(path.parent)
            safefile.step("linked")
        except BaseException as exc:
            if side_written and not linked:
                with contextlib.suppress(FileNotFoundError):
                    side.unlink()  # ours, seconds old, and no database uses it
            if writer_lock is not None:
                if writer_lock.created and not linked:
                    writer_lock.discard()  # no vault was made: leave no lock file
                else:
                    writer_lock.release()
            _wipe(kek)
            cipher.wipe()
            if isinstance(exc, sqlcipher_layer.db_error_types()) or (
                isinstance(exc, OSError) and not isinstance(exc, FileExistsError)
            ):
                # An unwritable or full folder: say which vault, not which temp file.
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                if _on_read_only_media(path) or not os.access(path.parent, os.W_OK):
                    reason = f"the folder {path.parent} is read-only or not writable"
                raise VaultIOError(f"cannot create vault {path}: {reason}") from exc
            raise
        finally:
            _wipe(page_key)
            if workdir is not None:
                safefile.remove_private_directory(workdir)
        try:
            vault = cls._open(
                path, synchronous=synchronous, writer_lock=writer_lock, warn_folder=False
            )
        except BaseException:
            _wipe(kek)
            cipher.wipe()
            raise
        try:
            # The name was linked to our file while we held its lock; check anyway
            # that what was opened is that file and that header, before any row goes in.
            if vault._file_id != (created.st_dev, created.st_ino) or vault.store_id != store_id:
                raise IntegrityError(
                    f"the vault opened at {path} is not the one just created there "
                    "(it was replaced); nothing was written to it"
                )
            if sqlcipher:
                cipher.wipe()  # the same secrets are unwrapped again from the header file
                vault._unlock_sqlcipher(kek)
            else:
                vault._install_keys(cipher, kek)
        except BaseException:
            vault.close()
            raise
        safefile.step("done")
        return vault

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        readonly: bool = False,
        *,
        auto_migrate: bool = False,
        timeout: float = 0.0,
        synchronous: Synchronous = "FULL",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        anchor: GenerationAnchor | None = None,
    ) -> Vault:
        """Open an existing vault, locked.  Reads and checks the header only.

        A SQLCipher vault is not connected to until :meth:`unlock`: its schema
        version comes from the header file's mirror, checked again on unlock.

        Args:
            readonly: never write, take no writer lock (for status/stats/verify).
            auto_migrate: upgrade an older schema in place (after a backup beside it;
                on unlock for a SQLCipher vault).
            timeout: seconds to wait for another writer to release the vault.
            busy_timeout: seconds SQLite waits on a lock held outside the writer
                lock (a reader's checkpoint, a foreign connection).
            anchor: where the vault's latest generation is kept outside the file
                (:class:`keystore.anchor.FileAnchor`, or your own
                :class:`~keystore.anchor.GenerationAnchor`).  A vault older than its
                anchor is refused (at open for a plain vault, at unlock in any
                case), and every write updates the anchor after its commit.

        Raises:
            NotAVault, SchemaTooNew, MigrationRequired, VaultBusy, IntegrityError,
            RollbackDetected (older than ``anchor``).
        """
        return cls._open(
            Path(path), readonly, auto_migrate=auto_migrate, timeout=timeout,
            synchronous=synchronous, busy_timeout=busy_timeout, anchor=anchor,
        )

    @classmethod
    def _open(
        cls,
        path: Path,
        readonly: bool = False,
        *,
        auto_migrate: bool = False,
        timeout: float = 0.0,
        synchronous: Synchronous = "FULL",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        writer_lock: WriterLock | None = None,
        warn_folder: bool = True,
        anchor: GenerationAnchor | None = None,
    ) -> Vault:
        """:meth:`open`; ``writer_lock``, when given, is already held and taken over."""
        try:
            if synchronous not in _SYNC_MODES:
                raise ValueError(f"synchronous must be one of {_SYNC_MODES}")
            sidecar = probe(path)
            if warn_folder:
                safefile.check_folder(path.parent)
            if sidecar is not None:
                cls._needs_migration(path, sidecar.schema_version, readonly, auto_migrate)
            if writer_lock is None and not readonly:
                writer_lock = WriterLock.acquire(path, timeout)
            if writer_lock is not None:
                # Holding the lock: no creator of this vault is alive but us.
                safefile.remove_stale_temporaries(path)
        except BaseException:
            if writer_lock is not None:
                writer_lock.release()
            raise
        try:
            if sidecar is not None:
                return cls(
                    path, None, sidecar.current, readonly=readonly, writer_lock=writer_lock,
                    sidecar=sidecar, auto_migrate=auto_migrate, synchronous=synchronous,
                    busy_timeout=busy_timeout, anchor=anchor,
                )
            conn = cls._open_connection(
                path, readonly=readonly, auto_migrate=auto_migrate, busy_timeout=busy_timeout
            )
            try:
                # SQLite has opened (or created) -wal and -shm by now: check them
                # again, closing the window between the first check and the open.
                check_companion_files(path)
                with _db_errors(path):
                    if not readonly:
                        conn.execute(f"PRAGMA synchronous={synchronous}")
                        conn.execute(_SECURE_DELETE)
                    header = cls._read_header(conn, path)
                if header.sqlcipher:
                    raise IntegrityError(
                        f"{path} is plain SQLite, but its header says SQLCipher: "
                        "the encrypted database may have been replaced"
                    )
                if anchor is not None and header.state_digest:
                    # Early refusal from the generation in clear; unlock checks it
                    # again once the record's tag can be verified.
                    with _db_errors(path):
                        record = _read_state_record(conn, path)
                    if record is not None and len(record) >= 9:
                        clear = int.from_bytes(record[1:9], "big")
                        check_anchor(clear, _load_anchor(anchor, header.store_id, path))
            except BaseException:
                conn.close()
                raise
        except BaseException:
            if writer_lock is not None:
                writer_lock.release()
            raise
        return cls(path, conn, header, readonly=readonly, writer_lock=writer_lock,
                   synchronous=synchronous, busy_timeout=busy_timeout, anchor=anchor)

    @classmethod
    def _open_connection(
        cls, path: Path, *, readonly: bool, auto_migrate: bool,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> sqlite3.Connection:
        if not readonly:
            prepare_wal_files(path)
        try:
            conn = _connect(path, readonly=readonly, busy_timeout=busy_timeout)
        except sqlite3.Error as exc:
            raise NotAVault(f"cannot open {path} as a vault: {exc}") from None
        try:
            cls._prepare_schema(
                conn, path, readonly=readonly, auto_migrate=auto_migrate,
                backup=lambda label: backup_vault_file(conn, path, label),
            )
        except BaseException:
            conn.close()
            raise
        return conn

    @classmethod
    def _prepare_schema(
        cls,
        conn: sqlite3.Connection,
        path: Path,
        *,
        readonly: bool,
        auto_migrate: bool,
        backup: Callable[[str], Path],
    ) -> None:
        """Check the schema of a connected vault; migrate it when allowed."""
        try:
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            version = migrations.schema_version(conn)
        except sqlcipher_layer.db_error_types() as exc:
            err = _translate(exc, path)
            if isinstance(err, VaultBusy):
                raise err from exc
            raise NotAVault(f"{path} is not a readable vault: {exc}") from None
        except UnicodeDecodeError:
            raise NotAVault(f"{path} is not a readable vault: its schema is not UTF-8") from None
        if "keystore_header" not in tables:
            raise NotAVault(f"{path} is a SQLite database, but not an mls-keystore vault")
        if version > migrations.LATEST_VERSION:
            cls._needs_migration(path, version, readonly, auto_migrate)
        with _db_errors(path):
            migrations.check_recorded(conn)
        if cls._needs_migration(path, version, readonly, auto_migrate):
            backup(f"v{version}")
            try:
                migrations.migrate(conn)
            except MigrationError as exc:
                # A step that could not take SQLite's write lock is contention, not a
                # broken migration: say so, as everywhere else.
                cause = exc.__cause__
                if isinstance(cause, sqlcipher_layer.db_error_types()) and isinstance(
                    busy := _translate(cause, path), VaultBusy
                ):
                    raise busy from exc
                raise

    @staticmethod
    def _needs_migration(path: Path, version: int, readonly: bool, auto_migrate: bool) -> bool:
        """Whether schema ``version`` must be migrated (and may be).

        Raises:
            SchemaTooNew: newer than this code.
            MigrationRequired: older, and migrating was not asked for (or read-only).
        """
        if version > migrations.LATEST_VERSION:
            raise SchemaTooNew(
                f"{path} has schema version {version}; this code reads up to "
                f"{migrations.LATEST_VERSION}. Upgrade mls-keystore; the file was not changed."
            )
        if version < migrations.LATEST_VERSION:
            if not auto_migrate or readonly:
                raise MigrationRequired(
                    f"{path} has schema version {version}; this code needs "
                    f"{migrations.LATEST_VERSION}. Run `mls-keystore migrate {path}` "
                    "(it makes a backup first)."
                )
            return True
        return False

    @staticmethod
    def _read_header(conn: sqlite3.Connection, path: Path) -> Header:
        return read_header_row(conn, path)

    def close(self) -> None:
        """Lock, close the database and release the writer lock (idempotent)."""
        with self._mutex:
            self._closed = True
            self._drop_keys()
            if self._conn is not None:
                conn, self._conn = self._conn, None
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            if self._writer_lock is not None:
                self._writer_lock.release()
                self._writer_lock = None

    def __enter__(self) -> Vault:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("locked" if self.locked else "unlocked")
        return f"<Vault {str(self._path)!r} {state}>"

    # ------------------------------------------------------------------ properties

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def locked(self) -> bool:
        """Whether the keys are absent (after :meth:`open`, :meth:`lock` or :meth:`close`)."""
        return self._cipher is None

    @property
    def readonly(self) -> bool:
        """Whether this object was opened read-only."""
        return self._readonly

    @property
    def store_id(self) -> bytes:
        """The random per-vault id bound into every row's AAD."""
        return self._header.store_id

    @property
    def sqlcipher(self) -> bool:
        """Whether the whole file is SQLCipher-encrypted (header in ``<path>.header``)."""
        return self._header.sqlcipher

    @property
    def schema_version(self) -> int:
        """The schema version of the file (``PRAGMA user_version``).

        For a locked SQLCipher vault: the mirror in its header file.
        """
        with self._mutex:
            if self._conn is None and self._sidecar is not None and not self._closed:
                return self._sidecar.schema_version
            with _db_errors(self._path):
                return migrations.schema_version(self._connection())

    @property
    def kdf(self) -> KdfParameters | None:
        """The Argon2id parameters in the header, or ``None`` for a raw-key vault."""
        return self._header.kdf

    def needs_rehash(self, profile: KdfParameters = RFC_9106_LOW_MEMORY) -> bool:
        """Whether the stored KDF parameters differ from ``profile`` (change passphrase to fix)."""
        kdf = self._header.kdf
        return kdf is not None and not kdf.same_cost(profile)

    # ------------------------------------------------------------------ lock / unlock

    def unlock(self, passphrase: str | bytes) -> None:
        """Unlock with the passphrase.

        Raises:
            WrongPassphrase: wrong passphrase, or the header was edited.
            ValueError: the vault is keyed by a raw key.
        """
        secret = normalize_passphrase(passphrase)
        self._unlock(KDF_ARGON2ID, secret)

    def unlock_with_key(self, key: bytes) -> None:
        """Unlock a vault created with :meth:`create_with_key`."""
        self._unlock(KDF_RAW_KEY, check_raw_key(key))

    def _unlock(self, kdf_id: int, secret: bytes) -> None:
        with self._mutex:
            if self._header.sqlcipher:
                sidecar = self._read_sidecar()
                self._check_kdf_kind(sidecar.current, kdf_id)
                self._unlock_sqlcipher(derive_wrapping_key(sidecar.current, secret), sidecar)
                return
            conn = self._connection()
            with _db_errors(self._path):
                header = self._read_header(conn, self._path)
            if header.store_id != self._header.store_id:
                raise IntegrityError(
                    f"the header of vault {self._path} was replaced by another vault's "
                    "since it was opened; nothing was unlocked"
                )
            self._check_kdf_kind(header, kdf_id)
            kek = derive_wrapping_key(header, secret)
            try:
                secrets = unwrap_secrets(kek, header)
            except BaseException:
                kek[:] = bytes(len(kek))
                raise
            try:
                cipher = StoreCipher(secrets, header.store_id)
            finally:
                secrets[:] = bytes(len(secrets))
            self._header = header
            self._install_keys(cipher, kek)

    def _read_sidecar(self) -> Sidecar:
        """Re-read a SQLCipher vault's header file (another process may have changed it)."""
        if self._closed:
            raise self._closed_error()
        sidecar = Sidecar.read(self._path)
        if sidecar is None:
            raise NotAVault(
                f"the header file {sidecar_path_for(self._path)} of SQLCipher vault "
                f"{self._path} has disappeared"
            )
        if sidecar.current.store_id != self._header.store_id:
            raise IntegrityError(
                f"the header file {sidecar_path_for(self._path)} now belongs to another vault"
            )
        return sidecar

    def _unlock_sqlcipher(self, kek: bytearray, sidecar: Sidecar | None = None) -> None:
        """Unlock a SQLCipher vault with its KEK (which this takes over; wiped on failure).

        ``sidecar`` is the header file the KEK was derived from, when the caller
        has read it: reading it again could see a newer one (a writer's passwd).

        Finds which header's key opens the database and which one its rows are
        under, and, when writable, finishes a rekey that a crash interrupted:
        the rows' generation (committed with the rows) is the truth, and the
        page key and header file are brought in line with it.
        """
        with self._mutex:
            try:
                if sidecar is None:
                    sidecar = self._read_sidecar()
                keyed = _unwrap_headers(kek, sidecar, self._path)
            except BaseException:
                _wipe(kek)
                raise
            conn: sqlite3.Connection | None = None
            page_key: bytearray | None = None
            try:
                self._drop_keys()
                conn, page_generation = self._connect_keyed(keyed)
                with _db_errors(self._path):
                    _refuse_header_row(conn, self._path)
                    row_generation = _row_generation(conn, self._path)
                if row_generation is None:  # never rekeyed since the schema predates it
                    row_generation = sidecar.current.key_generation
                match = [(h, s) for h, s in keyed if h.key_generation == row_generation]
                if not match:
                    raise IntegrityError(
                        f"the rows of vault {self._path} are under key generation "
                        f"{row_generation}, which its header file does not hold"
                    )
                header, secrets = match[0]
                page_key = sqlcipher_layer.derive_page_key(secrets, header.store_id)
                if not self._readonly:
                    with _db_errors(self._path):
                        conn.execute(f"PRAGMA synchronous={self._synchronous}")
                        conn.execute(_SECURE_DELETE)
                        if page_generation != row_generation:
                            sqlcipher_layer.set_page_key(conn, page_key)
                    if sidecar.pending is not None:
                        sidecar = Sidecar(header, None, sidecar.schema_version)
                        sidecar.write(self._path)
                keyed_conn, backup_key = conn, page_key
                self._prepare_schema(
                    conn, self._path, readonly=self._readonly, auto_migrate=self._auto_migrate,
                    backup=lambda label: backup_vault_file(
                        keyed_conn, self._path, label, page_key=backup_key, header=header
                    ),
                )
                with _db_errors(self._path):
                    version = migrations.schema_version(conn)
                if not self._readonly and version != sidecar.schema_version:
                    sidecar = sidecar.with_schema_version(version)
                    sidecar.write(self._path)
                cipher = StoreCipher(secrets, header.store_id)
            except BaseException:
                if conn is not None:
                    with contextlib.suppress(*sqlcipher_layer.db_error_types()):
                        conn.close()
                _wipe(kek)
                raise
            finally:
                _wipe(page_key, *(s for _, s in keyed))
            self._conn = conn
            self._sidecar = sidecar
            self._header = header
            self._cipher = cipher
            self._kek = kek
            self._open_state()

    def _connect_keyed(
        self, keyed: list[tuple[Header, bytearray]]
    ) -> tuple[sqlite3.Connection, int]:
        """Connect with the first header's page key that opens the database.

        Returns:
            The connection and the key generation of the header whose key opened it.
        """
        if not self._readonly:
            prepare_wal_files(self._path, encrypted=True)
        for header, secrets in keyed:
            page_key = sqlcipher_layer.derive_page_key(secrets, header.store_id)
            try:
                conn = sqlcipher_layer.connect(
                    self._path, page_key, readonly=self._readonly,
                    busy_timeout=self._busy_timeout,
                    immutable=self._readonly and _on_read_only_media(self._path),
                )
            except sqlcipher_layer.db_error_types() as exc:
                raise _translate(exc, self._path) from exc
            finally:
                _wipe(page_key)
            try:
                # SQLCipher checks the key on the first read of page 1.
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlcipher_layer.db_error_types() as exc:
                conn.close()
                err = _translate(exc, self._path)
                if isinstance(err, IntegrityError):
                    continue  # "file is not a database": not this key
                raise err from exc
            return conn, header.key_generation
        raise IntegrityError(
            f"no key in {sidecar_path_for(self._path)} opens the database {self._path}: "
            "the database or its header file was replaced or is corrupt"
        )

    @staticmethod
    def _check_kdf_kind(header: Header, kdf_id: int) -> None:
        if header.kdf_id != kdf_id:
            if header.kdf_id == KDF_RAW_KEY:
                raise ValueError("this vault is keyed by a raw key: use unlock_with_key()")
            raise ValueError("this vault is keyed by a passphrase: use unlock()")

    def _install_keys(self, cipher: StoreCipher, kek: bytearray) -> None:
        with self._mutex:
            self._drop_keys()
            self._cipher = cipher
            self._kek = kek
            self._open_state()

    def _open_state(self) -> None:
        """At unlock: authenticate the state record and hold it against the anchor.

        A vault from before the record (no header flag) gets one now if writable
        (:meth:`_adopt_state`); read-only, it is left without one.  On any failure
        the keys are dropped again: the vault stays locked and nothing was written.
        """
        cipher = self._cipher
        assert cipher is not None
        try:
            secrets = cipher.secrets()
            try:
                self._digest = DigestKeys(secrets, self._header.store_id)
            finally:
                _wipe(secrets)
            conn = self._connection()
            with _db_errors(self._path):
                record = _read_state_record(conn, self._path)
            if self._header.state_digest:
                if record is None:
                    raise RollbackDetected(
                        f"vault {self._path} has lost its state record: it was removed, "
                        "or the file was made to look older than it is",
                        reason="record",
                    )
                state = self._digest.open(record)
            elif self._readonly:
                self._state = None
                return
            else:
                state = self._adopt_state(conn, self._digest, record)
            if self._anchor is not None:
                anchored = _load_anchor(self._anchor, self._header.store_id, self._path)
                check_anchor(state.generation, anchored)
            if state.state_format != STATE_FORMAT and not self._readonly:
                state = self._reseal_state()
            self._state = state
            if not self._readonly:
                self._update_anchor(state.generation)
        except BaseException:
            self._drop_keys()
            raise

    def _adopt_state(
        self, conn: sqlite3.Connection, keys: DigestKeys, record: bytes | None
    ) -> VaultState:
        """Give a vault from before the state record its record, once (format.md §7.2).

        Every row is authenticated first, so the record vouches only for rows this
        vault wrote.  The header flag that makes the record mandatory is set in the
        same transaction for a plain vault, and right after the commit in the header
        file of a SQLCipher vault (a crash in between leaves a record without the
        flag, which the next writable unlock checks against the rows and keeps).
        """
        cipher = self._unlocked()
        assert self._kek is not None
        flagged = replace(self._header, flags=self._header.flags | FLAG_STATE_DIGEST)
        secrets = cipher.secrets()
        try:
            new_header = wrap_secrets(self._kek, flagged, secrets)
        finally:
            _wipe(secrets)
        with self._write_txn() as txn:
            rows = txn.execute("SELECT category, key_hash, value FROM keystore_rows").fetchall()
            cipher.open_rows(rows, self._stored_category, self._stored_blob)
            digest = RowSetDigest(keys)
            digest.add(rows)
            if record is not None:
                state = check_rows(keys, record, digest)
            else:
                state = digest.state(0)
                _write_state_record(txn, keys.seal(state))
            if not self._header.sqlcipher:
                self._store_header(txn, new_header)
        if self._header.sqlcipher:
            assert self._sidecar is not None
            sidecar = Sidecar(new_header, None, self._sidecar.schema_version)
            sidecar.write(self._path)
            self._sidecar = sidecar
        self._header = new_header
        return state

    def _reseal_state(self) -> VaultState:
        """Carry a state record of an older format over to the current one, once, at
        the first writable unlock (docs/format.md §15.6): every row is authenticated
        and checked against the old record, and the next generation's record is
        written in the current format, in one transaction."""
        cipher = self._unlocked()
        assert self._digest is not None
        with self._write_txn() as txn:
            record = _read_state_record(txn, self._path)
            rows = txn.execute("SELECT category, key_hash, value FROM keystore_rows").fetchall()
            cipher.open_rows(rows, self._stored_category, self._stored_blob)
            digest = RowSetDigest.both_formats(self._digest)
            digest.add(rows)
            state, new_record = reseal(self._digest, record, digest)
            _write_state_record(txn, new_record)
        return state

    def _update_anchor(self, generation: int) -> None:
        """Tell the anchor about a committed generation (after the commit, never before)."""
        if self._anchor is None:
            return
        try:
            self._anchor.store(self._header.store_id, generation)
        except KeystoreError:
            raise
        except Exception as exc:
            raise VaultIOError(
                f"vault {self._path} is at generation {generation}, but its anchor could "
                f"not be updated ({type(exc).__name__}); the write itself was committed"
            ) from exc

    @property
    def generation(self) -> int | None:
        """The vault's generation: committed writes since its state record began.

        As authenticated at unlock and advanced by this object's own writes;
        ``None`` while locked, and for a vault from before the state record until
        its first writable unlock (docs/format.md §15).
        """
        with self._mutex:
            return None if self._cipher is None or self._state is None else self._state.generation

    def _check_state(
        self, rows: list[tuple[str, bytes, bytes]], record: bytes | None
    ) -> None:
        """Raise RollbackDetected unless ``rows`` (every live row, already authenticated)
        are the set the state record vouches for."""
        digest = self._scan_digest()
        if digest is not None:
            digest.add(rows)
            self._check_digest(digest, record)

    def _scan_digest(self) -> RowSetDigest | None:
        """An empty digest to accumulate a full scan into, or ``None`` if not checked."""
        if not _state_digest_enabled or self._digest is None or not self._header.state_digest:
            return None
        return RowSetDigest(self._digest)

    def _check_digest(self, digest: RowSetDigest, record: bytes | None) -> None:
        assert self._digest is not None
        state = check_rows(self._digest, record, digest)
        if self._anchor is not None:
            anchored = _load_anchor(self._anchor, self._header.store_id, self._path)
            check_anchor(state.generation, anchored)

    def _drop_keys(self) -> None:
        if self._digest is not None:
            self._digest.wipe()
            self._digest = None
        self._state = None
        if self._cipher is not None:
            self._cipher.wipe()
            self._cipher = None
        if self._kek is not None:
            self._kek[:] = bytes(len(self._kek))
            self._kek = None
        if self._header.sqlcipher and self._conn is not None:
            # SQLCipher keeps the page key inside the connection: locking closes it.
            conn, self._conn = self._conn, None
            with contextlib.suppress(*sqlcipher_layer.db_error_types()):
                conn.close()

    def lock(self) -> None:
        """Drop (overwrite) every key held in memory; the file stays open.

        A SQLCipher vault also closes its database connection, which holds the
        page key; the writer lock is kept.
        """
        with self._mutex:
            self._drop_keys()

    # ------------------------------------------------------------------ rows

    def _closed_error(self) -> VaultClosed:
        if self._forked:
            return VaultClosed(
                f"vault {self._path} was opened by process {self._opened_by}, and this "
                "process is a fork of it: a Vault cannot be used across fork (two "
                "copies of one MLS client would reuse keys). Open the vault again here, "
                "after the parent has closed it"
            )
        return VaultClosed(f"vault {self._path} is closed")

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise self._closed_error()
        if self._conn is None:
            raise VaultLocked(
                f"vault {self._path} is encrypted with SQLCipher: nothing in it can be "
                "read until it is unlocked"
            )
        return self._conn

    def _unlocked(self) -> StoreCipher:
        self._connection()
        if self._cipher is None:
            raise VaultLocked(f"vault {self._path} is locked; unlock it first")
        return self._cipher

    def _writable(self) -> StoreCipher:
        cipher = self._unlocked()
        if self._readonly:
            raise VaultIOError(f"vault {self._path} was opened read-only")
        return cipher

    @contextlib.contextmanager
    def _write_txn(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``; roll back on any error, translated."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                self._check_file_identity()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlcipher_layer.db_error_types() as exc:
            raise _translate(exc, self._path) from exc

    def _check_file_identity(self) -> None:
        """Refuse to commit into a file that is no longer at our path.

        SQLite keeps writing to the inode it opened: after the file was deleted or
        replaced underneath, a commit would report success while the rows go to an
        orphan that nobody will ever open again.
        """
        if _file_identity(self._path) != self._file_id:
            raise VaultIOError(
                f"vault {self._path} was deleted or replaced while open; nothing was "
                "written. Put the file back (or close and reopen) and write again."
            )

    def put(self, category: str, key: bytes, value: bytes) -> None:
        """Write one row (one transaction)."""
        self.apply((Change(category, key, value),))

    def delete(self, category: str, key: bytes) -> None:
        """Delete one row if present (one transaction)."""
        self.apply((Change(category, key, None),))

    def get(self, category: str, key: bytes) -> bytes | None:
        """Read and authenticate one row; ``None`` when absent.

        Raises:
            IntegrityError: the stored row fails authentication.
        """
        category, key = check_category(category), check_key(key)
        with self._mutex:
            cipher = self._unlocked()
            key_hash = cipher.key_hash(category, key)
            blob = self._backend.get(category, key_hash)
            if blob is None:
                return None
            _, value = cipher.decrypt_row(category, key_hash, blob)
            return value

    def items(self, category: str) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key, value)`` of a category, authenticated, in key-hash order."""
        category = check_category(category)
        with self._mutex:
            cipher = self._unlocked()
            rows = self._backend.scan(category)
        for key_hash, blob in rows:
            with self._mutex:
                cipher = self._unlocked()
                yield cipher.decrypt_row(category, key_hash, blob)

    def open_rows(self) -> dict[str, dict[bytes, bytes]]:
        """Every row of the vault, authenticated: ``{category: {key: value}}``.

        What loading a whole vault into memory needs, at the cost of one scan:
        one query for all categories, the vault's lock taken once, and the
        per-category state looked up once per category instead of once per row.
        All or nothing: a row that fails authentication raises and nothing is
        returned.

        Raises:
            VaultLocked, VaultClosed: the vault cannot be read now.
            IntegrityError: a row fails authentication or the file is damaged.
        """
        with self._mutex:
            cipher = self._unlocked()
            rows, record = self._rows_and_record()
            # Decrypting under the lock: a concurrent lock() waits instead of
            # wiping the keys mid-scan.
            opened = cipher.open_rows(rows, self._stored_category, self._stored_blob)
            self._check_state(rows, record)
            return opened

    def _rows_and_record(self) -> tuple[list[tuple[str, bytes, bytes]], bytes | None]:
        """Every stored row and the state record, from one read transaction."""
        conn = self._connection()
        with _db_errors(self._path):
            conn.execute("BEGIN")
            try:
                rows = conn.execute(
                    "SELECT category, key_hash, value FROM keystore_rows"
                ).fetchall()
                record = _read_state_record(conn, self._path)
            finally:
                conn.execute("COMMIT")
        return rows, record

    def _stored_category(self, name: object) -> str:
        """A category name read back from the file; anything the vault never writes is damage."""
        try:
            return check_category(name)
        except (TypeError, ValueError):
            raise IntegrityError(
                f"vault {self._path} is corrupt: a row has an invalid category name"
            ) from None

    def _stored_blob(self, value: object) -> bytes:
        return _stored(value, self._path)

    def categories(self) -> list[str]:
        """The categories that hold at least one row, sorted."""
        with self._mutex:
            self._unlocked()
            names = self._backend.categories()
        for name in names:
            try:
                check_category(name)
            except ValueError:  # the vault never writes such a name: the file is damaged
                raise IntegrityError(
                    f"vault {self._path} is corrupt: a row has an invalid category name"
                ) from None
        return names

    def apply(self, changes: Iterable[ChangeLike], *, yield_gil: bool = False) -> int:
        """Write and delete many rows in ONE transaction: all applied or none.

        Repeated changes to the same row are coalesced (the last wins), so a batch
        from a dirty log writes each row once.  Every change is validated and
        encrypted before the transaction begins: bad input changes nothing.

        Args:
            changes: the rows to write (``value`` set) or delete (``value=None``).
            yield_gil: pause for a tenth of a millisecond after every 256 rows
                encrypted, so that an event loop running in another thread of this
                process gets the GIL within about a millisecond instead of after
                the interpreter's switch interval (5 ms by default).  For callers
                on a worker thread beside an event loop; ``AsyncDrainer`` sets it.

        Returns:
            The number of distinct rows written or deleted.
        """
        latest = _coalesce(list(map(_CHANGE_FIELDS, changes)))
        if not latest:
            return 0
        with self._mutex:
            cipher = self._writable()
            upserts, deletes = cipher.seal_changes(
                latest.items(), len(latest), pause=_YIELD_PAUSE if yield_gil else 0.0
            )
            state: VaultState | None = None
            with self._write_txn() as conn:
                if _state_digest_enabled and self._digest is not None:
                    state = self._advance_state(conn, upserts, deletes)
                self._backend.write_rows(conn, upserts, deletes)
            if state is not None:
                self._state = state
                self._update_anchor(state.generation)
        return len(latest)

    def _advance_state(
        self,
        conn: sqlite3.Connection,
        upserts: list[tuple[str, bytes, bytes]],
        deletes: list[tuple[str, bytes]],
    ) -> VaultState:
        """Write the next state record, in the write's transaction, in O(rows changed).

        Reads the record and the values about to be replaced or deleted (before
        the write touches them), subtracts those, adds the new values.
        """
        assert self._digest is not None
        record = _read_state_record(conn, self._path)
        if record is None:
            raise RollbackDetected(
                f"vault {self._path} has lost its state record; nothing was written",
                reason="record",
            )
        current = self._digest.open(record)
        digest = RowSetDigest.of_state(self._digest, current)
        targets = list(map(operator.itemgetter(0, 1), upserts))
        targets += deletes
        digest.remove(_old_values(conn, targets, self._path))
        digest.add(upserts)
        state = digest.state(current.generation + 1)
        _write_state_record(conn, self._digest.seal(state))
        return state

    # ------------------------------------------------------------------ keys

    def change_passphrase(
        self,
        old: str | bytes,
        new: str | bytes,
        *,
        kdf: KdfParameters | None = None,
        rekey: bool = False,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Rewrap the two secrets under a new passphrase: O(1), atomic, no row touched.

        Works locked or unlocked.  ``kdf`` optionally moves to new Argon2id
        parameters at the same time (see :meth:`needs_rehash`).

        A rewrap alone does not revoke the old passphrase: whoever holds an earlier
        copy of the header (an old backup, a synced copy) and learns the old
        passphrase still unwraps the same secrets, which read every later row.
        ``rekey=True`` closes that: the secrets themselves are replaced too (new
        data key and hash key, every row re-encrypted and re-hashed, as
        :meth:`rekey`), so an old header opens nothing written from now on.  It
        needs the vault unlocked and writable.  On a plain vault the new header and
        the rewritten rows are one transaction; a SQLCipher vault takes two atomic
        steps (the rewrap, then its rekey): a crash between them leaves the new
        passphrase in force and the old secrets in use, and the rekey can simply be
        run again.

        Args:
            progress: with ``rekey``, called as ``progress(done, total)``.

        Raises:
            WrongPassphrase: ``old`` is wrong.
            IntegrityError: the header in the file does not belong to this vault's
                keys (another vault's header was put in); nothing was written.
            VaultLocked: ``rekey=True`` on a locked vault.
        """
        old_secret, new_secret = normalize_passphrase(old), normalize_passphrase(new)
        if kdf is not None and not isinstance(kdf, KdfParameters):
            raise TypeError("kdf must be a keystore.profiles.KdfParameters")
        self._rewrap(KDF_ARGON2ID, old_secret, new_secret, kdf, rekey=rekey, progress=progress)

    def change_key(self, old: bytes, new: bytes, *, rekey: bool = False) -> None:
        """Rewrap the secrets of a raw-key vault under a new 32-byte key (O(1), atomic).

        ``rekey`` is as in :meth:`change_passphrase`.
        """
        self._rewrap(KDF_RAW_KEY, check_raw_key(old), check_raw_key(new), None, rekey=rekey)

    def _rewrap(
        self, kdf_id: int, old: bytes, new: bytes, kdf: KdfParameters | None,
        *, rekey: bool = False, progress: ProgressCallback | None = None,
    ) -> None:
        """Rewrap the secrets under a new KEK and store the header(s) atomically.

        A SQLCipher vault's header file may hold a pending header (an interrupted
        rekey): both are rewrapped, under one new salt, in one atomic replace.
        With ``rekey`` the secrets are replaced as well (see :meth:`change_passphrase`).
        """
        with self._mutex:
            if rekey:
                self._writable()  # before any KDF runs: a locked vault cannot rekey
            sidecar = self._read_sidecar() if self._header.sqlcipher else None
            if sidecar is None:
                conn = self._connection()
            if self._readonly:
                raise VaultIOError(f"vault {self._path} was opened read-only")
            if sidecar is None:
                with _db_errors(self._path):
                    headers: tuple[Header, ...] = (self._read_header(conn, self._path),)
            else:
                headers = sidecar.headers()
            self._check_kdf_kind(headers[0], kdf_id)
            old_kek = derive_wrapping_key(headers[0], old)
            try:
                keyed = (
                    [(headers[0], unwrap_secrets(old_kek, headers[0]))]
                    if sidecar is None
                    else _unwrap_headers(old_kek, sidecar, self._path)
                )
            finally:
                _wipe(old_kek)
            salt = os.urandom(SALT_LEN)
            new_kek: bytearray | None = None
            try:
                self._check_header_is_ours(keyed)
                rewrapped: list[Header] = []
                for header, secrets in keyed:
                    fresh = replace(header, kdf=kdf if kdf is not None else header.kdf, salt=salt)
                    if new_kek is None:  # every header shares salt and KDF: one derivation
                        new_kek = derive_wrapping_key(fresh, new)
                    rewrapped.append(wrap_secrets(new_kek, fresh, secrets))
            except BaseException:
                _wipe(new_kek)
                raise
            finally:
                _wipe(*(s for _, s in keyed))
            assert new_kek is not None
            if rekey and sidecar is None:
                # Plain vault: new secrets, rows and the header under the new
                # passphrase in one transaction.  Takes over new_kek.
                self._rekey(progress, new_kek=new_kek, template=rewrapped[0])
                return
            try:
                if sidecar is None:
                    with self._write_txn() as conn:
                        self._store_header(conn, rewrapped[0])
                else:
                    sidecar = Sidecar(
                        rewrapped[0], rewrapped[1] if len(rewrapped) > 1 else None,
                        sidecar.schema_version,
                    )
                    sidecar.write(self._path)
                    self._sidecar = sidecar
            except BaseException:
                _wipe(new_kek)
                raise
            in_use = self._header.key_generation
            self._header = next(
                (h for h in rewrapped if h.key_generation == in_use), rewrapped[0]
            )
            if self._kek is not None:
                _wipe(self._kek)
                self._kek = new_kek
            else:
                _wipe(new_kek)
            if rekey:
                self._rekey(progress)

    def _check_header_is_ours(self, keyed: list[tuple[Header, bytearray]]) -> None:
        """Refuse a header that the old passphrase opens but that is not this vault's.

        Someone who can write the file may put in the header of another vault that
        shares the passphrase; rewrapping it would silently re-key this vault to
        secrets that decrypt none of its rows (reads would then find nothing).
        The store id must match, and when this object holds the keys, the secrets
        unwrapped must be the ones it holds (compared in constant time).
        """
        for header, _ in keyed:
            if header.store_id != self._header.store_id:
                raise IntegrityError(
                    f"the header in vault {self._path} belongs to another vault (its store "
                    "id differs from the one opened): it was replaced; nothing was written"
                )
        if self._cipher is None:
            return
        held = self._cipher.secrets()
        try:
            same = [
                hmac.compare_digest(bytes(secrets), bytes(held))
                for header, secrets in keyed
                if header.key_generation == self._header.key_generation
            ]
        finally:
            _wipe(held)
        if not any(same):
            raise IntegrityError(
                f"the header in vault {self._path} does not wrap the keys this vault "
                "holds (its key check failed): it was replaced; nothing was written"
            )

    def _store_header(self, conn: sqlite3.Connection, header: Header) -> None:
        conn.execute("UPDATE keystore_header SET header = ? WHERE id = 1", (header.to_bytes(),))

    def rekey(self, progress: ProgressCallback | None = None) -> None:
        """Replace both secrets and re-encrypt and re-hash every row, in one transaction.

        A new random data key encrypts every row, and a new hash key re-hashes every
        row key, so an old copy of the header (with its passphrase) neither decrypts
        nor recognizes anything written from now on.  Every row is authenticated
        under the old keys first: a corrupt row aborts the rekey and nothing is
        written.  Resets the nonce-budget counter.

        A SQLCipher vault's page key derives from the secrets, so it changes too.
        A file rename and a SQLite transaction cannot be one atomic step, so that
        rekey is two-phase, in four steps: (1) prepare: the header file gets the
        next header as *pending* beside the current one; (2) commit: one
        transaction rewrites the rows and records their new key generation; then
        (3) ``PRAGMA rekey`` re-encrypts every page (itself atomic) and (4) the
        header file keeps only the new header.
        After a crash at any point, :meth:`unlock` finds the key that opens the
        pages, trusts the generation recorded with the rows, and completes (or,
        before step 2, drops) the rekey.

        Args:
            progress: called as ``progress(done, total)`` while rows are re-encrypted.
        """
        with self._mutex:
            self._rekey(progress)

    def _rekey(
        self,
        progress: ProgressCallback | None,
        *,
        new_kek: bytearray | None = None,
        template: Header | None = None,
    ) -> None:
        """:meth:`rekey`; with ``new_kek`` and ``template`` (plain vaults only) the new
        header is wrapped under ``new_kek`` with ``template``'s salt and KDF, in the
        same transaction: a passphrase change and rekey in one atomic step.
        ``new_kek`` is taken over (installed, or wiped on failure).
        """
        try:
            old = self._writable()
            assert self._kek is not None
            assert new_kek is None or not self._header.sqlcipher
            kek = self._kek if new_kek is None else new_kek
            base = self._header if template is None else template
            conn = self._connection()
            with _db_errors(self._path):
                rows = conn.execute(
                    "SELECT id, category, key_hash, value FROM keystore_rows"
                ).fetchall()
        except BaseException:
            _wipe(new_kek)
            raise
        total = len(rows)
        # Both secrets are new: the hash key rotates with the data key, so stored
        # key hashes change too and an old header cannot even confirm a row key.
        new = StoreCipher.generate(old.store_id)
        new_digest: DigestKeys | None = None
        try:
            updated: list[tuple[bytes, bytes, int]] = []
            step = max(1, total // 100)
            for i, (row_id, category, key_hash, blob) in enumerate(rows):
                if not isinstance(category, str):
                    raise IntegrityError(
                        f"vault {self._path} is corrupt: a category is stored as "
                        f"{_sql_type(category)}"
                    )
                kh = _stored(key_hash, self._path)
                key, value = old.decrypt_row(category, kh, _stored(blob, self._path))
                new_hash = new.key_hash(category, key)
                updated.append((new_hash, new.encrypt_row(category, new_hash, key, value), row_id))
                if progress is not None and (i % step == 0):
                    progress(i, total)
            # The new keys give new digest keys: the record is sealed afresh over
            # the new ciphertexts, one generation on, in the rows' transaction --
            # after checking the old rows against the old record, or a row put back
            # before the rekey would be vouched for from then on.
            new_state = VaultState(0, 0, 0)
            if self._digest is not None and self._header.state_digest:
                with _db_errors(self._path):
                    record = _read_state_record(conn, self._path)
                self._check_state([(c, kh, v) for _, c, kh, v in rows], record)
                previous = self._digest.open(record).generation if record is not None else 0
                digest_secrets = new.secrets()
                try:
                    new_digest = DigestKeys(digest_secrets, old.store_id)
                finally:
                    _wipe(digest_secrets)
                running = RowSetDigest(new_digest)
                running.add(
                    (category, new_hash, blob)
                    for (_, category, _, _), (new_hash, blob, _) in zip(rows, updated, strict=True)
                )
                new_state = running.state(previous + 1)
            secrets = new.secrets()
            try:
                next_header = wrap_secrets(
                    kek,
                    Header(
                        store_id=base.store_id,
                        kdf_id=base.kdf_id,
                        kdf=base.kdf,
                        salt=base.salt,
                        key_generation=self._header.key_generation + 1,
                        wrap_nonce=base.wrap_nonce,
                        wrapped=base.wrapped,
                        flags=base.flags,
                    ),
                    secrets,
                )
            finally:
                secrets[:] = bytes(len(secrets))
            sidecar: Sidecar | None = None
            if self._header.sqlcipher:
                assert self._sidecar is not None  # open() sets it for every SQLCipher vault
                sidecar = Sidecar(self._header, next_header, self._sidecar.schema_version)
                sidecar.write(self._path)
                _rekey_step("pending-written")
            try:
                with self._write_txn() as txn:
                    txn.executemany(
                        "UPDATE keystore_rows SET key_hash = ?, value = ? WHERE id = ?",
                        updated,
                    )
                    if new_digest is not None:
                        _write_state_record(txn, new_digest.seal(new_state))
                    txn.execute(
                        "UPDATE keystore_counters SET value = ? WHERE name = 'encryptions'",
                        (total,),
                    )
                    if sidecar is None:
                        self._store_header(txn, next_header)
                    else:
                        _store_row_generation(txn, next_header.key_generation)
            except BaseException:
                if sidecar is not None:
                    self._withdraw_pending(sidecar.schema_version)
                raise
        except BaseException:
            new.wipe()
            if new_digest is not None:
                new_digest.wipe()
            _wipe(new_kek)
            raise
        # The rows are committed under the new secrets: from here on they are the
        # keys in use, whatever happens to the SQLCipher phases below.
        self._header = next_header
        old.wipe()
        self._cipher = new
        if new_kek is not None:
            _wipe(self._kek)
            self._kek = new_kek
        if new_digest is not None:
            if self._digest is not None:
                self._digest.wipe()
            self._digest, self._state = new_digest, new_state
            self._update_anchor(new_state.generation)
        if sidecar is not None:
            _rekey_step("rows-committed")
            self._finish_page_rekey(next_header, sidecar.schema_version)
        if progress is not None:
            progress(total, total)

    def _withdraw_pending(self, schema_version: int) -> None:
        """After a failed rekey transaction, drop the pending header from the header file.

        Only when the rows provably still carry the current generation: if the
        commit landed after all (an interrupt just after it), the pending header is
        the one the rows need, and the next unlock settles it.
        """
        with contextlib.suppress(KeystoreError, *sqlcipher_layer.db_error_types()):
            if _row_generation(self._connection(), self._path) == self._header.key_generation:
                Sidecar(self._header, None, schema_version).write(self._path)

    def _finish_page_rekey(self, header: Header, schema_version: int) -> None:
        """Phases 3 and 4 of a SQLCipher rekey: new page key, then the header file.

        Raises:
            VaultIOError/VaultBusy: a phase failed; the rows are already rekeyed
                and the next writable unlock completes the rest.
        """
        assert self._cipher is not None
        secrets = self._cipher.secrets()
        page_key = sqlcipher_layer.derive_page_key(secrets, header.store_id)
        try:
            with _db_errors(self._path):
                sqlcipher_layer.set_page_key(self._connection(), page_key)
        finally:
            _wipe(secrets, page_key)
        _rekey_step("page-rekeyed")
        sidecar = Sidecar(header, None, schema_version)
        sidecar.write(self._path)
        self._sidecar = sidecar
        _rekey_step("done")

    # ------------------------------------------------------------------ reports

    def stats(self) -> StatsReport:
        """Rows and bytes per category and the nonce budget.

        Needs no key for a plain vault.  A SQLCipher vault hides exactly these
        figures until it is unlocked (:class:`VaultLocked` before).
        """
        with self._mutex:
            self._connection()
            per_cat = self._backend.category_counts()
            encryptions = self._backend.encryptions()
            version = self._backend.schema_version()
            header = self._header
        from keystore.reports import REKEY_RECOMMENDED_AT, CategoryStats, StatsReport

        cats = {c: CategoryStats(rows=n, bytes=b) for c, n, b in per_cat}
        return StatsReport(
            path=str(self._path),
            store_id=header.store_id.hex(),
            schema_version=version,
            header_format=HEADER_FORMAT,
            sqlcipher=header.sqlcipher,
            kdf=_kdf_info(header),
            key_generation=header.key_generation,
            categories=cats,
            total_rows=sum(c.rows for c in cats.values()),
            total_bytes=sum(c.bytes for c in cats.values()),
            file_bytes=_file_bytes(self._path),
            encryptions=encryptions,
            budget_used=encryptions / float(2**32),
            rekey_recommended=encryptions >= REKEY_RECOMMENDED_AT,
        )

    def compact(self) -> tuple[int, int]:
        """Give the space of deleted rows back to the file system (SQLite ``VACUUM``).

        Deleting rows frees pages inside the file but never shrinks it; ``VACUUM``
        rewrites the database into a fresh copy and replaces it atomically (the
        WAL makes it crash-safe), so it needs about the vault's size in free space.
        Rows, keys and header are unchanged.  Needs the writer (not read-only) and,
        for a SQLCipher vault, the vault unlocked.

        Returns:
            ``(bytes_before, bytes_after)``: the file plus its WAL, each after a
            checkpoint.
        """
        with self._mutex:
            conn = self._connection()
            if self._readonly:
                raise VaultIOError(f"vault {self._path} was opened read-only")
            with _db_errors(self._path):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                before = _file_bytes(self._path)
                self._check_file_identity()
                conn.execute("VACUUM")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return before, _file_bytes(self._path)

    @contextlib.contextmanager
    def read_snapshot(self) -> Iterator[Snapshot]:
        """Read every row from ONE consistent state of the vault.

        Inside the ``with`` block the vault is in a single read transaction: a
        batch another writer (another process, through WAL) commits meanwhile is
        seen entirely or not at all, never half.  This object's other threads wait
        until the block ends (it holds this vault's lock), so keep it short-lived.

        ::

            with vault.read_snapshot() as snap:
                for category, key, value in snap:
                    ...

        Raises:
            VaultLocked: the vault is locked.
            IntegrityError: a row fails authentication (raised while iterating).
        """
        with self._mutex:
            cipher = self._unlocked()
            conn = self._connection()
            with _db_errors(self._path):
                conn.execute("BEGIN")
            try:
                with _db_errors(self._path):
                    # The first read fixes the snapshot: every later one sees the same.
                    (count,) = conn.execute("SELECT COUNT(*) FROM keystore_rows").fetchone()
                yield Snapshot(self, conn, cipher, int(count))
            finally:
                with contextlib.suppress(*sqlcipher_layer.db_error_types()):
                    if conn.in_transaction:
                        conn.execute("COMMIT")

    def verify(self) -> VerifyReport:
        """Decrypt and authenticate every row, in one read snapshot; list the failures.

        Failures are reported by category and key hash only, never plaintext.
        When every row authenticates, the set of rows is checked against the
        vault's state record too (docs/format.md §15).

        Raises:
            RollbackDetected: every row authenticates, but they are not the rows
                the state record vouches for (a row put back, deleted or re-inserted).
        """
        from keystore.reports import RowFailure, VerifyReport

        with self._mutex:
            cipher = self._unlocked()
            rows, record = self._rows_and_record()
            failures = []
            for category, key_hash, blob in rows:
                try:
                    cipher.decrypt_row(
                        str(category), _stored(key_hash, self._path), _stored(blob, self._path)
                    )
                except IntegrityError as exc:
                    failures.append(
                        RowFailure(
                            category=str(category),
                            key_hash=key_hash.hex() if isinstance(key_hash, bytes) else "",
                            reason=str(exc).split(" in category")[0],
                        )
                    )
            if not failures:
                self._check_state(rows, record)
        return VerifyReport(ok=not failures, rows_checked=len(rows), failures=failures)


class Snapshot:
    """The rows of a vault as of one moment; made by :meth:`Vault.read_snapshot`.

    Iterating yields ``(category, key, value)``, authenticated, in category and
    key-hash order, fetched in batches (never the whole vault in memory).
    """

    __slots__ = ("_cipher", "_conn", "_vault", "rows")
    _BATCH = 256

    def __init__(
        self, vault: Vault, conn: sqlite3.Connection, cipher: StoreCipher, rows: int
    ) -> None:
        self._vault = vault
        self._conn = conn
        self._cipher = cipher
        #: How many rows the snapshot holds.
        self.rows = rows

    def __iter__(self) -> Iterator[tuple[str, bytes, bytes]]:
        """Yield every row; after the last one, check them against the state record.

        Raises:
            IntegrityError: a row fails authentication.
            RollbackDetected: (after the last row) they are not the rows the state
                record vouches for; a consumer must not trust what it read before.
        """
        path = self._vault.path
        digest = self._vault._scan_digest()
        with _db_errors(path):
            cursor = self._conn.execute(
                "SELECT category, key_hash, value FROM keystore_rows"
                " ORDER BY category, key_hash"
            )
        while True:
            with _db_errors(path):
                batch = cursor.fetchmany(self._BATCH)
            if not batch:
                if digest is not None:
                    with _db_errors(path):
                        record = _read_state_record(self._conn, path)
                    self._vault._check_digest(digest, record)
                return
            for category, key_hash, blob in batch:
                if self._vault.locked:
                    raise VaultLocked(f"vault {path} was locked during the read")
                try:
                    name = check_category(category)
                except (TypeError, ValueError):
                    raise IntegrityError(
                        f"vault {path} is corrupt: a row has an invalid category name"
                    ) from None
                key, value = self._cipher.decrypt_row(
                    name, _stored(key_hash, path), _stored(blob, path)
                )
                yield name, key, value
            if digest is not None:  # every row of the batch authenticated: well-typed
                digest.add(batch)


#: Every Vault object of this process, for the fork handler (weak references only).
_LIVE_VAULTS: weakref.WeakSet[Vault] = weakref.WeakSet()
#: Connections inherited by a forked child: kept referenced so that they are never
#: closed there (SQLite connections must not be used, closed included, across fork).
_ORPHANED_AFTER_FORK: list[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    for vault in list(_LIVE_VAULTS):
        vault._abandon_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _kdf_info(header: Header) -> KdfInfo:
    from keystore.reports import KdfInfo

    if header.kdf is None:
        return KdfInfo(kind="raw-key")
    return KdfInfo(
        kind="argon2id",
        time_cost=header.kdf.time_cost,
        memory_cost_kib=header.kdf.memory_cost,
        parallelism=header.kdf.parallelism,
    )


def _file_identity(path: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of the file at ``path`` now, or ``None`` if nothing is there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _file_bytes(path: Path) -> int:
    total = 0
    for p in (path, Path(f"{path}-wal")):
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total


#: Vault, WAL, backup and export files are readable by their owner only, whatever the
#: umask (SQLite gives its journal files the database file's mode).
PRIVATE_FILE_MODE = safefile.PRIVATE_FILE_MODE


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_vault_file(
    conn: sqlite3.Connection,
    path: Path,
    label: str,
    *,
    page_key: bytearray | None = None,
    header: Header | None = None,
) -> Path:
    """Write a consistent copy of the open database beside it (SQLite backup API).

    The name is ``<vault>.<label>.bak`` (with a counter when taken); the copy is
    fsync'd before this returns, and appears under that name only when complete.
    Returns its path.  For a SQLCipher vault pass its current ``page_key`` and
    ``header``: the copy is encrypted under the same key and gets its own header
    file, so it opens like the original.
    """
    candidate = path.with_name(f"{path.name}.{label}.bak")
    n = 1
    while (
        candidate.exists() or candidate.is_symlink() or sidecar_path_for(candidate).exists()
    ):
        n += 1
        candidate = path.with_name(f"{path.name}.{label}.{n}.bak")
    # Copy into a fresh private directory (0700: nobody else can read the copy, or
    # plant its journal, while it is written), then link it into place only once
    # complete and fsync'd: a crash or a full disk never leaves a partial copy named
    # as a backup, nor a readable one anywhere.
    workdir = safefile.private_directory(candidate, "partial")
    try:
        tmp = workdir / "backup"
        fd, created = safefile.create_private_file(tmp)
        os.close(fd)
        safefile.step("backup-created")
        if page_key is None:
            dest = _connect(tmp, readonly=False)
        else:
            dest = sqlcipher_layer.connect(tmp, page_key, readonly=False)
        try:
            with _db_errors(path):
                conn.backup(dest)
                version = migrations.schema_version(dest)
        finally:
            dest.close()
        safefile.step("backup-copied")
        safefile.verify_same_file(tmp, created)
        safefile.fsync_path(tmp)
        if header is not None:
            Sidecar(header, None, version).write(candidate, create=True)
        os.link(tmp, candidate)
        _fsync_dir(path.parent)
        safefile.step("backup-linked")
    finally:
        safefile.remove_private_directory(workdir)
    return candidate



def _rekey_step(step: str) -> None:
    if _rekey_step_hook is not None:
        _rekey_step_hook(step)


def _unwrap_headers(
    kek: bytearray, sidecar: Sidecar, path: Path
) -> list[tuple[Header, bytearray]]:
    """Unwrap the secrets of every header in a header file (current first).

    Raises:
        WrongPassphrase: the KEK does not open the current header.
        IntegrityError: it opens the current one but not the pending one, which
            shares its salt and KDF: the pending header was modified.
    """
    out: list[tuple[Header, bytearray]] = []
    try:
        for header in sidecar.headers():
            try:
                out.append((header, unwrap_secrets(kek, header)))
            except WrongPassphrase:
                if not out:
                    raise
                raise IntegrityError(
                    f"the pending header in {sidecar_path_for(path)} fails authentication "
                    "although the current one opens: it was modified"
                ) from None
    except BaseException:
        _wipe(*(s for _, s in out))
        raise
    return out
