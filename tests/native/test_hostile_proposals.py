"""A member's invalid proposal cannot freeze a group (RFC 9420 §12.1, §12.2).

Mallory (a native member) sends proposals no valid commit may include.  Native members
refuse them on receipt with :class:`InvalidProposal` and leave their storage untouched;
mls-rs members queue them and leave them out when they commit.  Either way every member
can still commit and send afterwards, and a restart from the vault shows the same state.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("mls_rs_uniffi")

from mls.client import ReceivedKind
from mls.native.engine import _key_package
from mls.native.errors import InvalidProposal
from mls.native.leaf_node import Extension, ExtensionType
from mls.native.proposals import (
    Add,
    GroupContextExtensions,
    PreSharedKey,
    PreSharedKeyID,
    ProposalBody,
    PskType,
)
from tests.native.hostile import GID, Room, forge_proposal, refused_by_all, room

MIXED = [("alice", "native"), ("bob", "mls-rs"), ("carol", "native"), ("mallory", "native")]
#: required_capabilities requiring nothing: three empty vectors.
NOTHING_REQUIRED = Extension(ExtensionType.REQUIRED_CAPABILITIES, b"\x00\x00\x00")


@pytest.fixture
def r(tmp_path: Path) -> Iterator[Room]:
    """Alice (native) created the group with bob (mls-rs), carol and mallory (native)."""
    with room(tmp_path, MIXED) as built:
        yield built


INVALID: dict[str, tuple[ProposalBody, str]] = {
    "gce-unsupported-extension": (
        GroupContextExtensions((Extension(0xFF00, b"topic"),)),
        "does not support",
    ),
    "gce-malformed-required-capabilities": (
        GroupContextExtensions((Extension(ExtensionType.REQUIRED_CAPABILITIES, b"\x05ab"),)),
        "malformed required_capabilities",
    ),
    "gce-unmet-required-capabilities": (
        GroupContextExtensions(
            (Extension(ExtensionType.REQUIRED_CAPABILITIES, b"\x02\xff\x01\x00\x00"),)
        ),
        "required capability",
    ),
    "gce-leaf-only-extension": (
        GroupContextExtensions((Extension(ExtensionType.APPLICATION_ID, b"x"),)),
        "does not belong in a GroupContext",
    ),
    "psk-unknown": (
        PreSharedKey(PreSharedKeyID(PskType.EXTERNAL, os.urandom(32), psk_id=b"no such psk")),
        "unknown PSK",
    ),
    "psk-3-byte-nonce": (
        PreSharedKey(PreSharedKeyID(PskType.EXTERNAL, b"abc", psk_id=b"no such psk")),
        "nonce length",
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_proposal_is_refused_and_the_group_stays_live(r: Room, case: str) -> None:
    """Refused with InvalidProposal by native members; everyone can still commit and send."""
    body, match = INVALID[case]
    message = forge_proposal(r.native("mallory"), body)
    outcome = refused_by_all(r, "mallory", message, InvalidProposal, match=match)
    assert outcome["alice"] == outcome["carol"] == "refused InvalidProposal"
    r.check_live()
    r.check_restart()
    r.check_live()


def test_two_group_context_extensions_the_newer_one_is_committed(r: Room) -> None:
    """Two valid GroupContextExtensions are both queued; a commit carries only the newer."""
    mallory = r.native("mallory")
    first = forge_proposal(mallory, GroupContextExtensions(()))
    second = forge_proposal(mallory, GroupContextExtensions((NOTHING_REQUIRED,)))
    for message in (first, second):
        for client in r.others("mallory"):
            assert client.process(GID, message).kind == ReceivedKind.PROPOSAL
    commit = r["alice"].update_keys(GID)
    r.deliver("alice", commit)
    r.check_agree()
    for name in ("alice", "carol", "mallory"):
        assert r.native(name)._context(GID).extensions == (NOTHING_REQUIRED,)
    r.check_live()
    r.check_restart()


def test_two_group_context_extensions_committed_by_mls_rs(r: Room) -> None:
    """When the mls-rs member commits the pair, native members follow its choice."""
    mallory = r.native("mallory")
    for body in (GroupContextExtensions(()), GroupContextExtensions((NOTHING_REQUIRED,))):
        message = forge_proposal(mallory, body)
        for client in r.others("mallory"):
            client.process(GID, message)
    commit = r["bob"].update_keys(GID)
    r.deliver("bob", commit)
    r.check_agree()
    r.check_live()


@pytest.mark.parametrize("committer", ["alice", "bob"])
def test_the_same_key_package_in_two_adds_joins_once(
    r: Room, tmp_path: Path, committer: str
) -> None:
    """Two Adds of one key package are queued; the commit adds the member once."""
    dave = r.make("dave", "native")
    kp = _key_package(dave.generate_key_package())
    del r.clients["dave"]
    mallory = r.native("mallory")
    for _ in range(2):
        message = forge_proposal(mallory, Add(kp))
        for client in r.others("mallory"):
            assert client.process(GID, message).kind == ReceivedKind.PROPOSAL
    commit = r[committer].update_keys(GID)
    r.deliver(committer, commit)
    members = {tuple(c.members(GID)) for c in r.clients.values()}
    assert len(members) == 1
    assert sorted(members.pop()) == [b"alice", b"bob", b"carol", b"dave", b"mallory"]


def test_a_vault_that_queued_an_invalid_proposal_can_commit_again(r: Room) -> None:
    """A proposal queued before receipt checks existed (or by other software) is left out of
    the next commit instead of making every commit fail, also after a restart."""
    alice = r.native("alice")
    # Queue the invalid proposal directly, as an older version of the engine did.
    bad = GroupContextExtensions((Extension(0xFF00, b"topic"),))
    forge_proposal(alice, bad)
    assert len(alice.storage.queued_proposals(GID)) == 1
    r.restart("alice")
    commit = r["alice"].update_keys(GID)
    r.deliver("alice", commit)
    r.check_agree()
    assert r.native("alice")._context(GID).extensions == ()
    r.check_live()


def test_clear_pending_proposals_forgets_the_queue(r: Room) -> None:
    """clear_pending_proposals empties the queue, durably; later commits go through."""
    message = forge_proposal(r.native("mallory"), GroupContextExtensions((NOTHING_REQUIRED,)))
    r["alice"].process(GID, message)
    alice = r.native("alice")
    assert alice.storage.queued_proposals(GID)
    alice.clear_pending_proposals(GID)
    assert alice.storage.queued_proposals(GID) == []
    r.restart("alice")
    assert r.native("alice").storage.queued_proposals(GID) == []
    commit = r["alice"].update_keys(GID)
    r.deliver("alice", commit)
    r.check_agree()
    assert r.native("alice")._context(GID).extensions == ()


def test_a_commit_referencing_a_refused_proposal_is_refused(r: Room) -> None:
    """Mallory commits its own invalid proposal by reference: native members refuse the
    commit (they never queued it) with our error, and the group goes on without it."""
    mallory = r.native("mallory")
    forge_proposal(mallory, GroupContextExtensions((Extension(0xFF00, b"topic"),)))
    with mallory._lock, mallory.storage.operation():
        from mls.native.commit import create_commit
        from mls.native.validation import PendingProposal

        group = mallory._group(GID)
        (queued,) = mallory._queued(GID).values()
        assert isinstance(queued, PendingProposal)
        from unittest import mock

        with mock.patch("mls.native.commit.validate_proposal_list"), mock.patch(
            "mls.native.commit._check_required_capabilities"
        ):
            out = create_commit(
                group,
                mallory._sig_priv,
                [queued],
                mallory._psk_lookup(GID),
                wire_format=mallory._config(GID).handshake,
                force_path=True,
            )
        commit = mallory._protect(GID, out.auth, mallory._config(GID))
    from mls.native.errors import InvalidMessage

    refused_by_all(r, "mallory", commit, InvalidMessage)
    r.check_live()
    r.check_restart()
