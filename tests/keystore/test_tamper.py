"""Tampering with the file behind the vault's back is detected, never silently accepted."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from keystore import IntegrityError, Vault, WrongPassphrase
from tests.conftest import FAST_KDF, PASSPHRASE
from tests.keystore.helpers import raw_rows, write_raw

VALUE_OFFSET_NONCE = 1
VALUE_OFFSET_CIPHERTEXT = 13


def _flip(blob: bytes, index: int) -> bytes:
    out = bytearray(blob)
    out[index] ^= 0x01
    return bytes(out)


def _replace_value(path: Path, key_hash: bytes, blob: bytes) -> None:
    write_raw(path, "UPDATE keystore_rows SET value = ? WHERE key_hash = ?", (blob, key_hash))


Hashes = dict[tuple[str, bytes], bytes]
ROWS = [("alpha", b"a1"), ("alpha", b"a2"), ("beta", b"b1"), ("beta", b"b2")]


@pytest.fixture
def hashes(vault: Vault, vault_path: Path) -> Hashes:
    """Two rows in each of two categories; maps (category, key) to its stored key hash."""
    found: Hashes = {}
    for category, key in ROWS:
        before = set(raw_rows(vault_path))
        vault.put(category, key, b"value " + key)
        ((_, kh),) = set(raw_rows(vault_path)) - before
        found[(category, key)] = kh
    return found


@pytest.mark.parametrize(
    "index",
    [0, VALUE_OFFSET_NONCE, VALUE_OFFSET_NONCE + 11, VALUE_OFFSET_CIPHERTEXT, -1],
    ids=["format-byte", "nonce-first", "nonce-last", "ciphertext", "tag"],
)
def test_bit_flip_in_value_detected(
    vault: Vault, vault_path: Path, hashes: dict[tuple[str, bytes], bytes], index: int
) -> None:
    """One flipped bit anywhere in a stored value raises IntegrityError naming the row."""
    kh = hashes[("alpha", b"a1")]
    blob = raw_rows(vault_path)[("alpha", kh)]
    _replace_value(vault_path, kh, _flip(blob, index))
    with pytest.raises(IntegrityError) as info:
        vault.get("alpha", b"a1")
    assert info.value.category == "alpha" and info.value.key_hash == kh.hex()
    assert "value a1" not in str(info.value)


def test_truncated_value_detected(vault: Vault, vault_path: Path, hashes: Hashes) -> None:
    """A value cut short raises IntegrityError."""
    kh = hashes[("alpha", b"a1")]
    blob = raw_rows(vault_path)[("alpha", kh)]
    for cut in (0, 5, len(blob) - 1):
        _replace_value(vault_path, kh, blob[:cut])
        with pytest.raises(IntegrityError):
            vault.get("alpha", b"a1")


def test_swapped_rows_same_category_detected(
    vault: Vault, vault_path: Path, hashes: Hashes
) -> None:
    """Swapping two ciphertexts within a category fails authentication (AAD binds the key)."""
    k1 = hashes[("alpha", b"a1")]
    k2 = hashes[("alpha", b"a2")]
    rows = raw_rows(vault_path)
    _replace_value(vault_path, k1, rows[("alpha", k2)])
    _replace_value(vault_path, k2, rows[("alpha", k1)])
    for key in (b"a1", b"a2"):
        with pytest.raises(IntegrityError):
            vault.get("alpha", key)


def test_value_moved_across_categories_detected(
    vault: Vault, vault_path: Path, hashes: Hashes
) -> None:
    """A ciphertext copied into another category fails authentication (AAD binds the category)."""
    ka = hashes[("alpha", b"a1")]
    kb = hashes[("beta", b"b1")]
    rows = raw_rows(vault_path)
    _replace_value(vault_path, kb, rows[("alpha", ka)])
    with pytest.raises(IntegrityError):
        vault.get("beta", b"b1")


def test_row_moved_with_its_hash_to_another_category_detected(
    vault: Vault, vault_path: Path, hashes: Hashes
) -> None:
    """Re-labelling a whole row (hash and value) with another category is detected."""
    ka = hashes[("alpha", b"a1")]
    write_raw(vault_path, "UPDATE keystore_rows SET category = 'beta' WHERE key_hash = ?", (ka,))
    report = vault.verify()
    assert not report.ok and report.failures[0].category == "beta"


def test_value_moved_to_another_vault_detected(tmp_path: Path) -> None:
    """A ciphertext from one vault does not authenticate in another, even with the same keys
    arrangement (the per-vault store id and keys differ)."""
    a = Vault.create(tmp_path / "a", PASSPHRASE, kdf=FAST_KDF)
    b = Vault.create(tmp_path / "b", PASSPHRASE, kdf=FAST_KDF)
    a.put("c", b"k", b"from a")
    b.put("c", b"k", b"from b")
    ((_, blob_a),) = raw_rows(tmp_path / "a").items()
    write_raw(tmp_path / "b", "UPDATE keystore_rows SET value = ?", (blob_a,))
    with pytest.raises(IntegrityError):
        b.get("c", b"k")
    a.close()
    b.close()


def _header(path: Path) -> bytes:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return bytes(conn.execute("SELECT header FROM keystore_header").fetchone()[0])
    finally:
        conn.close()


# Offsets into the header layout of keystore/header.py.
HEADER_FIELDS = {
    "flags": 5,
    "store_id": 6,
    "kdf_time_cost": 26,
    "kdf_memory_cost": 30,
    "kdf_parallelism": 34,
    "salt": 40,
    "key_generation": 55,
    "wrap_nonce": 60,
    "wrapped_key": 100,
}


@pytest.mark.parametrize("offset", HEADER_FIELDS.values(), ids=HEADER_FIELDS.keys())
def test_header_edit_detected_on_unlock(vault_path: Path, offset: int) -> None:
    """Editing any header field makes unlock fail (tag over the whole header) or parse fail."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        v.put("c", b"k", b"v")
    header = _header(vault_path)
    write_raw(vault_path, "UPDATE keystore_header SET header = ?", (_flip(header, offset),))
    with pytest.raises((WrongPassphrase, IntegrityError)):
        v2 = Vault.open(vault_path)
        try:
            v2.unlock(PASSPHRASE)
        finally:
            v2.close()


def test_header_swapped_from_other_vault_fails_rows(tmp_path: Path) -> None:
    """Another vault's header (same passphrase) unwraps, but its keys do not open this
    vault's state record: the unlock is refused and the vault stays locked."""
    with Vault.create(tmp_path / "a", PASSPHRASE, kdf=FAST_KDF) as a:
        a.put("c", b"k", b"v")
    Vault.create(tmp_path / "b", PASSPHRASE, kdf=FAST_KDF).close()
    write_raw(tmp_path / "a", "UPDATE keystore_header SET header = ?", (_header(tmp_path / "b"),))
    with Vault.open(tmp_path / "a") as a:
        with pytest.raises(IntegrityError):
            a.unlock(PASSPHRASE)
        assert a.locked


def test_missing_header_row_detected(vault_path: Path) -> None:
    """A vault whose header row was deleted does not open."""
    Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF).close()
    write_raw(vault_path, "DELETE FROM keystore_header")
    with pytest.raises(IntegrityError):
        Vault.open(vault_path)
