"""The keystore suite runs on both kinds of vault file, plain SQLite and SQLCipher, and
its conformance module on a vault in PostgreSQL too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keystore import Vault
from tests.conftest import FAST_KDF, PASSPHRASE

# The PostgreSQL fixtures (a fresh schema and database handle per test), for the vault
# conformance suite (test_vault_conformance.py), which runs on both backends.
from tests.postgres.conftest import pg_db, pg_schema

__all__ = ["pg_db", "pg_schema", "vault"]


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
