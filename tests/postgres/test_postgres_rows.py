"""Rows are byte-identical on SQLite and PostgreSQL: a sealed row copied between the
two backends decrypts, because the AAD binds vault, category and key hash only."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from keystore import Change, RollbackDetected, Vault
from keystore.backends.postgres import PostgresDatabase
from keystore.postgres_vault import PostgresVault
from tests.postgres.conftest import FAST_KDF, PASSPHRASE


def _sqlite_raw(path: Path) -> tuple[bytes, list[tuple[str, bytes, bytes]], bytes]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        header = bytes(conn.execute("SELECT header FROM keystore_header").fetchone()[0])
        rows = [(str(c), bytes(k), bytes(v)) for c, k, v in conn.execute(
            "SELECT category, key_hash, value FROM keystore_rows ORDER BY category, key_hash")]
        record = bytes(conn.execute("SELECT record FROM keystore_state").fetchone()[0])
    finally:
        conn.close()
    return header, rows, record


def test_a_sqlite_vault_imported_as_bytes_opens_on_postgres(
    pg_db: PostgresDatabase, tmp_path: Path
) -> None:
    """A SQLite vault's header, sealed rows and state record, copied untouched, unlock
    and decrypt on PostgreSQL with the same passphrase, and the record vouches for the
    rows there too (the same contributions, the same record bytes)."""
    path = tmp_path / "v.vault"
    with Vault.create(path, PASSPHRASE, kdf=FAST_KDF) as sv:
        sv.put("groups", b"g1", b"group state")
        sv.put("key_packages", b"kp", b"key package")
        generation = sv.generation
    header, rows, record = _sqlite_raw(path)
    store_id = pg_db.import_store(header, rows, name="moved", state=record)
    with PostgresVault.open(pg_db, name="moved") as pv:
        assert pv.store_id == store_id
        pv.unlock(PASSPHRASE)
        assert pv.generation == generation == 2
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
    header, rows, record = _sqlite_raw(path)
    pg_db.import_store(header, rows, name="shared", state=record)
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
        # The row authenticates, but it went in behind the SQLite vault's back, so
        # its state record does not vouch for it: a full read says so.
        with pytest.raises(RollbackDetected, match="added or re-inserted"):
            sv.verify()


def test_export_from_postgres_and_import_into_either_backend(
    pg_db: PostgresDatabase, tmp_path: Path
) -> None:
    """An export of a PostgreSQL vault restores into SQLite, and a SQLite export into
    PostgreSQL, with every row intact."""
    from keystore.export import export_vault, import_vault
    from keystore.postgres_vault import import_export_file

    rows = {("groups", b"g%d" % i): b"state %d" % i for i in range(30)}
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="src") as pv:
        pv.apply([Change(c, k, v) for (c, k), v in rows.items()])
        export_vault(pv, tmp_path / "pg.export", "backup pass", FAST_KDF)
    import_vault(tmp_path / "pg.export", tmp_path / "restored.vault", "backup pass",
                 PASSPHRASE, FAST_KDF)
    with Vault.open(tmp_path / "restored.vault") as sv:
        sv.unlock(PASSPHRASE)
        assert {("groups", k): v for k, v in sv.items("groups")} == rows
        export_vault(sv, tmp_path / "sqlite.export", "backup pass", FAST_KDF)
    with import_export_file(pg_db, tmp_path / "sqlite.export", "backup pass", PASSPHRASE,
                            FAST_KDF, name="restored") as back:
        assert {("groups", k): v for k, v in back.items("groups")} == rows
        assert back.store_id != pg_db.find_store(store_id=None, name="src")[0]


def test_a_damaged_export_leaves_nothing_in_the_database(
    pg_db: PostgresDatabase, tmp_path: Path
) -> None:
    """A wrong backup passphrase or a flipped byte creates no vault."""
    import pytest

    from keystore import IntegrityError, WrongPassphrase
    from keystore.export import export_vault
    from keystore.postgres_vault import import_export_file

    with Vault.create(tmp_path / "v", PASSPHRASE, kdf=FAST_KDF) as sv:
        sv.put("c", b"k", b"v" * 5000)
        export_vault(sv, tmp_path / "e", "backup pass", FAST_KDF)
    with pytest.raises(WrongPassphrase):
        import_export_file(pg_db, tmp_path / "e", "wrong", PASSPHRASE, FAST_KDF, name="x")
    data = bytearray((tmp_path / "e").read_bytes())
    data[-40] ^= 1
    (tmp_path / "e").write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        import_export_file(pg_db, tmp_path / "e", "backup pass", PASSPHRASE, FAST_KDF, name="x")
    assert pg_db.list_stores() == []
