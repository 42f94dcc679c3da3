"""The digest keys never make an unwipeable ``bytes`` copy of the vault's secrets or of
their own keys: every key is handed to the libraries as the buffer that ``wipe`` and
``lock`` overwrite."""

from __future__ import annotations

import hashlib
import os
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import keystore.digest as digest_module
from keystore.digest import DigestKeys


def test_secrets_and_keys_reach_the_libraries_as_wipeable_buffers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HKDF gets the caller's bytearray of secrets; AES and BLAKE2b get the key
    buffers that ``wipe`` zeroes (not ``bytes`` copies of them)."""
    seen: dict[str, Any] = {}

    class RecordingHKDF:
        def __init__(self, **kwargs: Any) -> None:
            self._hkdf = HKDF(**kwargs)

        def derive(self, key_material: Any) -> bytes:
            seen["secrets"] = key_material
            return self._hkdf.derive(key_material)

    def aes256(key: Any) -> algorithms.AES256:
        seen["block_key"] = key
        return algorithms.AES256(key)

    def blake2b(*args: Any, **kwargs: Any) -> Any:
        seen["row_key"] = kwargs.get("key")
        return hashlib.blake2b(*args, **kwargs)

    monkeypatch.setattr(digest_module, "HKDF", RecordingHKDF)
    monkeypatch.setattr(digest_module, "algorithms", SimpleNamespace(AES256=aes256))
    monkeypatch.setattr(digest_module, "hashlib", SimpleNamespace(blake2b=blake2b))
    secrets = bytearray(os.urandom(64))
    keys = DigestKeys(secrets, os.urandom(16))
    assert seen["secrets"] is secrets
    assert isinstance(seen["block_key"], bytearray)
    assert isinstance(seen["row_key"], bytearray)
    keys.wipe()
    assert seen["block_key"] == bytes(32)
    assert seen["row_key"] == bytes(32)


def test_keys_given_as_buffers_still_give_the_known_answers() -> None:
    """Passing the buffers (not copies) changes no output: the contribution of a value
    is AES-256 of its tag under the block key, as docs/format.md §15.2 says."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    secrets, store_id = os.urandom(64), os.urandom(16)
    okm = HKDF(algorithm=hashes.SHA256(), length=128, salt=store_id,
               info=b"mls-keystore v1 state digest").derive(secrets)
    value = os.urandom(60)
    enc = Cipher(algorithms.AES256(okm[96:128]), modes.ECB()).encryptor()
    expected = int.from_bytes(enc.update(value[-16:]), "big")
    keys = DigestKeys(bytearray(secrets), store_id)
    assert keys.contribution("c", bytes(32), value) == expected
