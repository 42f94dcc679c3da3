"""A group spanning our native members and a node peer's members, with a toy delivery service.

:class:`Room` knows every member of one group and fans each handshake message out to all the
others, checking what each side reports; :meth:`Room.check` asserts every member sees the same
member list and the same exporter secret.  Our members are addressed by identity (they are
reopened from their vaults by :meth:`Room.restart`), the peer's by their ``who`` name.
"""

from __future__ import annotations

import hashlib
import uuid

from mls import MlsClient, ReceivedKind
from mls.native import tree_math as tm
from mls.native.codec import Writer, write_u16
from mls.native.tree import RatchetTree
from tests.interop.conftest import Ours
from tests.interop.peer import NodePeer

#: ts-mls 1.6.4's refusal of a valid tree whose parents list different unmerged leaves.
TS_MLS_NESTED_UNMERGED_REFUSAL = (
    "non-blank intermediate node must list leaf node in its unmerged_leaves"
)
LABEL = b"interop exporter"
CONTEXT = b"exporter context"


def wire_client_id(name: str) -> bytes:
    """A Wire-style client id ``<uuid>:<hex client>@<domain>``, as core-crypto wants identities."""
    user = uuid.uuid5(uuid.NAMESPACE_DNS, name)
    # 64-bit device id, top bit set: core-crypto prints it without leading zeros.
    device = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") | 1 << 63
    return f"{user}:{device:x}@interop.example".encode()


class Room:
    """One group: our native members, the peer's members, and the messages between them."""

    def __init__(self, ours: Ours, peer: NodePeer, group_id: bytes) -> None:
        self.ours = ours
        self.peer = peer
        self.group_id = group_id
        self.our_members: list[bytes] = []  # identities of our members in the group
        self.peer_members: dict[str, bytes] = {}  # who -> identity
        self.invited: dict[str, bytes] = {}  # peer members with a key package, not yet in
        self.key_packages: dict[bytes | str, bytes] = {}  # unused key packages, by member

    def client(self, identity: bytes) -> MlsClient:
        """Our member ``identity`` (the instance currently open)."""
        return self.ours.open[identity]

    def restart(self) -> None:
        """Reopen every one of our members from its vault."""
        for identity in self.our_members:
            self.ours.restart(self.client(identity))

    # ---------------------------------------------------------------- delivery

    def deliver(self, message: bytes, *, sender: bytes | str, kind: ReceivedKind) -> None:
        """Hand a handshake message to every member except its sender."""
        for identity in list(self.our_members):
            if identity == sender:
                continue
            got = self.client(identity).process(self.group_id, message)
            assert got.kind == kind, got
            if got.removed:
                self.our_members.remove(identity)
        for who in list(self.peer_members):
            if who == sender:
                continue
            reply = self.peer.call("process", who=who, message=message)
            assert reply["kind"] == "handshake", reply
            if not reply["active"]:
                del self.peer_members[who]

    def send_from_ours(self, identity: bytes, text: bytes) -> None:
        """Our member encrypts ``text``; every other member must decrypt exactly it."""
        message = self.client(identity).encrypt(self.group_id, text)
        for who in self.peer_members:
            assert self.peer.call("process", who=who, message=message)["data"] == text
        for other in self.our_members:
            if other != identity:
                got = self.client(other).process(self.group_id, message)
                assert (got.kind, got.data, got.sender) == (
                    ReceivedKind.APPLICATION,
                    text,
                    identity,
                )

    def send_from_peer(self, who: str, text: bytes) -> None:
        """The peer's member encrypts ``text``; every other member must decrypt exactly it."""
        message = self.peer.call("encrypt", who=who, plaintext=text)["message"]
        for identity in self.our_members:
            got = self.client(identity).process(self.group_id, message)
            assert got.kind == ReceivedKind.APPLICATION
            assert (got.data, got.sender) == (text, self.peer_members[who])
        for other in self.peer_members:
            if other != who:
                assert self.peer.call("process", who=other, message=message)["data"] == text

    # ---------------------------------------------------------------- checks

    def check(self) -> None:
        """Every member sees the same members and derives the same exporter secret."""
        expected = sorted([*self.our_members, *self.peer_members.values()])
        # A peer may only export under its own label and context (core-crypto's are fixed):
        # it says which it used, and our members export under the same.
        label, context, secrets = LABEL, CONTEXT, set()
        for who in self.peer_members:
            seen = sorted(self.peer.call("members", who=who)["members"])
            assert seen == expected, f"the peer's {who} sees {seen}, expected {expected}"
            reply = self.peer.call(
                "export_secret", who=who, label=label, context=context, length=32
            )
            label, context = bytes.fromhex(reply["label"]), bytes.fromhex(reply["context"])
            secrets.add(reply["secret"])
        for identity in self.our_members:
            client = self.client(identity)
            seen = sorted(client.members(self.group_id))
            assert seen == expected, f"our {identity!r} sees {seen}, expected {expected}"
            secrets.add(client.export_secret(self.group_id, label, context, 32))
        assert len(secrets) == 1, "members disagree on the exporter secret"

    # ---------------------------------------------------------------- membership

    def new_our_member(self, name: str) -> bytes:
        """A new native member with a key package, not yet in the group; returns its identity."""
        identity = wire_client_id(name)
        self.key_packages[identity] = self.ours.create(identity).generate_key_package()
        return identity

    def new_peer_member(self, who: str) -> bytes:
        """A new member on the peer's side with a key package; returns its identity."""
        identity = wire_client_id(who)
        self.invited[who] = identity
        reply = self.peer.call("key_package", who=who, identity=identity)
        self.key_packages[who] = reply["key_package"]
        return identity

    def peer_creates(self, who: str) -> None:
        """The peer's member ``who`` creates the group, alone in it."""
        identity = wire_client_id(who)
        self.peer.call("create_group", who=who, identity=identity, group_id=self.group_id)
        self.peer_members[who] = identity

    def we_create(self, name: str) -> bytes:
        """Our member ``name`` creates the group, alone in it; returns its identity."""
        identity = wire_client_id(name)
        assert self.ours.create(identity).create_group(self.group_id) == self.group_id
        self.our_members.append(identity)
        return identity

    def _welcome(self, welcome: bytes, ours: list[bytes], theirs: list[str]) -> None:
        for identity in ours:
            assert self.client(identity).join(welcome) == self.group_id
            self.our_members.append(identity)
        for who in theirs:
            assert self.peer.call("join", who=who, welcome=welcome)["group_id"] == self.group_id
            self.peer_members[who] = self.invited.pop(who)

    def peer_adds(
        self,
        who: str,
        *,
        ours: tuple[bytes, ...] = (),
        theirs: tuple[str, ...] = (),
        **opts: object,
    ) -> None:
        """The peer's member adds our members ``ours`` and its own new members ``theirs``."""
        kps = [self.key_packages.pop(i) for i in ours] + [self.key_packages.pop(w) for w in theirs]
        reply = self.peer.call("add", who=who, key_packages=kps, **opts)
        self.deliver(reply["commit"], sender=who, kind=ReceivedKind.COMMIT)
        self._welcome(reply["welcome"], list(ours), list(theirs))

    def we_add(
        self, identity: bytes, *, ours: tuple[bytes, ...] = (), theirs: tuple[str, ...] = ()
    ) -> None:
        """Our member adds our members ``ours`` and the peer's new members ``theirs``."""
        kps = [self.key_packages.pop(i) for i in ours] + [self.key_packages.pop(w) for w in theirs]
        commit, welcome = self.client(identity).add_members(self.group_id, kps)
        self.deliver(commit, sender=identity, kind=ReceivedKind.COMMIT)
        self._welcome(welcome, list(ours), list(theirs))

    def peer_removes(self, who: str, identities: list[bytes], **opts: object) -> None:
        """The peer's member removes the members holding ``identities``."""
        reply = self.peer.call("remove", who=who, identities=identities, **opts)
        self.deliver(reply["commit"], sender=who, kind=ReceivedKind.COMMIT)
        self._forget(identities)

    def we_remove(self, identity: bytes, identities: list[bytes]) -> None:
        """Our member removes the members holding ``identities``."""
        commit = self.client(identity).remove_members(self.group_id, identities)
        self.deliver(commit, sender=identity, kind=ReceivedKind.COMMIT)
        self._forget(identities)

    def _forget(self, identities: list[bytes]) -> None:
        """Removed members (told by the commit itself, in :meth:`deliver`) are gone."""
        left = {*self.our_members, *self.peer_members.values()}
        assert not set(identities) & left, "a removed member still considers itself in"

    def peer_commits(self, who: str, **opts: object) -> None:
        """The peer's member commits with an UpdatePath (a key update)."""
        reply = self.peer.call("commit", who=who, **opts)
        self.deliver(reply["commit"], sender=who, kind=ReceivedKind.COMMIT)

    def we_commit(self, identity: bytes) -> None:
        """Our member commits with an UpdatePath (``update_keys``)."""
        commit = self.client(identity).update_keys(self.group_id)
        self.deliver(commit, sender=identity, kind=ReceivedKind.COMMIT)

    # ---------------------------------------------------------------- external joins

    def peer_joins_externally(self, who: str, group_info: bytes) -> None:
        """A new member on the peer's side joins by an external commit from ``group_info``."""
        identity = wire_client_id(who)
        reply = self.peer.call("external_join", who=who, identity=identity, group_info=group_info)
        self.deliver(reply["commit"], sender=who, kind=ReceivedKind.COMMIT)
        self.peer_members[who] = identity

    def peer_group_info(self, who: str) -> bytes:
        """A GroupInfo (MLSMessage) of the current epoch from the peer's member ``who``."""
        reply: bytes = self.peer.call("group_info", who=who)["group_info"]
        return reply


def unmerged_leaves_violations(tree: RatchetTree) -> list[tuple[int, int, int]]:
    """Breaches of RFC 9420 §12.4.3.1's unmerged-leaves rule, as (parent, leaf, node).

    For each non-blank parent P and leaf L in its ``unmerged_leaves``, every non-blank node
    strictly between L and P must list L too.  (Nodes above P, and the exact contents of the
    lists, are not constrained.)
    """
    bad = []
    for p in range(1, len(tree.nodes), 2):
        parent = tree.parent_node(p)
        if parent is None:
            continue
        for leaf in parent.unmerged_leaves:
            for q in tm.direct_path(tm.leaf_to_node(leaf), tree.n_leaves):
                if q == p:
                    break
                between = tree.parent_node(q)
                if between is not None and leaf not in between.unmerged_leaves:
                    bad.append((p, leaf, q))
    return bad


def nest_unmerged_leaves(room: Room) -> tuple[bytes, bytes]:
    """Build, with our members only, a tree whose parents hold different unmerged lists.

    Six members (leaves 0-5); the one at leaf 2 removes leaves 0 and 5 with a path, which
    sets nodes 3 and 7 while leaf 0 is blank; the next two members added land at leaves 0
    and 5, so node 3 lists [0] and the root [0, 5] — valid per RFC 9420.  Returns the
    identity of the member at leaf 2 (to commit the adds) and of a new member of ours to add.
    """
    creator = room.we_create("nest-a")
    others = [room.new_our_member(f"nest-{n}") for n in "bcdef"]
    room.we_add(creator, ours=tuple(others))
    committer = others[1]
    room.we_remove(committer, [creator, others[4]])
    return committer, room.new_our_member("nest-g")


def tree_of(client: MlsClient, group_id: bytes) -> RatchetTree:
    """The ratchet tree our member holds (its public tree, as the client exports it)."""
    return RatchetTree.from_bytes(client.ratchet_tree(group_id))


def required_capabilities(credential_types: list[int]) -> bytes:
    """A required_capabilities extension body: no extension or proposal types, these creds."""
    w = Writer()
    w.vector((), write_u16)
    w.vector((), write_u16)
    w.vector(credential_types, write_u16)
    return w.getvalue()
