"""The ratchet tree stored node by node, so that a commit writes only the nodes it changed.

OpenMLS keeps a group's tree as one value; in a group of a thousand members that is some
180 KB rewritten by every commit, although a commit changes one direct path.  Here each
non-blank node is its own row and a small row records the tree's width:

=========================  ==================================  ===============================
category                   row key                             value
=========================  ==================================  ===============================
``native/v1/tree``         group id                            format byte 1, u32 leaf count
                                                               (the full, power-of-two width)
``native/v1/tree_node``    u32 len(group id), group id,        format byte 1, the node as in
                           u32 node index                      ``optional<Node>`` minus the
                                                               presence byte (node type, body)
=========================  ==================================  ===============================

A blank node has no row.  Saving a tree writes the nodes that differ from the stored tree,
deletes the rows of nodes that became blank (or fell off a truncated tree) and rewrites the
width row — O(log n) rows for a commit with a path, plus one per added or removed member.

Older vaults hold the whole tree in ``openmls/v1/tree`` (the serialized ``ratchet_tree``).
Such a tree is read as it is, and converted by the next save (all its nodes written once,
the old row deleted, in the same storage operation as the rest of that epoch).

:class:`TreeRows` also remembers the last tree it loaded or saved per group, keyed by the
identity of the stored width row: the row is rewritten by every save, so a tree kept in
memory can never disagree with storage (a rolled-back operation restores the old bytes
object, which misses, and the tree is read again from its rows).  The kept tree carries
its memo of tree hashes, which is what keeps the next commit's hashing to one path.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from mls import categories as cat
from mls.storage import GranularStorage

from . import tree_math as tm
from .codec import Reader, decode_exact
from .errors import DecodeError, InvalidTree
from .leaf_node import LeafNode
from .tree import Node, NodeType, ParentNode, RatchetTree

__all__ = [
    "CATEGORY_TREE",
    "CATEGORY_TREE_NODE",
    "TreeRows",
    "candidates",
    "decode_node_row",
    "encode_node_row",
    "node_row_key",
]

CATEGORY_TREE = "native/v1/tree"
CATEGORY_TREE_NODE = "native/v1/tree_node"
#: First byte of both row values; bumped (with a reader for the old one) if a layout changes.
TREE_ROW_FORMAT = 1


def node_row_key(group_id: bytes, node: int) -> bytes:
    """Row key of one node: the group id, length-prefixed, then the node index."""
    return len(group_id).to_bytes(4, "big") + group_id + node.to_bytes(4, "big")


def encode_node_row(node: Node, body: bytes | None = None) -> bytes:
    """Value of a node row (``body``: the node's encoding, when already at hand)."""
    kind = NodeType.LEAF if isinstance(node, LeafNode) else NodeType.PARENT
    return bytes((TREE_ROW_FORMAT, kind)) + (node.to_bytes() if body is None else body)


def decode_node_row(data: bytes) -> Node:
    """Inverse of :func:`encode_node_row`; raises :class:`DecodeError` on anything else."""

    def read(r: Reader) -> Node:
        if r.u8() != TREE_ROW_FORMAT:
            raise DecodeError("stored tree node has an unknown format")
        kind = r.u8()
        if kind == NodeType.LEAF:
            return LeafNode.decode(r)
        if kind == NodeType.PARENT:
            return ParentNode.decode(r)
        raise DecodeError(f"stored tree node has an invalid type {kind}")

    return decode_exact(data, read, max_items=max(len(data), 1))  # our own row: no hostile limit


def candidates(old: RatchetTree | None, new: RatchetTree) -> Iterable[int]:
    """Node indices where ``new`` may differ from ``old``: its changes if it derives from
    ``old`` (plus the nodes cut off by truncation), else every index."""
    if old is None:
        return range(len(new.nodes))
    changed = new.memo().changed_since(old)
    if changed is None:
        return range(max(len(old.nodes), len(new.nodes)))
    return sorted(changed.union(range(len(new.nodes), len(old.nodes))))


def _encode_width(n_leaves: int) -> bytes:
    return bytes((TREE_ROW_FORMAT,)) + n_leaves.to_bytes(4, "big")


def _decode_width(data: bytes) -> int:
    if len(data) != 5 or data[0] != TREE_ROW_FORMAT:
        raise DecodeError("stored tree width row is malformed")
    n_leaves = int.from_bytes(data[1:], "big")
    if n_leaves == 0 or n_leaves & (n_leaves - 1):
        raise DecodeError("stored tree width is not a power of two")
    return n_leaves


class TreeRows:
    """Loads and saves ratchet trees in ``GranularStorage``, one row per non-blank node.

    One instance per engine; it holds no state that storage does not also hold.
    """

    def __init__(self) -> None:
        self._kept: dict[bytes, tuple[bytes, RatchetTree]] = {}
        self._lock = threading.Lock()

    def load(self, storage: GranularStorage, group_id: bytes) -> RatchetTree | None:
        """The group's stored tree (node rows, or an older vault's whole-tree row), or None."""
        width_row = storage.read(CATEGORY_TREE, group_id)
        stamp = width_row if width_row is not None else storage.read(cat.TREE, group_id)
        if stamp is None:
            return None
        with self._lock:
            kept = self._kept.get(group_id)
        if kept is not None and kept[0] is stamp:
            return kept[1]
        if width_row is None:
            tree = RatchetTree.from_stored(stamp)  # an older vault: the whole tree in one row
        else:
            tree = self._read_nodes(storage, group_id, _decode_width(width_row))
        self._keep(group_id, stamp, tree)
        return tree

    def leaf(self, storage: GranularStorage, group_id: bytes, leaf: int) -> LeafNode | None:
        """One leaf of the stored tree, without loading the others (None: blank or outside).

        What an application message needs to know of its sender: after a restart, the
        first message of a large group reads one row instead of decoding the whole tree.
        """
        width_row = storage.read(CATEGORY_TREE, group_id)
        with self._lock:
            kept = self._kept.get(group_id)
        if width_row is None or (kept is not None and kept[0] is width_row):
            tree = self.load(storage, group_id)
            return None if tree is None or not 0 <= leaf < tree.n_leaves else tree.leaf(leaf)
        if not 0 <= leaf < _decode_width(width_row):
            return None
        row = storage.read(CATEGORY_TREE_NODE, node_row_key(group_id, tm.leaf_to_node(leaf)))
        node = None if row is None else decode_node_row(row)
        if node is not None and not isinstance(node, LeafNode):
            raise DecodeError("stored tree has a parent node at a leaf position")
        return node

    @staticmethod
    def _read_nodes(storage: GranularStorage, group_id: bytes, n_leaves: int) -> RatchetTree:
        nodes: list[Node | None] = []
        for x in range(tm.node_width(n_leaves)):
            row = storage.read(CATEGORY_TREE_NODE, node_row_key(group_id, x))
            nodes.append(None if row is None else decode_node_row(row))
        try:
            return RatchetTree(tuple(nodes))
        except InvalidTree as exc:
            raise DecodeError(f"stored tree is malformed: {exc}") from exc

    def save(self, storage: GranularStorage, group_id: bytes, tree: RatchetTree) -> int:
        """Store ``tree`` as the group's tree, writing only what differs; returns rows written.

        The caller holds a storage operation, so the rows land together with the epoch.
        """
        old = self.load(storage, group_id)
        legacy = storage.read(CATEGORY_TREE, group_id) is None and old is not None
        old_nodes: tuple[Node | None, ...] = () if old is None or legacy else old.nodes
        new_nodes = tree.nodes
        written = 0
        for x in candidates(old if old_nodes else None, tree):
            before = old_nodes[x] if x < len(old_nodes) else None
            after = new_nodes[x] if x < len(new_nodes) else None
            if before is after or before == after:
                continue
            key = node_row_key(group_id, x)
            if after is None:
                storage.delete(CATEGORY_TREE_NODE, key)
            else:
                storage.write(CATEGORY_TREE_NODE, key, encode_node_row(after, tree.node_bytes(x)))
            written += 1
        if legacy:
            storage.delete(cat.TREE, group_id)
        stamp = _encode_width(tree.n_leaves)
        storage.write(CATEGORY_TREE, group_id, stamp)
        self._keep(group_id, stamp, tree)
        tree.memo().forget_origin()  # the stored tree is the origin of the next ones
        return written + 1

    def delete(self, storage: GranularStorage, group_id: bytes) -> None:
        """Delete every row of the group's tree (either layout)."""
        width_row = storage.read(CATEGORY_TREE, group_id)
        if width_row is not None:
            for x in range(tm.node_width(_decode_width(width_row))):
                key = node_row_key(group_id, x)
                if storage.read(CATEGORY_TREE_NODE, key) is not None:
                    storage.delete(CATEGORY_TREE_NODE, key)
            storage.delete(CATEGORY_TREE, group_id)
        if storage.read(cat.TREE, group_id) is not None:
            storage.delete(cat.TREE, group_id)
        with self._lock:
            self._kept.pop(group_id, None)

    def _keep(self, group_id: bytes, stamp: bytes, tree: RatchetTree) -> None:
        with self._lock:
            self._kept[group_id] = (stamp, tree)
