"""The limits docs/threat-model.md admits, shown on real vaults (each would fail if the
limit were lifted, so the document has to change with the code)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from keystore import RollbackDetected, Vault
from keystore import sqlcipher as sqlcipher_layer
from tests.conftest import FAST_KDF, PASSPHRASE
from tests.docs import spec_reader


def _header_bytes(path: Path) -> bytes:
    conn = sqlite3.connect(path)
    try:
        (blob,) = conn.execute("SELECT header FROM keystore_header WHERE id = 1").fetchone()
    finally:
        conn.close()
    return bytes(blob)


def _stored_value(path: Path, category: str) -> tuple[bytes, bytes]:
    conn = sqlite3.connect(path)
    try:
        kh, value = conn.execute(
            "SELECT key_hash, value FROM keystore_rows WHERE category = ?", (category,)
        ).fetchone()
    finally:
        conn.close()
    return bytes(kh), bytes(value)


def _run_sql(path: Path, sql: str, params: tuple[object, ...]) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


def test_old_copy_of_a_row_authenticates_alone_but_the_rows_are_refused(
    vault_path: Path,
) -> None:
    """A row's earlier ciphertext, put back by someone with write access, still reads
    on its own, but a full read (verify, a load) refuses the set of rows."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        v.put("epochs", b"group", b"epoch 1")
    key_hash, old_value = _stored_value(vault_path, "epochs")
    with Vault.open(vault_path) as v:
        v.unlock(PASSPHRASE)
        v.put("epochs", b"group", b"epoch 2")
    _run_sql(
        vault_path, "UPDATE keystore_rows SET value = ? WHERE key_hash = ?", (old_value, key_hash)
    )
    with Vault.open(vault_path) as v:
        v.unlock(PASSPHRASE)
        assert v.get("epochs", b"group") == b"epoch 1"
        with pytest.raises(RollbackDetected):
            v.verify()


@pytest.mark.parametrize("kind", ["plain", "sqlcipher"])
def test_restoring_an_old_copy_of_the_whole_vault_is_not_detected(
    tmp_path: Path, kind: str
) -> None:
    """Files copied earlier and put back open and verify cleanly, with the old contents,
    unless the vault is opened with an anchor (tests/rollback)."""
    if kind == "sqlcipher" and not sqlcipher_layer.available():
        pytest.skip("the [sqlcipher] extra is not installed")
    path = tmp_path / "v.vault"
    with Vault.create(path, PASSPHRASE, kdf=FAST_KDF, sqlcipher=kind == "sqlcipher") as v:
        v.put("groups", b"g", b"before the join")
    saved = tmp_path / "saved"
    saved.mkdir()
    copies = [p for p in (path, path.with_name(path.name + ".header")) if p.exists()]
    for p in copies:
        shutil.copy2(p, saved / p.name)
    with Vault.open(path) as v:
        v.unlock(PASSPHRASE)
        v.put("groups", b"g", b"after the join")
    for p in copies:
        shutil.copy2(saved / p.name, p)
    with Vault.open(path) as v:
        v.unlock(PASSPHRASE)
        assert v.get("groups", b"g") == b"before the join"
        assert v.verify().ok


def test_a_deleted_row_is_detected(vault_path: Path) -> None:
    """Deleting a row behind the vault's back makes it absent from get(), and verify
    (like any full read) refuses the vault."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        v.put("key_packages", b"kp", b"private init key")
    _run_sql(vault_path, "DELETE FROM keystore_rows WHERE category = ?", ("key_packages",))
    with Vault.open(vault_path) as v:
        v.unlock(PASSPHRASE)
        assert v.get("key_packages", b"kp") is None
        with pytest.raises(RollbackDetected):
            v.verify()


def test_plain_vault_shows_categories_counts_and_sizes_without_a_passphrase(
    vault_path: Path,
) -> None:
    """Without SQLCipher, plain sqlite3 reads category names, row counts and exact sizes."""
    rows = {b"a": b"x" * 10, b"bb": b"y" * 500}
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        for key, value in rows.items():
            v.put("openmls/v1/key_package", key, value)
    conn = sqlite3.connect(vault_path)
    try:
        seen = conn.execute("SELECT category, LENGTH(value) FROM keystore_rows").fetchall()
    finally:
        conn.close()
    assert sorted(seen) == sorted(
        ("openmls/v1/key_package", 1 + 12 + 4 + len(k) + len(v) + 16) for k, v in rows.items()
    )


def test_old_header_and_old_passphrase_read_rows_written_after_a_passphrase_change(
    vault_path: Path,
) -> None:
    """Changing the passphrase keeps the data key: an old header opens today's rows."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        old_header = spec_reader.parse_header(_header_bytes(vault_path))
        v.change_passphrase(PASSPHRASE, "the new passphrase")
        v.put("secrets", b"written later", b"still readable")
    kh, stored = _stored_value(vault_path, "secrets")
    data_key, hash_key = spec_reader.unwrap(
        old_header, spec_reader.derive_kek(old_header, PASSPHRASE)
    )
    assert spec_reader.open_row(
        data_key, hash_key, old_header.store_id, "secrets", kh, stored
    ) == (b"written later", b"still readable")


def test_rekey_shuts_out_an_old_header(vault_path: Path) -> None:
    """After rekey, the data key in an old header (and old passphrase) opens no row."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        old_header = spec_reader.parse_header(_header_bytes(vault_path))
        v.put("secrets", b"k", b"v")
        v.change_passphrase(PASSPHRASE, "the new passphrase")
        v.rekey()
    kh, stored = _stored_value(vault_path, "secrets")
    data_key, hash_key = spec_reader.unwrap(
        old_header, spec_reader.derive_kek(old_header, PASSPHRASE)
    )
    with pytest.raises(InvalidTag):
        spec_reader.open_row(data_key, hash_key, old_header.store_id, "secrets", kh, stored)


def test_after_rekey_an_old_header_no_longer_confirms_guessed_row_keys(vault_path: Path) -> None:
    """Rekey rotates the hash key too, so an old header cannot confirm a guessed row key."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        old_header = spec_reader.parse_header(_header_bytes(vault_path))
        v.put("secrets", b"guessable group id", b"v")
        v.rekey()
    kh, _ = _stored_value(vault_path, "secrets")
    _, hash_key = spec_reader.unwrap(old_header, spec_reader.derive_kek(old_header, PASSPHRASE))
    assert spec_reader.key_hash(hash_key, "secrets", b"guessable group id") != kh


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_vault_files_are_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """The database, its WAL and its migration backup are created 0600 under any umask."""
    previous = os.umask(umask)
    try:
        path = tmp_path / "v.vault"
        with Vault.create(path, PASSPHRASE, kdf=FAST_KDF) as v:
            v.put("c", b"k", b"v")
            wal = Path(f"{path}-wal")
            assert stat.S_IMODE(wal.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(previous)


def test_lowering_the_nonce_counter_is_not_detected(vault_path: Path) -> None:
    """The encryption counter is not authenticated: resetting it only resets the report."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        for i in range(5):
            v.put("c", bytes([i]), b"v")
    _run_sql(
        vault_path, "UPDATE keystore_counters SET value = 0 WHERE name = ?", ("encryptions",)
    )
    with Vault.open(vault_path) as v:
        v.unlock(PASSPHRASE)
        assert v.stats().encryptions == 0
        assert v.verify().ok


def test_lock_and_header_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """The lock file (and a SQLCipher vault's header file) are created 0600 under umask 022."""
    sqlcipher = sqlcipher_layer.available()
    previous = os.umask(0o022)
    try:
        Vault.create(tmp_path / "v.vault", PASSPHRASE, kdf=FAST_KDF, sqlcipher=sqlcipher).close()
    finally:
        os.umask(previous)
    private = [tmp_path / "v.vault.lock"] + ([tmp_path / "v.vault.header"] if sqlcipher else [])
    assert [stat.S_IMODE(p.stat().st_mode) for p in private] == [0o600] * len(private)


def test_backups_and_exports_are_private(tmp_path: Path) -> None:
    """A migration backup and an export file are created 0600 under umask 022."""
    import shutil

    from keystore.export import export_vault
    from tests.fixtures.make_fixtures import PASSPHRASE as V1_PASSPHRASE

    previous = os.umask(0o022)
    try:
        old = tmp_path / "old.vault"
        shutil.copyfile(Path(__file__).parents[1] / "fixtures" / "vault_v1.sqlite", old)
        with Vault.open(old, auto_migrate=True) as v:
            v.unlock(V1_PASSPHRASE)
            export_vault(v, tmp_path / "out.export", "backup passphrase", kdf=FAST_KDF)
        (backup,) = tmp_path.glob("old.vault.*.bak")
        for made in (backup, tmp_path / "out.export"):
            assert stat.S_IMODE(made.stat().st_mode) == 0o600, made.name
    finally:
        os.umask(previous)
