"""Fixtures shared by every test folder: temporary vault paths and fast vaults.

Every vault made here uses ``profiles.INSECURE_FOR_TESTS_ONLY`` so the suite stays
fast; nothing outside tests ever picks that profile.
"""

from __future__ import annotations

import os
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


#: Environment switches some campaigns read at import time; ``--full`` sets them all.
FULL_SWITCHES = ("MLS_KEYSTORE_FULL", "MLS_CLIENT_FULL", "MLS_STORAGE_FULL", "MLS_NATIVE_FULL")


def pytest_configure(config: pytest.Config) -> None:
    """Make ``--full`` reach the campaigns that read an environment switch."""
    if config.getoption("--full"):
        for name in FULL_SWITCHES:
            os.environ[name] = "1"


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
