"""Array-based left-balanced binary tree arithmetic (RFC 9420 Appendix C).

Leaves sit at even node indices, parents at odd ones; the tree of ``n`` leaves is the smallest
full tree that holds them, so ``n`` is always treated as a power of two by callers that need
structure (the ratchet tree pads with blank leaves).
"""

from __future__ import annotations

from .errors import InvalidTree


def log2(x: int) -> int:
    """Exponent of the largest power of two not above ``x`` (0 for 0)."""
    return 0 if x == 0 else x.bit_length() - 1


def level(x: int) -> int:
    """Level of node ``x``: leaves are level 0."""
    if x & 1 == 0:
        return 0
    k = 0
    while (x >> k) & 1 == 1:
        k += 1
    return k


def node_width(n_leaves: int) -> int:
    """Number of nodes in a tree of ``n_leaves`` leaves."""
    return 0 if n_leaves == 0 else 2 * (n_leaves - 1) + 1


def root(n_leaves: int) -> int:
    """Root node index of a tree of ``n_leaves`` leaves."""
    if n_leaves == 0:
        raise InvalidTree("empty tree has no root")
    return (1 << log2(node_width(n_leaves))) - 1


def left(x: int) -> int:
    """Left child of a parent node."""
    k = level(x)
    if k == 0:
        raise InvalidTree(f"leaf {x} has no children")
    return x ^ (0x01 << (k - 1))


def right(x: int) -> int:
    """Right child of a parent node."""
    k = level(x)
    if k == 0:
        raise InvalidTree(f"leaf {x} has no children")
    return x ^ (0x03 << (k - 1))


def parent(x: int, n_leaves: int) -> int:
    """Parent of node ``x`` in a tree of ``n_leaves`` leaves."""
    if x == root(n_leaves):
        raise InvalidTree("root has no parent")
    k = level(x)
    b = (x >> (k + 1)) & 0x01
    return (x | (1 << k)) ^ (b << (k + 1))


def sibling(x: int, n_leaves: int) -> int:
    """The other child of ``x``'s parent."""
    p = parent(x, n_leaves)
    return right(p) if x < p else left(p)


def direct_path(x: int, n_leaves: int) -> list[int]:
    """Ancestors of ``x`` from its parent up to the root."""
    r = root(n_leaves)
    if x == r:
        return []
    path: list[int] = []
    while x != r:
        x = parent(x, n_leaves)
        path.append(x)
    return path


def copath(x: int, n_leaves: int) -> list[int]:
    """Siblings of ``x`` and of its ancestors below the root."""
    if x == root(n_leaves):
        return []
    nodes = [x, *direct_path(x, n_leaves)]
    nodes.pop()
    return [sibling(y, n_leaves) for y in nodes]


def is_leaf(x: int) -> bool:
    """True for leaf node indices."""
    return x & 1 == 0


def leaf_to_node(leaf: int) -> int:
    """Node index of a leaf index."""
    return 2 * leaf


def node_to_leaf(x: int) -> int:
    """Leaf index of a leaf node index."""
    return x // 2


def is_in_subtree(x: int, ancestor: int) -> bool:
    """True when ``x`` is ``ancestor`` or below it."""
    k = level(ancestor)
    return (x >> (k + 1)) == (ancestor >> (k + 1))


def subtree_leaves(x: int) -> range:
    """Leaf indices covered by node ``x`` (ignoring truncation)."""
    k = level(x)
    first = (x >> k) << k  # leftmost node index in the subtree
    return range(first // 2, first // 2 + (1 << k))


def common_ancestor(x: int, y: int) -> int:
    """Lowest node that has both ``x`` and ``y`` in its subtree."""
    lx, ly = level(x) + 1, level(y) + 1
    if lx <= ly and x >> ly == y >> ly:
        return y
    if ly <= lx and x >> lx == y >> lx:
        return x
    xn, yn, k = x, y, 0
    while xn != yn:
        xn, yn, k = xn >> 1, yn >> 1, k + 1
    return (xn << k) + (1 << (k - 1)) - 1
