"""The implementation agrees with docs/format.md: known answers both ways, and a reader
written from the spec alone reads the vaults the package writes."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keystore import Vault, WrongPassphrase
from keystore import sqlcipher as sqlcipher_layer
from keystore.cipher import (
    StoreCipher,
    derive_wrapping_key,
    normalize_passphrase,
    unwrap_secrets,
    wrap_secrets,
)
from keystore.errors import IntegrityError
from keystore.export import ExportHeader, read_export, write_export
from keystore.header import Header
from keystore.profiles import KdfParameters
from keystore.sidecar import Sidecar
from tests.conftest import FAST_KDF, PASSPHRASE
from tests.docs import spec_reader
from tests.fixtures import make_fixtures

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "format.json").read_text()
)
HEADERS: list[dict[str, Any]] = VECTORS["headers"]
ROWS = {
    ("openmls/v1/key_package", b"\x00\x01ref"): b"private init key",
    ("openmls/v1/key_package", b""): b"",
    ("mlsrs/v1/epoch", bytes(range(40))): bytes(range(256)) * 4,
}
needs_sqlcipher = pytest.mark.skipif(
    not sqlcipher_layer.available(), reason="the [sqlcipher] extra is not installed"
)


def _ids(cases: list[dict[str, Any]]) -> list[str]:
    return [str(c.get("name", c.get("category", "case"))) for c in cases]


def _secret(case: dict[str, Any]) -> bytes:
    if "passphrase" in case:
        return normalize_passphrase(case["passphrase"])
    return bytes.fromhex(case["raw_key"])


def _header_from_fields(fields: dict[str, Any]) -> Header:
    kdf = (
        KdfParameters(
            fields["time_cost"], fields["memory_cost_kib"], fields["parallelism"], "stored"
        )
        if fields["kdf_id"] == 1
        else None
    )
    return Header(
        store_id=bytes.fromhex(fields["store_id"]),
        kdf_id=fields["kdf_id"],
        kdf=kdf,
        salt=bytes.fromhex(fields["salt"]),
        key_generation=fields["key_generation"],
        wrap_nonce=bytes.fromhex(fields["wrap_nonce"]),
        wrapped=bytes.fromhex(fields["wrapped"]),
        flags=fields["flags"],
    )


# ---------------------------------------------------------------- known answers


@pytest.mark.parametrize("case", HEADERS, ids=_ids(HEADERS))
def test_header_parses_to_the_recorded_fields(case: dict[str, Any]) -> None:
    """Header.from_bytes reads every field at the documented offset."""
    header = Header.from_bytes(bytes.fromhex(case["header"]))
    assert header == _header_from_fields(case["fields"])
    assert header.authenticated_part().hex() == case["aad"]


@pytest.mark.parametrize("case", HEADERS, ids=_ids(HEADERS))
def test_header_serializes_to_the_recorded_bytes(case: dict[str, Any]) -> None:
    """Header.to_bytes lays the recorded fields out byte for byte as the vector."""
    assert _header_from_fields(case["fields"]).to_bytes().hex() == case["header"]


@pytest.mark.parametrize("case", HEADERS, ids=_ids(HEADERS))
def test_secret_derives_the_recorded_kek(case: dict[str, Any]) -> None:
    """Argon2id (NFC passphrase) or HKDF (raw key) gives exactly the recorded KEK."""
    if "passphrase" in case:
        assert normalize_passphrase(case["passphrase"]).hex() == case["passphrase_bytes"]
    header = Header.from_bytes(bytes.fromhex(case["header"]))
    assert derive_wrapping_key(header, _secret(case)).hex() == case["kek"]


@pytest.mark.parametrize("case", HEADERS, ids=_ids(HEADERS))
def test_kek_unwraps_the_recorded_secrets(case: dict[str, Any]) -> None:
    """The recorded KEK opens the recorded wrap to data key || hash key."""
    header = Header.from_bytes(bytes.fromhex(case["header"]))
    secrets = unwrap_secrets(bytearray.fromhex(case["kek"]), header)
    assert secrets.hex() == case["data_key"] + case["hash_key"]


@pytest.mark.parametrize("case", HEADERS, ids=_ids(HEADERS))
def test_implementation_wrap_opens_with_the_spec(case: dict[str, Any]) -> None:
    """A wrap made by the package opens with plain AES-GCM and AAD = header bytes 0..55."""
    header = Header.from_bytes(bytes.fromhex(case["header"]))
    secrets = bytearray.fromhex(case["data_key"] + case["hash_key"])
    rewrapped = wrap_secrets(bytearray.fromhex(case["kek"]), header, secrets).to_bytes()
    assert rewrapped[:56].hex() == case["aad"]
    opened = AESGCM(bytes.fromhex(case["kek"])).decrypt(
        rewrapped[56:68], rewrapped[69:], rewrapped[:56]
    )
    assert opened == bytes(secrets)


@pytest.mark.parametrize(
    "case", VECTORS["invalid_headers"], ids=_ids(VECTORS["invalid_headers"])
)
def test_malformed_header_is_refused(case: dict[str, Any]) -> None:
    """Each structurally invalid header is an IntegrityError before any key is derived."""
    with pytest.raises(IntegrityError, match="malformed"):
        Header.from_bytes(bytes.fromhex(case["header"]))


@pytest.mark.parametrize(
    "case", VECTORS["tampered_headers"], ids=_ids(VECTORS["tampered_headers"])
)
def test_edited_header_fails_the_unwrap(case: dict[str, Any]) -> None:
    """Any edit of the authenticated part, nonce or tag makes the unwrap fail."""
    header = Header.from_bytes(bytes.fromhex(case["header"]))
    kek = derive_wrapping_key(header, normalize_passphrase(case["passphrase"]))
    with pytest.raises(WrongPassphrase):
        unwrap_secrets(kek, header)


@pytest.mark.parametrize(
    "case", VECTORS["key_hashes"], ids=[str(i) for i in range(len(VECTORS["key_hashes"]))]
)
def test_key_hash_known_answer(case: dict[str, str]) -> None:
    """StoreCipher.key_hash gives the recorded keyed BLAKE2b hash of each row key."""
    cipher = StoreCipher(bytearray(32) + bytearray.fromhex(case["hash_key"]), bytes(16))
    key_hash = cipher.key_hash(case["category"], bytes.fromhex(case["row_key"]))
    assert key_hash.hex() == case["key_hash"]


@pytest.mark.parametrize("case", VECTORS["page_keys"], ids=_ids(VECTORS["page_keys"]))
def test_page_key_known_answer(case: dict[str, str]) -> None:
    """The SQLCipher page key is HKDF-SHA256 of both secrets, salted with the store id."""
    secrets = bytearray.fromhex(case["data_key"] + case["hash_key"])
    page_key = sqlcipher_layer.derive_page_key(secrets, bytes.fromhex(case["store_id"]))
    assert page_key.hex() == case["page_key"]


@pytest.mark.parametrize("case", VECTORS["sidecars"], ids=_ids(VECTORS["sidecars"]))
def test_header_file_parses_and_serializes(case: dict[str, Any]) -> None:
    """The SQLCipher header file reads to the recorded headers and writes back identically."""
    sidecar = Sidecar.from_bytes(bytes.fromhex(case["sidecar"]))
    assert sidecar.schema_version == case["schema_version"]
    assert sidecar.current.to_bytes().hex() == case["current"]
    pending = None if sidecar.pending is None else sidecar.pending.to_bytes().hex()
    assert pending == case["pending"]
    assert sidecar.to_bytes().hex() == case["sidecar"]


def test_pending_header_unwraps_to_the_next_data_key() -> None:
    """A pending header shares salt and KEK with current and wraps the next data key."""
    case = next(c for c in VECTORS["sidecars"] if c["pending"] is not None)
    source = next(h for h in HEADERS if h["name"] == case["header_case"])
    pending = Sidecar.from_bytes(bytes.fromhex(case["sidecar"])).pending
    assert pending is not None
    secrets = unwrap_secrets(bytearray.fromhex(source["kek"]), pending)
    assert secrets.hex() == case["pending_data_key"] + source["hash_key"]


def _records(case: dict[str, Any]) -> list[tuple[str, bytes, bytes]]:
    return [
        (r["category"], bytes.fromhex(r["key"]), bytes.fromhex(r["value"]))
        for r in case["records"]
    ]


@pytest.mark.parametrize("case", VECTORS["exports"], ids=_ids(VECTORS["exports"]))
def test_export_header_parses_to_the_recorded_fields(case: dict[str, Any]) -> None:
    """The 42 unencrypted bytes of an export give its KDF parameters, salt and chunk size."""
    data = bytes.fromhex(case["export"])
    header = ExportHeader.from_bytes(data[:42])
    assert (header.kdf.time_cost, header.kdf.memory_cost, header.kdf.parallelism) == (1, 8, 1)
    assert (header.salt, header.chunk_size) == (data[22:38], case["chunk_size"])
    assert header.to_bytes() == data[:42]


@pytest.mark.parametrize("case", VECTORS["exports"], ids=_ids(VECTORS["exports"]))
def test_export_vector_reads_back_in_the_package(case: dict[str, Any]) -> None:
    """An export built from the spec alone yields exactly its records to read_export."""
    fh = io.BytesIO(bytes.fromhex(case["export"]))
    assert list(read_export(fh, case["passphrase"])) == _records(case)


def test_package_export_reads_with_the_spec() -> None:
    """An export written by the package decodes with the spec's recipe (chunks, records)."""
    case = VECTORS["exports"][0]
    out = io.BytesIO()
    write_export(out, _records(case), case["passphrase"], FAST_KDF, chunk_size=1024)
    assert spec_reader.read_export_file(out.getvalue(), case["passphrase"]) == _records(case)


# ---------------------------------------------------------------- spec reader vs package


def _write_rows(v: Vault) -> None:
    for (category, key), value in ROWS.items():
        v.put(category, key, value)


def test_spec_reader_reads_a_passphrase_vault(vault_path: Path) -> None:
    """A reader built from the spec alone decrypts every row of a passphrase vault."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        _write_rows(v)
    read = spec_reader.read_vault(vault_path, PASSPHRASE)
    assert read.rows == ROWS
    assert read.header.kdf_id == 1
    assert (read.header.time_cost, read.header.memory_cost, read.header.parallelism) == (
        FAST_KDF.time_cost, FAST_KDF.memory_cost, FAST_KDF.parallelism,
    )
    assert read.schema_version == 4
    assert read.encryptions == len(ROWS)


def test_spec_reader_reads_a_raw_key_vault(vault_path: Path) -> None:
    """The spec's HKDF path opens a raw-key vault."""
    raw_key = bytes(range(32))
    with Vault.create_with_key(vault_path, raw_key) as v:
        _write_rows(v)
    read = spec_reader.read_vault(vault_path, raw_key)
    assert read.rows == ROWS
    assert (read.header.kdf_id, read.header.time_cost) == (2, 0)


def test_spec_reader_follows_rekey_and_passphrase_change(vault_path: Path) -> None:
    """After rekey and a passphrase change the header still reads as documented."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        _write_rows(v)
        v.rekey()
        v.change_passphrase(PASSPHRASE, "another passphrase")
    read = spec_reader.read_vault(vault_path, "another passphrase")
    assert read.rows == ROWS
    assert read.header.key_generation == 2


def test_spec_reader_reads_the_schema_version_1_fixture(tmp_path: Path) -> None:
    """The row layout is unchanged since version 1: the checked-in v1 vault reads too."""
    copy = tmp_path / "v1.vault"
    shutil.copy2(make_fixtures.VAULT_V1, copy)
    read = spec_reader.read_vault(copy, make_fixtures.PASSPHRASE)
    assert read.schema_version == 1 and read.encryptions is None
    assert read.rows == {(c, k): v for c, k, v in make_fixtures.ROWS}


@needs_sqlcipher
def test_spec_reader_reads_a_sqlcipher_vault(vault_path: Path) -> None:
    """Header file, page key and SQLCipher raw-key pragma are as documented."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF, sqlcipher=True) as v:
        _write_rows(v)
    read = spec_reader.read_vault(vault_path, PASSPHRASE)
    assert read.rows == ROWS
    assert read.header.flags == 1 | 2  # SQLCipher, state record
    version, _ = spec_reader.parse_sidecar(
        vault_path.with_name(vault_path.name + ".header").read_bytes()
    )
    assert version == read.schema_version == 4


def test_row_written_from_the_spec_reads_back_in_the_package(vault_path: Path) -> None:
    """A value sealed by the spec's recipe and inserted raw is read by Vault.get."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        v.put("c", b"placeholder row", b"so the schema is in use")
    conn = sqlite3.connect(vault_path, isolation_level=None)
    try:
        (blob,) = conn.execute("SELECT header FROM keystore_header").fetchone()
        header = spec_reader.parse_header(bytes(blob))
        data_key, hash_key = spec_reader.unwrap(header, spec_reader.derive_kek(header, PASSPHRASE))
        kh = spec_reader.key_hash(hash_key, "psk/v9", b"spec key")
        stored = spec_reader.seal_row(data_key, header.store_id, "psk/v9", kh, b"spec key", b"v")
        conn.execute(
            "INSERT INTO keystore_rows (category, key_hash, value) VALUES (?, ?, ?)",
            ("psk/v9", kh, stored),
        )
    finally:
        conn.close()
    with Vault.open(vault_path) as v:
        v.unlock(PASSPHRASE)
        assert v.get("psk/v9", b"spec key") == b"v"


def test_vector_header_unlocks_a_real_vault(vault_path: Path) -> None:
    """A header built from the vectors alone, put in a new vault, unlocks it there."""
    case = HEADERS[0]
    assert case["fields"]["flags"] == 0 and "passphrase" in case
    Vault.create(vault_path, "throwaway", kdf=FAST_KDF).close()
    conn = sqlite3.connect(vault_path, isolation_level=None)
    try:
        conn.execute("UPDATE keystore_header SET header = ?", (bytes.fromhex(case["header"]),))
        # The vector's header predates the state record (flag bit 1 clear): so must
        # the vault, whose record was sealed under the replaced header's keys.
        conn.execute("DELETE FROM keystore_state")
    finally:
        conn.close()
    with Vault.open(vault_path) as v:
        v.unlock(case["passphrase"])
        assert v.store_id.hex() == case["fields"]["store_id"]
        v.put("c", b"k", b"v")
        assert v.get("c", b"k") == b"v"
