"""The row value format against checked-in known-answer vectors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keystore import IntegrityError
from keystore.cipher import StoreCipher, _encrypt_from_parts, row_aad

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "value_format.json").read_text())


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["name"] for c in VECTORS["cases"]])
def test_value_format_known_answer(case: dict[str, str]) -> None:
    """Fixed keys and nonce give exactly the recorded key hash and ciphertext, both ways."""
    secrets = bytearray.fromhex(case["data_key"] + case["hash_key"])
    store_id = bytes.fromhex(case["store_id"])
    cipher = StoreCipher(secrets, store_id)
    key, value = bytes.fromhex(case["row_key"]), bytes.fromhex(case["value"])
    key_hash = cipher.key_hash(case["category"], key)
    assert key_hash.hex() == case["key_hash"]
    aad = row_aad(store_id, case["category"], key_hash)
    assert aad.hex() == case["aad"]
    blob = _encrypt_from_parts(
        AESGCM(bytes.fromhex(case["data_key"])), aad, key, value, bytes.fromhex(case["nonce"])
    )
    assert blob.hex() == case["stored_value"]
    assert cipher.decrypt_row(case["category"], key_hash, blob) == (key, value)


def test_random_nonces_differ() -> None:
    """Two encryptions of the same row never share a nonce or ciphertext."""
    cipher = StoreCipher.generate(bytes(16))
    kh = cipher.key_hash("c", b"k")
    a = cipher.encrypt_row("c", kh, b"k", b"v")
    b = cipher.encrypt_row("c", kh, b"k", b"v")
    assert a[1:13] != b[1:13] and a != b


def test_batch_sealing_decrypts_row_by_row() -> None:
    """seal_changes() output decrypts with decrypt_row(), each row with its own nonce."""
    cipher = StoreCipher.generate(bytes(16))
    changes: list[tuple[tuple[str, bytes], bytes | None]] = [
        (("c", bytes([i])), bytes([i]) * i) for i in range(50)
    ]
    changes.append((("c", b"gone"), None))
    upserts, deletes = cipher.seal_changes(changes, len(changes))
    assert deletes == [("c", cipher.key_hash("c", b"gone"))]
    assert len({blob[1:13] for _, _, blob in upserts}) == 50
    assert [kh for _, kh, _ in upserts] == sorted(kh for _, kh, _ in upserts)
    decrypted = {cipher.decrypt_row(cat, kh, blob) for cat, kh, blob in upserts}
    assert decrypted == {(k, v) for (_, k), v in changes if v is not None}


def test_unknown_value_format_rejected() -> None:
    """A value with an unknown format byte is an integrity failure, checked before crypto."""
    cipher = StoreCipher.generate(bytes(16))
    kh = cipher.key_hash("c", b"k")
    blob = cipher.encrypt_row("c", kh, b"k", b"v")
    with pytest.raises(IntegrityError, match="unknown value format"):
        cipher.decrypt_row("c", kh, b"\x02" + blob[1:])


def test_key_hash_depends_on_category_and_hash_key() -> None:
    """The same row key hashes differently per category and per vault."""
    a = StoreCipher.generate(bytes(16))
    b = StoreCipher.generate(bytes(16))
    assert a.key_hash("x", b"k") != a.key_hash("y", b"k")
    assert a.key_hash("x", b"k") != b.key_hash("x", b"k")
    assert a.key_hash("x", b"k") == a.key_hash("x", b"k")


def test_wipe_overwrites_and_disables() -> None:
    """After wipe() the cipher refuses to work."""
    cipher = StoreCipher.generate(bytes(16))
    kh = cipher.key_hash("c", b"k")
    cipher.wipe()
    with pytest.raises(RuntimeError):
        cipher.encrypt_row("c", kh, b"k", b"v")


def test_gil_pauses_continue_while_each_pause_returns_on_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pause that comes back on time (the GIL was free) keeps the next pauses."""
    from keystore import cipher as cipher_module

    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    pauses = cipher_module._GilPauses(0.0001)
    for _ in range(3):
        pauses()
    assert slept == [0.0001] * 3


def test_gil_pauses_stop_once_a_pause_comes_back_late(monkeypatch: pytest.MonkeyPatch) -> None:
    """A late pause means a busy thread took the GIL: the rest of the batch does not pause."""
    from keystore import cipher as cipher_module

    real_sleep = time.sleep
    slept: list[float] = []

    def held_up(seconds: float) -> None:
        slept.append(seconds)
        real_sleep(0.005)  # as if another thread kept the GIL for a switch interval

    monkeypatch.setattr(time, "sleep", held_up)
    pauses = cipher_module._GilPauses(0.0001)
    for _ in range(3):
        pauses()
    assert slept == [0.0001]


def test_seal_changes_pauses_before_each_slice_of_hashing_and_of_sealing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``pause``, 600 rows get 3 pauses while hashing keys and 3 while encrypting."""
    from types import SimpleNamespace

    from keystore import cipher as cipher_module

    slept: list[float] = []
    fake_time = SimpleNamespace(sleep=slept.append, perf_counter=time.perf_counter)
    monkeypatch.setattr(cipher_module, "time", fake_time)
    cipher = StoreCipher.generate(bytes(16))
    changes = [(("c", b"%d" % i), b"v") for i in range(600)]
    upserts, _ = cipher.seal_changes(changes, len(changes), pause=0.0001)
    assert len(upserts) == 600
    assert slept == [0.0001] * 6
    slept.clear()
    cipher.seal_changes(changes, len(changes))
    assert slept == []
