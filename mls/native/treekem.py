"""TreeKEM (RFC 9420 §7.4-§7.6): path secrets, UpdatePath creation, merging and decryption."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, replace

from . import tree_math as tm
from .codec import Reader, Struct, Writer, decode_exact
from .errors import AuthenticationError, CryptoError, InvalidMessage, InvalidTree
from .group_context import GroupContext
from .leaf_node import Credential, LeafNode, LeafNodeSource
from .proposals import HPKECiphertext, UpdatePath, UpdatePathNode
from .suites import CipherSuite
from .tree import Node, ParentNode, RatchetTree


@dataclass(frozen=True, slots=True, repr=False)
class TreePrivate(Struct):
    """A member's private TreeKEM state: leaf key and keys of parent nodes it knows."""

    leaf_index: int
    encryption_priv: bytes
    node_privs: dict[int, bytes]

    def __repr__(self) -> str:
        """Never print secrets."""
        return f"TreePrivate(leaf_index={self.leaf_index}, nodes={sorted(self.node_privs)})"

    def encode(self, w: Writer) -> None:
        """Serialize for storage."""
        w.u32(self.leaf_index)
        w.opaque(self.encryption_priv)
        w.u32(len(self.node_privs))
        for node, priv in sorted(self.node_privs.items()):
            w.u32(node)
            w.opaque(priv)

    @classmethod
    def decode(cls, r: Reader) -> TreePrivate:
        """Deserialize from storage."""
        leaf, priv = r.u32(), r.opaque()
        return cls(leaf, priv, {r.u32(): r.opaque() for _ in range(r.u32())})

    @classmethod
    def from_bytes(cls, data: bytes) -> TreePrivate:
        """Strict inverse of :meth:`to_bytes`."""
        return decode_exact(data, cls.decode)

    def with_path_secret(self, cs: CipherSuite, node: int, path_secret: bytes) -> TreePrivate:
        """Add the private key of ``node`` derived from its path secret."""
        priv, _ = node_key_pair(cs, path_secret)
        return replace(self, node_privs={**self.node_privs, node: priv})

    def private_key(self, node: int) -> bytes | None:
        """Private key for a node index, if held."""
        if node == tm.leaf_to_node(self.leaf_index):
            return self.encryption_priv
        return self.node_privs.get(node)

    def check_consistent(self, cs: CipherSuite, tree: RatchetTree) -> None:
        """Every held private key must match the public key of a non-blank tree node."""
        held = {tm.leaf_to_node(self.leaf_index): self.encryption_priv, **self.node_privs}
        for node, priv in held.items():
            if not 0 <= node < len(tree.nodes):
                raise InvalidTree(f"private key for node {node} outside the tree")
            pub = tree.nodes[node]
            if pub is None or cs.hpke.public_from_private(priv) != pub.encryption_key:
                raise InvalidTree(f"private key for node {node} does not match the tree")


def node_key_pair(cs: CipherSuite, path_secret: bytes) -> tuple[bytes, bytes]:
    """node_secret = DeriveSecret(path_secret, "node"); KEM.DeriveKeyPair(node_secret)."""
    return cs.derive_key_pair(cs.derive_secret(path_secret, "node"))


def _copath_child(p: int, leaf_node: int) -> int:
    left = tm.left(p)
    return tm.right(p) if tm.is_in_subtree(leaf_node, left) else left


def _encryption_targets(tree: RatchetTree, node: int, excluded: Collection[int]) -> list[int]:
    return [
        x for x in tree.resolution(node) if not (tm.is_leaf(x) and tm.node_to_leaf(x) in excluded)
    ]


def _apply_path_keys(
    cs: CipherSuite, tree: RatchetTree, sender: int, keys: list[bytes]
) -> tuple[RatchetTree, bytes]:
    """Blank the sender's direct path, set new parent keys with parent hashes top-down.

    Returns the tree (leaf untouched) and the parent hash the sender's leaf must carry.
    """
    fdp = tree.filtered_direct_path(sender)
    if len(fdp) != len(keys):
        raise InvalidMessage(f"UpdatePath has {len(keys)} nodes, expected {len(fdp)}")
    tree = tree.blank_path(sender)
    leaf_node = tm.leaf_to_node(sender)
    changes: dict[int, Node | None] = {}
    above = b""
    for p, key in reversed(list(zip(fdp, keys, strict=True))):
        changes[p] = ParentNode(key, above, ())
        w = Writer()
        w.opaque(key)
        w.opaque(above)
        w.opaque(tree.tree_hash(cs, _copath_child(p, leaf_node)))
        above = cs.hash(w.getvalue())
    return tree.with_nodes(changes), above


def merge_update_path(
    cs: CipherSuite, tree: RatchetTree, sender: int, path: UpdatePath, group_id: bytes
) -> RatchetTree:
    """Validate an UpdatePath (leaf source, parent hash, signature) and merge it."""
    if tree.leaf(sender) is None:
        raise InvalidTree(f"UpdatePath from blank leaf {sender}")
    keys = [n.encryption_key for n in path.nodes]
    merged, leaf_parent_hash = _apply_path_keys(cs, tree, sender, keys)
    leaf = path.leaf_node
    if leaf.leaf_node_source != LeafNodeSource.COMMIT:
        raise InvalidMessage("UpdatePath leaf must have source commit")
    if leaf.parent_hash != leaf_parent_hash:
        raise InvalidTree("UpdatePath leaf parent hash mismatch")
    leaf.verify(cs, group_id, sender)
    return merged.with_nodes({tm.leaf_to_node(sender): leaf})


@dataclass(frozen=True, slots=True, repr=False)
class PathResult:
    """Outcome of creating or processing an UpdatePath."""

    tree: RatchetTree
    private: TreePrivate
    commit_secret: bytes
    path_secret: bytes

    def __repr__(self) -> str:
        """Never print secrets."""
        return "PathResult(<redacted>)"


def create_update_path(
    cs: CipherSuite,
    tree: RatchetTree,
    sender: int,
    sig_priv: bytes,
    context: GroupContext,
    excluded: Collection[int] = (),
    leaf_secret: bytes | None = None,
    credential: Credential | None = None,
) -> tuple[UpdatePath, PathResult, GroupContext]:
    """Build an UpdatePath from ``sender``.

    ``context`` supplies every GroupContext field except the tree hash, which is replaced by
    the hash of the updated tree; ``excluded`` lists leaves added by the same commit.
    ``credential`` replaces the sender's credential in its new leaf (a certificate renewed
    or an upgrade to X.509); by default the old leaf's is kept.
    """
    old_leaf = tree.leaf(sender)
    if old_leaf is None:
        raise InvalidTree(f"UpdatePath from blank leaf {sender}")
    secret = os.urandom(cs.hash_size) if leaf_secret is None else leaf_secret
    leaf_priv, leaf_pub = node_key_pair(cs, secret)
    fdp = tree.filtered_direct_path(sender)
    path_secrets: list[bytes] = []
    ps = secret
    for _ in fdp:
        ps = cs.derive_secret(ps, "path")
        path_secrets.append(ps)
    commit_secret = cs.derive_secret(ps, "path")
    pairs = [node_key_pair(cs, s) for s in path_secrets]
    merged, leaf_parent_hash = _apply_path_keys(cs, tree, sender, [pub for _, pub in pairs])
    leaf = LeafNode(
        leaf_pub,
        old_leaf.signature_key,
        old_leaf.credential if credential is None else credential,
        old_leaf.capabilities,
        LeafNodeSource.COMMIT,
        None,
        leaf_parent_hash,
        old_leaf.extensions,
        b"",
    ).signed(cs, sig_priv, context.group_id, sender)
    merged = merged.with_nodes({tm.leaf_to_node(sender): leaf})
    new_context = replace(context, tree_hash=merged.tree_hash(cs))
    ctx_bytes = new_context.to_bytes()
    leaf_node = tm.leaf_to_node(sender)
    nodes: list[UpdatePathNode] = []
    for p, ps_i, (_, pub) in zip(fdp, path_secrets, pairs, strict=True):
        cts = []
        for target in _encryption_targets(tree, _copath_child(p, leaf_node), excluded):
            kem_output, ct = cs.encrypt_with_label(
                tree.encryption_key(target), "UpdatePathNode", ctx_bytes, ps_i
            )
            cts.append(HPKECiphertext(kem_output, ct))
        nodes.append(UpdatePathNode(pub, tuple(cts)))
    private = TreePrivate(
        sender, leaf_priv, {p: priv for p, (priv, _) in zip(fdp, pairs, strict=True)}
    )
    result = PathResult(merged, private, commit_secret, path_secrets[0] if fdp else b"")
    return UpdatePath(leaf, tuple(nodes)), result, new_context


def process_update_path(
    cs: CipherSuite,
    tree: RatchetTree,
    sender: int,
    path: UpdatePath,
    context: GroupContext,
    private: TreePrivate,
    excluded: Collection[int] = (),
) -> tuple[PathResult, GroupContext]:
    """Merge an UpdatePath and decrypt the path secret addressed to ``private``'s leaf.

    ``context`` supplies the GroupContext fields except the tree hash (recomputed after merge).
    """
    if sender == private.leaf_index:
        raise InvalidMessage("cannot process our own UpdatePath")
    merged = merge_update_path(cs, tree, sender, path, context.group_id)
    new_context = replace(context, tree_hash=merged.tree_hash(cs))
    fdp = tree.filtered_direct_path(sender)
    sender_node = tm.leaf_to_node(sender)
    own_node = tm.leaf_to_node(private.leaf_index)
    idx = next((i for i, p in enumerate(fdp) if tm.is_in_subtree(own_node, p)), None)
    if idx is None:
        raise InvalidTree("no common ancestor in the sender's filtered direct path")
    targets = _encryption_targets(tree, _copath_child(fdp[idx], sender_node), excluded)
    cts = path.nodes[idx].encrypted_path_secret
    if len(cts) != len(targets):
        raise InvalidMessage("UpdatePathNode ciphertext count does not match the resolution")
    pos = next((k for k, x in enumerate(targets) if private.private_key(x) is not None), None)
    if pos is None:
        raise CryptoError("no private key for any node in the copath resolution")
    priv = private.private_key(targets[pos])
    assert priv is not None
    ct = cts[pos]
    path_secret = cs.decrypt_with_label(
        priv, "UpdatePathNode", new_context.to_bytes(), ct.kem_output, ct.ciphertext
    )
    on_path = set(tm.direct_path(sender_node, tree.n_leaves))
    node_privs = {n: k for n, k in private.node_privs.items() if n not in on_path}
    ps = path_secret
    for i in range(idx, len(fdp)):
        if i > idx:
            ps = cs.derive_secret(ps, "path")
        node_priv, node_pub = node_key_pair(cs, ps)
        if node_pub != path.nodes[i].encryption_key:
            raise AuthenticationError(f"derived key for node {fdp[i]} does not match UpdatePath")
        node_privs[fdp[i]] = node_priv
    commit_secret = cs.derive_secret(ps, "path")
    new_private = replace(private, node_privs=node_privs)
    return PathResult(merged, new_private, commit_secret, path_secret), new_context
