"""docs/format.md §1: which files sit beside a vault, and when.

A read-only open cannot checkpoint, so it leaves ``-wal`` (empty) and ``-shm`` behind;
a writable open and clean close removes them.  Both kinds of vault.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from keystore import Vault
from keystore import sqlcipher as sqlcipher_layer
from tests.conftest import FAST_KDF, PASSPHRASE

KINDS = [
    pytest.param(False, id="plain"),
    pytest.param(
        True,
        id="sqlcipher",
        marks=pytest.mark.skipif(
            not sqlcipher_layer.available(), reason="the [sqlcipher] extra is not installed"
        ),
    ),
]


def _beside(path: Path) -> set[str]:
    return {p.name.removeprefix(path.name) for p in path.parent.iterdir()}


@pytest.mark.parametrize("sqlcipher", KINDS)
def test_read_only_open_leaves_an_empty_wal_and_its_index(
    vault_path: Path, sqlcipher: bool
) -> None:
    """After a clean writable close only P (+ .lock, .header) remain; a read-only one leaves
    P-wal (0 bytes) and P-shm, both 0600, until the next writable open and close."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF, sqlcipher=sqlcipher) as v:
        v.put("c", b"k", b"v")
    clean = {"", ".lock"} | ({".header"} if sqlcipher else set())
    assert _beside(vault_path) == clean
    with Vault.open(vault_path, readonly=True) as v:
        v.unlock(PASSPHRASE)
        assert v.get("c", b"k") == b"v"
    assert _beside(vault_path) == clean | {"-wal", "-shm"}
    wal, shm = Path(f"{vault_path}-wal"), Path(f"{vault_path}-shm")
    assert wal.stat().st_size == 0
    assert stat.S_IMODE(wal.stat().st_mode) == stat.S_IMODE(shm.stat().st_mode) == 0o600
    with Vault.open(vault_path) as v:
        v.unlock(PASSPHRASE)
    assert _beside(vault_path) == clean
