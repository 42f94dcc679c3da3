"""Message receipts: the outcome of each processed message, stored with its state.

If a process dies after the vault commit of :meth:`process` but before its caller saw
the outcome, the caller delivers the message again; the engine would reject it (its
generation is consumed, its epoch is past).  The receipt, written in the same storage
operation as the state the message produced, lets the client return the stored
outcome instead (``replay=True``): every message is delivered exactly once.

A receipt holds the plaintext of an application message, encrypted in the vault like
every row.  The last ``retention`` receipts are kept (0 keeps none).
"""

from __future__ import annotations

import collections
import enum
import hashlib
import struct
from dataclasses import dataclass

from mls.errors import InvalidMessage
from mls.storage import GranularStorage

__all__ = ["DEFAULT_RECEIPT_RETENTION", "ReceiptLog", "Received", "ReceivedKind"]

#: Outcomes of the most recently processed messages kept for replay after a crash.
DEFAULT_RECEIPT_RETENTION = 256
_FORMAT = 1
_HEAD = struct.Struct(">BQBB")  # format, sequence number, kind, removed


class ReceivedKind(enum.StrEnum):
    """What processing a message found in it."""

    APPLICATION = "application"
    COMMIT = "commit"
    PROPOSAL = "proposal"


@dataclass(frozen=True, slots=True)
class Received:
    """The outcome of processing one group message.

    Attributes:
        kind: application data, a commit (new epoch), or a proposal held for the next commit.
        sender: the sender's (committer's) identity, or ``None`` if it is no longer in the tree.
        data: the plaintext of an application message, else ``None``.
        removed: this commit removed us; the group has been forgotten.
        replay: this message had been processed before (e.g. by a process that died
            before its caller saw the result); this is the stored outcome.
    """

    kind: ReceivedKind
    sender: bytes | None
    data: bytes | None = None
    removed: bool = False
    replay: bool = False


_KIND_CODES = {ReceivedKind.APPLICATION: 0, ReceivedKind.COMMIT: 1, ReceivedKind.PROPOSAL: 2}
_KINDS = {code: kind for kind, code in _KIND_CODES.items()}


def _optional(value: bytes | None) -> bytes:
    return b"\x00" if value is None else b"\x01" + len(value).to_bytes(4, "big") + value


def encode_receipt(seq: int, got: Received) -> bytes:
    """``format u8 | seq u64 | kind u8 | removed u8 | optional sender | optional data``."""
    head = _HEAD.pack(_FORMAT, seq, _KIND_CODES[got.kind], int(got.removed))
    return head + _optional(got.sender) + _optional(got.data)


def decode_receipt(row: bytes) -> tuple[int, Received]:
    """Inverse of :func:`encode_receipt`; the outcome comes back marked as a replay."""
    try:
        fmt, seq, kind, removed = _HEAD.unpack_from(row)
        if fmt != _FORMAT:
            raise ValueError("format")
        pos = _HEAD.size
        fields: list[bytes | None] = []
        for _ in range(2):
            if row[pos] == 0:
                fields.append(None)
                pos += 1
                continue
            if row[pos] != 1:
                raise ValueError("presence octet")
            n = int.from_bytes(row[pos + 1 : pos + 5], "big")
            if pos + 5 + n > len(row):
                raise ValueError("length")
            fields.append(row[pos + 5 : pos + 5 + n])
            pos += 5 + n
        if pos != len(row):
            raise ValueError("length")
        return seq, Received(_KINDS[kind], fields[0], fields[1], bool(removed), replay=True)
    except (ValueError, IndexError, KeyError, struct.error):
        raise InvalidMessage("stored message receipt is malformed") from None


class ReceiptLog:
    """The receipts of one client, in one storage category, oldest first.

    Not thread-safe on its own: the client calls it under its lock, inside the storage
    operation that also holds the state the message produced.
    """

    __slots__ = ("_category", "_next", "_order", "_retention", "_storage")

    def __init__(self, storage: GranularStorage, category: str, retention: int) -> None:
        if isinstance(retention, bool) or not isinstance(retention, int):
            raise TypeError("receipt_retention must be an int")
        if retention < 0:
            raise ValueError("receipt_retention must be >= 0")
        self._storage = storage
        self._category = category
        self._retention = retention
        self._order: collections.deque[bytes] = collections.deque()
        self._next = 0
        self.reload()

    @staticmethod
    def key(group_id: bytes, message: bytes) -> bytes:
        """The row key of a message's receipt: SHA-256 of the group id and the message."""
        return hashlib.sha256(len(group_id).to_bytes(4, "big") + group_id + message).digest()

    def reload(self) -> None:
        """Rebuild the order from storage (at start, and after a rolled-back call)."""
        rows = sorted(
            (decode_receipt(row)[0], key) for key, row in self._storage.items(self._category)
        )
        self._order = collections.deque(key for _, key in rows)
        self._next = rows[-1][0] + 1 if rows else 0

    def lookup(self, group_id: bytes, message: bytes) -> Received | None:
        """The stored outcome of this message, if it was processed before."""
        row = self._storage.read(self._category, self.key(group_id, message))
        return None if row is None else decode_receipt(row)[1]

    def remember(self, group_id: bytes, message: bytes, got: Received) -> None:
        """Store an outcome and drop the oldest beyond the retention."""
        if self._retention:
            key = self.key(group_id, message)
            self._storage.write(self._category, key, encode_receipt(self._next, got))
            self._next += 1
            self._order.append(key)
        while len(self._order) > self._retention:
            self._storage.delete(self._category, self._order.popleft())
