"""Vaults written by the client before it was one class over two engines still open and work."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import cast

import pytest

from keystore import Vault
from mls import MlsClient
from mls.engine import EngineName

FIXTURES = Path(__file__).with_name("fixtures") / "old_clients"
PASSPHRASE = "old client passphrase"
GID = b"old-room"


@pytest.mark.parametrize("engine", ["native", "mls-rs"])
def test_old_vaults_open_replay_and_carry_on(tmp_path: Path, engine: str) -> None:
    """Today's client opens them with their engine, replays a format-1 receipt, and talks."""
    if engine == "mls-rs":
        pytest.importorskip("mls_rs_uniffi")
    for name in ("alice", "bob"):
        shutil.copy(FIXTURES / f"{engine}-{name}.vault", tmp_path / f"{name}.vault")
        # Written at schema 3; the state record (schema 4) came later. Opening never
        # migrates silently, so migrate first, as `mls-keystore migrate` would.
        Vault.open(tmp_path / f"{name}.vault", auto_migrate=True).close()
    message = (FIXTURES / f"{engine}-message.bin").read_bytes()
    with (
        MlsClient.open(tmp_path / "alice.vault", PASSPHRASE) as alice,
        MlsClient.open(tmp_path / "bob.vault", PASSPHRASE) as bob,
    ):
        assert alice.engine_name == bob.engine_name == cast(EngineName, engine)
        assert bob.group_ids() == [GID] and bob.members(GID) == [b"alice", b"bob"]
        assert bob.epoch(GID) == alice.epoch(GID) == 1
        again = bob.process(GID, message)
        assert again.replay and again.data == b"written by the old client"
        assert bob.process(GID, alice.encrypt(GID, b"new")).data == b"new"
        alice.process(GID, bob.update_keys(GID))
        assert alice.export_secret(GID, b"x", b"", 16) == bob.export_secret(GID, b"x", b"", 16)
