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

The cipher and state layer — unlock, the state record, ``apply``, reads, passphrase
change, rekey, verify — is :class:`keystore.vault_core.VaultCore`, written once for
both backends; this module adds only what is particular to PostgreSQL: addressing a
vault in a database (by name or store id), the writer lease and its epoch, and the
schema checks of the database.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from keystore.anchor import GenerationAnchor
from keystore.backends.postgres import (
    DEFAULT_LEASE_TTL,
    DEFAULT_SCHEMA,
    IMPORTED_LEASE_EPOCH,
    PostgresBackend,
    PostgresDatabase,
    _redact,
)
from keystore.cipher import StoreCipher, check_raw_key, normalize_passphrase
from keystore.digest import DigestKeys, VaultState
from keystore.errors import IntegrityError
from keystore.header import KDF_ARGON2ID, KDF_RAW_KEY, Header
from keystore.profiles import RFC_9106_LOW_MEMORY, KdfParameters
from keystore.vault_core import (
    Change,
    Snapshot,
    VaultCore,
    _digest_keys,
    _wipe,
    new_header,
    open_header,
    seal_batch,
)

__all__ = [
    "PostgresAddress",
    "PostgresSnapshot",
    "PostgresVault",
    "import_export_file",
    "new_header",
    "open_header",
    "seal_batch",
]

#: A PostgreSQL vault's snapshot is the one :class:`~keystore.vault_core.Snapshot`
#: class; the name stays for code written against it.
PostgresSnapshot = Snapshot


# ---------------------------------------------------------------------- the vault


class PostgresVault(VaultCore):
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

    Everything above the stored bytes is :class:`~keystore.vault_core.VaultCore`,
    the same code as :class:`keystore.Vault`'s; this subclass adds the database
    handle, the vault's name, the lease (:attr:`lease_epoch`) and a read-ahead for
    whole-vault loads.  A subclass rather than one class with a backend argument:
    opening a vault in a database (by name or store id, taking the lease, checking
    the schema) has nothing in common with opening a file safely, and each keeps its
    own ``create``/``open`` signatures.
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
        super().__init__(backend, header, readonly=readonly, anchor=anchor)
        self._db = db
        self._pg = backend
        self._name = name
        self._owns_db = owns_db
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
        vault = cls._holding(db, header, name, epoch, (cipher, kek, digest, state),
                             owns=owns, anchor=anchor)
        # A new vault's record vouches for no rows: its (empty) set of value tails is
        # known, so its writes need not read back the rows they replace.
        vault._remember_tails([], [])
        vault._update_anchor(0)
        return vault

    @classmethod
    def _holding(
        cls,
        db: PostgresDatabase,
        header: Header,
        name: str | None,
        epoch: int,
        keys: tuple[StoreCipher, bytearray, DigestKeys, VaultState],
        *,
        owns: bool,
        anchor: GenerationAnchor | None = None,
    ) -> PostgresVault:
        """A vault object for a store this worker just wrote and holds the lease of
        (created or imported): unlocked with the keys that wrote it, nothing re-read."""
        lease = db.leases.adopt(header.store_id, epoch)
        vault = cls(db, db.backend(header.store_id, lease), header, name,
                    readonly=False, owns_db=owns, anchor=anchor)
        vault._cipher, vault._kek, vault._digest, vault._state = keys
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

    def _release(self) -> None:
        """Release the writer lease and, if this vault made it, the database handle."""
        if self._pg.lease is None and not self._owns_db:
            return
        self._pg.close()
        if self._owns_db:
            self._owns_db = False
            self._db.close()

    def _describe(self) -> str:
        return self._header.store_id.hex()

    # ------------------------------------------------------------------ properties

    @property
    def database(self) -> PostgresDatabase:
        """The database handle this vault was opened through."""
        return self._db

    @property
    def name(self) -> str | None:
        """The vault's unique name in its database, if it was given one."""
        return self._name

    @property
    def lease_epoch(self) -> int | None:
        """The fencing token this writer carries (``None`` when read-only or closed)."""
        lease = self._pg.lease
        return None if lease is None else lease.epoch

    # ------------------------------------------------------------------ hooks

    def _header_for_unlock(self) -> Header:
        """The header read at open, for the first unlock: it is current (we hold the
        lease, or read it a moment ago), so that unlock costs no round trip."""
        if self._header_fresh:
            self._header_fresh = False
            return self._header
        return self._read_stored_header()

    def _drop_keys(self) -> None:
        self._forget_snapshot()
        super()._drop_keys()

    def _before_write(self) -> None:
        self._forget_snapshot()

    # ------------------------------------------------------------------ rows

    def _forget_snapshot(self) -> None:
        self._snapshot, self._snapshot_armed = None, False
        self._snapshot_served = set()

    def _category_rows(self, category: str) -> list[tuple[bytes, bytes]]:
        """One category's rows; after ``categories()``, from a whole-vault read-ahead.

        Loading a whole vault (``categories()`` then ``items()`` of each) then costs
        two queries, not one per category: the first ``items()`` after
        ``categories()`` reads every row in one binary scan and serves the
        categories from it until each was served or the vault is written.  All of
        them then come from one consistent snapshot.
        """
        if self._snapshot is None and self._snapshot_armed:
            grouped: dict[str, list[tuple[bytes, bytes]]] = {}
            for cat, key_hash, blob in self._backend.scan_all():
                grouped.setdefault(cat, []).append((key_hash, blob))
            self._snapshot, self._snapshot_armed = grouped, False
        if self._snapshot is None:
            return self._backend.scan(category)
        rows = self._snapshot.get(category, [])
        self._snapshot_served.add(category)
        if self._snapshot_served >= self._snapshot.keys():
            self._forget_snapshot()
        return rows

    def categories(self) -> list[str]:
        """The categories that hold at least one row, sorted (arms the read-ahead)."""
        names = super().categories()
        with self._mutex:
            self._forget_snapshot()
            self._snapshot_armed = True  # a load follows, most likely: read ahead
        return names

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
    replace: bool = False,
) -> PostgresVault:
    """Restore an export file (``mls-keystore export``) into a NEW PostgreSQL vault.

    The whole file is authenticated first (its rows are held in memory meanwhile),
    then the new vault is made in ONE transaction: its store row and header, every
    row, a state record already at the generation the export carries (so an anchor
    that tracked the exported vault accepts it), and this worker's writer lease.  A
    damaged file, a wrong passphrase, a failure or a crash at any point therefore
    leaves either nothing in the database or the complete vault at that
    generation -- never an empty or partial vault, nor one at a lower generation.
    Exporting a PostgreSQL vault needs nothing new: :func:`keystore.export.export_vault`
    reads any vault.

    With ``replace``, a vault already named ``name`` is replaced by the new one in that
    same transaction, and only while no worker holds its lease; the new vault's
    generation is then above the replaced vault's too (read from its state record
    without its keys), so an anchor that tracked the replaced vault accepts it.

    Returns:
        The new vault, unlocked and holding its lease.

    Raises:
        WrongPassphrase, IntegrityError, SchemaTooNew: the export is unusable.
        FileExistsError: ``name`` is taken (without ``replace``).
        VaultBusy: (``replace``) a worker holds the vault named ``name``; nothing
            was written.
        VaultIOError: the server is unreachable.
    """
    from pathlib import Path

    from keystore.digest import RowSetDigest
    from keystore.export import ExportStream, generation_floor, record_generation

    if not isinstance(kdf, KdfParameters):
        raise TypeError("kdf must be a keystore.profiles.KdfParameters")
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError("name must be a non-empty string or None")
    if replace and name is None:
        raise ValueError("replace=True needs the name of the vault to replace")
    secret = normalize_passphrase(vault_passphrase)
    with Path(in_path).open("rb") as fh:
        stream = ExportStream(fh, backup_passphrase)
        rows = [Change(c, k, v) for c, k, v in stream]
    if len({(c.category, c.key) for c in rows}) != len(rows):
        raise IntegrityError("export file holds the same row twice")
    db, owns = PostgresVault._database(where, schema, DEFAULT_LEASE_TTL)
    try:
        db.check_schema()
        header, cipher, kek = new_header(KDF_ARGON2ID, kdf, secret)
        digest = _digest_keys(cipher)
        try:
            _, upserts, _ = seal_batch(cipher, rows)
            running = RowSetDigest(digest)
            running.add(upserts)
            states: list[VaultState] = []

            def seal(replaced: bytes | None) -> bytes:
                # Inside the import's transaction: the replaced vault is locked there.
                floor = generation_floor(stream.generation, record_generation(replaced))
                states.append(running.state(floor))
                return digest.seal(states[-1])

            db.import_store(header.to_bytes(), upserts, name=name, encryptions=len(upserts),
                            state=seal, hold_lease=True, replace=replace)
            state = states[-1]
        except BaseException:
            cipher.wipe()
            digest.wipe()
            _wipe(kek)
            raise
    except BaseException:
        if owns:
            db.close()
        raise
    return PostgresVault._holding(db, header, name, IMPORTED_LEASE_EPOCH,
                                  (cipher, kek, digest, state), owns=owns)
