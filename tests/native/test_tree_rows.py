"""The ratchet tree stored node by node: what a commit writes, restarts, and older vaults."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from keystore import Vault
from mls import categories as cat
from mls.native import NativeEngine, tree_rows
from mls.native.codec import decode_exact
from mls.native.framing import MLSMessage
from mls.native.identity import BasicCredentialValidator
from mls.native.key_package import KeyPackage
from mls.native.rows import CATEGORY_MEMBERS
from mls.native.suites import get_suite
from mls.native.tree import RatchetTree
from mls.native.tree_rows import (
    CATEGORY_TREE,
    CATEGORY_TREE_NODE,
    candidates,
    decode_node_row,
)
from mls.native.validation import TreeIndex
from mls.storage import GranularStorage
from tests.conftest import PASSPHRASE
from tests.native.engine_helpers import GID, agreed, group, member

OLD_LAYOUT = Path(__file__).parent / "old_layout"
OLD_GID = b"old-layout-group"


def _stored_nodes(engine: NativeEngine) -> int:
    return len(engine.storage.keys(CATEGORY_TREE_NODE))


def _non_blank(engine: NativeEngine) -> int:
    tree = RatchetTree.from_bytes(engine.ratchet_tree(GID))
    return sum(node is not None for node in tree.nodes)


def test_a_processed_commit_writes_only_its_path_and_one_width_row() -> None:
    """In a 64-member group, a commit with a path writes at most log2(64)+1 node rows."""
    engines = group([f"m{i}" for i in range(64)])
    alice, bob = engines[0], engines[1]
    commit, _ = engines[40].commit(GID, force_path=True)
    bob.storage.drain_storage_events()
    bob.process(GID, commit)
    events = bob.storage.drain_storage_events()
    node_rows = [e for e in events if e.category == CATEGORY_TREE_NODE]
    assert 1 <= len(node_rows) <= 7
    assert [e.category for e in events].count(CATEGORY_TREE) == 1
    assert not any(e.category == cat.TREE for e in events)
    members_rows = [e for e in events if e.category == CATEGORY_MEMBERS]
    assert len(members_rows) == 1 and len(members_rows[0].value or b"") < 200
    assert sum(len(e.key) + len(e.value or b"") for e in events) < 4000
    alice.process(GID, commit)
    assert agreed([alice, bob, engines[40]])


def test_node_rows_hold_exactly_the_non_blank_nodes_as_members_come_and_go() -> None:
    """Adds, removals (with truncation) and updates leave one row per non-blank node."""
    engines = group([f"m{i}" for i in range(9)])
    alice = engines[0]
    for step in (
        lambda: alice.commit(GID, remove=[5, 6, 7, 8]),  # the tree shrinks to 8 leaves
        lambda: alice.commit(GID, force_path=True),
        lambda: alice.commit(GID, add=[member("n").generate_key_package()]),
    ):
        step()
        assert _stored_nodes(alice) == _non_blank(alice)
        for key, value in alice.storage.items(CATEGORY_TREE_NODE):
            assert decode_node_row(value) is not None
            assert key.startswith(len(GID).to_bytes(4, "big") + GID)


def test_a_restarted_engine_reads_the_tree_back_from_its_rows() -> None:
    """An engine built on a copy of the rows has the same tree and keeps up with commits."""
    engines = group([f"m{i}" for i in range(12)])
    alice, bob = engines[0], engines[1]
    commit, _ = engines[7].commit(GID, force_path=True)
    alice.process(GID, commit)
    bob.process(GID, commit)
    copy = GranularStorage()
    with copy.operation():
        for category in bob.storage.categories():
            for key, value in bob.storage.items(category):
                copy.write(category, key, value)
    restarted = NativeEngine(copy)
    assert restarted.ratchet_tree(GID) == bob.ratchet_tree(GID)
    commit, _ = alice.commit(GID, force_path=True)
    restarted.process(GID, commit)
    assert agreed([alice, restarted])
    assert restarted.process(GID, alice.encrypt(GID, b"hi")).data == b"hi"


def test_a_late_message_finds_its_sender_after_the_leaf_was_reused() -> None:
    """Past epochs keep who sat at a leaf: a message from a removed member still verifies."""
    alice, bob, carol = group(["alice", "bob", "carol"])
    late = carol.encrypt(GID, b"before my removal")
    commit, _ = alice.commit(GID, remove=[2])
    bob.process(GID, commit)
    erin = member("erin")
    commit, welcome = alice.commit(GID, add=[erin.generate_key_package()])
    assert welcome is not None
    bob.process(GID, commit)
    erin.join(welcome)
    assert erin.own_leaf_index(GID) == 2
    got = bob.process(GID, late)
    assert (got.identity, got.data, got.epoch) == (b"carol", b"before my removal", 1)
    now = bob.process(GID, erin.encrypt(GID, b"new at leaf 2"))
    assert (now.identity, now.data) == (b"erin", b"new at leaf 2")


def test_tree_hash_memo_agrees_with_a_fresh_computation() -> None:
    """Hashes, resolutions, free leaves and changed nodes carried along match a fresh tree."""
    cs = get_suite(1)
    engines = group([f"m{i}" for i in range(6)])
    base = RatchetTree.from_bytes(engines[0].ratchet_tree(GID))
    leaves = [base.leaf(i) for i in base.member_leaves()]
    rng = random.Random(7)
    tree = base
    tree.tree_hash(cs)
    for _ in range(60):
        members = tree.member_leaves()
        op = rng.random()
        if op < 0.4 or len(members) < 3:
            leaf = rng.choice(leaves)
            assert leaf is not None
            _, expected = RatchetTree(tree.nodes).add_leaf(leaf)
            tree, placed = tree.add_leaf(leaf)
            assert placed == expected  # the leftmost blank leaf, hint or not
        elif op < 0.7:
            tree = tree.remove_leaf(rng.choice(members))
        else:
            tree = tree.blank_path(rng.choice(members))
        fresh = RatchetTree(tree.nodes)
        assert tree.tree_hash(cs) == fresh.tree_hash(cs)
        x = rng.randrange(len(tree.nodes))
        assert tree.resolution(x) == fresh.resolution(x)
        assert tree.tree_hashes(cs) == fresh.tree_hashes(cs)
        width = max(len(base.nodes), len(tree.nodes))
        padded = [(*t.nodes, *[None] * (width - len(t.nodes))) for t in (base, tree)]
        differ = {x for x in range(width) if padded[0][x] != padded[1][x]}
        assert differ <= set(candidates(base, tree))  # what storage rewrites covers it


def _open_old(tmp_path: Path, name: str) -> tuple[Vault, NativeEngine]:
    path = tmp_path / f"{name}.vault"
    shutil.copy(OLD_LAYOUT / f"{name}.vault", path)
    # The fixtures predate the vault's state record (schema 4); migrate them first, as
    # `mls-keystore migrate` would.
    Vault.open(path, auto_migrate=True).close()
    vault = Vault.open(path)
    vault.unlock(PASSPHRASE)
    return vault, NativeEngine(GranularStorage.load(vault))


@pytest.fixture
def old_vaults(tmp_path: Path) -> tuple[tuple[Vault, NativeEngine], tuple[Vault, NativeEngine]]:
    """Alice's and Bob's vaults as the code before node rows left them (epoch 3)."""
    return _open_old(tmp_path, "alice"), _open_old(tmp_path, "bob")


def test_a_vault_with_the_whole_tree_row_opens_and_converts_on_the_next_commit(
    old_vaults: tuple[tuple[Vault, NativeEngine], tuple[Vault, NativeEngine]],
) -> None:
    """Old rows are read as they are; the next epoch writes node rows and drops the old one."""
    (a_vault, alice), (b_vault, bob) = old_vaults
    assert bob.storage.keys(cat.TREE) == [OLD_GID] and bob.storage.keys(CATEGORY_TREE) == []
    assert [identity for _, identity in bob.members(OLD_GID)] == [b"alice", b"bob", b"carol"]
    assert bob.epoch(OLD_GID) == 3 and agreed_on(alice, bob)
    commit, _ = alice.commit(OLD_GID, force_path=True)
    bob.process(OLD_GID, commit)
    assert agreed_on(alice, bob)
    for engine in (alice, bob):
        assert engine.storage.keys(cat.TREE) == []
        assert engine.storage.keys(CATEGORY_TREE) == [OLD_GID]
        assert len(engine.storage.keys(CATEGORY_TREE_NODE)) >= 3
    for engine, vault in ((alice, a_vault), (bob, b_vault)):
        vault.apply(engine.storage.drain_storage_events())
        vault.close()


def agreed_on(*engines: NativeEngine) -> bool:
    """Same epoch and epoch authenticator in the old-layout group."""
    return len({(e.epoch(OLD_GID), e.epoch_authenticator(OLD_GID)) for e in engines}) == 1


def test_an_old_vaults_late_message_from_a_removed_member_still_decrypts(
    old_vaults: tuple[tuple[Vault, NativeEngine], tuple[Vault, NativeEngine]],
) -> None:
    """Old complete members rows answer for their epoch, also after the layout moved on."""
    (_, alice), (_, bob) = old_vaults
    commit, _ = alice.commit(OLD_GID, force_path=True)  # epoch 4: epoch 2 is still kept
    bob.process(OLD_GID, commit)
    late = (OLD_LAYOUT / "late.bin").read_bytes()
    got = bob.process(OLD_GID, late)
    assert (got.identity, got.data, got.epoch) == (b"dave", b"sent by dave in epoch 2", 2)


def test_a_converted_vault_restarts_and_continues(tmp_path: Path) -> None:
    """After conversion the vault alone holds the group: reopen, commit, exchange messages."""
    a_vault, alice = _open_old(tmp_path, "alice")
    b_vault, bob = _open_old(tmp_path, "bob")
    commit, _ = alice.commit(OLD_GID, force_path=True)
    bob.process(OLD_GID, commit)
    for engine, vault in ((alice, a_vault), (bob, b_vault)):
        vault.apply(engine.storage.drain_storage_events())
        vault.close()
    a_vault, alice = _reopen(tmp_path, "alice")
    b_vault, bob = _reopen(tmp_path, "bob")
    assert a_vault.get(cat.TREE, OLD_GID) is None
    commit, _ = bob.commit(OLD_GID, force_path=True)
    alice.process(OLD_GID, commit)
    assert agreed_on(alice, bob)
    assert alice.process(OLD_GID, bob.encrypt(OLD_GID, b"after")).data == b"after"
    a_vault.close()
    b_vault.close()


def _reopen(tmp_path: Path, name: str) -> tuple[Vault, NativeEngine]:
    vault = Vault.open(tmp_path / f"{name}.vault")
    vault.unlock(PASSPHRASE)
    return vault, NativeEngine(GranularStorage.load(vault))


def _hashes_computed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count tree hashes actually computed (memo misses) from now on."""
    computed = [0]
    real = RatchetTree._tree_hash

    def counting(
        self: RatchetTree, cs: object, x: int, excluded: frozenset[int], cache: object
    ) -> bytes:
        if not excluded and x not in self.memo().hashes_for(cs.suite_id):  # type: ignore[attr-defined]
            computed[0] += 1
        return real(self, cs, x, excluded, cache)  # type: ignore[arg-type]

    monkeypatch.setattr(RatchetTree, "_tree_hash", counting)
    return computed


def _sparse_group(size: int) -> tuple[NativeEngine, NativeEngine, NativeEngine]:
    """Alice adds ``size - 1`` members; only Bob and Carol join, the rest are key packages."""
    alice, bob, carol = member("alice"), member("bob"), member("carol")
    alice.create_group(GID)
    kps = [bob.generate_key_package(), carol.generate_key_package()]
    kps += [member(f"m{i}").generate_key_package() for i in range(size - 3)]
    _, welcome = alice.commit(GID, add=kps)
    assert welcome is not None
    bob.join(welcome)
    carol.join(welcome)
    return alice, bob, carol


@pytest.mark.parametrize("size", [64, 512])
def test_processing_a_commit_hashes_one_path_not_the_tree(
    monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Tree hashes computed for a processed commit stay O(log n) (the memo carries the rest)."""
    _, bob, carol = _sparse_group(size)
    commit, _ = carol.commit(GID, force_path=True)
    bob.process(GID, commit)  # the first commit after a join fills the memo once
    commit, _ = carol.commit(GID, force_path=True)
    computed = _hashes_computed(monkeypatch)
    bob.process(GID, commit)
    depth = (size - 1).bit_length()
    assert 0 < computed[0] <= 4 * (depth + 1), computed[0]


def test_after_a_restart_a_message_reads_one_leaf_not_the_tree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rehydrate is lazy: the first application message decodes its sender's leaf only."""
    alice, bob, _ = _sparse_group(64)
    copy = GranularStorage()
    with copy.operation():
        for category in bob.storage.categories():
            for key, value in bob.storage.items(category):
                copy.write(category, key, value)
    decoded = [0]
    real = tree_rows.decode_node_row

    def counting(data: bytes) -> object:
        decoded[0] += 1
        return real(data)

    monkeypatch.setattr(tree_rows, "decode_node_row", counting)
    restarted = NativeEngine(copy)
    assert restarted.process(GID, alice.encrypt(GID, b"after restart")).data == b"after restart"
    assert decoded[0] == 1
    assert restarted.members(GID)[0] == (0, b"alice")  # the whole tree, on demand
    assert decoded[0] > 64


def test_member_index_carried_along_equals_a_fresh_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A derived tree's member index, updated from its origin's, equals one built anew."""
    kps = [
        decode_exact(member(f"k{i}").generate_key_package(), MLSMessage.decode) for i in range(40)
    ]
    leaves = [kp.body.leaf_node for kp in kps if isinstance(kp.body, KeyPackage)]
    validator = BasicCredentialValidator()
    tree = RatchetTree((leaves[0],))
    for leaf in leaves[1:12]:
        tree, _ = tree.add_leaf(leaf)
    builds = [0]
    real_build = TreeIndex.build.__func__  # type: ignore[attr-defined]

    def counting(cls: type[TreeIndex], t: RatchetTree, v: BasicCredentialValidator) -> TreeIndex:
        builds[0] += 1
        return real_build(cls, t, v)  # type: ignore[no-any-return]

    TreeIndex.of(tree, validator)
    monkeypatch.setattr(TreeIndex, "build", classmethod(counting))
    rng = random.Random(11)
    spare = leaves[12:]
    for step in range(40):
        members = tree.member_leaves()
        if (rng.random() < 0.5 and spare) or len(members) < 3:
            tree, _ = tree.add_leaf(spare.pop())
        else:
            tree = tree.remove_leaf(rng.choice(members))
        if step % 7 == 6:
            tree.memo().forget_origin()  # as storing an epoch does: no effect on the index
        if step % 3 == 2:
            assert TreeIndex.of(tree, validator) == real_build(TreeIndex, tree, validator)
    assert builds[0] == 0  # every index was updated from an ancestor's, none rebuilt
