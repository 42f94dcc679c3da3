"""Fixtures for the migration tests: copies of the version-1 fixture vault and
a test-only migration list with a data step (never shipped)."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from keystore import migrations
from keystore.cipher import StoreCipher, derive_wrapping_key, normalize_passphrase, unwrap_secrets
from keystore.header import Header
from tests.fixtures.make_fixtures import PASSPHRASE, VAULT_V1


@pytest.fixture
def v1_vault(tmp_path: Path) -> Path:
    """A private copy of the checked-in version-1 vault."""
    path = tmp_path / "old.vault"
    shutil.copyfile(VAULT_V1, path)
    return path


def connect(path: Path) -> sqlite3.Connection:
    """An autocommit connection, as the migration runner requires."""
    return sqlite3.connect(path, isolation_level=None)


def digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def unlock_cipher(conn: sqlite3.Connection, passphrase: str = PASSPHRASE) -> StoreCipher:
    """The store cipher of the vault behind ``conn``, from its header and passphrase."""
    header = Header.from_bytes(
        bytes(conn.execute("SELECT header FROM keystore_header").fetchone()[0])
    )
    kek = derive_wrapping_key(header, normalize_passphrase(passphrase))
    return StoreCipher(unwrap_secrets(kek, header), header.store_id)


def row_blobs(conn: sqlite3.Connection) -> dict[tuple[str, bytes], bytes]:
    """Every stored ciphertext by (category, key hash)."""
    rows = conn.execute("SELECT category, key_hash, value FROM keystore_rows").fetchall()
    return {(str(c), bytes(k)): bytes(v) for c, k, v in rows}


def reencrypt_rows(conn: sqlite3.Connection, cipher: StoreCipher) -> None:
    """Test-only data step: decrypt every row and store it under a fresh nonce."""
    for (category, key_hash), blob in row_blobs(conn).items():
        key, value = cipher.decrypt_row(category, key_hash, blob)
        conn.execute(
            "UPDATE keystore_rows SET value = ? WHERE category = ? AND key_hash = ?",
            (cipher.encrypt_row(category, key_hash, key, value), category, key_hash),
        )


#: The version the test-only data step produces: one past whatever ships today.
DATA_VERSION = migrations.LATEST_VERSION + 1
REENCRYPT = migrations.Migration(
    DATA_VERSION,
    "test only: re-encrypt every row",
    ("CREATE TABLE test_marker (x INTEGER)",),
    data=reencrypt_rows,
    python_id="tests.migrations.conftest.reencrypt_rows",
)
#: The shipped steps plus one data step; vaults migrated with it are "from the future".
WITH_DATA_STEP = (*migrations.MIGRATIONS, REENCRYPT)
