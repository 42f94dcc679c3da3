"""Process crashes (SIGKILL): flushed work survives, an open operation leaves nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from keystore import Vault
from mls import GranularStorage
from tests.conftest import FAST_KDF, PASSPHRASE

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

CHILD_PRELUDE = """
import os, signal
from keystore import Vault
from mls import GranularStorage, WriteBehindDrainer
vault = Vault.open(os.environ["VAULT_PATH"])
vault.unlock(os.environ["VAULT_PASSPHRASE"])
storage = GranularStorage.load(vault)
drainer = WriteBehindDrainer(storage, vault)
def die():
    os.kill(os.getpid(), signal.SIGKILL)
"""


def run_child(path: Path, body: str) -> None:
    """Run ``body`` in a fresh interpreter against the vault; it must die by SIGKILL."""
    code = CHILD_PRELUDE + textwrap.dedent(body)
    env = {**os.environ, "VAULT_PATH": str(path), "VAULT_PASSPHRASE": PASSPHRASE,
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=60,
                          capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode(errors="replace")


def reload(path: Path) -> GranularStorage:
    with Vault.open(path) as vault:
        vault.unlock(PASSPHRASE)
        return GranularStorage.load(vault)


@pytest.fixture
def crash_vault(tmp_path: Path) -> Path:
    """A vault file holding one group, closed so a child process can open it."""
    path = tmp_path / "crash.vault"
    with Vault.create(path, PASSPHRASE, kdf=FAST_KDF) as vault:
        storage = GranularStorage()
        storage.write_group_state(b"g", b"epoch-1")
        storage.write_tree(b"g", b"tree-1")
        vault.apply(storage.drain_storage_events())
    return path


def test_a_flushed_operation_survives_a_kill(crash_vault: Path) -> None:
    """Once flush() has returned, SIGKILL loses nothing of it."""
    run_child(crash_vault, """
        with storage.operation():
            storage.write_group_state(b"g", b"epoch-2")
            storage.write_tree(b"g", b"tree-2")
        drainer.flush()
        die()
    """)
    storage = reload(crash_vault)
    assert (storage.group_state(b"g"), storage.tree(b"g")) == (b"epoch-2", b"tree-2")


def test_a_kill_inside_an_operation_leaves_the_previous_epoch_whole(crash_vault: Path) -> None:
    """Half an operation is never persisted, even if flushes run while it is open."""
    run_child(crash_vault, """
        with storage.operation():
            storage.write_group_state(b"g", b"epoch-2")
            drainer.flush()
            die()
            storage.write_tree(b"g", b"tree-2")
    """)
    storage = reload(crash_vault)
    assert (storage.group_state(b"g"), storage.tree(b"g")) == (b"epoch-1", b"tree-1")
