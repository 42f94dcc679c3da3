"""Native engine persistence: atomic operations, granular rows, restarts from a real vault."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keystore import Vault
from mls import categories as cat
from mls.drainer import WriteBehindDrainer
from mls.native import DecodeError, GroupConfig, NativeEngine, NoIdentity
from mls.native.codec import decode_exact
from mls.native.framing import WireFormat
from mls.native.rows import (
    CATEGORY_EPOCH,
    CATEGORY_IDENTITY,
    CATEGORY_MEMBERS,
    CATEGORY_RATCHET,
    EpochRow,
)
from mls.native.tree_rows import CATEGORY_TREE, CATEGORY_TREE_NODE
from mls.storage import GranularStorage
from tests.conftest import FAST_KDF, PASSPHRASE
from tests.native.engine_helpers import GID, agreed, group, member, rows


class Injected(Exception):
    """The failure injected into a storage write."""


def fail_on_write(
    monkeypatch: pytest.MonkeyPatch, storage: GranularStorage, nth: int
) -> Callable[[], int]:
    """Make the ``nth`` call of ``storage.write`` raise; returns a counter of calls made."""
    real = storage.write
    calls = 0

    def write(category: str, key: bytes, value: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == nth:
            raise Injected(f"write {nth}")
        real(category, key, value)

    monkeypatch.setattr(storage, "write", write)
    return lambda: calls


class VaultHome:
    """A member's vault on disk with a drainer, restartable like a process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        Vault.create(path, PASSPHRASE, kdf=FAST_KDF).close()
        self.vault: Vault | None = None
        self.drainer: WriteBehindDrainer | None = None

    def start(self) -> GranularStorage:
        """Open the vault, rehydrate a fresh storage and attach a drainer to it."""
        self.vault = Vault.open(self.path)
        self.vault.unlock(PASSPHRASE)
        storage = GranularStorage.load(self.vault)
        self.drainer = WriteBehindDrainer(storage, self.vault)
        return storage

    def stop(self) -> None:
        """Flush, close the drainer and the vault (a clean process exit)."""
        assert self.drainer is not None and self.vault is not None
        self.drainer.close()
        self.vault.close()

    def restart(self) -> NativeEngine:
        """Stop, then start again and build an engine on the rehydrated storage."""
        self.stop()
        return NativeEngine(self.start())


@pytest.fixture
def home(tmp_path: Path) -> Iterator[VaultHome]:
    """A vault home, stopped after the test."""
    h = VaultHome(tmp_path / "member.vault")
    yield h
    if h.vault is not None:
        h.stop()


@pytest.mark.parametrize("nth", [1, 3, 6, 9, 12])
def test_failure_inside_a_commit_leaves_storage_unchanged(
    monkeypatch: pytest.MonkeyPatch, nth: int
) -> None:
    """A commit that fails at any write rolls back memory and the dirty log."""
    alice, bob = group(["alice", "bob"])
    alice.storage.drain_storage_events()
    before = rows(alice.storage)
    fail_on_write(monkeypatch, alice.storage, nth)
    with pytest.raises(Injected):
        alice.commit(GID, force_path=True)
    monkeypatch.undo()
    assert rows(alice.storage) == before
    assert alice.storage.drain_storage_events() == []
    commit, _ = alice.commit(GID, force_path=True)
    bob.process(GID, commit)
    assert agreed([alice, bob])


@pytest.mark.parametrize("nth", [1, 5, 10])
def test_failure_while_processing_a_commit_leaves_storage_unchanged(
    monkeypatch: pytest.MonkeyPatch, nth: int
) -> None:
    """A receiver failing mid-commit can process the same commit again afterwards."""
    alice, bob = group(["alice", "bob"])
    commit, _ = alice.commit(GID, force_path=True)
    bob.storage.drain_storage_events()
    before = rows(bob.storage)
    fail_on_write(monkeypatch, bob.storage, nth)
    with pytest.raises(Injected):
        bob.process(GID, commit)
    monkeypatch.undo()
    assert rows(bob.storage) == before
    assert bob.storage.drain_storage_events() == []
    bob.process(GID, commit)
    assert agreed([alice, bob])


def test_failed_encrypt_does_not_advance_the_ratchet(monkeypatch: pytest.MonkeyPatch) -> None:
    """If storing the advanced ratchet fails, no message exists and nothing changed."""
    alice, bob = group(["alice", "bob"])
    alice.encrypt(GID, b"warm-up")
    before = rows(alice.storage)
    fail_on_write(monkeypatch, alice.storage, 1)
    with pytest.raises(Injected):
        alice.encrypt(GID, b"lost")
    monkeypatch.undo()
    assert rows(alice.storage) == before
    assert bob.process(GID, alice.encrypt(GID, b"kept")).data == b"kept"


def test_application_message_writes_only_the_advanced_ratchet() -> None:
    """After a sender's first message, each message changes exactly one row on each side."""
    engines = group([f"m{i}" for i in range(6)])
    alice, bob = engines[0], engines[1]
    bob.process(GID, alice.encrypt(GID, b"first"))
    alice.storage.drain_storage_events()
    bob.storage.drain_storage_events()
    bob.process(GID, alice.encrypt(GID, b"second"))
    for storage in (alice.storage, bob.storage):
        events = storage.drain_storage_events()
        assert [e.category for e in events] == [CATEGORY_RATCHET]


def test_state_lives_in_the_openmls_categories() -> None:
    """Every row is in an OpenMLS v1 category, its message-secrets split, our identity or tree."""
    alice, bob, carol = group(["alice", "bob", "carol"])
    bob.process(GID, alice.encrypt(GID, b"x"))
    allowed = {*cat.OPENMLS_CATEGORIES, CATEGORY_EPOCH, CATEGORY_MEMBERS, CATEGORY_RATCHET}
    allowed |= {CATEGORY_IDENTITY, CATEGORY_TREE, CATEGORY_TREE_NODE}
    for engine in (alice, bob, carol):
        assert set(engine.storage.categories()) <= allowed
    for category in (
        CATEGORY_TREE,
        CATEGORY_TREE_NODE,
        cat.GROUP_CONTEXT,
        cat.INTERIM_TRANSCRIPT_HASH,
        cat.CONFIRMATION_TAG,
        cat.GROUP_STATE,
        cat.GROUP_EPOCH_SECRETS,
        cat.MESSAGE_SECRETS,
        cat.RESUMPTION_PSK_STORE,
        cat.OWN_LEAF_INDEX,
        cat.MLS_JOIN_CONFIG,
        cat.ENCRYPTION_KEY_PAIR,
        cat.ENCRYPTION_EPOCH_KEY_PAIRS,
        cat.SIGNATURE_KEY_PAIR,
    ):
        assert bob.storage.keys(category), category


def test_pending_proposals_and_update_leaves_are_stored_until_the_commit() -> None:
    """Proposals sit in the proposal queue, our Update leaf in own_leaf_nodes, until committed."""
    alice, bob = group(["alice", "bob"])
    alice.process(GID, bob.propose_update(GID))
    assert len(alice.storage.queued_proposal_refs(GID)) == 1
    assert len(bob.storage.own_leaf_nodes(GID)) == 1
    commit, _ = alice.commit(GID)
    bob.process(GID, commit)
    assert alice.storage.queued_proposal_refs(GID) == []
    assert bob.storage.own_leaf_nodes(GID) == []
    assert len(bob.storage.keys(cat.ENCRYPTION_KEY_PAIR)) == 1


def test_past_epochs_are_pruned_to_the_window() -> None:
    """Only the current and max_past_epochs previous epochs keep message secrets."""
    alice, bob = group(["alice", "bob"])
    for _ in range(5):
        commit, _ = alice.commit(GID, force_path=True)
        bob.process(GID, commit)
    for engine in (alice, bob):
        assert len(engine.storage.keys(CATEGORY_EPOCH)) == 3
        assert len(engine.storage.keys(CATEGORY_MEMBERS)) == 2  # the past epochs
        assert len(engine.storage.keys(cat.ENCRYPTION_EPOCH_KEY_PAIRS)) == 1


def test_removed_member_keeps_no_group_rows() -> None:
    """A member removed from its only group is left with its identity and nothing else."""
    alice, bob = group(["alice", "bob"])
    bob.process(GID, alice.encrypt(GID, b"x"))
    commit, _ = alice.commit(GID, remove=[1])
    assert bob.process(GID, commit).removed
    assert set(bob.storage.categories()) == {CATEGORY_IDENTITY, cat.SIGNATURE_KEY_PAIR}


def test_joining_consumes_the_key_package() -> None:
    """The key package used to join is deleted; the others stay usable."""
    alice = group(["alice"])[0]
    bob = member("bob")
    used, spare = bob.generate_key_package(), bob.generate_key_package()
    _, welcome = alice.commit(GID, add=[used])
    assert welcome is not None
    bob.join(welcome)
    assert len(bob.key_package_refs()) == 1
    alice.create_group(b"second")
    _, welcome = alice.commit(b"second", add=[spare])
    assert welcome is not None
    assert bob.join(welcome) == b"second"
    assert bob.key_package_refs() == []


def test_restart_from_the_vault_continues_every_group(home: VaultHome) -> None:
    """A member rebuilt from its vault decrypts, encrypts and commits in all its groups."""
    alice = NativeEngine.create(home.start(), b"alice")
    bob = member("bob")
    for gid in (b"g1", b"g2"):
        alice.create_group(gid)
        _, welcome = alice.commit(gid, add=[bob.generate_key_package()])
        assert welcome is not None
        bob.join(welcome)
    late = bob.encrypt(b"g1", b"sent while alice was down")
    alice = home.restart()
    assert alice.group_ids() == [b"g1", b"g2"]
    assert alice.process(b"g1", late).data == b"sent while alice was down"
    for gid in (b"g1", b"g2"):
        assert bob.process(gid, alice.encrypt(gid, b"back")).data == b"back"
        commit, _ = alice.commit(gid, force_path=True)
        bob.process(gid, commit)
        assert alice.epoch_authenticator(gid) == bob.epoch_authenticator(gid)
    alice = home.restart()
    assert alice.process(b"g2", bob.encrypt(b"g2", b"again")).data == b"again"


def test_key_package_published_before_a_restart_can_join(home: VaultHome) -> None:
    """The private keys of a published key package survive a restart in the vault."""
    bob = NativeEngine.create(home.start(), b"bob")
    key_package = bob.generate_key_package()
    bob = home.restart()
    alice = group(["alice"])[0]
    _, welcome = alice.commit(GID, add=[key_package])
    assert welcome is not None
    assert bob.join(welcome) == GID
    bob = home.restart()
    assert bob.process(GID, alice.encrypt(GID, b"welcome")).data == b"welcome"


def test_engine_on_a_storage_without_identity_is_refused() -> None:
    """An engine needs the identity rows; an empty storage raises NoIdentity."""
    with pytest.raises(NoIdentity):
        NativeEngine(GranularStorage())


def test_stored_row_of_an_unknown_format_is_rejected() -> None:
    """Every row carries a format byte; an unknown one is a DecodeError, not a misread."""
    alice, _ = group(["alice", "bob"])
    key = alice.storage.keys(cat.MESSAGE_SECRETS)[0]
    row = alice.storage.read(cat.MESSAGE_SECRETS, key)
    assert row is not None
    alice.storage.write(cat.MESSAGE_SECRETS, key, b"\x09" + row[1:])
    with pytest.raises(DecodeError):
        alice.commit(GID, force_path=True)


@pytest.mark.parametrize(
    "bad", [{"padding": -1}, {"max_past_epochs": 70000}, {"window": True}, {"handshake": 3}]
)
def test_group_config_rejects_values_it_cannot_honour(bad: dict[str, object]) -> None:
    """GroupConfig validates its fields at construction."""
    with pytest.raises(ValueError):
        GroupConfig(**bad)  # type: ignore[arg-type]


@given(
    padding=st.integers(0, 65535),
    past=st.integers(0, 65535),
    forward=st.integers(0, 65535),
    window=st.integers(0, 65535),
    private=st.booleans(),
    tree_ext=st.booleans(),
)
def test_group_config_round_trips(
    padding: int, past: int, forward: int, window: int, private: bool, tree_ext: bool
) -> None:
    """A stored GroupConfig decodes to the same value."""
    handshake = WireFormat.PRIVATE_MESSAGE if private else WireFormat.PUBLIC_MESSAGE
    config = GroupConfig(handshake, padding, past, forward, window, tree_ext)
    assert decode_exact(config.to_bytes(), GroupConfig.decode) == config


@given(
    nodes=st.dictionaries(st.integers(0, 2**32 - 1), st.binary(max_size=64), max_size=8),
    leaves=st.frozensets(st.integers(0, 2**32 - 1), max_size=8),
    secret=st.binary(max_size=64),
)
def test_epoch_row_round_trips(
    nodes: dict[int, bytes], leaves: frozenset[int], secret: bytes
) -> None:
    """A stored epoch row (sender-data secret, node secrets, leaves) decodes to the same value."""
    row = EpochRow(1, 5, 1024, 32, secret, nodes, leaves)
    assert EpochRow.from_bytes(row.to_bytes()) == row
