"""The keystore suite runs on both kinds of vault: plain SQLite and SQLCipher."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keystore import Vault
from tests.conftest import FAST_KDF, PASSPHRASE


@pytest.fixture(params=["plain", "sqlcipher"])
def vault(request: pytest.FixtureRequest, vault_path: Path) -> Iterator[Vault]:
    """A new, unlocked vault of each kind with the test passphrase."""
    sqlcipher = request.param == "sqlcipher"
    if sqlcipher:
        pytest.importorskip("sqlcipher3", reason="the [sqlcipher] extra is not installed")
    v = Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF, sqlcipher=sqlcipher)
    try:
        yield v
    finally:
        v.close()
