"""Message framing structs (RFC 9420 §6): content, authentication data, wire messages."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .codec import Reader, Struct, Writer
from .errors import DecodeError, EncodeError
from .key_package import KeyPackage
from .leaf_node import PROTOCOL_VERSION_MLS10
from .proposals import Commit, Proposal
from .welcome import GroupInfo, Welcome


class ContentType(IntEnum):
    """What a FramedContent carries."""

    APPLICATION = 1
    PROPOSAL = 2
    COMMIT = 3


class SenderType(IntEnum):
    """Who sent a message."""

    MEMBER = 1
    EXTERNAL = 2
    NEW_MEMBER_PROPOSAL = 3
    NEW_MEMBER_COMMIT = 4


class WireFormat(IntEnum):
    """Registered wire formats of MLSMessage."""

    PUBLIC_MESSAGE = 1
    PRIVATE_MESSAGE = 2
    WELCOME = 3
    GROUP_INFO = 4
    KEY_PACKAGE = 5


@dataclass(frozen=True, slots=True)
class Sender(Struct):
    """Sender of a message: member leaf, external sender index, or new member."""

    sender_type: SenderType
    index: int = 0

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.u8(self.sender_type)
        if self.sender_type in (SenderType.MEMBER, SenderType.EXTERNAL):
            w.u32(self.index)

    @classmethod
    def decode(cls, r: Reader) -> Sender:
        """Decode."""
        t = r.u8()
        try:
            st = SenderType(t)
        except ValueError:
            raise DecodeError(f"invalid sender type {t}") from None
        if st in (SenderType.MEMBER, SenderType.EXTERNAL):
            return cls(st, r.u32())
        return cls(st)


Content = bytes | Proposal | Commit


def content_type_of(content: Content) -> ContentType:
    """ContentType tag of a content body."""
    if isinstance(content, bytes):
        return ContentType.APPLICATION
    if isinstance(content, Proposal):
        return ContentType.PROPOSAL
    return ContentType.COMMIT


def write_content(w: Writer, content: Content) -> None:
    """Encode the body selected by the content type (without the tag)."""
    if isinstance(content, bytes):
        w.opaque(content)
    else:
        content.encode(w)


def read_content(r: Reader, ct: int) -> Content:
    """Decode the body selected by content type ``ct``."""
    if ct == ContentType.APPLICATION:
        return r.opaque()
    if ct == ContentType.PROPOSAL:
        return Proposal.decode(r)
    if ct == ContentType.COMMIT:
        return Commit.decode(r)
    raise DecodeError(f"invalid content type {ct}")


@dataclass(frozen=True, slots=True)
class FramedContent(Struct):
    """Content plus group, epoch, sender and authenticated data."""

    group_id: bytes
    epoch: int
    sender: Sender
    authenticated_data: bytes
    content: Content

    @property
    def content_type(self) -> ContentType:
        """Tag of the content body."""
        return content_type_of(self.content)

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.opaque(self.group_id)
        w.u64(self.epoch)
        self.sender.encode(w)
        w.opaque(self.authenticated_data)
        w.u8(self.content_type)
        write_content(w, self.content)

    @classmethod
    def decode(cls, r: Reader) -> FramedContent:
        """Decode."""
        gid, epoch, sender, aad = r.opaque(), r.u64(), Sender.decode(r), r.opaque()
        return cls(gid, epoch, sender, aad, read_content(r, r.u8()))


@dataclass(frozen=True, slots=True)
class FramedContentAuthData(Struct):
    """Signature, plus the confirmation tag for commits."""

    signature: bytes
    confirmation_tag: bytes | None = None

    def encode(self, w: Writer) -> None:
        """Encode (the tag is present exactly when it was decoded for a commit)."""
        w.opaque(self.signature)
        if self.confirmation_tag is not None:
            w.opaque(self.confirmation_tag)

    def encode_for(self, w: Writer, ct: ContentType) -> None:
        """Encode, checking that the tag presence matches the content type."""
        if (ct == ContentType.COMMIT) != (self.confirmation_tag is not None):
            raise EncodeError("confirmation_tag must be present exactly for commits")
        self.encode(w)

    @classmethod
    def decode_for(cls, r: Reader, ct: ContentType) -> FramedContentAuthData:
        """Decode for content type ``ct``."""
        sig = r.opaque()
        return cls(sig, r.opaque() if ct == ContentType.COMMIT else None)


@dataclass(frozen=True, slots=True)
class AuthenticatedContent(Struct):
    """FramedContent with its wire format and authentication data."""

    wire_format: WireFormat
    content: FramedContent
    auth: FramedContentAuthData

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.u16(self.wire_format)
        self.content.encode(w)
        self.auth.encode_for(w, self.content.content_type)

    @classmethod
    def decode(cls, r: Reader) -> AuthenticatedContent:
        """Decode."""
        wf = _wire_format(r.u16())
        content = FramedContent.decode(r)
        return cls(wf, content, FramedContentAuthData.decode_for(r, content.content_type))

    def confirmed_transcript_input(self) -> bytes:
        """ConfirmedTranscriptHashInput: wire format, content, signature."""
        w = Writer()
        w.u16(self.wire_format)
        self.content.encode(w)
        w.opaque(self.auth.signature)
        return w.getvalue()


def _wire_format(value: int) -> WireFormat:
    try:
        return WireFormat(value)
    except ValueError:
        raise DecodeError(f"invalid wire format {value}") from None


@dataclass(frozen=True, slots=True)
class PublicMessage(Struct):
    """Signed, MAC'd plaintext message."""

    content: FramedContent
    auth: FramedContentAuthData
    membership_tag: bytes | None

    def encode(self, w: Writer) -> None:
        """Encode."""
        self.content.encode(w)
        self.auth.encode_for(w, self.content.content_type)
        is_member = self.content.sender.sender_type == SenderType.MEMBER
        if is_member != (self.membership_tag is not None):
            raise EncodeError("membership_tag must be present exactly for member senders")
        if self.membership_tag is not None:
            w.opaque(self.membership_tag)

    @classmethod
    def decode(cls, r: Reader) -> PublicMessage:
        """Decode."""
        content = FramedContent.decode(r)
        auth = FramedContentAuthData.decode_for(r, content.content_type)
        is_member = content.sender.sender_type == SenderType.MEMBER
        return cls(content, auth, r.opaque() if is_member else None)


@dataclass(frozen=True, slots=True)
class PrivateMessage(Struct):
    """Encrypted message with encrypted sender data."""

    group_id: bytes
    epoch: int
    content_type: ContentType
    authenticated_data: bytes
    encrypted_sender_data: bytes
    ciphertext: bytes

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.opaque(self.group_id)
        w.u64(self.epoch)
        w.u8(self.content_type)
        w.opaque(self.authenticated_data)
        w.opaque(self.encrypted_sender_data)
        w.opaque(self.ciphertext)

    @classmethod
    def decode(cls, r: Reader) -> PrivateMessage:
        """Decode."""
        gid, epoch, ct = r.opaque(), r.u64(), r.u8()
        try:
            ctype = ContentType(ct)
        except ValueError:
            raise DecodeError(f"invalid content type {ct}") from None
        return cls(gid, epoch, ctype, r.opaque(), r.opaque(), r.opaque())


MessageBody = PublicMessage | PrivateMessage | Welcome | GroupInfo | KeyPackage

_WF_OF: dict[type[MessageBody], WireFormat] = {
    PublicMessage: WireFormat.PUBLIC_MESSAGE,
    PrivateMessage: WireFormat.PRIVATE_MESSAGE,
    Welcome: WireFormat.WELCOME,
    GroupInfo: WireFormat.GROUP_INFO,
    KeyPackage: WireFormat.KEY_PACKAGE,
}
_DECODERS: dict[WireFormat, type[MessageBody]] = {v: k for k, v in _WF_OF.items()}


@dataclass(frozen=True, slots=True)
class MLSMessage(Struct):
    """Top-level wire message."""

    body: MessageBody
    version: int = PROTOCOL_VERSION_MLS10

    @property
    def wire_format(self) -> WireFormat:
        """Wire format tag of the body."""
        return _WF_OF[type(self.body)]

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.u16(self.version)
        w.u16(self.wire_format)
        self.body.encode(w)

    @classmethod
    def decode(cls, r: Reader) -> MLSMessage:
        """Decode."""
        version = r.u16()
        if version != PROTOCOL_VERSION_MLS10:
            raise DecodeError(f"unsupported protocol version {version}")
        wf = _wire_format(r.u16())
        return cls(_DECODERS[wf].decode(r), version)


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """The fields of an MLSMessage a receiver can check before decoding its body.

    ``group_id``, ``epoch`` and ``content_type`` are set for PublicMessage and
    PrivateMessage, ``sender`` for PublicMessage only (a PrivateMessage's sender is
    encrypted).  Checking them first lets a receiver refuse a message for another group,
    epoch or sender at the cost of a few bytes of parsing, whatever the body holds.
    """

    wire_format: WireFormat
    group_id: bytes | None = None
    epoch: int | None = None
    sender: Sender | None = None
    content_type: ContentType | None = None


def peek_header(data: bytes) -> MessageHeader:
    """Parse only the header of an MLSMessage (no vector of the body is decoded).

    Raises:
        DecodeError: the header is malformed (truncated, unknown version or wire format).
    """
    r = Reader(data)
    version = r.u16()
    if version != PROTOCOL_VERSION_MLS10:
        raise DecodeError(f"unsupported protocol version {version}")
    wf = _wire_format(r.u16())
    if wf == WireFormat.PUBLIC_MESSAGE:
        gid, epoch, sender = r.opaque(), r.u64(), Sender.decode(r)
        r.sub()  # authenticated_data, skipped without copying
        return MessageHeader(wf, gid, epoch, sender, _content_type(r.u8()))
    if wf == WireFormat.PRIVATE_MESSAGE:
        gid, epoch = r.opaque(), r.u64()
        return MessageHeader(wf, gid, epoch, None, _content_type(r.u8()))
    return MessageHeader(wf)


def _content_type(value: int) -> ContentType:
    try:
        return ContentType(value)
    except ValueError:
        raise DecodeError(f"invalid content type {value}") from None
