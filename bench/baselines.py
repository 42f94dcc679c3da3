"""Honest baselines: what the alternatives to our design cost, built as well as we can.

A ratio is only as meaningful as its baseline, so each one here gets the same care as
the code it is compared with: the same rows, the same durability (WAL,
``synchronous=FULL``, one transaction per batch, fsync before a snapshot counts as
written), and the fastest layout or encoding we found.

* :class:`PlaintextRows` — the *floor*: stdlib SQLite, no encryption at all.  Same
  layout and pragmas as the one in :mod:`bench.keystore_bench`.
* :func:`seal_values` — bare AES-256-GCM over the same values, no key hashing and no
  framing: the least any encrypting store must add to the floor.
* :class:`SqlcipherRows` — plaintext rows in a SQLCipher database opened with a raw key,
  so SQLCipher encrypts pages and we encrypt nothing.
* :class:`SnapshotStore` — the approach the persistence design document deprecates:
  serialize the whole state, encrypt it as one blob, write it durably, on every change.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "PlaintextRows",
    "SnapshotStore",
    "SqlcipherRows",
    "State",
    "decode_state",
    "encode_state",
    "seal_values",
]

#: ``{category: {key: value}}``: what an MLS client holds in memory.
State = Mapping[str, Mapping[bytes, bytes]]
Row = tuple[str, bytes, bytes]

_NONCE_LEN = 12
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv (id INTEGER PRIMARY KEY, category TEXT NOT NULL,"
    " key BLOB NOT NULL, value BLOB NOT NULL, UNIQUE (category, key))"
)
_UPSERT = (
    "INSERT INTO kv (category, key, value) VALUES (?, ?, ?)"
    " ON CONFLICT (category, key) DO UPDATE SET value = excluded.value"
)


class _RowTable:
    """A durable key-value table on a DB-API connection; one transaction per batch."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(_SCHEMA)

    def upsert(self, rows: Sequence[Row]) -> None:
        """Write a batch of rows in one durable transaction."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.executemany(_UPSERT, rows)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def scan(self) -> list[Row]:
        """Every row, in table order."""
        return [
            (str(c), bytes(k), bytes(v))
            for c, k, v in self._conn.execute("SELECT category, key, value FROM kv")
        ]

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


class PlaintextRows(_RowTable):
    """The floor: plaintext rows in stdlib SQLite (rowid table + unique index)."""

    def __init__(self, path: Path) -> None:
        super().__init__(sqlite3.connect(path, isolation_level=None))


class SqlcipherRows(_RowTable):
    """Plaintext rows in a SQLCipher database keyed with a raw 32-byte key.

    A raw key (``x'…'``) skips SQLCipher's PBKDF2, as our own SQLCipher layer does,
    so opening is not what is measured.

    Raises:
        ImportError: ``sqlcipher3`` is not installed.
    """

    def __init__(self, path: Path, key: bytes) -> None:
        # Optional dependency (untyped): import only when this baseline is asked for.
        dbapi2 = importlib.import_module("sqlcipher3.dbapi2")
        conn = dbapi2.connect(str(path), isolation_level=None)
        conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        super().__init__(conn)


def seal_values(aead: AESGCM, values: Iterable[bytes], count: int) -> list[bytes]:
    """AES-256-GCM each value under a fresh nonce, and nothing else.

    Nonces are slices of one ``os.urandom`` call, the same economy the vault uses, so
    the comparison is about what the vault does beyond encryption.
    """
    pool = os.urandom(_NONCE_LEN * count)
    encrypt = aead.encrypt
    out = []
    for i, value in enumerate(values):
        nonce = pool[i * _NONCE_LEN : (i + 1) * _NONCE_LEN]
        out.append(nonce + encrypt(nonce, value, None))
    return out


_HEAD = struct.Struct(">HI")
_ROW = struct.Struct(">II")


def encode_state(state: State) -> bytes:
    """Length-prefixed serialization of a whole state.

    As fast as ``pickle`` protocol 5 on 10k 1 KiB rows (measured), without
    unpickling untrusted bytes on load.
    """
    parts: list[bytes] = []
    add = parts.append
    pack_row = _ROW.pack
    for category, rows in state.items():
        name = category.encode("utf-8")
        add(_HEAD.pack(len(name), len(rows)))
        add(name)
        for key, value in rows.items():
            add(pack_row(len(key), len(value)))
            add(key)
            add(value)
    return b"".join(parts)


def decode_state(blob: bytes) -> dict[str, dict[bytes, bytes]]:
    """Inverse of :func:`encode_state`."""
    view = memoryview(blob)
    state: dict[str, dict[bytes, bytes]] = {}
    pos = 0
    while pos < len(blob):
        name_len, count = _HEAD.unpack_from(view, pos)
        pos += _HEAD.size
        rows = state.setdefault(bytes(view[pos : pos + name_len]).decode("utf-8"), {})
        pos += name_len
        for _ in range(count):
            key_len, value_len = _ROW.unpack_from(view, pos)
            pos += _ROW.size
            key = bytes(view[pos : pos + key_len])
            pos += key_len
            rows[key] = bytes(view[pos : pos + value_len])
            pos += value_len
    return state


class SnapshotStore:
    """The deprecated design: one encrypted blob holding the whole state.

    :meth:`save` is what every change costs under that design: serialize everything,
    AES-256-GCM it as one message, write it to a temporary file, fsync, rename over
    the old snapshot and fsync the directory (durable and atomic, as our vault is).
    """

    def __init__(self, path: Path, key: bytes) -> None:
        self._path = path
        self._tmp = path.with_name(path.name + ".tmp")
        self._aead = AESGCM(key)

    def save(self, state: State) -> int:
        """Persist the whole state durably; returns the bytes written."""
        nonce = os.urandom(_NONCE_LEN)
        blob = nonce + self._aead.encrypt(nonce, encode_state(state), None)
        # Never through a symlink planted at the temporary name (the snapshot holds keys).
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self._tmp, flags, 0o600)
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp, self._path)
        dir_fd = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return len(blob)

    def load(self) -> dict[str, dict[bytes, bytes]]:
        """Read, authenticate and decode the last snapshot."""
        blob = self._path.read_bytes()
        return decode_state(self._aead.decrypt(blob[:_NONCE_LEN], blob[_NONCE_LEN:], None))
