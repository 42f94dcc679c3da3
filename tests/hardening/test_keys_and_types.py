"""Column types of header and meta rows; passphrase change with rekey; secret files."""

from __future__ import annotations

import os
import sqlite3
import warnings
from pathlib import Path

import pytest

from keystore import (
    InsecurePermissionsWarning,
    IntegrityError,
    UnsafeFile,
    Vault,
    VaultIOError,
    VaultLocked,
    WrongPassphrase,
    read_secret_file,
)
from keystore import sqlcipher as sqlcipher_layer
from keystore.cipher import StoreCipher, derive_wrapping_key, unwrap_secrets
from keystore.header import Header
from tests.conftest import FAST_KDF, PASSPHRASE
from tests.keystore.helpers import raw_rows, write_raw

NEW_PASSPHRASE = "a brand new passphrase"


def _sql(path: Path, statement: str, params: tuple[object, ...] = ()) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(statement, params)
    finally:
        conn.close()


def _header_blob(path: Path) -> bytes:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return bytes(conn.execute("SELECT header FROM keystore_header").fetchone()[0])
    finally:
        conn.close()


# ---------------------------------------------------------------------- column types


@pytest.mark.parametrize(
    "stored", ["a text header", 3.25, 10**18, 2**63 - 1, b"\x00" * 100_000],
    ids=["text", "real", "huge-integer", "max-integer", "oversized-blob"],
)
def test_header_of_the_wrong_type_is_an_integrity_error(vault_path: Path, stored: object) -> None:
    """A header stored as TEXT, REAL or a huge INTEGER is IntegrityError on open — not
    TypeError, nor MemoryError from ``bytes(10**18)``."""
    Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF).close()
    _sql(vault_path, "UPDATE keystore_header SET header = ?", (stored,))
    with pytest.raises(IntegrityError, match="header is stored as"):
        Vault.open(vault_path)


@pytest.mark.parametrize("stored", ["many", 1.5, b"\x01"], ids=["text", "real", "blob"])
def test_nonce_counter_of_the_wrong_type_is_an_integrity_error(
    vault_path: Path, stored: object
) -> None:
    """The encryption counter read back as TEXT/REAL/BLOB makes stats() an IntegrityError."""
    Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF).close()
    _sql(vault_path, "UPDATE keystore_counters SET value = ? WHERE name = 'encryptions'",
         (stored,))
    with Vault.open(vault_path) as v, pytest.raises(IntegrityError, match="nonce counter"):
        v.stats()


def test_migration_record_of_the_wrong_type_is_an_integrity_error(vault_path: Path) -> None:
    """A migration record whose name is a BLOB is IntegrityError on open."""
    Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF).close()
    _sql(vault_path, "UPDATE keystore_migrations SET name = x'00ff' WHERE version = 1")
    with pytest.raises(IntegrityError, match="migration record"):
        Vault.open(vault_path)


@pytest.mark.skipif(not sqlcipher_layer.available(), reason="the [sqlcipher] extra is missing")
def test_key_generation_counter_of_the_wrong_type_is_an_integrity_error(
    vault_path: Path,
) -> None:
    """A SQLCipher vault whose key-generation counter is TEXT fails unlock cleanly."""
    Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF, sqlcipher=True).close()
    write_raw(vault_path, "UPDATE keystore_counters SET value = 'two' WHERE name = ?",
              ("key_generation",))
    with Vault.open(vault_path) as v, pytest.raises(IntegrityError, match="key-generation"):
        v.unlock(PASSPHRASE)


# ---------------------------------------------------------------------- passphrase + rekey


def _old_secrets(header_blob: bytes, passphrase: str) -> StoreCipher:
    header = Header.from_bytes(header_blob)
    return StoreCipher(
        unwrap_secrets(derive_wrapping_key(header, passphrase.encode()), header), header.store_id
    )


def test_change_passphrase_with_rekey_revokes_an_old_header(vault_path: Path) -> None:
    """Someone with an old header and the old passphrase reads nothing written after
    change_passphrase(rekey=True): no row decrypts, no row key is recognized."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        v.put("groups", b"group-id", b"before")
        old_header = _header_blob(vault_path)
        v.change_passphrase(PASSPHRASE, NEW_PASSPHRASE, rekey=True)
        v.put("groups", b"group-id", b"after")
        v.put("groups", b"new-group", b"after too")
    old = _old_secrets(old_header, PASSPHRASE)
    stored = raw_rows(vault_path)
    assert len(stored) == 2
    for (category, key_hash), blob in stored.items():
        with pytest.raises(IntegrityError):
            old.decrypt_row(category, key_hash, blob)
        assert key_hash not in {old.key_hash("groups", b"group-id"),
                                old.key_hash("groups", b"new-group")}
    with Vault.open(vault_path) as v:
        with pytest.raises(WrongPassphrase):
            v.unlock(PASSPHRASE)
        v.unlock(NEW_PASSPHRASE)
        assert v.get("groups", b"group-id") == b"after"
        assert v.stats().key_generation == 2


def test_change_passphrase_without_rekey_still_lets_an_old_header_in(vault_path: Path) -> None:
    """The documented default: a plain rewrap keeps the secrets (O(1)), so the old header
    still opens later rows; this is why rekey=True exists."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        old_header = _header_blob(vault_path)
        v.change_passphrase(PASSPHRASE, NEW_PASSPHRASE)
        v.put("groups", b"g", b"after")
    old = _old_secrets(old_header, PASSPHRASE)
    ((category, key_hash), blob), = raw_rows(vault_path).items()
    assert old.decrypt_row(category, key_hash, blob) == (b"g", b"after")


def test_change_passphrase_with_rekey_is_one_transaction(vault_path: Path) -> None:
    """A failure while rewriting rows leaves the old passphrase and the old rows in force."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        v.put("groups", b"g", b"v")
        before = raw_rows(vault_path), _header_blob(vault_path)

        def boom(done: int, _total: int) -> None:
            raise RuntimeError("interrupted")

        with pytest.raises(RuntimeError):
            v.change_passphrase(PASSPHRASE, NEW_PASSPHRASE, rekey=True, progress=boom)
        assert (raw_rows(vault_path), _header_blob(vault_path)) == before
        assert v.get("groups", b"g") == b"v"
    with Vault.open(vault_path) as v:
        v.unlock(PASSPHRASE)


@pytest.mark.skipif(not sqlcipher_layer.available(), reason="the [sqlcipher] extra is missing")
def test_change_passphrase_with_rekey_on_sqlcipher(vault_path: Path) -> None:
    """On a SQLCipher vault the rewrap and rekey both happen; the new passphrase opens it."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF, sqlcipher=True) as v:
        v.put("groups", b"g", b"v")
        v.change_passphrase(PASSPHRASE, NEW_PASSPHRASE, rekey=True)
        assert v.stats().key_generation == 2
    with Vault.open(vault_path) as v:
        v.unlock(NEW_PASSPHRASE)
        assert v.get("groups", b"g") == b"v"


def test_change_passphrase_with_rekey_needs_the_keys(vault_path: Path) -> None:
    """rekey=True on a locked vault raises VaultLocked before anything is derived or written."""
    Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF).close()
    before = _header_blob(vault_path)
    with Vault.open(vault_path) as v, pytest.raises(VaultLocked):
        v.change_passphrase(PASSPHRASE, NEW_PASSPHRASE, rekey=True)
    assert _header_blob(vault_path) == before


@pytest.mark.parametrize("unlocked", [True, False], ids=["unlocked", "locked"])
def test_change_passphrase_refuses_another_vaults_header(tmp_path: Path, unlocked: bool) -> None:
    """A header swapped in from another vault with the same passphrase is refused (store id
    / key check) instead of re-keying this vault to secrets that read none of its rows."""
    a, b = tmp_path / "a.vault", tmp_path / "b.vault"
    Vault.create(b, PASSPHRASE, kdf=FAST_KDF).close()
    with Vault.create(a, PASSPHRASE, kdf=FAST_KDF) as v:
        v.put("c", b"k", b"v")
    foreign = _header_blob(b)
    with Vault.open(a) as v:
        if unlocked:
            v.unlock(PASSPHRASE)
        write_raw(a, "UPDATE keystore_header SET header = ?", (foreign,))
        with pytest.raises(IntegrityError, match=r"another vault|does not wrap"):
            v.change_passphrase(PASSPHRASE, NEW_PASSPHRASE)
    assert _header_blob(a) == foreign  # nothing was written


def test_change_passphrase_refuses_a_header_with_other_keys_same_store_id(
    vault_path: Path,
) -> None:
    """The key check: a header with our store id but other secrets (an attacker's own wrap)
    is refused by an unlocked vault."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        v.put("c", b"k", b"v")
        header = Header.from_bytes(_header_blob(vault_path))
        from keystore.cipher import wrap_secrets

        kek = derive_wrapping_key(header, PASSPHRASE.encode())
        forged = wrap_secrets(kek, header, bytearray(os.urandom(64)))
        write_raw(vault_path, "UPDATE keystore_header SET header = ?", (forged.to_bytes(),))
        with pytest.raises(IntegrityError, match="does not wrap"):
            v.change_passphrase(PASSPHRASE, NEW_PASSPHRASE)


# ---------------------------------------------------------------------- secret files


def test_secret_file_readable_by_others_warns(tmp_path: Path) -> None:
    """A passphrase file others can read is read, with an InsecurePermissionsWarning."""
    f = tmp_path / "pass.txt"
    f.write_bytes(b"secret\n")
    f.chmod(0o644)
    with pytest.warns(InsecurePermissionsWarning, match="can be read by other users"):
        assert read_secret_file(f) == b"secret\n"


def test_private_secret_file_does_not_warn(tmp_path: Path) -> None:
    """An owner-only passphrase file reads without a warning."""
    f = tmp_path / "pass.txt"
    f.write_bytes(b"secret")
    f.chmod(0o600)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InsecurePermissionsWarning)
        assert read_secret_file(f, "key") == b"secret"


def test_secret_file_fifo_is_refused_not_blocked_on(tmp_path: Path) -> None:
    """A FIFO in place of a key file is refused at once."""
    f = tmp_path / "key.fifo"
    os.mkfifo(f, 0o600)
    with pytest.raises(UnsafeFile, match="not a regular file"):
        read_secret_file(f, "key")


def test_missing_secret_file_is_our_error(tmp_path: Path) -> None:
    """A missing file raises the package's VaultIOError naming it."""
    with pytest.raises(VaultIOError, match="passphrase file"):
        read_secret_file(tmp_path / "nope")
