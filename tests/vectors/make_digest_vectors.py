"""Regenerate ``digest.json``: known answers for the state digest of docs/format.md §15.

Written from that section alone, with HKDF and AES from ``cryptography`` and the
standard library's BLAKE2b and HMAC; nothing here imports ``keystore``, so the tests that
check the implementation against these vectors compare two independent readings of
the spec.  Every input is fixed, so a rerun reproduces the file byte for byte.  Run
from the project root: ``python -m tests.vectors.make_digest_vectors``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

DIGEST_INFO = b"mls-keystore v1 state digest"
ROW_PERSON = b"mlks-state-row"
ANCHOR_MAGIC = b"MLKSANCH"
OUT = Path(__file__).with_name("digest.json")


def _fill(start: int, n: int) -> bytes:
    """``n`` bytes counting up from ``start`` (mod 256): recognizable in a hex dump."""
    return bytes((start + i) % 256 for i in range(n))


def digest_keys(secrets: bytes, store_id: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """row_key, mac_key, pad_key, block_key: one 128-byte HKDF-SHA256 output cut in four."""
    okm = HKDF(hashes.SHA256(), 128, store_id, DIGEST_INFO).derive(secrets)
    return okm[:32], okm[32:64], okm[64:96], okm[96:]


def block_contribution(block_key: bytes, value: bytes) -> bytes:
    """Format 2: AES-256(block_key) of the value's last 16 bytes, zero-padded on the
    left when the value is shorter (one block, so ECB is just the block cipher)."""
    block = bytes(16 - min(16, len(value))) + value[len(value) - min(16, len(value)) :]
    encryptor = Cipher(algorithms.AES(block_key), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def block_set_digest(block_key: bytes, rows: list[tuple[str, bytes, bytes]]) -> bytes:
    """Format 2: the sum of the contributions, read as big-endian integers, mod 2^128 - 1,
    as 32 big-endian bytes."""
    total = sum(int.from_bytes(block_contribution(block_key, r[2]), "big") for r in rows)
    return (total % (2**128 - 1)).to_bytes(32, "big")


def contribution(row_key: bytes, category: str, key_hash: bytes, value: bytes) -> bytes:
    """BLAKE2b-256(key = row_key, person = "mlks-state-row") of the row's encoding:
    category, key hash, the value's length, its first 13 and its last 16 bytes."""
    cat = category.encode("utf-8")
    head = value[: min(13, len(value))]
    tail = value[len(value) - min(16, len(value)) :]
    data = (
        struct.pack(">I", len(cat)) + cat + struct.pack(">I", len(key_hash)) + key_hash
        + struct.pack(">I", len(value)) + head + tail
    )
    return hashlib.blake2b(data, digest_size=32, key=row_key, person=ROW_PERSON).digest()


def set_digest(row_key: bytes, rows: list[tuple[str, bytes, bytes]]) -> bytes:
    """Sum of the contributions, read as big-endian integers, mod 2^256."""
    total = sum(int.from_bytes(contribution(row_key, *r), "big") for r in rows) % 2**256
    return total.to_bytes(32, "big")


def record(
    mac_key: bytes, pad_key: bytes, generation: int, row_count: int, digest: bytes,
    state_format: int = 2,
) -> dict[str, str]:
    """The 81-byte state record, with the tag and pad it is made of."""
    prefix = bytes([state_format]) + struct.pack(">QQ", generation, row_count)
    tag = hmac.new(mac_key, prefix + digest, "sha256").digest()
    pad = hmac.new(pad_key, tag, "sha256").digest()
    sealed = bytes(a ^ b for a, b in zip(digest, pad, strict=True))
    return {"tag": tag.hex(), "pad": pad.hex(), "record": (prefix + sealed + tag).hex()}


def _rows(seed: int) -> list[tuple[str, bytes, bytes]]:
    """Rows shaped like the vault's: a 32-byte key hash, a value-format-1 blob."""
    return [
        ("openmls/v1/group_state", _fill(seed, 32), bytes([1]) + _fill(seed + 7, 60)),
        ("openmls/v1/group_state", _fill(seed + 1, 32), bytes([1]) + _fill(seed + 9, 33)),
        ("native/v1/identity", _fill(seed + 2, 32), bytes([1]) + _fill(seed + 11, 200)),
    ]


def _row_json(row: tuple[str, bytes, bytes]) -> dict[str, str]:
    return {"category": row[0], "key_hash": row[1].hex(), "value": row[2].hex()}


def _format1(row_key: bytes, mac_key: bytes, pad_key: bytes) -> dict[str, Any]:
    """Known answers of state format 1, which a reader must still check (§15.3)."""
    rows = _rows(0x30)
    older = ("openmls/v1/group_state", rows[0][1], bytes([1]) + _fill(0x55, 60))
    contributions = [
        {**_row_json(r), "contribution": contribution(row_key, *r).hex()}
        for r in [*rows, older, ("c", b"", b""), ("c", b"k" * 32, bytes(33)),
                  ("c", b"k" * 32, _fill(0x70, 20))]
    ]
    sets = [
        {"name": name, "rows": [_row_json(r) for r in members],
         "digest": set_digest(row_key, members).hex()}
        for name, members in [
            ("empty", []),
            ("one row", rows[:1]),
            ("three rows", rows),
            ("three rows, the first in an older version", [older, *rows[1:]]),
        ]
    ]
    full = set_digest(row_key, rows)
    records = [
        {"name": "new vault", "generation": 0, "row_count": 0, "digest": bytes(32).hex(),
         **record(mac_key, pad_key, 0, 0, bytes(32), 1)},
        {"name": "three rows", "generation": 7, "row_count": 3, "digest": full.hex(),
         **record(mac_key, pad_key, 7, 3, full, 1)},
        {"name": "large counters", "generation": 2**64 - 1, "row_count": 2**40,
         "digest": (b"\xff" * 32).hex(),
         **record(mac_key, pad_key, 2**64 - 1, 2**40, b"\xff" * 32, 1)},
    ]
    return {"contributions": contributions, "sets": sets, "records": records}


def build() -> dict[str, Any]:
    secrets, store_id = _fill(0x10, 64), _fill(0xA0, 16)
    row_key, mac_key, pad_key, block_key = digest_keys(secrets, store_id)
    rows = _rows(0x30)
    older = ("openmls/v1/group_state", rows[0][1], bytes([1]) + _fill(0x55, 60))
    # The same value under another key hash: an authentic value's tag would not
    # verify there, but the contribution itself only ever sees the last 16 bytes.
    contributions = [
        {**_row_json(r), "contribution": block_contribution(block_key, r[2]).hex()}
        for r in [*rows, older, ("c", b"", b""), ("c", b"k" * 32, bytes(33)),
                  ("c", b"k" * 32, _fill(0x70, 20)), ("c", b"k" * 32, _fill(0x80, 5))]
    ]
    sets = [
        {"name": name, "rows": [_row_json(r) for r in members],
         "digest": block_set_digest(block_key, members).hex()}
        for name, members in [
            ("empty", []),
            ("one row", rows[:1]),
            ("three rows", rows),
            ("three rows, the first in an older version", [older, *rows[1:]]),
        ]
    ]
    full = block_set_digest(block_key, rows)
    top = (2**128 - 2).to_bytes(32, "big")
    records = [
        {"name": "new vault", "generation": 0, "row_count": 0, "digest": bytes(32).hex(),
         **record(mac_key, pad_key, 0, 0, bytes(32))},
        {"name": "three rows", "generation": 7, "row_count": 3, "digest": full.hex(),
         **record(mac_key, pad_key, 7, 3, full)},
        {"name": "large counters", "generation": 2**64 - 1, "row_count": 2**40,
         "digest": top.hex(), **record(mac_key, pad_key, 2**64 - 1, 2**40, top)},
    ]
    good = bytes.fromhex(str(records[1]["record"]))

    def edited(offset: int) -> str:
        return (good[:offset] + bytes([good[offset] ^ 1]) + good[offset + 1 :]).hex()

    invalid_records = [
        {"name": "empty", "record": "", "error": "IntegrityError"},
        {"name": "one byte short", "record": good[:-1].hex(), "error": "IntegrityError"},
        {"name": "one byte long", "record": (good + b"\x00").hex(), "error": "IntegrityError"},
        {"name": "format 0", "record": (b"\x00" + good[1:]).hex(), "error": "IntegrityError"},
        {"name": "format 3", "record": (b"\x03" + good[1:]).hex(), "error": "IntegrityError"},
        {"name": "format 2 relabelled as 1", "record": (b"\x01" + good[1:]).hex(),
         "error": "RollbackDetected"},
        {"name": "generation edited", "record": edited(8), "error": "RollbackDetected"},
        {"name": "row count edited", "record": edited(16), "error": "RollbackDetected"},
        {"name": "sealed digest edited", "record": edited(17), "error": "RollbackDetected"},
        {"name": "tag edited", "record": edited(80), "error": "RollbackDetected"},
        {"name": "authentic, digest not below 2^128 - 1", "error": "IntegrityError",
         "record": record(mac_key, pad_key, 7, 3, (2**128 - 1).to_bytes(32, "big"))["record"]},
    ]
    other_keys = digest_keys(_fill(0x11, 64), store_id)
    invalid_records.append(
        {"name": "record of another key", "error": "RollbackDetected",
         "record": record(other_keys[1], other_keys[2], 7, 3, full)["record"]}
    )
    anchors = [
        {"store_id": store_id.hex(), "generation": g,
         "file": (ANCHOR_MAGIC + bytes([1]) + store_id + struct.pack(">Q", g)).hex()}
        for g in (0, 1, 2**64 - 1)
    ]
    return {
        "keys": {
            "secrets": secrets.hex(), "store_id": store_id.hex(), "row_key": row_key.hex(),
            "mac_key": mac_key.hex(), "pad_key": pad_key.hex(), "block_key": block_key.hex(),
        },
        "contributions": contributions,
        "sets": sets,
        "records": records,
        "invalid_records": invalid_records,
        "anchors": anchors,
        "format1": _format1(row_key, mac_key, pad_key),
    }


def main() -> None:
    OUT.write_text(json.dumps(build(), indent=1) + "\n")


if __name__ == "__main__":
    main()
