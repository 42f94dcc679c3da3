"""Native engine group operations: conversations, proposals, commits, Welcomes, PSKs, exporter."""

from __future__ import annotations

import random

import pytest

from mls.native import GroupConfig, NativeEngine, ProcessedKind
from mls.native.codec import decode_exact
from mls.native.errors import InvalidMessage
from mls.native.framing import MessageBody, MLSMessage, PrivateMessage, PublicMessage, WireFormat
from mls.native.leaf_node import Extension, ExtensionType
from mls.native.proposals import Commit, PreSharedKeyID, PskType
from mls.storage import GranularStorage
from tests.native.engine_helpers import GID, SEEDS, STEPS, agreed, deliver, group, member

HANDSHAKES = [
    pytest.param(WireFormat.PUBLIC_MESSAGE, id="public-handshake"),
    pytest.param(WireFormat.PRIVATE_MESSAGE, id="private-handshake"),
]


def body(message: bytes) -> MessageBody:
    """The body of an MLSMessage."""
    return decode_exact(message, MLSMessage.decode).body


def test_two_members_exchange_application_messages_both_ways() -> None:
    """A creator and a joiner read each other's application messages."""
    alice, bob = group(["alice", "bob"])
    got = bob.process(GID, alice.encrypt(GID, b"hello bob"))
    assert (got.kind, got.identity, got.data) == (ProcessedKind.APPLICATION, b"alice", b"hello bob")
    got = alice.process(GID, bob.encrypt(GID, b"hello alice", aad=b"meta"))
    assert (got.identity, got.data) == (b"bob", b"hello alice")


@pytest.mark.parametrize("handshake", HANDSHAKES)
def test_three_member_conversation_with_adds_updates_and_removes(handshake: WireFormat) -> None:
    """Adds, an Update proposal, path commits and a removal keep every member in step."""
    config = GroupConfig(handshake=handshake)
    alice, bob = group(["alice", "bob"], config=config)
    carol = member("carol")
    commit, welcome = bob.commit(GID, add=[carol.generate_key_package()], force_path=True)
    expected = PublicMessage if handshake == WireFormat.PUBLIC_MESSAGE else PrivateMessage
    assert isinstance(body(commit), expected)
    assert welcome is not None
    alice.process(GID, commit)
    carol.join(welcome, config=config)
    assert agreed([alice, bob, carol])
    for sender in (alice, bob, carol):
        msg = sender.encrypt(GID, b"hi from " + sender.identity)
        for receiver in {alice, bob, carol} - {sender}:
            assert receiver.process(GID, msg).data == b"hi from " + sender.identity
    proposal = carol.propose_update(GID)
    deliver(proposal, [alice, bob])
    commit, _ = alice.commit(GID)
    deliver(commit, [bob, carol])
    assert agreed([alice, bob, carol])
    commit, _ = carol.commit(GID, remove=[1])
    assert bob.process(GID, commit).removed
    alice.process(GID, commit)
    assert agreed([alice, carol])
    assert alice.members(GID) == [(0, b"alice"), (2, b"carol")]
    assert carol.process(GID, alice.encrypt(GID, b"after")).data == b"after"


def test_add_only_commit_has_no_path_and_update_commit_has_one() -> None:
    """An Add-only commit omits the UpdatePath (§12.4); a key update carries one."""
    alice, bob = group(["alice", "bob"])
    carol = member("carol")
    add, _ = alice.commit(GID, add=[carol.generate_key_package()])
    update, _ = alice.commit(GID, force_path=True)
    for raw, has_path in ((add, False), (update, True)):
        message = body(raw)
        assert isinstance(message, PublicMessage)
        content = message.content.content
        assert isinstance(content, Commit)
        assert (content.path is not None) == has_path
    bob.process(GID, add)
    bob.process(GID, update)
    assert agreed([alice, bob])


def test_update_proposal_rotates_the_proposers_leaf_key() -> None:
    """A committed Update replaces the proposer's leaf; it keeps decrypting."""
    alice, bob = group(["alice", "bob"])
    before = alice.ratchet_tree(GID)
    alice.process(GID, bob.propose_update(GID))
    commit, _ = alice.commit(GID)
    bob.process(GID, commit)
    assert agreed([alice, bob])
    assert alice.ratchet_tree(GID) != before
    assert bob.process(GID, alice.encrypt(GID, b"x")).data == b"x"


def test_leave_proposal_committed_by_another_member_removes_the_leaver() -> None:
    """A member proposes its own removal; the commit tells it it was removed."""
    alice, bob, carol = group(["alice", "bob", "carol"])
    proposal = bob.propose_remove(GID, bob.own_leaf_index(GID))
    deliver(proposal, [alice, carol])
    commit, _ = alice.commit(GID)
    assert bob.process(GID, commit).removed
    carol.process(GID, commit)
    assert bob.group_ids() == []
    assert [i for i, _ in alice.members(GID)] == [0, 2]
    assert agreed([alice, carol])


def test_external_psk_is_mixed_into_the_next_epoch() -> None:
    """A commit with an external PSK agrees only among members holding that PSK."""
    alice, bob = group(["alice", "bob"])
    for e in (alice, bob):
        e.store_external_psk(b"psk-1", b"\x42" * 32)
    deliver(alice.propose_external_psk(GID, b"psk-1"), [bob])
    commit, _ = alice.commit(GID)
    bob.process(GID, commit)
    assert agreed([alice, bob])


def test_resumption_psk_of_a_past_epoch_is_accepted() -> None:
    """A resumption PSK of an earlier epoch of the group can be injected."""
    alice, bob = group(["alice", "bob"])
    deliver(bob.propose_resumption_psk(GID, 1), [alice])
    commit, _ = alice.commit(GID)
    bob.process(GID, commit)
    assert agreed([alice, bob])
    assert alice.epoch(GID) == 2


def test_group_context_extensions_commit_updates_every_member() -> None:
    """A GroupContextExtensions commit changes the context for everyone."""
    alice, bob = group(["alice", "bob"])
    nothing_required = Extension(ExtensionType.REQUIRED_CAPABILITIES, b"\x00\x00\x00")
    commit, _ = alice.commit(GID, extensions=[nothing_required])
    bob.process(GID, commit)
    assert agreed([alice, bob])
    assert bob.process(GID, alice.encrypt(GID, b"new context")).data == b"new context"


def test_welcome_with_path_secret_lets_the_joiner_follow_later_commits() -> None:
    """Joiners added by a path commit receive a path secret and follow later commits."""
    alice, bob, carol, dave = group(["alice", "bob", "carol", "dave"])
    erin = member("erin")
    commit, welcome = bob.commit(GID, add=[erin.generate_key_package()], force_path=True)
    deliver(commit, [alice, carol, dave])
    assert welcome is not None
    erin.join(welcome)
    commit, _ = erin.commit(GID, force_path=True)
    deliver(commit, [alice, bob, carol, dave])
    assert agreed([alice, bob, carol, dave, erin])


def test_exporter_is_equal_on_every_member() -> None:
    """MLS-Exporter yields the same secret for every member and differs by label."""
    alice, bob = group(["alice", "bob"])
    assert alice.export_secret(GID, b"label", b"ctx", 32) == bob.export_secret(
        GID, b"label", b"ctx", 32
    )
    assert alice.export_secret(GID, b"other", b"ctx", 32) != bob.export_secret(
        GID, b"label", b"ctx", 32
    )


@pytest.mark.parametrize("suite", range(1, 8))
def test_every_cipher_suite_runs_a_group(suite: int) -> None:
    """Each RFC 9420 suite supports join, a path commit and messages."""
    alice, bob = group(["alice", "bob"], suite=suite)
    commit, _ = bob.commit(GID, force_path=True)
    alice.process(GID, commit)
    assert agreed([alice, bob])
    assert bob.process(GID, alice.encrypt(GID, b"m")).data == b"m"


def _reloaded(engine: NativeEngine) -> NativeEngine:
    """A new engine on a copy of the rows only: nothing may live in Python objects."""
    storage = GranularStorage()
    for category in engine.storage.categories():
        for key, value in engine.storage.items(category):
            storage.write(category, key, value)
    return NativeEngine(storage)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_conversation_keeps_every_member_in_step(seed: int) -> None:
    """Random adds, removes, updates, leaves, messages and reloads never split the group."""
    rnd = random.Random(seed)
    handshake = rnd.choice([WireFormat.PUBLIC_MESSAGE, WireFormat.PRIVATE_MESSAGE])
    config = GroupConfig(handshake=handshake)
    pool = [member(f"p{i}") for i in range(6)]
    members = [pool[0]]
    pool[0].create_group(GID, config=config)
    for step in range(STEPS):
        op = rnd.choice(["message", "add", "remove", "update", "propose_update", "reload"])
        actor = rnd.choice(members)
        others = [m for m in members if m is not actor]
        if op == "message":
            text = b"step %d" % step
            msg = actor.encrypt(GID, text)
            assert all(o.process(GID, msg).data == text for o in others)
        elif op == "add" and len(members) < len(pool):
            new = rnd.choice([p for p in pool if p not in members])
            commit, welcome = actor.commit(GID, add=[new.generate_key_package()])
            deliver(commit, others)
            assert welcome is not None
            new.join(welcome, config=config)
            members.append(new)
        elif op == "remove" and others:
            victim = rnd.choice(others)
            commit, _ = actor.commit(GID, remove=[victim.own_leaf_index(GID)])
            assert [o.process(GID, commit).removed for o in others] == [o is victim for o in others]
            members.remove(victim)
        elif op == "update":
            commit, _ = actor.commit(GID, force_path=True)
            deliver(commit, others)
        elif op == "propose_update" and others:
            deliver(actor.propose_update(GID), others)
            committer = rnd.choice(others)
            commit, _ = committer.commit(GID)
            deliver(commit, [m for m in members if m is not committer])
        elif op == "reload":
            fresh = _reloaded(actor)
            pool[pool.index(actor)] = fresh
            members[members.index(actor)] = fresh
        assert agreed(members), (step, op)


def test_a_member_can_be_removed_and_re_added_in_one_commit() -> None:
    """An Add of a client already in the group is valid when the same commit removes it."""
    alice, bob = group(["alice", "bob"])
    commit, welcome = alice.commit(GID, remove=[1], add=[bob.generate_key_package()])
    assert bob.process(GID, commit).removed
    assert welcome is not None
    bob.join(welcome)
    assert agreed([alice, bob])


def test_joiner_needs_the_external_psk_the_welcome_names() -> None:
    """A Welcome that mixes in an external PSK can only be opened by holders of that PSK."""
    alice = group(["alice"])[0]
    alice.store_external_psk(b"shared", b"\x07" * 32)
    bob, carol = member("bob"), member("carol")
    bob.store_external_psk(b"shared", b"\x07" * 32)
    psk = PreSharedKeyID(PskType.EXTERNAL, b"\x01" * 32, psk_id=b"shared")
    kps = [bob.generate_key_package(), carol.generate_key_package()]
    _, welcome = alice.commit(GID, add=kps, psks=[psk])
    assert welcome is not None
    bob.join(welcome)
    assert agreed([alice, bob])
    with pytest.raises(InvalidMessage):
        carol.join(welcome)


def test_add_proposal_by_reference_is_committed_by_another_member() -> None:
    """Bob proposes Carol; Alice's commit includes it by reference and welcomes her."""
    alice, bob = group(["alice", "bob"])
    carol = member("carol")
    alice.process(GID, bob.propose_add(GID, carol.generate_key_package()))
    commit, welcome = alice.commit(GID)
    message = body(commit)
    assert isinstance(message, PublicMessage) and isinstance(message.content.content, Commit)
    assert [p.proposal for p in message.content.content.proposals] == [None]
    bob.process(GID, commit)
    assert welcome is not None
    carol.join(welcome)
    assert agreed([alice, bob, carol])
