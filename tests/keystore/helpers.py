"""Helpers for keystore tests that look at the raw SQLite file underneath a vault."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path


def raw_rows(path: Path) -> dict[tuple[str, bytes], bytes]:
    """Every stored row as ``{(category, key_hash): value_blob}``, read with plain sqlite3."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            (c, bytes(k)): bytes(v)
            for c, k, v in conn.execute("SELECT category, key_hash, value FROM keystore_rows")
        }
    finally:
        conn.close()


def write_raw(path: Path, sql: str, params: tuple[object, ...] = ()) -> None:
    """Run one statement against the file behind the vault's back (an attacker's edit)."""
    conn = sqlite3.connect(path, isolation_level=None)
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
