"""Every edit of a SQLCipher vault's header file is refused with a keystore error.

The header file sits outside the encrypted database, so it is the part an attacker
can edit without any key.  Each of its bits is flipped in turn, and it is truncated
at every length: opening and unlocking must fail with a ``KeystoreError`` (never
another exception, never success), and the database must be left untouched.

Flips in the Argon2id cost fields either exceed the caps in ``keystore.profiles``
(refused before any hashing) or, from the cheap test profile, stay cheap enough
to run: they then fail the authenticated unwrap.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keystore import KeystoreError, Vault
from keystore.sidecar import Sidecar, sidecar_path_for
from tests.conftest import FAST_KDF, PASSPHRASE


@pytest.fixture
def made(vault_path: Path) -> tuple[Path, bytes]:
    """A closed SQLCipher vault with one row, and its header file's bytes."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF, sqlcipher=True) as v:
        v.put("groups", b"g", b"x")
    return vault_path, sidecar_path_for(vault_path).read_bytes()


def _refused(path: Path, header_file: bytes) -> None:
    """Install ``header_file`` and check that the vault cannot be opened and unlocked."""
    sidecar_path_for(path).write_bytes(header_file)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(KeystoreError), Vault.open(path) as v:
        v.unlock(PASSPHRASE)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_every_bit_flip_refused(made: tuple[Path, bytes]) -> None:
    """Flipping any one bit of the header file makes open or unlock fail."""
    path, good = made
    for index in range(len(good)):
        for bit in (0x01, 0x80):
            edited = bytearray(good)
            edited[index] ^= bit
            _refused(path, bytes(edited))


def test_every_truncation_refused(made: tuple[Path, bytes]) -> None:
    """A header file cut short at any length, or extended, is refused."""
    path, good = made
    for cut in range(len(good)):
        _refused(path, good[:cut])
    _refused(path, good + b"\x00")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_parser_raises_only_keystore_errors(data: bytes) -> None:
    """Arbitrary bytes either parse or raise a KeystoreError (no other exception)."""
    with contextlib.suppress(KeystoreError):
        Sidecar.from_bytes(data)
