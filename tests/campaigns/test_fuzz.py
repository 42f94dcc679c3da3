"""Fuzzing every parser of bytes from disk: nothing but our own error types escapes."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from unittest import mock

import pytest

from keystore import IntegrityError, NotAVault, Vault
from keystore.export import import_vault, write_export
from tests.campaigns import fuzz
from tests.campaigns.common import FAST_KDF, PASSPHRASE


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(fuzz.TARGETS))
def test_parser_raises_only_our_errors(name: str) -> None:
    """Hypothesis finds no input on which the parser raises a foreign exception."""
    target, _ = fuzz.TARGETS[name]
    target(fuzz.examples_for(name, fuzz.EXAMPLES.quick))


def test_import_of_export_with_invalid_category_is_integrity_error(tmp_path: Path) -> None:
    """Regression: an authenticated export holding a bad category name made import raise a
    bare ValueError from Vault.apply; it is now IntegrityError and no vault is left."""
    out = io.BytesIO()
    with mock.patch("keystore.export.check_category", lambda c: c):
        write_export(out, [("not a category!", b"k", b"v")], PASSPHRASE, FAST_KDF,
                     chunk_size=1024)
    src = tmp_path / "x.export"
    src.write_bytes(out.getvalue())
    with pytest.raises(IntegrityError, match="invalid category"):
        import_vault(src, tmp_path / "v", PASSPHRASE, PASSPHRASE, kdf=FAST_KDF)
    assert not (tmp_path / "v").exists()


def test_non_utf8_text_in_the_file_is_integrity_error(tmp_path: Path) -> None:
    """Regression: a row whose category bytes are not UTF-8 made verify() raise a bare
    UnicodeDecodeError (sqlite3 decodes TEXT on fetch); it is now IntegrityError."""
    path = tmp_path / "v"
    with Vault.create(path, PASSPHRASE, kdf=FAST_KDF) as vault:
        vault.put("c", b"k", b"v")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE keystore_rows SET category = CAST(x'80ff' AS TEXT)")
    conn.close()
    with Vault.open(path) as vault:
        vault.unlock(PASSPHRASE)
        with pytest.raises(IntegrityError, match="not UTF-8"):
            vault.verify()


def test_non_utf8_schema_is_not_a_vault(tmp_path: Path) -> None:
    """Regression (found by the vault-file fuzzer): a schema entry that is not UTF-8 made
    Vault.open raise a bare UnicodeDecodeError; it is now NotAVault."""
    path = tmp_path / "v"
    Vault.create(path, PASSPHRASE, kdf=FAST_KDF).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute(
        "UPDATE sqlite_master SET name = CAST(x'80ff' AS TEXT) WHERE name = 'keystore_counters'"
    )
    conn.close()
    with pytest.raises(NotAVault, match="not UTF-8"):
        Vault.open(path)


@pytest.mark.parametrize("sql", [
    "UPDATE keystore_rows SET category = 'has space'",
    "UPDATE keystore_rows SET value = 'text, not a blob'",
    "UPDATE keystore_rows SET value = 12",
])
def test_damaged_row_fields_are_integrity_errors(tmp_path: Path, sql: str) -> None:
    """Regression (found by the vault-file fuzzer): a category name outside the alphabet
    made categories()/items() raise ValueError, and a key hash or value that is no longer
    a blob raised TypeError; both are IntegrityError now, and verify lists the row."""
    path = tmp_path / "v"
    with Vault.create(path, PASSPHRASE, kdf=FAST_KDF) as vault:
        vault.put("c", b"k", b"v")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(sql)
    conn.close()
    with Vault.open(path) as vault:
        vault.unlock(PASSPHRASE)
        with pytest.raises(IntegrityError):
            for category in vault.categories() or ["c"]:
                list(vault.items(category))
        assert not vault.verify().ok
