"""Builders for small, valid engine objects used by the unit tests."""

from __future__ import annotations

from mls.native.group_context import GroupContext
from mls.native.leaf_node import (
    Capabilities,
    Credential,
    CredentialType,
    LeafNode,
    LeafNodeSource,
    Lifetime,
)
from mls.native.suites import CipherSuite, get_suite
from mls.native.tree import RatchetTree
from mls.native.treekem import TreePrivate

CS: CipherSuite = get_suite(1)
GROUP_ID = b"unit-test-group"


def signature_key_pair(cs: CipherSuite = CS) -> tuple[bytes, bytes]:
    """Fresh signature key pair of the suite as (private, public) bytes."""
    return cs.generate_signature_key_pair()


def member_leaf(cs: CipherSuite, name: bytes) -> tuple[LeafNode, bytes, bytes]:
    """A signed key_package leaf; returns (leaf, signature_priv, encryption_priv)."""
    sig_priv, sig_pub = signature_key_pair(cs)
    enc_priv, enc_pub = cs.hpke.generate_key_pair()
    leaf = LeafNode(
        enc_pub,
        sig_pub,
        Credential(CredentialType.BASIC, identity=name),
        Capabilities((1,), (cs.suite_id,), (), (), (1,)),
        LeafNodeSource.KEY_PACKAGE,
        Lifetime(0, 2**64 - 1),
        b"",
        (),
        b"",
    ).signed(cs, sig_priv, None, None)
    return leaf, sig_priv, enc_priv


def small_group(cs: CipherSuite, n: int) -> tuple[RatchetTree, list[bytes], list[TreePrivate]]:
    """A tree of ``n`` members with blank parents; returns tree, sig privs, tree privates."""
    leaf, sig, enc = member_leaf(cs, b"member-0")
    tree = RatchetTree((leaf,))
    sigs, privs = [sig], [TreePrivate(0, enc, {})]
    for i in range(1, n):
        leaf, sig, enc = member_leaf(cs, f"member-{i}".encode())
        tree, index = tree.add_leaf(leaf)
        sigs.append(sig)
        privs.append(TreePrivate(index, enc, {}))
    return tree, sigs, privs


def context(cs: CipherSuite = CS, epoch: int = 1) -> GroupContext:
    """A GroupContext for the unit-test group."""
    return GroupContext(cs.suite_id, GROUP_ID, epoch, b"\x00" * 32, b"\x11" * 32)
