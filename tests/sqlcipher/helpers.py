"""Helpers that reach under a SQLCipher vault, as an attacker holding the passphrase would."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from keystore import sqlcipher
from keystore.cipher import derive_wrapping_key, normalize_passphrase, unwrap_secrets
from keystore.sidecar import Sidecar, sidecar_path_for


def page_key_of(path: Path, passphrase: str) -> bytearray:
    """The current SQLCipher page key of the vault at ``path``."""
    side = Sidecar.read(path)
    assert side is not None
    kek = derive_wrapping_key(side.current, normalize_passphrase(passphrase))
    return sqlcipher.derive_page_key(unwrap_secrets(kek, side.current), side.current.store_id)


def open_raw(path: Path, page_key: bytearray) -> sqlite3.Connection:
    """A SQLCipher connection to the database itself, behind the vault's back."""
    return sqlcipher.connect(path, page_key, readonly=False)


def vault_files(path: Path) -> list[Path]:
    """The database, its WAL and the header file, those that exist."""
    candidates = (path, Path(f"{path}-wal"), sidecar_path_for(path))
    return [p for p in candidates if p.exists()]
