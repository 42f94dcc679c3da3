"""Official vectors: passive-client-handling-commit, passive-client-random."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from mls.native.codec import decode_exact
from mls.native.errors import AuthenticationError, InvalidMessage
from mls.native.framing import AuthenticatedContent, MLSMessage
from mls.native.group import PendingProposal, open_message, process_commit, proposal_ref
from mls.native.join import GroupEpoch, join_from_welcome
from mls.native.key_package import KeyPackage
from mls.native.proposals import Commit, Proposal, ProposalOrRef
from mls.native.suites import get_suite
from mls.native.tree import RatchetTree
from mls.native.welcome import Welcome

from .conftest import h, vector_cases


def _follow(case: dict[str, Any]) -> None:
    cs = get_suite(case["cipher_suite"])
    kp = decode_exact(h(case["key_package"]), MLSMessage.decode).body
    welcome = decode_exact(h(case["welcome"]), MLSMessage.decode).body
    assert isinstance(kp, KeyPackage)
    assert isinstance(welcome, Welcome)
    tree = RatchetTree.from_bytes(h(case["ratchet_tree"])) if case["ratchet_tree"] else None
    psks = {h(p["psk_id"]): h(p["psk"]) for p in case["external_psks"]}
    group = join_from_welcome(
        welcome, kp, h(case["init_priv"]), h(case["encryption_priv"]), psks, tree
    )
    assert group.secrets.epoch_authenticator == h(case["initial_epoch_authenticator"])
    resumption = {(group.context.group_id, group.context.epoch): group.secrets.resumption_psk}
    for epoch in case["epochs"]:
        pending: dict[bytes, PendingProposal] = {}
        for raw in epoch["proposals"]:
            auth, group = open_message(group, decode_exact(h(raw), MLSMessage.decode))
            assert isinstance(auth.content.content, Proposal)
            pending[proposal_ref(cs, auth)] = PendingProposal(
                auth.content.sender.index, auth.content.content
            )
        auth, group = open_message(group, decode_exact(h(epoch["commit"]), MLSMessage.decode))
        group = process_commit(group, auth, pending, psks, resumption)
        group = GroupEpoch.from_bytes(group.to_bytes())
        resumption[(group.context.group_id, group.context.epoch)] = group.secrets.resumption_psk
        assert group.secrets.epoch_authenticator == h(epoch["epoch_authenticator"])


@pytest.mark.parametrize("case", vector_cases("passive-client-handling-commit"))
def test_passive_client_handling_commit(case: dict[str, Any]) -> None:
    """Following each commit reproduces every epoch authenticator."""
    _follow(case)


@pytest.mark.parametrize("case", vector_cases("passive-client-random"))
def test_passive_client_random(case: dict[str, Any]) -> None:
    """Following 200 random epochs reproduces every epoch authenticator."""
    _follow(case)


def _first_commit(case: dict[str, Any]) -> tuple[GroupEpoch, AuthenticatedContent]:
    kp = decode_exact(h(case["key_package"]), MLSMessage.decode).body
    welcome = decode_exact(h(case["welcome"]), MLSMessage.decode).body
    assert isinstance(kp, KeyPackage)
    assert isinstance(welcome, Welcome)
    tree = RatchetTree.from_bytes(h(case["ratchet_tree"])) if case["ratchet_tree"] else None
    group = join_from_welcome(
        welcome, kp, h(case["init_priv"]), h(case["encryption_priv"]), {}, tree
    )
    commit = decode_exact(h(case["epochs"][0]["commit"]), MLSMessage.decode)
    auth, group = open_message(group, commit)
    return group, auth


_NO_PSK_CASE = vector_cases("passive-client-random")[:1]


@pytest.mark.parametrize("case", _NO_PSK_CASE)
def test_commit_with_bad_confirmation_tag_rejected(case: dict[str, Any] | None) -> None:
    """A commit whose confirmation tag was altered does not advance the epoch."""
    assert case is not None
    group, auth = _first_commit(case)
    tag = auth.auth.confirmation_tag
    assert tag is not None
    bad_auth = replace(auth.auth, confirmation_tag=bytes([tag[0] ^ 1]) + tag[1:])
    with pytest.raises(AuthenticationError):
        process_commit(group, replace(auth, auth=bad_auth), {}, {}, {})


@pytest.mark.parametrize("case", _NO_PSK_CASE)
def test_commit_with_unknown_reference_rejected(case: dict[str, Any] | None) -> None:
    """A commit referencing a proposal that was never received is refused."""
    assert case is not None
    group, auth = _first_commit(case)
    commit = auth.content.content
    assert isinstance(commit, Commit)
    bogus = replace(commit, proposals=(ProposalOrRef(reference=b"\x00" * 32),))
    with pytest.raises(InvalidMessage):
        process_commit(
            group, replace(auth, content=replace(auth.content, content=bogus)), {}, {}, {}
        )
