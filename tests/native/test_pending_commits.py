"""Pending commits: stored but not applied until the delivery service (DS) answers.

The "DS" in these tests is the test itself: it picks which commit of an epoch wins and hands
it to every member, the committer included (an echo).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from mls.native import EpochMismatch, GroupConfig, MlsError, NativeEngine, ProcessedKind
from mls.native.errors import NoPendingCommit, PendingCommitExists
from mls.native.framing import WireFormat
from mls.native.pending import PendingCommit, PendingCommitRow
from mls.native.rows import CATEGORY_PENDING_COMMIT
from tests.conftest import PASSPHRASE
from tests.native.engine_helpers import GID, SEEDS, STEPS, agreed, group, member, rows
from tests.native.test_persist import VaultHome

HANDSHAKES = [
    pytest.param(WireFormat.PUBLIC_MESSAGE, id="public-handshake"),
    pytest.param(WireFormat.PRIVATE_MESSAGE, id="private-handshake"),
]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[VaultHome]:
    """A vault home for one member, stopped after the test."""
    h = VaultHome(tmp_path / "alice.vault")
    yield h
    if h.vault is not None:
        h.stop()


def test_a_pending_commit_changes_nothing_until_merged() -> None:
    """The group stays in its epoch; only the pending row is written; merge moves it on."""
    alice, bob = group(["alice", "bob"])
    before = rows(alice.storage)
    epoch = alice.epoch(GID)
    commit, welcome = alice.commit(GID, force_path=True, pending=True)
    assert welcome is None
    assert alice.epoch(GID) == epoch
    after = rows(alice.storage)
    changed = {k for k in after.keys() | before.keys() if after.get(k) != before.get(k)}
    assert changed == {(CATEGORY_PENDING_COMMIT, GID)}
    assert alice.pending_commit(GID) == PendingCommit(commit, None, epoch)
    bob.process(GID, commit)
    assert alice.merge_pending_commit(GID) == epoch + 1
    assert alice.pending_commit(GID) is None
    assert agreed([alice, bob])
    assert bob.process(GID, alice.encrypt(GID, b"after merge")).data == b"after merge"


def test_clear_keeps_the_member_in_its_epoch() -> None:
    """A rejected commit is cleared and the member continues as if it was never made."""
    alice, bob = group(["alice", "bob"])
    alice.commit(GID, force_path=True, pending=True)
    alice.clear_pending_commit(GID)
    assert alice.pending_commit(GID) is None
    assert bob.process(GID, alice.encrypt(GID, b"still here")).data == b"still here"
    commit, _ = bob.commit(GID, force_path=True)
    alice.process(GID, commit)
    assert agreed([alice, bob])


@pytest.mark.parametrize("handshake", HANDSHAKES)
def test_commit_race_loser_clears_and_continues_without_rejoining(
    handshake: WireFormat,
) -> None:
    """Two members commit in one epoch; the DS picks one; the loser follows the winner."""
    config = GroupConfig(handshake=handshake)
    alice, bob, carol = group(["alice", "bob", "carol"], config=config)
    dave = member("dave")
    from_alice, _ = alice.commit(GID, force_path=True, pending=True)
    from_bob, bob_welcome = bob.commit(GID, add=[dave.generate_key_package()], pending=True)
    assert bob_welcome is not None
    # The DS accepts Alice's commit and delivers it to everyone, Alice included.
    lost = bob.process(GID, from_alice)
    assert lost.kind == ProcessedKind.COMMIT and lost.cleared_pending_commit
    assert bob.pending_commit(GID) is None
    assert not carol.process(GID, from_alice).cleared_pending_commit
    echo = alice.process(GID, from_alice)
    assert echo.merged_pending_commit and not echo.cleared_pending_commit
    assert agreed([alice, bob, carol])
    # Bob's own commit is now stale for everyone.
    with pytest.raises(EpochMismatch):
        carol.process(GID, from_bob)
    # Bob redoes his change in the new epoch, and everything continues.
    again, welcome = bob.commit(GID, add=[dave.generate_key_package()], pending=True)
    assert welcome is not None
    for m in (alice, carol):
        m.process(GID, again)
    bob.merge_pending_commit(GID)
    dave.join(welcome, config=config)
    assert agreed([alice, bob, carol, dave])
    for sender in (alice, bob, carol, dave):
        text = b"from " + sender.identity
        for receiver in {alice, bob, carol, dave} - {sender}:
            assert receiver.process(GID, sender.encrypt(GID, text)).data == text


def test_an_invalid_commit_does_not_clear_ours() -> None:
    """Only a commit that verifies and applies clears our pending commit."""
    alice, bob = group(["alice", "bob"])
    alice.commit(GID, force_path=True, pending=True)
    theirs, _ = bob.commit(GID, force_path=True, pending=True)
    forged = theirs[:-1] + bytes([theirs[-1] ^ 1])
    with pytest.raises(MlsError):
        alice.process(GID, forged)
    assert alice.pending_commit(GID) is not None


def test_no_new_commit_or_proposal_while_one_is_pending() -> None:
    """A second commit for the same epoch would fork us: refused until merge or clear."""
    alice, bob = group(["alice", "bob"])
    alice.commit(GID, force_path=True, pending=True)
    before = rows(alice.storage)
    with pytest.raises(PendingCommitExists):
        alice.commit(GID, force_path=True)
    with pytest.raises(PendingCommitExists):
        alice.propose_update(GID)
    with pytest.raises(PendingCommitExists):
        alice.propose_remove(GID, 1)
    assert rows(alice.storage) == before
    # Application messages still work in the current epoch.
    assert bob.process(GID, alice.encrypt(GID, b"meanwhile")).data == b"meanwhile"


def test_merge_or_clear_without_a_pending_commit_raises() -> None:
    """There is nothing to merge or clear: the application's bookkeeping is off."""
    alice, _ = group(["alice", "bob"])
    with pytest.raises(NoPendingCommit):
        alice.merge_pending_commit(GID)
    with pytest.raises(NoPendingCommit):
        alice.clear_pending_commit(GID)
    assert alice.pending_commit(GID) is None


def test_default_commit_still_applies_at_once() -> None:
    """Without ``pending=True`` a commit moves us to the next epoch before it returns."""
    alice, bob = group(["alice", "bob"])
    epoch = alice.epoch(GID)
    commit, _ = alice.commit(GID, force_path=True)
    assert alice.epoch(GID) == epoch + 1 and alice.pending_commit(GID) is None
    bob.process(GID, commit)
    assert agreed([alice, bob])


def test_the_pending_row_round_trips_and_never_prints_secrets() -> None:
    """The stored row decodes to what was written; its repr names no secret."""
    alice, _ = group(["alice", "bob"])
    alice.commit(GID, force_path=True, pending=True)
    raw = alice.storage.read(CATEGORY_PENDING_COMMIT, GID)
    assert raw is not None
    row = PendingCommitRow.from_bytes(raw)
    assert row.to_bytes() == raw
    assert "secret" not in repr(row).lower() and row.next_epoch.context.epoch == 2


@pytest.mark.parametrize("answer", ["accepted", "rejected"])
def test_restart_between_commit_and_answer_then_merge_or_clear(
    home: VaultHome, answer: str
) -> None:
    """After a restart from the vault the pending commit is there, byte-identical."""
    alice = NativeEngine.create(home.start(), b"alice")
    bob = member("bob")
    alice.create_group(GID)
    _, welcome = alice.commit(GID, add=[bob.generate_key_package()])
    assert welcome is not None
    bob.join(welcome)
    commit, _ = alice.commit(GID, force_path=True, pending=True)
    alice = home.restart()
    pending = alice.pending_commit(GID)
    assert pending is not None and pending.commit == commit
    if answer == "accepted":
        bob.process(GID, pending.commit)
        alice.merge_pending_commit(GID)
    else:
        alice.clear_pending_commit(GID)
        winner, _ = bob.commit(GID, force_path=True)
        alice.process(GID, winner)
    alice = home.restart()
    assert alice.pending_commit(GID) is None
    assert agreed([alice, bob])
    assert bob.process(GID, alice.encrypt(GID, b"after restart")).data == b"after restart"


_KILLED_COMMITTER = textwrap.dedent(
    """
    import os, signal, sys
    from keystore import Vault
    from mls.drainer import WriteBehindDrainer
    from mls.native import NativeEngine
    from mls.storage import GranularStorage

    vault = Vault.open(sys.argv[1])
    vault.unlock(sys.argv[2])
    storage = GranularStorage.load(vault)
    drainer = WriteBehindDrainer(storage, vault)
    engine = NativeEngine(storage)
    commit, welcome = engine.commit(
        sys.argv[3].encode(), add=[bytes.fromhex(sys.argv[4])], pending=True
    )
    drainer.flush()  # durable before the bytes leave the process
    print(commit.hex(), welcome.hex(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.timeout(120)
def test_kill_9_after_sending_then_resend_is_byte_identical(home: VaultHome) -> None:
    """A committer SIGKILLed after sending finds the same commit and Welcome on restart."""
    alice = NativeEngine.create(home.start(), b"alice")
    bob, carol = member("bob"), member("carol")
    alice.create_group(GID)
    _, welcome = alice.commit(GID, add=[bob.generate_key_package()])
    assert welcome is not None
    bob.join(welcome)
    home.stop()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILLED_COMMITTER,
            str(home.path),
            PASSPHRASE,
            GID.decode(),
            carol.generate_key_package().hex(),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=100,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    sent_commit, sent_welcome = (bytes.fromhex(x) for x in proc.stdout.split())
    alice = NativeEngine(home.start())
    pending = alice.pending_commit(GID)
    assert pending is not None
    assert (pending.commit, pending.welcome) == (sent_commit, sent_welcome)
    # The DS got it once before the crash; the resend is the same message, so a DS that
    # deduplicates accepts either copy, and members see one commit.
    bob.process(GID, pending.commit)
    assert alice.process(GID, pending.commit).merged_pending_commit
    carol.join(sent_welcome)
    assert agreed([alice, bob, carol])


@pytest.mark.parametrize("seed", SEEDS)
def test_random_commit_races_keep_everyone_in_step(seed: int) -> None:
    """Rounds where random members commit at once and the DS picks a random winner."""
    rng = random.Random(seed)
    handshake = rng.choice([WireFormat.PUBLIC_MESSAGE, WireFormat.PRIVATE_MESSAGE])
    members = group(["m0", "m1", "m2", "m3"], config=GroupConfig(handshake=handshake))
    for _ in range(STEPS // 4):
        if rng.random() < 0.5:  # a queued Update proposal the racers may all commit
            proposer = rng.choice(members)
            proposal = proposer.propose_update(GID)
            for m in members:
                if m is not proposer:
                    m.process(GID, proposal)
        racers = [m for m in members if rng.random() < 0.5] or [rng.choice(members)]
        sent = {m.identity: m.commit(GID, force_path=True, pending=True)[0] for m in racers}
        winner = rng.choice(racers)
        for m in members:
            got = m.process(GID, sent[winner.identity])
            assert got.merged_pending_commit == (m is winner)
            assert got.cleared_pending_commit == (m in racers and m is not winner)
            assert m.pending_commit(GID) is None
        assert agreed(members)
        speaker = rng.choice(members)
        text = b"after the round, from " + speaker.identity
        message = speaker.encrypt(GID, text)
        for m in members:
            if m is not speaker:
                assert m.process(GID, message).data == text


def test_pending_external_join_survives_a_restart(home: VaultHome) -> None:
    """A joiner restarted before the DS answered resends the same external commit, then merges."""
    alice, bob = group(["alice", "bob"])
    carol = NativeEngine.create(home.start(), b"carol")
    _, commit = carol.join_by_external_commit(alice.group_info(GID), pending=True)
    carol = home.restart()
    pending = carol.pending_commit(GID)
    assert pending is not None and pending.external and pending.commit == commit
    for m in (alice, bob):
        m.process(GID, pending.commit)
    carol.merge_pending_commit(GID)
    carol = home.restart()
    assert agreed([alice, bob, carol])
    assert carol.process(GID, alice.encrypt(GID, b"in")).data == b"in"
