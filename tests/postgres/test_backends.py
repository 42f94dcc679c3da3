"""Both storage backends keep the promises of ``keystore.backend.VaultBackend``.

The same tests run on :class:`keystore.backends.sqlite.SqliteBackend` (a vault file)
and :class:`keystore.backends.postgres.PostgresBackend` (a vault in PostgreSQL), and a
sealed row written through one decrypts when read through the other.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from keystore import PostgresDatabase, PostgresVault, Vault
from keystore.backend import VaultBackend
from keystore.backends.sqlite import SqliteBackend
from keystore.cipher import StoreCipher
from tests.postgres.conftest import FAST_KDF, PASSPHRASE


def _sqlite_backend(path: Path) -> tuple[SqliteBackend, bytes, sqlite3.Connection]:
    with Vault.create(path, PASSPHRASE, kdf=FAST_KDF) as v:
        store_id = v.store_id
    conn = sqlite3.connect(path, isolation_level=None)

    @contextlib.contextmanager
    def write_txn() -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    return SqliteBackend(path, lambda: conn, write_txn), store_id, conn


@pytest.fixture(params=["sqlite", "postgres"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[VaultBackend, StoreCipher]]:
    """A backend of a new, empty vault, and a cipher for its store id."""
    if request.param == "sqlite":
        b, store_id, conn = _sqlite_backend(tmp_path / "b.vault")
        try:
            yield b, StoreCipher.generate(store_id)
        finally:
            conn.close()
        return
    db = request.getfixturevalue("pg_db")
    assert isinstance(db, PostgresDatabase)
    with PostgresVault.create(db, PASSPHRASE, FAST_KDF) as v:
        store_id = v.store_id
    pb = db.backend(store_id, db.leases.acquire(store_id))
    try:
        yield pb, StoreCipher.generate(store_id)
    finally:
        pb.close()


def _row(cipher: StoreCipher, category: str, key: bytes, value: bytes) -> tuple[str, bytes, bytes]:
    key_hash = cipher.key_hash(category, key)
    return category, key_hash, cipher.encrypt_row(category, key_hash, key, value)


def test_a_backend_is_a_vault_backend(backend: tuple[VaultBackend, StoreCipher]) -> None:
    """Both classes satisfy the Protocol the vault is written against."""
    assert isinstance(backend[0], VaultBackend)


def test_apply_lands_upserts_deletes_and_the_counter_together(
    backend: tuple[VaultBackend, StoreCipher],
) -> None:
    """One apply: rows in, rows out, and the nonce counter grows by the upserts."""
    b, cipher = backend
    before = b.encryptions()
    a, c = _row(cipher, "cat", b"a", b"1"), _row(cipher, "cat", b"c", b"3")
    other = _row(cipher, "other", b"x", b"9")
    b.apply([a, c, other], [])
    assert b.encryptions() == before + 3
    b.apply([], [("cat", a[1])])
    assert b.encryptions() == before + 3
    assert b.get("cat", a[1]) is None
    assert b.get("cat", c[1]) == c[2]
    assert b.scan("cat") == [(c[1], c[2])]
    assert b.categories() == ["cat", "other"]
    assert sorted(b.scan_all()) == sorted([c, other])
    assert b.category_counts() == [("cat", 1, len(c[2])), ("other", 1, len(other[2]))]


def test_rewrite_replaces_values_header_and_counter(
    backend: tuple[VaultBackend, StoreCipher],
) -> None:
    """rewrite (a rekey) swaps every value, the header and the counter at once."""
    b, cipher = backend
    row = _row(cipher, "cat", b"k", b"old")
    b.apply([row], [])
    header = b.read_header()
    new = cipher.encrypt_row("cat", row[1], b"k", b"new")
    b.rewrite([("cat", row[1], new)], header, 1)
    assert b.get("cat", row[1]) == new
    assert b.encryptions() == 1
    assert b.read_header() == header
    b.write_header(header)
    assert b.read_header() == header
    assert b.schema_version() >= 1


def test_a_sealed_row_moves_between_backends_byte_for_byte(
    pg_db: PostgresDatabase, tmp_path: Path
) -> None:
    """A row sealed for a store id decrypts whichever backend stored it."""
    sq, store_id, conn = _sqlite_backend(tmp_path / "s.vault")
    try:
        cipher = StoreCipher.generate(store_id)
        row = _row(cipher, "groups", b"g1", b"group state")
        sq.apply([row], [])
        with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF) as v:
            pg_id = v.store_id
        pb = pg_db.backend(pg_id, pg_db.leases.acquire(pg_id))
        try:
            pb.apply(sq.scan_all(), [])
            stored = pb.get("groups", row[1])
            assert stored == row[2]
            assert cipher.decrypt_row("groups", row[1], stored) == (b"g1", b"group state")
        finally:
            pb.close()
    finally:
        conn.close()
