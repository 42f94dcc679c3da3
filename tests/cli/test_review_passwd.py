"""``passwd --rekey`` on a raw-key vault is one atomic step: when the re-encryption
fails, the old key still opens the vault (the new key was not installed alone)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keystore import Change, IntegrityError, Vault, WrongPassphrase
from keystore.cli import ExitCode
from tests.cli.conftest import Runner
from tests.keystore.helpers import write_raw


def _raw_key_vault(tmp_path: Path) -> tuple[Path, bytes, Path, bytes, Path]:
    old, new = os.urandom(32), os.urandom(32)
    old_file, new_file = tmp_path / "old.key", tmp_path / "new.key"
    old_file.write_text(old.hex() + "\n")
    new_file.write_text(new.hex() + "\n")
    old_file.chmod(0o600)
    new_file.chmod(0o600)
    path = tmp_path / "raw.vault"
    with Vault.create_with_key(path, old) as vault:
        vault.apply([Change("c", b"k%d" % i, b"value %d" % i) for i in range(3)])
    return path, old, old_file, new, new_file


def test_failed_rekey_leaves_the_old_key_in_place(cli: Runner, tmp_path: Path) -> None:
    """A damaged row makes the re-encryption fail; the command fails and the vault is
    still opened by the old key, not only by the new one."""
    path, old, old_file, new, new_file = _raw_key_vault(tmp_path)
    # Damage one row's ciphertext: its authentication (and so the rekey) fails.
    write_raw(path, "UPDATE keystore_rows SET value = substr(value, 1, 20) || "
              "zeroblob(length(value) - 20) WHERE rowid = (SELECT min(rowid) "
              "FROM keystore_rows)")
    result = cli("passwd", path, "--raw-key-file", old_file, "--new-raw-key-file", new_file,
                 "--rekey")
    assert result.code != ExitCode.OK
    with Vault.open(path, readonly=True) as vault:
        with pytest.raises(WrongPassphrase):
            vault.unlock_with_key(new)
        vault.unlock_with_key(old)
        with pytest.raises(IntegrityError):
            vault.open_rows()


def test_passwd_rekey_with_a_raw_key_still_works(cli: Runner, tmp_path: Path) -> None:
    """On a sound vault the key is rotated and every row re-encrypted."""
    path, old, old_file, new, new_file = _raw_key_vault(tmp_path)
    result = cli("passwd", path, "--raw-key-file", old_file, "--new-raw-key-file", new_file,
                 "--rekey")
    assert result.code == ExitCode.OK, result.err
    with Vault.open(path, readonly=True) as vault:
        with pytest.raises(WrongPassphrase):
            vault.unlock_with_key(old)
        vault.unlock_with_key(new)
        assert vault.stats().key_generation == 2
        assert len(vault.open_rows()["c"]) == 3
