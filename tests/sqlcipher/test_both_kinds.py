"""The core vault behaviours hold on both kinds of vault: plain SQLite and SQLCipher."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from keystore import (
    Change,
    IntegrityError,
    Vault,
    VaultLocked,
    WrongPassphrase,
)
from keystore.export import export_vault, import_vault
from tests.conftest import FAST_KDF, PASSPHRASE
from tests.sqlcipher.helpers import open_raw, page_key_of

ROWS = {("groups", b"g1"): b"epoch 1", ("groups", b"g2"): b"epoch 2", ("psks", b"p"): b"psk"}


def _fill(v: Vault) -> None:
    v.apply(Change(c, k, val) for (c, k), val in ROWS.items())


def _contents(v: Vault) -> dict[tuple[str, bytes], bytes]:
    return {(c, k): val for c in v.categories() for k, val in v.items(c)}


def _tamper_first_row(path: Path, kind: str) -> None:
    conn = (
        sqlite3.connect(path, isolation_level=None)
        if kind == "plain"
        else open_raw(path, page_key_of(path, PASSPHRASE))
    )
    try:
        category, key_hash, blob = conn.execute(
            "SELECT category, key_hash, value FROM keystore_rows LIMIT 1"
        ).fetchone()
        flipped = bytearray(blob)
        flipped[20] ^= 0x01
        conn.execute(
            "UPDATE keystore_rows SET value = ? WHERE category = ? AND key_hash = ?",
            (bytes(flipped), category, key_hash),
        )
    finally:
        conn.close()


def test_round_trip(kind_vault: Vault) -> None:
    """Rows written with apply/put read back with get/items/categories; delete removes."""
    _fill(kind_vault)
    kind_vault.put("psks", b"q", b"other")
    kind_vault.delete("groups", b"g2")
    assert kind_vault.get("groups", b"g1") == b"epoch 1"
    assert kind_vault.get("groups", b"g2") is None
    assert kind_vault.categories() == ["groups", "psks"]
    assert dict(kind_vault.items("psks")) == {b"p": b"psk", b"q": b"other"}


def test_reopen_keeps_rows(kind_vault: Vault, vault_path: Path) -> None:
    """Rows survive close and reopen."""
    _fill(kind_vault)
    kind_vault.close()
    with Vault.open(vault_path) as v:
        v.unlock(PASSPHRASE)
        assert _contents(v) == ROWS


def test_lock_then_unlock(kind_vault: Vault) -> None:
    """A locked vault refuses reads; unlocking restores them."""
    _fill(kind_vault)
    kind_vault.lock()
    assert kind_vault.locked
    with pytest.raises(VaultLocked):
        kind_vault.get("groups", b"g1")
    kind_vault.unlock(PASSPHRASE)
    assert kind_vault.get("groups", b"g1") == b"epoch 1"


def test_wrong_passphrase(kind_vault: Vault, vault_path: Path) -> None:
    """A wrong passphrase raises WrongPassphrase and leaves the vault locked."""
    kind_vault.close()
    with Vault.open(vault_path) as v:
        with pytest.raises(WrongPassphrase):
            v.unlock("not the passphrase")
        assert v.locked


def test_change_passphrase(kind_vault: Vault, vault_path: Path) -> None:
    """After passwd the new passphrase unlocks, the old one does not, rows are intact."""
    _fill(kind_vault)
    kind_vault.change_passphrase(PASSPHRASE, "new passphrase")
    kind_vault.close()
    with Vault.open(vault_path) as v:
        with pytest.raises(WrongPassphrase):
            v.unlock(PASSPHRASE)
        v.unlock("new passphrase")
        assert _contents(v) == ROWS


def test_rekey_keeps_rows_and_bumps_generation(kind_vault: Vault, vault_path: Path) -> None:
    """Rekey re-encrypts every row: contents unchanged, key generation + 1, also after reopen."""
    _fill(kind_vault)
    kind_vault.rekey()
    assert _contents(kind_vault) == ROWS
    assert kind_vault.stats().key_generation == 2
    kind_vault.close()
    with Vault.open(vault_path) as v:
        v.unlock(PASSPHRASE)
        assert _contents(v) == ROWS
        assert v.stats().key_generation == 2


def test_verify_and_stats(kind_vault: Vault, vault_kind: str) -> None:
    """verify checks every row; stats counts rows per category and names the kind."""
    _fill(kind_vault)
    report = kind_vault.verify()
    assert report.ok and report.rows_checked == 3
    stats = kind_vault.stats()
    assert stats.sqlcipher is (vault_kind == "sqlcipher")
    assert {c: s.rows for c, s in stats.categories.items()} == {"groups": 2, "psks": 1}


def test_tampered_row_detected(kind_vault: Vault, vault_path: Path, vault_kind: str) -> None:
    """A row edited behind the vault's back fails with IntegrityError, and verify lists it."""
    _fill(kind_vault)
    _tamper_first_row(vault_path, vault_kind)
    with pytest.raises(IntegrityError):
        _contents(kind_vault)
    report = kind_vault.verify()
    assert not report.ok and len(report.failures) == 1


def test_raw_key_vault(vault_path: Path, vault_kind: str) -> None:
    """A vault keyed by a raw 32-byte key round-trips and reopens with that key."""
    key = os.urandom(32)
    with Vault.create_with_key(vault_path, key, sqlcipher=vault_kind == "sqlcipher") as v:
        _fill(v)
    with Vault.open(vault_path) as v:
        with pytest.raises(WrongPassphrase):
            v.unlock_with_key(os.urandom(32))
        v.unlock_with_key(key)
        assert _contents(v) == ROWS


def test_readonly_open_reads(kind_vault: Vault, vault_path: Path) -> None:
    """A read-only open beside the writer unlocks and reads the committed rows."""
    _fill(kind_vault)
    with Vault.open(vault_path, readonly=True) as reader:
        reader.unlock(PASSPHRASE)
        assert _contents(reader) == ROWS


def test_kind_survives_reopen(vault_path: Path, vault_kind: str) -> None:
    """A reopened vault reports the kind it was created as, before unlock."""
    sqlcipher = vault_kind == "sqlcipher"
    Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF, sqlcipher=sqlcipher).close()
    with Vault.open(vault_path) as v:
        assert v.sqlcipher is sqlcipher
        assert v.locked


def test_export_then_import(kind_vault: Vault, tmp_path: Path) -> None:
    """The export of either kind imports into a vault holding the same rows."""
    _fill(kind_vault)
    out = tmp_path / "backup.mlksx"
    export_vault(kind_vault, out, "backup pass", kdf=FAST_KDF)
    imported = tmp_path / "imported.vault"
    import_vault(out, imported, "backup pass", PASSPHRASE, kdf=FAST_KDF)
    with Vault.open(imported) as v:
        v.unlock(PASSPHRASE)
        assert _contents(v) == ROWS
