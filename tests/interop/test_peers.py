"""Interop scenarios against independent MLS implementations from npm.

Each scenario runs against every peer: ts-mls (TypeScript, with its handshakes sent as
PrivateMessage and, separately, as PublicMessage) and Wire's core-crypto (OpenMLS inside, its
wasm build; PublicMessage handshakes, X.509 required by its groups' capabilities).  Our side is
the native engine through the public client, reopened from its vault between steps; every
message crosses in MLSMessage wire format.  Identities are Wire client ids for every peer,
since core-crypto insists on them.  After each step every member must see the same member list
and the same exporter secret (:meth:`Room.check`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.interop.conftest import Ours
from tests.interop.peer import NodePeer
from tests.interop.room import Room

GID = b"interop group \x00\xff"


@dataclass(frozen=True)
class PeerKind:
    """How to run one peer: its program and the options of its handshake messages."""

    script: str
    options: dict[str, object] = field(default_factory=dict)


PEERS = {
    "ts-mls": PeerKind("ts_mls_peer.mjs"),
    "ts-mls-public-handshakes": PeerKind("ts_mls_peer.mjs", {"public_message": True}),
    "core-crypto": PeerKind("core_crypto_peer.mjs"),
}


@pytest.fixture(params=sorted(PEERS))
def kind(request: pytest.FixtureRequest) -> PeerKind:
    """The peer implementation a test runs against."""
    return PEERS[request.param]


@pytest.fixture
def room(kind: PeerKind, ours: Ours) -> Iterator[Room]:
    """An empty room with a running peer of ``kind``."""
    with NodePeer(kind.script) as peer:
        yield Room(ours, peer, GID)


def test_peer_creates_the_group_and_adds_us(room: Room, kind: PeerKind) -> None:
    """The peer's member creates the group and adds ours; messages flow both ways."""
    room.peer_creates("p1")
    me = room.new_our_member("n1")
    room.restart()  # a key package published before a restart still joins
    room.peer_adds("p1", ours=(me,), **kind.options)
    room.check()
    room.restart()
    room.send_from_peer("p1", b"hello from the peer")
    room.restart()
    room.send_from_ours(me, b"hello from the native engine")
    room.check()


def test_we_create_the_group_and_add_the_peer(room: Room, kind: PeerKind) -> None:
    """Our member creates the group and adds the peer's member; messages flow both ways."""
    me = room.we_create("n1")
    room.new_peer_member("p1")
    room.we_add(me, theirs=("p1",))
    room.check()
    for round_ in range(3):
        room.restart()
        room.send_from_ours(me, b"ours %d" % round_)
        room.restart()
        room.send_from_peer("p1", b"theirs %d" % round_)
    room.check()


def test_commits_with_path_from_both_sides(room: Room, kind: PeerKind) -> None:
    """Key updates (commits with an UpdatePath) alternate between the two implementations."""
    me = room.we_create("n1")
    room.new_peer_member("p1")
    room.we_add(me, theirs=("p1",))
    for round_ in range(2):
        room.peer_commits("p1", **kind.options)
        room.restart()
        room.check()
        room.send_from_ours(me, b"after the peer's update %d" % round_)
        room.we_commit(me)
        room.restart()
        room.check()
        room.send_from_peer("p1", b"after our update %d" % round_)


def test_adds_and_removes_by_each_side(room: Room, kind: PeerKind) -> None:
    """Each side adds members of both implementations and removes members of both."""
    room.peer_creates("p1")
    n1 = room.new_our_member("n1")
    room.peer_adds("p1", ours=(n1,), **kind.options)
    # We add a second member of each implementation in one commit.
    n2 = room.new_our_member("n2")
    room.new_peer_member("p2")
    room.restart()
    room.we_add(n1, ours=(n2,), theirs=("p2",))
    room.check()
    room.send_from_peer("p2", b"p2 is in")
    room.send_from_ours(n2, b"n2 is in")
    # The peer removes our second member, we remove its second member.
    room.peer_removes("p1", [n2], **kind.options)
    room.restart()
    room.check()
    p2 = room.peer_members["p2"]
    room.we_remove(n1, [p2])
    room.check()
    # The peer adds one of each again; then removes its own and we remove ours.
    n3 = room.new_our_member("n3")
    room.new_peer_member("p3")
    room.peer_adds("p1", ours=(n3,), theirs=("p3",), **kind.options)
    room.restart()
    room.check()
    room.send_from_ours(n3, b"n3 is in")
    room.peer_removes("p1", [room.peer_members["p3"]], **kind.options)
    room.we_remove(n1, [n3])
    room.check()
    room.send_from_peer("p1", b"two of us again")
    room.send_from_ours(n1, b"yes")
