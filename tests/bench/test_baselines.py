"""The baselines do the real work they are credited with."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.baselines import PlaintextRows, SnapshotStore, SqlcipherRows, seal_values

ROWS = [("c1", b"k1", b"v1"), ("c1", b"k2", b""), ("c2", b"k1", os.urandom(300))]


def test_snapshot_saves_and_loads_the_whole_state(tmp_path: Path) -> None:
    """A snapshot reads back exactly the state that was saved."""
    state = {"c1": {b"a": b"1", b"b": os.urandom(2000)}, "c2": {b"": b""}}
    store = SnapshotStore(tmp_path / "snap", os.urandom(32))
    written = store.save(state)
    assert written == (tmp_path / "snap").stat().st_size
    assert store.load() == state


def test_snapshot_is_encrypted_and_authenticated(tmp_path: Path) -> None:
    """The snapshot holds no plaintext, and a flipped byte fails to load."""
    store = SnapshotStore(tmp_path / "snap", os.urandom(32))
    store.save({"cat": {b"key": b"plaintext-marker"}})
    blob = bytearray((tmp_path / "snap").read_bytes())
    assert b"plaintext-marker" not in blob
    blob[-1] ^= 1
    (tmp_path / "snap").write_bytes(bytes(blob))
    with pytest.raises(InvalidTag):
        store.load()


@pytest.mark.parametrize("kind", ["plaintext", "sqlcipher"])
def test_row_baselines_store_what_they_upsert(tmp_path: Path, kind: str) -> None:
    """Both row baselines persist every row, and a second upsert replaces values."""
    table = (
        PlaintextRows(tmp_path / "p.db")
        if kind == "plaintext"
        else SqlcipherRows(tmp_path / "s.db", os.urandom(32))
    )
    table.upsert(ROWS)
    table.upsert([("c1", b"k1", b"new")])
    assert sorted(table.scan()) == sorted([("c1", b"k1", b"new"), *ROWS[1:]])
    table.close()


def test_sealed_values_decrypt_to_the_originals() -> None:
    """Bare AES-GCM sealing uses a distinct nonce per value and round-trips."""
    key = os.urandom(32)
    values = [b"a", b"b" * 100, b""]
    sealed = seal_values(AESGCM(key), values, len(values))
    assert len({s[:12] for s in sealed}) == len(values)
    assert [AESGCM(key).decrypt(s[:12], s[12:], None) for s in sealed] == values
