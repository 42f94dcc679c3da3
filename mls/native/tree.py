"""Ratchet tree (RFC 9420 §4, §7): nodes, resolution, evolution, tree and parent hashes.

:class:`RatchetTree` is an immutable value: every mutation returns a new tree. Nodes are kept
in the array layout of :mod:`tree_math`, always padded to a full (power-of-two) width; the wire
form (`optional<Node> ratchet_tree<V>`) drops trailing blanks.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum

from . import tree_math as tm
from .codec import Reader, Struct, Writer, decode_exact, write_u32
from .errors import DecodeError, InvalidTree, MlsError
from .leaf_node import LeafNode, LeafNodeSource
from .suites import CipherSuite
from .tree_cache import TreeMemo


class NodeType(IntEnum):
    """Tag of a serialized Node."""

    LEAF = 1
    PARENT = 2


@dataclass(frozen=True, slots=True)
class ParentNode(Struct):
    """Interior node: HPKE key, parent hash and leaves added since the key was set."""

    encryption_key: bytes
    parent_hash: bytes
    unmerged_leaves: tuple[int, ...]

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.opaque(self.encryption_key)
        w.opaque(self.parent_hash)
        w.vector(self.unmerged_leaves, write_u32)

    @classmethod
    def decode(cls, r: Reader) -> ParentNode:
        """Decode."""
        return cls(r.opaque(), r.opaque(), r.uint_vector(4))


Node = LeafNode | ParentNode


def _write_node(w: Writer, node: Node) -> None:
    w.u8(NodeType.LEAF if isinstance(node, LeafNode) else NodeType.PARENT)
    node.encode(w)


def _read_node(r: Reader) -> Node:
    t = r.u8()
    if t == NodeType.LEAF:
        return LeafNode.decode(r)
    if t == NodeType.PARENT:
        return ParentNode.decode(r)
    raise DecodeError(f"invalid node type {t}")


def _write_opt_node(w: Writer, node: Node | None) -> None:
    w.u8(0 if node is None else 1)
    if node is not None:
        _write_node(w, node)


def _read_opt_node(r: Reader) -> Node | None:
    return r.optional(_read_node)


@dataclass(frozen=True, slots=True)
class RatchetTree(Struct):
    """Full-width array of optional nodes (even indices leaves, odd indices parents)."""

    nodes: tuple[Node | None, ...]
    #: Tree hashes and resolutions already computed (never compared, encoded or shown).
    _memo: TreeMemo | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Enforce the full-width layout and node kinds."""
        width = len(self.nodes)
        n_leaves = (width + 1) // 2
        if width == 0 or width % 2 == 0 or n_leaves & (n_leaves - 1):
            raise InvalidTree(f"invalid ratchet tree width {width}")
        for i, node in enumerate(self.nodes):
            if node is None:
                continue
            if tm.is_leaf(i) != isinstance(node, LeafNode):
                raise InvalidTree(f"node {i} has the wrong kind")

    @classmethod
    def _derived(
        cls, nodes: tuple[Node | None, ...], memo: TreeMemo | None, checked: Iterable[int]
    ) -> RatchetTree:
        """A tree derived from a valid one: only the ``checked`` nodes need their kind checked.

        Skips the full-width scan of ``__post_init__`` so that evolving a large tree costs
        O(changed nodes) checks, and hands over the memo kept valid by the caller.
        """
        for x in checked:
            node = nodes[x]
            if node is not None and tm.is_leaf(x) != isinstance(node, LeafNode):
                raise InvalidTree(f"node {x} has the wrong kind")
        tree = object.__new__(cls)
        object.__setattr__(tree, "nodes", nodes)
        object.__setattr__(tree, "_memo", memo)
        return tree

    def memo(self) -> TreeMemo:
        """This tree's memo of tree hashes and resolutions (started on first use)."""
        memo = self._memo
        if memo is None:
            memo = TreeMemo()
            object.__setattr__(self, "_memo", memo)
        return memo

    def node_bytes(self, x: int) -> bytes:
        """The encoding of non-blank node ``x`` (as inside ``optional<Node>``), memoized:
        hashing and storing a tree encode each node once between them."""
        memo = self.memo().encodings
        hit = memo.get(x)
        if hit is None:
            node = self.nodes[x]
            if node is None:
                raise InvalidTree(f"node {x} is blank")
            hit = node.to_bytes()
            memo[x] = hit
        return hit

    # -- wire form ---------------------------------------------------------------------------

    def encode(self, w: Writer) -> None:
        """Encode with trailing blank nodes removed."""
        nodes = list(self.nodes)
        while nodes and nodes[-1] is None:
            nodes.pop()
        w.vector(nodes, _write_opt_node)

    @classmethod
    def decode(cls, r: Reader) -> RatchetTree:
        """Decode and pad to full width; the last node must be a non-blank leaf."""
        nodes = r.vector(_read_opt_node)
        if not nodes or nodes[-1] is None:
            raise DecodeError("ratchet tree empty or ending with a blank node")
        if len(nodes) % 2 == 0:
            raise DecodeError("ratchet tree must end with a leaf")
        n_leaves = (len(nodes) + 1) // 2
        full = 1 << (n_leaves - 1).bit_length()
        padded = [*nodes, *([None] * (tm.node_width(full) - len(nodes)))]
        try:
            return cls(tuple(padded))
        except InvalidTree as exc:
            raise DecodeError(str(exc)) from exc

    @classmethod
    def from_bytes(cls, data: bytes) -> RatchetTree:
        """Strict decode of a serialized ratchet tree from the wire (codec limits apply)."""
        return decode_exact(data, cls.decode)

    @classmethod
    def from_stored(cls, data: bytes) -> RatchetTree:
        """Strict decode of a tree we stored ourselves: a group may outgrow the limits a
        single received message is held to, so only the input's length bounds the items."""
        return decode_exact(data, cls.decode, max_items=max(len(data), 1))

    # -- accessors ---------------------------------------------------------------------------

    @property
    def n_leaves(self) -> int:
        """Leaf capacity (a power of two)."""
        return (len(self.nodes) + 1) // 2

    @property
    def root(self) -> int:
        """Root node index."""
        return tm.root(self.n_leaves)

    def leaf(self, leaf_index: int) -> LeafNode | None:
        """Leaf node at ``leaf_index`` (None if blank)."""
        if not 0 <= leaf_index < self.n_leaves:
            raise InvalidTree(f"leaf {leaf_index} outside the tree")
        node = self.nodes[tm.leaf_to_node(leaf_index)]
        assert node is None or isinstance(node, LeafNode)
        return node

    def parent_node(self, x: int) -> ParentNode | None:
        """Parent node at node index ``x`` (None if blank)."""
        node = self.nodes[x]
        assert node is None or isinstance(node, ParentNode)
        return node

    def encryption_key(self, x: int) -> bytes:
        """HPKE public key of non-blank node ``x``."""
        node = self.nodes[x]
        if node is None:
            raise InvalidTree(f"node {x} is blank")
        return node.encryption_key

    def member_leaves(self) -> list[int]:
        """Indices of non-blank leaves."""
        return [i for i in range(self.n_leaves) if self.nodes[2 * i] is not None]

    def resolution(self, x: int) -> list[int]:
        """Resolution of node ``x``: non-blank cover of its subtree, plus unmerged leaves."""
        return list(self._resolution(x, self.memo().resolutions))

    def _resolution(self, x: int, memo: dict[int, tuple[int, ...]]) -> tuple[int, ...]:
        hit = memo.get(x)
        if hit is not None:
            return hit
        node = self.nodes[x]
        out: tuple[int, ...]
        if node is None:
            if tm.is_leaf(x):
                out = ()
            else:
                out = self._resolution(tm.left(x), memo) + self._resolution(tm.right(x), memo)
        elif isinstance(node, ParentNode):
            out = (x, *(tm.leaf_to_node(i) for i in node.unmerged_leaves))
        else:
            out = (x,)
        memo[x] = out
        return out

    def filtered_direct_path(self, leaf_index: int) -> list[int]:
        """Direct path of the leaf minus nodes whose copath child has an empty resolution."""
        x = tm.leaf_to_node(leaf_index)
        path = tm.direct_path(x, self.n_leaves)
        copath = tm.copath(x, self.n_leaves)
        memo = self.memo().resolutions
        return [p for p, c in zip(path, copath, strict=True) if self._resolution(c, memo)]

    # -- hashes ------------------------------------------------------------------------------

    def tree_hash(self, cs: CipherSuite, x: int | None = None) -> bytes:
        """Tree hash of the subtree at ``x`` (the root by default)."""
        return self._tree_hash(cs, self.root if x is None else x, frozenset(), {})

    def tree_hashes(self, cs: CipherSuite) -> list[bytes]:
        """Tree hash of every node, sharing work through a cache."""
        return [self._tree_hash(cs, x, frozenset(), {}) for x in range(len(self.nodes))]

    def _tree_hash(
        self, cs: CipherSuite, x: int, excluded: frozenset[int], cache: dict[int, bytes]
    ) -> bytes:
        if not excluded:
            # Without exclusions the hash is the tree's own: share it through the memo.
            cache = self.memo().hashes_for(cs.suite_id)
        hit = cache.get(x)
        if hit is not None:
            return hit
        w = Writer()
        node = self.nodes[x]
        if tm.is_leaf(x):
            leaf_index = tm.node_to_leaf(x)
            w.u8(NodeType.LEAF)
            w.u32(leaf_index)
            if node is None or leaf_index in excluded:
                w.u8(0)
            else:
                w.u8(1)
                w.raw(self.node_bytes(x))  # encoded once: shared with storage
        else:
            parent: ParentNode | None = None
            if node is not None:
                assert isinstance(node, ParentNode)
                unmerged = tuple(i for i in node.unmerged_leaves if i not in excluded)
                parent = ParentNode(node.encryption_key, node.parent_hash, unmerged)
            w.u8(NodeType.PARENT)
            w.optional(parent, _write_struct)
            w.opaque(self._tree_hash(cs, tm.left(x), excluded, cache))
            w.opaque(self._tree_hash(cs, tm.right(x), excluded, cache))
        out = cs.hash(w.getvalue())
        cache[x] = out
        return out

    def parent_hash_of(
        self,
        cs: CipherSuite,
        p: int,
        sibling: int,
        plain: dict[int, bytes] | None = None,
    ) -> bytes:
        """Parent hash of ``p`` with copath child ``sibling`` (original sibling tree hash).

        ``plain`` caches ordinary tree hashes across calls: only the part of the sibling's
        subtree above an unmerged leaf of ``p`` needs hashing again, which keeps verifying
        a whole tree near O(n log n) hashes instead of re-hashing every subtree per parent.
        """
        node = self.parent_node(p)
        if node is None:
            raise InvalidTree(f"parent hash of blank node {p}")
        excluded = frozenset(node.unmerged_leaves)
        sibling_hash = self._original_hash(cs, sibling, excluded, {} if plain is None else plain)
        w = Writer()
        w.opaque(node.encryption_key)
        w.opaque(node.parent_hash)
        w.opaque(sibling_hash)
        return cs.hash(w.getvalue())

    def _original_hash(
        self, cs: CipherSuite, x: int, excluded: frozenset[int], plain: dict[int, bytes]
    ) -> bytes:
        """Tree hash of ``x`` without ``excluded`` leaves; plain hashes where none is below."""
        span = tm.subtree_leaves(x)
        inside = frozenset(i for i in excluded if i in span)
        if not inside:
            return self._tree_hash(cs, x, frozenset(), plain)
        if tm.is_leaf(x):
            return self._tree_hash(cs, x, inside, {})
        w = Writer()
        node = self.nodes[x]
        parent: ParentNode | None = None
        if node is not None:
            assert isinstance(node, ParentNode)
            unmerged = tuple(i for i in node.unmerged_leaves if i not in inside)
            parent = ParentNode(node.encryption_key, node.parent_hash, unmerged)
        w.u8(NodeType.PARENT)
        w.optional(parent, _write_struct)
        w.opaque(self._original_hash(cs, tm.left(x), inside, plain))
        w.opaque(self._original_hash(cs, tm.right(x), inside, plain))
        return cs.hash(w.getvalue())

    def verify_parent_hashes(self, cs: CipherSuite) -> None:
        """Every non-blank parent must be parent-hash valid via exactly one descendant.

        Resolutions are computed once per node, bottom-up, and compared as sets; with
        unmerged leaves unique (checked by :meth:`verify`) the work is O(n log n).
        """
        resolutions = self._resolutions()
        plain: dict[int, bytes] = {}
        for p in range(1, len(self.nodes), 2):
            node = self.parent_node(p)
            if node is None:
                continue
            unmerged = {tm.leaf_to_node(i) for i in node.unmerged_leaves}
            matches = 0
            for c, s in ((tm.left(p), tm.right(p)), (tm.right(p), tm.left(p))):
                res = resolutions[c]
                below = {u for u in unmerged if tm.is_in_subtree(u, c)}
                # The descendant d must satisfy resolution(c) minus {d} == below.
                if len(res) != len(below) + 1 or not below <= res:
                    continue
                (d,) = res - below
                dnode = self.nodes[d]
                assert dnode is not None
                if isinstance(dnode, LeafNode) and dnode.leaf_node_source != LeafNodeSource.COMMIT:
                    continue
                if dnode.parent_hash == self.parent_hash_of(cs, p, s, plain):
                    matches += 1
            if matches != 1:
                raise InvalidTree(f"parent node {p} is not parent-hash valid")

    def _resolutions(self) -> dict[int, frozenset[int]]:
        """Resolution of every node as a set, each built from its children's (bottom-up)."""
        out: dict[int, frozenset[int]] = {}
        for lvl in range(tm.level(self.root) + 1):
            step = 1 << (lvl + 1)
            for x in range((1 << lvl) - 1, len(self.nodes), step):
                node = self.nodes[x]
                if node is None:
                    out[x] = (
                        frozenset() if lvl == 0 else out[tm.left(x)] | out[tm.right(x)]
                    )
                elif isinstance(node, ParentNode):
                    out[x] = frozenset({x, *(tm.leaf_to_node(i) for i in node.unmerged_leaves)})
                else:
                    out[x] = frozenset({x})
        return out

    def verify_leaf_signatures(self, cs: CipherSuite, group_id: bytes) -> None:
        """Verify every leaf signature in the context of ``group_id``."""
        for i in self.member_leaves():
            leaf = self.leaf(i)
            assert leaf is not None
            leaf.verify(cs, group_id, i)

    def verify(self, cs: CipherSuite, group_id: bytes) -> None:
        """Checks a joiner runs on a received tree: structure, parent hashes, signatures.

        Unmerged leaves must be members inside the node's subtree, each listed once (a
        crafted tree repeating one leaf thousands of times made the parent-hash check
        quadratic), and also unmerged at every non-blank node between the leaf and the
        node that lists it (§12.4.3.1).
        """
        unmerged_at: dict[int, frozenset[int]] = {}
        for p in range(1, len(self.nodes), 2):
            node = self.parent_node(p)
            if node is None:
                continue
            listed = frozenset(node.unmerged_leaves)
            if len(listed) != len(node.unmerged_leaves):
                raise InvalidTree(f"node {p} lists an unmerged leaf twice")
            unmerged_at[p] = listed
        for p, listed in unmerged_at.items():
            for i in listed:
                if not 0 <= i < self.n_leaves:
                    raise InvalidTree(f"bad unmerged leaf {i} at node {p}")
                x = tm.leaf_to_node(i)
                if not tm.is_in_subtree(x, p) or self.nodes[x] is None:
                    raise InvalidTree(f"bad unmerged leaf {i} at node {p}")
                x = tm.parent(x, self.n_leaves)
                while x != p:
                    if x in unmerged_at and i not in unmerged_at[x]:
                        raise InvalidTree(f"leaf {i} unmerged at node {p} but not below it")
                    x = tm.parent(x, self.n_leaves)
        try:
            self.verify_parent_hashes(cs)
            self.verify_leaf_signatures(cs, group_id)
        except InvalidTree:
            raise
        except MlsError as exc:
            raise InvalidTree(f"tree verification failed: {exc}") from exc

    # -- evolution ---------------------------------------------------------------------------

    @classmethod
    def _unchecked(cls, nodes: tuple[Node | None, ...]) -> RatchetTree:
        """A tree from nodes already known to satisfy the layout (derived from a valid tree).

        Re-checking every node on each small change made a commit of ``k`` Adds cost
        ``k`` passes over the whole tree in Python; callers check what they change.
        """
        return cls._derived(nodes, None, ())

    def with_nodes(self, changes: dict[int, Node | None]) -> RatchetTree:
        """Copy with some nodes replaced (only the replaced nodes are checked)."""
        nodes = list(self.nodes)
        for x, node in changes.items():
            if not 0 <= x < len(nodes):
                raise InvalidTree(f"node {x} outside the tree")
            if node is not None and tm.is_leaf(x) != isinstance(node, LeafNode):
                raise InvalidTree(f"node {x} has the wrong kind")
            nodes[x] = node
        memo = self.memo().derive(self, len(nodes), changes)
        return RatchetTree._derived(tuple(nodes), memo, ())  # checked above

    def extended(self) -> RatchetTree:
        """Double the leaf capacity (the old tree becomes the left subtree)."""
        nodes = self.nodes + (None,) * (len(self.nodes) + 1)
        return RatchetTree._derived(nodes, self.memo().derive(self, len(nodes), ()), ())

    def truncated(self) -> RatchetTree:
        """Halve while the right half of the leaves is entirely blank."""
        nodes = self.nodes
        while len(nodes) > 1:
            half = (len(nodes) + 1) // 2
            if not all(_blanks(nodes[half::2])):
                break
            nodes = nodes[: half - 1]
        if len(nodes) == len(self.nodes):
            return self
        memo = self.memo().derive(self, len(nodes), (), shrunk=True)
        return RatchetTree._derived(nodes, memo, ())

    def add_leaf(self, leaf: LeafNode) -> tuple[RatchetTree, int]:
        """Place ``leaf`` in the leftmost blank leaf (extending if full), marking it unmerged."""
        tree = self
        start = tree.memo().full_below
        blank = _blanks(tree.nodes[2 * start :: 2])
        free = start + blank.index(True) if True in blank else None
        if free is None:
            free = tree.n_leaves
            tree = tree.extended()
        x = tm.leaf_to_node(free)
        changes: dict[int, Node | None] = {x: leaf}
        for p in tm.direct_path(x, tree.n_leaves):
            node = tree.parent_node(p)
            if node is not None:
                changes[p] = ParentNode(
                    node.encryption_key, node.parent_hash, (*node.unmerged_leaves, free)
                )
        added = tree.with_nodes(changes)
        added.memo().full_below = free + 1  # the leaves below were full, and free is now
        return added, free

    def blank_path(self, leaf_index: int) -> RatchetTree:
        """Blank the intermediate nodes on the leaf's direct path."""
        x = tm.leaf_to_node(leaf_index)
        return self.with_nodes(dict.fromkeys(tm.direct_path(x, self.n_leaves)))

    def update_leaf(self, leaf_index: int, leaf: LeafNode) -> RatchetTree:
        """Replace a member's leaf and blank its direct path."""
        if self.leaf(leaf_index) is None:
            raise InvalidTree(f"update of blank leaf {leaf_index}")
        tree = self.blank_path(leaf_index)
        return tree.with_nodes({tm.leaf_to_node(leaf_index): leaf})

    def remove_leaf(self, leaf_index: int) -> RatchetTree:
        """Blank a member's leaf and direct path, then truncate."""
        if self.leaf(leaf_index) is None:
            raise InvalidTree(f"removal of blank leaf {leaf_index}")
        tree = self.blank_path(leaf_index)
        return tree.with_nodes({tm.leaf_to_node(leaf_index): None}).truncated()


def _write_struct(w: Writer, s: Struct) -> None:
    s.encode(w)


def _blanks(nodes: tuple[Node | None, ...]) -> list[bool]:
    """Which nodes are blank, by identity at C speed (``==`` would compare whole nodes)."""
    return list(map(operator.is_, nodes, itertools.repeat(None)))
