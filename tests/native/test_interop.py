"""Interop in one group between the native engine and mls-rs (suite 0x0001), through vaults.

Members are made with the public API, ``MlsClient.create(..., engine="mls-rs" | "native")``
and reopened with ``MlsClient.open(..., engine=...)``, so every message crosses the wire
format and every state change goes through a vault; members are restarted from their vaults
mid-conversation.
Skipped when the ``mls_rs_uniffi`` binding is not installed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mls_rs_uniffi")

from keystore import profiles
from mls.client import MlsClient, NativeClient, ReceivedKind
from mls.mlsrs import load_binding
from mls.native import GroupConfig, NativeEngine
from mls.native.framing import WireFormat
from mls.storage import GranularStorage
from tests.native.engine_helpers import FULL, SEEDS, STEPS

PASSPHRASE = "interop passphrase"
FAST = profiles.INSECURE_FOR_TESTS_ONLY
GID = b"interop-room"

Client = MlsClient | NativeClient


class Clients:
    """Creates and restarts clients of either engine, each in its own vault."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.open: list[Client] = []

    def make(self, name: str, engine: str) -> Client:
        """A new client named ``name`` on ``engine`` ("native" or "mls-rs")."""
        path = self.folder / f"{name}.vault"
        client: Client
        if engine == "native":
            client = MlsClient.create(
                path, PASSPHRASE, identity=name.encode(), kdf=FAST, engine="native"
            )
        else:
            client = MlsClient.create(
                path, PASSPHRASE, identity=name.encode(), kdf=FAST, engine="mls-rs"
            )
        self.open.append(client)
        return client

    def restart(self, client: Client) -> Client:
        """Close a client and open its vault again, like a new process would."""
        client.close()
        path = self.folder / f"{client.identity.decode()}.vault"
        again: Client
        if isinstance(client, NativeClient):
            again = MlsClient.open(path, PASSPHRASE, engine="native")
        else:
            again = MlsClient.open(path, PASSPHRASE)
        self.open.append(again)
        return again


@pytest.fixture
def clients(tmp_path: Path) -> Iterator[Clients]:
    """A client factory; every client is closed after the test."""
    c = Clients(tmp_path)
    yield c
    for client in c.open:
        client.close()


def exchange(sender: Client, receivers: list[Client], text: bytes) -> None:
    """Send one application message and check every receiver reads it from ``sender``."""
    message = sender.encrypt(GID, text)
    for r in receivers:
        got = r.process(GID, message)
        assert (got.kind, got.sender, got.data) == (ReceivedKind.APPLICATION, sender.identity, text)


def same_secret(members: list[Client]) -> bool:
    """Every member exports the same secret: they share the epoch."""
    return len({m.export_secret(GID, b"interop", b"", 32) for m in members}) == 1


def test_mls_rs_creates_the_group_and_adds_a_native_member(clients: Clients) -> None:
    """mls-rs invites a native client; messages flow both ways."""
    rs, native = clients.make("rs", "mls-rs"), clients.make("native", "native")
    rs.create_group(GID)
    _, welcome = rs.add_members(GID, [native.generate_key_package()])
    assert native.join(welcome) == GID
    exchange(rs, [native], b"hello native")
    exchange(native, [rs], b"hello mls-rs")
    assert same_secret([rs, native])


def test_native_creates_the_group_and_adds_an_mls_rs_member(clients: Clients) -> None:
    """A native client invites mls-rs; messages flow both ways."""
    native, rs = clients.make("native", "native"), clients.make("rs", "mls-rs")
    native.create_group(GID)
    _, welcome = native.add_members(GID, [rs.generate_key_package()])
    assert rs.join(welcome) == GID
    exchange(native, [rs], b"hello mls-rs")
    exchange(rs, [native], b"hello native")
    assert same_secret([rs, native])


def test_update_path_commits_from_both_sides(clients: Clients) -> None:
    """Key-update commits (with an UpdatePath) from each engine are accepted by the other."""
    native, rs = clients.make("native", "native"), clients.make("rs", "mls-rs")
    native.create_group(GID)
    _, welcome = native.add_members(GID, [rs.generate_key_package()])
    rs.join(welcome)
    for committer, receiver in ((rs, native), (native, rs), (rs, native)):
        got = receiver.process(GID, committer.update_keys(GID))
        assert (got.kind, got.sender) == (ReceivedKind.COMMIT, committer.identity)
        assert same_secret([rs, native])
        exchange(receiver, [committer], b"after update")


def test_adds_and_removes_issued_by_each_engine(clients: Clients) -> None:
    """Each engine adds a member of the other kind and removes one; all stay in step."""
    native, rs = clients.make("native", "native"), clients.make("rs", "mls-rs")
    rs2, native2 = clients.make("rs2", "mls-rs"), clients.make("native2", "native")
    native.create_group(GID)
    _, welcome = native.add_members(GID, [rs.generate_key_package()])
    rs.join(welcome)
    commit, welcome = rs.add_members(GID, [native2.generate_key_package()])
    native.process(GID, commit)
    native2.join(welcome)
    commit, welcome = native2.add_members(GID, [rs2.generate_key_package()])
    native.process(GID, commit)
    rs.process(GID, commit)
    rs2.join(welcome)
    everyone = [native, rs, native2, rs2]
    assert same_secret(everyone)
    commit = rs.remove_members(GID, [b"native2"])
    assert native2.process(GID, commit).removed
    for m in (native, rs2):
        m.process(GID, commit)
    commit = native.remove_members(GID, [b"rs2"])
    assert rs2.process(GID, commit).removed
    rs.process(GID, commit)
    assert native.members(GID) == rs.members(GID) == [b"native", b"rs"]
    assert same_secret([native, rs])
    exchange(rs, [native], b"just us")


def test_leave_proposals_are_committed_across_engines(clients: Clients) -> None:
    """A native member's leave is committed by mls-rs, and an mls-rs leave by a native member."""
    native, rs, native2, rs2 = (
        clients.make("native", "native"),
        clients.make("rs", "mls-rs"),
        clients.make("native2", "native"),
        clients.make("rs2", "mls-rs"),
    )
    native.create_group(GID)
    _, welcome = native.add_members(GID, [k.generate_key_package() for k in (rs, native2, rs2)])
    for m in (rs, native2, rs2):
        m.join(welcome)
    proposal = native2.leave(GID)
    for m in (native, rs, rs2):
        assert m.process(GID, proposal).kind == ReceivedKind.PROPOSAL
    commit = rs.update_keys(GID)
    assert native2.process(GID, commit).removed
    for m in (native, rs2):
        m.process(GID, commit)
    proposal = rs2.leave(GID)
    for m in (native, rs):
        m.process(GID, proposal)
    commit = native.update_keys(GID)
    assert rs2.process(GID, commit).removed
    rs.process(GID, commit)
    assert same_secret([native, rs])


def test_mixed_three_member_group_survives_restarts(clients: Clients) -> None:
    """Two native members and one mls-rs member talk across restarts from their vaults."""
    alice, bob = clients.make("alice", "native"), clients.make("bob", "mls-rs")
    carol = clients.make("carol", "native")
    carol_kp = carol.generate_key_package()
    carol = clients.restart(carol)  # published before the restart, still joinable
    alice.create_group(GID)
    _, welcome = alice.add_members(GID, [bob.generate_key_package()])
    bob.join(welcome)
    commit, welcome = bob.add_members(GID, [carol_kp])
    alice.process(GID, commit)
    carol.join(welcome)
    everyone = [alice, bob, carol]
    for sender in everyone:
        exchange(sender, [m for m in everyone if m is not sender], b"round one")
    alice, bob = clients.restart(alice), clients.restart(bob)
    everyone = [alice, bob, carol]
    commit = carol.update_keys(GID)
    alice.process(GID, commit)
    bob.process(GID, commit)
    carol = clients.restart(carol)
    everyone = [alice, bob, carol]
    assert same_secret(everyone)
    for sender in everyone:
        exchange(sender, [m for m in everyone if m is not sender], b"round two")
    assert carol.lost_key_packages() == []


def test_private_message_handshakes_and_update_proposals_reach_mls_rs() -> None:
    """Engine level: native commits and Update proposals as PrivateMessages work with mls-rs."""
    binding = load_binding()
    keys = binding.generate_signature_keypair(binding.CipherSuite.CURVE25519_AES128)
    config = binding.ClientConfig(
        group_state_storage=binding.client_config_default().group_state_storage,
        use_ratchet_tree_extension=True,
    )
    rs_client = binding.Client(b"rs", keys, config)
    native = NativeEngine.create(GranularStorage(), b"native")
    native.create_group(GID, config=GroupConfig(handshake=WireFormat.PRIVATE_MESSAGE))
    kp = bytes(rs_client.generate_key_package_message().to_bytes())
    _, welcome = native.commit(GID, add=[kp])
    assert welcome is not None
    rs = rs_client.join_group(None, binding.Message.from_bytes(welcome)).group
    commit, _ = native.commit(GID, force_path=True)
    assert rs.process_incoming_message(binding.Message.from_bytes(commit)).is_commit()
    proposal = native.propose_update(GID)
    assert rs.process_incoming_message(binding.Message.from_bytes(proposal)).is_received_proposal()
    output = rs.commit()
    rs.process_incoming_message(output.commit_message)
    native.process(GID, bytes(output.commit_message.to_bytes()))
    assert bytes(rs.export_secret(b"l", b"", 32)) == native.export_secret(GID, b"l", b"", 32)


class _RsMember:
    """An in-memory mls-rs member driven through the binding (engine level)."""

    def __init__(self, name: bytes) -> None:
        self.b = load_binding()
        keys = self.b.generate_signature_keypair(self.b.CipherSuite.CURVE25519_AES128)
        config = self.b.ClientConfig(
            group_state_storage=self.b.client_config_default().group_state_storage,
            use_ratchet_tree_extension=True,
        )
        self.client = self.b.Client(name, keys, config)
        self.group: Any = None

    def key_package(self) -> bytes:
        return bytes(self.client.generate_key_package_message().to_bytes())

    def join(self, welcome: bytes) -> None:
        self.group = self.client.join_group(None, self.b.Message.from_bytes(welcome)).group

    def encrypt(self, text: bytes) -> bytes:
        return bytes(self.group.encrypt_application_message(text).to_bytes())

    def process(self, message: bytes) -> bytes | None:
        got = self.group.process_incoming_message(self.b.Message.from_bytes(message))
        return bytes(got.data) if got.is_application_message() else None

    def _own(self, output: Any) -> bytes:
        commit = output.commit_message
        self.group.process_incoming_message(commit)
        return bytes(commit.to_bytes())

    def add(self, key_package: bytes) -> tuple[bytes, bytes]:
        output = self.group.add_members([self.b.Message.from_bytes(key_package)])
        return self._own(output), bytes(output.welcome_message.to_bytes())

    def update(self) -> bytes:
        return self._own(self.group.commit())

    def secret(self) -> bytes:
        return bytes(self.group.export_secret(b"interop", b"", 32))


class _NativeMember:
    """A native member with the same small interface as :class:`_RsMember`."""

    def __init__(self, name: bytes) -> None:
        self.engine = NativeEngine.create(GranularStorage(), name)

    def key_package(self) -> bytes:
        return self.engine.generate_key_package()

    def join(self, welcome: bytes) -> None:
        self.engine.join(welcome)

    def encrypt(self, text: bytes) -> bytes:
        return self.engine.encrypt(GID, text)

    def process(self, message: bytes) -> bytes | None:
        return self.engine.process(GID, message).data

    def add(self, key_package: bytes) -> tuple[bytes, bytes]:
        commit, welcome = self.engine.commit(GID, add=[key_package])
        assert welcome is not None
        return commit, welcome

    def update(self) -> bytes:
        return self.engine.commit(GID, force_path=True)[0]

    def secret(self) -> bytes:
        return self.engine.export_secret(GID, b"interop", b"", 32)


@pytest.mark.parametrize("seed", SEEDS[:2] if not FULL else SEEDS)
def test_random_mixed_group_stays_in_step(seed: int) -> None:
    """Random adds, path commits and messages by either engine keep one shared epoch."""
    rnd = random.Random(seed)
    pool: list[_RsMember | _NativeMember] = [
        (_NativeMember if i % 2 else _RsMember)(b"p%d" % i) for i in range(6)
    ]
    creator = _NativeMember(b"creator")
    creator.engine.create_group(GID)
    members: list[_RsMember | _NativeMember] = [creator]
    for step in range(STEPS if FULL else 30):
        op = rnd.choice(["message", "add", "update"])
        actor = rnd.choice(members)
        others = [m for m in members if m is not actor]
        if op == "message":
            text = b"step %d" % step
            message = actor.encrypt(text)
            assert all(o.process(message) == text for o in others)
        elif op == "add" and pool:
            new = pool.pop(rnd.randrange(len(pool)))
            commit, welcome = actor.add(new.key_package())
            for o in others:
                o.process(commit)
            new.join(welcome)
            members.append(new)
        elif op == "update":
            commit = actor.update()
            for o in others:
                o.process(commit)
        assert len({m.secret() for m in members}) == 1, (step, op)


def test_native_path_commit_welcomes_an_mls_rs_member_with_a_path_secret() -> None:
    """An mls-rs joiner accepts the path secret of a native commit that adds it with a path."""
    creator = _NativeMember(b"creator")
    creator.engine.create_group(GID)
    natives = [_NativeMember(b"n%d" % i) for i in range(3)]
    _, welcome = creator.engine.commit(GID, add=[n.key_package() for n in natives])
    assert welcome is not None
    for n in natives:
        n.join(welcome)
    rs = _RsMember(b"rs")
    commit, welcome = creator.engine.commit(GID, add=[rs.key_package()], force_path=True)
    assert welcome is not None
    for n in natives:
        n.process(commit)
    rs.join(welcome)
    update = rs.update()
    for m in (creator, *natives):
        m.process(update)
    everyone: list[_RsMember | _NativeMember] = [creator, rs, *natives]
    assert len({m.secret() for m in everyone}) == 1
