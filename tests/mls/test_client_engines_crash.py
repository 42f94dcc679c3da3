"""MlsClient under kill -9 on both engines: the durability barrier holds across process deaths.

The member under test runs in its own process (``_client_actor.py``) and is SIGKILLed right
after a call returned, or inside the vault transaction of a call (just before or just after
it commits); it is then reopened from its vault in this process and must carry on in step
with the other member: no generation reused, no commit lost or applied twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from keystore import profiles
from mls.client import MlsClient
from mls.engine import EngineName
from mls.errors import Unsupported
from tests.mls._client_harness import PASSPHRASE, Actor

pytestmark = pytest.mark.timeout(120)

FAST = profiles.INSECURE_FOR_TESTS_ONLY
GID = b"room"
KILLED = -9


@pytest.fixture(params=["native", "mls-rs"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, MlsClient]]:
    """Alice's vault (closed, for the actor) and Bob's live client, in one group."""
    if request.param == "mls-rs":
        pytest.importorskip("mls_rs_uniffi")
    engine = cast(EngineName, request.param)
    alice_path = tmp_path / "alice.vault"
    alice = MlsClient.create(alice_path, PASSPHRASE, identity=b"alice", kdf=FAST, engine=engine)
    bob = MlsClient.create(
        tmp_path / "bob.vault", PASSPHRASE, identity=b"bob", kdf=FAST, engine=engine
    )
    alice.create_group(GID)
    _, welcome = alice.add_members(GID, [bob.generate_key_package()])
    bob.join(welcome)
    alice.close()
    yield alice_path, bob
    bob.close()


def in_step(alice: MlsClient, bob: MlsClient) -> None:
    """Both members share the epoch and talk both ways."""
    assert alice.export_secret(GID, b"l", b"", 32) == bob.export_secret(GID, b"l", b"", 32)
    assert bob.process(GID, alice.encrypt(GID, b"to bob")).data == b"to bob"
    assert alice.process(GID, bob.encrypt(GID, b"to alice")).data == b"to alice"


def killed_inside(actor: Actor, moment: str, op: str, *args: object) -> None:
    """Arm the crash, send ``op``, and check it never answered and the process died."""
    actor.call(moment)
    actor.send(op, *args)
    assert actor.read_answer() is None
    assert actor.wait_killed() == KILLED


def test_kill_after_encrypt_returned_never_reuses_a_generation(
    pair: tuple[Path, MlsClient],
) -> None:
    """Killed right after encrypt returned, the reopened sender sends a new generation."""
    alice_path, bob = pair
    with Actor(alice_path) as actor:
        actor.call("open")
        first = bytes.fromhex(actor.call("encrypt", GID, "before the crash"))
        actor.kill()
    with MlsClient.open(alice_path, PASSPHRASE) as alice:
        second = alice.encrypt(GID, b"after the crash")
        assert [bob.process(GID, m).data for m in (first, second)] == [
            b"before the crash",
            b"after the crash",
        ]
        in_step(alice, bob)


@pytest.mark.parametrize("moment", ["crash_before_apply", "crash_after_apply"])
def test_kill_inside_encrypt_loses_no_state(pair: tuple[Path, MlsClient], moment: str) -> None:
    """A sender killed inside encrypt's transaction keeps a consistent, usable state."""
    alice_path, bob = pair
    with Actor(alice_path) as actor:
        actor.call("open")
        killed_inside(actor, moment, "encrypt", GID, "never returned")
    with MlsClient.open(alice_path, PASSPHRASE) as alice:
        in_step(alice, bob)


@pytest.mark.parametrize("moment", ["crash_before_apply", "crash_after_apply"])
def test_kill_inside_process_of_a_commit_leaves_old_or_new_epoch(
    pair: tuple[Path, MlsClient], moment: str
) -> None:
    """Killed inside the vault transaction of processing a commit, the member finishes it."""
    alice_path, bob = pair
    commit = bob.update_keys(GID)
    with Actor(alice_path) as actor:
        actor.call("open")
        killed_inside(actor, moment, "process", GID, commit.hex())
    with MlsClient.open(alice_path, PASSPHRASE) as alice:
        got = alice.process(GID, commit)
        assert got.replay == (moment == "crash_after_apply")
        in_step(alice, bob)


def test_kill_after_commit_returned_keeps_the_new_epoch(pair: tuple[Path, MlsClient]) -> None:
    """Killed right after its commit was returned, the member reopens in the new epoch."""
    alice_path, bob = pair
    with Actor(alice_path) as actor:
        actor.call("open")
        commit = bytes.fromhex(actor.call("update", GID))
        actor.kill()
    with MlsClient.open(alice_path, PASSPHRASE) as alice:
        assert alice.epoch(GID) == 2
        bob.process(GID, commit)
        in_step(alice, bob)


def test_kill_before_a_commit_is_durable_sends_nothing(pair: tuple[Path, MlsClient]) -> None:
    """Killed inside the commit's transaction before it landed, the member stays in step."""
    alice_path, bob = pair
    with Actor(alice_path) as actor:
        actor.call("open")
        killed_inside(actor, "crash_before_apply", "update", GID)
    with MlsClient.open(alice_path, PASSPHRASE) as alice:
        assert alice.epoch(GID) == 1
        in_step(alice, bob)


def test_kill_after_a_pending_commit_returned_resends_the_same_bytes(
    pair: tuple[Path, MlsClient],
) -> None:
    """Killed once its pending commit was returned, the member finds the very same bytes."""
    alice_path, bob = pair
    if bob.engine_name == "mls-rs":
        with pytest.raises(Unsupported):
            bob.commit(GID, pending=True)
        return
    with Actor(alice_path) as actor:
        actor.call("open")
        commit = bytes.fromhex(actor.call("commit_pending", GID))
        actor.kill()
    with MlsClient.open(alice_path, PASSPHRASE) as alice:
        pending = alice.pending_commit(GID)
        assert pending is not None and pending.commit == commit and alice.epoch(GID) == 1
        bob.process(GID, pending.commit)  # the delivery service accepted the resend
        assert alice.process(GID, commit).merged_pending_commit
        in_step(alice, bob)
