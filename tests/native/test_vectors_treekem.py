"""Official vectors: treekem."""

from __future__ import annotations

from typing import Any

import pytest

from mls.native.codec import decode_exact
from mls.native.group_context import GroupContext
from mls.native.proposals import UpdatePath
from mls.native.suites import CipherSuite, get_suite
from mls.native.tree import RatchetTree
from mls.native.treekem import (
    TreePrivate,
    create_update_path,
    merge_update_path,
    process_update_path,
)

from .conftest import h, vector_cases


def _privates(cs: CipherSuite, case: dict[str, Any], tree: RatchetTree) -> dict[int, TreePrivate]:
    out: dict[int, TreePrivate] = {}
    for lp in case["leaves_private"]:
        priv = TreePrivate(lp["index"], h(lp["encryption_priv"]), {})
        for ps in lp["path_secrets"]:
            priv = priv.with_path_secret(cs, ps["node"], h(ps["path_secret"]))
        priv.check_consistent(cs, tree)
        out[lp["index"]] = TreePrivate.from_bytes(priv.to_bytes())
    return out


@pytest.mark.parametrize("case", vector_cases("treekem"))
def test_treekem(case: dict[str, Any]) -> None:
    """Each UpdatePath decrypts to the expected secrets, and our own paths are processable."""
    cs = get_suite(case["cipher_suite"])
    tree = RatchetTree.from_bytes(h(case["ratchet_tree"]))
    privates = _privates(cs, case, tree)
    sig_privs = {lp["index"]: h(lp["signature_priv"]) for lp in case["leaves_private"]}
    base = GroupContext(
        cs.suite_id, h(case["group_id"]), case["epoch"], b"", h(case["confirmed_transcript_hash"])
    )
    members = tree.member_leaves()
    for up in case["update_paths"]:
        sender = up["sender"]
        raw = h(up["update_path"])
        path = decode_exact(raw, UpdatePath.decode)
        assert path.to_bytes() == raw
        merged = merge_update_path(cs, tree, sender, path, base.group_id)
        assert merged.tree_hash(cs) == h(up["tree_hash_after"])
        for j in members:
            if j == sender:
                continue
            res, _ = process_update_path(cs, tree, sender, path, base, privates[j])
            assert res.path_secret == h(up["path_secrets"][j])
            assert res.commit_secret == h(up["commit_secret"])
            assert res.tree.tree_hash(cs) == h(up["tree_hash_after"])
        new_path, mine, _ = create_update_path(cs, tree, sender, sig_privs[sender], base)
        new_path = decode_exact(new_path.to_bytes(), UpdatePath.decode)
        for j in members:
            if j == sender:
                continue
            res, _ = process_update_path(cs, tree, sender, new_path, base, privates[j])
            assert res.commit_secret == mine.commit_secret
            assert res.tree.tree_hash(cs) == mine.tree.tree_hash(cs)
