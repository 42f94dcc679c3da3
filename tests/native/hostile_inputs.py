"""Builders of the oversized and crafted inputs of the resource tests: each returns
bytes an attacker could send, built from public data
(a victim's key package) or from the attacker's own member state.
"""

from __future__ import annotations

import os

from mls.native import tree_math as tm
from mls.native.codec import Writer, encode_varint
from mls.native.engine import NativeEngine
from mls.native.framing import ContentType, SenderType, WireFormat
from mls.native.group_context import GroupContext
from mls.native.key_package import KeyPackage
from mls.native.key_schedule import epoch_from_joiner, welcome_key_nonce, welcome_secret
from mls.native.leaf_node import (
    PROTOCOL_VERSION_MLS10,
    Capabilities,
    Credential,
    CredentialType,
    Extension,
    ExtensionType,
    LeafNode,
    LeafNodeSource,
    Lifetime,
)
from mls.native.proposals import HPKECiphertext
from mls.native.suites import CipherSuite
from mls.native.tree import Node, ParentNode, RatchetTree
from mls.native.welcome import EncryptedGroupSecrets, GroupInfo, GroupSecrets, Welcome

MB = 1024 * 1024


def _header(wire_format: WireFormat) -> bytes:
    w = Writer()
    w.u16(PROTOCOL_VERSION_MLS10)
    w.u16(wire_format)
    return w.getvalue()


def _long_vector(item: bytes, size: int) -> bytes:
    """A vector of copies of ``item`` filling about ``size`` bytes (4-byte length)."""
    body = item * (size // len(item))
    return encode_varint(len(body)) + body


def commit_of_empty_refs(group_id: bytes, epoch: int, sender: int, size: int) -> bytes:
    """A PublicMessage commit whose proposal list is ``size`` bytes of empty references."""
    w = Writer()
    w.raw(_header(WireFormat.PUBLIC_MESSAGE))
    w.opaque(group_id)
    w.u64(epoch)
    w.u8(SenderType.MEMBER)
    w.u32(sender)
    w.opaque(b"")
    w.u8(ContentType.COMMIT)
    w.raw(_long_vector(b"\x02\x00", size))  # ProposalOrRef reference, empty
    w.u8(0)  # no path
    w.opaque(bytes(64))  # signature
    w.opaque(bytes(32))  # confirmation tag
    w.opaque(bytes(32))  # membership tag
    return w.getvalue()


def commit_of_full_refs(group_id: bytes, epoch: int, sender: int, count: int) -> bytes:
    """A PublicMessage commit of ``count`` 32-byte references: decodes, then fails the MAC."""
    w = Writer()
    w.raw(_header(WireFormat.PUBLIC_MESSAGE))
    w.opaque(group_id)
    w.u64(epoch)
    w.u8(SenderType.MEMBER)
    w.u32(sender)
    w.opaque(b"")
    w.u8(ContentType.COMMIT)
    w.raw(_long_vector(b"\x02\x20" + os.urandom(32), count * 34))
    w.u8(0)
    w.opaque(bytes(64))
    w.opaque(bytes(32))
    w.opaque(bytes(32))
    return w.getvalue()


def welcome_of_empty_entries(size: int) -> bytes:
    """A Welcome whose secrets list is ``size`` bytes of empty entries."""
    w = Writer()
    w.raw(_header(WireFormat.WELCOME))
    w.u16(1)
    w.raw(_long_vector(b"\x00\x00\x00", size))
    w.opaque(b"")
    return w.getvalue()


def key_package_of_many_suites(engine: NativeEngine, size: int) -> bytes:
    """A key package of ``engine`` whose leaf lists ``size`` bytes of cipher suites."""
    w = Writer()
    w.raw(_header(WireFormat.KEY_PACKAGE))
    w.u16(PROTOCOL_VERSION_MLS10)
    w.u16(1)
    w.opaque(os.urandom(32))  # init key
    w.opaque(os.urandom(32))  # encryption key
    w.opaque(engine._identity.signature_key)
    engine._identity.credential.encode(w)
    w.raw(b"\x02\x00\x01")  # versions
    w.raw(_long_vector(b"\x00\x01", size))  # cipher suites
    w.raw(b"\x00\x00\x02\x00\x01")  # extensions, proposals, credentials
    w.u8(LeafNodeSource.KEY_PACKAGE)
    w.u64(0)
    w.u64(2**63)
    w.opaque(b"")  # leaf extensions
    w.opaque(bytes(64))  # leaf signature
    w.opaque(b"")  # key package extensions
    w.opaque(bytes(64))  # signature
    return w.getvalue()


def member_leaf(cs: CipherSuite, name: bytes) -> tuple[LeafNode, bytes]:
    """A signed key_package leaf for ``name``; returns it and its signature private key."""
    sig_priv, sig_pub = cs.generate_signature_key_pair()
    _, enc_pub = cs.hpke.generate_key_pair()
    leaf = LeafNode(
        enc_pub,
        sig_pub,
        Credential(CredentialType.BASIC, identity=name),
        Capabilities((1,), (cs.suite_id,), (), (), (1,)),
        LeafNodeSource.KEY_PACKAGE,
        Lifetime(0, 2**63),
        b"",
        (),
        b"",
    ).signed(cs, sig_priv, None, None)
    return leaf, sig_priv


def crafted_welcome(
    cs: CipherSuite,
    victim: KeyPackage,
    *,
    members: int = 1,
    duplicate_identity: bool = False,
    unmerged_copies: int = 0,
) -> bytes:
    """A correctly encrypted and signed Welcome to ``victim`` with a hostile ratchet tree.

    The tree holds the signer at leaf 0, ``members - 1`` other signed leaves, and the
    victim's leaf last.  ``duplicate_identity`` names the last of the others like the
    signer; ``unmerged_copies`` lists the victim's leaf that many times among its parent's
    unmerged leaves.  Everything an attacker needs is the victim's
    public key package.
    """
    signer, signer_priv = member_leaf(cs, b"signer")
    leaves = [signer]
    for i in range(1, members):
        name = b"signer" if duplicate_identity and i == members - 1 else b"m%d" % i
        leaves.append(member_leaf(cs, name)[0])
    leaves.append(victim.leaf_node)
    tree = RatchetTree((leaves[0],))
    for leaf in leaves[1:]:
        tree, _ = tree.add_leaf(leaf)
    if unmerged_copies:
        # The victim's parent lists the victim over and over; the root gets a key, so
        # checking the root's parent hash walks that parent's resolution (the quadratic
        # case: every entry compared with the set of all the others).
        victim_index = len(leaves) - 1
        victim_node = 2 * victim_index
        parent = tm.parent(victim_node, tree.n_leaves)
        changes: dict[int, Node | None] = {
            parent: ParentNode(
                cs.hpke.generate_key_pair()[1], b"", (victim_index,) * unmerged_copies
            ),
            tree.root: ParentNode(cs.hpke.generate_key_pair()[1], b"", ()),
        }
        tree = tree.with_nodes(changes)
    gid = b"crafted group"
    context = GroupContext(cs.suite_id, gid, 1, tree.tree_hash(cs), os.urandom(cs.hash_size))
    joiner = os.urandom(cs.hash_size)
    epoch = epoch_from_joiner(cs, joiner, None, context.to_bytes())
    tag = epoch.confirmation_tag(context.confirmed_transcript_hash)
    extensions = (Extension(ExtensionType.RATCHET_TREE, tree.to_bytes()),)
    info = GroupInfo(context, extensions, tag, 0, b"")
    info = GroupInfo(
        info.group_context,
        info.extensions,
        tag,
        0,
        cs.sign_with_label(signer_priv, "GroupInfoTBS", info.tbs()),
    )
    key, nonce = welcome_key_nonce(cs, welcome_secret(cs, joiner, None))
    encrypted_info = cs.aead_seal(key, nonce, b"", info.to_bytes())
    secrets = GroupSecrets(joiner, None, ())
    kem_output, ct = cs.encrypt_with_label(
        victim.init_key, "Welcome", encrypted_info, secrets.to_bytes()
    )
    entry = EncryptedGroupSecrets(victim.ref(cs), HPKECiphertext(kem_output, ct))
    w = Writer()
    w.raw(_header(WireFormat.WELCOME))
    Welcome(cs.suite_id, (entry,), encrypted_info).encode(w)
    return w.getvalue()


def key_package_of_many_extensions(engine: NativeEngine, count: int, identity: bytes) -> bytes:
    """A correctly signed key package of ``engine`` naming ``identity``, whose leaf carries
    ``count`` custom extensions and advertises the same ``count`` types (a pairwise check of
    the two lists costs ``count``² comparisons)."""
    from dataclasses import replace

    from mls.native.engine import _key_package
    from mls.native.framing import MLSMessage

    cs = engine.suite
    kp = _key_package(engine.generate_key_package())
    types = tuple(range(0x1000, 0x1000 + count))
    leaf = replace(
        kp.leaf_node,
        credential=Credential(CredentialType.BASIC, identity=identity),
        capabilities=replace(kp.leaf_node.capabilities, extensions=types),
        extensions=tuple(Extension(t, b"") for t in types),
    ).signed(cs, engine._sig_priv, None, None)
    kp = replace(kp, leaf_node=leaf)
    kp = replace(kp, signature=cs.sign_with_label(engine._sig_priv, "KeyPackageTBS", kp.tbs()))
    return MLSMessage(kp).to_bytes()
