"""Content authentication and message protection (RFC 9420 §6.1-§6.3).

PublicMessage: signature over FramedContentTBS plus a membership tag for member senders.
PrivateMessage: content sealed with a secret-tree ratchet key (nonce XOR reuse guard) and the
sender identity sealed under a key derived from the sender-data secret and a ciphertext sample.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .codec import Reader, Writer, opaque_bytes
from .errors import AuthenticationError, DecodeError, InvalidMessage
from .framing import (
    AuthenticatedContent,
    ContentType,
    FramedContent,
    FramedContentAuthData,
    PrivateMessage,
    PublicMessage,
    Sender,
    SenderType,
    WireFormat,
    read_content,
    write_content,
)
from .group_context import GroupContext
from .leaf_node import PROTOCOL_VERSION_MLS10
from .secret_tree import RatchetType, SecretTree, sender_data_key_nonce
from .suites import CipherSuite


def framed_content_tbs(
    wire_format: WireFormat, content: FramedContent, context: GroupContext | None
) -> bytes:
    """FramedContentTBS; member and new-member-commit senders bind the GroupContext."""
    w = Writer()
    w.u16(PROTOCOL_VERSION_MLS10)
    w.u16(wire_format)
    content.encode(w)
    if content.sender.sender_type in (SenderType.MEMBER, SenderType.NEW_MEMBER_COMMIT):
        if context is None:
            raise InvalidMessage("member content must be signed with a GroupContext")
        context.encode(w)
    return w.getvalue()


def sign_content(
    cs: CipherSuite,
    wire_format: WireFormat,
    content: FramedContent,
    sig_priv: bytes,
    context: GroupContext | None,
    confirmation_tag: bytes | None = None,
) -> AuthenticatedContent:
    """Sign ``content``; commits must carry their confirmation tag."""
    if (content.content_type == ContentType.COMMIT) != (confirmation_tag is not None):
        raise InvalidMessage("confirmation_tag is required exactly for commits")
    tbs = framed_content_tbs(wire_format, content, context)
    sig = cs.sign_with_label(sig_priv, "FramedContentTBS", tbs)
    return AuthenticatedContent(wire_format, content, FramedContentAuthData(sig, confirmation_tag))


def verify_content(
    cs: CipherSuite, auth: AuthenticatedContent, sig_pub: bytes, context: GroupContext | None
) -> None:
    """Verify the content signature; raises :class:`InvalidSignature`."""
    tbs = framed_content_tbs(auth.wire_format, auth.content, context)
    cs.verify_with_label(sig_pub, "FramedContentTBS", tbs, auth.auth.signature)


def _membership_tag(
    cs: CipherSuite, membership_key: bytes, auth: AuthenticatedContent, context: GroupContext
) -> bytes:
    w = Writer()
    w.raw(framed_content_tbs(auth.wire_format, auth.content, context))
    auth.auth.encode_for(w, auth.content.content_type)
    return cs.mac(membership_key, w.getvalue())


def protect_public(
    cs: CipherSuite, auth: AuthenticatedContent, membership_key: bytes, context: GroupContext
) -> PublicMessage:
    """Wrap signed content as a PublicMessage (application data is not allowed)."""
    if auth.wire_format != WireFormat.PUBLIC_MESSAGE:
        raise InvalidMessage("content was signed for another wire format")
    if auth.content.content_type == ContentType.APPLICATION:
        raise InvalidMessage("application data must not be sent as a PublicMessage")
    tag = None
    if auth.content.sender.sender_type == SenderType.MEMBER:
        tag = _membership_tag(cs, membership_key, auth, context)
    return PublicMessage(auth.content, auth.auth, tag)


def unprotect_public(
    cs: CipherSuite,
    msg: PublicMessage,
    membership_key: bytes,
    context: GroupContext,
    sig_pub: bytes,
    *,
    received: bytes | None = None,
) -> AuthenticatedContent:
    """Check group, epoch, membership tag and signature; return the authenticated content.

    Args:
        received: the MLSMessage bytes ``msg`` was decoded from.  The membership tag and
            the signature are then checked over those very bytes instead of a re-encoding
            of the decoded content: cheaper for a large message, and what was received is
            what is authenticated.
    """
    content = msg.content
    if content.group_id != context.group_id or content.epoch != context.epoch:
        raise InvalidMessage("PublicMessage for another group or epoch")
    if content.content_type == ContentType.APPLICATION:
        raise InvalidMessage("application data must not be sent as a PublicMessage")
    auth = AuthenticatedContent(WireFormat.PUBLIC_MESSAGE, content, msg.auth)
    auth_bytes = _auth_bytes(msg.auth, content.content_type)
    if received is None:
        tbs = framed_content_tbs(auth.wire_format, content, context)
    else:
        tbs = _received_tbs(received, msg, auth_bytes, context)
    if content.sender.sender_type == SenderType.MEMBER:
        if msg.membership_tag is None:
            raise AuthenticationError("missing membership tag")
        cs.verify_mac(membership_key, tbs + auth_bytes, msg.membership_tag)
    cs.verify_with_label(sig_pub, "FramedContentTBS", tbs, auth.auth.signature)
    return auth


def _received_tbs(
    received: bytes, msg: PublicMessage, auth_bytes: bytes, context: GroupContext
) -> bytes:
    """FramedContentTBS cut from the received MLSMessage bytes.

    The MLSMessage starts with the same version and wire format as FramedContentTBS and
    then carries FramedContent, the auth data and the membership tag, each encoded in the
    one minimal way the strict decoder accepts; so the content ends where the (re-encoded,
    small) auth data and tag begin, counted from the end.
    """
    tag = b"" if msg.membership_tag is None else opaque_bytes(msg.membership_tag)
    auth_end = len(received) - len(tag)
    content_end = auth_end - len(auth_bytes)
    if (
        received[:2] != PROTOCOL_VERSION_MLS10.to_bytes(2, "big")
        or received[2:4] != WireFormat.PUBLIC_MESSAGE.to_bytes(2, "big")
        or received[content_end:auth_end] != auth_bytes
        or received[auth_end:] != tag
    ):
        raise InvalidMessage("the received bytes are not this PublicMessage")
    w = Writer()
    w.raw(received[:content_end])
    if msg.content.sender.sender_type in (SenderType.MEMBER, SenderType.NEW_MEMBER_COMMIT):
        context.encode(w)
    return w.getvalue()


def _auth_bytes(auth: FramedContentAuthData, ct: ContentType) -> bytes:
    w = Writer()
    auth.encode_for(w, ct)
    return w.getvalue()


@dataclass(frozen=True, slots=True)
class SenderData:
    """Decrypted sender data of a PrivateMessage."""

    leaf_index: int
    generation: int
    reuse_guard: bytes


def _content_aad(group_id: bytes, epoch: int, ct: ContentType, authenticated_data: bytes) -> bytes:
    w = Writer()
    w.opaque(group_id)
    w.u64(epoch)
    w.u8(ct)
    w.opaque(authenticated_data)
    return w.getvalue()


def _sender_aad(group_id: bytes, epoch: int, ct: ContentType) -> bytes:
    w = Writer()
    w.opaque(group_id)
    w.u64(epoch)
    w.u8(ct)
    return w.getvalue()


def _ratchet_for(ct: ContentType) -> RatchetType:
    return RatchetType.APPLICATION if ct == ContentType.APPLICATION else RatchetType.HANDSHAKE


def _guarded(nonce: bytes, reuse_guard: bytes) -> bytes:
    head = bytes(a ^ b for a, b in zip(nonce[:4], reuse_guard, strict=True))
    return head + nonce[4:]


def protect_private(
    cs: CipherSuite,
    auth: AuthenticatedContent,
    tree: SecretTree,
    sender_data_secret: bytes,
    padding: int = 0,
    reuse_guard: bytes | None = None,
) -> tuple[PrivateMessage, SecretTree]:
    """Encrypt signed member content; returns the message and the successor secret tree."""
    content = auth.content
    if auth.wire_format != WireFormat.PRIVATE_MESSAGE:
        raise InvalidMessage("content was signed for another wire format")
    if content.sender.sender_type != SenderType.MEMBER:
        raise InvalidMessage("only members can send PrivateMessages")
    ct = content.content_type
    kn, tree = tree.next_key(content.sender.index, _ratchet_for(ct))
    guard = os.urandom(4) if reuse_guard is None else reuse_guard
    if len(guard) != 4:
        raise InvalidMessage("reuse guard must be 4 bytes")
    body = Writer()
    write_content(body, content.content)
    auth.auth.encode_for(body, ct)
    body.raw(bytes(padding))
    ciphertext = cs.aead_seal(
        kn.key,
        _guarded(kn.nonce, guard),
        _content_aad(content.group_id, content.epoch, ct, content.authenticated_data),
        body.getvalue(),
    )
    sd = Writer()
    sd.u32(content.sender.index)
    sd.u32(kn.generation)
    sd.raw(guard)
    sd_key, sd_nonce = sender_data_key_nonce(cs, sender_data_secret, ciphertext)
    enc_sd = cs.aead_seal(
        sd_key, sd_nonce, _sender_aad(content.group_id, content.epoch, ct), sd.getvalue()
    )
    msg = PrivateMessage(
        content.group_id, content.epoch, ct, content.authenticated_data, enc_sd, ciphertext
    )
    return msg, tree


def decrypt_sender_data(
    cs: CipherSuite, msg: PrivateMessage, sender_data_secret: bytes
) -> SenderData:
    """Open the encrypted sender data."""
    key, nonce = sender_data_key_nonce(cs, sender_data_secret, msg.ciphertext)
    plain = cs.aead_open(
        key,
        nonce,
        _sender_aad(msg.group_id, msg.epoch, msg.content_type),
        msg.encrypted_sender_data,
    )
    r = Reader(plain)
    sd = SenderData(r.u32(), r.u32(), r.fixed(4))
    r.finish()
    return sd


def unprotect_private(
    cs: CipherSuite,
    msg: PrivateMessage,
    tree: SecretTree,
    sender_data_secret: bytes,
    context: GroupContext,
    sig_pub_of: dict[int, bytes],
    sender_data: SenderData | None = None,
) -> tuple[AuthenticatedContent, SecretTree]:
    """Decrypt and verify a PrivateMessage; ``sig_pub_of`` maps leaf index to signature key.

    ``sender_data`` is the result of :func:`decrypt_sender_data` when the caller already
    needed it (to load the sender's ratchet), so it is not decrypted twice.
    """
    if msg.group_id != context.group_id or msg.epoch != context.epoch:
        raise InvalidMessage("PrivateMessage for another group or epoch")
    sd = decrypt_sender_data(cs, msg, sender_data_secret) if sender_data is None else sender_data
    if sd.leaf_index not in sig_pub_of:
        raise InvalidMessage(f"unknown sender leaf {sd.leaf_index}")
    kn, tree = tree.get_key(sd.leaf_index, _ratchet_for(msg.content_type), sd.generation)
    plain = cs.aead_open(
        kn.key,
        _guarded(kn.nonce, sd.reuse_guard),
        _content_aad(msg.group_id, msg.epoch, msg.content_type, msg.authenticated_data),
        msg.ciphertext,
    )
    r = Reader(plain)
    body = read_content(r, msg.content_type)
    auth_data = FramedContentAuthData.decode_for(r, msg.content_type)
    if any(r.fixed(r.remaining)):
        raise DecodeError("non-zero padding in PrivateMessageContent")
    content = FramedContent(
        msg.group_id,
        msg.epoch,
        Sender(SenderType.MEMBER, sd.leaf_index),
        msg.authenticated_data,
        body,
    )
    auth = AuthenticatedContent(WireFormat.PRIVATE_MESSAGE, content, auth_data)
    verify_content(cs, auth, sig_pub_of[sd.leaf_index], context)
    return auth, tree
