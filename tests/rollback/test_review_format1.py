"""Review findings around state format 1, generations at their limit, and imports
that replace a vault whose record is still in format 1."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from keystore import Change, RollbackDetected, Vault, VaultIOError
from keystore.export import export_vault, import_vault
from tests.conftest import FAST_KDF
from tests.fixtures.make_state_format1 import PASSPHRASE, PLAIN
from tests.keystore.helpers import write_raw


@pytest.fixture
def old_plain(tmp_path: Path) -> Path:
    """A copy of the plain vault an earlier release left at generation 3, format 1."""
    path = tmp_path / "old.vault"
    shutil.copyfile(PLAIN, path)
    return path


def _record(path: Path) -> bytes:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        (record,) = conn.execute("SELECT record FROM keystore_state").fetchone()
        return bytes(record)
    finally:
        conn.close()


def test_import_force_over_a_format_1_vault_lands_above_its_generation(
    old_plain: Path, tmp_path: Path
) -> None:
    """Replacing a vault whose record is still in format 1 (generation 3) gives the
    new vault a generation above 3, as for a format-2 vault (docs/format.md §11)."""
    assert _record(old_plain)[0] == 1
    with Vault.create(tmp_path / "src.vault", "src pass", kdf=FAST_KDF) as src:
        src.put("c", b"k", b"v")  # generation 1
        export_vault(src, tmp_path / "x.export", "backup", kdf=FAST_KDF)
    summary = import_vault(
        tmp_path / "x.export", old_plain, "backup", "new pass", kdf=FAST_KDF, overwrite=True
    )
    assert summary.generation is not None
    assert summary.generation >= 4


def test_raise_generation_refuses_a_format_1_record_put_back(old_plain: Path) -> None:
    """After the reseal nothing writes format 1 again: raise_generation meeting the old
    format-1 record put back underneath refuses it and writes nothing."""
    old_record = _record(old_plain)
    vault = Vault.open(old_plain)
    try:
        vault.unlock(PASSPHRASE)
        assert _record(old_plain)[0] == 2
        write_raw(old_plain, "UPDATE keystore_state SET record = ?", (old_record,),
                  passphrase=PASSPHRASE)
        with pytest.raises(RollbackDetected):
            vault.raise_generation(100)
    finally:
        vault.close()
    assert _record(old_plain) == old_record


def test_a_write_after_the_largest_generation_raises_a_package_error(tmp_path: Path) -> None:
    """A vault at generation 2^64 - 1 refuses the next write with the package's own
    error (not a bare ValueError) and writes nothing."""
    path = tmp_path / "v.vault"
    with Vault.create(path, "pass", kdf=FAST_KDF) as vault:
        vault.put("c", b"k", b"v")
        assert vault.raise_generation((1 << 64) - 1) == (1 << 64) - 1
        before = _record(path)
        with pytest.raises(VaultIOError, match="last generation"):
            vault.apply([Change("c", b"k", b"w"), Change("c", b"k2", b"x")])
        assert _record(path) == before
        assert vault.get("c", b"k") == b"v"
        assert vault.get("c", b"k2") is None
    with Vault.open(path) as vault:
        vault.unlock("pass")
        assert vault.generation == (1 << 64) - 1
        assert vault.verify().ok


@pytest.mark.parametrize("loaded", [True, False], ids=["tails in memory", "read back"])
def test_a_write_refuses_a_format_1_record_put_back(old_plain: Path, loaded: bool) -> None:
    """After the reseal, a write that finds the old format-1 record put back underneath
    refuses it as a rollback (whether it knows the replaced rows from memory or reads
    them back), and writes nothing."""
    old_record = _record(old_plain)
    vault = Vault.open(old_plain)
    try:
        vault.unlock(PASSPHRASE)
        if loaded:
            vault.open_rows()
        write_raw(old_plain, "UPDATE keystore_state SET record = ?", (old_record,),
                  passphrase=PASSPHRASE)
        with pytest.raises(RollbackDetected) as info:
            vault.apply([Change("c", b"k", b"v")])
        assert info.value.reason == "record"
    finally:
        vault.close()
    assert _record(old_plain) == old_record
