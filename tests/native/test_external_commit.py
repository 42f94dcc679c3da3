"""External commits (RFC 9420 §12.4.3.2): GroupInfo export, joining, resync, validation."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from mls.native import (
    CryptoError,
    EpochMismatch,
    InvalidLeafNode,
    InvalidMessage,
    InvalidProposal,
    NativeEngine,
    UnknownGroup,
)
from mls.native.codec import decode_exact
from mls.native.errors import PendingCommitExists
from mls.native.external import EXTERNAL_INIT_LABEL, read_external_pub
from mls.native.framing import (
    FramedContentAuthData,
    MLSMessage,
    PublicMessage,
    SenderType,
    WireFormat,
)
from mls.native.group_context import GroupContext
from mls.native.hpke import Hpke
from mls.native.key_package import KeyPackage
from mls.native.leaf_node import ExtensionType
from mls.native.proposals import (
    Add,
    Commit,
    ExternalInit,
    Proposal,
    ProposalOrRef,
    Remove,
)
from mls.native.protection import framed_content_tbs
from mls.native.welcome import GroupInfo
from tests.native.engine_helpers import GID, agreed, group, member, rows


def info_of(raw: bytes) -> GroupInfo:
    """The GroupInfo inside an MLSMessage."""
    body = decode_exact(raw, MLSMessage.decode).body
    assert isinstance(body, GroupInfo)
    return body


def everyone_talks(engines: list[NativeEngine]) -> None:
    """Every member reads an application message from every other member."""
    for sender in engines:
        text = b"from " + sender.identity
        message = sender.encrypt(GID, text)
        for receiver in engines:
            if receiver is not sender:
                assert receiver.process(GID, message).data == text


def test_hpke_secret_export_matches_rfc_9180_vector() -> None:
    """SetupBaseR + Export reproduce RFC 9180 A.1.1 (the external init secret's primitive)."""
    hpke = Hpke("x25519", "sha256", "aes128gcm")
    sk_r = bytes.fromhex("4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8")
    enc = bytes.fromhex("37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431")
    info = bytes.fromhex("4f6465206f6e2061204772656369616e2055726e")
    exported = hpke.export_base_receiver(enc, sk_r, info, b"", 32)
    assert exported.hex() == "3853fe2b4035195a573ffc53856e77058e15d9ea064de3e59f4961d0095250ee"


def test_sender_and_receiver_export_the_same_init_secret() -> None:
    """The joiner's and the members' HPKE exports agree; a different key disagrees."""
    hpke = Hpke("x25519", "sha256", "aes128gcm")
    sk, pk = hpke.generate_key_pair()
    enc, secret = hpke.export_base_sender(pk, b"", EXTERNAL_INIT_LABEL, 32)
    assert hpke.export_base_receiver(enc, sk, b"", EXTERNAL_INIT_LABEL, 32) == secret
    other, _ = hpke.generate_key_pair()
    assert hpke.export_base_receiver(enc, other, b"", EXTERNAL_INIT_LABEL, 32) != secret


def test_group_info_is_signed_and_offers_external_pub_and_tree() -> None:
    """The GroupInfo verifies under the signer's key and carries the requested extensions."""
    alice, bob = group(["alice", "bob"])
    with_tree = info_of(bob.group_info(GID))
    without = info_of(bob.group_info(GID, with_ratchet_tree=False))
    types = {e.extension_type for e in with_tree.extensions}
    assert types == {ExtensionType.EXTERNAL_PUB, ExtensionType.RATCHET_TREE}
    assert {e.extension_type for e in without.extensions} == {ExtensionType.EXTERNAL_PUB}
    assert with_tree.signer == bob.own_leaf_index(GID)
    assert with_tree.group_context.epoch == alice.epoch(GID)
    assert len(read_external_pub(with_tree.extensions)) == 32
    assert with_tree.confirmation_tag == without.confirmation_tag


def test_external_join_puts_the_joiner_in_the_new_epoch_with_everyone() -> None:
    """Carol joins from Bob's GroupInfo; all three share the epoch and talk; Carol commits."""
    alice, bob = group(["alice", "bob"])
    carol = member("carol")
    gid, commit = carol.join_by_external_commit(bob.group_info(GID))
    assert gid == GID
    for m in (alice, bob):
        got = m.process(GID, commit)
        assert (got.identity, got.sender) == (b"carol", carol.own_leaf_index(GID))
    assert agreed([alice, bob, carol])
    everyone_talks([alice, bob, carol])
    update, _ = carol.commit(GID, force_path=True)
    for m in (alice, bob):
        m.process(GID, update)
    assert agreed([alice, bob, carol])


def test_external_commit_message_is_a_new_member_public_message() -> None:
    """§12.4.3.2: PublicMessage, sender new_member_commit, a path, only ExternalInit."""
    alice, _ = group(["alice", "bob"])
    _, raw = member("carol").join_by_external_commit(alice.group_info(GID))
    message = decode_exact(raw, MLSMessage.decode).body
    assert isinstance(message, PublicMessage) and message.membership_tag is None
    assert message.content.sender.sender_type == SenderType.NEW_MEMBER_COMMIT
    commit = message.content.content
    assert isinstance(commit, Commit) and commit.path is not None
    assert [type(p.proposal.body) for p in commit.proposals if p.proposal] == [ExternalInit]


def test_join_with_the_ratchet_tree_out_of_band() -> None:
    """A GroupInfo without the tree needs the tree handed over separately."""
    alice, bob = group(["alice", "bob"])
    info = alice.group_info(GID, with_ratchet_tree=False)
    with pytest.raises(InvalidMessage, match="ratchet tree"):
        member("carol").join_by_external_commit(info)
    carol = member("carol")
    _, commit = carol.join_by_external_commit(info, ratchet_tree=alice.ratchet_tree(GID))
    alice.process(GID, commit)
    bob.process(GID, commit)
    assert agreed([alice, bob, carol])


def test_a_wrong_out_of_band_tree_is_refused() -> None:
    """The supplied tree must hash to the GroupInfo's tree hash."""
    alice, _ = group(["alice", "bob"])
    other, _ = group(["xavier", "yann"])
    info = alice.group_info(GID, with_ratchet_tree=False)
    with pytest.raises(Exception, match="tree hash"):
        member("carol").join_by_external_commit(info, ratchet_tree=other.ratchet_tree(GID))


def test_resync_after_total_state_loss_replaces_the_old_leaf() -> None:
    """Carol loses everything (new storage, new key); she rejoins, her old leaf goes."""
    alice, bob, carol = group(["alice", "bob", "carol"])
    old_leaf = carol.own_leaf_index(GID)
    reborn = member("carol")
    _, commit = reborn.join_by_external_commit(alice.group_info(GID), resync=True)
    for m in (alice, bob):
        m.process(GID, commit)
    assert [who for _, who in alice.members(GID)] == [b"alice", b"bob", b"carol"]
    assert reborn.own_leaf_index(GID) == old_leaf  # the freed leaf is the leftmost blank
    assert agreed([alice, bob, reborn])
    gone = carol.process(GID, commit)
    assert gone.removed and carol.group_ids() == []
    everyone_talks([alice, bob, reborn])


def test_resync_with_local_state_replaces_it() -> None:
    """A member whose local state is broken can resync without dropping first."""
    alice, bob = group(["alice", "bob"])
    _, commit = bob.join_by_external_commit(alice.group_info(GID), resync=True)
    alice.process(GID, commit)
    assert agreed([alice, bob])
    everyone_talks([alice, bob])


def test_joining_a_group_we_are_in_needs_resync() -> None:
    """Without resync: refused while we hold the group, and our old leaf blocks the key."""
    alice, bob = group(["alice", "bob"])
    with pytest.raises(InvalidMessage, match="already a member"):
        bob.join_by_external_commit(alice.group_info(GID))
    bob.drop_group(GID)
    with pytest.raises(InvalidLeafNode, match="signature key"):
        bob.join_by_external_commit(alice.group_info(GID))
    with pytest.raises(InvalidMessage, match="no leaf of ours"):
        member("zoe").join_by_external_commit(alice.group_info(GID), resync=True)


def test_pending_external_join_merges_on_echo() -> None:
    """A pending external join exists only as a pending commit until the DS echoes it."""
    alice, bob = group(["alice", "bob"])
    carol = member("carol")
    _, commit = carol.join_by_external_commit(alice.group_info(GID), pending=True)
    assert carol.group_ids() == []
    pending = carol.pending_commit(GID)
    assert pending is not None and pending.external and pending.commit == commit
    for m in (alice, bob):
        m.process(GID, commit)
    assert carol.process(GID, commit).merged_pending_commit
    assert agreed([alice, bob, carol])
    everyone_talks([alice, bob, carol])


def test_two_external_joiners_race_and_the_loser_retries() -> None:
    """Two joiners use one GroupInfo; the DS takes one; the other clears and rejoins."""
    alice, bob = group(["alice", "bob"])
    info = alice.group_info(GID)
    carol, dave = member("carol"), member("dave")
    _, from_carol = carol.join_by_external_commit(info, pending=True)
    _, from_dave = dave.join_by_external_commit(info, pending=True)
    with pytest.raises(PendingCommitExists):
        dave.join_by_external_commit(info)
    for m in (alice, bob):
        m.process(GID, from_carol)
    carol.merge_pending_commit(GID)
    with pytest.raises(EpochMismatch):
        alice.process(GID, from_dave)
    dave.clear_pending_commit(GID)
    assert dave.group_ids() == [] and dave.pending_commit(GID) is None
    _, again = dave.join_by_external_commit(bob.group_info(GID))
    for m in (alice, bob, carol):
        m.process(GID, again)
    assert agreed([alice, bob, carol, dave])


def test_a_member_commit_and_an_external_join_race() -> None:
    """A member's pending commit loses to an external join: cleared, reported, continues."""
    alice, bob = group(["alice", "bob"])
    alice.commit(GID, force_path=True, pending=True)
    carol = member("carol")
    _, join = carol.join_by_external_commit(bob.group_info(GID))
    bob.process(GID, join)
    assert alice.process(GID, join).cleared_pending_commit
    assert agreed([alice, bob, carol])


def test_drop_of_a_pending_external_join() -> None:
    """drop_group also forgets a join that only exists as a pending commit."""
    alice, _ = group(["alice", "bob"])
    carol = member("carol")
    carol.join_by_external_commit(alice.group_info(GID), pending=True)
    carol.drop_group(GID)
    assert carol.pending_commit(GID) is None
    with pytest.raises(UnknownGroup):
        carol.drop_group(GID)


# ------------------------------------------------------------------ hostile external commits


@dataclass
class Hostile:
    """Alice and Bob, and Mallory's valid external commit for their group (not delivered)."""

    alice: NativeEngine
    bob: NativeEngine
    mallory: NativeEngine
    raw: bytes
    commit: Commit
    context: GroupContext

    def forged(self, proposals: tuple[ProposalOrRef, ...], *, path: bool = True) -> bytes:
        """Mallory's commit with another proposal list (or no path), validly re-signed by her."""
        message = decode_exact(self.raw, MLSMessage.decode).body
        assert isinstance(message, PublicMessage)
        content = replace(
            message.content, content=Commit(proposals, self.commit.path if path else None)
        )
        tbs = framed_content_tbs(WireFormat.PUBLIC_MESSAGE, content, self.context)
        signature = self.mallory.suite.sign_with_label(
            self.mallory._sig_priv, "FramedContentTBS", tbs
        )
        auth = FramedContentAuthData(signature, message.auth.confirmation_tag)
        return MLSMessage(PublicMessage(content, auth, None)).to_bytes()


def hostile_setup() -> Hostile:
    """A group and an external commit an attacker can re-sign at will."""
    alice, bob = group(["alice", "bob"])
    info = alice.group_info(GID)
    mallory = member("mallory")
    _, raw = mallory.join_by_external_commit(info, pending=True)
    message = decode_exact(raw, MLSMessage.decode).body
    assert isinstance(message, PublicMessage) and isinstance(message.content.content, Commit)
    return Hostile(alice, bob, mallory, raw, message.content.content, info_of(info).group_context)


def rejected(victim: NativeEngine, raw: bytes, error: type[Exception], match: str) -> None:
    """The victim refuses ``raw`` with ``error`` and its state is unchanged."""
    before = rows(victim.storage)
    with pytest.raises(error, match=match):
        victim.process(GID, raw)
    assert rows(victim.storage) == before


def test_external_commit_with_two_external_inits_is_rejected() -> None:
    """Exactly one ExternalInit."""
    h = hostile_setup()
    init = h.commit.proposals[0]
    rejected(h.alice, h.forged((init, init)), InvalidProposal, "exactly one")
    rejected(h.alice, h.forged(()), InvalidProposal, "exactly one")


def test_external_commit_with_an_add_is_rejected() -> None:
    """Only ExternalInit, a resync Remove and PreSharedKey are allowed."""
    h = hostile_setup()
    kp = decode_exact(member("eve").generate_key_package(), MLSMessage.decode).body
    assert isinstance(kp, KeyPackage)
    add = ProposalOrRef(proposal=Proposal(Add(kp)))
    rejected(h.alice, h.forged((h.commit.proposals[0], add)), InvalidProposal, "Add")


def test_external_commit_removing_someone_else_is_rejected() -> None:
    """A resync may only remove a leaf with the joiner's own credential."""
    h = hostile_setup()
    remove = ProposalOrRef(proposal=Proposal(Remove(1)))
    rejected(h.alice, h.forged((h.commit.proposals[0], remove)), InvalidProposal, "old leaf")


def test_external_commit_by_reference_or_without_path_is_rejected() -> None:
    """No proposals by reference; an UpdatePath is mandatory."""
    h = hostile_setup()
    by_ref = ProposalOrRef(reference=b"\x01" * 32)
    rejected(h.alice, h.forged((h.commit.proposals[0], by_ref)), InvalidProposal, "reference")
    rejected(h.alice, h.forged(h.commit.proposals, path=False), InvalidMessage, "UpdatePath")


def test_external_commit_with_a_bad_signature_or_tag_is_rejected() -> None:
    """A tampered signature or confirmation tag fails; nothing changes."""
    h = hostile_setup()
    message = decode_exact(h.raw, MLSMessage.decode).body
    assert isinstance(message, PublicMessage)
    sig = bytearray(message.auth.signature)
    sig[0] ^= 1
    bad_sig = replace(message, auth=replace(message.auth, signature=bytes(sig)))
    rejected(h.alice, MLSMessage(bad_sig).to_bytes(), CryptoError, ".")
    tag = message.auth.confirmation_tag
    assert tag is not None
    bad_tag = replace(message, auth=replace(message.auth, confirmation_tag=bytes(len(tag))))
    rejected(h.alice, MLSMessage(bad_tag).to_bytes(), CryptoError, "confirmation tag")


def test_external_commit_for_a_past_epoch_is_rejected() -> None:
    """A GroupInfo is good for one epoch only."""
    h = hostile_setup()
    commit, _ = h.alice.commit(GID, force_path=True)
    h.bob.process(GID, commit)
    rejected(h.bob, h.raw, EpochMismatch, "epoch")


def test_welcome_refused_while_an_external_join_is_pending() -> None:
    """One way into a group at a time: a pending external join blocks a Welcome."""
    alice, _ = group(["alice", "bob"])
    carol = member("carol")
    carol.join_by_external_commit(alice.group_info(GID), pending=True)
    _, welcome = alice.commit(GID, add=[carol.generate_key_package()])
    assert welcome is not None
    with pytest.raises(PendingCommitExists):
        carol.join(welcome)
    carol.clear_pending_commit(GID)
    assert carol.join(welcome) == GID
