"""Fixtures shared by every test folder: temporary vault paths and fast vaults.

Every vault made here uses ``profiles.INSECURE_FOR_TESTS_ONLY`` so the suite stays
fast; nothing outside tests ever picks that profile.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keystore import Vault, profiles

PASSPHRASE = "correct horse battery staple"
FAST_KDF = profiles.INSECURE_FOR_TESTS_ONLY


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--full``: run the long campaigns (crash loops, soaks) at full size, by hand."""
    parser.addoption(
        "--full",
        action="store_true",
        default=False,
        help="run crash/soak campaigns at full size (slow; not for CI)",
    )


@pytest.fixture
def vault_path(tmp_path: Path) -> Path:
    """A path where no vault exists yet."""
    return tmp_path / "test.vault"


@pytest.fixture
def vault(vault_path: Path) -> Iterator[Vault]:
    """A new, unlocked vault with the test passphrase (closed after the test)."""
    v = Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF)
    try:
        yield v
    finally:
        v.close()
