"""Fixtures for running the same behaviour on a plain vault and a SQLCipher vault."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keystore import Vault
from tests.conftest import FAST_KDF, PASSPHRASE


@pytest.fixture(params=["plain", "sqlcipher"])
def vault_kind(request: pytest.FixtureRequest) -> str:
    """Which kind of vault the test runs on."""
    return str(request.param)


@pytest.fixture
def kind_vault(vault_path: Path, vault_kind: str) -> Iterator[Vault]:
    """A new, unlocked vault of ``vault_kind`` with the test passphrase."""
    v = Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF, sqlcipher=vault_kind == "sqlcipher")
    try:
        yield v
    finally:
        v.close()
