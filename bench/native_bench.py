"""Micro-benchmark of the native MLS engine: message protection and tree operations.

Run from the repository root with ``python -m bench.native_bench``; prints operations per
second per cipher suite. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from mls.native.framing import FramedContent, Sender, SenderType, WireFormat
from mls.native.group_context import GroupContext
from mls.native.leaf_node import (
    Capabilities,
    Credential,
    CredentialType,
    LeafNode,
    LeafNodeSource,
    Lifetime,
)
from mls.native.protection import protect_private, sign_content, unprotect_private
from mls.native.secret_tree import SecretTree
from mls.native.suites import SUITES, CipherSuite
from mls.native.tree import RatchetTree
from mls.native.treekem import TreePrivate, create_update_path, process_update_path


def _rate(fn: Callable[[], object], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        count += 1
    return count / (time.perf_counter() - start)


def _leaf(cs: CipherSuite, i: int) -> tuple[LeafNode, bytes, bytes]:
    sig_priv, sig_pub = cs.generate_signature_key_pair()
    enc_priv, enc_pub = cs.hpke.generate_key_pair()
    leaf = LeafNode(
        enc_pub,
        sig_pub,
        Credential(CredentialType.BASIC, identity=f"m{i}".encode()),
        Capabilities((1,), (cs.suite_id,), (), (), (1,)),
        LeafNodeSource.KEY_PACKAGE,
        Lifetime(0, 2**63),
        b"",
        (),
        b"",
    ).signed(cs, sig_priv, None, None)
    return leaf, sig_priv, enc_priv


def bench_suite(cs: CipherSuite, members: int, seconds: float) -> None:
    """Print rates for PrivateMessage round trips and UpdatePath create/process."""
    ctx = GroupContext(cs.suite_id, b"bench", 1, b"\x00" * cs.hash_size, b"")
    sig_priv, sig_pub = cs.generate_signature_key_pair()
    framed = FramedContent(b"bench", 1, Sender(SenderType.MEMBER, 0), b"", b"x" * 256)
    auth = sign_content(cs, WireFormat.PRIVATE_MESSAGE, framed, sig_priv, ctx)
    tree0 = SecretTree.create(cs, b"\x01" * cs.hash_size, members)
    state = {"send": tree0, "recv": tree0}

    def send_recv() -> None:
        msg, state["send"] = protect_private(cs, auth, state["send"], b"\x02" * cs.hash_size)
        _, state["recv"] = unprotect_private(
            cs, msg, state["recv"], b"\x02" * cs.hash_size, ctx, {0: sig_pub}
        )

    leaves = [_leaf(cs, i) for i in range(members)]
    tree = RatchetTree((leaves[0][0],))
    for leaf, _, _ in leaves[1:]:
        tree, _ = tree.add_leaf(leaf)
    receiver = TreePrivate(members - 1, leaves[-1][2], {})
    path, _, _ = create_update_path(cs, tree, 0, leaves[0][1], ctx)

    rates = {
        "private msg round trip": _rate(send_recv, seconds),
        "tree hash": _rate(lambda: tree.tree_hash(cs), seconds),
        "UpdatePath create": _rate(
            lambda: create_update_path(cs, tree, 0, leaves[0][1], ctx), seconds
        ),
        "UpdatePath process": _rate(
            lambda: process_update_path(cs, tree, 0, path, ctx, receiver), seconds
        ),
    }
    for name, rate in rates.items():
        print(f"suite {cs.suite_id} ({members} members) {name:>24}: {rate:10.1f} ops/s")


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--suite", type=int, action="append")
    args = parser.parse_args()
    for suite_id in args.suite or sorted(SUITES):
        bench_suite(SUITES[suite_id], args.members, args.seconds)


if __name__ == "__main__":
    main()
