"""Fixtures for the rollback tests: vaults of both kinds and an anchor kept elsewhere."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from keystore import Vault
from keystore.anchor import FileAnchor, GenerationAnchor
from keystore.sidecar import sidecar_path_for
from tests.conftest import FAST_KDF, PASSPHRASE


@pytest.fixture(params=["plain", "sqlcipher"])
def kind(request: pytest.FixtureRequest) -> str:
    """Each test runs on a plain SQLite vault and on a SQLCipher vault."""
    if request.param == "sqlcipher":
        pytest.importorskip("sqlcipher3", reason="the [sqlcipher] extra is not installed")
    return str(request.param)


@pytest.fixture
def anchor(tmp_path: Path) -> FileAnchor:
    """A file anchor in a directory of its own, away from the vault and its copies."""
    (tmp_path / "anchors").mkdir()
    return FileAnchor(tmp_path / "anchors" / "vault.anchor")


def make_vault(path: Path, kind: str) -> Vault:
    """A new unlocked vault of ``kind``."""
    return Vault.create(path, PASSPHRASE, kdf=FAST_KDF, sqlcipher=kind == "sqlcipher")


def reopen(
    path: Path, anchor: GenerationAnchor | None = None, readonly: bool = False
) -> Vault:
    """Open and unlock; closes the vault again if the unlock raises."""
    vault = Vault.open(path, readonly=readonly, anchor=anchor)
    try:
        vault.unlock(PASSPHRASE)
    except BaseException:
        vault.close()
        raise
    return vault


def vault_files(path: Path) -> list[Path]:
    """The files that make up a closed vault: the database and, for SQLCipher, its header."""
    return [p for p in (path, sidecar_path_for(path)) if p.exists()]


def copy_vault(path: Path, to: Path) -> None:
    """Copy a closed vault's files into directory ``to`` (an old copy someone kept)."""
    to.mkdir(exist_ok=True)
    for f in vault_files(path):
        shutil.copy2(f, to / f.name)


def restore_vault(saved: Path, path: Path) -> None:
    """Put an old copy back in place of the current files (a restore from backup)."""
    for leftover in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)
    for f in saved.iterdir():
        shutil.copy2(f, path.parent / f.name)


@pytest.fixture
def campaign_seed() -> int:
    """``MLS_CAMPAIGN_SEED`` if set (to replay a failure), else a fresh random seed."""
    import os
    import random

    return int(os.environ.get("MLS_CAMPAIGN_SEED") or random.SystemRandom().getrandbits(32))
