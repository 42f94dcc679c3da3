"""The optional SQLCipher layer: page-key derivation and keyed connections.

SQLCipher encrypts the whole database file, hiding what row encryption cannot:
row counts and sizes, category names, the schema.  It is an extra
(from a checkout: ``pip install -e '.[sqlcipher]'``), so ``sqlcipher3`` is imported only
when a SQLCipher vault is created or unlocked; ``import keystore`` never needs it.

The page key is HKDF-SHA256 of the vault's two secrets (data key || hash key) with
its own info label, never the passphrase, and it is handed to SQLCipher as a raw
key.  A passphrase would make SQLCipher run its own PBKDF2 on every connection;
a raw key opens in well under a millisecond, and because the data key is rotated
by :meth:`keystore.Vault.rekey`, so is the page key.
"""

from __future__ import annotations

import importlib
import sqlite3
import sys
import urllib.parse
from pathlib import Path
from types import ModuleType
from typing import cast

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keystore.errors import KeystoreError

__all__ = [
    "PAGE_KEY_INFO",
    "SQLCipherUnavailable",
    "available",
    "connect",
    "db_error_types",
    "derive_page_key",
    "is_database_error",
    "require",
    "set_page_key",
]

PAGE_KEY_INFO = b"mls-keystore v1 sqlcipher page key"
_PAGE_KEY_LEN = 32
_INSTALL_HINT = "from a checkout: pip install -e '.[sqlcipher]' (see docs/operations.md)"


class SQLCipherUnavailable(KeystoreError, ImportError):
    """SQLCipher was asked for, but the optional ``sqlcipher3`` package is missing.

    It is an :class:`ImportError` too, so code that already guards optional
    imports catches it.
    """


def require() -> ModuleType:
    """Import ``sqlcipher3``, or explain which extra provides it.

    Raises:
        SQLCipherUnavailable: the extra is not installed.
    """
    try:
        return importlib.import_module("sqlcipher3")
    except ImportError:
        raise SQLCipherUnavailable(
            f"this vault needs SQLCipher, which is an optional extra: {_INSTALL_HINT}"
        ) from None


def available() -> bool:
    """Whether SQLCipher vaults can be created and opened here."""
    try:
        require()
    except SQLCipherUnavailable:
        return False
    return True


def db_error_types() -> tuple[type[Exception], ...]:
    """The database exception classes a vault connection may raise.

    ``sqlcipher3`` is a fork of the stdlib module with its own, unrelated exception
    classes.  It is only added once imported: before that, no SQLCipher
    connection exists that could raise one.
    """
    module = sys.modules.get("sqlcipher3")
    if module is None:
        return (sqlite3.Error,)
    return (sqlite3.Error, cast(type[Exception], module.Error))


def is_database_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a ``DatabaseError`` of either SQLite module."""
    if isinstance(exc, sqlite3.DatabaseError):
        return True
    module = sys.modules.get("sqlcipher3")
    return module is not None and isinstance(exc, module.DatabaseError)


def derive_page_key(secrets: bytearray, store_id: bytes) -> bytearray:
    """The SQLCipher page key: HKDF-SHA256(data key || hash key, salt=store id).

    A separate info label keeps it independent of every other key derived from
    the same secrets.
    """
    hkdf = HKDF(algorithm=hashes.SHA256(), length=_PAGE_KEY_LEN, salt=store_id,
                info=PAGE_KEY_INFO)
    return bytearray(hkdf.derive(bytes(secrets)))


def _key_pragma(verb: str, page_key: bytearray) -> str:
    if len(page_key) != _PAGE_KEY_LEN:
        raise ValueError("SQLCipher page key must be 32 bytes")
    # The x'..' form makes SQLCipher use the bytes as the key, skipping its PBKDF2.
    return f"PRAGMA {verb} = \"x'{bytes(page_key).hex()}'\""


def connect(
    path: Path, page_key: bytearray, *, readonly: bool, create: bool = False,
    busy_timeout: float = 5.0, immutable: bool = False,
) -> sqlite3.Connection:
    """Open ``path`` with SQLCipher, keyed, in autocommit mode.

    The key is only checked when the first page is read: the caller must read
    something (``Vault`` reads ``sqlite_master``) to learn whether it was right.

    The returned object is a ``sqlcipher3`` connection; it is typed as the stdlib
    ``sqlite3.Connection`` whose API it copies.

    Raises:
        SQLCipherUnavailable: the extra is not installed.
    """
    module = require()
    mode = "ro" if readonly else ("rwc" if create else "rw")
    uri = f"file:{urllib.parse.quote(str(path))}?mode={mode}"
    if immutable:  # read-only media: no -shm can be created (see keystore.vault)
        uri += "&immutable=1"
    conn = module.connect(
        uri, uri=True, isolation_level=None, check_same_thread=False, timeout=busy_timeout
    )
    try:
        # SQLCipher logs failed HMAC checks to stderr; a wrong key is our exception.
        conn.execute("PRAGMA cipher_log_level = NONE")
        conn.execute(_key_pragma("key", page_key))
    except BaseException:
        conn.close()
        raise
    return cast(sqlite3.Connection, conn)


def set_page_key(conn: sqlite3.Connection, page_key: bytearray) -> None:
    """Re-encrypt every page under ``page_key`` (``PRAGMA rekey``), atomically.

    SQLCipher rewrites all pages in one write transaction, so a crash leaves the
    file entirely under the old key or entirely under the new one.
    """
    conn.execute(_key_pragma("rekey", page_key))
