"""A SQLCipher rekey killed with SIGKILL at any point leaves a vault that opens intact.

The child process runs a real rekey and kills itself (``kill -9``) right after a
named step, through the ``keystore.vault._rekey_step_hook`` test seam; the random
campaign kills it from outside at arbitrary times, including inside
``PRAGMA rekey``.  Quick sizes run in CI; pass ``--full`` for the long campaign.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from keystore import Change, Vault
from keystore.sidecar import Sidecar
from tests.conftest import FAST_KDF, PASSPHRASE
from tests.sqlcipher.helpers import open_raw, page_key_of

REPO = Path(__file__).resolve().parents[2]
ROWS = {("groups", f"g{i}".encode()): bytes([i % 251]) * 700 for i in range(300)}

CHILD = textwrap.dedent("""
    import os, signal, sys
    import keystore.vault
    from keystore import Vault
    path, passphrase, step = sys.argv[1:4]
    def kill_after(name):
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)
    keystore.vault._rekey_step_hook = kill_after
    v = Vault.open(path)
    v.unlock(passphrase)
    print("ready", flush=True)
    while True:
        v.rekey()
        if step != "loop":
            break
    print("finished", flush=True)
""")


def _make_vault(path: Path) -> None:
    with Vault.create(path, PASSPHRASE, kdf=FAST_KDF, sqlcipher=True) as v:
        v.apply(Change(c, k, val) for (c, k), val in ROWS.items())


def _child(path: Path, step: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), PASSPHRASE, step],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _contents(v: Vault) -> dict[tuple[str, bytes], bytes]:
    return {(c, k): val for c in v.categories() for k, val in v.items(c)}


def _check_recovers(path: Path) -> int:
    """Read-only (no repair), then as writer (completes the rekey); returns the generation."""
    with Vault.open(path, readonly=True) as reader:
        reader.unlock(PASSPHRASE)
        assert _contents(reader) == ROWS
    with Vault.open(path) as v:
        v.unlock(PASSPHRASE)
        assert _contents(v) == ROWS
        assert v.verify().ok
        generation = v.stats().key_generation
    side = Sidecar.read(path)
    assert side is not None and side.pending is None
    assert side.current.key_generation == generation
    conn = open_raw(path, page_key_of(path, PASSPHRASE))  # pages under the current key
    try:
        assert conn.execute("SELECT count(*) FROM keystore_rows").fetchone() == (len(ROWS),)
    finally:
        conn.close()
    return generation


@pytest.mark.parametrize(
    ("step", "generation"),
    [("pending-written", 1), ("rows-committed", 2), ("page-rekeyed", 2), ("done", 2)],
)
def test_kill_after_step(vault_path: Path, step: str, generation: int) -> None:
    """Killed right after a rekey step, the vault opens with every row and one key generation."""
    _make_vault(vault_path)
    child = _child(vault_path, step)
    _, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    side = Sidecar.read(vault_path)
    assert side is not None and (side.pending is not None) is (step != "done")
    assert _check_recovers(vault_path) == generation
    with Vault.open(vault_path) as v:  # and the vault keeps working: rekey again
        v.unlock(PASSPHRASE)
        v.rekey()
        assert _contents(v) == ROWS


def test_kill_at_random_times(vault_path: Path, request: pytest.FixtureRequest) -> None:
    """Killed at arbitrary moments of back-to-back rekeys, the vault always recovers."""
    rounds = 25 if request.config.getoption("--full", default=False) else 3
    rng = random.Random(6)
    _make_vault(vault_path)
    for _ in range(rounds):
        child = _child(vault_path, "loop")
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.3))
        child.kill()
        child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL
        _check_recovers(vault_path)
