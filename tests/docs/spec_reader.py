"""An independent vault reader written from docs/format.md alone (no ``keystore`` import).

It is what a port to another language would do: parse the header at fixed offsets,
derive the KEK, unwrap the two secrets, open the database (keyed, for SQLCipher) and
decrypt every row, checking each row's key against its keyed hash.  The tests run it
on vaults the package wrote, so a drift between the docs and the code fails a test.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sqlite3
import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HEADER_LEN = 149
SIDECAR_SUFFIX = ".header"


class SpecError(Exception):
    """The bytes do not follow docs/format.md."""


@dataclass(frozen=True)
class SpecHeader:
    """The fields of a format-1 header, named as in docs/format.md."""

    raw: bytes
    flags: int
    store_id: bytes
    kdf_id: int
    time_cost: int
    memory_cost: int
    parallelism: int
    salt: bytes
    key_generation: int
    wrap_nonce: bytes
    wrapped: bytes


def parse_header(data: bytes) -> SpecHeader:
    """Parse the 149-byte header at the offsets of the spec's table."""
    if len(data) != HEADER_LEN or data[0:4] != b"MLKS" or data[4] != 1:
        raise SpecError("not a format-1 header")
    if data[5] & ~0x01 or data[35] != 16 or data[68] != 80:
        raise SpecError("bad flags or lengths")
    t, m, p = struct.unpack_from(">III", data, 23)
    (generation,) = struct.unpack_from(">I", data, 52)
    return SpecHeader(
        raw=data, flags=data[5], store_id=data[6:22], kdf_id=data[22], time_cost=t,
        memory_cost=m, parallelism=p, salt=data[36:52], key_generation=generation,
        wrap_nonce=data[56:68], wrapped=data[69:149],
    )


def derive_kek(header: SpecHeader, secret: str | bytes) -> bytes:
    """Argon2id over the NFC UTF-8 passphrase (kdf_id 1) or HKDF of the raw key (kdf_id 2)."""
    if header.kdf_id == 1:
        assert isinstance(secret, str)
        password = unicodedata.normalize("NFC", secret).encode("utf-8")
        return hash_secret_raw(
            password, header.salt, header.time_cost, header.memory_cost, header.parallelism,
            32, Type.ID,
        )
    if header.kdf_id == 2:
        assert isinstance(secret, bytes)
        return HKDF(hashes.SHA256(), 32, header.salt, b"mls-keystore v1 raw-key wrap").derive(
            secret
        )
    raise SpecError(f"unknown kdf_id {header.kdf_id}")


def unwrap(header: SpecHeader, kek: bytes) -> tuple[bytes, bytes]:
    """``(data_key, hash_key)``: AES-256-GCM open with AAD = header bytes 0..55."""
    secrets = AESGCM(kek).decrypt(header.wrap_nonce, header.wrapped, header.raw[:56])
    return secrets[:32], secrets[32:]


def key_hash(hash_key: bytes, category: str, key: bytes) -> bytes:
    """Two keyed BLAKE2b-256 steps: category key, then the row key under it."""
    category_key = hashlib.blake2b(
        category.encode("utf-8"), key=hash_key, digest_size=32, person=b"mlks-category"
    ).digest()
    return hashlib.blake2b(key, key=category_key, digest_size=32, person=b"mlks-row-key").digest()


def row_aad(store_id: bytes, category: str, kh: bytes) -> bytes:
    """``0x01 || store_id || u16 len(category) || category || key_hash``."""
    cat = category.encode("utf-8")
    return b"\x01" + store_id + struct.pack(">H", len(cat)) + cat + kh


def open_row(
    data_key: bytes, hash_key: bytes, store_id: bytes, category: str, kh: bytes, stored: bytes
) -> tuple[bytes, bytes]:
    """Decrypt a stored value; return ``(row key, value)`` after checking the key hash."""
    if stored[0] != 1:
        raise SpecError("unknown value format")
    plain = AESGCM(data_key).decrypt(stored[1:13], stored[13:], row_aad(store_id, category, kh))
    (key_len,) = struct.unpack_from(">I", plain)
    key, value = plain[4 : 4 + key_len], plain[4 + key_len :]
    if key_hash(hash_key, category, key) != kh:
        raise SpecError("row key does not match its hash")
    return key, value


def seal_row(
    data_key: bytes, store_id: bytes, category: str, kh: bytes, key: bytes, value: bytes
) -> bytes:
    """Encrypt a value as the spec says, with a fresh random nonce."""
    nonce = os.urandom(12)
    plain = struct.pack(">I", len(key)) + key + value
    return b"\x01" + nonce + AESGCM(data_key).encrypt(nonce, plain, row_aad(store_id, category, kh))


def parse_sidecar(data: bytes) -> tuple[int, list[SpecHeader]]:
    """``(schema_version, [current, pending?])`` from a SQLCipher vault's header file."""
    if data[:8] != b"MLKSSQLC" or data[8] != 1 or data[13] not in (1, 2):
        raise SpecError("not a format-1 header file")
    (schema_version,) = struct.unpack_from(">I", data, 9)
    pos, headers = 14, []
    for _ in range(data[13]):
        (length,) = struct.unpack_from(">H", data, pos)
        headers.append(parse_header(data[pos + 2 : pos + 2 + length]))
        pos += 2 + length
    if pos != len(data):
        raise SpecError("trailing bytes in header file")
    return schema_version, headers


def page_key(data_key: bytes, hash_key: bytes, store_id: bytes) -> bytes:
    """HKDF-SHA256(data_key || hash_key, salt = store_id, info = page-key label)."""
    return HKDF(hashes.SHA256(), 32, store_id, b"mls-keystore v1 sqlcipher page key").derive(
        data_key + hash_key
    )


@dataclass(frozen=True)
class SpecVault:
    """Everything the reader recovered from a vault."""

    header: SpecHeader
    schema_version: int
    rows: dict[tuple[str, bytes], bytes]
    encryptions: int | None  # None: schema version 1 kept no counter


def read_vault(path: Path, secret: str | bytes) -> SpecVault:
    """Read a whole vault as docs/format.md describes it (read-only)."""
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    conn: Any
    if sidecar.exists():
        _, headers = parse_sidecar(sidecar.read_bytes())
        header = headers[0]
        data_key, hash_key = unwrap(header, derive_kek(header, secret))
        sqlcipher = importlib.import_module("sqlcipher3")
        conn = sqlcipher.connect(f"file:{path}?mode=ro", uri=True)
        key = page_key(data_key, hash_key, header.store_id)
        conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    else:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        (blob,) = conn.execute("SELECT header FROM keystore_header WHERE id = 1").fetchone()
        header = parse_header(bytes(blob))
        data_key, hash_key = unwrap(header, derive_kek(header, secret))
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        rows = {}
        for category, kh, stored in conn.execute(
            "SELECT category, key_hash, value FROM keystore_rows"
        ):
            key, value = open_row(
                data_key, hash_key, header.store_id, category, bytes(kh), bytes(stored)
            )
            rows[(category, key)] = value
        counter = (
            conn.execute("SELECT value FROM keystore_counters WHERE name = 'encryptions'")
            .fetchone()
            if version >= 2
            else None
        )
    finally:
        conn.close()
    return SpecVault(header, int(version), rows, None if counter is None else int(counter[0]))


def read_export_file(data: bytes, passphrase: str) -> list[tuple[str, bytes, bytes]]:
    """Every ``(category, key, value)`` of an export file, per docs/format.md §11."""
    if data[:8] != b"MLKSEXP\x00" or data[8] != 1 or data[9] != 1:
        raise SpecError("not a format-1 export")
    header = data[:42]
    t, m, p = struct.unpack_from(">III", header, 10)
    (chunk_size,) = struct.unpack_from(">I", header, 38)
    password = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    aead = AESGCM(hash_secret_raw(password, header[22:38], t, m, p, 32, Type.ID))
    aead.decrypt(b"\xff" * 12, data[42:58], header)
    stream, pos, index = b"", 58, 0
    while True:
        blob = data[pos : pos + chunk_size + 16]
        last = len(blob) < chunk_size + 16
        nonce = index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        stream += aead.decrypt(nonce, blob, header)
        pos, index = pos + len(blob), index + 1
        if last:
            break
    records, pos = [], 0
    while stream[pos] == 1:
        (cat_len,) = struct.unpack_from(">H", stream, pos + 1)
        category = stream[pos + 3 : pos + 3 + cat_len].decode("utf-8")
        pos += 3 + cat_len
        (key_len,) = struct.unpack_from(">I", stream, pos)
        key = stream[pos + 4 : pos + 4 + key_len]
        pos += 4 + key_len
        (value_len,) = struct.unpack_from(">I", stream, pos)
        records.append((category, key, stream[pos + 4 : pos + 4 + value_len]))
        pos += 4 + value_len
    (count,) = struct.unpack_from(">Q", stream, pos + 1)
    if stream[pos] != 0 or count != len(records) or pos + 9 != len(stream):
        raise SpecError("bad end record")
    return records
