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
import os
import sqlite3
import stat
import threading
import urllib.parse
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from keystore import migrations, safefile
from keystore import sqlcipher as sqlcipher_layer
from keystore.anchor import GenerationAnchor
from keystore.backends.sqlite import (
    ROW_GENERATION,
    SqliteBackend,
    _db_errors,
    _sql_type,
    _translate,
    read_state_record,
    store_row_generation,
    stored_count,
    write_state_record,
)
from keystore.cipher import (
    StoreCipher,
    check_raw_key,
    derive_wrapping_key,
    normalize_passphrase,
    unwrap_secrets,
)
from keystore.digest import DigestKeys, VaultState, check_anchor
from keystore.errors import (
    IntegrityError,
    KeystoreError,
    MigrationError,
    MigrationRequired,
    NotAVault,
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
    KDF_ARGON2ID,
    KDF_RAW_KEY,
    Header,
)
from keystore.lockfile import WriterLock, lock_path_for
from keystore.profiles import RFC_9106_LOW_MEMORY, KdfParameters
from keystore.sidecar import Sidecar, sidecar_path_for
from keystore.vault_core import (
    MAX_KEY_LEN,
    MAX_VALUE_LEN,
    Change,
    ChangeLike,
    RowVault,
    Snapshot,
    VaultCore,
    _load_anchor,
    _wipe,
    check_category,
    check_key,
    check_value,
    new_header,
)

__all__ = [
    "MAX_KEY_LEN", "MAX_VALUE_LEN", "Change", "ChangeLike", "RowVault", "Snapshot", "Vault",
    "check_category", "check_key", "check_value",
]

SQLITE_MAGIC = b"SQLite format 3\x00"
_SYNC_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
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
        "SELECT value FROM keystore_counters WHERE name = ?", (ROW_GENERATION,)
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


class Vault(VaultCore):
    """An encrypted key-value store of MLS state in one SQLite file.  See the module docstring.

    Use :meth:`create`, :meth:`create_with_key` or :meth:`open`; a vault is a context
    manager and is thread-safe (one internal lock serializes access).  Everything
    above the file — keys, state record, ``apply``, reads, passphrase change,
    rekey, verify — is :class:`~keystore.vault_core.VaultCore`, shared with
    :class:`keystore.postgres_vault.PostgresVault`; this class adds the file: making
    and opening it safely, the writer lock file, WAL companions, SQLCipher page keys
    and their rekey, migrations, compact and backup.
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
        # The rows' SQL, behind the interface a PostgreSQL vault's backend also has.
        # A SQLCipher vault's header is in its header file, never in the database.
        self._sqlite = SqliteBackend(
            path, self._connection, self._write_txn, header_in_database=not header.sqlcipher
        )
        super().__init__(self._sqlite, header, readonly=readonly, anchor=anchor)
        self._path = path
        # None while a SQLCipher vault is locked: its database cannot be read then.
        self._conn: sqlite3.Connection | None = conn
        self._sidecar = sidecar
        # The header file a passphrase change of a SQLCipher vault read (and rewrites).
        self._rewrap_sidecar: Sidecar | None = None
        self._writer_lock = writer_lock
        self._auto_migrate = auto_migrate
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._file_id = _file_identity(path)
        self._opened_by = os.getpid()
        self._forked = False
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
        header, cipher, kek = new_header(
            kdf_id, kdf, secret, flags=(FLAG_SQLCIPHER if sqlcipher else 0) | FLAG_STATE_DIGEST
        )
        store_id = header.store_id
        secrets = cipher.secrets()
        page_key = sqlcipher_layer.derive_page_key(secrets, store_id) if sqlcipher else None
        try:
            digest_keys = DigestKeys(secrets, store_id)
            first_record = digest_keys.seal(VaultState(0, 0, 0))
            digest_keys.wipe()
        finally:
            _wipe(secrets)
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
                    store_row_generation(conn, header.key_generation)
                write_state_record(conn, first_record)
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
                        record = read_state_record(conn, path)
                    if record is not None and len(record) >= 9:
                        clear = int.from_bytes(record[1:9], "big")
                        check_anchor(clear, _load_anchor(anchor, header.store_id, str(path)))
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

    def _release(self) -> None:
        """Close the database and release the writer lock (``close`` locks first)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        if self._writer_lock is not None:
            self._writer_lock.release()
            self._writer_lock = None

    def _describe(self) -> str:
        return repr(str(self._path))

    # ------------------------------------------------------------------ properties

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

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

    # ------------------------------------------------------------------ lock / unlock

    def _unlock(self, kdf_id: int, secret: bytes) -> None:
        """A SQLCipher vault unlocks from its header file (see :meth:`_unlock_sqlcipher`)."""
        with self._mutex:
            if not self._header.sqlcipher:
                super()._unlock(kdf_id, secret)
                return
            sidecar = self._read_sidecar()
            self._check_kdf_kind(sidecar.current, kdf_id)
            self._unlock_sqlcipher(derive_wrapping_key(sidecar.current, secret), sidecar)

    def _read_stored_header(self) -> Header:
        """The header row of a plain vault, read again from the file."""
        conn = self._connection()
        with _db_errors(self._path):
            return self._read_header(conn, self._path)

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

    def _drop_keys(self) -> None:
        super()._drop_keys()
        if self._header.sqlcipher and self._conn is not None:
            # SQLCipher keeps the page key inside the connection: locking closes it.
            conn, self._conn = self._conn, None
            with contextlib.suppress(*sqlcipher_layer.db_error_types()):
                conn.close()

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

    def _ready(self) -> None:
        self._connection()

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

    # ------------------------------------------------------------------ keys

    def _headers_for_rewrap(self) -> tuple[Header, ...]:
        """A SQLCipher vault's header file may hold a pending header too: both are rewrapped."""
        if not self._header.sqlcipher:
            return super()._headers_for_rewrap()
        self._rewrap_sidecar = self._read_sidecar()
        return self._rewrap_sidecar.headers()

    def _unwrap_for_rewrap(
        self, kek: bytearray, headers: tuple[Header, ...]
    ) -> list[tuple[Header, bytearray]]:
        if not self._header.sqlcipher:
            return super()._unwrap_for_rewrap(kek, headers)
        assert self._rewrap_sidecar is not None  # read by _headers_for_rewrap
        return _unwrap_headers(kek, self._rewrap_sidecar, self._path)

    def _store_rewrapped(self, headers: list[Header]) -> None:
        """A SQLCipher vault's headers go to its header file, in one atomic replace."""
        if not self._header.sqlcipher:
            super()._store_rewrapped(headers)
            return
        read, self._rewrap_sidecar = self._rewrap_sidecar, None
        assert read is not None  # read by _headers_for_rewrap
        sidecar = Sidecar(headers[0], headers[1] if len(headers) > 1 else None,
                          read.schema_version)
        sidecar.write(self._path)
        self._sidecar = sidecar

    def _rewrap_and_rekey_together(self) -> bool:
        # A file rename and a SQLite transaction cannot be one atomic step.
        return not self._header.sqlcipher

    def _header_adopted(self, header: Header) -> None:
        """A SQLCipher vault's flagged header goes to its header file, after the commit
        (a crash in between leaves a record without the flag, which the next writable
        unlock checks against the rows and keeps)."""
        if self._header.sqlcipher:
            assert self._sidecar is not None
            sidecar = Sidecar(header, None, self._sidecar.schema_version)
            sidecar.write(self._path)
            self._sidecar = sidecar

    def _commit_rekey(
        self,
        rows: list[tuple[str, bytes, bytes, bytes]],
        header: Header,
        record: bytes | None,
        expected_record: bytes | None,
    ) -> None:
        """Phases 1 and 2 of a SQLCipher rekey: the pending header, then the rows.

        A file rename and a SQLite transaction cannot be one atomic step, so a
        SQLCipher rekey takes four: (1) the header file gets the next header as
        *pending* beside the current one; (2) one transaction rewrites the rows and
        records their new key generation; (3) ``PRAGMA rekey`` re-encrypts every
        page (itself atomic) and (4) the header file keeps only the new header.
        After a crash at any point, :meth:`unlock` finds the key that opens the
        pages, trusts the generation recorded with the rows, and completes (or,
        before step 2, drops) the rekey.
        """
        if not self._header.sqlcipher:
            super()._commit_rekey(rows, header, record, expected_record)
            return
        assert self._sidecar is not None  # open() sets it for every SQLCipher vault
        schema_version = self._sidecar.schema_version
        Sidecar(self._header, header, schema_version).write(self._path)
        _rekey_step("pending-written")
        try:
            self._sqlite.rehash(
                rows, header.to_bytes(), len(rows), record, expected_record,
                key_generation=header.key_generation,
            )
        except BaseException:
            self._withdraw_pending(schema_version)
            raise

    def _after_rekey(self, header: Header) -> None:
        """Phases 3 and 4 of a SQLCipher rekey (see :meth:`_commit_rekey`)."""
        if self._header.sqlcipher:
            assert self._sidecar is not None
            _rekey_step("rows-committed")
            self._finish_page_rekey(header, self._sidecar.schema_version)

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

    def _stored_bytes(self, row_bytes: int) -> int:
        """The file plus its WAL."""
        return _file_bytes(self._path)

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

#: Every Vault object of this process, for the fork handler (weak references only).
_LIVE_VAULTS: weakref.WeakSet[Vault] = weakref.WeakSet()
#: Connections inherited by a forked child: kept referenced so that they are never
#: closed there (SQLite connections must not be used, closed included, across fork).
_ORPHANED_AFTER_FORK: list[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    for vault in list(_LIVE_VAULTS):
        vault._abandon_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


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
