"""What a committer takes from its queue (``select_committable``), proposal by proposal.

The rule: a commit never fails because of what others queued.  Invalid or superseded
queued proposals are left out, and so are those that conflict with one another or with
the committer's own proposals — including Updates and Adds whose leaf would not support
the extensions a GroupContextExtensions in the same commit brings.
"""

from __future__ import annotations

import os

from mls.native.key_package import KeyPackage
from mls.native.leaf_node import (
    Capabilities,
    Credential,
    CredentialType,
    Extension,
    LeafNode,
    LeafNodeSource,
    Lifetime,
)
from mls.native.proposals import (
    Add,
    GroupContextExtensions,
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    PskType,
    Remove,
)
from mls.native.tree import RatchetTree
from mls.native.validation import (
    PendingProposal,
    select_committable,
    validate_proposal_list,
)
from tests.native.helpers import CS, context

CUSTOM = 0xFF00


def _caps(*extensions: int) -> Capabilities:
    return Capabilities((1,), (CS.suite_id,), tuple(extensions), (), (1,))


def _leaf(name: bytes, *extensions: int) -> tuple[LeafNode, bytes]:
    sig_priv, sig_pub = CS.generate_signature_key_pair()
    _, enc_pub = CS.hpke.generate_key_pair()
    leaf = LeafNode(
        enc_pub,
        sig_pub,
        Credential(CredentialType.BASIC, identity=name),
        _caps(*extensions),
        LeafNodeSource.KEY_PACKAGE,
        Lifetime(0, 2**63),
        b"",
        (),
        b"",
    ).signed(CS, sig_priv, None, None)
    return leaf, sig_priv


def _key_package(name: bytes, *extensions: int) -> KeyPackage:
    leaf, sig_priv = _leaf(name, *extensions)
    _, init_pub = CS.hpke.generate_key_pair()
    kp = KeyPackage(1, CS.suite_id, init_pub, leaf, (), b"")
    signature = CS.sign_with_label(sig_priv, "KeyPackageTBS", kp.tbs())
    return KeyPackage(1, CS.suite_id, init_pub, leaf, (), signature)


def _tree(*extensions: int) -> RatchetTree:
    tree = RatchetTree((_leaf(b"m0", *extensions)[0],))
    for i in (1, 2):
        tree, _ = tree.add_leaf(_leaf(b"m%d" % i, *extensions)[0])
    return tree


def _queued(sender: int, body: object) -> PendingProposal:
    assert isinstance(body, Add | Remove | PreSharedKey | GroupContextExtensions)
    proposal = Proposal(body)
    ref = CS.make_proposal_ref(sender.to_bytes(4, "big") + proposal.to_bytes())
    return PendingProposal(sender, proposal, ref)


def _select(tree: RatchetTree, queued: list[PendingProposal], **kw: object) -> list[object]:
    chosen = select_committable(CS, tree, context(), queued, 0, now=None, **kw)  # type: ignore[arg-type]
    validate_proposal_list(CS, tree, context(), chosen, 0, has_path=True, now=None)
    return [p.proposal.body for p in chosen]


def test_newest_valid_group_context_extensions_wins() -> None:
    """Of several queued GroupContextExtensions, the newest valid one is committed."""
    tree = _tree(CUSTOM)
    older = GroupContextExtensions(())
    newer = GroupContextExtensions((Extension(CUSTOM, b"topic"),))
    invalid = GroupContextExtensions((Extension(0xFF01, b"unsupported"),))
    chosen = _select(tree, [_queued(1, older), _queued(2, newer), _queued(1, invalid)])
    assert chosen == [newer]


def test_an_add_that_cannot_support_the_new_extensions_is_left_out() -> None:
    """The committed GroupContextExtensions needs CUSTOM; a joiner without it stays out."""
    tree = _tree(CUSTOM)
    gce = GroupContextExtensions((Extension(CUSTOM, b"topic"),))
    fits, lacks = _key_package(b"fits", CUSTOM), _key_package(b"lacks")
    chosen = _select(tree, [_queued(1, gce), _queued(1, Add(lacks)), _queued(2, Add(fits))])
    assert chosen == [gce, Add(fits)]


def test_the_committers_own_add_wins_over_a_queued_extension_change() -> None:
    """A queued GroupContextExtensions that the committer's own Add cannot support is
    left out rather than failing the committer's commit."""
    tree = _tree(CUSTOM)
    gce = GroupContextExtensions((Extension(CUSTOM, b"topic"),))
    own = PendingProposal(0, Proposal(Add(_key_package(b"newcomer"))))
    assert _select(tree, [_queued(1, gce)], inline=[own]) == []


def test_duplicates_and_conflicts_are_left_out() -> None:
    """Second Add of one client or identity, second Remove of a leaf, a removal of the
    committer, a PSK twice, a bad nonce: each left out, the rest kept."""
    tree = _tree()
    kp = _key_package(b"dave")
    twin = _key_package(b"dave")
    member = _key_package(b"m1")
    psk = PreSharedKeyID(PskType.EXTERNAL, os.urandom(32), psk_id=b"p")
    bad_nonce = PreSharedKeyID(PskType.EXTERNAL, b"abc", psk_id=b"q")
    queued = [
        _queued(1, Add(kp)),
        _queued(2, Add(kp)),
        _queued(2, Add(twin)),
        _queued(2, Add(member)),
        _queued(1, Remove(2)),
        _queued(2, Remove(2)),
        _queued(1, Remove(0)),
        _queued(1, PreSharedKey(psk)),
        _queued(2, PreSharedKey(psk)),
        _queued(2, PreSharedKey(bad_nonce)),
    ]
    chosen = _select(tree, queued, psk_lookup=lambda _: bytes(32))
    assert chosen == [Remove(2), PreSharedKey(psk), Add(kp)]
