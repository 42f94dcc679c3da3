"""Official vectors: tree-validation, tree-operations."""

from __future__ import annotations

from typing import Any

import pytest

from mls.native.codec import decode_exact
from mls.native.proposals import Add, Proposal, Remove, Update
from mls.native.suites import get_suite
from mls.native.tree import RatchetTree

from .conftest import h, vector_cases


@pytest.mark.parametrize("case", vector_cases("tree-validation"))
def test_tree_validation(case: dict[str, Any]) -> None:
    """Resolutions and tree hashes match; parent hashes and leaf signatures verify."""
    cs = get_suite(case["cipher_suite"])
    raw = h(case["tree"])
    tree = RatchetTree.from_bytes(raw)
    assert tree.to_bytes() == raw
    assert [tree.resolution(x) for x in range(len(tree.nodes))] == case["resolutions"]
    assert tree.tree_hashes(cs) == [h(x) for x in case["tree_hashes"]]
    tree.verify(cs, h(case["group_id"]))


@pytest.mark.parametrize("case", vector_cases("tree-operations"))
def test_tree_operations(case: dict[str, Any]) -> None:
    """Applying the add/update/remove proposal yields the expected tree and tree hash."""
    cs = get_suite(case["cipher_suite"])
    tree = RatchetTree.from_bytes(h(case["tree_before"]))
    assert tree.tree_hash(cs) == h(case["tree_hash_before"])
    proposal = decode_exact(h(case["proposal"]), Proposal.decode)
    body = proposal.body
    if isinstance(body, Add):
        tree, _ = tree.add_leaf(body.key_package.leaf_node)
    elif isinstance(body, Update):
        tree = tree.update_leaf(case["proposal_sender"], body.leaf_node)
    else:
        assert isinstance(body, Remove)
        tree = tree.remove_leaf(body.removed)
    assert tree.to_bytes() == h(case["tree_after"])
    assert tree.tree_hash(cs) == h(case["tree_hash_after"])
