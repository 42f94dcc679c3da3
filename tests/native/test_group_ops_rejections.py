"""Native engine: everything received is validated, and each rejection is our own error."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mls.native import GroupConfig
from mls.native.codec import decode_exact
from mls.native.errors import (
    AuthenticationError,
    EpochMismatch,
    InvalidLeafNode,
    InvalidMessage,
    InvalidProposal,
    KeyNotFound,
    UnknownGroup,
    UnknownKeyPackage,
)
from mls.native.framing import MLSMessage
from mls.native.group_context import GroupContext
from mls.native.key_package import KeyPackage
from mls.native.leaf_node import (
    Capabilities,
    CredentialType,
    Extension,
    ExtensionType,
    LeafNodeSource,
)
from mls.native.proposals import Proposal, Remove, Update
from mls.native.tree import RatchetTree
from mls.native.validation import PendingProposal, validate_leaf_node, validate_proposal_list
from tests.native.engine_helpers import GID, agreed, group, member, rows
from tests.native.helpers import CS, member_leaf, small_group


def flip_last_byte(message: bytes) -> bytes:
    """The message with its last byte (inside a tag or signature) altered."""
    return message[:-1] + bytes((message[-1] ^ 1,))


def test_replayed_application_message_is_rejected() -> None:
    """The key of a consumed generation is gone: a replay raises KeyNotFound."""
    alice, bob = group(["alice", "bob"])
    msg = alice.encrypt(GID, b"once")
    bob.process(GID, msg)
    with pytest.raises(KeyNotFound):
        bob.process(GID, msg)


def test_out_of_order_messages_within_the_window_are_accepted() -> None:
    """Skipped generations are kept, so late messages of the epoch still decrypt."""
    alice, bob = group(["alice", "bob"])
    first, second, third = (alice.encrypt(GID, bytes([i])) for i in range(3))
    assert [bob.process(GID, m).data for m in (third, first, second)] == [b"\x02", b"\x00", b"\x01"]


def test_generation_too_far_ahead_is_rejected() -> None:
    """A generation beyond max_forward is refused (no unbounded ratchet work)."""
    config = GroupConfig(max_forward=2)
    alice, bob = group(["alice", "bob"], config=config)
    messages = [alice.encrypt(GID, b"m") for _ in range(4)]
    with pytest.raises(KeyNotFound):
        bob.process(GID, messages[3])
    assert bob.process(GID, messages[2]).data == b"m"


def test_late_application_message_of_a_retained_past_epoch_is_accepted() -> None:
    """An application message sent before a commit decrypts after the commit."""
    alice, bob = group(["alice", "bob"])
    late = alice.encrypt(GID, b"late")
    commit, _ = alice.commit(GID, force_path=True)
    bob.process(GID, commit)
    got = bob.process(GID, late)
    assert (got.data, got.epoch) == (b"late", 1)


def test_application_message_of_an_aged_out_epoch_is_rejected() -> None:
    """Past epochs beyond max_past_epochs are deleted; their messages raise EpochMismatch."""
    config = GroupConfig(max_past_epochs=1)
    alice, bob = group(["alice", "bob"], config=config)
    late = alice.encrypt(GID, b"too late")
    for _ in range(2):
        commit, _ = alice.commit(GID, force_path=True)
        bob.process(GID, commit)
    with pytest.raises(EpochMismatch):
        bob.process(GID, late)


def test_stale_commit_is_rejected() -> None:
    """A handshake message of a previous epoch raises EpochMismatch."""
    alice, bob, carol = group(["alice", "bob", "carol"])
    first, _ = alice.commit(GID, force_path=True)
    bob.process(GID, first)
    second, _ = bob.commit(GID, force_path=True)
    alice.process(GID, second)
    carol.process(GID, first)
    carol.process(GID, second)
    with pytest.raises(EpochMismatch):
        carol.process(GID, first)


def test_tampered_commit_is_rejected_and_changes_nothing() -> None:
    """An altered commit fails authentication; the genuine one still applies afterwards."""
    alice, bob = group(["alice", "bob"])
    commit, _ = alice.commit(GID, force_path=True)
    before = rows(bob.storage)
    with pytest.raises(AuthenticationError):
        bob.process(GID, flip_last_byte(commit))
    assert rows(bob.storage) == before
    bob.process(GID, commit)
    assert agreed([alice, bob])


def test_tampered_application_message_is_rejected() -> None:
    """An altered PrivateMessage fails its AEAD check."""
    alice, bob = group(["alice", "bob"])
    with pytest.raises(AuthenticationError):
        bob.process(GID, flip_last_byte(alice.encrypt(GID, b"x")))


def test_own_message_is_rejected() -> None:
    """A member does not process its own messages echoed back."""
    alice, _ = group(["alice", "bob"])
    with pytest.raises(InvalidMessage):
        alice.process(GID, alice.encrypt(GID, b"echo"))


def test_message_of_another_group_is_rejected() -> None:
    """A message is only processed in the group it names."""
    alice, bob = group(["alice", "bob"])
    bob.create_group(b"other")
    with pytest.raises(InvalidMessage):
        bob.process(b"other", alice.encrypt(GID, b"x"))


def test_unknown_group_is_reported() -> None:
    """Operations on a group the engine does not hold raise UnknownGroup."""
    alice = member("alice")
    with pytest.raises(UnknownGroup):
        alice.encrypt(b"nope", b"x")


def test_non_group_message_is_rejected() -> None:
    """A key package is not a group message."""
    alice, bob = group(["alice", "bob"])
    with pytest.raises(InvalidMessage):
        alice.process(GID, bob.generate_key_package())


def test_welcome_for_someone_else_is_rejected() -> None:
    """A Welcome addressing none of our key packages raises UnknownKeyPackage."""
    alice = group(["alice"])[0]
    bob, eve = member("bob"), member("eve")
    eve.generate_key_package()
    _, welcome = alice.commit(GID, add=[bob.generate_key_package()])
    assert welcome is not None
    with pytest.raises(UnknownKeyPackage):
        eve.join(welcome)


def test_adding_a_client_already_in_the_group_is_rejected() -> None:
    """A second key package of a member duplicates its signature key: InvalidLeafNode."""
    alice, bob = group(["alice", "bob"])
    with pytest.raises(InvalidLeafNode):
        alice.commit(GID, add=[bob.generate_key_package()])
    assert alice.epoch(GID) == 1


def test_expired_key_package_is_rejected() -> None:
    """A key package outside its lifetime cannot be added."""
    alice = member("alice", clock=4_000_000_000.0)
    alice.create_group(GID)
    old = member("bob", clock=1_000_000_000.0)
    with pytest.raises(InvalidLeafNode):
        alice.commit(GID, add=[old.generate_key_package()])


def test_key_package_with_a_bad_signature_is_rejected() -> None:
    """A key package whose signature does not verify is refused as an InvalidLeafNode."""
    alice = group(["alice"])[0]
    raw = member("bob").generate_key_package()
    msg = decode_exact(raw, MLSMessage.decode)
    kp = msg.body
    assert isinstance(kp, KeyPackage)
    forged = replace(kp, signature=bytes(len(kp.signature)))
    with pytest.raises(InvalidLeafNode):
        alice.commit(GID, add=[MLSMessage(forged).to_bytes()])


def test_leaf_without_the_groups_suite_is_rejected() -> None:
    """A leaf must list the group's cipher suite in its capabilities."""
    tree, _, _ = small_group(CS, 1)
    leaf, sig, _ = member_leaf(CS, b"newcomer")
    bad = replace(leaf, capabilities=Capabilities((1,), (2,), (), (), (1,))).signed(
        CS, sig, None, None
    )
    ctx = GroupContext(1, GID, 1, b"", b"")
    with pytest.raises(InvalidLeafNode):
        validate_leaf_node(CS, bad, tree, ctx, source=bad.leaf_node_source)


def test_leaf_missing_a_required_capability_is_rejected() -> None:
    """The group's required_capabilities extension binds every new leaf."""
    tree, _, _ = small_group(CS, 1)
    leaf, _, _ = member_leaf(CS, b"newcomer")
    required = Extension(ExtensionType.REQUIRED_CAPABILITIES, b"\x02\xff\x00\x00\x00")
    ctx = GroupContext(1, GID, 1, b"", b"", (required,))
    with pytest.raises(InvalidLeafNode):
        validate_leaf_node(CS, leaf, tree, ctx, source=leaf.leaf_node_source)


def test_leaf_with_an_unsupported_credential_type_is_rejected() -> None:
    """Every member must support a new leaf's credential type."""
    tree, _, _ = small_group(CS, 2)
    leaf, sig, _ = member_leaf(CS, b"newcomer")
    x509 = replace(
        leaf,
        capabilities=Capabilities((1,), (1,), (), (), (CredentialType.BASIC, CredentialType.X509)),
        credential=replace(leaf.credential, credential_type=CredentialType.X509),
    ).signed(CS, sig, None, None)
    ctx = GroupContext(1, GID, 1, b"", b"")
    with pytest.raises(InvalidLeafNode):
        validate_leaf_node(CS, x509, tree, ctx, source=x509.leaf_node_source)


def _members(n: int) -> tuple[RatchetTree, GroupContext]:
    tree, _, _ = small_group(CS, n)
    return tree, GroupContext(1, GID, 1, tree.tree_hash(CS), b"")


def test_commit_needing_a_path_without_one_is_rejected() -> None:
    """A Remove requires an UpdatePath (§12.4)."""
    tree, ctx = _members(3)
    proposals = [PendingProposal(0, Proposal(Remove(2)))]
    with pytest.raises(InvalidProposal):
        validate_proposal_list(CS, tree, ctx, proposals, 0, has_path=False, now=None)


def test_committer_removing_itself_is_rejected() -> None:
    """A commit cannot remove its own committer."""
    tree, ctx = _members(3)
    proposals = [PendingProposal(1, Proposal(Remove(0)))]
    with pytest.raises(InvalidProposal):
        validate_proposal_list(CS, tree, ctx, proposals, 0, has_path=True, now=None)


def test_two_removes_of_one_leaf_are_rejected() -> None:
    """Several Update/Remove proposals for one leaf make the list invalid."""
    tree, ctx = _members(3)
    proposals = [PendingProposal(1, Proposal(Remove(2))), PendingProposal(0, Proposal(Remove(2)))]
    with pytest.raises(InvalidProposal):
        validate_proposal_list(CS, tree, ctx, proposals, 0, has_path=True, now=None)


def test_committer_own_update_is_rejected() -> None:
    """The committer's own Update cannot be committed (it uses a path instead)."""
    tree, ctx = _members(2)
    own = tree.leaf(0)
    assert own is not None
    proposals = [PendingProposal(0, Proposal(Update(own)))]
    with pytest.raises(InvalidProposal):
        validate_proposal_list(CS, tree, ctx, proposals, 0, has_path=True, now=None)


def test_remove_of_a_blank_leaf_is_rejected() -> None:
    """A Remove must name an occupied leaf."""
    tree, ctx = _members(2)
    proposals = [PendingProposal(0, Proposal(Remove(5)))]
    with pytest.raises(InvalidProposal):
        validate_proposal_list(CS, tree, ctx, proposals, 0, has_path=True, now=None)


def test_update_leaf_keeping_the_old_encryption_key_is_rejected() -> None:
    """An Update (or UpdatePath) leaf must carry a fresh encryption key (§12.1.2, §12.4.2)."""
    tree, sigs, _ = small_group(CS, 2)
    old = tree.leaf(1)
    assert old is not None
    stale = replace(old, leaf_node_source=LeafNodeSource.UPDATE, lifetime=None).signed(
        CS, sigs[1], GID, 1
    )
    ctx = GroupContext(1, GID, 1, b"", b"")
    with pytest.raises(InvalidLeafNode):
        validate_leaf_node(CS, stale, tree, ctx, source=LeafNodeSource.UPDATE, replaces=1)


def test_group_context_extension_a_member_does_not_support_is_rejected() -> None:
    """New GroupContext extensions must be listed in every member's capabilities."""
    alice, _ = group(["alice", "bob"])
    with pytest.raises(InvalidProposal):
        alice.commit(GID, extensions=[Extension(0xFF00, b"topic")])
    assert alice.epoch(GID) == 1
