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
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol

from keystore import migrations
from keystore.cipher import (
    StoreCipher,
    check_raw_key,
    derive_wrapping_key,
    normalize_passphrase,
    unwrap_secrets,
    wrap_secrets,
)
from keystore.errors import (
    IntegrityError,
    KeystoreError,
    MigrationRequired,
    NotAVault,
    SchemaTooNew,
    VaultBusy,
    VaultClosed,
    VaultIOError,
    VaultLocked,
)
from keystore.header import (
    HEADER_FORMAT,
    KDF_ARGON2ID,
    KDF_RAW_KEY,
    NONCE_LEN,
    SALT_LEN,
    STORE_ID_LEN,
    WRAPPED_LEN,
    Header,
)
from keystore.lockfile import WriterLock
from keystore.profiles import RFC_9106_LOW_MEMORY, KdfParameters
from keystore.reports import (
    REKEY_RECOMMENDED_AT,
    CategoryStats,
    KdfInfo,
    RowFailure,
    StatsReport,
    VerifyReport,
)

__all__ = ["MAX_KEY_LEN", "MAX_VALUE_LEN", "Change", "ChangeLike", "Vault"]

SQLITE_MAGIC = b"SQLite format 3\x00"
MAX_KEY_LEN = 64 * 1024
MAX_VALUE_LEN = 64 * 1024 * 1024
_CATEGORY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")
_SYNC_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
ProgressCallback = Callable[[int, int], None]


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
    value: bytes | None


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


def _translate(exc: sqlite3.Error, path: Path) -> KeystoreError:
    """Map a SQLite error to the keystore's own exception (never leak it raw)."""
    msg = str(exc).lower()
    if "locked" in msg or "busy" in msg:
        return VaultBusy(f"vault {path} is busy: {exc}")
    if isinstance(exc, sqlite3.DatabaseError) and (
        "malformed" in msg or "not a database" in msg or "corrupt" in msg
    ):
        return IntegrityError(f"vault {path} is corrupt: {exc}")
    return VaultIOError(f"storage failure on vault {path}: {exc}")


@contextlib.contextmanager
def _db_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise _translate(exc, path) from exc


def _connect(path: Path, *, readonly: bool, create: bool = False) -> sqlite3.Connection:
    mode = "ro" if readonly else ("rwc" if create else "rw")
    uri = f"file:{urllib.parse.quote(str(path))}?mode={mode}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                           timeout=5.0)
    return conn


def probe(path: Path) -> None:
    """Check, without writing, that ``path`` looks like a plain-SQLite vault file.

    Raises:
        NotAVault: missing, a directory, empty, or not a SQLite file.
    """
    if not path.exists():
        raise NotAVault(f"no vault at {path}: the file does not exist")
    if not path.is_file():
        raise NotAVault(f"{path} is not a regular file")
    try:
        with path.open("rb") as fh:
            magic = fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise NotAVault(f"cannot read {path}: {exc.strerror}") from None
    if not magic:
        raise NotAVault(f"{path} is an empty file, not a vault")
    if magic != SQLITE_MAGIC:
        raise NotAVault(f"{path} is not an mls-keystore vault (not a SQLite file)")


class Vault:
    """An encrypted key-value store of MLS state.  See the module docstring.

    Use :meth:`create`, :meth:`create_with_key` or :meth:`open`; a vault is a context
    manager and is thread-safe (one internal lock serializes access).
    """

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        header: Header,
        *,
        readonly: bool,
        writer_lock: WriterLock | None,
    ):
        self._path = path
        self._conn: sqlite3.Connection | None = conn
        self._header = header
        self._readonly = readonly
        self._writer_lock = writer_lock
        self._cipher: StoreCipher | None = None
        self._kek: bytearray | None = None
        self._mutex = threading.RLock()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        passphrase: str | bytes,
        kdf: KdfParameters = RFC_9106_LOW_MEMORY,
        *,
        synchronous: Synchronous = "FULL",
    ) -> Vault:
        """Create a new vault at ``path`` (which must not exist), returned unlocked.

        Raises:
            FileExistsError: something is already at ``path``; it is left alone.
            ValueError/TypeError: empty or non-string passphrase, bad parameters.
        """
        if not isinstance(kdf, KdfParameters):
            raise TypeError("kdf must be a keystore.profiles.KdfParameters")
        secret = normalize_passphrase(passphrase)
        return cls._create(Path(path), KDF_ARGON2ID, kdf, secret, synchronous)

    @classmethod
    def create_with_key(
        cls,
        path: str | os.PathLike[str],
        key: bytes,
        *,
        synchronous: Synchronous = "FULL",
    ) -> Vault:
        """Create a new vault whose secrets are wrapped by a caller-held 32-byte key.

        For applications that already hold a strong secret (e.g. from the OS
        keychain): the KEK is HKDF-SHA256 of it, no password hashing.
        """
        return cls._create(Path(path), KDF_RAW_KEY, None, check_raw_key(key), synchronous)

    @classmethod
    def _create(
        cls,
        path: Path,
        kdf_id: int,
        kdf: KdfParameters | None,
        secret: bytes,
        synchronous: Synchronous,
    ) -> Vault:
        if synchronous not in _SYNC_MODES:
            raise ValueError(f"synchronous must be one of {_SYNC_MODES}")
        if path.exists() or path.is_symlink():
            raise FileExistsError(f"{path} already exists; refusing to overwrite it")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"directory {path.parent} does not exist")
        store_id = os.urandom(STORE_ID_LEN)
        header = Header(
            store_id=store_id,
            kdf_id=kdf_id,
            kdf=kdf,
            salt=os.urandom(SALT_LEN),
            key_generation=1,
            wrap_nonce=bytes(NONCE_LEN),
            wrapped=bytes(WRAPPED_LEN),
        )
        kek = derive_wrapping_key(header, secret)
        cipher = StoreCipher.generate(store_id)
        secrets = cipher.secrets()
        try:
            header = wrap_secrets(kek, header, secrets)
        finally:
            secrets[:] = bytes(len(secrets))
        # Build the file under a temporary name and link it into place: a crash or
        # error never leaves a half-initialized vault at ``path``, and ``os.link``
        # refuses to replace a file that appeared meanwhile.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.creating")
        try:
            conn = _connect(tmp, readonly=False, create=True)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                migrations.migrate(conn)
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT INTO keystore_header (id, header) VALUES (1, ?)", (header.to_bytes(),)
                )
                conn.execute("COMMIT")
            finally:
                conn.close()
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(tmp, path)
            _fsync_dir(path.parent)
        finally:
            for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        vault = cls.open(path, synchronous=synchronous)
        vault._install_keys(cipher, kek)
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
    ) -> Vault:
        """Open an existing vault, locked.  Reads and checks the header only.

        Args:
            readonly: never write, take no writer lock (for status/stats/verify).
            auto_migrate: upgrade an older schema in place (after a backup beside it).
            timeout: seconds to wait for another writer to release the vault.

        Raises:
            NotAVault, SchemaTooNew, MigrationRequired, VaultBusy, IntegrityError.
        """
        path = Path(path)
        if synchronous not in _SYNC_MODES:
            raise ValueError(f"synchronous must be one of {_SYNC_MODES}")
        probe(path)
        writer_lock = None if readonly else WriterLock.acquire(path, timeout)
        try:
            conn = cls._open_connection(path, readonly=readonly, auto_migrate=auto_migrate)
            try:
                with _db_errors(path):
                    if not readonly:
                        conn.execute(f"PRAGMA synchronous={synchronous}")
                    header = cls._read_header(conn, path)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            if writer_lock is not None:
                writer_lock.release()
            raise
        return cls(path, conn, header, readonly=readonly, writer_lock=writer_lock)

    @classmethod
    def _open_connection(
        cls, path: Path, *, readonly: bool, auto_migrate: bool
    ) -> sqlite3.Connection:
        try:
            conn = _connect(path, readonly=readonly)
        except sqlite3.Error as exc:
            raise NotAVault(f"cannot open {path} as a vault: {exc}") from None
        try:
            try:
                tables = {
                    r[0]
                    for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                }
                version = migrations.schema_version(conn)
            except sqlite3.DatabaseError as exc:
                raise NotAVault(f"{path} is not a readable vault: {exc}") from None
            if "keystore_header" not in tables:
                raise NotAVault(f"{path} is a SQLite database, but not an mls-keystore vault")
            if version > migrations.LATEST_VERSION:
                raise SchemaTooNew(
                    f"{path} has schema version {version}; this code reads up to "
                    f"{migrations.LATEST_VERSION}. Upgrade mls-keystore; the file was not changed."
                )
            with _db_errors(path):
                migrations.check_recorded(conn)
            if version < migrations.LATEST_VERSION:
                if not auto_migrate or readonly:
                    raise MigrationRequired(
                        f"{path} has schema version {version}; this code needs "
                        f"{migrations.LATEST_VERSION}. Run `mls-keystore migrate {path}` "
                        "(it makes a backup first)."
                    )
                backup_vault_file(conn, path, f"v{version}")
                migrations.migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _read_header(conn: sqlite3.Connection, path: Path) -> Header:
        row = conn.execute("SELECT header FROM keystore_header WHERE id = 1").fetchone()
        if row is None:
            raise IntegrityError(f"vault {path} has no header row")
        return Header.from_bytes(bytes(row[0]))

    def close(self) -> None:
        """Lock, close the database and release the writer lock (idempotent)."""
        with self._mutex:
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
        state = "closed" if self._conn is None else ("locked" if self.locked else "unlocked")
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
    def schema_version(self) -> int:
        """The schema version of the file (``PRAGMA user_version``)."""
        with self._mutex:
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
            conn = self._connection()
            with _db_errors(self._path):
                header = self._read_header(conn, self._path)
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

    def _drop_keys(self) -> None:
        if self._cipher is not None:
            self._cipher.wipe()
            self._cipher = None
        if self._kek is not None:
            self._kek[:] = bytes(len(self._kek))
            self._kek = None

    def lock(self) -> None:
        """Drop (overwrite) every key held in memory; the file stays open."""
        with self._mutex:
            self._drop_keys()

    # ------------------------------------------------------------------ rows

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise VaultClosed(f"vault {self._path} is closed")
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
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _translate(exc, self._path) from exc

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
            with _db_errors(self._path):
                row = self._connection().execute(
                    "SELECT value FROM keystore_rows WHERE category = ? AND key_hash = ?",
                    (category, key_hash),
                ).fetchone()
            if row is None:
                return None
            _, value = cipher.decrypt_row(category, key_hash, bytes(row[0]))
            return value

    def items(self, category: str) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key, value)`` of a category, authenticated, in key-hash order."""
        category = check_category(category)
        with self._mutex:
            cipher = self._unlocked()
            with _db_errors(self._path):
                rows = self._connection().execute(
                    "SELECT key_hash, value FROM keystore_rows WHERE category = ?"
                    " ORDER BY key_hash",
                    (category,),
                ).fetchall()
        for key_hash, blob in rows:
            with self._mutex:
                cipher = self._unlocked()
                yield cipher.decrypt_row(category, bytes(key_hash), bytes(blob))

    def categories(self) -> list[str]:
        """The categories that hold at least one row, sorted."""
        with self._mutex:
            self._unlocked()
            with _db_errors(self._path):
                rows = self._connection().execute(
                    "SELECT DISTINCT category FROM keystore_rows ORDER BY category"
                ).fetchall()
        return [str(r[0]) for r in rows]

    def apply(self, changes: Iterable[ChangeLike]) -> int:
        """Write and delete many rows in ONE transaction: all applied or none.

        Repeated changes to the same row are coalesced (the last wins), so a batch
        from a dirty log writes each row once.  Every change is validated and
        encrypted before the transaction begins: bad input changes nothing.

        Returns:
            The number of distinct rows written or deleted.
        """
        latest: dict[tuple[str, bytes], bytes | None] = {}
        for ch in changes:
            value = ch.value
            latest[(check_category(ch.category), check_key(ch.key))] = (
                None if value is None else check_value(value)
            )
        if not latest:
            return 0
        with self._mutex:
            cipher = self._writable()
            kh = cipher.key_hash
            upserts: list[tuple[str, bytes, bytes, bytes]] = []
            deletes: list[tuple[str, bytes]] = []
            for (category, key), value in latest.items():
                if value is None:
                    deletes.append((category, kh(category, key)))
                else:
                    upserts.append((category, kh(category, key), key, value))
            blobs = cipher.encrypt_rows(upserts, len(upserts))
            with self._write_txn() as conn:
                if upserts:
                    conn.executemany(
                        "INSERT INTO keystore_rows (category, key_hash, value) VALUES (?, ?, ?)"
                        " ON CONFLICT (category, key_hash) DO UPDATE SET value = excluded.value",
                        [(u[0], u[1], b) for u, b in zip(upserts, blobs, strict=True)],
                    )
                    conn.execute(
                        "UPDATE keystore_counters SET value = value + ? WHERE name = 'encryptions'",
                        (len(upserts),),
                    )
                if deletes:
                    conn.executemany(
                        "DELETE FROM keystore_rows WHERE category = ? AND key_hash = ?", deletes
                    )
        return len(latest)

    # ------------------------------------------------------------------ keys

    def change_passphrase(
        self,
        old: str | bytes,
        new: str | bytes,
        *,
        kdf: KdfParameters | None = None,
    ) -> None:
        """Rewrap the two secrets under a new passphrase: O(1), atomic, no row touched.

        Works locked or unlocked.  ``kdf`` optionally moves to new Argon2id
        parameters at the same time (see :meth:`needs_rehash`).

        Raises:
            WrongPassphrase: ``old`` is wrong.
        """
        old_secret, new_secret = normalize_passphrase(old), normalize_passphrase(new)
        if kdf is not None and not isinstance(kdf, KdfParameters):
            raise TypeError("kdf must be a keystore.profiles.KdfParameters")
        self._rewrap(KDF_ARGON2ID, old_secret, new_secret, kdf)

    def change_key(self, old: bytes, new: bytes) -> None:
        """Rewrap the secrets of a raw-key vault under a new 32-byte key (O(1), atomic)."""
        self._rewrap(KDF_RAW_KEY, check_raw_key(old), check_raw_key(new), None)

    def _rewrap(
        self, kdf_id: int, old: bytes, new: bytes, kdf: KdfParameters | None
    ) -> None:
        with self._mutex:
            conn = self._connection()
            if self._readonly:
                raise VaultIOError(f"vault {self._path} was opened read-only")
            with _db_errors(self._path):
                header = self._read_header(conn, self._path)
            self._check_kdf_kind(header, kdf_id)
            old_kek = derive_wrapping_key(header, old)
            try:
                secrets = unwrap_secrets(old_kek, header)
            finally:
                old_kek[:] = bytes(len(old_kek))
            try:
                new_header = Header(
                    store_id=header.store_id,
                    kdf_id=header.kdf_id,
                    kdf=kdf if kdf is not None else header.kdf,
                    salt=os.urandom(SALT_LEN),
                    key_generation=header.key_generation,
                    wrap_nonce=header.wrap_nonce,
                    wrapped=header.wrapped,
                    flags=header.flags,
                )
                new_kek = derive_wrapping_key(new_header, new)
                new_header = wrap_secrets(new_kek, new_header, secrets)
            finally:
                secrets[:] = bytes(len(secrets))
            try:
                with self._write_txn() as conn:
                    self._store_header(conn, new_header)
            except BaseException:
                new_kek[:] = bytes(len(new_kek))
                raise
            self._header = new_header
            if self._kek is not None:
                self._kek[:] = bytes(len(self._kek))
                self._kek = new_kek
            else:
                new_kek[:] = bytes(len(new_kek))

    def _store_header(self, conn: sqlite3.Connection, header: Header) -> None:
        conn.execute("UPDATE keystore_header SET header = ? WHERE id = 1", (header.to_bytes(),))

    def rekey(self, progress: ProgressCallback | None = None) -> None:
        """Replace the data key and re-encrypt every row, in one transaction.

        The hash key is kept, so row identities do not change.  Every row is
        authenticated under the old key first: a corrupt row aborts the rekey and
        nothing is written.  Resets the nonce-budget counter.

        Args:
            progress: called as ``progress(done, total)`` while rows are re-encrypted.
        """
        with self._mutex:
            old = self._writable()
            assert self._kek is not None
            conn = self._connection()
            with _db_errors(self._path):
                rows = conn.execute(
                    "SELECT category, key_hash, value FROM keystore_rows"
                ).fetchall()
            total = len(rows)
            new = old.with_new_data_key()
            try:
                updated: list[tuple[bytes, str, bytes]] = []
                step = max(1, total // 100)
                for i, (category, key_hash, blob) in enumerate(rows):
                    kh = bytes(key_hash)
                    key, value = old.decrypt_row(category, kh, bytes(blob))
                    updated.append((new.encrypt_row(category, kh, key, value), category, kh))
                    if progress is not None and (i % step == 0):
                        progress(i, total)
                secrets = new.secrets()
                try:
                    header = self._header
                    next_header = wrap_secrets(
                        self._kek,
                        Header(
                            store_id=header.store_id,
                            kdf_id=header.kdf_id,
                            kdf=header.kdf,
                            salt=header.salt,
                            key_generation=header.key_generation + 1,
                            wrap_nonce=header.wrap_nonce,
                            wrapped=header.wrapped,
                            flags=header.flags,
                        ),
                        secrets,
                    )
                finally:
                    secrets[:] = bytes(len(secrets))
                with self._write_txn() as txn:
                    txn.executemany(
                        "UPDATE keystore_rows SET value = ? WHERE category = ? AND key_hash = ?",
                        updated,
                    )
                    txn.execute(
                        "UPDATE keystore_counters SET value = ? WHERE name = 'encryptions'",
                        (total,),
                    )
                    self._store_header(txn, next_header)
            except BaseException:
                new.wipe()
                raise
            if progress is not None:
                progress(total, total)
            self._header = next_header
            old.wipe()
            self._cipher = new

    # ------------------------------------------------------------------ reports

    def stats(self) -> StatsReport:
        """Rows and bytes per category and the nonce budget.  Needs no key."""
        with self._mutex:
            conn = self._connection()
            with _db_errors(self._path):
                per_cat = conn.execute(
                    "SELECT category, COUNT(*), COALESCE(SUM(LENGTH(value)), 0)"
                    " FROM keystore_rows GROUP BY category ORDER BY category"
                ).fetchall()
                counter = conn.execute(
                    "SELECT value FROM keystore_counters WHERE name = 'encryptions'"
                ).fetchone()
                version = migrations.schema_version(conn)
            header = self._header
        cats = {str(c): CategoryStats(rows=int(n), bytes=int(b)) for c, n, b in per_cat}
        encryptions = int(counter[0]) if counter else 0
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

    def verify(self) -> VerifyReport:
        """Decrypt and authenticate every row; list the failures (no plaintext)."""
        with self._mutex:
            cipher = self._unlocked()
            with _db_errors(self._path):
                rows = self._connection().execute(
                    "SELECT category, key_hash, value FROM keystore_rows"
                ).fetchall()
            failures = []
            for category, key_hash, blob in rows:
                try:
                    cipher.decrypt_row(str(category), bytes(key_hash), bytes(blob))
                except IntegrityError as exc:
                    failures.append(
                        RowFailure(
                            category=str(category),
                            key_hash=bytes(key_hash).hex(),
                            reason=str(exc).split(" in category")[0],
                        )
                    )
        return VerifyReport(ok=not failures, rows_checked=len(rows), failures=failures)


def _kdf_info(header: Header) -> KdfInfo:
    if header.kdf is None:
        return KdfInfo(kind="raw-key")
    return KdfInfo(
        kind="argon2id",
        time_cost=header.kdf.time_cost,
        memory_cost_kib=header.kdf.memory_cost,
        parallelism=header.kdf.parallelism,
    )


def _file_bytes(path: Path) -> int:
    total = 0
    for p in (path, Path(f"{path}-wal")):
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_vault_file(conn: sqlite3.Connection, path: Path, label: str) -> Path:
    """Write a consistent copy of the open database beside it (SQLite backup API).

    The name is ``<vault>.<label>.bak`` (with a counter when taken); the copy is
    fsync'd before this returns.  Returns its path.
    """
    candidate = path.with_name(f"{path.name}.{label}.bak")
    n = 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{label}.{n}.bak")
    dest = sqlite3.connect(str(candidate))
    try:
        with _db_errors(path):
            conn.backup(dest)
    finally:
        dest.close()
    fd = os.open(candidate, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return candidate

