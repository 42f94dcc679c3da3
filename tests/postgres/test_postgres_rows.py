"""Rows are byte-identical on SQLite and PostgreSQL: a sealed row copied between the
two backends decrypts, because the AAD binds vault, category and key hash only."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from keystore import Vault
from keystore.backends.postgres import PostgresDatabase
from keystore.postgres_vault import PostgresVault
from tests.postgres.conftest import FAST_KDF, PASSPHRASE


def _sqlite_raw(path: Path) -> tuple[bytes, list[tuple[str, bytes, bytes]]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        header = bytes(conn.execute("SELECT header FROM keystore_header").fetchone()[0])
        rows = [(str(c), bytes(k), bytes(v)) for c, k, v in conn.execute(
            "SELECT category, key_hash, value FROM keystore_rows ORDER BY category, key_hash")]
    finally:
        conn.close()
    return header, rows


def test_a_sqlite_vault_imported_as_bytes_opens_on_postgres(
    pg_db: PostgresDatabase, tmp_path: Path
) -> None:
    """A SQLite vault's header and sealed rows, copied untouched, unlock and decrypt
    on PostgreSQL with the same passphrase."""
    path = tmp_path / "v.vault"
    with Vault.create(path, PASSPHRASE, kdf=FAST_KDF) as sv:
        sv.put("groups", b"g1", b"group state")
        sv.put("key_packages", b"kp", b"key package")
    header, rows = _sqlite_raw(path)
    store_id = pg_db.import_store(header, rows, name="moved")
    with PostgresVault.open(pg_db, name="moved") as pv:
        assert pv.store_id == store_id
        pv.unlock(PASSPHRASE)
        assert pv.get("groups", b"g1") == b"group state"
        assert pv.categories() == ["groups", "key_packages"]
        assert pv.verify().ok
        assert sorted(pv._backend.scan_all()) == sorted(rows)  # the very same bytes


def test_a_row_sealed_on_postgres_decrypts_in_the_sqlite_vault(
    pg_db: PostgresDatabase, tmp_path: Path
) -> None:
    """A row written through PostgresVault, copied into the SQLite file as it is,
    is read back by keystore.Vault; both backends hash the row key identically."""
    path = tmp_path / "v.vault"
    with Vault.create(path, PASSPHRASE, kdf=FAST_KDF) as sv:
        sv.put("groups", b"g1", b"from sqlite")
    header, rows = _sqlite_raw(path)
    pg_db.import_store(header, rows, name="shared")
    with PostgresVault.open(pg_db, name="shared") as pv:
        pv.unlock(PASSPHRASE)
        pv.put("groups", b"g2", b"from postgres")
        pg_rows = {(c, k): v for c, k, v in pv._backend.scan_all()}
    (g2,) = [key for key in pg_rows if key not in {(c, k) for c, k, _ in rows}]
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO keystore_rows (category, key_hash, value) VALUES (?, ?, ?)",
                 (g2[0], g2[1], pg_rows[g2]))
    conn.commit()
    conn.close()
    with Vault.open(path) as sv:
        sv.unlock(PASSPHRASE)
        assert sv.get("groups", b"g2") == b"from postgres"
        assert sv.verify().ok
