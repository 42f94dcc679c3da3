"""Schema migrations of a SQLCipher vault: refused without consent, run on unlock with a backup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keystore import MigrationRequired, Vault, VaultBusy, migrations
from keystore.cipher import StoreCipher, derive_wrapping_key, normalize_passphrase, wrap_secrets
from keystore.header import FLAG_SQLCIPHER, KDF_ARGON2ID, Header
from keystore.sidecar import Sidecar, sidecar_path_for
from keystore.sqlcipher import connect, derive_page_key
from tests.conftest import FAST_KDF, PASSPHRASE
from tests.sqlcipher.helpers import open_raw, page_key_of

OLD = migrations.LATEST_VERSION - 1
ROWS = {b"g1": b"epoch one", b"g2": b"epoch two"}

pytestmark = pytest.mark.skipif(OLD < 1, reason="needs a schema with at least two versions")


def _old_vault(path: Path) -> None:
    """A SQLCipher vault as an older release wrote it: schema OLD, two rows."""
    header = Header(
        store_id=os.urandom(16), kdf_id=KDF_ARGON2ID, kdf=FAST_KDF, salt=os.urandom(16),
        key_generation=1, wrap_nonce=bytes(12), wrapped=bytes(80), flags=FLAG_SQLCIPHER,
    )
    kek = derive_wrapping_key(header, normalize_passphrase(PASSPHRASE))
    cipher = StoreCipher.generate(header.store_id)
    header = wrap_secrets(kek, header, cipher.secrets())
    conn = connect(path, derive_page_key(cipher.secrets(), header.store_id),
                   readonly=False, create=True)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        migrations.migrate(conn, OLD)
        for key, value in ROWS.items():
            kh = cipher.key_hash("groups", key)
            conn.execute(
                "INSERT INTO keystore_rows (category, key_hash, value) VALUES (?, ?, ?)",
                ("groups", kh, cipher.encrypt_row("groups", kh, key, value)),
            )
    finally:
        conn.close()
    Sidecar(header, None, OLD).write(path, create=True)


def test_open_refuses_without_consent(vault_path: Path) -> None:
    """An older SQLCipher vault raises MigrationRequired on open, read-only or not."""
    _old_vault(vault_path)
    for readonly in (False, True):
        with pytest.raises(MigrationRequired):
            Vault.open(vault_path, readonly=readonly)


def test_unlock_migrates_with_backup(vault_path: Path) -> None:
    """auto_migrate upgrades on unlock, keeps the rows, updates the mirror, backs up first."""
    _old_vault(vault_path)
    with Vault.open(vault_path, auto_migrate=True) as v:
        assert v.schema_version == OLD  # locked: the header file's mirror
        v.unlock(PASSPHRASE)
        assert v.schema_version == migrations.LATEST_VERSION
        assert dict(v.items("groups")) == ROWS
    side = Sidecar.read(vault_path)
    assert side is not None and side.schema_version == migrations.LATEST_VERSION
    backup = vault_path.with_name(f"{vault_path.name}.v{OLD}.bak")
    assert sidecar_path_for(backup).exists()
    conn = open_raw(backup, page_key_of(backup, PASSPHRASE))
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (OLD,)
        assert conn.execute("SELECT count(*) FROM keystore_rows").fetchone() == (len(ROWS),)
    finally:
        conn.close()
    with Vault.open(vault_path) as v:  # no further migration needed
        v.unlock(PASSPHRASE)
        assert v.verify().ok


def test_migration_blocked_by_foreign_lock_is_busy(vault_path: Path) -> None:
    """A migration that cannot take SQLite's write lock raises VaultBusy; nothing migrates."""
    _old_vault(vault_path)
    foreign = open_raw(vault_path, page_key_of(vault_path, PASSPHRASE))
    try:
        foreign.execute("BEGIN IMMEDIATE")
        with Vault.open(vault_path, auto_migrate=True, busy_timeout=0.05) as v, pytest.raises(
            VaultBusy
        ):
            v.unlock(PASSPHRASE)
    finally:
        foreign.close()
    with Vault.open(vault_path, auto_migrate=True) as v:
        v.unlock(PASSPHRASE)  # and it migrates once the lock is gone
        assert v.schema_version == migrations.LATEST_VERSION
        assert dict(v.items("groups")) == ROWS
