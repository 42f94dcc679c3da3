"""docs/format.md §8: SQLCipher settings, page layout, and the reader's rules, on real vaults.

The settings table is compared with what SQLCipher itself reports on a vault the
package made; the page layout is proved by decrypting such a vault page by page with
the spec's recipe alone and reading the result with the standard library's SQLite.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import keystore.vault
from keystore import IntegrityError, Vault
from keystore import sqlcipher as sqlcipher_layer
from tests.conftest import FAST_KDF, PASSPHRASE
from tests.docs import spec_reader

ROOT = Path(__file__).parents[2]
FORMAT = (ROOT / "docs" / "format.md").read_text(encoding="utf-8")
VECTORS: dict[str, Any] = json.loads((ROOT / "tests" / "vectors" / "format.json").read_text())
ROWS = {
    ("openmls/v1/key_package", b"\x00\x01ref"): b"private init key",
    ("mlsrs/v1/epoch", bytes(range(40))): bytes(range(256)) * 40,  # spans pages
    ("c", b""): b"",
}
#: "| setting | value | `pragma` | `reported` |" rows of the §8.1 settings table.
_SETTING = re.compile(r"^\| [^|]+ \| [^|]+ \| `(\w+)` \| `([^`]+)` \|$", re.M)

pytestmark = pytest.mark.skipif(
    not sqlcipher_layer.available(), reason="the [sqlcipher] extra is not installed"
)


def _make(path: Path) -> None:
    with Vault.create(path, PASSPHRASE, kdf=FAST_KDF, sqlcipher=True) as v:
        for (category, key), value in ROWS.items():
            v.put(category, key, value)


def _keys(path: Path) -> tuple[spec_reader.SpecHeader, bytes, bytes]:
    """``(current header, hash_key, page key)`` from the header file, by the spec."""
    _, headers = spec_reader.parse_sidecar(path.with_name(path.name + ".header").read_bytes())
    data_key, hash_key = spec_reader.unwrap(
        headers[0], spec_reader.derive_kek(headers[0], PASSPHRASE)
    )
    return headers[0], hash_key, spec_reader.page_key(data_key, hash_key, headers[0].store_id)


def _connect(path: Path, key: bytes) -> Any:
    """A writable sqlcipher3 connection keyed as §8.1 says, with library defaults."""
    conn = sqlcipher_layer.require().connect(str(path), isolation_level=None)
    conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    return conn


def test_settings_table_is_what_sqlcipher_reports_on_a_vault(vault_path: Path) -> None:
    """Every pragma in the §8.1 table reports the documented value on a package vault."""
    _make(vault_path)
    section = FORMAT[FORMAT.index("**Settings.**") : FORMAT.index("**Page layout**")]
    documented = dict(_SETTING.findall(section))
    assert len(documented) == 9
    conn = _connect(vault_path, _keys(vault_path)[2])
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        reported = {
            name: str(conn.execute(f"PRAGMA {name}").fetchone()[0]) for name in documented
        }
    finally:
        conn.close()
    assert reported == documented
    assert int(documented["cipher_page_size"]) == spec_reader.PAGE_SIZE


def test_documented_settings_open_a_vault_from_sqlcipher_3_defaults(vault_path: Path) -> None:
    """A connection on SQLCipher 3 settings cannot read a vault until it runs the §8.1 pragmas."""
    _make(vault_path)
    key = _keys(vault_path)[2]
    db_error = sqlcipher_layer.require().DatabaseError
    conn = _connect(vault_path, key)
    try:
        conn.execute("PRAGMA cipher_compatibility = 3")
        with pytest.raises(db_error):
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    finally:
        conn.close()
    conn = _connect(vault_path, key)
    try:
        conn.execute("PRAGMA cipher_compatibility = 3")
        for setting in spec_reader.SQLCIPHER_SETTINGS:
            conn.execute(setting)
        assert conn.execute("SELECT count(*) FROM keystore_rows").fetchone()[0] == len(ROWS)
    finally:
        conn.close()


def test_spec_page_recipe_decrypts_a_vault_to_plain_sqlite(
    vault_path: Path, tmp_path: Path
) -> None:
    """Decrypting every page by §8.1 alone gives a SQLite file whose rows the spec reads."""
    _make(vault_path)
    header, hash_key, key = _keys(vault_path)
    plain = spec_reader.decrypt_sqlcipher_file(vault_path.read_bytes(), key)
    assert plain[20] == 80  # the reserved bytes per page, as the SQLite header records them
    copy = tmp_path / "decrypted.sqlite"
    copy.write_bytes(plain)
    conn = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    try:
        assert spec_reader.check_schema(conn) == 4
        assert conn.execute("SELECT count(*) FROM keystore_header").fetchone()[0] == 0
        data_key, _ = spec_reader.unwrap(header, spec_reader.derive_kek(header, PASSPHRASE))
        rows = {
            (category, key_): value
            for category, kh, stored in conn.execute(
                "SELECT category, key_hash, value FROM keystore_rows"
            )
            for key_, value in [
                spec_reader.open_row(data_key, hash_key, header.store_id, category, kh, stored)
            ]
        }
    finally:
        conn.close()
    assert rows == ROWS


def test_wal_frames_hold_pages_in_the_same_layout(vault_path: Path) -> None:
    """While a writer is open, each page in ``-wal`` passes the §8.1 HMAC under its number."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF, sqlcipher=True) as v:
        v.put("c", b"k", b"v" * 9000)
        _, _, key = _keys(vault_path)
        wal = Path(f"{vault_path}-wal").read_bytes()
        salt = vault_path.read_bytes()[:16]
        frames = range(32, len(wal) - 4096 - 24 + 1, 4096 + 24)
        assert len(frames) >= 3
        for pos in frames:
            page_no = int.from_bytes(wal[pos : pos + 4], "big")
            spec_reader.decrypt_sqlcipher_page(wal[pos + 24 : pos + 24 + 4096], page_no, key, salt)


@pytest.mark.parametrize(
    "case", VECTORS["sqlcipher_pages"], ids=lambda c: f"page-{c['page_no']}"
)
def test_page_vectors(case: dict[str, Any]) -> None:
    """The recorded pages check and decrypt to the recorded plaintext; a flipped bit fails."""
    key, salt = bytes.fromhex(case["page_key"]), bytes.fromhex(case["salt"])
    hmac_key = hashlib.pbkdf2_hmac("sha512", key, bytes(b ^ 0x3A for b in salt), 2, 32)
    assert hmac_key.hex() == case["hmac_key"]
    page = bytes.fromhex(case["page"])
    plain = spec_reader.decrypt_sqlcipher_page(page, case["page_no"], key, salt)
    start = 16 if case["page_no"] == 1 else 0
    assert plain[start : 4096 - 80].hex() == case["plaintext"]
    with pytest.raises(spec_reader.SpecError):
        spec_reader.decrypt_sqlcipher_page(page, case["page_no"] + 1, key, salt)


def test_header_row_in_a_sqlcipher_vault_is_refused(vault_path: Path) -> None:
    """§7.1: keystore_header must be empty in a SQLCipher vault; a row is IntegrityError."""
    _make(vault_path)
    header, _, key = _keys(vault_path)
    conn = _connect(vault_path, key)
    try:
        conn.execute("INSERT INTO keystore_header (id, header) VALUES (1, ?)", (header.raw,))
    finally:
        conn.close()
    before = {p.name: p.read_bytes() for p in vault_path.parent.iterdir()}
    for readonly in (True, False):
        with Vault.open(vault_path, readonly=readonly) as v, pytest.raises(
            IntegrityError, match="keystore_header"
        ):
            v.unlock(PASSPHRASE)
    with pytest.raises(spec_reader.SpecError) as caught:
        spec_reader.read_vault(vault_path, PASSPHRASE)
    assert caught.value.kind == "IntegrityError"
    after = {p.name: p.read_bytes() for p in vault_path.parent.iterdir() if p.name in before}
    assert after[vault_path.name] == before[vault_path.name]
    assert after[vault_path.name + ".header"] == before[vault_path.name + ".header"]


@pytest.mark.parametrize("rekeyed", [False, True], ids=["generation-1", "generation-2"])
def test_missing_generation_counter_means_the_current_header(
    vault_path: Path, rekeyed: bool
) -> None:
    """§8.3 step 3: without ('key_generation', g), rows are read under the current header."""
    _make(vault_path)
    if rekeyed:
        with Vault.open(vault_path) as v:
            v.unlock(PASSPHRASE)
            v.rekey()
    conn = _connect(vault_path, _keys(vault_path)[2])
    try:
        conn.execute("DELETE FROM keystore_counters WHERE name = 'key_generation'")
    finally:
        conn.close()
    read = spec_reader.read_vault(vault_path, PASSPHRASE)
    assert read.rows == ROWS and read.header.key_generation == (2 if rekeyed else 1)
    for readonly in (True, False):
        with Vault.open(vault_path, readonly=readonly) as v:
            v.unlock(PASSPHRASE)
            assert {(c, k): v.get(c, k) for c, k in ROWS} == ROWS


class _Stop(Exception):
    """Raised by the rekey seam to leave a rekey half done."""


@pytest.mark.parametrize("step", ["rows-committed", "page-rekeyed"])
def test_spec_reader_follows_an_interrupted_rekey(
    vault_path: Path, step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.3: with two headers, the key that opens the pages and the rows' generation decide."""
    _make(vault_path)

    def stop(name: str) -> None:
        if name == step:
            raise _Stop(name)

    monkeypatch.setattr(keystore.vault, "_rekey_step_hook", stop)
    with Vault.open(vault_path) as v:
        v.unlock(PASSPHRASE)
        with pytest.raises(_Stop):
            v.rekey()
    monkeypatch.setattr(keystore.vault, "_rekey_step_hook", None)
    sidecar = vault_path.with_name(vault_path.name + ".header").read_bytes()
    assert [h.key_generation for h in spec_reader.parse_sidecar(sidecar)[1]] == [1, 2]
    read = spec_reader.read_vault(vault_path, PASSPHRASE)
    assert read.rows == ROWS and read.header.key_generation == 2


def test_edited_pending_header_is_integrity_error_not_wrong_passphrase(
    vault_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§8.3 step 1: current opens, pending (same KEK) does not: IntegrityError for both."""
    _make(vault_path)

    def stop(name: str) -> None:
        if name == "rows-committed":
            raise _Stop(name)

    monkeypatch.setattr(keystore.vault, "_rekey_step_hook", stop)
    with Vault.open(vault_path) as v:
        v.unlock(PASSPHRASE)
        with pytest.raises(_Stop):
            v.rekey()
    monkeypatch.setattr(keystore.vault, "_rekey_step_hook", None)
    side = vault_path.with_name(vault_path.name + ".header")
    data = bytearray(side.read_bytes())
    data[-1] ^= 0x01  # the last byte of the pending header's wrap tag
    side.write_bytes(bytes(data))
    with Vault.open(vault_path, readonly=True) as v, pytest.raises(IntegrityError):
        v.unlock(PASSPHRASE)
    with pytest.raises(spec_reader.SpecError) as caught:
        spec_reader.read_vault(vault_path, PASSPHRASE)
    assert caught.value.kind == "IntegrityError"
