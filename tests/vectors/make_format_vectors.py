"""Regenerate ``format.json``: known answers for the vault formats in docs/format.md.

Written from the byte-level spec alone, with Argon2id and the primitives of
``cryptography``; nothing here imports ``keystore``, so the test that checks the
implementation against these vectors compares two independent readings of the spec.
Every input is fixed, so a rerun reproduces the file byte for byte.  Run from the
project root: ``python -m tests.vectors.make_format_vectors``.

The migration steps are read from the spec itself (the statement blocks of
docs/format.md §7.2): their checksums are computed here from that text, and a step
whose documented checksum disagrees with its documented text stops the generator.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
import unicodedata
from pathlib import Path
from typing import Any

from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"MLKS"
RAW_KEY_INFO = b"mls-keystore v1 raw-key wrap"
PAGE_KEY_INFO = b"mls-keystore v1 sqlcipher page key"
SIDECAR_MAGIC = b"MLKSSQLC"
FORMAT_DOC = Path(__file__).parents[2] / "docs" / "format.md"
#: "Step N, `name`, checksum `hex`:" followed by a ```text block, one statement a line.
_STEP = re.compile(
    r"^Step (\d+), `([^`]+)`, checksum `([0-9a-f]{64})`:\n\n```text\n(.*?)\n```", re.M | re.S
)


def _fill(start: int, n: int) -> bytes:
    """``n`` bytes counting up from ``start`` (mod 256): recognizable in a hex dump."""
    return bytes((start + i) % 256 for i in range(n))


def authenticated_part(
    *, flags: int, store_id: bytes, kdf_id: int, t: int, m: int, p: int, salt: bytes,
    key_generation: int,
) -> bytes:
    """Header bytes 0..55, the AAD of the wrap."""
    return (
        MAGIC
        + bytes([1, flags])
        + store_id
        + bytes([kdf_id])
        + struct.pack(">III", t, m, p)
        + bytes([len(salt)])
        + salt
        + struct.pack(">I", key_generation)
    )


def kek_from_passphrase(passphrase: str, salt: bytes, t: int, m: int, p: int) -> bytes:
    """Argon2id v1.3, 32-byte tag, over the NFC-normalized UTF-8 passphrase."""
    secret = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    return hash_secret_raw(secret, salt, t, m, p, 32, Type.ID)


def kek_from_raw_key(raw_key: bytes, salt: bytes) -> bytes:
    """HKDF-SHA256 with the header salt and the raw-key info label."""
    return HKDF(hashes.SHA256(), 32, salt, RAW_KEY_INFO).derive(raw_key)


def header_case(
    name: str, *, passphrase: str | None, raw_key: bytes | None, flags: int,
    kdf: tuple[int, int, int] | None, key_generation: int, seed: int,
) -> dict[str, Any]:
    """One header: its bytes, its fields, the KEK derived from its secret, and the unwrap."""
    store_id, salt, nonce = _fill(seed, 16), _fill(seed + 0x40, 16), _fill(seed + 0x80, 12)
    data_key, hash_key = _fill(seed + 0x10, 32), _fill(seed + 0xC0, 32)
    t, m, p = kdf if kdf is not None else (0, 0, 0)
    kdf_id = 1 if kdf is not None else 2
    aad = authenticated_part(
        flags=flags, store_id=store_id, kdf_id=kdf_id, t=t, m=m, p=p, salt=salt,
        key_generation=key_generation,
    )
    if passphrase is not None:
        kek = kek_from_passphrase(passphrase, salt, t, m, p)
    else:
        assert raw_key is not None
        kek = kek_from_raw_key(raw_key, salt)
    wrapped = AESGCM(kek).encrypt(nonce, data_key + hash_key, aad)
    header = aad + nonce + bytes([len(wrapped)]) + wrapped
    case: dict[str, Any] = {
        "name": name,
        "header": header.hex(),
        "fields": {
            "flags": flags,
            "store_id": store_id.hex(),
            "kdf_id": kdf_id,
            "time_cost": t,
            "memory_cost_kib": m,
            "parallelism": p,
            "salt": salt.hex(),
            "key_generation": key_generation,
            "wrap_nonce": nonce.hex(),
            "wrapped": wrapped.hex(),
        },
        "aad": aad.hex(),
    }
    if passphrase is not None:
        case["passphrase"] = passphrase
        case["passphrase_bytes"] = unicodedata.normalize("NFC", passphrase).encode().hex()
    else:
        assert raw_key is not None
        case["raw_key"] = raw_key.hex()
    case.update(kek=kek.hex(), data_key=data_key.hex(), hash_key=hash_key.hex())
    return case


def header_cases() -> list[dict[str, Any]]:
    """Argon2id (ASCII and a decomposed-Unicode passphrase), raw key, SQLCipher flag."""
    return [
        header_case(
            "argon2id-ascii", passphrase="correct horse battery staple", raw_key=None,
            flags=0, kdf=(1, 8, 1), key_generation=1, seed=0x00,
        ),
        header_case(
            # "Zürich Ångström" typed with combining marks: NFC makes it 3 bytes shorter.
            "argon2id-nfd-passphrase", passphrase="Zu\u0308rich A\u030angstro\u0308m",
            raw_key=None, flags=0, kdf=(2, 16, 2), key_generation=3, seed=0x20,
        ),
        header_case(
            "raw-key", passphrase=None, raw_key=_fill(0xE0, 32), flags=0, kdf=None,
            key_generation=1, seed=0x50,
        ),
        header_case(
            "argon2id-sqlcipher", passphrase="page keys too", raw_key=None, flags=1,
            kdf=(1, 8, 1), key_generation=2, seed=0x70,
        ),
    ]


def invalid_header_cases(valid: bytes) -> list[dict[str, str]]:
    """Structurally bad headers a reader must refuse before deriving any key."""

    def edit(offset: int, new: bytes) -> bytes:
        return valid[:offset] + new + valid[offset + len(new) :]

    raw_with_params = edit(22, bytes([2]))  # raw-key id, but t/m/p still non-zero
    return [
        {"name": "bad-magic", "header": edit(0, b"MLKT").hex()},
        {"name": "unknown-header-format", "header": edit(4, bytes([2])).hex()},
        {"name": "unknown-flag", "header": edit(5, bytes([0x04])).hex()},
        {"name": "unknown-kdf-id", "header": edit(22, bytes([3])).hex()},
        {"name": "raw-key-with-kdf-parameters", "header": raw_with_params.hex()},
        {"name": "memory-below-argon2-minimum", "header": edit(27, struct.pack(">I", 7)).hex()},
        {"name": "zero-time-cost", "header": edit(23, struct.pack(">I", 0)).hex()},
        # Above the caps (t <= 16, m <= 2 GiB, p <= 64): refused before Argon2 runs.
        {"name": "time-cost-above-cap", "header": edit(23, struct.pack(">I", 17)).hex()},
        {"name": "time-cost-near-2-32", "header": edit(23, struct.pack(">I", 2**31)).hex()},
        {
            "name": "memory-above-cap",
            "header": edit(27, struct.pack(">I", 2 * 1024 * 1024 + 1)).hex(),
        },
        {
            "name": "parallelism-above-cap",
            "header": edit(27, struct.pack(">II", 1024, 65)).hex(),
        },
        {"name": "salt-length-not-16", "header": edit(35, bytes([15])).hex()},
        {"name": "wrapped-length-not-80", "header": edit(68, bytes([79])).hex()},
        {"name": "truncated", "header": valid[:-1].hex()},
        {"name": "trailing-byte", "header": (valid + b"\x00").hex()},
        {"name": "too-short-for-fixed-part", "header": valid[:20].hex()},
    ]


def tampered_header_cases(case: dict[str, Any]) -> list[dict[str, str]]:
    """Well-formed headers whose authenticated part was edited: the unwrap must fail."""
    valid = bytes.fromhex(case["header"])

    def edit(offset: int, new: bytes) -> dict[str, str]:
        return {"header": (valid[:offset] + new + valid[offset + len(new) :]).hex()}

    out = []
    for name, offset, new in (
        ("store-id-changed", 6, b"\xff"),
        ("time-cost-raised", 23, struct.pack(">I", 2)),
        ("salt-changed", 36, b"\x00"),
        ("key-generation-changed", 52, struct.pack(">I", 9)),
        ("wrap-nonce-changed", 56, b"\x00"),
        ("wrapped-tag-changed", 148, b"\x00"),
    ):
        out.append({"name": name, "passphrase": case["passphrase"], **edit(offset, new)})
    return out


def key_hash_cases() -> list[dict[str, str]]:
    """Keyed BLAKE2b-256 of row keys, per category."""
    out = []
    for i, (category, key) in enumerate(
        (
            ("c", b""),
            ("openmls/v1/key_package", bytes.fromhex("0001020304")),
            ("openmls/v1/key_package", bytes.fromhex("0001020305")),
            ("mlsrs/v1/epoch", _fill(0x33, 24)),
            ("A" + "z" * 127, b"max-length category"),
        )
    ):
        hash_key = _fill(0x90 + i, 32)
        category_key = hashlib.blake2b(
            category.encode(), key=hash_key, digest_size=32, person=b"mlks-category"
        ).digest()
        key_hash = hashlib.blake2b(
            key, key=category_key, digest_size=32, person=b"mlks-row-key"
        ).digest()
        out.append(
            {
                "hash_key": hash_key.hex(),
                "category": category,
                "row_key": key.hex(),
                "category_key": category_key.hex(),
                "key_hash": key_hash.hex(),
            }
        )
    return out


def page_key_cases(headers: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The SQLCipher page key of the SQLCipher-flagged header case."""
    out = []
    for case in headers:
        if case["fields"]["flags"] & 1:
            secrets = bytes.fromhex(case["data_key"] + case["hash_key"])
            store_id = bytes.fromhex(case["fields"]["store_id"])
            page_key = HKDF(hashes.SHA256(), 32, store_id, PAGE_KEY_INFO).derive(secrets)
            out.append(
                {
                    "header_case": case["name"],
                    "data_key": case["data_key"],
                    "hash_key": case["hash_key"],
                    "store_id": store_id.hex(),
                    "page_key": page_key.hex(),
                    "pragma_key": f"PRAGMA key = \"x'{page_key.hex()}'\"",
                }
            )
    return out


def sidecar_cases(case: dict[str, Any]) -> list[dict[str, Any]]:
    """A header file with one header, and one mid-rekey with a pending header."""
    current = bytes.fromhex(case["header"])
    f = case["fields"]
    next_data_key = _fill(0xA5, 32)
    salt = bytes.fromhex(f["salt"])
    kek = bytes.fromhex(case["kek"])
    pending_aad = authenticated_part(
        flags=f["flags"], store_id=bytes.fromhex(f["store_id"]), kdf_id=f["kdf_id"],
        t=f["time_cost"], m=f["memory_cost_kib"], p=f["parallelism"], salt=salt,
        key_generation=f["key_generation"] + 1,
    )
    pending_nonce = _fill(0xD0, 12)
    pending_wrapped = AESGCM(kek).encrypt(
        pending_nonce, next_data_key + bytes.fromhex(case["hash_key"]), pending_aad
    )
    pending = pending_aad + pending_nonce + bytes([len(pending_wrapped)]) + pending_wrapped

    def sidecar(schema_version: int, headers: list[bytes]) -> bytes:
        body = b"".join(struct.pack(">H", len(h)) + h for h in headers)
        return SIDECAR_MAGIC + bytes([1]) + struct.pack(">I", schema_version) + bytes(
            [len(headers)]
        ) + body

    return [
        {
            "name": "one-header",
            "header_case": case["name"],
            "sidecar": sidecar(3, [current]).hex(),
            "schema_version": 3,
            "current": current.hex(),
            "pending": None,
        },
        {
            "name": "rekey-in-progress",
            "header_case": case["name"],
            "sidecar": sidecar(3, [current, pending]).hex(),
            "schema_version": 3,
            "current": current.hex(),
            "pending": pending.hex(),
            "pending_data_key": next_data_key.hex(),
        },
    ]


def _export_stream(records: list[tuple[str, bytes, bytes]], count: int | None = None) -> bytes:
    """Row records, then the end record with ``count`` (default: the true count)."""
    return b"".join(
        b"\x01" + struct.pack(">H", len(c)) + c.encode() + struct.pack(">I", len(k)) + k
        + struct.pack(">I", len(v)) + v
        for c, k, v in records
    ) + b"\x00" + struct.pack(">Q", len(records) if count is None else count)


def export_case(
    name: str, records: list[tuple[str, bytes, bytes]], seed: int, stream: bytes | None = None
) -> dict[str, Any]:
    """An export file: Argon2id key, 42-byte header, header tag, counter-nonce chunks.

    ``stream`` replaces the record stream (to build authenticated but invalid files).
    """
    passphrase, chunk_size = "backup passphrase", 1024
    t, m, p, salt = 1, 8, 1, _fill(seed, 16)
    header = b"MLKSEXP\x00" + bytes([1, 1]) + struct.pack(">III", t, m, p) + salt
    header += struct.pack(">I", chunk_size)
    key = kek_from_passphrase(passphrase, salt, t, m, p)
    aead = AESGCM(key)
    if stream is None:
        stream = _export_stream(records)
    out = header + aead.encrypt(b"\xff" * 12, b"", header)
    pieces = [stream[i : i + chunk_size] for i in range(0, len(stream), chunk_size)]
    if len(stream) % chunk_size == 0:
        pieces.append(b"")  # the final chunk is always present, empty if need be
    for index, piece in enumerate(pieces):
        last = b"\x01" if index == len(pieces) - 1 else b"\x00"
        out += aead.encrypt(index.to_bytes(11, "big") + last, piece, header)
    return {
        "name": name,
        "passphrase": passphrase,
        "key": key.hex(),
        "chunk_size": chunk_size,
        "chunks": len(pieces),
        "records": [{"category": c, "key": k.hex(), "value": v.hex()} for c, k, v in records],
        "export": out.hex(),
    }


def export_cases() -> list[dict[str, Any]]:
    """Two chunks with a short last one, and a stream that fills its chunk exactly."""
    return [
        export_case(
            "two-chunks",
            [
                ("openmls/v1/key_package", b"ref", _fill(0x00, 700)),
                ("mlsrs/v1/epoch", _fill(0x10, 12), _fill(0x20, 500)),
                ("c", b"", b""),
            ],
            seed=0x31,
        ),
        # 1 + 2 + 1 + 4 + 1 + 4 + 1002 record bytes + 9 end bytes = 1024: one full chunk,
        # then an empty last chunk.
        export_case("exact-chunk", [("c", b"k", _fill(0x40, 1002))], seed=0x32),
    ]


def invalid_export_cases(valid: bytes) -> list[dict[str, Any]]:
    """Export files a reader must refuse, each with the error §11 names."""

    def edit(offset: int, new: bytes) -> str:
        return (valid[:offset] + new + valid[offset + len(new) :]).hex()

    integrity, too_new, wrong = "IntegrityError", "SchemaTooNew", "WrongPassphrase"
    cases = [
        ("bad-magic", edit(0, b"MLKSEXQ"), integrity),
        ("header-truncated", valid[:41].hex(), integrity),
        ("format-0", edit(8, b"\x00"), integrity),
        ("format-newer", edit(8, b"\x03"), too_new),
        ("unknown-kdf-id", edit(9, b"\x02"), integrity),
        ("time-cost-0", edit(10, struct.pack(">I", 0)), integrity),
        ("memory-below-argon2-minimum", edit(14, struct.pack(">I", 7)), integrity),
        ("parallelism-0", edit(18, struct.pack(">I", 0)), integrity),
        ("time-cost-above-cap", edit(10, struct.pack(">I", 17)), integrity),
        ("memory-above-cap", edit(14, struct.pack(">I", 2 * 1024 * 1024 + 1)), integrity),
        ("parallelism-above-cap", edit(14, struct.pack(">II", 1024, 65)), integrity),
        ("chunk-size-below-1024", edit(38, struct.pack(">I", 1023)), integrity),
        ("chunk-size-above-16-mib", edit(38, struct.pack(">I", (1 << 24) + 1)), integrity),
        ("salt-changed", edit(22, b"\x00"), wrong),
        ("header-tag-changed", edit(42, b"\x00"), wrong),
        ("ends-inside-header-tag", valid[:50].hex(), wrong),
        ("chunk-byte-changed", edit(100, b"\x00"), integrity),
        ("last-chunk-missing", valid[: 58 + 1024 + 16].hex(), integrity),
        ("trailing-byte", (valid + b"\x00").hex(), integrity),
    ]
    # Everything before the salt case is refused before Argon2 runs (§11).
    before_kdf = [n for n, _, _ in cases][: [n for n, _, _ in cases].index("salt-changed")]
    out = [
        {"name": n, "export": hexed, "error": e, "before_kdf": n in before_kdf}
        for n, hexed, e in cases
    ]
    good = [("c", b"k", b"v")]
    for name, stream in (
        ("record-count-wrong", _export_stream(good, count=2)),
        ("category-invalid", _export_stream([("not a category", b"k", b"v")])),
        ("data-after-end-record", _export_stream(good) + b"\x00"),
        ("unknown-record-type", b"\x02" + _export_stream(good)[1:]),
        ("no-end-record", _export_stream(good)[:-9]),
    ):
        case = export_case(name, good, seed=0x33, stream=stream)
        out.append(
            {"name": name, "export": case["export"], "error": integrity, "before_kdf": False}
        )
    return out


def invalid_sidecar_cases(one: bytes, two: bytes) -> list[dict[str, str]]:
    """Header files a reader must refuse, each with the error §8.2 names.

    ``one`` holds a single header, ``two`` a current and a pending one.
    """

    def edit(data: bytes, offset: int, new: bytes) -> str:
        return (data[:offset] + new + data[offset + len(new) :]).hex()

    pending = 14 + 2 + 149 + 2  # offset of the pending header in ``two``
    integrity = "IntegrityError"
    cases = [
        ("bad-magic", edit(one, 0, b"MLKSSQLD"), "NotAVault"),
        ("shorter-than-fixed-part", one[:13].hex(), "NotAVault"),
        ("larger-than-4096-bytes", (one + bytes(4096)).hex(), "NotAVault"),
        ("sidecar-format-newer", edit(one, 8, b"\x02"), "SchemaTooNew"),
        ("sidecar-format-0", edit(one, 8, b"\x00"), integrity),
        ("header-count-0", edit(one, 13, b"\x00"), integrity),
        ("header-count-3", edit(one, 13, b"\x03"), integrity),
        ("header-count-2-but-one-header", edit(one, 13, b"\x02"), integrity),
        ("truncated", one[:-1].hex(), integrity),
        ("trailing-byte", (one + b"\x00").hex(), integrity),
        ("header-len-148", edit(one, 14, struct.pack(">H", 148)), integrity),
        ("malformed-header", edit(one, 16 + 22, b"\x03"), integrity),
        ("header-without-sqlcipher-flag", edit(one, 16 + 5, b"\x00"), integrity),
        ("pending-without-sqlcipher-flag", edit(two, pending + 5, b"\x00"), integrity),
        ("pending-generation-not-next", edit(two, pending + 52, struct.pack(">I", 9)), integrity),
        ("pending-salt-differs", edit(two, pending + 36, b"\x00"), integrity),
        ("pending-store-id-differs", edit(two, pending + 6, b"\x00"), integrity),
    ]
    return [{"name": n, "sidecar": hexed, "error": e} for n, hexed, e in cases]


def sqlcipher_page_cases(page_keys: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Pages 1 and 2 encrypted as §8.1 lays them out, under the vector page key."""
    key = bytes.fromhex(page_keys[0]["page_key"])
    salt = _fill(0x5A, 16)
    hmac_key = hashlib.pbkdf2_hmac("sha512", key, bytes(b ^ 0x3A for b in salt), 2, 32)
    out = []
    for page_no in (1, 2):
        plaintext = _fill(page_no, 4096 - 80 - (16 if page_no == 1 else 0))
        iv = _fill(0xB0 + page_no, 16)
        encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(plaintext) + encryptor.finalize()
        mac = hmac.new(hmac_key, ciphertext + iv + struct.pack("<I", page_no), "sha512").digest()
        page = (salt if page_no == 1 else b"") + ciphertext + iv + mac
        out.append(
            {
                "page_key": key.hex(),
                "salt": salt.hex(),
                "hmac_key": hmac_key.hex(),
                "page_no": page_no,
                "iv": iv.hex(),
                "plaintext": plaintext.hex(),
                "page": page.hex(),
            }
        )
    return out


def checksum_input(version: int, name: str, statements: list[str], python_id: str) -> bytes:
    """The bytes §7.2 hashes: each part as u32 length || UTF-8."""
    out = b""
    for part in (str(version), name, *statements, python_id):
        data = part.encode("utf-8")
        out += struct.pack(">I", len(data)) + data
    return out


def migration_cases(spec: str) -> list[dict[str, Any]]:
    """Every shipped step as documented: name, statements, hashed bytes and checksum."""
    out = []
    for version, name, documented, block in _STEP.findall(spec):
        statements = block.split("\n")
        hashed = checksum_input(int(version), name, statements, "")
        checksum = hashlib.sha256(hashed).hexdigest()
        if checksum != documented:
            raise SystemExit(
                f"docs/format.md: step {version} documents checksum {documented}, "
                f"but its documented text hashes to {checksum}"
            )
        out.append(
            {
                "version": int(version),
                "name": name,
                "statements": statements,
                "python_id": "",
                "checksum_input": hashed.hex(),
                "checksum": checksum,
            }
        )
    if [c["version"] for c in out] != list(range(1, len(out) + 1)) or not out:
        raise SystemExit("docs/format.md: the migration steps are not numbered 1, 2, 3, …")
    return out


def make() -> dict[str, Any]:
    """Every vector set, deterministically."""
    headers = header_cases()
    page_keys = page_key_cases(headers)
    sidecars = sidecar_cases(headers[3])
    exports = export_cases()
    return {
        "description": "mls-keystore header, key wrapping, key hash, SQLCipher page key and "
        "page layout, header file and export file with the files a reader must refuse, and "
        "the migration steps (docs/format.md); the row value format is in value_format.json",
        "headers": headers,
        "invalid_headers": invalid_header_cases(bytes.fromhex(headers[0]["header"])),
        "tampered_headers": tampered_header_cases(headers[0]),
        "key_hashes": key_hash_cases(),
        "page_keys": page_keys,
        "sqlcipher_pages": sqlcipher_page_cases(page_keys),
        "sidecars": sidecars,
        "invalid_sidecars": invalid_sidecar_cases(
            bytes.fromhex(sidecars[0]["sidecar"]), bytes.fromhex(sidecars[1]["sidecar"])
        ),
        "exports": exports,
        "invalid_exports": invalid_export_cases(bytes.fromhex(exports[0]["export"])),
        "migrations": migration_cases(FORMAT_DOC.read_text(encoding="utf-8")),
    }


if __name__ == "__main__":
    target = Path(__file__).with_name("format.json")
    target.write_text(json.dumps(make(), indent=2) + "\n")
    print(f"wrote {target}")
