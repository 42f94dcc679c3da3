"""Resumption PSKs of usage reinit or branch are refused in ordinary commits (RFC 9420
§11.2, §11.3: such a PreSharedKey proposal MUST be considered invalid).

Mallory proposes, then commits, a resumption PSK of a retained epoch with usage ``reinit``
or ``branch``.  Native members refuse both with :class:`InvalidProposal` and keep their
storage; the mls-rs member refuses the commit; everyone can still commit and send.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

pytest.importorskip("mls_rs_uniffi")

from mls.native.commit import create_commit
from mls.native.errors import InvalidProposal
from mls.native.proposals import (
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    PskType,
    ResumptionPskUsage,
)
from mls.native.validation import PendingProposal
from tests.native.engine_helpers import member
from tests.native.hostile import GID, Room, forge_proposal, refused_by_all, room

MIXED = [("alice", "native"), ("bob", "mls-rs"), ("carol", "native"), ("mallory", "native")]
BAD_USAGES = [ResumptionPskUsage.REINIT, ResumptionPskUsage.BRANCH]


@pytest.fixture
def r(tmp_path: Path) -> Iterator[Room]:
    """A mixed group one epoch old, so epoch 1's resumption PSK is retained by all."""
    with room(tmp_path, MIXED) as built:
        built.deliver("alice", built["alice"].update_keys(GID))
        yield built


def _resumption(usage: ResumptionPskUsage, epoch: int = 1) -> PreSharedKeyID:
    return PreSharedKeyID(
        PskType.RESUMPTION, os.urandom(32), usage=usage, psk_group_id=GID, psk_epoch=epoch
    )


@pytest.mark.parametrize("usage", BAD_USAGES, ids=lambda u: u.name)
def test_proposal_of_a_reinit_or_branch_psk_is_refused(
    r: Room, usage: ResumptionPskUsage
) -> None:
    """The proposal is refused on receipt; the group stays live."""
    message = forge_proposal(r.native("mallory"), PreSharedKey(_resumption(usage)))
    refused_by_all(r, "mallory", message, InvalidProposal, match="reinit or branch")
    r.check_live()
    r.check_restart()


@pytest.mark.parametrize("usage", BAD_USAGES, ids=lambda u: u.name)
def test_commit_with_a_reinit_or_branch_psk_is_refused(r: Room, usage: ResumptionPskUsage) -> None:
    """A commit carrying the PSK inline is refused by every member, mls-rs included."""
    mallory = r.native("mallory")
    with mallory._lock, mallory.storage.operation():
        group = mallory._group(GID)
        psk = PendingProposal(
            group.private.leaf_index, Proposal(PreSharedKey(_resumption(usage)))
        )
        # Mallory's engine would refuse to build it: skip that check, as an attacker would.
        with mock.patch("mls.native.validation.validate_psk_proposal"):
            out = create_commit(
                group,
                mallory._sig_priv,
                [psk],
                mallory._psk_lookup(GID),
                wire_format=mallory._config(GID).handshake,
                force_path=True,
            )
        commit = mallory._protect(GID, out.auth, mallory._config(GID))
    outcome = refused_by_all(r, "mallory", commit, InvalidProposal, match="reinit or branch")
    assert outcome["bob"].startswith("refused")
    r.check_live()
    r.check_restart()


@pytest.mark.parametrize("usage", BAD_USAGES, ids=lambda u: u.name)
def test_our_engine_will_not_commit_such_a_psk(usage: ResumptionPskUsage) -> None:
    """NativeEngine.commit(psks=...) refuses a reinit/branch PSK with our error."""
    alice, bob = member("alice"), member("bob")
    alice.create_group(GID)
    _, welcome = alice.commit(GID, add=[bob.generate_key_package()])
    assert welcome is not None
    bob.join(welcome)
    with pytest.raises(InvalidProposal, match="reinit or branch"):
        alice.commit(GID, psks=[_resumption(usage, epoch=1)])
    commit, _ = alice.commit(GID, psks=[_resumption(ResumptionPskUsage.APPLICATION, 1)])
    bob.process(GID, commit)
    assert alice.epoch_authenticator(GID) == bob.epoch_authenticator(GID)
