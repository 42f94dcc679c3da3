"""Unit tests of the strict TLS codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mls.native.codec import (
    MAX_VARINT,
    Reader,
    Writer,
    decode_exact,
    encode_varint,
    read_opaque,
    read_u16,
    write_u16,
)
from mls.native.errors import DecodeError, EncodeError, MlsError


@given(st.integers(min_value=0, max_value=MAX_VARINT))
def test_varint_round_trip(value: int) -> None:
    """Every representable length survives encode/decode."""
    assert decode_exact(encode_varint(value), Reader.varint) == value


@given(st.lists(st.binary(max_size=70), max_size=5))
def test_vector_of_opaque_round_trip(items: list[bytes]) -> None:
    """A vector of opaque values round-trips."""
    w = Writer()
    w.vector(items, Writer.opaque)
    assert decode_exact(w.getvalue(), lambda r: r.vector(read_opaque)) == items


@pytest.mark.parametrize("raw", ["4001", "403f", "80000001", "80003fff"])
def test_non_minimal_varint_rejected(raw: str) -> None:
    """Varints using more bytes than needed are malformed."""
    with pytest.raises(DecodeError):
        Reader(bytes.fromhex(raw)).varint()


def test_varint_prefix_11_rejected() -> None:
    """The 0b11 prefix (8-byte varint) is invalid in MLS."""
    with pytest.raises(DecodeError):
        Reader(bytes.fromhex("c000000000000001")).varint()


def test_varint_out_of_range_not_encodable() -> None:
    """Lengths beyond 2^30-1 cannot be encoded."""
    with pytest.raises(EncodeError):
        encode_varint(MAX_VARINT + 1)


def test_truncated_opaque_rejected() -> None:
    """A vector length past the end of the input is an error."""
    with pytest.raises(DecodeError):
        decode_exact(bytes.fromhex("05abcd"), read_opaque)


def test_truncated_integer_rejected() -> None:
    """A uint32 with only three bytes left is an error."""
    with pytest.raises(DecodeError):
        Reader(b"\x00\x01\x02").u32()


def test_trailing_bytes_rejected() -> None:
    """decode_exact refuses input with bytes left over."""
    with pytest.raises(DecodeError):
        decode_exact(b"\x00\x01\xff", read_u16)


def test_vector_items_must_fill_length() -> None:
    """Vector items that overrun the declared vector length are rejected."""
    with pytest.raises(DecodeError):
        decode_exact(bytes.fromhex("03000100"), lambda r: r.vector(read_u16))


def test_optional_presence_octet_must_be_0_or_1() -> None:
    """An optional<T> presence octet of 2 is malformed."""
    with pytest.raises(DecodeError):
        decode_exact(b"\x02\x00\x01", lambda r: r.optional(read_u16))


def test_optional_round_trip() -> None:
    """Absent and present optionals encode as 00 and 01||value."""
    w = Writer()
    w.optional(None, write_u16)
    w.optional(7, write_u16)
    assert w.getvalue() == bytes.fromhex("00010007")


def test_uint_out_of_range_not_encodable() -> None:
    """A value that does not fit its uint width is refused."""
    with pytest.raises(EncodeError):
        Writer().u8(256)


def test_errors_share_base_class() -> None:
    """Codec errors derive from the engine base class."""
    assert issubclass(DecodeError, MlsError)
    assert issubclass(EncodeError, MlsError)
