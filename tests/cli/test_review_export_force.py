"""``export --force`` (``overwrite=True``) replaces an earlier export only: a slip of the
path never replaces the vault itself, another vault, or any other file."""

from __future__ import annotations

from pathlib import Path

import pytest

from keystore import Change, Vault
from keystore.cli import ExitCode
from keystore.export import export_vault
from tests.cli.conftest import FAST, PASSPHRASE, Runner, digest
from tests.conftest import FAST_KDF


def _vault(path: Path) -> None:
    with Vault.create(path, PASSPHRASE, kdf=FAST_KDF) as v:
        v.apply([Change("c", b"k%d" % i, b"value %d" % i) for i in range(3)])


def _rows(path: Path) -> int:
    with Vault.open(path, readonly=True) as v:
        v.unlock(PASSPHRASE)
        return sum(len(r) for r in v.open_rows().values())


@pytest.fixture
def pw(tmp_path: Path) -> Path:
    path = tmp_path / "pw"
    path.write_text(PASSPHRASE + "\n")
    path.chmod(0o600)
    return path


def test_export_force_onto_the_vault_itself_is_refused(
    cli: Runner, tmp_path: Path, pw: Path
) -> None:
    """``export V V --force`` leaves the vault as it was."""
    vault = tmp_path / "a.vault"
    _vault(vault)
    before = digest(vault)
    result = cli("export", vault, vault, "--force", "--passphrase-file", pw,
                 "--backup-passphrase-file", pw, *FAST)
    assert result.code == ExitCode.USAGE
    assert "not an export file" in result.err
    assert digest(vault) == before
    assert _rows(vault) == 3


def test_export_force_onto_another_vault_or_file_is_refused(
    cli: Runner, tmp_path: Path, pw: Path
) -> None:
    """Another vault, or any file that is not an export, is not replaced."""
    source, other, notes = tmp_path / "a.vault", tmp_path / "b.vault", tmp_path / "notes"
    _vault(source)
    _vault(other)
    notes.write_bytes(b"keep me")
    for target in (other, notes):
        before = digest(target)
        result = cli("export", source, target, "--force", "--passphrase-file", pw,
                     "--backup-passphrase-file", pw, *FAST)
        assert result.code == ExitCode.USAGE
        assert digest(target) == before
    assert _rows(other) == 3


def test_export_force_replaces_an_earlier_export(cli: Runner, tmp_path: Path, pw: Path) -> None:
    """What ``--force`` is for: refreshing an export file."""
    source, out = tmp_path / "a.vault", tmp_path / "a.export"
    _vault(source)
    for _ in range(2):
        result = cli("export", source, out, "--force", "--passphrase-file", pw,
                     "--backup-passphrase-file", pw, *FAST)
        assert result.code == ExitCode.OK, result.err


def test_export_vault_overwrite_refuses_a_vault(tmp_path: Path) -> None:
    """The library call refuses too (the command's check is not the only one)."""
    path = tmp_path / "a.vault"
    _vault(path)
    before = digest(path)
    with Vault.open(path, readonly=True) as v:
        v.unlock(PASSPHRASE)
        with pytest.raises(FileExistsError, match="not an export file"):
            export_vault(v, path, "a backup passphrase", FAST_KDF, overwrite=True)
    assert digest(path) == before
