"""What every vault promises, whatever stores it: one suite, run on each backend.

Each test runs on a vault file (:class:`keystore.Vault`) and on a vault in
PostgreSQL (:class:`keystore.PostgresVault`), through the public API only.  Damage
and rollback are made the way an attacker with write access to the storage would
make them: by editing the stored bytes directly (SQLite on the file, SQL on the
server), never through the vault.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from keystore import (
    Change,
    FileAnchor,
    IntegrityError,
    KeystoreError,
    PostgresVault,
    RollbackDetected,
    Vault,
    VaultIOError,
    VaultLocked,
    WrongPassphrase,
)
from keystore.export import export_vault, import_vault
from keystore.postgres_vault import import_export_file
from keystore.vault_core import VaultCore
from tests.conftest import FAST_KDF, PASSPHRASE

NEW_PASSPHRASE = "a new and longer passphrase"
BACKUP_PASSPHRASE = "backup passphrase"
ROWS = {
    ("groups", b"g1"): b"group state 1",
    ("groups", b"g2"): b"group state 2",
    ("keys", b"k1"): b"key package secret",
    ("psks", b"p1"): bytes(range(256)) * 8,
}

#: A sealed row as stored: ``(category, key_hash, value)``.
Stored = tuple[str, bytes, bytes]


class Backend(Protocol):
    """How a test makes, reopens and (as an attacker would) edits one vault."""

    name: str

    def create(self) -> VaultCore: ...
    def open(self, *, readonly: bool = False, anchor: FileAnchor | None = None) -> VaultCore: ...
    def stored_rows(self) -> list[Stored]: ...
    def set_value(self, category: str, key_hash: bytes, value: bytes) -> None: ...
    def delete_row(self, category: str, key_hash: bytes) -> None: ...
    def refuse_category(self, category: str) -> None: ...
    def save(self) -> object: ...
    def restore(self, saved: object) -> None: ...
    def import_new(self, export: Path) -> VaultCore: ...


class SqliteFile:
    """A vault file; edits go straight into the SQLite file."""

    name = "sqlite"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "conformance.vault"

    def create(self) -> VaultCore:
        return Vault.create(self.path, PASSPHRASE, kdf=FAST_KDF)

    def open(self, *, readonly: bool = False, anchor: FileAnchor | None = None) -> VaultCore:
        return Vault.open(self.path, readonly=readonly, anchor=anchor)

    def _sql(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def stored_rows(self) -> list[Stored]:
        return [(str(c), bytes(k), bytes(v)) for c, k, v in self._sql(
            "SELECT category, key_hash, value FROM keystore_rows ORDER BY category, key_hash"
        )]

    def set_value(self, category: str, key_hash: bytes, value: bytes) -> None:
        self._sql("UPDATE keystore_rows SET value = ? WHERE category = ? AND key_hash = ?",
                  (value, category, key_hash))

    def delete_row(self, category: str, key_hash: bytes) -> None:
        self._sql("DELETE FROM keystore_rows WHERE category = ? AND key_hash = ?",
                  (category, key_hash))

    def refuse_category(self, category: str) -> None:
        self._sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON keystore_rows"
            f" WHEN NEW.category = '{category}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )

    def save(self) -> object:
        return self.path.read_bytes()  # the vault is closed and checkpointed

    def restore(self, saved: object) -> None:
        assert isinstance(saved, bytes)
        for companion in (Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            companion.unlink(missing_ok=True)
        self.path.write_bytes(saved)

    def import_new(self, export: Path) -> VaultCore:
        target = self.folder / "imported.vault"
        import_vault(export, target, BACKUP_PASSPHRASE, PASSPHRASE, FAST_KDF)
        vault = Vault.open(target)
        vault.unlock(PASSPHRASE)
        return vault


class PostgresStore:
    """A vault in PostgreSQL; edits are SQL on its rows in the test's schema."""

    name = "postgres"

    def __init__(self, db: Any) -> None:
        self.db = db
        self.store_id = b""

    def create(self) -> VaultCore:
        vault = PostgresVault.create(self.db, PASSPHRASE, FAST_KDF, name="conformance")
        self.store_id = vault.store_id
        return vault

    def open(self, *, readonly: bool = False, anchor: FileAnchor | None = None) -> VaultCore:
        return PostgresVault.open(self.db, name="conformance", readonly=readonly,
                                  anchor=anchor)

    def _sql(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.db.dsn, autocommit=True) as conn:
            cur = conn.execute(sql.replace("{s}", self.db.schema), params)
            return cur.fetchall() if cur.description is not None else []

    def stored_rows(self) -> list[Stored]:
        return [(str(c), bytes(k), bytes(v)) for c, k, v in self._sql(
            "SELECT category, key_hash, value FROM {s}.rows WHERE store_id = %s"
            " ORDER BY category, key_hash", (self.store_id,)
        )]

    def set_value(self, category: str, key_hash: bytes, value: bytes) -> None:
        self._sql("UPDATE {s}.rows SET value = %s"
                  " WHERE store_id = %s AND category = %s AND key_hash = %s",
                  (value, self.store_id, category, key_hash))

    def delete_row(self, category: str, key_hash: bytes) -> None:
        self._sql("DELETE FROM {s}.rows WHERE store_id = %s AND category = %s"
                  " AND key_hash = %s", (self.store_id, category, key_hash))

    def refuse_category(self, category: str) -> None:
        self._sql("CREATE FUNCTION {s}.refuse() RETURNS trigger LANGUAGE plpgsql AS $$"
                  f" BEGIN IF NEW.category = '{category}' THEN RAISE EXCEPTION 'refused';"
                  " END IF; RETURN NEW; END $$")
        self._sql("CREATE TRIGGER refuse BEFORE INSERT ON {s}.rows FOR EACH ROW"
                  " EXECUTE FUNCTION {s}.refuse()")

    def save(self) -> object:
        rows = self._sql("SELECT category, key_hash, value FROM {s}.rows WHERE store_id = %s",
                         (self.store_id,))
        (store,) = self._sql("SELECT header, encryptions, state FROM {s}.stores"
                             " WHERE store_id = %s", (self.store_id,))
        return rows, store

    def restore(self, saved: object) -> None:
        assert isinstance(saved, tuple)
        rows: list[tuple[Any, ...]] = saved[0]
        header, encryptions, state = saved[1]
        self._sql("DELETE FROM {s}.rows WHERE store_id = %s", (self.store_id,))
        for category, key_hash, value in rows:
            self._sql("INSERT INTO {s}.rows (store_id, category, key_hash, value)"
                      " VALUES (%s, %s, %s, %s)", (self.store_id, category, key_hash, value))
        self._sql("UPDATE {s}.stores SET header = %s, encryptions = %s, state = %s"
                  " WHERE store_id = %s", (header, encryptions, state, self.store_id))

    def import_new(self, export: Path) -> VaultCore:
        return import_export_file(self.db, export, BACKUP_PASSPHRASE, PASSPHRASE, FAST_KDF,
                                  name="imported")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each backend in turn (PostgreSQL is skipped, with its reason, when no server runs)."""
    if request.param == "sqlite":
        return SqliteFile(tmp_path)
    return PostgresStore(request.getfixturevalue("pg_db"))


@pytest.fixture
def filled(backend: Backend) -> Iterator[VaultCore]:
    """A new vault holding ``ROWS`` (written in two batches), unlocked."""
    vault = backend.create()
    try:
        rows = [Change(c, k, v) for (c, k), v in ROWS.items()]
        vault.apply(rows[:2])
        vault.apply(rows[2:])
        yield vault
    finally:
        vault.close()


def _contents(vault: VaultCore) -> dict[tuple[str, bytes], bytes]:
    return {(c, k): v for c, rows in vault.open_rows().items() for k, v in rows.items()}


def _reopened(backend: Backend, vault: VaultCore, **kwargs: Any) -> VaultCore:
    vault.close()
    again = backend.open(**kwargs)
    again.unlock(PASSPHRASE)
    return again


# ---------------------------------------------------------------------- rows


def test_rows_read_back_through_every_read_path(filled: VaultCore) -> None:
    """get, items, categories, open_rows and read_snapshot all return what was written."""
    assert filled.get("groups", b"g1") == ROWS[("groups", b"g1")]
    assert filled.get("groups", b"absent") is None
    assert filled.categories() == ["groups", "keys", "psks"]
    assert dict(filled.items("groups")) == {b"g1": b"group state 1", b"g2": b"group state 2"}
    assert _contents(filled) == ROWS
    with filled.read_snapshot() as snap:
        assert snap.rows == len(ROWS)
        assert {(c, k): v for c, k, v in snap} == ROWS


def test_apply_coalesces_and_counts_distinct_rows(filled: VaultCore) -> None:
    """The last change to a row wins, a delete removes it, and the count is of rows."""
    written = filled.apply([
        Change("groups", b"g1", b"first"), Change("groups", b"g1", b"second"),
        Change("keys", b"k1", None),
    ])
    assert written == 2
    assert filled.get("groups", b"g1") == b"second"
    assert filled.get("keys", b"k1") is None


def test_a_batch_failing_in_storage_writes_nothing(backend: Backend, filled: VaultCore) -> None:
    """A batch the storage rejects half way (after some rows were written inside the
    transaction) leaves every row, the counter and the generation as they were."""
    before, generation = backend.stored_rows(), filled.generation
    encryptions = filled.stats().encryptions
    backend.refuse_category("zzz")
    with pytest.raises(KeystoreError):
        filled.apply([Change("aaa", b"new", b"x"), Change("groups", b"g1", b"changed"),
                      Change("keys", b"k1", None), Change("zzz", b"boom", b"y")])
    assert backend.stored_rows() == before
    assert filled.stats().encryptions == encryptions
    assert filled.generation == generation
    again = _reopened(backend, filled)
    try:
        assert _contents(again) == ROWS
        assert again.verify().ok
    finally:
        again.close()


def test_bad_input_is_refused_before_anything_is_written(
    backend: Backend, filled: VaultCore
) -> None:
    """A batch with one invalid change raises and writes none of the others."""
    before = backend.stored_rows()
    with pytest.raises(ValueError):
        filled.apply([Change("groups", b"g9", b"fine"), Change("bad category!", b"k", b"v")])
    with pytest.raises(TypeError):
        filled.apply([Change("groups", b"g9", b"fine"), Change("groups", "str key", b"v")])  # type: ignore[arg-type]
    assert backend.stored_rows() == before


def test_a_read_only_vault_refuses_writes(backend: Backend, filled: VaultCore) -> None:
    """Opened read-only, a vault reads but every write raises VaultIOError."""
    filled.close()
    with backend.open(readonly=True) as vault:
        vault.unlock(PASSPHRASE)
        assert _contents(vault) == ROWS
        with pytest.raises(VaultIOError):
            vault.put("groups", b"g1", b"x")


def test_a_locked_vault_reads_nothing(filled: VaultCore) -> None:
    """After lock() every read raises VaultLocked until the next unlock."""
    filled.lock()
    with pytest.raises(VaultLocked):
        filled.get("groups", b"g1")
    with pytest.raises(VaultLocked):
        filled.open_rows()
    filled.unlock(PASSPHRASE)
    assert filled.get("groups", b"g1") == ROWS[("groups", b"g1")]


# ---------------------------------------------------------------------- keys


def test_a_wrong_passphrase_is_refused_and_the_vault_stays_locked(
    backend: Backend, filled: VaultCore
) -> None:
    """unlock with a wrong passphrase raises WrongPassphrase; nothing can be read."""
    filled.close()
    with backend.open() as vault:
        with pytest.raises(WrongPassphrase):
            vault.unlock("not the passphrase")
        assert vault.locked
        with pytest.raises(VaultLocked):
            vault.get("groups", b"g1")


def test_passphrase_change_retires_the_old_passphrase(backend: Backend, filled: VaultCore) -> None:
    """After change_passphrase the old one is refused, the new one opens every row."""
    with pytest.raises(WrongPassphrase):
        filled.change_passphrase("not the passphrase", NEW_PASSPHRASE)
    filled.change_passphrase(PASSPHRASE, NEW_PASSPHRASE, kdf=FAST_KDF)
    filled.close()
    with backend.open() as vault:
        with pytest.raises(WrongPassphrase):
            vault.unlock(PASSPHRASE)
        vault.unlock(NEW_PASSPHRASE)
        assert _contents(vault) == ROWS


def test_rekey_replaces_every_stored_byte_and_keeps_the_rows(
    backend: Backend, filled: VaultCore
) -> None:
    """rekey gives every row a new key hash and ciphertext; the rows read the same,
    verify passes, the generation advances and the nonce counter restarts."""
    before = backend.stored_rows()
    generation = filled.generation
    assert generation is not None
    seen: list[tuple[int, int]] = []
    filled.rekey(progress=lambda done, total: seen.append((done, total)))
    after = backend.stored_rows()
    assert len(after) == len(before)
    assert not {k for _, k, _ in after} & {k for _, k, _ in before}
    assert not {v for _, _, v in after} & {v for _, _, v in before}
    assert seen[-1] == (len(ROWS), len(ROWS))
    assert filled.generation == generation + 1
    assert filled.stats().encryptions == len(ROWS)
    again = _reopened(backend, filled)
    try:
        assert _contents(again) == ROWS
        assert again.verify().ok
    finally:
        again.close()


def test_passphrase_change_with_rekey_leaves_old_rows_unreadable_to_old_keys(
    backend: Backend, filled: VaultCore
) -> None:
    """change_passphrase(rekey=True): new passphrase, new secrets, same rows."""
    before = backend.stored_rows()
    filled.change_passphrase(PASSPHRASE, NEW_PASSPHRASE, kdf=FAST_KDF, rekey=True)
    assert not {k for _, k, _ in backend.stored_rows()} & {k for _, k, _ in before}
    filled.close()
    with backend.open() as vault:
        with pytest.raises(WrongPassphrase):
            vault.unlock(PASSPHRASE)
        vault.unlock(NEW_PASSPHRASE)
        assert _contents(vault) == ROWS


# ---------------------------------------------------------------------- damage


def test_a_tampered_row_fails_authentication(backend: Backend, filled: VaultCore) -> None:
    """One flipped bit in a stored value: get raises IntegrityError, verify lists the
    row by category and key hash (no plaintext) and reports not ok."""
    category, key_hash, value = next(r for r in backend.stored_rows() if r[0] == "keys")
    backend.set_value(category, key_hash, value[:-1] + bytes([value[-1] ^ 1]))
    with pytest.raises(IntegrityError):
        filled.get("keys", b"k1")
    with pytest.raises(IntegrityError):
        filled.open_rows()
    report = filled.verify()
    assert not report.ok
    assert [(f.category, f.key_hash) for f in report.failures] == [("keys", key_hash.hex())]
    assert b"key package secret".hex() not in report.model_dump_json()


def test_a_row_moved_to_another_key_fails_authentication(
    backend: Backend, filled: VaultCore
) -> None:
    """A sealed value copied over another row's (both authentic) is refused: the AAD
    binds the value to its category and key hash."""
    rows = {(c, k): v for c, k, v in backend.stored_rows()}
    (g1, g2) = [k for c, k in rows if c == "groups"]
    backend.set_value("groups", g2, rows[("groups", g1)])
    with pytest.raises(IntegrityError):
        filled.open_rows()
    assert not filled.verify().ok


def test_verify_passes_on_an_intact_vault(filled: VaultCore) -> None:
    """verify authenticates every row and the row set against the state record."""
    report = filled.verify()
    assert report.ok
    assert report.rows_checked == len(ROWS)
    assert report.failures == []


# ---------------------------------------------------------------------- rollback


def test_an_old_version_of_a_row_put_back_is_a_rollback(
    backend: Backend, filled: VaultCore
) -> None:
    """An earlier sealed value of a row (authentic on its own) restored by whoever can
    write the storage: every whole read raises RollbackDetected."""
    (old,) = [r for r in backend.stored_rows() if r[0] == "keys"]
    filled.put("keys", b"k1", b"rotated secret")
    backend.set_value(*old)
    with pytest.raises(RollbackDetected):
        filled.open_rows()
    with pytest.raises(RollbackDetected):
        filled.verify()


def test_a_deleted_row_is_a_rollback(backend: Backend, filled: VaultCore) -> None:
    """A row removed behind the vault's back is detected at the next whole read."""
    category, key_hash, _ = backend.stored_rows()[0]
    backend.delete_row(category, key_hash)
    with pytest.raises(RollbackDetected):
        filled.open_rows()


def test_a_whole_vault_restored_from_an_old_copy_is_refused_by_its_anchor(
    backend: Backend, filled: VaultCore, tmp_path: Path
) -> None:
    """The whole vault (rows, header, state record) put back to an earlier copy is
    consistent in itself; the anchor kept elsewhere refuses it at unlock."""
    anchor = FileAnchor(tmp_path / "anchor.json")
    filled.close()
    with backend.open(anchor=anchor) as vault:
        vault.unlock(PASSPHRASE)
    saved = backend.save()
    with backend.open(anchor=anchor) as vault:
        vault.unlock(PASSPHRASE)
        vault.put("keys", b"k1", b"rotated secret")
    backend.restore(saved)
    with pytest.raises(RollbackDetected):
        vault = backend.open(anchor=anchor)
        try:
            vault.unlock(PASSPHRASE)
        finally:
            vault.close()


# ---------------------------------------------------------------------- export


def test_export_and_import_round_trip(
    backend: Backend, filled: VaultCore, tmp_path: Path
) -> None:
    """An export of the vault imports into a new vault of the same backend with every
    row, under a new store id."""
    export = tmp_path / "backup.mlsx"
    summary = export_vault(filled, export, BACKUP_PASSPHRASE, FAST_KDF)  # type: ignore[arg-type]
    assert summary.rows == len(ROWS)
    imported = backend.import_new(export)
    try:
        assert imported.store_id != filled.store_id
        assert _contents(imported) == ROWS
        assert imported.verify().ok
    finally:
        imported.close()


def test_both_vault_classes_run_the_same_vault_code() -> None:
    """Everything after opening is VaultCore's, not a per-backend copy: neither class
    overrides a method that handles keys, rows or the state record (PostgresVault's
    categories() only arms a read-ahead, then calls VaultCore's)."""
    shared = ["unlock", "unlock_with_key", "lock", "apply", "put", "delete", "get",
              "items", "open_rows", "read_snapshot", "verify", "stats",
              "change_passphrase", "change_key", "rekey", "_open_state", "_adopt_state",
              "_rekey", "_rewrap", "_check_state"]
    for cls in (Vault, PostgresVault):
        assert issubclass(cls, VaultCore)
        assert [m for m in shared if m in vars(cls)] == [], cls.__name__
