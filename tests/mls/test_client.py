"""MlsClient in one process: conversations, membership, key-package loss, errors."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keystore import VaultBusy, VaultClosed, VaultIOError, WrongPassphrase, profiles
from mls.client import AsyncMlsClient, MlsClient, Received, ReceivedKind
from mls.errors import (
    InvalidMessage,
    KeyPackageLost,
    MlsEngineError,
    MlsRsUnavailable,
    NotAnMlsVault,
    UnknownGroup,
    UnknownMember,
)
from mls.mlsrs import key_package_ref
from mls.storage import GranularStorage

PASSPHRASE = "test passphrase"
FAST = profiles.INSECURE_FOR_TESTS_ONLY

Factory = Callable[[str], MlsClient]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Factory]:
    """Create clients named by identity, each in its own vault; all closed afterwards."""
    made: list[MlsClient] = []

    def factory(name: str) -> MlsClient:
        client = MlsClient.create(
            tmp_path / f"{name}.vault",
            PASSPHRASE,
            identity=name.encode(),
            kdf=FAST,
            engine="mls-rs",
        )
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()


def reopen(tmp_path: Path, client: MlsClient) -> MlsClient:
    """Close ``client`` and open its vault again (same process)."""
    client.close()
    return MlsClient.open(tmp_path / f"{client.identity.decode()}.vault", PASSPHRASE)


def pair(make: Factory) -> tuple[MlsClient, MlsClient, bytes]:
    alice, bob = make("alice"), make("bob")
    gid = alice.create_group(b"room")
    _, welcome = alice.add_members(gid, [bob.generate_key_package()])
    assert bob.join(welcome) == gid
    return alice, bob, gid


def test_two_clients_exchange_messages_both_ways(make: Factory) -> None:
    """Alice adds Bob; each decrypts the other's messages and sees the sender."""
    alice, bob, gid = pair(make)
    assert bob.process(gid, alice.encrypt(gid, b"hi bob")) == Received(
        ReceivedKind.APPLICATION, b"alice", b"hi bob"
    )
    got = alice.process(gid, bob.encrypt(gid, b"hi alice"))
    assert (got.data, got.sender) == (b"hi alice", b"bob")


def test_three_clients_key_update_add_and_remove(make: Factory) -> None:
    """A third member joins, a key update is committed, then the third member is removed."""
    alice, bob, gid = pair(make)
    carol = make("carol")
    commit, welcome = alice.add_members(gid, [carol.generate_key_package()])
    assert bob.process(gid, commit).kind is ReceivedKind.COMMIT
    carol.join(welcome)
    update = carol.update_keys(gid)
    assert alice.process(gid, update).sender == b"carol"
    bob.process(gid, update)
    assert bob.process(gid, carol.encrypt(gid, b"from carol")).data == b"from carol"
    removal = bob.remove_members(gid, [b"carol"])
    alice.process(gid, removal)
    assert carol.process(gid, removal).removed
    assert carol.group_ids() == []
    assert alice.members(gid) == bob.members(gid) == [b"alice", b"bob"]
    assert alice.process(gid, bob.encrypt(gid, b"just us")).data == b"just us"


def test_members_agree_on_exported_secret(make: Factory) -> None:
    """After a commit both members are in the same epoch (same exporter secret)."""
    alice, bob, gid = pair(make)
    bob.process(gid, alice.update_keys(gid))
    assert alice.export_secret(gid, b"l", b"c", 32) == bob.export_secret(gid, b"l", b"c", 32)


def test_reopen_in_process_keeps_groups_and_conversation(tmp_path: Path, make: Factory) -> None:
    """Closing and reopening both vaults keeps the group and the ratchets."""
    alice, bob, gid = pair(make)
    bob.process(gid, alice.encrypt(gid, b"one"))
    alice, bob = reopen(tmp_path, alice), reopen(tmp_path, bob)
    try:
        assert alice.group_ids() == bob.group_ids() == [gid]
        assert bob.process(gid, alice.encrypt(gid, b"two")).data == b"two"
        assert alice.process(gid, bob.encrypt(gid, b"three")).data == b"three"
    finally:
        alice.close()
        bob.close()


def test_leave_is_committed_by_another_member(make: Factory) -> None:
    """Bob proposes to leave; Alice commits it; Bob learns he was removed."""
    alice, bob, gid = pair(make)
    proposal = bob.leave(gid)
    assert alice.process(gid, proposal).kind is ReceivedKind.PROPOSAL
    commit = alice.update_keys(gid)
    assert bob.process(gid, commit).removed
    assert alice.members(gid) == [b"alice"]


def test_second_open_of_an_open_vault_is_busy(tmp_path: Path, make: Factory) -> None:
    """A vault in use cannot be opened a second time: no silent double use."""
    make("alice")
    with pytest.raises(VaultBusy):
        MlsClient.open(tmp_path / "alice.vault", PASSPHRASE)


def test_join_then_restore_attempt_never_loses_the_group(tmp_path: Path, make: Factory) -> None:
    """The reference race: a restore attempted right after join is refused, and the
    state a later open restores already holds the group."""
    alice, bob, gid = pair(make)
    with pytest.raises(VaultBusy):
        MlsClient.open(tmp_path / "bob.vault", PASSPHRASE)
    bob = reopen(tmp_path, bob)
    try:
        assert bob.group_ids() == [gid]
        assert bob.process(gid, alice.encrypt(gid, b"still here")).data == b"still here"
    finally:
        bob.close()


def test_wrong_passphrase_is_refused_and_vault_stays_usable(tmp_path: Path, make: Factory) -> None:
    """A wrong passphrase raises WrongPassphrase and releases the vault."""
    make("alice").close()
    with pytest.raises(WrongPassphrase):
        MlsClient.open(tmp_path / "alice.vault", "not it")
    MlsClient.open(tmp_path / "alice.vault", PASSPHRASE).close()


def test_plain_vault_without_identity_is_not_an_mls_vault(tmp_path: Path) -> None:
    """Opening a vault that holds no MLS identity raises NotAnMlsVault."""
    from keystore import Vault

    Vault.create(tmp_path / "plain.vault", PASSPHRASE, kdf=FAST).close()
    with pytest.raises(NotAnMlsVault):
        MlsClient.open(tmp_path / "plain.vault", PASSPHRASE)


def test_create_refuses_an_existing_file(tmp_path: Path, make: Factory) -> None:
    """create() never overwrites an existing vault."""
    make("alice").close()
    size = (tmp_path / "alice.vault").stat().st_size
    with pytest.raises(FileExistsError):
        MlsClient.create(
            tmp_path / "alice.vault", PASSPHRASE, identity=b"x", kdf=FAST, engine="mls-rs"
        )
    assert (tmp_path / "alice.vault").stat().st_size == size


def test_key_packages_published_before_restart_are_reported_lost(
    tmp_path: Path, make: Factory
) -> None:
    """Key packages of an earlier process are listed by lost_key_packages()."""
    bob = make("bob")
    kps = [bob.generate_key_package() for _ in range(2)]
    assert bob.lost_key_packages() == []
    bob = reopen(tmp_path, bob)
    try:
        assert sorted(k.ref for k in bob.lost_key_packages()) == sorted(map(key_package_ref, kps))
        fresh = bob.generate_key_package()
        assert key_package_ref(fresh) not in {k.ref for k in bob.lost_key_packages()}
        assert bob.discard_lost_key_packages() == 2
        assert bob.lost_key_packages() == []
    finally:
        bob.close()


def test_welcome_for_lost_key_package_raises_and_adder_cleans_up(
    tmp_path: Path, make: Factory
) -> None:
    """join() with a Welcome for a lost key package raises KeyPackageLost; the adder
    removes the dead leaf and re-adds a fresh key package."""
    alice, bob = make("alice"), make("bob")
    stale = bob.generate_key_package()
    bob = reopen(tmp_path, bob)
    try:
        gid = alice.create_group()
        _, welcome = alice.add_members(gid, [stale])
        with pytest.raises(KeyPackageLost) as info:
            bob.join(welcome)
        assert info.value.ref == key_package_ref(stale)
        assert bob.group_ids() == []
        alice.remove_members(gid, [b"bob"])
        assert alice.members(gid) == [b"alice"]
        _, welcome = alice.add_members(gid, [bob.generate_key_package()])
        assert bob.join(welcome) == gid
        assert bob.process(gid, alice.encrypt(gid, b"welcome back")).data == b"welcome back"
    finally:
        bob.close()


def test_welcome_for_someone_else_is_an_engine_error(make: Factory) -> None:
    """A Welcome that addresses none of our key packages raises MlsEngineError."""
    alice, bob, carol = make("alice"), make("bob"), make("carol")
    gid = alice.create_group()
    _, welcome = alice.add_members(gid, [bob.generate_key_package()])
    with pytest.raises(MlsEngineError):
        carol.join(welcome)


def tampered(message: bytes) -> bytes:
    """The message with one bit flipped near its end (inside the AEAD ciphertext)."""
    return message[:-8] + bytes([message[-8] ^ 1]) + message[-7:]


def test_engine_errors_are_wrapped(make: Factory) -> None:
    """A tampered message fails with MlsEngineError, not a binding exception."""
    alice, bob, gid = pair(make)
    with pytest.raises(MlsEngineError):
        bob.process(gid, tampered(alice.encrypt(gid, b"once")))


def test_processing_a_message_again_returns_the_stored_outcome(make: Factory) -> None:
    """A message processed twice yields the same outcome, marked as a replay."""
    alice, bob, gid = pair(make)
    ct = alice.encrypt(gid, b"once")
    first = bob.process(gid, ct)
    again = bob.process(gid, ct)
    assert again == Received(ReceivedKind.APPLICATION, b"alice", b"once", replay=True)
    assert not first.replay


def test_receipts_are_pruned_to_their_retention(tmp_path: Path, make: Factory) -> None:
    """Only the newest receipts are kept; older messages are no longer replayable."""
    alice = make("alice")
    bob = MlsClient.create(
        tmp_path / "b.vault",
        PASSPHRASE,
        identity=b"bob",
        kdf=FAST,
        receipt_retention=2,
        engine="mls-rs",
    )
    try:
        gid = alice.create_group()
        _, welcome = alice.add_members(gid, [bob.generate_key_package()])
        bob.join(welcome)
        cts = [alice.encrypt(gid, bytes([i])) for i in range(3)]
        for ct in cts:
            bob.process(gid, ct)
        assert bob.vault.stats().categories["mlsrs/v1/receipt"].rows == 2
        assert bob.process(gid, cts[2]).replay
        with pytest.raises(MlsEngineError):
            bob.process(gid, cts[0])
    finally:
        bob.close()


def test_failed_batch_leaves_messages_processable(make: Factory) -> None:
    """When one message of a batch fails, none counts: each can be processed again."""
    alice, bob, gid = pair(make)
    first, second = alice.encrypt(gid, b"first"), alice.encrypt(gid, b"second")
    with pytest.raises(MlsEngineError):
        bob.process_many([(gid, first), (gid, tampered(second))])
    assert bob.process(gid, first) == Received(ReceivedKind.APPLICATION, b"alice", b"first")
    assert bob.process(gid, second).data == b"second"


def test_failed_batch_with_a_commit_can_be_replayed(tmp_path: Path, make: Factory) -> None:
    """A batch holding a commit that fails as a whole leaves the old epoch: the commit
    is processed again, and the state survives a reopen."""
    alice, bob, gid = pair(make)
    commit = alice.update_keys(gid)
    broken = tampered(alice.encrypt(gid, b"broken"))
    with pytest.raises(MlsEngineError):
        bob.process_many([(gid, commit), (gid, broken)])
    got = bob.process(gid, commit)
    assert (got.kind, got.replay) == (ReceivedKind.COMMIT, False)
    bob = reopen(tmp_path, bob)
    try:
        assert bob.export_secret(gid, b"x", b"", 16) == alice.export_secret(gid, b"x", b"", 16)
        assert bob.process(gid, alice.encrypt(gid, b"after")).data == b"after"
    finally:
        bob.close()


def test_garbage_message_is_rejected(make: Factory) -> None:
    """Bytes that are not an MLS message raise an MlsError subclass; nothing is written."""
    alice, _, gid = pair(make)
    before = alice.vault.stats()
    with pytest.raises((MlsEngineError, InvalidMessage)):
        alice.process(gid, b"\x00\x01garbage")
    with pytest.raises(InvalidMessage):
        alice.join(b"\x00\x01\x00\x05not a welcome")
    with pytest.raises(TypeError):
        alice.encrypt(gid, "text, not bytes")  # type: ignore[arg-type]
    after = alice.vault.stats()
    assert (after.categories, after.encryptions) == (before.categories, before.encryptions)


def test_unknown_group_and_member(make: Factory) -> None:
    """Unknown group ids and identities raise UnknownGroup / UnknownMember."""
    alice, _, gid = pair(make)
    with pytest.raises(UnknownGroup):
        alice.encrypt(b"no such group", b"x")
    with pytest.raises(UnknownMember):
        alice.remove_members(gid, [b"mallory"])


def test_create_group_refuses_duplicate_id(make: Factory) -> None:
    """Creating a group whose id exists would overwrite it: refused."""
    alice = make("alice")
    alice.create_group(b"dup")
    with pytest.raises(ValueError):
        alice.create_group(b"dup")


def test_encrypt_many_and_process_many_across_groups(make: Factory) -> None:
    """Group commit: many groups encrypted and processed with one flush each."""
    alice, bob = make("alice"), make("bob")
    gids = [alice.create_group() for _ in range(4)]
    for gid in gids:
        _, welcome = alice.add_members(gid, [bob.generate_key_package()])
        bob.join(welcome)
    cts = alice.encrypt_many([(g, f"to {i}".encode()) for i, g in enumerate(gids)])
    got = bob.process_many(list(zip(gids, cts, strict=True)))
    assert [r.data for r in got] == [f"to {i}".encode() for i in range(4)]


def test_encrypt_many_in_one_group_survives_reopen(tmp_path: Path, make: Factory) -> None:
    """Several messages for one group in a batch: all decrypt, also after a reopen."""
    alice, bob, gid = pair(make)
    batch = alice.encrypt_many([(gid, b"a"), (gid, b"b"), (gid, b"c")])
    alice = reopen(tmp_path, alice)
    try:
        later = alice.encrypt(gid, b"d")
    finally:
        alice.close()
    got = bob.process_many([(gid, m) for m in [*batch, later]])
    assert [r.data for r in got] == [b"a", b"b", b"c", b"d"]


def test_storage_failure_inside_the_engine_surfaces_as_itself(
    make: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A vault error raised in the engine's storage callback is re-raised as itself, no
    ciphertext is returned, and the client works once storage recovers."""
    alice, bob, gid = pair(make)
    original = GranularStorage.write

    def failing(self: GranularStorage, category: str, key: bytes, value: bytes) -> None:
        if category == "mlsrs/v1/group_state":
            raise VaultIOError("simulated: the disk went away")
        original(self, category, key, value)

    monkeypatch.setattr(GranularStorage, "write", failing)
    with pytest.raises(VaultIOError, match="simulated"):
        alice.encrypt(gid, b"never sent")
    monkeypatch.setattr(GranularStorage, "write", original)
    assert bob.process(gid, alice.encrypt(gid, b"sent")).data == b"sent"


def test_missing_engine_creates_no_vault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the mls-rs extra, create() fails before writing any file."""
    monkeypatch.setitem(sys.modules, "mls_rs_uniffi", None)
    with pytest.raises(MlsRsUnavailable):
        MlsClient.create(tmp_path / "a.vault", PASSPHRASE, identity=b"a", kdf=FAST, engine="mls-rs")
    assert list(tmp_path.iterdir()) == []


def test_closed_client_refuses_calls(make: Factory) -> None:
    """Calls on a closed client raise instead of touching a closed vault."""
    alice = make("alice")
    alice.close()
    with pytest.raises(VaultClosed):
        alice.create_group()
    with pytest.raises(VaultClosed):
        alice.group_ids()


def test_epoch_retention_prunes_old_epochs(tmp_path: Path) -> None:
    """Only the configured number of past epochs stays in the vault."""
    with MlsClient.create(
        tmp_path / "a.vault",
        PASSPHRASE,
        identity=b"a",
        kdf=FAST,
        epoch_retention=2,
        engine="mls-rs",
    ) as alice:
        gid = alice.create_group()
        for _ in range(5):
            alice.update_keys(gid)
        assert alice.vault.stats().categories["mlsrs/v1/epoch"].rows == 2


def test_vault_files_hold_no_plaintext_or_group_id(tmp_path: Path, make: Factory) -> None:
    """Messages, group ids and identities never appear in the vault file or its WAL."""
    alice, bob = make("alice"), make("bob")
    gid = alice.create_group(b"secret-group-id-7f3a")
    _, welcome = alice.add_members(gid, [bob.generate_key_package()])
    bob.join(welcome)
    bob.process(gid, alice.encrypt(gid, b"plaintext-marker-91c2"))
    blobs = b"".join(
        p.read_bytes() for p in tmp_path.iterdir() if p.name.endswith((".vault", "-wal"))
    )
    assert b"-wal" in b"".join(p.name.encode() for p in tmp_path.iterdir())
    for needle in (b"plaintext-marker-91c2", b"secret-group-id-7f3a", b"alice"):
        assert needle not in blobs


def test_async_client_round_trip(tmp_path: Path) -> None:
    """AsyncMlsClient runs the same flow from asyncio."""

    async def scenario() -> bytes | None:
        alice = await AsyncMlsClient.create(
            tmp_path / "a.vault", PASSPHRASE, identity=b"alice", kdf=FAST, engine="mls-rs"
        )
        bob = await AsyncMlsClient.create(
            tmp_path / "b.vault", PASSPHRASE, identity=b"bob", kdf=FAST, engine="mls-rs"
        )
        async with alice, bob:
            gid = await alice.create_group()
            _, welcome = await alice.add_members(gid, [await bob.generate_key_package()])
            await bob.join(welcome)
            await alice.process(gid, await bob.update_keys(gid))
            got = await bob.process_many(
                [(gid, m) for m in await alice.encrypt_many([(gid, b"async")])]
            )
            await bob.process(gid, await alice.remove_members(gid, [b"bob"]))
            assert bob.sync.group_ids() == []
            return got[0].data

    assert asyncio.run(scenario()) == b"async"
