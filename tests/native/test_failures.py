"""Failure paths: tampered signatures, tags, trees and inputs raise the engine's own errors."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mls.native.codec import decode_exact
from mls.native.errors import (
    AuthenticationError,
    CryptoError,
    DecodeError,
    InvalidMessage,
    InvalidSignature,
    InvalidTree,
    KeyNotFound,
    UnsupportedCipherSuite,
)
from mls.native.framing import (
    FramedContent,
    MLSMessage,
    PrivateMessage,
    Sender,
    SenderType,
    WireFormat,
)
from mls.native.proposals import Proposal, Remove
from mls.native.protection import (
    protect_private,
    protect_public,
    sign_content,
    unprotect_private,
    unprotect_public,
)
from mls.native.secret_tree import RatchetType, SecretTree
from mls.native.suites import get_suite
from mls.native.tree import ParentNode, RatchetTree
from mls.native.treekem import create_update_path, merge_update_path, process_update_path

from .helpers import CS, GROUP_ID, context, signature_key_pair, small_group

SECRET = b"\x42" * 32


def test_unknown_suite_rejected() -> None:
    """An unregistered suite id raises UnsupportedCipherSuite."""
    with pytest.raises(UnsupportedCipherSuite):
        get_suite(0x1234)


def test_bad_signature_rejected() -> None:
    """VerifyWithLabel refuses a signature over different content."""
    priv, pub = signature_key_pair()
    sig = CS.sign_with_label(priv, "Label", b"content")
    with pytest.raises(InvalidSignature):
        CS.verify_with_label(pub, "Label", b"other content", sig)


def test_signature_label_is_bound() -> None:
    """A signature made under one label does not verify under another."""
    priv, pub = signature_key_pair()
    sig = CS.sign_with_label(priv, "LabelA", b"content")
    with pytest.raises(InvalidSignature):
        CS.verify_with_label(pub, "LabelB", b"content", sig)


def test_malformed_signature_key_wrapped() -> None:
    """A malformed public key surfaces as InvalidSignature, not a library ValueError."""
    with pytest.raises(InvalidSignature):
        CS.verify_with_label(b"\x01\x02", "Label", b"content", b"\x00" * 64)


def test_ecdsa_bad_signature_rejected() -> None:
    """P-256 ECDSA verification failures map to InvalidSignature."""
    cs = get_suite(2)
    priv = (7).to_bytes(32, "big")
    pub = cs.signature_public_key(priv)
    with pytest.raises(InvalidSignature):
        cs.verify_with_label(pub, "L", b"content", b"\x30\x06\x02\x01\x01\x02\x01\x01")


def test_hpke_bad_tag_rejected() -> None:
    """DecryptWithLabel of a tampered ciphertext raises AuthenticationError."""
    priv, pub = CS.hpke.generate_key_pair()
    kem_output, ct = CS.encrypt_with_label(pub, "Label", b"ctx", b"secret")
    tampered = ct[:-1] + bytes([ct[-1] ^ 1])
    with pytest.raises(AuthenticationError):
        CS.decrypt_with_label(priv, "Label", b"ctx", kem_output, tampered)


def test_hpke_context_is_bound() -> None:
    """DecryptWithLabel under a different context fails authentication."""
    priv, pub = CS.hpke.generate_key_pair()
    kem_output, ct = CS.encrypt_with_label(pub, "Label", b"ctx", b"secret")
    with pytest.raises(AuthenticationError):
        CS.decrypt_with_label(priv, "Label", b"other", kem_output, ct)


def test_hpke_invalid_public_key_wrapped() -> None:
    """A P-256 point not on the curve surfaces as CryptoError."""
    with pytest.raises(CryptoError):
        get_suite(2).encrypt_with_label(b"\x04" + b"\x01" * 64, "L", b"", b"pt")


def test_aead_bad_tag_rejected() -> None:
    """AEAD open with a wrong key raises AuthenticationError."""
    ct = CS.aead_seal(b"\x00" * 16, b"\x00" * 12, b"", b"data")
    with pytest.raises(AuthenticationError):
        CS.aead_open(b"\x01" * 16, b"\x00" * 12, b"", ct)


def test_mac_mismatch_rejected() -> None:
    """verify_mac refuses a wrong tag."""
    with pytest.raises(AuthenticationError):
        CS.verify_mac(b"key", b"data", b"\x00" * 32)


def test_public_message_bad_membership_tag() -> None:
    """A PublicMessage MAC'd with another membership key is rejected."""
    priv, pub = signature_key_pair()
    framed = FramedContent(GROUP_ID, 1, Sender(SenderType.MEMBER, 1), b"", Proposal(Remove(0)))
    auth = sign_content(CS, WireFormat.PUBLIC_MESSAGE, framed, priv, context())
    msg = protect_public(CS, auth, b"\x01" * 32, context())
    with pytest.raises(AuthenticationError):
        unprotect_public(CS, msg, b"\x02" * 32, context(), pub)


def test_public_message_bad_signature() -> None:
    """A PublicMessage signed by another key is rejected."""
    priv, _ = signature_key_pair()
    _, other_pub = signature_key_pair()
    framed = FramedContent(GROUP_ID, 1, Sender(SenderType.MEMBER, 1), b"", Proposal(Remove(0)))
    auth = sign_content(CS, WireFormat.PUBLIC_MESSAGE, framed, priv, context())
    msg = protect_public(CS, auth, b"\x01" * 32, context())
    with pytest.raises(InvalidSignature):
        unprotect_public(CS, msg, b"\x01" * 32, context(), other_pub)


def test_public_message_wrong_epoch() -> None:
    """A PublicMessage for another epoch is refused before any crypto."""
    priv, pub = signature_key_pair()
    framed = FramedContent(GROUP_ID, 1, Sender(SenderType.MEMBER, 1), b"", Proposal(Remove(0)))
    auth = sign_content(CS, WireFormat.PUBLIC_MESSAGE, framed, priv, context())
    msg = protect_public(CS, auth, b"\x01" * 32, context())
    with pytest.raises(InvalidMessage):
        unprotect_public(CS, msg, b"\x01" * 32, context(epoch=2), pub)


def _private_message() -> tuple[PrivateMessage, SecretTree, bytes]:
    priv, pub = signature_key_pair()
    framed = FramedContent(GROUP_ID, 1, Sender(SenderType.MEMBER, 1), b"", b"hello")
    auth = sign_content(CS, WireFormat.PRIVATE_MESSAGE, framed, priv, context())
    tree = SecretTree.create(CS, SECRET, 2)
    msg, _ = protect_private(CS, auth, tree, b"\x05" * 32)
    return msg, tree, pub


def test_private_message_bad_ciphertext_tag() -> None:
    """A flipped ciphertext bit fails AEAD authentication."""
    msg, tree, pub = _private_message()
    flipped = msg.ciphertext[:-1] + bytes([msg.ciphertext[-1] ^ 1])
    bad = replace(msg, ciphertext=flipped)
    with pytest.raises(AuthenticationError):
        unprotect_private(CS, bad, tree, b"\x05" * 32, context(), {1: pub})


def test_private_message_bad_sender_data_tag() -> None:
    """A wrong sender-data secret fails authentication of the sender data."""
    msg, tree, pub = _private_message()
    with pytest.raises(AuthenticationError):
        unprotect_private(CS, msg, tree, b"\x06" * 32, context(), {1: pub})


def test_private_message_replay_rejected() -> None:
    """The same generation cannot be decrypted twice from the successor tree."""
    msg, tree, pub = _private_message()
    _, tree2 = unprotect_private(CS, msg, tree, b"\x05" * 32, context(), {1: pub})
    with pytest.raises(KeyNotFound):
        unprotect_private(CS, msg, tree2, b"\x05" * 32, context(), {1: pub})


def test_private_message_authenticated_data_bound() -> None:
    """Changing the authenticated data breaks the content AEAD."""
    msg, tree, pub = _private_message()
    with pytest.raises(AuthenticationError):
        unprotect_private(
            CS, replace(msg, authenticated_data=b"x"), tree, b"\x05" * 32, context(), {1: pub}
        )


def test_application_data_not_public() -> None:
    """Application data cannot be framed as a PublicMessage."""
    priv, _ = signature_key_pair()
    framed = FramedContent(GROUP_ID, 1, Sender(SenderType.MEMBER, 1), b"", b"app")
    auth = sign_content(CS, WireFormat.PUBLIC_MESSAGE, framed, priv, context())
    with pytest.raises(InvalidMessage):
        protect_public(CS, auth, b"\x01" * 32, context())


def test_secret_tree_window_exceeded() -> None:
    """Generations too far ahead of the ratchet are refused."""
    tree = SecretTree.create(CS, SECRET, 4, max_forward=10)
    with pytest.raises(KeyNotFound):
        tree.get_key(0, RatchetType.APPLICATION, 11)


def test_secret_tree_out_of_order_then_used() -> None:
    """A skipped generation is usable once, then deleted."""
    tree = SecretTree.create(CS, SECRET, 4)
    k5, tree = tree.get_key(2, RatchetType.APPLICATION, 5)
    k3, tree = tree.get_key(2, RatchetType.APPLICATION, 3)
    assert k3.key != k5.key
    with pytest.raises(KeyNotFound):
        tree.get_key(2, RatchetType.APPLICATION, 3)


def test_secret_tree_evicts_beyond_window() -> None:
    """Skipped keys older than the retention window are gone."""
    tree = SecretTree.create(CS, SECRET, 2, window=2)
    _, tree = tree.get_key(0, RatchetType.HANDSHAKE, 10)
    with pytest.raises(KeyNotFound):
        tree.get_key(0, RatchetType.HANDSHAKE, 1)


def test_secret_tree_leaf_out_of_range() -> None:
    """Leaves outside the tree have no ratchet."""
    with pytest.raises(KeyNotFound):
        SecretTree.create(CS, SECRET, 2).get_key(2, RatchetType.HANDSHAKE, 0)


def test_tree_bad_parent_hash_rejected() -> None:
    """Changing a parent's key after an UpdatePath breaks parent-hash validity."""
    tree, sigs, _ = small_group(CS, 4)
    _, result, _ = create_update_path(CS, tree, 0, sigs[0], context())
    result.tree.verify(CS, GROUP_ID)
    node = result.tree.parent_node(1)
    assert node is not None
    other_key = CS.hpke.generate_key_pair()[1]
    bad = result.tree.with_nodes({1: ParentNode(other_key, node.parent_hash, ())})
    with pytest.raises(InvalidTree):
        bad.verify(CS, GROUP_ID)


def test_tree_bad_leaf_signature_rejected() -> None:
    """A leaf signed for another group fails tree verification."""
    tree, sigs, _ = small_group(CS, 2)
    _, result, _ = create_update_path(CS, tree, 0, sigs[0], context())
    with pytest.raises(InvalidTree):
        result.tree.verify(CS, b"another group")


def test_update_path_wrong_leaf_parent_hash_rejected() -> None:
    """An UpdatePath whose leaf parent hash does not match the path is rejected."""
    tree, sigs, _ = small_group(CS, 4)
    path, _, _ = create_update_path(CS, tree, 0, sigs[0], context())
    leaf = replace(path.leaf_node, parent_hash=b"\x00" * 32).signed(CS, sigs[0], GROUP_ID, 0)
    with pytest.raises(InvalidTree):
        merge_update_path(CS, tree, 0, replace(path, leaf_node=leaf), GROUP_ID)


def test_update_path_bad_leaf_signature_rejected() -> None:
    """An UpdatePath leaf with a forged signature is rejected."""
    tree, sigs, _ = small_group(CS, 4)
    path, _, _ = create_update_path(CS, tree, 0, sigs[0], context())
    leaf = replace(path.leaf_node, signature=b"\x00" * 64)
    with pytest.raises(InvalidSignature):
        merge_update_path(CS, tree, 0, replace(path, leaf_node=leaf), GROUP_ID)


def test_update_path_wrong_context_fails() -> None:
    """Processing an UpdatePath under another GroupContext fails authentication."""
    tree, sigs, privs = small_group(CS, 4)
    path, _, _ = create_update_path(CS, tree, 0, sigs[0], context())
    with pytest.raises(AuthenticationError):
        process_update_path(CS, tree, 0, path, context(epoch=9), privs[3])


def test_update_path_excluded_joiner_gets_nothing() -> None:
    """A joiner excluded from the path holds no key for it."""
    tree, sigs, privs = small_group(CS, 3)
    path, result, _ = create_update_path(CS, tree, 0, sigs[0], context(), excluded=[2])
    res, _ = process_update_path(CS, tree, 0, path, context(), privs[1], excluded=[2])
    assert res.commit_secret == result.commit_secret
    with pytest.raises(CryptoError):
        process_update_path(CS, tree, 0, path, context(), privs[2], excluded=[2])


def test_truncated_message_rejected() -> None:
    """A truncated MLSMessage raises DecodeError."""
    msg, _, _ = _private_message()
    raw = MLSMessage(msg).to_bytes()
    with pytest.raises(DecodeError):
        decode_exact(raw[:-1], MLSMessage.decode)


def test_trailing_bytes_in_message_rejected() -> None:
    """An MLSMessage followed by extra bytes raises DecodeError."""
    msg, _, _ = _private_message()
    with pytest.raises(DecodeError):
        decode_exact(MLSMessage(msg).to_bytes() + b"\x00", MLSMessage.decode)


def test_ratchet_tree_trailing_blank_rejected() -> None:
    """A serialized ratchet tree ending in a blank node is malformed."""
    with pytest.raises(DecodeError):
        RatchetTree.from_bytes(bytes.fromhex("0100"))


def test_unknown_wire_format_rejected() -> None:
    """An unregistered wire format raises DecodeError."""
    with pytest.raises(DecodeError):
        decode_exact(bytes.fromhex("00010009"), MLSMessage.decode)
