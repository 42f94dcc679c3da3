"""I/O faults under the drainer: the engine keeps working, nothing is lost, errors are ours."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keystore import Vault, VaultBusy, VaultIOError
from tests.campaigns import iofaults
from tests.campaigns.common import FAST_KDF, PASSPHRASE, CampaignReport


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["plain", "sqlcipher"])
@pytest.mark.parametrize("name", list(iofaults.SCENARIOS))
def test_fault_scenario_loses_nothing(
    tmp_path: Path, name: str, kind: str, campaign_seed: int
) -> None:
    """While the fault is on every flush fails with VaultIOError naming the cause, memory
    keeps answering and the log keeps every event; after it, one flush persists all."""
    report = CampaignReport(name)
    skipped = iofaults.run_one(name, tmp_path, campaign_seed, report, kind == "sqlcipher")
    if skipped:
        pytest.skip(skipped)
    assert report.ok, f"seed {campaign_seed}\n{report.summary()}"
    assert report.counts["flushes refused"] == 3


def test_commit_into_a_deleted_vault_file_is_refused(tmp_path: Path) -> None:
    """Regression: a write after the vault file was unlinked used to "succeed" into the
    orphaned inode, and the acknowledged rows were gone; now it raises VaultIOError."""
    path = tmp_path / "v"
    with Vault.create(path, PASSPHRASE, kdf=FAST_KDF) as vault:
        vault.put("c", b"k1", b"v1")
        path.unlink()
        with pytest.raises(VaultIOError, match="deleted or replaced"):
            vault.put("c", b"k2", b"v2")
        assert vault.get("c", b"k2") is None  # rolled back, not half written


def test_commit_into_a_replaced_vault_file_is_refused(tmp_path: Path) -> None:
    """Regression: after another file was renamed over the open vault, writes are refused
    rather than going to the file that is no longer at the path."""
    path = tmp_path / "v"
    with Vault.create(path, PASSPHRASE, kdf=FAST_KDF) as vault:
        vault.put("c", b"k1", b"v1")
        os.replace(path, tmp_path / "aside")
        Vault.create(tmp_path / "other", PASSPHRASE, kdf=FAST_KDF).close()
        os.replace(tmp_path / "other", path)
        with pytest.raises(VaultIOError, match="deleted or replaced"):
            vault.apply([])  # no change: nothing to refuse
            vault.put("c", b"k2", b"v2")
        os.replace(tmp_path / "aside", path)
        vault.put("c", b"k2", b"v2")  # the file is back: writes go through again
        assert vault.get("c", b"k2") == b"v2"


def test_create_where_a_writer_still_holds_the_lock_leaves_no_file(tmp_path: Path) -> None:
    """Regression: creating a vault at the path of one that is open elsewhere (its file
    moved away) raised VaultBusy only after linking the new file into place, leaving a
    vault behind that the caller was told had failed; now nothing is created."""
    path = tmp_path / "v"
    with Vault.create(path, PASSPHRASE, kdf=FAST_KDF):
        os.replace(path, tmp_path / "moved")
        before = sorted(p.name for p in tmp_path.iterdir())
        with pytest.raises(VaultBusy):
            Vault.create(path, PASSPHRASE, kdf=FAST_KDF)
        assert not path.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == before
