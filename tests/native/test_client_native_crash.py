"""NativeClient under kill -9: the durability barrier holds across real process deaths.

The member under test runs in its own process (``_native_actor.py``) and is SIGKILLed right
after a call returned, or inside the vault transaction of a call (just before or just after
it commits); it is then reopened from its vault in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keystore import profiles
from mls.native.client import NativeClient

pytestmark = pytest.mark.timeout(120)

ACTOR = Path(__file__).with_name("_native_actor.py")
PASSPHRASE = "crash passphrase"
FAST = profiles.INSECURE_FOR_TESTS_ONLY
GID = b"room"


class Actor:
    """A NativeClient process; :meth:`call` sends one op and returns its answer."""

    def __init__(self, vault: Path) -> None:
        env = dict(os.environ, MLS_KEYSTORE_PASSPHRASE=PASSPHRASE)
        self.proc = subprocess.Popen(
            [sys.executable, str(ACTOR), str(vault)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )

    def send(self, op: str, *args: Any) -> None:
        """Send one op without waiting for the answer."""
        assert self.proc.stdin is not None
        line = [op, *(a.hex() if isinstance(a, bytes) else a for a in args)]
        self.proc.stdin.write(json.dumps(line) + "\n")
        self.proc.stdin.flush()

    def call(self, op: str, *args: Any) -> Any:
        """Send one op and return its answer (``None`` if the process died first)."""
        self.send(op, *args)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        return json.loads(line)["ok"] if line.endswith("\n") else None

    def killed(self) -> bool:
        """Wait for the process; True if SIGKILL ended it."""
        return self.proc.wait(timeout=60) == -signal.SIGKILL


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Path, NativeClient]]:
    """Alice's vault (closed, for the actor) and Bob's live client, in one group."""
    alice_path = tmp_path / "alice.vault"
    alice = NativeClient.create(alice_path, PASSPHRASE, identity=b"alice", kdf=FAST)
    bob = NativeClient.create(tmp_path / "bob.vault", PASSPHRASE, identity=b"bob", kdf=FAST)
    alice.create_group(GID)
    _, welcome = alice.add_members(GID, [bob.generate_key_package()])
    bob.join(welcome)
    alice.close()
    yield alice_path, bob
    bob.close()


def test_kill_after_encrypt_returned_never_reuses_a_generation(
    pair: tuple[Path, NativeClient],
) -> None:
    """Killed right after encrypt returned, the reopened sender sends a new generation."""
    alice_path, bob = pair
    actor = Actor(alice_path)
    first = bytes.fromhex(actor.call("encrypt", GID, "before the crash"))
    actor.send("kill")
    assert actor.killed()
    with NativeClient.open(alice_path, PASSPHRASE) as alice:
        second = alice.encrypt(GID, b"after the crash")
    assert [bob.process(GID, m).data for m in (first, second)] == [
        b"before the crash",
        b"after the crash",
    ]


@pytest.mark.parametrize("moment", ["arm_before", "arm_after"])
def test_kill_while_processing_a_commit_leaves_old_or_new_epoch(
    pair: tuple[Path, NativeClient], moment: str
) -> None:
    """Killed inside the commit's vault transaction, the member can finish the commit."""
    alice_path, bob = pair
    commit = bob.update_keys(GID)
    actor = Actor(alice_path)
    actor.send(moment)
    assert actor.call("process", GID, commit) is None
    assert actor.killed()
    with NativeClient.open(alice_path, PASSPHRASE) as alice:
        got = alice.process(GID, commit)
        assert got.replay == (moment == "arm_after")
        assert alice.export_secret(GID, b"l", b"", 32) == bob.export_secret(GID, b"l", b"", 32)
        assert bob.process(GID, alice.encrypt(GID, b"in step")).data == b"in step"


@pytest.mark.parametrize("moment", ["arm_before", "arm_after"])
def test_kill_while_encrypting_loses_no_state(pair: tuple[Path, NativeClient], moment: str) -> None:
    """A sender killed inside encrypt's transaction keeps a consistent, usable state."""
    alice_path, bob = pair
    actor = Actor(alice_path)
    actor.send(moment)
    assert actor.call("encrypt", GID, "never returned") is None
    assert actor.killed()
    with NativeClient.open(alice_path, PASSPHRASE) as alice:
        assert bob.process(GID, alice.encrypt(GID, b"after")).data == b"after"
