"""No plaintext value or row key appears in the vault file or its WAL."""

from __future__ import annotations

import os
from pathlib import Path

from keystore import Change, Vault
from tests.conftest import FAST_KDF, PASSPHRASE
from tests.keystore.helpers import files_of


def _scan(paths: list[Path], needles: list[bytes]) -> list[tuple[str, bytes]]:
    hits = []
    for p in paths:
        data = p.read_bytes()
        hits += [(p.name, n) for n in needles if n in data]
    return hits


def test_no_plaintext_in_db_or_wal(vault_path: Path) -> None:
    """Distinctive values and row keys never reach the disk in clear, before or after close."""
    keys = [b"ROWKEY-" + os.urandom(8).hex().encode() for _ in range(50)]
    values = [b"PLAINTEXT-" + os.urandom(8).hex().encode() * 8 for _ in range(50)]
    v = Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF)
    v.apply([Change("secrets", k, val) for k, val in zip(keys, values, strict=True)])
    for k in keys[:10]:
        v.put("secrets", k, b"UPDATED-" + k)
    v.rekey()
    v.change_passphrase(PASSPHRASE, "second passphrase")
    open_files = files_of(vault_path)
    assert any(p.name.endswith("-wal") for p in open_files)  # the WAL is really scanned
    needles = keys + values + [b"UPDATED-", PASSPHRASE.encode(), b"second passphrase"]
    assert _scan(open_files, needles) == []
    v.close()
    assert _scan(files_of(vault_path), needles) == []
