"""TLS presentation-language codec with the MLS variable-length vectors (RFC 9420 §2.1).

Decoding is strict: every read is bounds-checked, vector lengths must use the minimal varint
encoding, optional presence octets must be 0 or 1, and :func:`decode_exact` rejects trailing
bytes. Any violation raises :class:`~mls.native.errors.DecodeError`.

Decoding is also bounded, so that hostile input fails fast instead of making us build
millions of objects: no vector may hold more than :data:`MAX_VECTOR_ITEMS` items, and one
decode (a :class:`Reader` and every sub-reader it hands out) may build at most
:data:`MAX_DECODE_ITEMS` vector items in all.  Both checks run *before* the next item is
built, so the cost of rejecting an oversized vector is the cost of the items allowed.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import TypeVar

from .errors import DecodeError, EncodeError

T = TypeVar("T")

MAX_VARINT = (1 << 30) - 1
#: Most items one vector may hold.  The largest honest vector is a ratchet tree's node list
#: (two nodes per member): 65,536 covers a 32,768-member tree, far above any message size
#: limit a client would accept.
MAX_VECTOR_ITEMS = 1 << 16
#: Most vector items one decode may build, summed over every nested vector.  A leaf costs
#: about a dozen, so this admits trees of ~10,000 members while bounding the CPU a single
#: hostile message can cost to a fraction of a second.
MAX_DECODE_ITEMS = 1 << 17


def encode_varint(value: int) -> bytes:
    """Encode a vector length with the smallest of the 1/2/4-byte forms."""
    if value < 0 or value > MAX_VARINT:
        raise EncodeError(f"varint out of range: {value}")
    if value < 1 << 6:
        return value.to_bytes(1, "big")
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    return (value | 0x80000000).to_bytes(4, "big")


class Reader:
    """Cursor over an immutable byte string; all reads are bounds-checked."""

    __slots__ = ("_budget", "_data", "_end", "_pos")

    def __init__(
        self,
        data: bytes,
        start: int = 0,
        end: int | None = None,
        *,
        max_items: int = MAX_DECODE_ITEMS,
    ) -> None:
        self._data = bytes(data)
        self._pos = start
        self._end = len(self._data) if end is None else end
        # One counter shared (by reference) with every sub-reader: the whole decode's budget.
        self._budget = [max_items]

    @property
    def remaining(self) -> int:
        """Number of unread bytes."""
        return self._end - self._pos

    def at_end(self) -> bool:
        """True when every byte has been consumed."""
        return self._pos >= self._end

    def finish(self) -> None:
        """Reject trailing bytes."""
        if self._pos != self._end:
            raise DecodeError(f"{self._end - self._pos} trailing byte(s)")

    def fixed(self, n: int) -> bytes:
        """Read exactly ``n`` raw bytes."""
        if n < 0 or self._pos + n > self._end:
            raise DecodeError(f"truncated input: need {n} byte(s), have {self.remaining}")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def uint(self, size: int) -> int:
        """Read a big-endian unsigned integer of ``size`` bytes."""
        return int.from_bytes(self.fixed(size), "big")

    def u8(self) -> int:
        """Read a uint8."""
        return self.uint(1)

    def u16(self) -> int:
        """Read a uint16."""
        return self.uint(2)

    def u32(self) -> int:
        """Read a uint32."""
        return self.uint(4)

    def u64(self) -> int:
        """Read a uint64."""
        return self.uint(8)

    def varint(self) -> int:
        """Read a minimal QUIC-style varint (prefix 0b11 is invalid in MLS)."""
        first = self.u8()
        prefix = first >> 6
        if prefix == 3:
            raise DecodeError("invalid varint prefix 0b11")
        length = 1 << prefix
        value = first & 0x3F
        for _ in range(length - 1):
            value = (value << 8) | self.u8()
        if prefix >= 1 and value < 1 << (8 * (length // 2) - 2):
            raise DecodeError("non-minimal varint encoding")
        return value

    def opaque(self) -> bytes:
        """Read ``opaque data<V>``."""
        return self.fixed(self.varint())

    def sub(self) -> Reader:
        """Read a varint length and return a reader confined to that many bytes."""
        n = self.varint()
        if self._pos + n > self._end:
            raise DecodeError(f"vector length {n} exceeds input ({self.remaining} left)")
        inner = Reader.__new__(Reader)
        inner._data = self._data
        inner._pos = self._pos
        inner._end = self._pos + n
        inner._budget = self._budget
        self._pos += n
        return inner

    def _spend(self, items: int) -> None:
        budget = self._budget
        budget[0] -= items
        if budget[0] < 0:
            raise DecodeError("input holds more items than one message may")

    def vector(
        self, item: Callable[[Reader], T], *, max_items: int = MAX_VECTOR_ITEMS
    ) -> list[T]:
        """Read ``T items<V>``; the items must consume the vector exactly.

        Raises:
            DecodeError: also when the vector holds more than ``max_items`` items or the
                decode's item budget runs out (checked before each item is built).
        """
        inner = self.sub()
        out: list[T] = []
        while not inner.at_end():
            if len(out) >= max_items:
                raise DecodeError(f"vector holds more than {max_items} items")
            self._spend(1)
            out.append(item(inner))
        return out

    def uint_vector(self, size: int, *, max_items: int = MAX_VECTOR_ITEMS) -> tuple[int, ...]:
        """Read ``uintN items<V>`` (``size`` 1, 2, 4 or 8 bytes) in one step.

        Fixed-size items need no per-item parsing: the count is known from the length, so
        an oversized vector is refused before a single item is built.
        """
        code = {1: "B", 2: "H", 4: "I", 8: "Q"}[size]
        raw = self.opaque()
        count, rest = divmod(len(raw), size)
        if rest:
            raise DecodeError(f"vector of uint{8 * size} has a partial item")
        if count > max_items:
            raise DecodeError(f"vector holds more than {max_items} items")
        self._spend(count)
        return struct.unpack(f">{count}{code}", raw)

    def optional(self, item: Callable[[Reader], T]) -> T | None:
        """Read ``optional<T>``."""
        present = self.u8()
        if present == 0:
            return None
        if present != 1:
            raise DecodeError(f"invalid optional presence octet {present}")
        return item(self)

    def boolean(self) -> bool:
        """Read a TLS bool (uint8 restricted to 0/1)."""
        value = self.u8()
        if value > 1:
            raise DecodeError(f"invalid boolean {value}")
        return value == 1


class Writer:
    """Append-only byte builder for TLS encoding."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def getvalue(self) -> bytes:
        """Return the bytes written so far."""
        return bytes(self._buf)

    def raw(self, data: bytes) -> None:
        """Append raw bytes (a fixed-size field)."""
        self._buf += data

    def uint(self, value: int, size: int) -> None:
        """Append a big-endian unsigned integer of ``size`` bytes."""
        if value < 0 or value >= 1 << (8 * size):
            raise EncodeError(f"value {value} does not fit in uint{8 * size}")
        self._buf += value.to_bytes(size, "big")

    def u8(self, value: int) -> None:
        """Append a uint8."""
        self.uint(value, 1)

    def u16(self, value: int) -> None:
        """Append a uint16."""
        self.uint(value, 2)

    def u32(self, value: int) -> None:
        """Append a uint32."""
        self.uint(value, 4)

    def u64(self, value: int) -> None:
        """Append a uint64."""
        self.uint(value, 8)

    def varint(self, value: int) -> None:
        """Append a minimal varint."""
        self._buf += encode_varint(value)

    def opaque(self, data: bytes) -> None:
        """Append ``opaque data<V>``."""
        self.varint(len(data))
        self._buf += data

    def vector(self, items: Iterable[T], item: Callable[[Writer, T], None]) -> None:
        """Append ``T items<V>``."""
        inner = Writer()
        for value in items:
            item(inner, value)
        self.opaque(inner.getvalue())

    def optional(self, value: T | None, item: Callable[[Writer, T], None]) -> None:
        """Append ``optional<T>``."""
        if value is None:
            self.u8(0)
        else:
            self.u8(1)
            item(self, value)

    def boolean(self, value: bool) -> None:
        """Append a TLS bool."""
        self.u8(1 if value else 0)


def decode_exact(
    data: bytes, item: Callable[[Reader], T], *, max_items: int = MAX_DECODE_ITEMS
) -> T:
    """Decode one value that must span ``data`` exactly (at most ``max_items`` vector items)."""
    reader = Reader(data, max_items=max_items)
    value = item(reader)
    reader.finish()
    return value


def encode_with(value: T, item: Callable[[Writer, T], None]) -> bytes:
    """Encode one value with an item writer."""
    writer = Writer()
    item(writer, value)
    return writer.getvalue()


def opaque_bytes(data: bytes) -> bytes:
    """Encode ``opaque<V>`` as a standalone byte string."""
    return encode_varint(len(data)) + data


def write_opaque(w: Writer, data: bytes) -> None:
    """Item writer for ``opaque<V>`` elements."""
    w.opaque(data)


def read_opaque(r: Reader) -> bytes:
    """Item reader for ``opaque<V>`` elements."""
    return r.opaque()


def write_u16(w: Writer, value: int) -> None:
    """Item writer for uint16 elements."""
    w.u16(value)


def read_u16(r: Reader) -> int:
    """Item reader for uint16 elements."""
    return r.u16()


def write_u32(w: Writer, value: int) -> None:
    """Item writer for uint32 elements."""
    w.u32(value)


def read_u32(r: Reader) -> int:
    """Item reader for uint32 elements."""
    return r.u32()


class Struct(ABC):
    """Base of wire structs: subclasses provide ``encode`` and a ``decode`` classmethod."""

    __slots__ = ()

    @abstractmethod
    def encode(self, w: Writer) -> None:
        """Append the TLS encoding of ``self``."""

    def to_bytes(self) -> bytes:
        """TLS encoding of ``self``."""
        w = Writer()
        self.encode(w)
        return w.getvalue()
