"""One MlsClient, two engines: the whole client API, its errors and its barrier on both.

Every test runs once per engine.  Where an engine cannot do something the test asserts
the explicit :class:`mls.Unsupported` it raises (naming engine and feature) instead of
skipping, so a gap can neither hide nor silently close.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from keystore import Vault, profiles
from mls import (
    AsyncMlsClient,
    CommitChanges,
    EpochMismatch,
    GroupContextExtension,
    GroupSettings,
    Handshake,
    InvalidMessage,
    InvalidProposal,
    MlsClient,
    MlsError,
    NoPendingCommit,
    NotAnMlsVault,
    PendingCommitExists,
    ReceivedKind,
    UnknownGroup,
    UnknownKeyPackage,
    UnknownMember,
    Unsupported,
)
from mls.engine import EngineName
from mls.engines.wire import WireFormat, peek_header

PASSPHRASE = "engines passphrase"
FAST = profiles.INSECURE_FOR_TESTS_ONLY
GID = b"room"
ENGINES = ["native", "mls-rs"]
_T = TypeVar("_T")


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> EngineName:
    """The engine under test (mls-rs needs its optional binding)."""
    if request.param == "mls-rs":
        pytest.importorskip("mls_rs_uniffi")
    return cast(EngineName, request.param)


class Clients:
    """Clients of one engine in their own vaults under one folder, restartable."""

    def __init__(self, folder: Path, engine: EngineName) -> None:
        self.folder = folder
        self.engine = engine
        self.made: list[MlsClient] = []

    def path(self, name: str) -> Path:
        """Where ``name``'s vault lives."""
        return self.folder / f"{name}.vault"

    def make(
        self, name: str, *, cipher_suite: int = 1, max_message_size: int = 2 << 20
    ) -> MlsClient:
        """A new client for identity ``name``."""
        client = MlsClient.create(
            self.path(name),
            PASSPHRASE,
            identity=name.encode(),
            kdf=FAST,
            engine=self.engine,
            cipher_suite=cipher_suite,
            max_message_size=max_message_size,
        )
        self.made.append(client)
        return client

    def restart(self, client: MlsClient) -> MlsClient:
        """Close and reopen from the vault, as a new process would."""
        client.close()
        again = MlsClient.open(self.path(client.identity.decode()), PASSPHRASE)
        self.made.append(again)
        return again


@pytest.fixture
def clients(tmp_path: Path, engine: EngineName) -> Iterator[Clients]:
    """A client factory for the engine under test; every client is closed afterwards."""
    c = Clients(tmp_path, engine)
    yield c
    for client in c.made:
        client.close()


def pair(clients: Clients) -> tuple[MlsClient, MlsClient]:
    """Alice creates the room and adds Bob."""
    alice, bob = clients.make("alice"), clients.make("bob")
    alice.create_group(GID)
    _, welcome = alice.add_members(GID, [bob.generate_key_package()])
    assert bob.join(welcome) == GID
    return alice, bob


def trio(clients: Clients) -> tuple[MlsClient, MlsClient, MlsClient]:
    """Alice, Bob and Carol in the room."""
    alice, bob = pair(clients)
    carol = clients.make("carol")
    commit, welcome = alice.add_members(GID, [carol.generate_key_package()])
    bob.process(GID, commit)
    carol.join(welcome)
    return alice, bob, carol


def unsupported(engine: EngineName, call: Callable[[], object]) -> Unsupported:
    """Assert ``call`` raises Unsupported naming ``engine``; return the error."""
    with pytest.raises(Unsupported) as info:
        call()
    assert info.value.engine == engine and engine in str(info.value)
    return info.value


# ---------------------------------------------------------------------- the API


def test_conversation_membership_and_restart(clients: Clients) -> None:
    """Messages both ways, add, key update and removal work, with restarts in between."""
    alice, bob, carol = trio(clients)
    assert clients.engine == alice.engine_name
    got = bob.process(GID, alice.encrypt(GID, b"hi"))
    assert (got.kind, got.sender, got.data) == (ReceivedKind.APPLICATION, b"alice", b"hi")
    alice, bob = clients.restart(alice), clients.restart(bob)
    assert alice.process(GID, bob.encrypt(GID, b"back")).data == b"back"
    commit = bob.update_keys(GID)
    for member in (alice, carol):
        assert member.process(GID, commit).kind is ReceivedKind.COMMIT
    commit = carol.remove_members(GID, [b"alice"])
    assert alice.process(GID, commit).removed
    bob.process(GID, commit)
    assert alice.group_ids() == []
    assert bob.members(GID) == carol.members(GID) == [b"bob", b"carol"]
    assert bob.export_secret(GID, b"x", b"", 32) == carol.export_secret(GID, b"x", b"", 32)


def test_group_inspection_records(clients: Clients) -> None:
    """Epoch, own leaf, suite and members as records agree between members."""
    alice, bob = pair(clients)
    state = alice.group_state(GID)
    assert state.group_id == GID and state.epoch == 1 == bob.epoch(GID)
    assert state.cipher_suite == 1 and state.settings == GroupSettings()
    assert (alice.own_leaf_index(GID), bob.own_leaf_index(GID)) == (0, 1)
    roster = alice.roster(GID)
    assert roster == bob.roster(GID)
    assert [(m.leaf_index, m.identity) for m in roster] == [(0, b"alice"), (1, b"bob")]
    assert roster[0].credential == b"\x00\x01\x05alice"  # basic credential, RFC 9420 §5.3
    assert all(len(m.signature_key) == 32 and len(m.encryption_key) == 32 for m in roster)
    before = roster[1].encryption_key
    alice.process(GID, bob.update_keys(GID))
    assert alice.roster(GID)[1].encryption_key != before
    assert alice.epoch(GID) == 2
    if clients.engine == "native":
        assert alice.epoch_authenticator(GID) == bob.epoch_authenticator(GID)
        assert len(alice.epoch_authenticator(GID)) == 32
    else:
        unsupported("mls-rs", lambda: alice.epoch_authenticator(GID))
        assert alice.group_state(GID).epoch_authenticator is None


def test_processed_commit_says_what_changed(clients: Clients) -> None:
    """A processed commit reports the members it added, removed and updated, and its epoch."""
    alice, bob, carol = trio(clients)
    dave = clients.make("dave")
    commit, _ = alice.add_members(GID, [dave.generate_key_package()])
    got = bob.process(GID, commit)
    carol.process(GID, commit)
    assert got.changes is not None
    assert (got.changes.epoch, got.changes.added, got.changes.removed) == (3, (b"dave",), ())
    removal = alice.remove_members(GID, [b"bob"])
    gone = bob.process(GID, removal)
    assert gone.removed and gone.changes == CommitChanges(4, removed=(b"bob",))
    got = carol.process(GID, removal)
    assert got.changes is not None and got.changes.removed == (b"bob",)
    assert got.epoch == 3 and got.changes.epoch == 4
    got = carol.process(GID, alice.update_keys(GID))
    assert got.changes is not None and got.changes.updated == (b"alice",)
    assert got.changes.added == got.changes.removed == ()
    application = carol.process(GID, alice.encrypt(GID, b"m"))
    assert application.changes is None and application.epoch == 5


def test_proposals_then_commit(clients: Clients) -> None:
    """Add and Remove proposals travel to another member, who commits them."""
    alice, bob, carol = trio(clients)
    dave = clients.make("dave")
    proposal = alice.propose_add(GID, dave.generate_key_package())
    assert alice.pending_events == 0
    for member in (bob, carol):
        assert member.process(GID, proposal).kind is ReceivedKind.PROPOSAL
    commit, welcome = bob.commit(GID)
    assert welcome is not None
    for member in (alice, carol):
        assert member.process(GID, commit).changes.added == (b"dave",)  # type: ignore[union-attr]
    assert dave.join(welcome) == GID
    proposal = alice.propose_remove(GID, b"carol")
    for member in (bob, carol, dave):
        member.process(GID, proposal)
    commit, _ = bob.commit(GID)
    assert carol.process(GID, commit).removed
    for member in (alice, dave):
        member.process(GID, commit)
    assert alice.members(GID) == bob.members(GID) == dave.members(GID)
    assert b"carol" not in alice.members(GID)


def test_update_proposal_and_pending_list(clients: Clients) -> None:
    """An Update proposal is listed as pending and committed by another member."""
    alice, bob = pair(clients)
    if clients.engine == "mls-rs":
        unsupported("mls-rs", lambda: alice.propose_update(GID))
        unsupported("mls-rs", lambda: alice.pending_proposals(GID))
        return
    proposal = alice.propose_update(GID)
    assert [p.kind for p in alice.pending_proposals(GID)] == ["update"]
    bob.process(GID, proposal)
    assert [(p.kind, p.sender) for p in bob.pending_proposals(GID)] == [("update", 0)]
    commit, _ = bob.commit(GID)
    got = alice.process(GID, commit)
    assert got.changes is not None and b"alice" in got.changes.updated
    assert alice.pending_proposals(GID) == bob.pending_proposals(GID) == []
    assert alice.export_secret(GID, b"x", b"", 16) == bob.export_secret(GID, b"x", b"", 16)


def test_external_psk_by_proposal_and_inline(clients: Clients) -> None:
    """A stored external PSK enters the key schedule by proposal or inline in a commit."""
    alice, bob = pair(clients)
    if clients.engine == "mls-rs":
        unsupported("mls-rs", lambda: alice.store_external_psk(b"psk", b"s" * 32))
        unsupported("mls-rs", lambda: alice.propose_external_psk(GID, b"psk"))
        unsupported("mls-rs", lambda: alice.commit(GID, psks=[b"psk"]))
        return
    for member in (alice, bob):
        member.store_external_psk(b"psk-1", b"shared secret one")
    with pytest.raises(InvalidProposal):
        alice.propose_external_psk(GID, b"nobody stored this")
    bob.process(GID, alice.propose_external_psk(GID, b"psk-1"))
    commit, _ = bob.commit(GID)
    alice.process(GID, commit)
    commit, _ = alice.commit(GID, psks=[b"psk-1"])
    bob.process(GID, commit)
    assert alice.export_secret(GID, b"x", b"", 16) == bob.export_secret(GID, b"x", b"", 16)
    mallory = clients.make("mallory")
    _, welcome = alice.commit(GID, add=[mallory.generate_key_package()], psks=[b"psk-1"])
    assert welcome is not None
    with pytest.raises(InvalidMessage):  # the joiner lacks the PSK the Welcome names
        mallory.join(welcome)


def test_external_psk_id_too_long_is_refused_by_name(clients: Clients) -> None:
    """A PSK id longer than the client stores is refused as an argument, nothing stored."""
    from mls.client import MAX_PSK_ID_LEN

    alice, _ = pair(clients)
    with pytest.raises(ValueError, match="psk_id is"):
        alice.store_external_psk(b"p" * (MAX_PSK_ID_LEN + 1), b"secret")
    if clients.engine == "mls-rs":
        return
    alice.store_external_psk(b"p" * MAX_PSK_ID_LEN, b"secret")
    alice.propose_external_psk(GID, b"p" * MAX_PSK_ID_LEN)


def test_group_context_extensions(clients: Clients) -> None:
    """GroupContext extensions change by proposal or inline commit, agreed by all."""
    alice, bob = pair(clients)
    ext = [GroupContextExtension(0xFF00, b"room settings v1")]
    if clients.engine == "mls-rs":
        unsupported("mls-rs", lambda: alice.propose_group_context_extensions(GID, ext))
        unsupported("mls-rs", lambda: alice.commit(GID, extensions=ext))
        return
    bob.process(GID, alice.propose_group_context_extensions(GID, []))
    alice.process(GID, bob.commit(GID)[0])
    commit, _ = alice.commit(GID, extensions=[])
    bob.process(GID, commit)
    assert alice.export_secret(GID, b"x", b"", 16) == bob.export_secret(GID, b"x", b"", 16)


def test_commit_with_adds_removes_and_forced_path(clients: Clients) -> None:
    """One commit adds and removes at once; a forced path rotates the committer's key."""
    alice, bob, carol = trio(clients)
    dave = clients.make("dave")
    if clients.engine == "mls-rs":
        kp = dave.generate_key_package()
        unsupported("mls-rs", lambda: alice.commit(GID, add=[kp], remove=[b"bob"]))
        unsupported("mls-rs", lambda: alice.commit(GID, add=[kp], force_path=True))
        return
    commit, welcome = alice.commit(
        GID, add=[dave.generate_key_package()], remove=[b"bob"], force_path=True
    )
    assert welcome is not None
    got = carol.process(GID, commit)
    assert got.changes == CommitChanges(3, (b"dave",), (b"bob",), (b"alice",))
    assert bob.process(GID, commit).removed
    dave.join(welcome)
    assert dave.process(GID, carol.encrypt(GID, b"hi dave")).data == b"hi dave"


def test_private_handshakes_as_a_group_setting(clients: Clients) -> None:
    """A group set to PrivateMessage handshakes sends its commits and proposals encrypted."""
    alice, bob = clients.make("alice"), clients.make("bob")
    private = GroupSettings(handshake=Handshake.PRIVATE)
    if clients.engine == "mls-rs":
        unsupported("mls-rs", lambda: alice.create_group(GID, settings=private))
        return
    alice.create_group(GID, settings=private)
    commit, welcome = alice.add_members(GID, [bob.generate_key_package()])
    assert peek_header(commit).wire_format == WireFormat.PRIVATE_MESSAGE
    bob.join(welcome, settings=private)
    commit = bob.update_keys(GID)
    assert peek_header(commit).wire_format == WireFormat.PRIVATE_MESSAGE
    assert alice.process(GID, commit).kind is ReceivedKind.COMMIT
    assert alice.group_state(GID).settings.handshake is Handshake.PRIVATE


def test_padding_hides_message_length(clients: Clients) -> None:
    """Padding is a group setting: padded ciphertexts are longer, and still decrypt."""
    alice, bob = clients.make("alice"), clients.make("bob")
    if clients.engine == "mls-rs":
        unsupported("mls-rs", lambda: alice.create_group(GID, settings=GroupSettings(padding=64)))
        return
    alice.create_group(GID, settings=GroupSettings(padding=256))
    alice.create_group(b"plain")
    for gid in (GID, b"plain"):
        _, welcome = alice.add_members(gid, [bob.generate_key_package()])
        bob.join(welcome)
    padded, plain = alice.encrypt(GID, b"short"), alice.encrypt(b"plain", b"short")
    assert len(padded) >= len(plain) + 250
    assert bob.process(GID, padded).data == bob.process(b"plain", plain).data == b"short"


def test_authenticated_data_is_readable_on_receipt(clients: Clients) -> None:
    """The sender's authenticated data comes back with the message, also on replay."""
    alice, bob = pair(clients)
    if clients.engine == "mls-rs":
        unsupported("mls-rs", lambda: alice.encrypt(GID, b"x", aad=b"msg-id 7"))
        assert bob.process(GID, alice.encrypt(GID, b"x")).authenticated_data == b""
        return
    message = alice.encrypt(GID, b"payload", aad=b"msg-id 7")
    got = bob.process(GID, message)
    assert (got.data, got.authenticated_data) == (b"payload", b"msg-id 7")
    again = bob.process(GID, message)
    assert again.replay and again.authenticated_data == b"msg-id 7"
    tampered = message.replace(b"msg-id 7", b"msg-id 8")
    with pytest.raises(InvalidMessage):
        bob.process(GID, tampered)


def test_a_received_message_never_shows_its_plaintext_in_repr(clients: Clients) -> None:
    """Logging a processed result (``repr``, f-string, logging) does not log the plaintext."""
    alice, bob = pair(clients)
    secret = b"attack at dawn 0123456789"
    message = alice.encrypt(GID, secret)
    got, again = bob.process(GID, message), bob.process(GID, message)
    assert got.data == secret and again.replay
    for shown in (repr(got), str(got), f"{again}", repr([got])):
        assert repr(secret)[2:-1] not in shown and "attack at dawn" not in shown


@pytest.mark.parametrize("suite", [1, 2, 3, 4, 5, 6, 7])
def test_every_cipher_suite_at_create_group_and_key_package(clients: Clients, suite: int) -> None:
    """Groups and key packages of each RFC 9420 suite, from clients created with suite 1."""
    alice, bob = clients.make("alice"), clients.make("bob")
    if clients.engine == "mls-rs" and suite != 1:
        unsupported("mls-rs", lambda: alice.create_group(GID, cipher_suite=suite))
        unsupported("mls-rs", lambda: bob.generate_key_package(cipher_suite=suite))
        return
    alice.create_group(GID, cipher_suite=suite)
    _, welcome = alice.add_members(GID, [bob.generate_key_package(cipher_suite=suite)])
    bob.join(welcome)
    assert bob.group_state(GID).cipher_suite == suite == alice.group_state(GID).cipher_suite
    assert bob.process(GID, alice.encrypt(GID, b"suite")).data == b"suite"
    bob = clients.restart(bob)
    alice.process(GID, bob.update_keys(GID))
    assert alice.process(GID, bob.encrypt(GID, b"after restart")).data == b"after restart"
    assert alice.cipher_suite == 1  # the client's first identity keeps its suite


@pytest.mark.parametrize("suite", [2, 7])
def test_cipher_suite_chosen_at_create(clients: Clients, suite: int) -> None:
    """A client created with another suite uses it for its groups and key packages."""
    if clients.engine == "mls-rs":
        unsupported("mls-rs", lambda: clients.make("alice", cipher_suite=suite))
        assert not clients.path("alice").exists()
        return
    alice = clients.make("alice", cipher_suite=suite)
    bob = clients.make("bob", cipher_suite=suite)
    assert alice.cipher_suite == suite
    alice.create_group(GID)
    _, welcome = alice.add_members(GID, [bob.generate_key_package()])
    bob.join(welcome)
    assert bob.group_state(GID).cipher_suite == suite
    assert bob.process(GID, alice.encrypt(GID, b"x")).data == b"x"


def test_a_failed_call_forgets_a_new_suite_key(clients: Clients) -> None:
    """A call rolled back after making a new suite's signature key leaves no trace of it."""
    alice, bob = clients.make("alice"), clients.make("bob")
    alice.create_group(GID)
    if clients.engine == "mls-rs":
        unsupported("mls-rs", lambda: alice.create_group(GID, cipher_suite=3))
        return
    with pytest.raises(ValueError):
        alice.create_group(GID, cipher_suite=3)  # duplicate id, after the suite-3 key is made
    assert alice.pending_events == 0
    alice.create_group(b"other", cipher_suite=3)
    _, welcome = alice.add_members(b"other", [bob.generate_key_package(cipher_suite=3)])
    bob.join(welcome)
    alice = clients.restart(alice)
    assert bob.process(b"other", alice.encrypt(b"other", b"x")).data == b"x"


def test_key_package_lifetime(clients: Clients) -> None:
    """A chosen lifetime is written into the key package's leaf."""
    alice = clients.make("alice")
    if clients.engine == "mls-rs":
        unsupported("mls-rs", lambda: alice.generate_key_package(lifetime=600))
        return
    from mls.native.codec import decode_exact
    from mls.native.framing import MLSMessage
    from mls.native.key_package import KeyPackage

    message = decode_exact(alice.generate_key_package(lifetime=600), MLSMessage.decode)
    assert isinstance(message.body, KeyPackage)
    lifetime = message.body.leaf_node.lifetime
    assert lifetime is not None
    assert lifetime.not_after - lifetime.not_before == 600 + 3600  # one hour of skew slack
    with pytest.raises(ValueError):
        alice.generate_key_package(lifetime=0)


def test_last_resort_key_package_serves_many_welcomes(clients: Clients) -> None:
    """A last-resort key package is not consumed by a join; a one-time one is."""
    alice, bob = clients.make("alice"), clients.make("bob")
    if clients.engine == "mls-rs":
        unsupported("mls-rs", lambda: bob.generate_key_package(last_resort=True))
        return
    reusable, one_time = (bob.generate_key_package(last_resort=True), bob.generate_key_package())
    for gid in (b"g1", b"g2"):
        alice.create_group(gid)
        _, welcome = alice.add_members(gid, [reusable])
        assert bob.join(welcome) == gid
    alice.create_group(b"g3")
    alice.create_group(b"g4")
    _, w3 = alice.add_members(b"g3", [one_time])
    _, w4 = alice.add_members(b"g4", [one_time])
    bob.join(w3)
    with pytest.raises(UnknownKeyPackage):
        bob.join(w4)
    assert bob.group_ids() == [b"g1", b"g2", b"g3"]


def test_groups_joined_with_one_last_resort_key_package_stay_independent(
    clients: Clients,
) -> None:
    """Rotating or losing the leaf key in one group keeps the other group's copy of it."""
    alice, bob = clients.make("alice"), clients.make("bob")
    if clients.engine == "mls-rs":
        unsupported("mls-rs", lambda: bob.generate_key_package(last_resort=True))
        return
    reusable = bob.generate_key_package(last_resort=True)
    for gid in (b"g1", b"g2"):
        alice.create_group(gid)
        _, welcome = alice.add_members(gid, [reusable])
        bob.join(welcome)
    alice.process(b"g1", bob.update_keys(b"g1"))  # bob's g1 leaf key is replaced
    assert bob.process(b"g1", alice.remove_members(b"g1", [b"bob"])).removed
    bob = clients.restart(bob)
    bob.process(b"g2", alice.update_keys(b"g2"))  # the path secret is encrypted to bob's leaf
    assert bob.export_secret(b"g2", b"x", b"", 16) == alice.export_secret(b"g2", b"x", b"", 16)


def test_lost_key_packages(clients: Clients) -> None:
    """Native keeps key packages across restarts; mls-rs reports them lost."""
    alice, bob = clients.make("alice"), clients.make("bob")
    key_package = bob.generate_key_package()
    bob = clients.restart(bob)
    alice.create_group(GID)
    _, welcome = alice.add_members(GID, [key_package])
    if clients.engine == "native":
        assert bob.lost_key_packages() == []
        assert bob.join(welcome) == GID
    else:
        assert len(bob.lost_key_packages()) == 1
        with pytest.raises(UnknownKeyPackage):  # KeyPackageLost is one
            bob.join(welcome)
        assert bob.discard_lost_key_packages() == 1


# ---------------------------------------------------------------------- delivery service


def test_pending_commit_is_resent_merged_by_echo_or_explicitly(clients: Clients) -> None:
    """A pending commit survives a restart byte for byte, and merges on echo or on demand."""
    alice, bob = pair(clients)
    if clients.engine == "mls-rs":
        unsupported("mls-rs", lambda: alice.commit(GID, force_path=True, pending=True))
        unsupported("mls-rs", lambda: alice.merge_pending_commit(GID))
        unsupported("mls-rs", lambda: alice.clear_pending_commit(GID))
        assert alice.pending_commit(GID) is None
        return
    commit, _ = alice.commit(GID, force_path=True, pending=True)
    assert alice.epoch(GID) == 1 and alice.pending_events == 0
    alice = clients.restart(alice)
    pending = alice.pending_commit(GID)
    assert pending is not None and (pending.commit, pending.epoch) == (commit, 1)
    assert alice.group_state(GID).pending_commit == pending
    with pytest.raises(PendingCommitExists):
        alice.propose_update(GID)
    assert alice.process(GID, bob.encrypt(GID, b"meanwhile")).data == b"meanwhile"
    bob.process(GID, commit)
    echo = alice.process(GID, commit)
    assert echo.merged_pending_commit and echo.changes is not None
    assert echo.changes.updated == (b"alice",) and alice.epoch(GID) == 2
    assert alice.pending_commit(GID) is None
    commit, _ = bob.commit(GID, force_path=True, pending=True)
    alice.process(GID, commit)
    assert bob.merge_pending_commit(GID) == 3
    with pytest.raises(NoPendingCommit):
        bob.merge_pending_commit(GID)
    assert alice.export_secret(GID, b"x", b"", 16) == bob.export_secret(GID, b"x", b"", 16)


def test_losing_commit_race_clears_the_pending_commit(clients: Clients) -> None:
    """When another commit wins the epoch, ours is dropped; a rejected one can be cleared."""
    alice, bob = pair(clients)
    if clients.engine == "mls-rs":
        unsupported("mls-rs", lambda: alice.commit(GID, pending=True))
        return
    alice.commit(GID, force_path=True, pending=True)
    winner = bob.update_keys(GID)
    got = alice.process(GID, winner)
    assert got.cleared_pending_commit and alice.pending_commit(GID) is None
    assert alice.process(GID, winner).cleared_pending_commit  # the receipt keeps the flag
    alice.commit(GID, force_path=True, pending=True)
    alice.clear_pending_commit(GID)
    assert alice.pending_commit(GID) is None and alice.epoch(GID) == 2
    assert bob.process(GID, alice.encrypt(GID, b"in step")).data == b"in step"


def test_external_join_resync_and_drop_group(clients: Clients) -> None:
    """A GroupInfo lets a newcomer join by external commit; a member that dropped the
    group comes back by resync; the tree can travel out of band."""
    alice, bob = pair(clients)
    carol = clients.make("carol")
    assert alice.ratchet_tree(GID) == bob.ratchet_tree(GID)
    if clients.engine == "mls-rs":
        unsupported("mls-rs", lambda: alice.group_info(GID))
        unsupported("mls-rs", lambda: carol.join_by_external_commit(b"\x00\x01\x00\x04"))
        bob.drop_group(GID)
        assert bob.group_ids() == []
        return
    info = alice.group_info(GID, with_ratchet_tree=False)
    gid, commit = carol.join_by_external_commit(info, ratchet_tree=alice.ratchet_tree(GID))
    assert gid == GID and carol.pending_events == 0
    for member in (alice, bob):
        got = member.process(GID, commit)
        assert got.changes is not None and got.changes.added == (b"carol",)
    assert bob.process(GID, carol.encrypt(GID, b"hello")).data == b"hello"
    bob.drop_group(GID)
    assert bob.group_ids() == []
    bob = clients.restart(bob)
    _, commit = bob.join_by_external_commit(alice.group_info(GID), resync=True)
    for member in (alice, carol):
        got = member.process(GID, commit)
        # Same identity and signature key in the same leaf, new encryption key: an update.
        assert got.changes is not None and got.changes.updated == (b"bob",)
    assert alice.members(GID).count(b"bob") == 1
    assert alice.process(GID, bob.encrypt(GID, b"back")).data == b"back"


def test_resumption_psk_proposal(clients: Clients) -> None:
    """The resumption PSK of a retained epoch can be injected by proposal."""
    alice, bob = pair(clients)
    if clients.engine == "mls-rs":
        unsupported("mls-rs", lambda: alice.propose_resumption_psk(GID, 1))
        return
    bob.process(GID, alice.propose_resumption_psk(GID, 1))
    alice.process(GID, bob.commit(GID)[0])
    with pytest.raises(InvalidProposal):
        alice.propose_resumption_psk(GID, 99)
    assert alice.export_secret(GID, b"x", b"", 16) == bob.export_secret(GID, b"x", b"", 16)


def test_credential_validator_is_the_applications_identity_policy(
    tmp_path: Path, engine: EngineName
) -> None:
    """A validator given at create and open decides who may join the client's groups."""
    from mls.native.errors import InvalidCredential
    from mls.native.identity import BasicCredentialValidator
    from mls.native.leaf_node import Credential

    class NoMallory(BasicCredentialValidator):
        def validate(self, credential: Credential, signature_key: bytes) -> None:
            super().validate(credential, signature_key)
            if credential.identity == b"mallory":
                raise InvalidCredential("mallory is not welcome")

    path = tmp_path / "alice.vault"
    if engine == "mls-rs":
        unsupported(
            "mls-rs",
            lambda: MlsClient.create(
                path,
                PASSPHRASE,
                identity=b"a",
                kdf=FAST,
                engine=engine,
                credential_validator=NoMallory(),
            ),
        )
        assert not path.exists()
        return
    alice = MlsClient.create(
        path, PASSPHRASE, identity=b"alice", kdf=FAST, credential_validator=NoMallory()
    )
    mallory = MlsClient.create(tmp_path / "m.vault", PASSPHRASE, identity=b"mallory", kdf=FAST)
    with mallory:
        kp = mallory.generate_key_package()
        alice.create_group(GID)
        alice.close()
        with MlsClient.open(path, PASSPHRASE, credential_validator=NoMallory()) as alice:
            with pytest.raises(InvalidMessage, match="mallory is not welcome"):
                alice.add_members(GID, [kp])
            assert alice.pending_events == 0 and alice.members(GID) == [b"alice"]


# ---------------------------------------------------------------------- errors


def test_error_cases_are_the_same_on_both_engines(clients: Clients) -> None:
    """Each bad input raises the same mls.errors class whichever engine runs."""
    alice, bob = pair(clients)
    good = alice.encrypt(GID, b"ok")
    for bad in (b"", b"\x00\x01", b"\x00\x01\x00\x02garbage", good[:-5], good + b"\x00"):
        with pytest.raises(InvalidMessage):
            bob.process(GID, bad)
    with pytest.raises(InvalidMessage):  # a Welcome is not a group message
        bob.process(GID, alice.add_members(GID, [clients.make("c").generate_key_package()])[1])
    with pytest.raises(UnknownGroup):
        bob.process(b"elsewhere", good)
    with pytest.raises(UnknownGroup):
        bob.encrypt(b"elsewhere", b"x")
    with pytest.raises(UnknownMember):
        alice.remove_members(GID, [b"mallory"])
    with pytest.raises(InvalidProposal, match="cannot remove itself"):  # leave() is the way
        alice.remove_members(GID, [b"alice"])
    with pytest.raises(ValueError):
        alice.export_secret(GID, b"x", b"", 0)
    with pytest.raises(InvalidMessage):
        bob.join(b"\x00\x01\x00\x03")
    with pytest.raises(InvalidMessage):
        bob.add_members(GID, [b"not a key package"])


def test_epoch_mismatch_future_and_past(clients: Clients) -> None:
    """A message from a future epoch is retryable; a handshake of a past one is not."""
    alice, bob, carol = trio(clients)
    stale = bob.update_keys(GID)  # never delivered to carol before the next one
    alice.process(GID, stale)
    future = alice.update_keys(GID)
    with pytest.raises(EpochMismatch) as info:
        carol.process(GID, future)
    assert info.value.future and info.value.retryable
    assert (info.value.message_epoch, info.value.group_epoch) == (3, 2)
    carol.process(GID, stale)
    carol.process(GID, future)
    with pytest.raises(EpochMismatch) as info:
        carol.process(GID, bob.leave(GID))  # bob is still at epoch 3
    assert not info.value.future and not info.value.retryable


def test_a_welcome_to_a_group_id_we_hold_is_refused_and_changes_nothing(
    clients: Clients,
) -> None:
    """Anyone with one of our key packages can make a group of any id: its Welcome must not
    replace the group of that id we are in."""
    alice, bob, mallory = clients.make("alice"), clients.make("bob"), clients.make("mallory")
    alice.create_group(GID)
    bob.join(alice.add_members(GID, [bob.generate_key_package()])[1])
    mallory.create_group(GID)
    _, welcome = mallory.add_members(GID, [bob.generate_key_package()])
    vault = bob.vault
    before = {(c, k): v for c in vault.categories() for k, v in vault.items(c)}
    with pytest.raises(InvalidMessage):
        bob.join(welcome)
    assert {(c, k): v for c in vault.categories() for k, v in vault.items(c)} == before
    assert bob.members(GID) == [b"alice", b"bob"]
    assert bob.process(GID, alice.encrypt(GID, b"still here")).data == b"still here"
    bob = clients.restart(bob)
    assert bob.members(GID) == [b"alice", b"bob"]


def test_a_group_id_we_cannot_address_is_refused_as_invalid_message(clients: Clients) -> None:
    """RFC 9420 bounds no group id; a Welcome naming an empty one (no call could name the
    group) or one longer than the vault can key a row by is an InvalidMessage (not a
    storage ValueError) and changes nothing."""
    binding = pytest.importorskip("mls_rs_uniffi")  # a peer that accepts any group id
    from mls.categories import MAX_GROUP_ID_LEN
    from mls.mlsrs import new_group_state_storage
    from mls.storage import GranularStorage

    bob = clients.make("bob")
    config = binding.ClientConfig(
        group_state_storage=new_group_state_storage(GranularStorage()),
        use_ratchet_tree_extension=True,
    )
    keys = binding.generate_signature_keypair(binding.CipherSuite.CURVE25519_AES128)
    peer = binding.Client(b"peer", keys, config)
    for length, joins in ((0, False), (MAX_GROUP_ID_LEN, True), (MAX_GROUP_ID_LEN + 1, False)):
        group = peer.create_group(b"g" * length)
        kp = binding.Message.from_bytes(bob.generate_key_package())
        welcome = bytes(group.add_members([kp]).welcome_message.to_bytes())
        if joins:
            assert bob.join(welcome) == b"g" * length
            continue
        vault = bob.vault
        before = {(c, k): v for c in vault.categories() for k, v in vault.items(c)}
        with pytest.raises(InvalidMessage, match="group id"):
            bob.join(welcome)
        assert {(c, k): v for c in vault.categories() for k, v in vault.items(c)} == before
    assert bob.group_ids() == [b"g" * MAX_GROUP_ID_LEN]
    with pytest.raises(ValueError, match="group id"):
        bob.create_group(b"g" * (MAX_GROUP_ID_LEN + 1))
    with pytest.raises(UnknownGroup):  # looking one up is not misuse: we just hold no such group
        bob.epoch(b"g" * (MAX_GROUP_ID_LEN + 1))


def test_welcome_errors(clients: Clients) -> None:
    """A reused Welcome and one for somebody else are UnknownKeyPackage."""
    alice, bob = clients.make("alice"), clients.make("bob")
    carol = clients.make("carol")
    alice.create_group(GID)
    _, welcome = alice.add_members(GID, [bob.generate_key_package()])
    with pytest.raises(UnknownKeyPackage):
        carol.join(welcome)
    bob.join(welcome)
    with pytest.raises(UnknownKeyPackage):
        bob.join(welcome)


def test_client_and_native_engine_share_one_default_size_bound() -> None:
    """One number for the whole project: the client's default is the native engine's."""
    from mls import DEFAULT_MAX_MESSAGE_SIZE
    from mls.native.engine import DEFAULT_MAX_MESSAGE_SIZE as ENGINE_DEFAULT

    assert DEFAULT_MAX_MESSAGE_SIZE == ENGINE_DEFAULT == 2 * 1024 * 1024


def test_max_message_size_is_checked_before_parsing(clients: Clients) -> None:
    """Input over max_message_size is InvalidMessage without reaching any parser."""
    _, bob = pair(clients)
    small = clients.make("small", max_message_size=64)
    assert small.max_message_size == 64
    with pytest.raises(InvalidMessage, match="max_message_size"):
        small.join(b"\x00" * 65)
    huge = b"\x00\x01\x00\x02" + os.urandom(2 * 1024 * 1024)
    with pytest.raises(InvalidMessage, match="max_message_size"):
        bob.process(GID, huge)
    assert bob.pending_events == 0


def test_batch_errors_name_the_failing_item(clients: Clients) -> None:
    """process_many / encrypt_many say which item failed and roll the whole batch back."""
    alice, bob = pair(clients)
    messages = [alice.encrypt(GID, bytes([i])) for i in range(3)]
    with pytest.raises(InvalidMessage) as info:
        bob.process_many([(GID, messages[0]), (GID, b"\x00\x01\x00\x02junk"), (GID, messages[1])])
    assert info.value.index == 1
    assert [r.data for r in bob.process_many((GID, m) for m in messages)] == [b"\0", b"\1", b"\2"]
    with pytest.raises(UnknownGroup) as unknown:
        alice.encrypt_many([(GID, b"a"), (GID, b"b"), (b"nope", b"c")])
    assert unknown.value.index == 2
    assert isinstance(unknown.value, MlsError)


@pytest.mark.parametrize(
    "bad",
    [
        {"identity": b""},
        {"cipher_suite": 9},
        {"receipt_retention": -1},
        {"max_message_size": 0},
        {"epoch_retention": 0},
    ],
)
def test_refused_create_leaves_no_file(
    tmp_path: Path, engine: EngineName, bad: dict[str, object]
) -> None:
    """Bad arguments are refused before the vault file exists."""
    args: dict[str, object] = {"identity": b"x", "kdf": FAST, "engine": engine, **bad}
    with pytest.raises((TypeError, ValueError)):
        MlsClient.create(tmp_path / "v.vault", PASSPHRASE, **args)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_opening_with_the_wrong_engine_names_the_right_one(
    tmp_path: Path, engine: EngineName
) -> None:
    """NotAnMlsVault says which engine a vault belongs to."""
    pytest.importorskip("mls_rs_uniffi")
    other: EngineName = "mls-rs" if engine == "native" else "native"
    path = tmp_path / "v.vault"
    MlsClient.create(path, PASSPHRASE, identity=b"v", kdf=FAST, engine=engine).close()
    with pytest.raises(NotAnMlsVault) as info:
        MlsClient.open(path, PASSPHRASE, engine=other)
    assert info.value.engine == engine and engine in str(info.value)
    with MlsClient.open(path, PASSPHRASE) as client:
        assert client.engine_name == engine


# ---------------------------------------------------------------------- the barrier


def test_every_bytes_returning_call_leaves_nothing_pending(clients: Clients) -> None:
    """When a call that returns bytes to send returns, its state is already in the vault.

    Every public method whose result holds bytes is called (on mls-rs the ones it cannot
    do are called too and must refuse with Unsupported, also leaving nothing pending).
    """
    alice, bob, carol = trio(clients)
    dave = clients.make("dave")
    everyone: tuple[MlsClient, ...] = (alice, bob, carol, dave)
    called: set[str] = set()

    def call(client: MlsClient, name: str, *args: Any, **kwargs: Any) -> Any:
        called.add(name)
        try:
            result = getattr(client, name)(*args, **kwargs)
        except Unsupported:
            assert clients.engine == "mls-rs", name
            result = None
        assert [c.pending_events for c in everyone] == [0] * len(everyone), name
        return result

    call(alice, "generate_key_package")
    call(alice, "signature_key")
    call(alice, "signature_key", 2)  # a new suite's key is made and stored first
    bob.process(GID, call(alice, "encrypt", GID, b"1"))
    with_aad = call(alice, "encrypt", GID, b"aad", aad=b"x")
    call(bob, "process", GID, with_aad or alice.encrypt(GID, b"no aad"))
    bob.process_many([(GID, call(alice, "encrypt_many", [(GID, b"2")])[0])])
    call(bob, "process_many", [(GID, alice.encrypt(GID, b"3"))])
    proposal = call(alice, "propose_add", GID, call(dave, "generate_key_package"))
    for member in (bob, carol):
        member.process(GID, proposal)
    commit, welcome = call(bob, "commit", GID)
    for member in (alice, carol):
        member.process(GID, commit)
    call(dave, "join", welcome)
    commit = call(alice, "update_keys", GID)
    for member in (bob, carol, dave):
        member.process(GID, commit)
    call(alice, "export_secret", GID, b"x", b"", 8)
    for name in ("group_ids", "members", "epoch_authenticator"):  # reads: nothing to flush
        call(alice, name, *(() if name == "group_ids" else (GID,)))
    call(alice, "store_external_psk", b"p", b"secret")
    for name, args in (
        ("propose_update", ()),
        ("propose_external_psk", (b"p",)),
        ("propose_group_context_extensions", ([],)),
        ("propose_remove", (b"dave",)),
        ("leave", ()),
    ):
        call(alice, name, GID, *args)
    call(alice, "ratchet_tree", GID)
    call(alice, "pending_commit", GID)
    call(alice, "propose_resumption_psk", GID, 2)
    info = call(bob, "group_info", GID)
    erin = clients.make("erin")
    everyone = (*everyone, erin)
    if info is not None:
        call(erin, "join_by_external_commit", info)
    else:
        call(erin, "join_by_external_commit", b"\x00\x01\x00\x04")
    call(alice, "create_group", b"second")
    call(alice, "add_members", b"second", [carol.generate_key_package()])
    call(alice, "remove_members", b"second", [b"carol"])
    returns_bytes = {
        name
        for name, fn in inspect.getmembers(MlsClient, inspect.isfunction)
        if not name.startswith("_") and "bytes" in str(inspect.signature(fn).return_annotation)
    }
    assert returns_bytes - called == set()


# ---------------------------------------------------------------------- vault kinds


@pytest.mark.parametrize("kind", ["raw-key", "sqlcipher", "raw-key+sqlcipher"])
def test_client_on_raw_key_and_sqlcipher_vaults_across_restarts(
    tmp_path: Path, engine: EngineName, kind: str
) -> None:
    """A client keyed by a raw key, or on a SQLCipher file, keeps its groups across restarts."""
    if "sqlcipher" in kind:
        pytest.importorskip("sqlcipher3")
    key = os.urandom(32)
    sqlcipher = "sqlcipher" in kind
    alice_path, bob_path = tmp_path / "alice.vault", tmp_path / "bob.vault"

    def create(path: Path, name: bytes) -> MlsClient:
        if kind.startswith("raw-key"):
            return MlsClient.create_with_key(
                path, key, identity=name, engine=engine, sqlcipher=sqlcipher
            )
        return MlsClient.create(
            path, PASSPHRASE, identity=name, kdf=FAST, engine=engine, sqlcipher=True
        )

    def reopen(path: Path) -> MlsClient:
        if kind.startswith("raw-key"):
            return MlsClient.open_with_key(path, key)
        return MlsClient.open(path, PASSPHRASE)

    with create(alice_path, b"alice") as alice, create(bob_path, b"bob") as bob:
        alice.create_group(GID)
        _, welcome = alice.add_members(GID, [bob.generate_key_package()])
        bob.join(welcome)
        first = alice.encrypt(GID, b"before")
    for _ in range(2):
        with reopen(alice_path) as alice, reopen(bob_path) as bob:
            assert alice.vault.sqlcipher == sqlcipher
            if first:
                assert bob.process(GID, first).data == b"before"
                first = b""
            bob.process(GID, alice.update_keys(GID))
            assert bob.process(GID, alice.encrypt(GID, b"after")).data == b"after"
    if sqlcipher:
        assert b"before" not in alice_path.read_bytes()
        assert Vault.open(alice_path).sqlcipher


# ---------------------------------------------------------------------- async


def test_async_client_has_every_method_precisely_typed() -> None:
    """AsyncMlsClient mirrors every public MlsClient method and property, same parameters."""
    for name, prop in inspect.getmembers(MlsClient, lambda m: isinstance(m, property)):
        assert isinstance(getattr(AsyncMlsClient, name, None), property), name
        assert prop.fget is not None
        assert (
            inspect.signature(prop.fget).return_annotation
            == inspect.signature(getattr(AsyncMlsClient, name).fget).return_annotation
        )
    for name, method in inspect.getmembers(MlsClient, inspect.isfunction):
        if name.startswith("_"):
            continue
        twin = getattr(AsyncMlsClient, name, None)
        assert twin is not None, f"AsyncMlsClient lacks {name}"
        assert inspect.iscoroutinefunction(twin) or isinstance(
            inspect.getattr_static(AsyncMlsClient, name), classmethod
        ), name
        sync_params = list(inspect.signature(method).parameters.values())
        async_params = list(inspect.signature(twin).parameters.values())
        assert [(p.name, p.kind, p.default) for p in sync_params] == [
            (p.name, p.kind, p.default) for p in async_params
        ], name


def test_async_set_credential_refuses_bare_bytes_like_the_sync_call(tmp_path: Path) -> None:
    """One DER certificate instead of a chain is the same clear TypeError in both clients."""

    async def attempt() -> None:
        client = await AsyncMlsClient.create(
            tmp_path / "a.vault", PASSPHRASE, identity=b"a", kdf=FAST
        )
        async with client:
            await client.set_credential(b"0\x82 not a chain")  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="sequence of DER certificates"):
        asyncio.run(attempt())


def test_async_client_round_trip(tmp_path: Path, engine: EngineName) -> None:
    """The async twin runs a conversation and inspection on either engine."""

    async def conversation() -> tuple[bytes | None, int, list[bytes]]:
        alice = await AsyncMlsClient.create(
            tmp_path / "a.vault", PASSPHRASE, identity=b"a", kdf=FAST, engine=engine
        )
        bob = await AsyncMlsClient.create(
            tmp_path / "b.vault", PASSPHRASE, identity=b"b", kdf=FAST, engine=engine
        )
        async with alice, bob:
            await alice.create_group(GID)
            _, welcome = await alice.add_members(GID, [await bob.generate_key_package()])
            await bob.join(welcome)
            got = await bob.process(GID, await alice.encrypt(GID, b"async"))
            secret = await alice.export_secret(GID, b"x", b"", 8)
            assert secret == await bob.export_secret(GID, b"x", b"", 8)
            return got.data, await bob.epoch(GID), await bob.group_ids()

    assert asyncio.run(conversation()) == (b"async", 1, [GID])


_BOUNDED_CHILD = r"""
import os, resource, sys, tempfile
from pathlib import Path
from keystore import profiles
from mls import InvalidMessage, MlsClient

engine, limit_mib = sys.argv[1], int(sys.argv[2])
folder = Path(tempfile.mkdtemp())
clients = [
    MlsClient.create(folder / n, "p", identity=n.encode(), kdf=profiles.INSECURE_FOR_TESTS_ONLY,
                     engine=engine, max_message_size=limit_mib << 20)
    for n in ("alice", "bob")
]
alice, bob = clients
alice.create_group(b"g")
bob.join(alice.add_members(b"g", [bob.generate_key_package()])[1])
real = alice.encrypt(b"g", b"x")
# A PrivateMessage header of the group's epoch, then 48 MiB of "ciphertext".
huge = real[:4] + bytes([1]) + b"g" + real[6:15] + bytes([0]) + os.urandom(48 << 20)
pages = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (pages + (24 << 20), pages + (24 << 20)))
try:
    bob.process(b"g", huge)
except InvalidMessage as exc:
    print("refused", "max_message_size" in str(exc))
except MemoryError:
    print("memory")
"""


@pytest.mark.parametrize("limit_mib", [1, 64])
def test_oversized_input_costs_no_memory(engine: EngineName, limit_mib: int) -> None:
    """Under an address-space limit of 24 MiB above its size, a client refuses a 48 MiB
    message by its size alone; with the bound raised, the same message exhausts memory."""
    done = subprocess.run(
        [sys.executable, "-c", _BOUNDED_CHILD, engine, str(limit_mib)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    out = done.stdout.strip().splitlines()[-1:] if done.stdout else []
    if limit_mib == 1:
        assert out == ["refused True"], done.stderr[-2000:]
    else:
        assert out == ["memory"], done.stderr[-2000:]  # the control: parsing it does cost


def test_async_durable_part_never_blocks_the_loop(
    tmp_path: Path, engine: EngineName, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While an awaited call waits for a slow disk, other tasks of the loop keep running."""
    real_apply = Vault.apply

    def slow_apply(self: Vault, changes: object) -> int:
        time.sleep(0.3)
        return real_apply(self, changes)  # type: ignore[arg-type]

    async def scenario() -> int:
        alice = await AsyncMlsClient.create(
            tmp_path / "a.vault", PASSPHRASE, identity=b"a", kdf=FAST, engine=engine
        )
        async with alice:
            await alice.create_group(GID)
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            task = asyncio.create_task(ticker())
            monkeypatch.setattr(Vault, "apply", slow_apply)
            await alice.encrypt(GID, b"slow disk")
            monkeypatch.setattr(Vault, "apply", real_apply)
            task.cancel()
            return ticks

    assert asyncio.run(scenario()) >= 10
