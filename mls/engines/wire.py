"""The few RFC 9420 wire-format reads the client makes itself, before any engine parses.

The clear-text header of a group message (RFC 9420 §6) says which group and epoch it is
for, whether it is a handshake, and carries its authenticated data.  The client reads it
to refuse a message for a future or forgotten epoch with the same
:class:`mls.errors.EpochMismatch` on every engine, to know when a commit is coming (so it
can report what the commit changed), and to hand the authenticated data back on receipt
(it is covered by the message's signature or AEAD tag, so once the engine has accepted the
message it is authentic).  Every read is bounds-checked; malformed input raises
:class:`mls.errors.InvalidMessage`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from mls.errors import InvalidMessage

__all__ = ["MessageHeader", "Reader", "WireFormat", "encode_varint", "peek_header"]

_MLS10 = 1
_T = TypeVar("_T")


class WireFormat:
    """Registered MLSMessage wire formats (RFC 9420 §6)."""

    PUBLIC_MESSAGE = 1
    PRIVATE_MESSAGE = 2
    WELCOME = 3
    GROUP_INFO = 4
    KEY_PACKAGE = 5


_CONTENT_APPLICATION = 1
_CONTENT_PROPOSAL = 2
_CONTENT_COMMIT = 3
_SENDER_MEMBER = 1
_SENDER_EXTERNAL = 2


class Reader:
    """A bounds-checked reader of TLS presentation-language bytes."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes):
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise InvalidMessage("message is truncated")
        out = self._data[self._pos : end]
        self._pos = end
        return out

    def uint(self, n: int) -> int:
        """A big-endian unsigned integer of ``n`` bytes."""
        return int.from_bytes(self.take(n), "big")

    def varint(self) -> int:
        """An RFC 9000 variable-length integer, minimally encoded (RFC 9420 §2.1.2)."""
        first = self.uint(1)
        length = 1 << (first >> 6)
        if length == 8:
            raise InvalidMessage("invalid variable-length integer")
        value = first & 0x3F
        for byte in self.take(length - 1):
            value = (value << 8) | byte
        if (length == 2 and value < 1 << 6) or (length == 4 and value < 1 << 14):
            raise InvalidMessage("variable-length integer is not minimally encoded")
        return value

    def opaque(self) -> bytes:
        """A variable-length opaque vector."""
        return self.take(self.varint())

    def vector(self) -> Reader:
        """A variable-length vector, as its own reader."""
        return Reader(self.opaque())

    def items(self, read: Callable[[Reader], _T]) -> Iterator[_T]:
        """Read items until the end."""
        while not self.at_end():
            yield read(self)

    def at_end(self) -> bool:
        """Whether every byte was read."""
        return self._pos == len(self._data)

    def finish(self) -> None:
        """Refuse trailing bytes."""
        if not self.at_end():
            raise InvalidMessage("trailing bytes after message")


def encode_varint(n: int) -> bytes:
    """An RFC 9420 variable-length integer (n < 2**30)."""
    if n < 1 << 6:
        return n.to_bytes(1, "big")
    if n < 1 << 14:
        return (0x4000 | n).to_bytes(2, "big")
    return (0x8000_0000 | n).to_bytes(4, "big")


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """The clear-text part of an MLSMessage.

    ``group_id``, ``epoch`` and ``content_type`` are ``None`` for a Welcome, GroupInfo or
    KeyPackage.  ``authenticated_data`` is the sender's AAD (empty if none).
    """

    wire_format: int
    group_id: bytes | None = None
    epoch: int | None = None
    content_type: int | None = None
    authenticated_data: bytes = b""

    @property
    def is_group_message(self) -> bool:
        """A PublicMessage or PrivateMessage."""
        return self.wire_format in (WireFormat.PUBLIC_MESSAGE, WireFormat.PRIVATE_MESSAGE)

    @property
    def is_application(self) -> bool:
        """Application data (only ever a PrivateMessage)."""
        return self.content_type == _CONTENT_APPLICATION

    @property
    def is_commit(self) -> bool:
        """A commit (a new epoch once processed)."""
        return self.content_type == _CONTENT_COMMIT


def peek_header(data: bytes) -> MessageHeader:
    """Read the header of an MLSMessage without verifying anything.

    Raises:
        InvalidMessage: not an MLS 1.0 message, or its header is malformed.
    """
    r = Reader(data)
    if r.uint(2) != _MLS10:
        raise InvalidMessage("not an MLS 1.0 message")
    wire_format = r.uint(2)
    if wire_format == WireFormat.PUBLIC_MESSAGE:
        group_id = r.opaque()
        epoch = r.uint(8)
        sender_type = r.uint(1)
        if sender_type in (_SENDER_MEMBER, _SENDER_EXTERNAL):
            r.uint(4)
        elif sender_type not in (3, 4):  # new_member_proposal, new_member_commit
            raise InvalidMessage("unknown sender type")
        aad = r.opaque()
        content_type = r.uint(1)
    elif wire_format == WireFormat.PRIVATE_MESSAGE:
        group_id = r.opaque()
        epoch = r.uint(8)
        content_type = r.uint(1)
        aad = r.opaque()
    elif wire_format in (WireFormat.WELCOME, WireFormat.GROUP_INFO, WireFormat.KEY_PACKAGE):
        return MessageHeader(wire_format)
    else:
        raise InvalidMessage("unknown MLS wire format")
    if content_type not in (_CONTENT_APPLICATION, _CONTENT_PROPOSAL, _CONTENT_COMMIT):
        raise InvalidMessage("unknown content type")
    return MessageHeader(wire_format, group_id, epoch, content_type, aad)
