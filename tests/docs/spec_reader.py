"""An independent vault reader written from docs/format.md alone (no ``keystore`` import).

It is what a port to another language would do: parse the header at fixed offsets,
derive the KEK, unwrap the two secrets, check the schema and its migration records,
open the database (keyed, for SQLCipher) and decrypt every row, checking each row's
key against its keyed hash.  Every refusal the spec asks for raises :class:`SpecError`
whose ``kind`` is the name of the exception the spec says the package raises, so the
tests can check that both readings of the spec refuse the same bytes the same way.
The tests run it on vaults the package wrote, so a drift between the docs and the
code fails a test.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import os
import sqlite3
import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HEADER_LEN = 149
SIDECAR_SUFFIX = ".header"
SIDECAR_MAX = 4096
# §3 caps on the Argon2id cost (also §11).
MAX_T, MAX_M, MAX_P = 16, 2_097_152, 64
# §7.2: the checksum every vault records for each shipped step.
STEP_CHECKSUMS = {
    1: "37aac8efa9f5d59d78c90190598b0e5b1c3522601ea7707657ed08b30991eee0",
    2: "3bcb64be412ef211cc6ae32603b1fcad19aa9b00f3250913f581dc6de932208a",
    3: "692901d4bd86babdd74131c2f42d12d45449beb3f016a32ac87a5a58a13dde1e",
    4: "ca4bed9e35798e998c080988ec271550617c1d4e5cfb8118b9f50ce7a2c07bd0",
}
# §15: the state record.
DIGEST_INFO = b"mls-keystore v1 state digest"
FLAG_STATE_DIGEST = 0x02
# §8.1: the SQLCipher settings, stated explicitly rather than left to library defaults.
SQLCIPHER_SETTINGS = (
    "PRAGMA cipher_page_size = 4096",
    "PRAGMA cipher_use_hmac = ON",
    "PRAGMA cipher_hmac_algorithm = HMAC_SHA512",
    "PRAGMA cipher_kdf_algorithm = PBKDF2_HMAC_SHA512",
    "PRAGMA kdf_iter = 256000",
    "PRAGMA cipher_plaintext_header_size = 0",
)
PAGE_SIZE, RESERVE, SALT_LEN = 4096, 80, 16
SQLITE_MAGIC = b"SQLite format 3\x00"


class SpecError(Exception):
    """The bytes do not follow docs/format.md.

    Attributes:
        kind: the exception the spec names for this refusal (``"IntegrityError"``,
            ``"SchemaTooNew"``, ``"NotAVault"``, ``"MigrationError"``, ``"WrongPassphrase"``).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class SpecTagError(SpecError, InvalidTag):
    """An AES-GCM tag did not verify; an ``InvalidTag`` too, as ``cryptography`` reports it."""


def _integrity(message: str) -> SpecError:
    return SpecError("IntegrityError", message)


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


def check_argon2_cost(t: int, m: int, p: int) -> None:
    """§3: Argon2's own minimums and the caps, checked before Argon2 runs."""
    if t < 1 or p < 1 or m < 8 * p:
        raise _integrity("Argon2id parameters below Argon2's minimums")
    if t > MAX_T or m > MAX_M or p > MAX_P:
        raise _integrity("Argon2id parameters above the caps")


def parse_header(data: bytes) -> SpecHeader:
    """Parse the 149-byte header at the offsets of §3, refusing what §3 refuses."""
    if len(data) != HEADER_LEN or data[0:4] != b"MLKS" or data[4] != 1:
        raise _integrity("not a format-1 header")
    if data[5] & ~0x03 or data[35] != 16 or data[68] != 80:
        raise _integrity("bad flags or lengths")
    t, m, p = struct.unpack_from(">III", data, 23)
    if data[22] == 1:
        check_argon2_cost(t, m, p)
    elif data[22] == 2:
        if (t, m, p) != (0, 0, 0):
            raise _integrity("raw-key header with KDF parameters")
    else:
        raise _integrity(f"unknown kdf_id {data[22]}")
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
    assert isinstance(secret, bytes) and len(secret) == 32
    return HKDF(hashes.SHA256(), 32, header.salt, b"mls-keystore v1 raw-key wrap").derive(secret)


def unwrap(header: SpecHeader, kek: bytes) -> tuple[bytes, bytes]:
    """``(data_key, hash_key)``: AES-256-GCM open with AAD = header bytes 0..55."""
    try:
        secrets = AESGCM(kek).decrypt(header.wrap_nonce, header.wrapped, header.raw[:56])
    except InvalidTag:
        raise SpecTagError("WrongPassphrase", "the wrap does not open") from None
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
    if len(stored) < 33 or stored[0] != 1:
        raise _integrity("truncated value or unknown value format")
    try:
        plain = AESGCM(data_key).decrypt(stored[1:13], stored[13:], row_aad(store_id, category, kh))
    except InvalidTag:
        raise SpecTagError("IntegrityError", f"row {category}/{kh.hex()} forged") from None
    (key_len,) = struct.unpack_from(">I", plain)
    if key_len > len(plain) - 4:
        raise _integrity("row key length beyond the plaintext")
    key, value = plain[4 : 4 + key_len], plain[4 + key_len :]
    if key_hash(hash_key, category, key) != kh:
        raise _integrity("row key does not match its hash")
    return key, value


def seal_row(
    data_key: bytes, store_id: bytes, category: str, kh: bytes, key: bytes, value: bytes
) -> bytes:
    """Encrypt a value as the spec says, with a fresh random nonce."""
    nonce = os.urandom(12)
    plain = struct.pack(">I", len(key)) + key + value
    return b"\x01" + nonce + AESGCM(data_key).encrypt(nonce, plain, row_aad(store_id, category, kh))


def parse_sidecar(data: bytes) -> tuple[int, list[SpecHeader]]:
    """``(schema_version, [current, pending?])`` from a SQLCipher vault's header file (§8.2)."""
    if len(data) > SIDECAR_MAX or len(data) < 14 or data[:8] != b"MLKSSQLC":
        raise SpecError("NotAVault", "not a header file")
    if data[8] > 1:
        raise SpecError("SchemaTooNew", f"sidecar_format {data[8]}")
    if data[8] != 1 or data[13] not in (1, 2):
        raise _integrity("bad sidecar_format or header_count")
    (schema_version,) = struct.unpack_from(">I", data, 9)
    pos, headers = 14, []
    for _ in range(data[13]):
        if pos + 2 > len(data):
            raise _integrity("truncated header file")
        (length,) = struct.unpack_from(">H", data, pos)
        if pos + 2 + length > len(data):
            raise _integrity("truncated header file")
        headers.append(parse_header(data[pos + 2 : pos + 2 + length]))
        pos += 2 + length
    if pos != len(data):
        raise _integrity("trailing bytes in header file")
    if any(not h.flags & 1 for h in headers):
        raise _integrity("a header without the SQLCipher flag")
    if len(headers) == 2:
        cur, pend = headers
        same = (cur.store_id, cur.kdf_id, cur.raw[23:35], cur.salt)
        if (pend.store_id, pend.kdf_id, pend.raw[23:35], pend.salt) != same or (
            pend.key_generation != cur.key_generation + 1
        ):
            raise _integrity("pending header does not follow current")
    return schema_version, headers


def page_key(data_key: bytes, hash_key: bytes, store_id: bytes) -> bytes:
    """HKDF-SHA256(data_key || hash_key, salt = store_id, info = page-key label)."""
    return HKDF(hashes.SHA256(), 32, store_id, b"mls-keystore v1 sqlcipher page key").derive(
        data_key + hash_key
    )


def sqlcipher_hmac_key(key: bytes, salt: bytes) -> bytes:
    """§8.1: PBKDF2-HMAC-SHA512(page key, salt XOR 0x3a, 2 iterations, 32 bytes)."""
    return hashlib.pbkdf2_hmac("sha512", key, bytes(b ^ 0x3A for b in salt), 2, 32)


def decrypt_sqlcipher_page(page: bytes, page_no: int, key: bytes, salt: bytes) -> bytes:
    """One 4096-byte page, checked and decrypted as §8.1 lays it out.

    Returns the page as plain SQLite would hold it: page 1 starts with the SQLite
    magic where the file has the salt; the 80 reserved bytes are kept, zeroed.
    """
    if len(page) != PAGE_SIZE:
        raise _integrity("short page")
    start = SALT_LEN if page_no == 1 else 0
    body, iv = page[start : PAGE_SIZE - 64 - 16], page[PAGE_SIZE - 80 : PAGE_SIZE - 64]
    mac = hmac.new(
        sqlcipher_hmac_key(key, salt), body + iv + struct.pack("<I", page_no), "sha512"
    ).digest()
    if not hmac.compare_digest(mac, page[PAGE_SIZE - 64 :]):
        raise _integrity(f"page {page_no} fails its HMAC")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    plain = decryptor.update(body) + decryptor.finalize()
    return (SQLITE_MAGIC if page_no == 1 else b"") + plain + bytes(RESERVE)


def decrypt_sqlcipher_file(data: bytes, key: bytes) -> bytes:
    """A checkpointed SQLCipher database as the plain SQLite file it encrypts."""
    if len(data) % PAGE_SIZE or not data:
        raise _integrity("not a whole number of pages")
    salt = data[:SALT_LEN]
    return b"".join(
        decrypt_sqlcipher_page(data[i : i + PAGE_SIZE], i // PAGE_SIZE + 1, key, salt)
        for i in range(0, len(data), PAGE_SIZE)
    )


def check_schema(conn: Any) -> int:
    """§7.2 "What a reader checks", in order; returns ``user_version``."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "keystore_header" not in tables:
        raise SpecError("NotAVault", "no keystore_header table")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > max(STEP_CHECKSUMS):
        raise SpecError("SchemaTooNew", f"user_version {version}")
    if version == 0:
        raise SpecError("MigrationError", "user_version 0")
    records = (
        conn.execute("SELECT version, checksum FROM keystore_migrations ORDER BY version")
        .fetchall()
        if "keystore_migrations" in tables
        else []
    )
    if [v for v, _ in records] != list(range(1, version + 1)):
        raise SpecError("MigrationError", "records disagree with user_version")
    for v, checksum in records:
        if checksum != STEP_CHECKSUMS[v]:
            raise SpecError("MigrationError", f"step {v} has checksum {checksum}")
    return int(version)


def _counter(conn: Any, name: str) -> int | None:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "keystore_counters" not in tables:
        return None
    row = conn.execute("SELECT value FROM keystore_counters WHERE name = ?", (name,)).fetchone()
    return None if row is None else int(row[0])


@dataclass(frozen=True)
class SpecVault:
    """Everything the reader recovered from a vault."""

    header: SpecHeader
    schema_version: int
    rows: dict[tuple[str, bytes], bytes]
    encryptions: int | None  # None: schema version 1 kept no counter


def _open_sqlcipher(path: Path, headers: list[SpecHeader], secret: str | bytes) -> tuple[
    Any, list[tuple[SpecHeader, bytes, bytes]]
]:
    """§8.3 steps 1-2: unwrap every header, then try each page key, current first."""
    sqlcipher = importlib.import_module("sqlcipher3")
    kek = derive_kek(headers[0], secret)
    keyed = [(headers[0], *unwrap(headers[0], kek))]  # fails: WrongPassphrase
    for pending in headers[1:]:
        try:
            keyed.append((pending, *unwrap(pending, kek)))
        except SpecError:  # current opened under the same KEK: pending was edited
            raise _integrity("the pending header does not unwrap") from None
    for header, data_key, hash_key in keyed:
        conn = sqlcipher.connect(f"file:{path}?mode=ro", uri=True)
        key = page_key(data_key, hash_key, header.store_id)
        conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        for setting in SQLCIPHER_SETTINGS:
            conn.execute(setting)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlcipher.DatabaseError:
            conn.close()
            continue
        return conn, keyed
    raise _integrity("no page key opens the database")


def read_vault(path: Path, secret: str | bytes) -> SpecVault:
    """Read a whole vault as docs/format.md describes it (read-only)."""
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    conn: Any
    if sidecar.exists():
        _, headers = parse_sidecar(sidecar.read_bytes())
        conn, keyed = _open_sqlcipher(path, headers, secret)
    else:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        version = check_schema(conn)
        header_rows = conn.execute("SELECT header FROM keystore_header").fetchall()
        if sidecar.exists():
            if header_rows:  # §7.1: empty in a SQLCipher vault
                raise _integrity("keystore_header holds a row in a SQLCipher vault")
            # §8.3 step 3: the rows' generation picks the header; absent: current's.
            generation = _counter(conn, "key_generation")
            if generation is None:
                generation = headers[0].key_generation
            match = [k for k in keyed if k[0].key_generation == generation]
            if not match:
                raise _integrity(f"no header has generation {generation}")
            header, data_key, hash_key = match[0]
        else:
            if len(header_rows) != 1 or not isinstance(header_rows[0][0], bytes):
                raise _integrity("keystore_header must hold exactly one BLOB")
            header = parse_header(header_rows[0][0])
            if header.flags & 1:
                raise _integrity("plain database, SQLCipher header")
            data_key, hash_key = unwrap(header, derive_kek(header, secret))
        rows = {}
        stored_rows = conn.execute("SELECT category, key_hash, value FROM keystore_rows").fetchall()
        for category, kh, stored in stored_rows:
            if not isinstance(kh, bytes) or not isinstance(stored, bytes):
                raise _integrity("key_hash and value must be BLOBs")
            if not isinstance(category, str) or not category.isascii():
                raise _integrity("category must be a valid name")
            _check_record(category.encode("ascii"), b"", b"")
            key, value = open_row(data_key, hash_key, header.store_id, category, kh, stored)
            rows[(category, key)] = value
        if header.flags & FLAG_STATE_DIGEST:
            check_state(conn, data_key + hash_key, header.store_id, stored_rows)
        encryptions = _counter(conn, "encryptions") if version >= 2 else None
    finally:
        conn.close()
    return SpecVault(header, version, rows, encryptions)


def check_state(
    conn: Any, secrets: bytes, store_id: bytes, stored_rows: list[tuple[str, bytes, bytes]]
) -> None:
    """§12 step 5 and §15.3: the state record vouches for exactly these rows."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    records = (
        conn.execute("SELECT record FROM keystore_state").fetchall()
        if "keystore_state" in tables else []
    )
    if not records:
        raise SpecError("RollbackDetected", "flag bit 1 is set but there is no state record")
    record = records[0][0]
    if len(records) != 1 or not isinstance(record, bytes) or len(record) != 81:
        raise _integrity("malformed state record")
    if record[0] not in (1, 2):  # §15.3: format 2 is written, format 1 still read
        raise _integrity("malformed state record")
    okm = HKDF(hashes.SHA256(), 128, store_id, DIGEST_INFO).derive(secrets)
    row_key, mac_key, pad_key, block_key = okm[:32], okm[32:64], okm[64:96], okm[96:]
    tag = record[49:]
    pad = hmac.new(pad_key, tag, "sha256").digest()
    digest = bytes(a ^ b for a, b in zip(record[17:49], pad, strict=True))
    if not hmac.compare_digest(hmac.new(mac_key, record[:17] + digest, "sha256").digest(), tag):
        raise SpecError("RollbackDetected", "the state record fails its tag")
    total = 0
    for category, kh, stored in stored_rows:
        if record[0] == 2:
            # §15.2, format 2: AES-256 of the value's last 16 bytes (zero-padded on the left).
            block = stored[len(stored) - min(16, len(stored)) :].rjust(16, b"\x00")
            enc = Cipher(algorithms.AES(block_key), modes.ECB()).encryptor()
            total += int.from_bytes(enc.update(block) + enc.finalize(), "big")
            continue
        cat = category.encode("utf-8")
        head, tail = stored[: min(13, len(stored))], stored[len(stored) - min(16, len(stored)) :]
        data = (
            struct.pack(">I", len(cat)) + cat + struct.pack(">I", len(kh)) + kh
            + struct.pack(">I", len(stored)) + head + tail
        )
        h = hashlib.blake2b(data, digest_size=32, key=row_key, person=b"mlks-state-row")
        total += int.from_bytes(h.digest(), "big")
    modulus = 2**128 - 1 if record[0] == 2 else 2**256
    (row_count,) = struct.unpack_from(">Q", record, 9)
    if row_count != len(stored_rows) or total % modulus != int.from_bytes(digest, "big"):
        raise SpecError("RollbackDetected", "the rows are not the ones the record vouches for")


def parse_export_header(data: bytes) -> tuple[int, int, int, bytes, int]:
    """§11: ``(t, m, p, salt, chunk_size)`` after the checks made before Argon2 runs."""
    if data[:8] != b"MLKSEXP\x00" or len(data) < 42:
        raise _integrity("not an export file, or its header is truncated")
    if data[8] > 2:
        raise SpecError("SchemaTooNew", f"export format {data[8]}")
    if data[8] not in (1, 2) or data[9] != 1:
        raise _integrity("unknown export format or kdf_id")
    t, m, p = struct.unpack_from(">III", data, 10)
    check_argon2_cost(t, m, p)
    (chunk_size,) = struct.unpack_from(">I", data, 38)
    if not 1024 <= chunk_size <= 16_777_216:
        raise _integrity(f"chunk size {chunk_size}")
    return t, m, p, data[22:38], chunk_size


_CATEGORY_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:/-")


def _check_record(category: bytes, key: bytes, value: bytes) -> str:
    """§7.3 limits, which an export's records must keep (§11)."""
    if not (1 <= len(category) <= 128 and set(category) <= _CATEGORY_CHARS):
        raise _integrity("bad category")
    if not chr(category[0]).isalnum() or len(key) > 65_536 or len(value) > 67_108_864:
        raise _integrity("bad category, key or value size")
    return category.decode("ascii")


def read_export_file(data: bytes, passphrase: str) -> list[tuple[str, bytes, bytes]]:
    """Every ``(category, key, value)`` of an export file, per docs/format.md §11."""
    t, m, p, salt, chunk_size = parse_export_header(data)
    header = data[:42]
    password = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    aead = AESGCM(hash_secret_raw(password, salt, t, m, p, 32, Type.ID))
    try:
        aead.decrypt(b"\xff" * 12, data[42:58], header)
    except InvalidTag:
        raise SpecTagError("WrongPassphrase", "the header tag does not verify") from None
    stream, pos, index = b"", 58, 0
    while True:
        blob = data[pos : pos + chunk_size + 16]
        last = len(blob) < chunk_size + 16
        nonce = index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        try:
            stream += aead.decrypt(nonce, blob, header)
        except InvalidTag:
            raise SpecTagError("IntegrityError", f"chunk {index} fails authentication") from None
        pos, index = pos + len(blob), index + 1
        if last:
            break
    records, pos = [], 0
    if data[8] == 2:  # format 2: the generation record first, exactly once
        if len(stream) < 9 or stream[0] != 2:
            raise _integrity("no generation record")
        pos = 9
    try:
        while stream[pos] == 1:
            (cat_len,) = struct.unpack_from(">H", stream, pos + 1)
            category = stream[pos + 3 : pos + 3 + cat_len]
            pos += 3 + cat_len
            (key_len,) = struct.unpack_from(">I", stream, pos)
            key = stream[pos + 4 : pos + 4 + key_len]
            pos += 4 + key_len
            (value_len,) = struct.unpack_from(">I", stream, pos)
            value = stream[pos + 4 : pos + 4 + value_len]
            if len(key) != key_len or len(value) != value_len:
                raise _integrity("truncated record")
            records.append((_check_record(category, key, value), key, value))
            pos += 4 + value_len
        (count,) = struct.unpack_from(">Q", stream, pos + 1)
    except (IndexError, struct.error):
        raise _integrity("truncated stream") from None
    if stream[pos] != 0 or count != len(records) or pos + 9 != len(stream):
        raise _integrity("bad end record")
    return records
