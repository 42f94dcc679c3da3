"""Message receipts: the outcome of each processed message, stored with its state.

If a process dies after the vault commit of :meth:`process` but before its caller saw
the outcome, the caller delivers the message again; the engine would reject it (its
generation is consumed, its epoch is past).  The receipt, written in the same storage
operation as the state the message produced, lets the client return the stored
outcome instead (``replay=True``): every message is delivered exactly once.

A receipt holds the plaintext of an application message, encrypted in the vault like
every row.  The last ``retention`` receipts are kept (0 keeps none).  A receipt too big
for a vault row (a message of about 64 MiB, far above any sane ``max_message_size``) is
not kept: that one message cannot be replayed after a crash, and processing it does not
fail because of it.
"""

from __future__ import annotations

import collections
import hashlib
import struct
from dataclasses import dataclass, field

from keystore.vault import MAX_VALUE_LEN
from mls.engine import CommitChanges, ReceivedKind
from mls.errors import InvalidMessage
from mls.storage import GranularStorage

__all__ = ["DEFAULT_RECEIPT_RETENTION", "ReceiptLog", "Received", "ReceivedKind"]

#: Outcomes of the most recently processed messages kept for replay after a crash.
DEFAULT_RECEIPT_RETENTION = 256
_FORMAT_V1 = 1  # kind, removed, sender, data
_FORMAT = 2  # ... then authenticated data, epoch and the changes of a commit
_HEAD = struct.Struct(">BQBB")  # format, sequence number, kind, flags
_REMOVED, _MERGED, _CLEARED, _EXTERNAL = 1, 2, 4, 8  # flag bits (format 1: removed only)


@dataclass(frozen=True, slots=True)
class Received:
    """The outcome of processing one group message.

    Attributes:
        kind: application data, a commit (new epoch), or a proposal held for the next commit.
        sender: the sender's (committer's) identity, or ``None`` if it is no longer in the tree.
        data: the plaintext of an application message, else ``None``.  Left out of
            ``repr`` so that logging a result never logs a plaintext.
        removed: this commit removed us; the group has been forgotten.
        replay: this message had been processed before (e.g. by a process that died
            before its caller saw the result); this is the stored outcome.
        authenticated_data: the sender's authenticated data (sent in the clear, covered by
            its signature or AEAD tag, so authentic once the message was accepted).
        epoch: the epoch the message belonged to.
        changes: for a commit, what it changed (members added, removed, updated; the new
            epoch); ``None`` for other messages.
        merged_pending_commit: the message was our own pending commit, echoed by the
            delivery service: it is now applied.
        cleared_pending_commit: another member's commit took the epoch; our pending
            commit was dropped (redo its changes in a new commit if they still matter).
        external_sender: a proposal from one of the group's external senders.

    Equality compares the first five fields only, so code written before the last three
    existed keeps comparing outcomes as it did.
    """

    kind: ReceivedKind
    sender: bytes | None
    data: bytes | None = field(default=None, repr=False)
    removed: bool = False
    replay: bool = False
    authenticated_data: bytes = field(default=b"", compare=False)
    epoch: int | None = field(default=None, compare=False)
    changes: CommitChanges | None = field(default=None, compare=False)
    merged_pending_commit: bool = field(default=False, compare=False)
    cleared_pending_commit: bool = field(default=False, compare=False)
    external_sender: bool = field(default=False, compare=False)


_KIND_CODES = {ReceivedKind.APPLICATION: 0, ReceivedKind.COMMIT: 1, ReceivedKind.PROPOSAL: 2}
_KINDS = {code: kind for kind, code in _KIND_CODES.items()}


def _optional(value: bytes | None) -> bytes:
    return b"\x00" if value is None else b"\x01" + len(value).to_bytes(4, "big") + value


def _identities(values: tuple[bytes, ...]) -> bytes:
    return len(values).to_bytes(4, "big") + b"".join(_optional(v) for v in values)


def encode_receipt(seq: int, got: Received) -> bytes:
    """Format 2, big-endian::

        format u8 | seq u64 | kind u8 | flags u8 | optional sender | optional data
        | optional authenticated data | optional epoch (8 bytes)
        | optional (new epoch u64 | added | removed | updated), each a u32 count of
          optional identities

    (``optional x`` is ``0x00``, or ``0x01 | u32 length | x``; flags: 1 removed, 2 merged
    our pending commit, 4 cleared it, 8 from an external sender.)  Format 1 stopped after
    the data and its flags byte could only be 0 or 1; :func:`decode_receipt` reads it.
    """
    flags = (
        (_REMOVED if got.removed else 0)
        | (_MERGED if got.merged_pending_commit else 0)
        | (_CLEARED if got.cleared_pending_commit else 0)
        | (_EXTERNAL if got.external_sender else 0)
    )
    head = _HEAD.pack(_FORMAT, seq, _KIND_CODES[got.kind], flags)
    epoch = None if got.epoch is None else got.epoch.to_bytes(8, "big")
    changes = None
    if got.changes is not None:
        c = got.changes
        changes = (
            c.epoch.to_bytes(8, "big")
            + _identities(c.added)
            + _identities(c.removed)
            + _identities(c.updated)
        )
    return (
        head
        + _optional(got.sender)
        + _optional(got.data)
        + _optional(got.authenticated_data or None)
        + _optional(epoch)
        + _optional(changes)
    )


class _Cursor:
    __slots__ = ("pos", "row")

    def __init__(self, row: bytes, pos: int) -> None:
        self.row = row
        self.pos = pos

    def optional(self) -> bytes | None:
        row, pos = self.row, self.pos
        if row[pos] == 0:
            self.pos += 1
            return None
        if row[pos] != 1:
            raise ValueError("presence octet")
        n = int.from_bytes(row[pos + 1 : pos + 5], "big")
        if pos + 5 + n > len(row):
            raise ValueError("length")
        self.pos = pos + 5 + n
        return row[pos + 5 : pos + 5 + n]

    def identities(self) -> tuple[bytes, ...]:
        count = int.from_bytes(self.row[self.pos : self.pos + 4], "big")
        self.pos += 4
        out = []
        for _ in range(count):
            value = self.optional()
            if value is None:
                raise ValueError("identity")
            out.append(value)
        return tuple(out)


def _changes(raw: bytes) -> CommitChanges:
    cursor = _Cursor(raw, 8)
    changes = CommitChanges(
        int.from_bytes(raw[:8], "big"),
        cursor.identities(),
        cursor.identities(),
        cursor.identities(),
    )
    if cursor.pos != len(raw):
        raise ValueError("length")
    return changes


def decode_receipt(row: bytes) -> tuple[int, Received]:
    """Inverse of :func:`encode_receipt`; the outcome comes back marked as a replay."""
    try:
        fmt, seq, kind, flags = _HEAD.unpack_from(row)
        if fmt not in (_FORMAT_V1, _FORMAT) or flags >= (2 if fmt == _FORMAT_V1 else 16):
            raise ValueError("format")
        cursor = _Cursor(row, _HEAD.size)
        sender, data = cursor.optional(), cursor.optional()
        aad, epoch, changes = b"", None, None
        if fmt == _FORMAT:
            aad = cursor.optional() or b""
            raw_epoch = cursor.optional()
            if raw_epoch is not None:
                if len(raw_epoch) != 8:
                    raise ValueError("epoch")
                epoch = int.from_bytes(raw_epoch, "big")
            raw_changes = cursor.optional()
            changes = None if raw_changes is None else _changes(raw_changes)
        if cursor.pos != len(row):
            raise ValueError("length")
        got = Received(
            _KINDS[kind],
            sender,
            data,
            bool(flags & _REMOVED),
            True,
            aad,
            epoch,
            changes,
            bool(flags & _MERGED),
            bool(flags & _CLEARED),
            bool(flags & _EXTERNAL),
        )
        return seq, got
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
        row = encode_receipt(self._next, got)
        if self._retention and len(row) <= MAX_VALUE_LEN:
            key = self.key(group_id, message)
            self._storage.write(self._category, key, row)
            self._next += 1
            self._order.append(key)
        while len(self._order) > self._retention:
            self._storage.delete(self._category, self._order.popleft())
