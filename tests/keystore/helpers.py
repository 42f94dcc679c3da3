"""Helpers for keystore tests that look at the raw database underneath a vault.

They open the file behind the vault's back, as an attacker with write access would;
for a SQLCipher vault that attacker also needs the passphrase (to get the page key).
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from keystore.sidecar import sidecar_path_for
from tests.conftest import PASSPHRASE


def _raw_connection(path: Path, passphrase: str) -> sqlite3.Connection:
    if sidecar_path_for(path).exists():
        from tests.sqlcipher.helpers import open_raw, page_key_of

        return open_raw(path, page_key_of(path, passphrase))
    return sqlite3.connect(path, isolation_level=None)


def raw_rows(path: Path, passphrase: str = PASSPHRASE) -> dict[tuple[str, bytes], bytes]:
    """Every stored row as ``{(category, key_hash): value_blob}``."""
    conn = _raw_connection(path, passphrase)
    try:
        return {
            (c, bytes(k)): bytes(v)
            for c, k, v in conn.execute("SELECT category, key_hash, value FROM keystore_rows")
        }
    finally:
        conn.close()


def write_raw(
    path: Path, sql: str, params: tuple[object, ...] = (), passphrase: str = PASSPHRASE
) -> None:
    """Run one statement against the file behind the vault's back (an attacker's edit)."""
    conn = _raw_connection(path, passphrase)
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, to prove a failure path left it untouched."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_of(path: Path) -> list[Path]:
    """The vault file and its SQLite sidecars that exist right now."""
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
