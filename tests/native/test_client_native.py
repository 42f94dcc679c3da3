"""MlsClient on the native engine: vault persistence, durability barrier, restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from keystore import Vault, VaultClosed, profiles
from mls.client import AsyncMlsClient, MlsClient, NativeClient, ReceivedKind
from mls.errors import MlsEngineError, NotAnMlsVault, UnknownGroup, UnknownMember
from mls.native.engine import NativeEngine
from mls.storage import GranularStorage
from tests.mls.test_client_engines import PASSPHRASE as ENGINES_PASSPHRASE
from tests.mls.test_client_engines import Clients as EngineClients
from tests.mls.test_client_engines import pair

PASSPHRASE = "native client passphrase"
FAST = profiles.INSECURE_FOR_TESTS_ONLY
GID = b"room"


class Clients(EngineClients):
    """The two-engine test suite's client factory, on the native engine, plus snapshots."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, "native")

    def snapshot(self, client: MlsClient) -> NativeEngine:
        """An engine on what the vault holds right now (read-only, beside the writer)."""
        with Vault.open(self.path(client.identity.decode()), readonly=True) as vault:
            vault.unlock(ENGINES_PASSPHRASE)
            return NativeEngine(GranularStorage.load(vault))


@pytest.fixture
def clients(tmp_path: Path) -> Iterator[Clients]:
    """A client factory; every client is closed after the test."""
    c = Clients(tmp_path)
    yield c
    for client in c.made:
        client.close()


def test_conversation_continues_across_restarts(clients: Clients) -> None:
    """Messages, a key update and a removal work with both members restarted in between."""
    alice, bob = pair(clients)
    carol = clients.make("carol")
    commit, welcome = bob.add_members(GID, [carol.generate_key_package()])
    alice.process(GID, commit)
    carol.join(welcome)
    alice, bob = clients.restart(alice), clients.restart(bob)
    got = bob.process(GID, alice.encrypt(GID, b"hello"))
    assert (got.kind, got.sender, got.data) == (ReceivedKind.APPLICATION, b"alice", b"hello")
    commit = bob.update_keys(GID)
    alice.process(GID, commit)
    carol.process(GID, commit)
    carol = clients.restart(carol)
    commit = carol.remove_members(GID, [b"alice"])
    assert alice.process(GID, commit).removed
    bob.process(GID, commit)
    assert alice.group_ids() == []
    assert bob.members(GID) == carol.members(GID) == [b"bob", b"carol"]
    assert bob.process(GID, carol.encrypt(GID, b"two left")).data == b"two left"


def test_key_packages_survive_restarts_and_none_is_lost(clients: Clients) -> None:
    """A key package published before a restart joins after it; nothing is ever lost."""
    alice, bob = clients.make("alice"), clients.make("bob")
    key_package = bob.generate_key_package()
    bob = clients.restart(bob)
    assert bob.lost_key_packages() == []
    assert bob.discard_lost_key_packages() == 0
    alice.create_group(GID)
    _, welcome = alice.add_members(GID, [key_package])
    assert bob.join(welcome) == GID
    assert alice.process(GID, bob.encrypt(GID, b"joined")).data == b"joined"


def test_encrypt_is_durable_before_it_returns(clients: Clients) -> None:
    """The vault already holds the advanced ratchet when the ciphertext is returned."""
    alice, bob = pair(clients)
    sent = alice.encrypt(GID, b"first")
    crashed = clients.snapshot(alice)  # what a process restarted right now would have
    resent = crashed.encrypt(GID, b"second")
    assert bob.process(GID, sent).data == b"first"
    assert bob.process(GID, resent).data == b"second"  # a new generation, not a reuse


def test_process_is_durable_before_it_returns(clients: Clients) -> None:
    """After processing a commit returns, the vault is already in the new epoch."""
    alice, bob = pair(clients)
    bob.process(GID, alice.update_keys(GID))
    assert clients.snapshot(bob).export_secret(GID, b"l", b"", 16) == alice.export_secret(
        GID, b"l", b"", 16
    )


def test_join_is_durable_before_it_returns(clients: Clients) -> None:
    """A joined group is in the vault when join returns (no restore-before-drain loss)."""
    _, bob = pair(clients)
    assert clients.snapshot(bob).group_ids() == [GID]


def test_errors_are_the_mls_layer_types(clients: Clients) -> None:
    """Unknown groups and members raise the same errors as MlsClient."""
    alice, _ = pair(clients)
    with pytest.raises(UnknownGroup):
        alice.encrypt(b"nope", b"x")
    with pytest.raises(UnknownMember):
        alice.remove_members(GID, [b"mallory"])
    with pytest.raises(MlsEngineError):
        alice.process(GID, b"\x00\x01\x00\x01garbage")


def test_vault_without_a_native_identity_is_refused(tmp_path: Path) -> None:
    """Opening a vault that holds no native identity raises NotAnMlsVault."""
    path = tmp_path / "plain.vault"
    Vault.create(path, PASSPHRASE, kdf=FAST).close()
    with pytest.raises(NotAnMlsVault):
        MlsClient.open(path, PASSPHRASE, engine="native")


def test_closed_client_refuses_calls(clients: Clients) -> None:
    """Calls after close raise instead of touching a closed vault."""
    alice = clients.make("alice")
    alice.close()
    with pytest.raises(VaultClosed):
        alice.group_ids()


def test_processing_a_message_again_returns_the_stored_outcome(clients: Clients) -> None:
    """A message processed twice (e.g. after a crash hid the result) replays its outcome."""
    alice, bob = pair(clients)
    message = alice.encrypt(GID, b"once")
    commit = alice.update_keys(GID)
    first = bob.process_many([(GID, message), (GID, commit)])
    bob = clients.restart(bob)
    again = bob.process_many([(GID, message), (GID, commit)])
    assert [r.replay for r in first] == [False, False]
    assert [r.replay for r in again] == [True, True]
    assert [(r.kind, r.sender, r.data) for r in again] == [
        (r.kind, r.sender, r.data) for r in first
    ]


def test_receipts_are_bounded_by_their_retention(tmp_path: Path) -> None:
    """Only the last ``receipt_retention`` outcomes are kept; older messages are errors."""
    alice = MlsClient.create(tmp_path / "a.vault", PASSPHRASE, identity=b"alice", kdf=FAST)
    bob = MlsClient.create(
        tmp_path / "b.vault", PASSPHRASE, identity=b"bob", kdf=FAST, receipt_retention=2
    )
    with alice, bob:
        alice.create_group(GID)
        _, welcome = alice.add_members(GID, [bob.generate_key_package()])
        bob.join(welcome)
        messages = [alice.encrypt(GID, bytes([i])) for i in range(3)]
        for m in messages:
            bob.process(GID, m)
        assert bob.process(GID, messages[2]).replay
        with pytest.raises(MlsEngineError):
            bob.process(GID, messages[0])


def test_mls_client_runs_the_native_engine(tmp_path: Path) -> None:
    """MlsClient.create/open(engine="native") run the native engine on the same vault."""
    path = tmp_path / "factory.vault"
    client = MlsClient.create(path, PASSPHRASE, identity=b"f", kdf=FAST, engine="native")
    assert client.engine_name == "native"
    key_package = client.generate_key_package()
    client.close()
    with MlsClient.open(path, PASSPHRASE, engine="native") as again:
        assert again.engine_name == "native"
        assert again.lost_key_packages() == []
        owner = MlsClient.create(tmp_path / "o.vault", PASSPHRASE, identity=b"o", kdf=FAST)
        with owner:
            owner.create_group(GID)
            _, welcome = owner.add_members(GID, [key_package])
            assert again.join(welcome) == GID


def test_mls_client_factory_rejects_an_unknown_engine(tmp_path: Path) -> None:
    """An unknown engine name is a ValueError and creates no file."""
    path = tmp_path / "bogus.vault"
    with pytest.raises(ValueError):
        MlsClient.create(path, PASSPHRASE, identity=b"x", kdf=FAST, engine="bogus")  # type: ignore[arg-type]
    assert not path.exists()


def test_opening_with_the_other_engine_is_refused(tmp_path: Path) -> None:
    """A vault opened with the engine it was not created with raises NotAnMlsVault."""
    pytest.importorskip("mls_rs_uniffi")
    native_path, rs_path = tmp_path / "native.vault", tmp_path / "rs.vault"
    MlsClient.create(native_path, PASSPHRASE, identity=b"n", kdf=FAST, engine="native").close()
    MlsClient.create(rs_path, PASSPHRASE, identity=b"r", kdf=FAST, engine="mls-rs").close()
    with pytest.raises(NotAnMlsVault):
        MlsClient.open(native_path, PASSPHRASE, engine="mls-rs")
    with pytest.raises(NotAnMlsVault):
        MlsClient.open(rs_path, PASSPHRASE, engine="native")
    with MlsClient.open(native_path, PASSPHRASE, engine="native") as client:
        assert client.identity == b"n"


def test_open_runs_the_engine_the_vault_was_created_with(tmp_path: Path) -> None:
    """Without engine=, open() recognises each vault's engine by its identity row."""
    pytest.importorskip("mls_rs_uniffi")
    native_path, rs_path = tmp_path / "native.vault", tmp_path / "rs.vault"
    MlsClient.create(native_path, PASSPHRASE, identity=b"n", kdf=FAST).close()  # the default
    MlsClient.create(rs_path, PASSPHRASE, identity=b"r", kdf=FAST, engine="mls-rs").close()
    with MlsClient.open(native_path, PASSPHRASE) as native:
        assert native.engine_name == "native" and native.identity == b"n"
    with MlsClient.open(rs_path, PASSPHRASE) as rs:
        assert rs.engine_name == "mls-rs" and rs.identity == b"r"


def test_open_refuses_a_vault_without_identity(tmp_path: Path) -> None:
    """A plain vault with no client identity is NotAnMlsVault, and stays openable."""
    path = tmp_path / "plain.vault"
    Vault.create(path, PASSPHRASE, kdf=FAST).close()
    with pytest.raises(NotAnMlsVault):
        MlsClient.open(path, PASSPHRASE)
    Vault.open(path).close()


def test_async_client_runs_the_native_engine(tmp_path: Path) -> None:
    """AsyncMlsClient.create(..., engine="native") drives native clients off the event loop."""

    async def conversation() -> bytes | None:
        alice = await AsyncMlsClient.create(
            tmp_path / "a.vault", PASSPHRASE, identity=b"a", kdf=FAST, engine="native"
        )
        bob = await AsyncMlsClient.create(
            tmp_path / "b.vault", PASSPHRASE, identity=b"b", kdf=FAST, engine="native"
        )
        async with alice, bob:
            await alice.create_group(GID)
            _, welcome = await alice.add_members(GID, [await bob.generate_key_package()])
            await bob.join(welcome)
            return (await bob.process(GID, await alice.encrypt(GID, b"async"))).data

    assert asyncio.run(conversation()) == b"async"


def test_native_client_is_a_deprecated_alias(tmp_path: Path) -> None:
    """NativeClient still creates and opens native clients, with a DeprecationWarning."""
    path = tmp_path / "old.vault"
    with pytest.warns(DeprecationWarning):
        client = NativeClient.create(path, PASSPHRASE, identity=b"old", kdf=FAST)
    assert isinstance(client, MlsClient) and client.engine_name == "native"
    client.close()
    with pytest.warns(DeprecationWarning), NativeClient.open(path, PASSPHRASE) as again:
        assert again.identity == b"old"
