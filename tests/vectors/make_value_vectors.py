"""Regenerate ``value_format.json`` from the byte-level spec in docs/format.md.

Deliberately written from the spec, not by calling ``keystore``: the test then checks
the implementation against an independent reading of the format.  Run from the
project root: ``python -m tests.vectors.make_value_vectors``.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CASES = [
    ("empty-key-empty-value", "c", b"", b""),
    ("short", "key_packages", b"ref-1", b"private init key"),
    ("binary", "group/tree:v1", bytes(range(40)), bytes(range(255, -1, -1)) * 3),
]


def make() -> dict[str, object]:
    """Build every case deterministically from fixed keys and nonces."""
    out = []
    for i, (name, category, key, value) in enumerate(CASES):
        data_key = bytes([i + 1]) * 32
        hash_key = bytes([0x80 + i]) * 32
        store_id = bytes(range(i, i + 16))
        nonce = bytes([0xA0 + i]) * 12
        cat = category.encode()
        cat_key = hashlib.blake2b(cat, key=hash_key, digest_size=32, person=b"mlks-category")
        key_hash = hashlib.blake2b(
            key, key=cat_key.digest(), digest_size=32, person=b"mlks-row-key"
        ).digest()
        aad = b"\x01" + store_id + struct.pack(">H", len(cat)) + cat + key_hash
        plaintext = struct.pack(">I", len(key)) + key + value
        stored = b"\x01" + nonce + AESGCM(data_key).encrypt(nonce, plaintext, aad)
        out.append(
            {
                "name": name,
                "data_key": data_key.hex(),
                "hash_key": hash_key.hex(),
                "store_id": store_id.hex(),
                "category": category,
                "row_key": key.hex(),
                "value": value.hex(),
                "nonce": nonce.hex(),
                "key_hash": key_hash.hex(),
                "aad": aad.hex(),
                "stored_value": stored.hex(),
            }
        )
    return {"description": "mls-keystore row value format 1 (docs/format.md)", "cases": out}


if __name__ == "__main__":
    target = Path(__file__).with_name("value_format.json")
    target.write_text(json.dumps(make(), indent=2) + "\n")
    print(f"wrote {target}")
