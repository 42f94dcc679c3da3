"""What Wire's core-crypto demands of a member, checked on the bytes it produces.

The scenarios themselves run in ``test_peers.py``; this file pins the facts that made them
possible, so a change on either side that breaks them fails here with a precise message.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mls import GroupSettings, Handshake, ReceivedKind
from mls.native.codec import decode_exact
from mls.native.framing import (
    FramedContent,
    MLSMessage,
    PublicMessage,
    Sender,
    SenderType,
    WireFormat,
)
from mls.native.key_package import KeyPackage
from mls.native.leaf_node import CredentialType
from mls.native.proposals import Proposal, Remove
from mls.native.protection import sign_content
from mls.native.suites import get_suite
from mls.native.validation import RequiredCapabilities
from mls.native.welcome import GroupInfo
from tests.interop.conftest import Ours
from tests.interop.peer import NodePeer, PeerError
from tests.interop.room import Room, nest_unmerged_leaves, tree_of, wire_client_id

GID = b"core-crypto conversation"


@pytest.fixture
def room(ours: Ours) -> Iterator[Room]:
    """An empty room with a running core-crypto peer."""
    with NodePeer("core_crypto_peer.mjs") as peer:
        yield Room(ours, peer, GID)


def test_its_groups_require_x509_support_which_our_key_packages_advertise(room: Room) -> None:
    """core-crypto's GroupInfo requires X.509 credentials; our key packages list basic + X.509."""
    room.peer_creates("p1")
    room.peer_commits("p1")  # core-crypto publishes a GroupInfo with every commit
    message = decode_exact(room.peer.call("group_info", who="p1")["group_info"], MLSMessage.decode)
    assert isinstance(message.body, GroupInfo)
    required = RequiredCapabilities.from_extensions(message.body.group_context.extensions)
    assert required is not None
    assert CredentialType.X509 in required.credentials

    me = room.new_our_member("n1")
    ours = decode_exact(room.key_packages[me], MLSMessage.decode).body
    assert isinstance(ours, KeyPackage)
    assert {CredentialType.BASIC, CredentialType.X509} <= set(
        ours.leaf_node.capabilities.credentials
    )
    required.check(ours.leaf_node)  # what core-crypto checks before it adds us
    room.peer_adds("p1", ours=(me,))
    room.check()


def test_its_handshakes_are_public_messages(room: Room) -> None:
    """core-crypto sends commits as PublicMessage; our default handshake format matches."""
    me = room.we_create("n1")
    room.new_peer_member("p1")
    commit, _ = room.client(me).add_members(GID, [room.key_packages.pop("p1")])
    assert commit[2:4] == b"\x00\x01"  # wire_format mls_public_message
    room.peer_creates("p2")
    assert room.peer.call("commit", who="p2")["commit"][2:4] == b"\x00\x01"


def test_it_cannot_read_messages_from_an_identity_not_a_wire_client_id(room: Room) -> None:
    """core-crypto adds such a member, but refuses its messages (it parses the sender's id)."""
    room.peer_creates("p1")
    stranger = room.ours.create(b"plain identity")
    added = room.peer.call("add", who="p1", key_packages=[stranger.generate_key_package()])
    assert stranger.join(added["welcome"]) == GID
    with pytest.raises(PeerError, match="client id was not of the format"):
        room.peer.call("process", who="p1", message=stranger.encrypt(GID, b"hello"))
    # Its commit is processed, and the member it adds, under a Wire client id, is understood.
    me = room.new_our_member("n1")
    room.we_add(b"plain identity", ours=(me,))
    reply = room.peer.call("process", who="p1", message=room.client(me).encrypt(GID, b"hello"))
    assert reply["data"] == b"hello"


def test_it_refuses_private_message_handshakes(room: Room) -> None:
    """A commit sent as PrivateMessage breaks core-crypto's wire-format policy."""
    identity = wire_client_id("n1")
    me = room.ours.create(identity)
    me.create_group(GID, settings=GroupSettings(Handshake.PRIVATE))
    room.our_members.append(identity)
    room.new_peer_member("p1")
    _, welcome = me.add_members(GID, [room.key_packages.pop("p1")])
    assert room.peer.call("join", who="p1", welcome=welcome)["group_id"] == GID
    commit = me.update_keys(GID)
    assert commit[2:4] == b"\x00\x02"  # wire_format mls_private_message
    with pytest.raises(PeerError, match="wire format policy"):
        room.peer.call("process", who="p1", message=commit)


def test_it_joins_a_tree_with_nested_unmerged_leaves(room: Room) -> None:
    """Parents listing different unmerged leaves (valid per RFC 9420) are accepted by it.

    ts-mls 1.6.4 refuses this very tree (``test_ts_mls.py``); core-crypto and we agree.
    """
    committer, newcomer = nest_unmerged_leaves(room)
    room.new_peer_member("p1")
    room.we_add(committer, ours=(newcomer,), theirs=("p1",))
    tree = tree_of(room.client(committer), GID)
    assert [tree.parent_node(x).unmerged_leaves for x in (3, 7)] == [(0,), (0, 5)]  # type: ignore[union-attr]
    room.check()
    room.send_from_peer("p1", b"in")
    room.peer_commits("p1")
    room.check()


def external_remove(sig_priv: bytes, group_id: bytes, epoch: int, leaf: int) -> bytes:
    """A Remove proposal from external sender 0 (the delivery service), as Wire's backend
    sends one: a PublicMessage signed with the key the group lists in ``external_senders``."""
    content = FramedContent(
        group_id, epoch, Sender(SenderType.EXTERNAL, 0), b"", Proposal(Remove(leaf))
    )
    auth = sign_content(get_suite(1), WireFormat.PUBLIC_MESSAGE, content, sig_priv, None)
    return MLSMessage(PublicMessage(auth.content, auth.auth, None)).to_bytes()


def test_it_takes_us_into_a_group_that_lists_an_external_sender(room: Room) -> None:
    """Wire lists its backend in external_senders; our members join and work in such groups."""
    _, server_pub = get_suite(1).generate_signature_key_pair()
    identity = wire_client_id("p1")
    room.peer.call(
        "create_group", who="p1", identity=identity, group_id=GID, external_sender=server_pub
    )
    room.peer_members["p1"] = identity
    me = room.new_our_member("n1")
    room.peer_adds("p1", ours=(me,))
    room.restart()
    room.check()
    room.we_commit(me)
    room.send_from_ours(me, b"hello")
    room.send_from_peer("p1", b"hello back")
    room.check()


def test_the_delivery_service_removes_our_member_by_an_external_proposal(room: Room) -> None:
    """The listed server proposes a Remove; core-crypto commits it; all of us follow."""
    server_priv, server_pub = get_suite(1).generate_signature_key_pair()
    identity = wire_client_id("p1")
    room.peer.call(
        "create_group", who="p1", identity=identity, group_id=GID, external_sender=server_pub
    )
    room.peer_members["p1"] = identity
    n1, n2 = room.new_our_member("n1"), room.new_our_member("n2")
    room.peer_adds("p1", ours=(n1, n2))
    leaf = {m.identity: m.leaf_index for m in room.client(n1).roster(GID)}[n2]
    epoch = room.peer.call("epoch", who="p1")["epoch"]
    room.deliver(
        external_remove(server_priv, GID, epoch, leaf), sender="server", kind=ReceivedKind.PROPOSAL
    )
    reply = room.peer.call("commit_pending", who="p1")
    room.deliver(reply["commit"], sender="p1", kind=ReceivedKind.COMMIT)
    assert room.our_members == [n1]
    room.check()
    room.send_from_peer("p1", b"n2 is out")
