"""Vault.open_rows: every row in one scan, with every check a single-row read makes."""

from __future__ import annotations

from pathlib import Path

import pytest

from keystore import Change, IntegrityError, Vault, VaultClosed, VaultLocked
from tests.conftest import PASSPHRASE
from tests.keystore.helpers import raw_rows, write_raw

ROWS = [
    ("alpha", b"a1", b"value a1"),
    ("alpha", b"a2", b""),
    ("beta", b"", b"value of the empty key"),
    ("gamma/x", b"g" * 300, bytes(range(256)) * 8),
]


@pytest.fixture
def filled(vault: Vault) -> Vault:
    """A vault holding ROWS."""
    vault.apply(Change(c, k, v) for c, k, v in ROWS)
    return vault


def _key_hash_of(path: Path, category: str, before: set[tuple[str, bytes]]) -> bytes:
    ((cat, kh),) = set(raw_rows(path)) - before
    assert cat == category
    return kh


def test_open_rows_returns_every_row_by_category(filled: Vault) -> None:
    """All rows of all categories come back, the same as reading each category."""
    opened = filled.open_rows()
    assert opened == {
        "alpha": {b"a1": b"value a1", b"a2": b""},
        "beta": {b"": b"value of the empty key"},
        "gamma/x": {b"g" * 300: bytes(range(256)) * 8},
    }
    assert opened == {name: dict(filled.items(name)) for name in filled.categories()}


def test_open_rows_of_an_empty_vault_is_empty(vault: Vault) -> None:
    """An empty vault opens to an empty mapping (no category without rows)."""
    assert vault.open_rows() == {}
    vault.put("alpha", b"k", b"v")
    vault.delete("alpha", b"k")
    assert vault.open_rows() == {}


def test_open_rows_needs_an_unlocked_open_vault(filled: Vault) -> None:
    """A locked vault raises VaultLocked, a closed one VaultClosed."""
    filled.lock()
    with pytest.raises(VaultLocked):
        filled.open_rows()
    filled.unlock(PASSPHRASE)
    assert filled.open_rows()["alpha"][b"a1"] == b"value a1"
    filled.close()
    with pytest.raises(VaultClosed):
        filled.open_rows()


@pytest.mark.parametrize("index", [0, 1, 13, -1], ids=["format", "nonce", "ciphertext", "tag"])
def test_open_rows_detects_a_flipped_bit(filled: Vault, vault_path: Path, index: int) -> None:
    """One flipped bit in any stored value fails the whole scan, naming the row."""
    (category, kh), blob = next(
        (row, blob) for row, blob in raw_rows(vault_path).items() if row[0] == "beta"
    )
    flipped = bytearray(blob)
    flipped[index] ^= 0x01
    write_raw(
        vault_path, "UPDATE keystore_rows SET value = ? WHERE key_hash = ?", (bytes(flipped), kh)
    )
    with pytest.raises(IntegrityError) as info:
        filled.open_rows()
    assert info.value.category == category and info.value.key_hash == kh.hex()
    assert "empty key" not in str(info.value)


def test_open_rows_detects_truncated_and_non_blob_values(filled: Vault, vault_path: Path) -> None:
    """A value cut short, or a stored NULL/number/text, raises IntegrityError."""
    (_, kh), blob = next(iter(raw_rows(vault_path).items()))
    for bad in (blob[:5], b"", 42, "text"):
        write_raw(vault_path, "UPDATE keystore_rows SET value = ? WHERE key_hash = ?", (bad, kh))
        with pytest.raises(IntegrityError):
            filled.open_rows()


def test_open_rows_detects_a_value_moved_across_categories(
    filled: Vault, vault_path: Path
) -> None:
    """A ciphertext copied under another category's row fails (the AAD binds the category)."""
    rows = raw_rows(vault_path)
    alpha = next(blob for (c, _), blob in rows.items() if c == "alpha")
    beta_kh = next(kh for (c, kh) in rows if c == "beta")
    write_raw(
        vault_path, "UPDATE keystore_rows SET value = ? WHERE key_hash = ?", (alpha, beta_kh)
    )
    with pytest.raises(IntegrityError):
        filled.open_rows()


def test_open_rows_detects_a_damaged_category_name(filled: Vault, vault_path: Path) -> None:
    """A category name the vault never writes is reported as corruption."""
    write_raw(vault_path, "UPDATE keystore_rows SET category = '-bad' WHERE category = 'beta'")
    with pytest.raises(IntegrityError, match="invalid category name"):
        filled.open_rows()


def test_open_rows_checks_each_key_against_its_hash(vault: Vault, vault_path: Path) -> None:
    """A row authentic under the data key but filed under another key's hash is refused.

    Only a holder of the data key can make such a row (the AAD binds the key hash),
    so this is the check that catches a writer bug or a key-holding forger.
    """
    vault.put("alpha", b"real", b"v")
    before = set(raw_rows(vault_path))
    vault.put("alpha", b"other", b"w")
    other_kh = _key_hash_of(vault_path, "alpha", before)
    cipher = vault._cipher
    assert cipher is not None
    forged = cipher.encrypt_row("alpha", other_kh, b"real", b"forged")
    write_raw(
        vault_path, "UPDATE keystore_rows SET value = ? WHERE key_hash = ?", (forged, other_kh)
    )
    with pytest.raises(IntegrityError, match="does not match its hash"):
        vault.open_rows()
