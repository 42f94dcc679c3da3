"""Bad input gets a clear, specific error and leaves every byte on disk as it was."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from keystore import NotAVault, SchemaTooNew, Vault
from keystore.vault import MAX_VALUE_LEN
from tests.conftest import FAST_KDF, PASSPHRASE
from tests.keystore.helpers import file_digest, write_raw


def test_open_missing_file(tmp_path: Path) -> None:
    """A path with nothing there is NotAVault, and nothing is created."""
    with pytest.raises(NotAVault, match="does not exist"):
        Vault.open(tmp_path / "nope")
    assert list(tmp_path.iterdir()) == []


def test_open_directory(tmp_path: Path) -> None:
    """A directory is NotAVault."""
    with pytest.raises(NotAVault, match="not a regular file"):
        Vault.open(tmp_path)


@pytest.mark.parametrize(
    "content",
    [b"", os.urandom(4096), b"SQLite format 3\x00" + b"\x00" * 100],
    ids=["empty", "random-bytes", "truncated-sqlite"],
)
def test_open_non_vault_files(tmp_path: Path, content: bytes) -> None:
    """Empty, random and truncated files are NotAVault and stay byte-identical."""
    target = tmp_path / "file"
    target.write_bytes(content)
    with pytest.raises(NotAVault):
        Vault.open(target)
    with pytest.raises(NotAVault):
        Vault.open(target, readonly=True)
    assert target.read_bytes() == content


def test_open_other_apps_sqlite(tmp_path: Path) -> None:
    """A SQLite database of another application is NotAVault and untouched."""
    target = tmp_path / "other.db"
    conn = sqlite3.connect(target)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.execute("INSERT INTO notes VALUES ('hello')")
    conn.commit()
    conn.close()
    digest = file_digest(target)
    with pytest.raises(NotAVault, match="not an mls-keystore vault"):
        Vault.open(target)
    assert file_digest(target) == digest


def test_truncated_vault(vault_path: Path) -> None:
    """A vault cut in half does not open; the remaining bytes are left alone."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        v.put("c", b"k", b"v" * 5000)
    data = vault_path.read_bytes()
    vault_path.write_bytes(data[: len(data) // 2])
    digest = file_digest(vault_path)
    with pytest.raises((NotAVault, SchemaTooNew)) as info:
        v2 = Vault.open(vault_path)
        v2.unlock(PASSPHRASE)
        v2.verify()
    assert info.type is not SchemaTooNew
    assert file_digest(vault_path) == digest


def test_vault_from_the_future(vault_path: Path) -> None:
    """A newer schema is SchemaTooNew and the file is not modified."""
    Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF).close()
    write_raw(vault_path, "PRAGMA user_version = 99")
    digest = file_digest(vault_path)
    with pytest.raises(SchemaTooNew, match="99"):
        Vault.open(vault_path)
    assert file_digest(vault_path) == digest


def test_empty_passphrase_rejected(vault_path: Path) -> None:
    """An empty passphrase is a ValueError at create and at unlock."""
    with pytest.raises(ValueError, match="empty"):
        Vault.create(vault_path, "", kdf=FAST_KDF)
    assert not vault_path.exists()
    Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF).close()
    with Vault.open(vault_path) as v, pytest.raises(ValueError, match="empty"):
        v.unlock(b"")


def test_passphrase_wrong_type(vault_path: Path) -> None:
    """A passphrase that is neither str nor bytes is a TypeError."""
    with pytest.raises(TypeError):
        Vault.create(vault_path, 1234, kdf=FAST_KDF)  # type: ignore[arg-type]


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_raw_key_wrong_length(vault_path: Path, length: int) -> None:
    """A raw key that is not exactly 32 bytes is a ValueError; no file is created."""
    with pytest.raises(ValueError, match="32 bytes"):
        Vault.create_with_key(vault_path, bytes(length))
    assert not vault_path.exists()


@pytest.mark.parametrize(
    "category", ["", "has space", "-leading-dash", "x" * 129, "ünïcode", "a\x00b"]
)
def test_invalid_category(vault: Vault, category: str) -> None:
    """Category names outside the allowed alphabet are a ValueError."""
    with pytest.raises(ValueError, match="category"):
        vault.put(category, b"k", b"v")


def test_category_must_be_str(vault: Vault) -> None:
    """A non-string category is a TypeError."""
    with pytest.raises(TypeError):
        vault.put(b"bytes", b"k", b"v")  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["text", 42, None, [1, 2]])
def test_non_bytes_key(vault: Vault, key: object) -> None:
    """A row key that is not bytes is a TypeError."""
    with pytest.raises(TypeError, match="row key"):
        vault.put("c", key, b"v")  # type: ignore[arg-type]


def test_non_bytes_value(vault: Vault) -> None:
    """A value that is not bytes is a TypeError."""
    with pytest.raises(TypeError, match="value"):
        vault.put("c", b"k", "text")  # type: ignore[arg-type]


def test_huge_value_rejected(vault: Vault, vault_path: Path) -> None:
    """A value over the limit is refused before anything is written."""
    digest = file_digest(vault_path)
    with pytest.raises(ValueError, match="limit"):
        vault.put("c", b"k", b"\x00" * (MAX_VALUE_LEN + 1))
    assert file_digest(vault_path) == digest


def test_kdf_parameters_validated() -> None:
    """Nonsensical Argon2 parameters are refused when the profile is built."""
    from keystore.profiles import KdfParameters

    with pytest.raises(ValueError):
        KdfParameters(0, 64, 1)
    with pytest.raises(ValueError):
        KdfParameters(1, 4, 1)
    with pytest.raises(TypeError):
        KdfParameters(1.5, 64, 1)  # type: ignore[arg-type]


def test_create_in_missing_directory(tmp_path: Path) -> None:
    """Creating a vault in a directory that does not exist is a clear FileNotFoundError."""
    with pytest.raises(FileNotFoundError, match="directory"):
        Vault.create(tmp_path / "no" / "v", PASSPHRASE, kdf=FAST_KDF)
