"""External senders (RFC 9420 §12.1.8.1): proposals from a non-member named by the group."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mls.native import (
    CryptoError,
    InvalidMessage,
    NativeEngine,
    ProcessedKind,
)
from mls.native.codec import decode_exact
from mls.native.external import (
    ExternalSender,
    external_proposal,
    external_senders_extension,
)
from mls.native.framing import (
    FramedContent,
    MLSMessage,
    PublicMessage,
    Sender,
    SenderType,
    WireFormat,
)
from mls.native.group_context import GroupContext
from mls.native.key_package import KeyPackage
from mls.native.leaf_node import Credential, CredentialType, LeafNodeSource
from mls.native.proposals import Add, Proposal, Remove, Update
from mls.native.protection import sign_content
from mls.native.suites import get_suite
from tests.native.engine_helpers import GID, agreed, member, rows


@dataclass
class Server:
    """An external sender: a signature key pair the group lists in ``external_senders``."""

    priv: bytes
    pub: bytes

    @classmethod
    def new(cls) -> Server:
        """A fresh key pair on suite 1."""
        priv, pub = get_suite(1).generate_signature_key_pair()
        return cls(priv, pub)

    def entry(self) -> ExternalSender:
        """How the group lists this server."""
        return ExternalSender(self.pub, Credential(CredentialType.BASIC, identity=b"server"))


def context_of(engine: NativeEngine) -> GroupContext:
    """The group's current context as a member sees it (what a server would track)."""
    return engine._context(GID)


def key_package(engine: NativeEngine) -> KeyPackage:
    """A fresh KeyPackage of ``engine``."""
    body = decode_exact(engine.generate_key_package(), MLSMessage.decode).body
    assert isinstance(body, KeyPackage)
    return body


def served_group(servers: list[Server]) -> tuple[NativeEngine, NativeEngine]:
    """Alice creates a group listing the servers as external senders and adds Bob."""
    alice, bob = member("alice"), member("bob")
    alice.create_group(GID, extensions=[external_senders_extension([s.entry() for s in servers])])
    _, welcome = alice.commit(GID, add=[bob.generate_key_package()])
    assert welcome is not None
    bob.join(welcome)
    return alice, bob


def test_external_add_is_queued_and_committed_by_a_member() -> None:
    """The server proposes Carol; both members queue it; Bob commits it; Carol joins."""
    server = Server.new()
    alice, bob = served_group([server])
    carol = member("carol")
    proposal = external_proposal(1, server.priv, context_of(alice), 0, Add(key_package(carol)))
    for m in (alice, bob):
        got = m.process(GID, proposal)
        assert got.kind == ProcessedKind.PROPOSAL and got.external_sender
        assert (got.sender, got.identity) == (0, b"server")
    commit, welcome = bob.commit(GID)
    assert welcome is not None
    alice.process(GID, commit)
    carol.join(welcome)
    assert agreed([alice, bob, carol])
    assert [who for _, who in carol.members(GID)] == [b"alice", b"bob", b"carol"]


def test_external_remove_is_committed() -> None:
    """The server proposes removing Bob; Alice commits it; Bob learns he was removed."""
    server = Server.new()
    alice, bob = served_group([server])
    proposal = external_proposal(1, server.priv, context_of(alice), 0, Remove(1))
    alice.process(GID, proposal)
    bob.process(GID, proposal)
    commit, _ = alice.commit(GID)
    assert bob.process(GID, commit).removed
    assert alice.members(GID) == [(0, b"alice")]


def test_second_listed_sender_is_told_apart_by_index() -> None:
    """The sender index selects the key; a proposal signed by another key is refused."""
    first, second = Server.new(), Server.new()
    alice, _ = served_group([first, second])
    ok = external_proposal(1, second.priv, context_of(alice), 1, Remove(1))
    assert alice.process(GID, ok).sender == 1
    alice, _ = served_group([first, second])
    before = rows(alice.storage)
    wrong_key = external_proposal(1, first.priv, context_of(alice), 1, Remove(1))
    with pytest.raises(CryptoError):
        alice.process(GID, wrong_key)
    assert rows(alice.storage) == before


def test_unlisted_sender_is_refused() -> None:
    """Without the extension, or with an index past its end, external proposals are refused."""
    server = Server.new()
    alice, _ = served_group([server])
    too_far = external_proposal(1, server.priv, context_of(alice), 1, Remove(1))
    with pytest.raises(InvalidMessage, match="no external sender"):
        alice.process(GID, too_far)
    plain, _ = served_group([])
    anyone = external_proposal(1, server.priv, context_of(plain), 0, Remove(1))
    with pytest.raises(InvalidMessage, match="no external sender"):
        plain.process(GID, anyone)


def test_external_sender_may_not_send_an_update() -> None:
    """§12.1.8: Update is not among the proposal types an external sender may send."""
    server = Server.new()
    alice, bob = served_group([server])
    leaf = bob._tree(GID).leaf(1)
    assert leaf is not None and leaf.leaf_node_source != LeafNodeSource.UPDATE
    with pytest.raises(InvalidMessage, match="may not send Update"):
        external_proposal(1, server.priv, context_of(alice), 0, Update(leaf))
    context = context_of(alice)
    content = FramedContent(
        GID, context.epoch, Sender(SenderType.EXTERNAL, 0), b"", Proposal(Update(leaf))
    )
    auth = sign_content(get_suite(1), WireFormat.PUBLIC_MESSAGE, content, server.priv, None)
    raw = MLSMessage(PublicMessage(auth.content, auth.auth, None)).to_bytes()
    with pytest.raises(InvalidMessage, match="may not send Update"):
        alice.process(GID, raw)
