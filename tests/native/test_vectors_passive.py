"""Official vectors: passive-client-handling-commit, passive-client-random."""

from __future__ import annotations

from typing import Any

import pytest

from mls.native.codec import decode_exact
from mls.native.framing import MLSMessage
from mls.native.group import PendingProposal, open_message, process_commit, proposal_ref
from mls.native.join import GroupEpoch, join_from_welcome
from mls.native.key_package import KeyPackage
from mls.native.proposals import Proposal
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
