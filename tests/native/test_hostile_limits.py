"""The engine's limits on what it decodes, and the order of its checks (cheap ones first).

Unit-level companions of ``test_hostile_resources.py``: each limit refuses with our own
error, the header of a group message is judged before its body is decoded, and the
membership tag and signature are computed over the received bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from unittest import mock

import pytest

from mls.native import NativeEngine
from mls.native.codec import (
    MAX_DECODE_ITEMS,
    MAX_VECTOR_ITEMS,
    Reader,
    Writer,
    decode_exact,
    encode_varint,
    read_opaque,
)
from mls.native.engine import DEFAULT_MAX_MESSAGE_SIZE
from mls.native.errors import (
    DecodeError,
    EpochMismatch,
    InvalidMessage,
    InvalidProposal,
    InvalidTree,
    MessageTooLarge,
)
from mls.native.framing import ContentType, SenderType, WireFormat, peek_header
from mls.native.leaf_node import Extension, ExtensionType
from mls.native.tree import ParentNode, RatchetTree
from mls.storage import GranularStorage
from tests.native.engine_helpers import GID, group, member
from tests.native.helpers import CS, small_group


def _vector_of(count: int, item: bytes) -> bytes:
    body = item * count
    return encode_varint(len(body)) + body


def test_a_vector_over_the_item_limit_is_refused() -> None:
    """MAX_VECTOR_ITEMS items decode; one more is a DecodeError."""
    ok = _vector_of(MAX_VECTOR_ITEMS, b"\x00")
    assert len(decode_exact(ok, lambda r: r.vector(read_opaque))) == MAX_VECTOR_ITEMS
    with pytest.raises(DecodeError, match="more than"):
        decode_exact(_vector_of(MAX_VECTOR_ITEMS + 1, b"\x00"), lambda r: r.vector(read_opaque))


def test_the_item_budget_is_shared_by_nested_vectors() -> None:
    """Vectors inside vectors draw on one budget per decode."""
    inner = _vector_of(MAX_VECTOR_ITEMS // 2, b"\x00")
    outer = _vector_of(MAX_DECODE_ITEMS // (MAX_VECTOR_ITEMS // 2) + 1, inner)

    def read(r: Reader) -> list[list[bytes]]:
        return r.vector(lambda s: s.vector(read_opaque))

    with pytest.raises(DecodeError, match="more items than one message"):
        decode_exact(outer, read)
    assert decode_exact(outer, read, max_items=2 * MAX_DECODE_ITEMS)


def test_fixed_size_vectors_are_counted_before_they_are_built() -> None:
    """uint vectors: a partial item or too many items is refused from the length alone."""
    with pytest.raises(DecodeError, match="partial"):
        decode_exact(b"\x03\x00\x01\x00", lambda r: r.uint_vector(2))
    with pytest.raises(DecodeError, match="more than"):
        decode_exact(_vector_of(MAX_VECTOR_ITEMS + 1, b"\x00\x01"), lambda r: r.uint_vector(2))
    assert decode_exact(b"\x04\x00\x01\xff\xff", lambda r: r.uint_vector(2)) == (1, 0xFFFF)


def test_a_stored_tree_may_exceed_the_limits_of_a_received_one() -> None:
    """Our own stored tree is decoded with a budget sized to its bytes."""
    tree, _, _ = small_group(CS, 4)
    data = tree.to_bytes()
    with pytest.raises(DecodeError):
        decode_exact(data, RatchetTree.decode, max_items=5)
    assert RatchetTree.from_stored(data) == tree


def test_a_tree_listing_an_unmerged_leaf_twice_is_invalid() -> None:
    """Duplicated unmerged leaves are refused before the parent hashes are checked."""
    tree, _, _ = small_group(CS, 2)
    _, pub = CS.hpke.generate_key_pair()
    bad = tree.with_nodes({1: ParentNode(pub, b"", (1, 1))})
    with pytest.raises(InvalidTree, match="twice"):
        bad.verify(CS, b"g")


# -- message size ----------------------------------------------------------------------------


def test_every_entry_point_refuses_a_message_over_the_limit() -> None:
    """process, join, commit(add=...), propose_add and encrypt raise MessageTooLarge."""
    alice, _ = group(["alice", "bob"])
    big = bytes(DEFAULT_MAX_MESSAGE_SIZE + 1)
    calls: list[Callable[[], object]] = [
        lambda: alice.process(GID, big),
        lambda: alice.join(big),
        lambda: alice.commit(GID, add=[big]),
        lambda: alice.propose_add(GID, big),
        lambda: alice.encrypt(GID, big),
    ]
    for call in calls:
        with pytest.raises(MessageTooLarge):
            call()


def test_the_limit_is_configurable() -> None:
    """A larger max_message_size lets a larger message through; nonsense is a ValueError."""
    storage = GranularStorage()
    NativeEngine.create(storage, b"alice")
    roomy = NativeEngine(storage, max_message_size=4 * DEFAULT_MAX_MESSAGE_SIZE)
    gid = roomy.create_group()
    assert roomy.encrypt(gid, bytes(DEFAULT_MAX_MESSAGE_SIZE + 1))
    for bad in (0, 10, True, 2.5):
        with pytest.raises(ValueError):
            NativeEngine(storage, max_message_size=bad)  # type: ignore[arg-type]


# -- cheap checks first ----------------------------------------------------------------------


def _public_header(gid: bytes, epoch: int, sender: int, body: bytes) -> bytes:
    w = Writer()
    w.u16(1)
    w.u16(WireFormat.PUBLIC_MESSAGE)
    w.opaque(gid)
    w.u64(epoch)
    w.u8(SenderType.MEMBER)
    w.u32(sender)
    w.opaque(b"")
    w.u8(ContentType.COMMIT)
    w.raw(body)
    return w.getvalue()


GARBAGE = b"\xff" * 64  # no valid commit body starts like this


def test_the_header_is_judged_before_the_body_is_decoded() -> None:
    """Wrong group, wrong epoch or a non-member sender is refused even when the body would
    not decode: the body is never looked at."""
    alice, _ = group(["alice", "bob"])
    epoch = alice.epoch(GID)
    with pytest.raises(InvalidMessage, match="another group"):
        alice.process(GID, _public_header(b"other", epoch, 1, GARBAGE))
    with pytest.raises(EpochMismatch):
        alice.process(GID, _public_header(GID, epoch + 5, 1, GARBAGE))
    with pytest.raises(InvalidMessage, match="not a member"):
        alice.process(GID, _public_header(GID, epoch, 7, GARBAGE))
    with pytest.raises(DecodeError):  # a member's index: now the body is decoded
        alice.process(GID, _public_header(GID, epoch, 1, GARBAGE))
    header = peek_header(_public_header(GID, epoch, 1, GARBAGE))
    assert (header.group_id, header.epoch, header.content_type) == (
        GID,
        epoch,
        ContentType.COMMIT,
    )


def test_the_membership_tag_and_signature_cover_the_received_bytes() -> None:
    """A PublicMessage is authenticated without re-encoding its content."""
    alice, bob = group(["alice", "bob"])
    commit, _ = bob.commit(GID, force_path=True)
    with mock.patch(
        "mls.native.protection.framed_content_tbs",
        side_effect=AssertionError("re-encoded the received content"),
    ):
        alice.process(GID, commit)
    assert alice.epoch_authenticator(GID) == bob.epoch_authenticator(GID)


def test_a_welcome_is_recognised_from_its_header() -> None:
    """join refuses a non-Welcome without decoding it."""
    alice, _ = group(["alice", "bob"])
    with pytest.raises(InvalidMessage, match="not a Welcome"):
        member("carol").join(_public_header(GID, alice.epoch(GID), 1, GARBAGE))


def test_a_leaf_unmerged_above_must_be_unmerged_below() -> None:
    """A leaf listed as unmerged at the root must also be at the non-blank nodes between."""
    tree, _, _ = small_group(CS, 4)
    keys = [CS.hpke.generate_key_pair()[1] for _ in range(2)]
    bad = tree.with_nodes({1: ParentNode(keys[0], b"", ()), 3: ParentNode(keys[1], b"", (0,))})
    with pytest.raises(InvalidTree, match="not below it"):
        bad.verify(CS, b"g")


def test_we_do_not_propose_extensions_a_member_cannot_accept() -> None:
    """propose_group_context_extensions refuses locally what receivers would refuse."""
    alice, _ = group(["alice", "bob"])
    with pytest.raises(InvalidProposal, match="does not support"):
        alice.propose_group_context_extensions(GID, [Extension(0xFF00, b"topic")])
    assert alice.storage.queued_proposals(GID) == []


def test_we_never_send_what_a_receiver_at_the_default_limit_would_refuse() -> None:
    """A plaintext just under the limit makes a message over it: encrypt refuses it and
    its ratchet step is rolled back (the next message uses the same generation)."""
    alice, bob = group(["alice", "bob"])
    before = {(c, k): v for c in alice.storage.categories() for k, v in alice.storage.items(c)}
    with pytest.raises(MessageTooLarge):
        alice.encrypt(GID, bytes(DEFAULT_MAX_MESSAGE_SIZE - 10))
    after = {(c, k): v for c in alice.storage.categories() for k, v in alice.storage.items(c)}
    assert after == before
    assert bob.process(GID, alice.encrypt(GID, b"small")).data == b"small"


def test_we_never_commit_what_a_receiver_at_the_default_limit_would_refuse() -> None:
    """A Welcome over a small limit makes commit raise MessageTooLarge and keep nothing;
    the same member can still commit without it."""
    storage = GranularStorage()
    NativeEngine.create(storage, b"alice")
    alice = NativeEngine(storage, max_message_size=1024)
    gid = alice.create_group()
    before = {(c, k): v for c in storage.categories() for k, v in storage.items(c)}
    with pytest.raises(MessageTooLarge, match="Welcome"):
        alice.commit(gid, add=[member(n).generate_key_package() for n in ("b", "c", "d")])
    assert {(c, k): v for c in storage.categories() for k, v in storage.items(c)} == before
    alice.commit(gid, force_path=True)
    assert alice.epoch(gid) == 1


def test_we_never_propose_what_a_receiver_would_refuse_for_its_size() -> None:
    """An oversized proposal raises MessageTooLarge and is not queued."""
    alice, _ = group(["alice", "bob"])
    huge = Extension(ExtensionType.EXTERNAL_SENDERS, bytes(DEFAULT_MAX_MESSAGE_SIZE))
    with pytest.raises(MessageTooLarge):
        alice.propose_group_context_extensions(GID, [huge])
    assert alice.storage.queued_proposals(GID) == []
