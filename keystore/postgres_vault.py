"""A vault kept in PostgreSQL: the vault's cipher over a PostgreSQL backend.

:class:`PostgresVault` has the methods of :class:`keystore.Vault` that the MLS layer
uses (``apply``, ``get``, ``items``, ``categories``, ``put``, ``delete``, ``close``,
``lock``/``unlock``, ``stats``, ``verify``, ``change_passphrase``, ``rekey``), so
:class:`mls.storage.GranularStorage` loads from it and a
:class:`mls.drainer.WriteBehindDrainer` drains into it unchanged.  The rows it
stores are the SQLite vault's rows byte for byte: the same header format, the same
sealed values and keyed hashes from :class:`keystore.cipher.StoreCipher`.

:class:`PostgresAddress` names one vault in a database; :class:`mls.MlsClient` and the
``mls-keystore`` command take it where they take a file path.

Transitional: :class:`keystore.Vault` reads and writes its rows through
:class:`keystore.backends.sqlite.SqliteBackend` (the same interface as
:class:`~keystore.backends.postgres.PostgresBackend`), but keeps its unlock, rekey,
SQLCipher and state-record steps on its SQLite connection; this class has its own
copy of the key handling, as module functions (``seal_batch``, ``open_header``,
``new_header``, ``rehash_rows``) over :class:`keystore.backend.VaultBackend`, and of
the state-record steps (the record and digest themselves are
:mod:`keystore.digest`'s, shared unchanged).  Merging
the two into one vault class over either backend is the remaining step.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TYPE_CHECKING

from keystore.anchor import GenerationAnchor
from keystore.backend import RowRef, SealedRow, VaultBackend
from keystore.backends.postgres import (
    DEFAULT_LEASE_TTL,
    DEFAULT_SCHEMA,
    PostgresBackend,
    PostgresDatabase,
    _redact,
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
    RollbackDetected,
    VaultClosed,
    VaultIOError,
    VaultLocked,
)
from keystore.header import (
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
from keystore.profiles import RFC_9106_LOW_MEMORY, KdfParameters
from keystore.vault import (
    _YIELD_PAUSE,
    MAX_KEY_LEN,
    MAX_VALUE_LEN,
    Change,
    ChangeLike,
    check_category,
    check_key,
    check_value,
)

if TYPE_CHECKING:
    from keystore.reports import StatsReport, VerifyReport

__all__ = [
    "PostgresAddress",
    "PostgresVault",
    "import_export_file",
    "new_header",
    "open_header",
    "rehash_rows",
    "reseal_rows",
    "seal_batch",
]


# ---------------------------------------------------------------------- cipher side
# Backend-independent steps: phase 2 moves them into keystore.vault unchanged.


def _wipe(*buffers: bytearray | None) -> None:
    for buf in buffers:
        if buf is not None:
            buf[:] = bytes(len(buf))


def new_header(
    kdf_id: int, kdf: KdfParameters | None, secret: bytes, *, flags: int = FLAG_STATE_DIGEST
) -> tuple[Header, StoreCipher, bytearray]:
    """A fresh vault: random store id and secrets, wrapped under a KEK from ``secret``.

    New vaults carry the state-record flag: their record is mandatory from the start.
    Returns ``(header, cipher, kek)``; the caller owns (and wipes) cipher and kek.
    """
    store_id = os.urandom(STORE_ID_LEN)
    header = Header(
        store_id=store_id, kdf_id=kdf_id, kdf=kdf, salt=os.urandom(SALT_LEN),
        key_generation=1, wrap_nonce=bytes(NONCE_LEN), wrapped=bytes(WRAPPED_LEN),
        flags=flags,
    )
    kek = derive_wrapping_key(header, secret)
    cipher = StoreCipher.generate(store_id)
    secrets = cipher.secrets()
    try:
        header = wrap_secrets(kek, header, secrets)
    finally:
        _wipe(secrets)
    return header, cipher, kek


def open_header(header: Header, kdf_id: int, secret: bytes) -> tuple[StoreCipher, bytearray]:
    """Unwrap a header's secrets: ``(cipher, kek)``.

    Raises:
        WrongPassphrase: wrong secret or an edited header.
        ValueError: a passphrase for a raw-key vault or the reverse.
    """
    if header.kdf_id != kdf_id:
        if header.kdf_id == KDF_RAW_KEY:
            raise ValueError("this vault is keyed by a raw key: use unlock_with_key()")
        raise ValueError("this vault is keyed by a passphrase: use unlock()")
    kek = derive_wrapping_key(header, secret)
    try:
        secrets = unwrap_secrets(kek, header)
    except BaseException:
        _wipe(kek)
        raise
    try:
        return StoreCipher(secrets, header.store_id), kek
    finally:
        _wipe(secrets)


def seal_batch(
    cipher: StoreCipher, changes: Iterable[ChangeLike], *, pause: float = 0.0
) -> tuple[int, list[SealedRow], list[RowRef]]:
    """Validate, coalesce (last change to a row wins) and seal a batch.

    Everything is checked and encrypted before any storage is touched, so bad input
    changes nothing.  Returns ``(distinct rows, upserts, deletes)``.
    """
    latest: dict[tuple[str, bytes], bytes | None] = {}
    known: set[str] = set()
    for ch in changes:
        category, key, value = ch.category, ch.key, ch.value
        if type(category) is not str or category not in known:
            known.add(check_category(category))
        if type(key) is not bytes or len(key) > MAX_KEY_LEN:
            key = check_key(key)
        if value is not None and (type(value) is not bytes or len(value) > MAX_VALUE_LEN):
            value = check_value(value)
        latest[(category, key)] = value
    if not latest:
        return 0, [], []
    upserts, deletes = cipher.seal_changes(latest.items(), len(latest), pause=pause)
    return len(latest), upserts, deletes


def reseal_rows(
    old: StoreCipher, new: StoreCipher, rows: Iterable[SealedRow]
) -> list[SealedRow]:
    """Authenticate every row under ``old`` and seal it again under ``new`` (a rekey).

    Raises:
        IntegrityError: a row fails authentication; nothing is returned.
    """
    out: list[SealedRow] = []
    for category, key_hash, blob in rows:
        key, value = old.decrypt_row(category, key_hash, blob)
        out.append((category, key_hash, new.encrypt_row(category, key_hash, key, value)))
    return out


def rehash_rows(
    old: StoreCipher, new: StoreCipher, rows: Iterable[SealedRow]
) -> list[tuple[str, bytes, bytes, bytes]]:
    """Authenticate every row under ``old``; hash its key and seal it under ``new``.

    Returns ``(category, old_key_hash, new_key_hash, new_value)`` per row (a rekey
    that rotates the hash key too).

    Raises:
        IntegrityError: a row fails authentication; nothing is returned.
    """
    out: list[tuple[str, bytes, bytes, bytes]] = []
    for category, key_hash, blob in rows:
        key, value = old.decrypt_row(category, key_hash, blob)
        new_hash = new.key_hash(category, key)
        out.append((category, key_hash, new_hash,
                    new.encrypt_row(category, new_hash, key, value)))
    return out


def _digest_keys(cipher: StoreCipher) -> DigestKeys:
    secrets = cipher.secrets()
    try:
        return DigestKeys(secrets, cipher.store_id)
    finally:
        _wipe(secrets)


# ---------------------------------------------------------------------- the vault


class PostgresVault:
    """An encrypted vault stored in PostgreSQL, written by one lease holder at a time.

    Open vaults through a :class:`~keystore.backends.postgres.PostgresDatabase`
    (one per worker: it shares one connection and one lease renewer among every
    vault the worker opens), or pass a DSN string and the vault makes a private one
    that it closes with itself.

    A writable vault holds the vault's writer lease; if another worker takes the
    lease over (this one was paused past its expiry), every write raises
    :class:`~keystore.errors.LeaseLost` and writes nothing.

    Like a SQLite vault, it keeps an authenticated state record (generation, row
    count and set digest, docs/format.md §15) in its ``stores`` row, advanced in the
    same fenced transaction as every write; a row put back, deleted or re-inserted
    by whoever can write the database raises
    :class:`~keystore.errors.RollbackDetected` when the rows are read whole.

    Transitional: the next step merges this class into :class:`keystore.Vault`
    (the cipher over a backend); the methods and errors stay the same.
    """

    def __init__(
        self,
        db: PostgresDatabase,
        backend: PostgresBackend,
        header: Header,
        name: str | None,
        *,
        readonly: bool,
        owns_db: bool,
        anchor: GenerationAnchor | None = None,
    ) -> None:
        self._db = db
        self._backend: VaultBackend = backend
        self._pg = backend
        self._header = header
        self._name = name
        self._readonly = readonly
        self._owns_db = owns_db
        self._cipher: StoreCipher | None = None
        self._kek: bytearray | None = None
        # The state record's keys and the state last authenticated or written
        # (None while locked, and for a pre-record vault opened read-only).
        self._digest: DigestKeys | None = None
        self._state: VaultState | None = None
        self._anchor = anchor
        self._closed = False
        self._mutex = threading.RLock()
        # True from open() until the first unlock: the header just read is current
        # (we hold the lease, or read it a moment ago), so unlock need not fetch it.
        self._header_fresh = False
        # The whole-vault read-ahead of a load (see items()): category -> rows, and
        # whether categories() was just called, which arms it.
        self._snapshot: dict[str, list[tuple[bytes, bytes]]] | None = None
        self._snapshot_served: set[str] = set()
        self._snapshot_armed = False

    # ------------------------------------------------------------------ lifecycle

    @staticmethod
    def _database(
        where: str | PostgresDatabase, schema: str, lease_ttl: float
    ) -> tuple[PostgresDatabase, bool]:
        if isinstance(where, PostgresDatabase):
            return where, False
        if not isinstance(where, str):
            raise TypeError("give a DSN string or a PostgresDatabase")
        return PostgresDatabase(where, schema=schema, lease_ttl=lease_ttl), True

    @classmethod
    def create(
        cls,
        where: str | PostgresDatabase,
        passphrase: str | bytes,
        kdf: KdfParameters = RFC_9106_LOW_MEMORY,
        *,
        name: str | None = None,
        schema: str = DEFAULT_SCHEMA,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        anchor: GenerationAnchor | None = None,
    ) -> PostgresVault:
        """Create a new vault in the database, returned unlocked and holding its lease.

        Installs the schema into an empty database first.

        Args:
            where: a DSN/URL, or a shared :class:`PostgresDatabase`.
            name: an optional unique name to open it by (else use :attr:`store_id`).
            schema, lease_ttl: used only when ``where`` is a DSN.
            anchor: where to keep the vault's generation outside the database (see
                :meth:`open`).

        Raises:
            FileExistsError: ``name`` is taken.  VaultIOError: the server is unreachable.
        """
        if not isinstance(kdf, KdfParameters):
            raise TypeError("kdf must be a keystore.profiles.KdfParameters")
        return cls._create(where, KDF_ARGON2ID, kdf, normalize_passphrase(passphrase),
                           name, schema, lease_ttl, anchor)

    @classmethod
    def create_with_key(
        cls,
        where: str | PostgresDatabase,
        key: bytes,
        *,
        name: str | None = None,
        schema: str = DEFAULT_SCHEMA,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        anchor: GenerationAnchor | None = None,
    ) -> PostgresVault:
        """Create a new vault keyed by a caller-held 32-byte key (see ``Vault.create_with_key``)."""
        return cls._create(where, KDF_RAW_KEY, None, check_raw_key(key), name, schema,
                           lease_ttl, anchor)

    @classmethod
    def _create(
        cls,
        where: str | PostgresDatabase,
        kdf_id: int,
        kdf: KdfParameters | None,
        secret: bytes,
        name: str | None,
        schema: str,
        lease_ttl: float,
        anchor: GenerationAnchor | None = None,
    ) -> PostgresVault:
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError("name must be a non-empty string or None")
        db, owns = cls._database(where, schema, lease_ttl)
        try:
            db.check_schema()
            header, cipher, kek = new_header(kdf_id, kdf, secret)
            digest = _digest_keys(cipher)
            state = VaultState(0, 0, 0)
            try:
                epoch = db.create_store(header.store_id, header.to_bytes(), name,
                                        lease_ttl=db.leases.ttl, state=digest.seal(state))
            except BaseException:
                cipher.wipe()
                digest.wipe()
                _wipe(kek)
                raise
        except BaseException:
            if owns:
                db.close()
            raise
        lease = db.leases.adopt(header.store_id, epoch)
        vault = cls(db, db.backend(header.store_id, lease), header, name,
                    readonly=False, owns_db=owns, anchor=anchor)
        vault._cipher, vault._kek = cipher, kek
        vault._digest, vault._state = digest, state
        vault._update_anchor(0)
        return vault

    @classmethod
    def open(
        cls,
        where: str | PostgresDatabase,
        *,
        store_id: bytes | None = None,
        name: str | None = None,
        readonly: bool = False,
        timeout: float = 0.0,
        auto_migrate: bool = False,
        schema: str = DEFAULT_SCHEMA,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        anchor: GenerationAnchor | None = None,
    ) -> PostgresVault:
        """Open a vault by ``store_id`` or ``name``, locked.

        A writable open takes the vault's writer lease (waiting up to ``timeout``
        seconds for another worker's to be released or to expire).

        Args:
            where: a DSN/URL, or a shared :class:`PostgresDatabase`.
            store_id, name: which vault (exactly one of them).
            readonly: take no lease and never write (reports, verification, reads
                from a hot standby).
            auto_migrate: upgrade an older schema first (each step transactional).
            schema, lease_ttl: used only when ``where`` is a DSN.
            anchor: where the vault's latest generation is kept outside the
                database (:class:`keystore.anchor.FileAnchor`, or your own
                :class:`~keystore.anchor.GenerationAnchor`).  A vault older than its
                anchor is refused at unlock (and when its rows are read whole), and
                every write updates the anchor after its commit.  Without one, an
                operator who restores the whole vault from an old copy is not caught.

        Raises:
            NotAVault: no such vault.  VaultBusy: another worker holds the lease.
            MigrationRequired/SchemaTooNew/MigrationError: schema mismatch.
            VaultIOError: the server is unreachable.
        """
        db, owns = cls._database(where, schema, lease_ttl)
        try:
            db.check_schema(auto_migrate=auto_migrate)
            sid, found_name, header_bytes = db.find_store(store_id=store_id, name=name)
            lease = None if readonly else db.leases.acquire(sid, timeout)
            backend = db.backend(sid, lease)
            try:
                if lease is not None:
                    # The header may have changed while we waited for the lease.
                    header_bytes = backend.read_header()
                header = Header.from_bytes(header_bytes)
                if header.store_id != sid:
                    raise IntegrityError(
                        f"vault {backend.location} holds the header of another vault "
                        f"({header.store_id.hex()}): it was moved or replaced"
                    )
                if header.sqlcipher:
                    raise IntegrityError(
                        f"vault {backend.location} has a SQLCipher header, which has no "
                        "meaning on PostgreSQL"
                    )
            except BaseException:
                backend.close()
                raise
        except BaseException:
            if owns:
                db.close()
            raise
        vault = cls(db, backend, header, found_name, readonly=readonly, owns_db=owns,
                    anchor=anchor)
        vault._header_fresh = True
        return vault

    def close(self) -> None:
        """Lock, release the writer lease and (if private) the database handle. Idempotent."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            self._drop_keys()
            self._pg.close()
            if self._owns_db:
                self._db.close()

    def __enter__(self) -> PostgresVault:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("locked" if self.locked else "unlocked")
        return f"<PostgresVault {self._header.store_id.hex()} {state}>"

    # ------------------------------------------------------------------ properties

    @property
    def store_id(self) -> bytes:
        """The random per-vault id bound into every row's AAD (and the row's address)."""
        return self._header.store_id

    @property
    def database(self) -> PostgresDatabase:
        """The database handle this vault was opened through."""
        return self._db

    @property
    def name(self) -> str | None:
        """The vault's unique name in its database, if it was given one."""
        return self._name

    @property
    def location(self) -> str:
        """Database, schema and store id, without any password."""
        return self._backend.location

    @property
    def locked(self) -> bool:
        """Whether the keys are absent."""
        return self._cipher is None

    @property
    def readonly(self) -> bool:
        """Whether this object was opened without the writer lease."""
        return self._readonly

    @property
    def lease_epoch(self) -> int | None:
        """The fencing token this writer carries (``None`` when read-only or closed)."""
        lease = self._pg.lease
        return None if lease is None else lease.epoch

    @property
    def schema_version(self) -> int:
        """The database schema version."""
        return self._backend.schema_version()

    @property
    def kdf(self) -> KdfParameters | None:
        """The Argon2id parameters in the header, or ``None`` for a raw-key vault."""
        return self._header.kdf

    # ------------------------------------------------------------------ keys

    def unlock(self, passphrase: str | bytes) -> None:
        """Unlock with the passphrase (the header is re-read from the server).

        Raises:
            WrongPassphrase: wrong passphrase, or the header was edited.
        """
        self._unlock(KDF_ARGON2ID, normalize_passphrase(passphrase))

    def unlock_with_key(self, key: bytes) -> None:
        """Unlock a vault created with :meth:`create_with_key`."""
        self._unlock(KDF_RAW_KEY, check_raw_key(key))

    def _unlock(self, kdf_id: int, secret: bytes) -> None:
        with self._mutex:
            self._check_open()
            if self._header_fresh:
                header, self._header_fresh = self._header, False
            else:
                header = Header.from_bytes(self._backend.read_header())
            if header.store_id != self._header.store_id:
                raise IntegrityError(f"the header of vault {self.location} was replaced")
            cipher, kek = open_header(header, kdf_id, secret)
            self._drop_keys()
            self._header, self._cipher, self._kek = header, cipher, kek
            self._open_state()

    def _open_state(self) -> None:
        """At unlock: authenticate the state record and hold it against the anchor.

        A vault made before the record (no header flag) gets one now if writable
        (:meth:`_adopt_state`); read-only, it is left without one.  On any failure
        the keys are dropped again: the vault stays locked and nothing was written.
        """
        cipher = self._cipher
        assert cipher is not None
        try:
            self._digest = _digest_keys(cipher)
            record = self._pg.read_state()
            if self._header.state_digest:
                if record is None:
                    raise RollbackDetected(
                        f"vault {self.location} has lost its state record: it was removed, "
                        "or the vault was made to look older than it is",
                        reason="record",
                    )
                state = self._digest.open(record)
            elif self._readonly:
                return
            else:
                state = self._adopt_state(self._digest)
            self._check_anchor(state.generation)
            if state.state_format != STATE_FORMAT and not self._readonly:
                state = self._reseal_state(self._digest)
            self._state = state
            if not self._readonly:
                self._update_anchor(state.generation)
        except BaseException:
            self._drop_keys()
            raise

    def _adopt_state(self, keys: DigestKeys) -> VaultState:
        """Give a vault made before the state record its record, once.

        One fenced transaction authenticates every row, computes their digest, stores
        the record at generation 0 and sets the header flag that makes the record
        mandatory from then on.  A record already there (a crash cannot leave one
        without the flag here, but an older copy of the header could) is checked
        against the rows instead of replaced.
        """
        cipher = self._unlocked()
        assert self._kek is not None
        flagged = replace(self._header, flags=self._header.flags | FLAG_STATE_DIGEST)
        secrets = cipher.secrets()
        try:
            new_header = wrap_secrets(self._kek, flagged, secrets)
        finally:
            _wipe(secrets)
        adopted: list[VaultState] = []

        def build(rows: list[SealedRow], record: bytes | None) -> tuple[bytes, bytes]:
            cipher.open_rows(rows, self._stored_category, self._stored_blob)
            digest = RowSetDigest(keys)
            digest.add(rows)
            if record is not None:
                state = check_rows(keys, record, digest)
            else:
                state = digest.state(0)
                record = keys.seal(state)
            adopted.append(state)
            return record, new_header.to_bytes()

        self._pg.adopt_state(build)
        self._header = new_header
        return adopted[-1]

    def _reseal_state(self, keys: DigestKeys) -> VaultState:
        """Carry a state record of an older format over to the current one, once, at
        the first writable unlock (docs/format.md §15.6): one fenced transaction
        authenticates every row, checks them against the old record and stores the
        next generation's record in the current format (the header is left as is)."""
        cipher = self._unlocked()
        resealed: list[VaultState] = []

        def build(rows: list[SealedRow], record: bytes | None) -> tuple[bytes, None]:
            cipher.open_rows(rows, self._stored_category, self._stored_blob)
            digest = RowSetDigest.both_formats(keys)
            digest.add(rows)
            state, new_record = reseal(keys, record, digest)
            resealed.append(state)
            return new_record, None

        self._pg.adopt_state(build)
        return resealed[-1]

    def _check_anchor(self, generation: int) -> None:
        if self._anchor is None:
            return
        try:
            anchored = self._anchor.load(self._header.store_id)
        except KeystoreError:
            raise
        except Exception as exc:
            raise VaultIOError(
                f"the anchor of vault {self.location} could not be read "
                f"({type(exc).__name__}); nothing was opened"
            ) from exc
        check_anchor(generation, anchored)

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
                f"vault {self.location} is at generation {generation}, but its anchor "
                f"could not be updated ({type(exc).__name__}); the write itself was committed"
            ) from exc

    def _check_rows(self, rows: list[SealedRow], record: bytes | None) -> None:
        """Raise RollbackDetected unless ``rows`` (every live row) are the set the
        state record vouches for, at a generation no older than the anchor's."""
        if self._digest is None or not self._header.state_digest:
            return  # a pre-record vault opened read-only: nothing vouches for it yet
        digest = RowSetDigest(self._digest)
        digest.add(rows)
        state = check_rows(self._digest, record, digest)
        self._check_anchor(state.generation)

    @property
    def generation(self) -> int | None:
        """The vault's generation: committed writes since its state record began.

        As authenticated at unlock and advanced by this object's own writes; ``None``
        while locked, and for a vault made before the record opened read-only.
        """
        with self._mutex:
            return None if self._cipher is None or self._state is None else self._state.generation

    def _drop_keys(self) -> None:
        self._forget_snapshot()
        if self._digest is not None:
            self._digest.wipe()
            self._digest = None
        self._state = None
        if self._cipher is not None:
            self._cipher.wipe()
            self._cipher = None
        _wipe(self._kek)
        self._kek = None

    def lock(self) -> None:
        """Overwrite every key held in memory; the lease is kept."""
        with self._mutex:
            self._drop_keys()

    def _check_open(self) -> None:
        if self._closed:
            raise VaultClosed(f"vault {self.location} is closed")

    def _unlocked(self) -> StoreCipher:
        self._check_open()
        if self._cipher is None:
            raise VaultLocked(f"vault {self.location} is locked; unlock it first")
        return self._cipher

    def _writable(self) -> StoreCipher:
        cipher = self._unlocked()
        if self._readonly:
            raise VaultIOError(f"vault {self.location} was opened read-only")
        return cipher

    def change_passphrase(
        self, old: str | bytes, new: str | bytes, *, kdf: KdfParameters | None = None,
        rekey: bool = False,
    ) -> None:
        """Rewrap the secrets under a new passphrase: one fenced header update, no row touched.

        With ``rekey=True`` the secrets are replaced as well (see :meth:`rekey`), in
        the same transaction as the new header: an old copy of the header, with the
        old passphrase, then opens nothing written from now on.  That needs the
        vault unlocked.

        Raises:
            WrongPassphrase: ``old`` is wrong.  LeaseLost: another worker holds the vault.
            VaultLocked: ``rekey=True`` on a locked vault.
        """
        if kdf is not None and not isinstance(kdf, KdfParameters):
            raise TypeError("kdf must be a keystore.profiles.KdfParameters")
        if rekey:
            self._rekey_with(KDF_ARGON2ID, normalize_passphrase(old),
                             normalize_passphrase(new), kdf)
            return
        self._rewrap(KDF_ARGON2ID, normalize_passphrase(old), normalize_passphrase(new), kdf)

    def _rekey_with(
        self, kdf_id: int, old: bytes, new: bytes, kdf: KdfParameters | None
    ) -> None:
        """A passphrase change and a rekey in one fenced transaction."""
        with self._mutex:
            self._writable()
            header = Header.from_bytes(self._backend.read_header())
            if header.store_id != self._header.store_id:
                raise IntegrityError(f"the header of vault {self.location} was replaced")
            cipher, old_kek = open_header(header, kdf_id, old)  # checks ``old``
            cipher.wipe()
            _wipe(old_kek)
            template = replace(header, kdf=kdf if kdf is not None else header.kdf,
                               salt=os.urandom(SALT_LEN))
            self._rekey(derive_wrapping_key(template, new), template)

    def change_key(self, old: bytes, new: bytes) -> None:
        """Rewrap the secrets of a raw-key vault under a new 32-byte key."""
        self._rewrap(KDF_RAW_KEY, check_raw_key(old), check_raw_key(new), None)

    def _rewrap(self, kdf_id: int, old: bytes, new: bytes, kdf: KdfParameters | None) -> None:
        with self._mutex:
            self._check_open()
            if self._readonly:
                raise VaultIOError(f"vault {self.location} was opened read-only")
            header = Header.from_bytes(self._backend.read_header())
            cipher, old_kek = open_header(header, kdf_id, old)
            _wipe(old_kek)
            fresh = replace(header, kdf=kdf if kdf is not None else header.kdf,
                            salt=os.urandom(SALT_LEN))
            new_kek = derive_wrapping_key(fresh, new)
            secrets = cipher.secrets()
            try:
                rewrapped = wrap_secrets(new_kek, fresh, secrets)
                self._backend.write_header(rewrapped.to_bytes())
            except BaseException:
                _wipe(new_kek)
                raise
            finally:
                _wipe(secrets)
                cipher.wipe()
            self._header = rewrapped
            if self._kek is not None:
                _wipe(self._kek)
                self._kek = new_kek
            else:
                _wipe(new_kek)

    def rekey(self) -> None:
        """Replace both secrets; re-hash and re-encrypt every row in one fenced transaction.

        A new data key encrypts every row and a new hash key re-hashes every row key
        (as :meth:`keystore.Vault.rekey` does), so an old copy of the header, with
        its passphrase, neither decrypts nor recognises anything written from now
        on.  Every row is authenticated, and the set of rows checked against the
        state record, first; the record is sealed afresh under the new keys one
        generation on.  The nonce counter restarts.

        Raises:
            IntegrityError: a row fails authentication; nothing is written.
            RollbackDetected: the rows are not the ones the record vouches for, or
                they changed underneath; nothing is written.
        """
        with self._mutex:
            self._writable()
            assert self._kek is not None
            self._rekey(None, self._header)

    def _rekey(self, new_kek: bytearray | None, template: Header) -> None:
        """:meth:`rekey`; with ``new_kek`` the new header is wrapped under it with
        ``template``'s salt and KDF (a passphrase change in the same transaction).
        ``new_kek`` is taken over (installed, or wiped on failure)."""
        new: StoreCipher | None = None
        new_digest: DigestKeys | None = None
        try:
            old = self._writable()
            assert self._kek is not None
            rows, record = self._pg.scan_with_state()
            if self._digest is not None and self._header.state_digest:
                old.open_rows(rows, self._stored_category, self._stored_blob)
                self._check_rows(rows, record)
                assert record is not None
                previous = self._digest.open(record).generation
            else:
                previous = 0
            new = StoreCipher.generate(old.store_id)
            rehashed = rehash_rows(old, new, rows)
            new_digest = _digest_keys(new)
            running = RowSetDigest(new_digest)
            running.add((c, nk, v) for c, _, nk, v in rehashed)
            new_state = running.state(previous + 1)
            secrets = new.secrets()
            try:
                next_header = wrap_secrets(
                    self._kek if new_kek is None else new_kek,
                    replace(template, key_generation=self._header.key_generation + 1,
                            flags=self._header.flags | FLAG_STATE_DIGEST),
                    secrets,
                )
            finally:
                _wipe(secrets)
            self._pg.rehash(rehashed, next_header.to_bytes(), len(rehashed),
                            new_digest.seal(new_state), record)
        except BaseException:
            if new is not None:
                new.wipe()
            if new_digest is not None:
                new_digest.wipe()
            _wipe(new_kek)
            raise
        old.wipe()
        if self._digest is not None:
            self._digest.wipe()
        self._cipher, self._header = new, next_header
        self._digest, self._state = new_digest, new_state
        if new_kek is not None:
            _wipe(self._kek)
            self._kek = new_kek
        self._forget_snapshot()
        self._update_anchor(new_state.generation)

    # ------------------------------------------------------------------ rows

    def put(self, category: str, key: bytes, value: bytes) -> None:
        """Write one row (one transaction)."""
        self.apply((Change(category, key, value),))

    def delete(self, category: str, key: bytes) -> None:
        """Delete one row if present (one transaction)."""
        self.apply((Change(category, key, None),))

    def apply(self, changes: Iterable[ChangeLike], *, yield_gil: bool = False) -> int:
        """Write and delete many rows in ONE fenced transaction: all applied or none.

        Repeated changes to one row are coalesced (the last wins).  A lost
        connection is retried (the batch is idempotent) for the database's
        ``retry_for`` seconds.  ``yield_gil`` pauses briefly while sealing a large
        batch, as :meth:`keystore.Vault.apply` does, for an event loop in another
        thread (``AsyncDrainer`` sets it).

        Returns:
            The number of distinct rows written or deleted.

        Raises:
            LeaseLost: another worker took the lease over; nothing was written.
            VaultIOError: the server stayed unreachable; nothing was written (or
                the batch landed whole just before the connection broke).
        """
        with self._mutex:
            cipher = self._writable()
            count, upserts, deletes = seal_batch(
                cipher, changes, pause=_YIELD_PAUSE if yield_gil else 0.0
            )
            if count:
                self._forget_snapshot()
                keys = self._digest
                if keys is None or not self._header.state_digest:
                    self._backend.apply(upserts, deletes)
                    return count
                advanced: list[VaultState] = []

                def advance(record: bytes | None, old: list[SealedRow]) -> bytes:
                    if record is None:
                        raise RollbackDetected(
                            f"vault {self.location} has lost its state record; nothing "
                            "was written",
                            reason="record",
                        )
                    current = keys.open(record)
                    digest = RowSetDigest.of_state(keys, current)
                    digest.remove(old)
                    digest.add(upserts)
                    state = digest.state(current.generation + 1)
                    advanced.append(state)
                    return keys.seal(state)

                self._pg.apply(upserts, deletes, advance)
                self._state = advanced[-1]
                self._update_anchor(self._state.generation)
            return count

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
            return cipher.decrypt_row(category, key_hash, blob)[1]

    def _forget_snapshot(self) -> None:
        self._snapshot, self._snapshot_armed = None, False
        self._snapshot_served = set()

    def items(self, category: str) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key, value)`` of a category, authenticated, in key-hash order.

        Loading a whole vault (``categories()`` then ``items()`` of each, as
        ``GranularStorage.load`` does) costs two queries, not one per category: the
        first ``items()`` after ``categories()`` reads every row in one binary scan
        and serves the categories from it until each was served or the vault is
        written.  All of them then come from one consistent snapshot.
        """
        category = check_category(category)
        with self._mutex:
            self._unlocked()
            if self._snapshot is None and self._snapshot_armed:
                grouped: dict[str, list[tuple[bytes, bytes]]] = {}
                for cat, key_hash, blob in self._backend.scan_all():
                    grouped.setdefault(cat, []).append((key_hash, blob))
                self._snapshot, self._snapshot_armed = grouped, False
            if self._snapshot is not None:
                rows = self._snapshot.get(category, [])
                self._snapshot_served.add(category)
                if self._snapshot_served >= self._snapshot.keys():
                    self._forget_snapshot()
            else:
                rows = self._backend.scan(category)
        for key_hash, blob in rows:
            with self._mutex:
                cipher = self._unlocked()
                yield cipher.decrypt_row(category, key_hash, blob)

    @contextlib.contextmanager
    def read_snapshot(self) -> Iterator[PostgresSnapshot]:
        """Every row from ONE consistent state of the vault (what export reads).

        The rows are fetched by a single statement, which PostgreSQL runs on one
        snapshot: a batch another worker commits meanwhile is seen whole or not at all.
        They are decrypted as they are iterated, in category and key-hash order.

        Raises:
            VaultLocked: the vault is locked.
            IntegrityError: a row fails authentication.
            RollbackDetected: the rows are not the set the state record vouches for.
        """
        with self._mutex:
            cipher = self._unlocked()
            rows, record = self._pg.scan_with_state()
            cipher.open_rows(rows, self._stored_category, self._stored_blob)
            self._check_rows(rows, record)
        yield PostgresSnapshot(self, rows)

    def open_rows(self) -> dict[str, dict[bytes, bytes]]:
        """Every row of the vault, authenticated: ``{category: {key: value}}``.

        What ``GranularStorage.load`` uses: one binary scan of the vault's rows, decrypted
        in one batch.  All or nothing: a row that fails authentication raises and nothing
        is returned.

        Raises:
            VaultLocked, VaultClosed: the vault cannot be read now.
            IntegrityError: a row fails authentication or is damaged.
            RollbackDetected: every row authenticates, but they are not the rows the
                state record vouches for (a row put back, deleted or re-inserted),
                or the vault is older than its anchor.
        """
        with self._mutex:
            cipher = self._unlocked()
            rows, record = self._pg.scan_with_state()
            opened = cipher.open_rows(rows, self._stored_category, self._stored_blob)
            self._check_rows(rows, record)
            return opened

    def _stored_category(self, name: object) -> str:
        try:
            return check_category(name)
        except (TypeError, ValueError):
            raise IntegrityError(
                f"vault {self.location} is corrupt: a row has an invalid category name"
            ) from None

    @staticmethod
    def _stored_blob(value: object) -> bytes:
        if not isinstance(value, bytes):
            raise IntegrityError("a stored row value is not a blob")
        return value

    def categories(self) -> list[str]:
        """The categories that hold at least one row, sorted."""
        with self._mutex:
            self._unlocked()
            names = self._backend.categories()
            self._forget_snapshot()
            self._snapshot_armed = True  # a load follows, most likely: read ahead
        for name in names:
            try:
                check_category(name)
            except ValueError:
                raise IntegrityError(
                    f"vault {self.location} is corrupt: a row has an invalid category name"
                ) from None
        return names

    # ------------------------------------------------------------------ reports

    def stats(self) -> StatsReport:
        """Rows and bytes per category and the nonce budget (no key needed)."""
        from keystore.reports import (
            REKEY_RECOMMENDED_AT,
            CategoryStats,
            KdfInfo,
            StatsReport,
        )

        with self._mutex:
            self._check_open()
            counts = self._backend.category_counts()
            encryptions = self._backend.encryptions()
            version = self._backend.schema_version()
        h = self._header
        kdf = (
            KdfInfo(kind="raw-key") if h.kdf is None else KdfInfo(
                kind="argon2id", time_cost=h.kdf.time_cost,
                memory_cost_kib=h.kdf.memory_cost, parallelism=h.kdf.parallelism,
            )
        )
        cats = {c: CategoryStats(rows=n, bytes=b) for c, n, b in counts}
        total_bytes = sum(b for _, _, b in counts)
        return StatsReport(
            path=self.location,
            store_id=h.store_id.hex(),
            schema_version=version,
            header_format=HEADER_FORMAT,
            sqlcipher=False,
            kdf=kdf,
            key_generation=h.key_generation,
            categories=cats,
            total_rows=sum(n for _, n, _ in counts),
            total_bytes=total_bytes,
            file_bytes=total_bytes,
            encryptions=encryptions,
            budget_used=encryptions / float(2**32),
            rekey_recommended=encryptions >= REKEY_RECOMMENDED_AT,
        )

    def verify(self) -> VerifyReport:
        """Decrypt and authenticate every row; list the failures (no plaintext).

        When every row authenticates, the set of rows is checked against the vault's
        state record too (docs/format.md §15).

        Raises:
            RollbackDetected: every row authenticates, but they are not the rows
                the state record vouches for (a row put back, deleted or re-inserted).
        """
        from keystore.reports import RowFailure, VerifyReport

        with self._mutex:
            cipher = self._unlocked()
            rows, record = self._pg.scan_with_state()
            failures = []
            for category, key_hash, blob in rows:
                try:
                    cipher.decrypt_row(category, key_hash, blob)
                except IntegrityError as exc:
                    failures.append(RowFailure(
                        category=category, key_hash=key_hash.hex(),
                        reason=str(exc).split(" in category")[0],
                    ))
            if not failures:
                self._check_rows(rows, record)
        return VerifyReport(ok=not failures, rows_checked=len(rows), failures=failures)


@dataclass(frozen=True, slots=True)
class PostgresAddress:
    """Where one vault lives in PostgreSQL: a database, and the vault's name or store id.

    What :class:`mls.MlsClient` and the ``mls-keystore`` command take in place of a
    file path, so the same code runs a client on a local file or on a shared server::

        where = PostgresAddress(dsn, name="alice")          # or PostgresDatabase(...)
        client = MlsClient.open(where, passphrase, timeout=10)

    ``database`` is a DSN/URL (the vault then opens a private connection that it
    closes with itself) or a :class:`~keystore.backends.postgres.PostgresDatabase`
    shared by every vault of a worker (one connection, one lease renewer).  Its
    ``repr`` never shows a password.  ``anchor`` is passed to the vault (see
    :meth:`PostgresVault.open`): the client then refuses a vault rolled back whole.
    """

    database: str | PostgresDatabase = field(repr=False)
    name: str | None = None
    store_id: bytes | None = None
    schema: str = DEFAULT_SCHEMA
    lease_ttl: float = DEFAULT_LEASE_TTL
    anchor: GenerationAnchor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.database, (str, PostgresDatabase)):
            raise TypeError("database must be a DSN string or a PostgresDatabase")
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ValueError("name must be a non-empty string or None")
        if self.store_id is not None and not isinstance(self.store_id, bytes):
            raise TypeError("store_id must be bytes or None")
        if self.name is not None and self.store_id is not None:
            raise ValueError("give the vault's name or its store id, not both")
        if self.anchor is not None and not isinstance(self.anchor, GenerationAnchor):
            raise TypeError("anchor must be a keystore.anchor.GenerationAnchor")

    def __repr__(self) -> str:
        where = (self.database.location if isinstance(self.database, PostgresDatabase)
                 else _redact(self.database))
        which = (f"name={self.name!r}" if self.name is not None else
                 f"store_id={self.store_id.hex()}" if self.store_id is not None else "new")
        return f"PostgresAddress({where}, {which})"

    def create_vault(
        self, passphrase: str | bytes, kdf: KdfParameters = RFC_9106_LOW_MEMORY
    ) -> PostgresVault:
        """A new passphrase vault here, unlocked and holding its lease (see ``create``).

        Raises:
            ValueError: the address names a store id (a new vault draws its own).
            FileExistsError: the name is taken.
        """
        self._check_new()
        return PostgresVault.create(self.database, passphrase, kdf, name=self.name,
                                    schema=self.schema, lease_ttl=self.lease_ttl,
                                    anchor=self.anchor)

    def create_vault_with_key(self, key: bytes) -> PostgresVault:
        """A new vault keyed by a caller-held 32-byte key (see ``create_with_key``)."""
        self._check_new()
        return PostgresVault.create_with_key(self.database, key, name=self.name,
                                             schema=self.schema, lease_ttl=self.lease_ttl,
                                             anchor=self.anchor)

    def open_vault(
        self, *, readonly: bool = False, timeout: float = 0.0, auto_migrate: bool = False
    ) -> PostgresVault:
        """Open the vault, locked; a writable open takes its lease (see ``open``).

        Raises:
            ValueError: the address names no vault.  NotAVault, VaultBusy: as ``open``.
        """
        if self.name is None and self.store_id is None:
            raise ValueError("the address names no vault: give name= or store_id=")
        return PostgresVault.open(self.database, store_id=self.store_id, name=self.name,
                                  readonly=readonly, timeout=timeout,
                                  auto_migrate=auto_migrate, schema=self.schema,
                                  lease_ttl=self.lease_ttl, anchor=self.anchor)

    def _check_new(self) -> None:
        if self.store_id is not None:
            raise ValueError("a new vault draws its own store id: address it by name")


def import_export_file(
    where: str | PostgresDatabase,
    in_path: str | os.PathLike[str],
    backup_passphrase: str | bytes,
    vault_passphrase: str | bytes,
    kdf: KdfParameters = RFC_9106_LOW_MEMORY,
    *,
    name: str | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> PostgresVault:
    """Restore an export file (``mls-keystore export``) into a NEW PostgreSQL vault.

    The whole file is authenticated before the vault is created, and its rows then
    land in one transaction, so a damaged file or a wrong passphrase leaves nothing
    in the database.  (The rows are held in memory meanwhile.)  Exporting a
    PostgreSQL vault needs nothing new: :func:`keystore.export.export_vault` reads
    any vault through ``stats``, ``categories`` and ``items``.

    Returns:
        The new vault, unlocked and holding its lease.

    Raises:
        WrongPassphrase, IntegrityError, SchemaTooNew: the export is unusable.
        FileExistsError: ``name`` is taken.
    """
    from pathlib import Path

    from keystore.export import read_export

    normalize_passphrase(vault_passphrase)
    with Path(in_path).open("rb") as fh:
        rows = [Change(c, k, v) for c, k, v in read_export(fh, backup_passphrase)]
    if len({(c.category, c.key) for c in rows}) != len(rows):
        raise IntegrityError("export file holds the same row twice")
    vault = PostgresVault.create(where, vault_passphrase, kdf, name=name, schema=schema)
    try:
        vault.apply(rows)
    except BaseException:
        vault.close()
        raise
    return vault


class PostgresSnapshot:
    """The rows of a PostgreSQL vault as of one statement; made by ``read_snapshot``."""

    __slots__ = ("_rows", "_vault", "rows")

    def __init__(self, vault: PostgresVault, rows: list[SealedRow]) -> None:
        self._vault = vault
        self._rows = rows
        #: How many rows the snapshot holds.
        self.rows = len(rows)

    def __iter__(self) -> Iterator[tuple[str, bytes, bytes]]:
        vault = self._vault
        for category, key_hash, blob in self._rows:
            with vault._mutex:
                cipher = vault._unlocked()
                name = vault._stored_category(category)
                key, value = cipher.decrypt_row(name, key_hash, blob)
            yield name, key, value
