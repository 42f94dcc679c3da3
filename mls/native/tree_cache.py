"""Per-node memo of tree hashes and resolutions, carried from one ratchet tree to the next.

A :class:`~mls.native.tree.RatchetTree` is an immutable value, and a commit changes only
the nodes on one or a few direct paths.  The tree hash and the resolution of a node depend
only on the nodes of its subtree (and on its position), so when a tree is derived from
another by replacing some nodes, every memo entry outside the changed nodes' direct paths
stays true.  :meth:`TreeMemo.derive` copies the memo and forgets exactly those paths, which
makes a commit's tree work O(log n) hashes instead of a re-hash of the whole tree.

The memo is an optimisation only: a tree without one computes everything from its nodes,
and a fresh memo is started for every decoded tree.  It never holds secrets.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

__all__ = ["Layer", "TreeMemo", "invalidated"]

_V = TypeVar("_V")
#: Layers stacked before a derivation copies the entries into one (bounds look-up cost).
_MAX_DEPTH = 24


class Layer(dict[int, _V]):
    """Memo entries of one tree: its own, then its parent tree's minus the stale nodes.

    Deriving a tree adds a layer instead of copying the parent's entries, so a commit's
    few derivations cost O(changed paths), not O(width); a value the parent computes later
    is visible to the child too unless stale (both trees share that subtree).  Every
    ``_MAX_DEPTH`` layers the chain is flattened into one.
    """

    __slots__ = ("depth", "parent", "stale", "width")

    def __init__(
        self, width: int, parent: Layer[_V] | None = None, stale: frozenset[int] = frozenset()
    ) -> None:
        super().__init__()
        self.width: int = width
        self.parent: Layer[_V] | None = parent
        self.stale: frozenset[int] = stale
        self.depth: int = 0 if parent is None else parent.depth + 1

    def get(self, x: int, default: _V | None = None) -> _V | None:  # type: ignore[override]
        """The entry of node ``x`` in this layer or, unless stale here, below it."""
        layer: Layer[_V] | None = self
        while layer is not None:
            if x >= layer.width:
                return default
            value = dict.get(layer, x)
            if value is not None:
                return value
            if x in layer.stale:
                return default
            layer = layer.parent
        return default

    def __contains__(self, x: object) -> bool:
        return isinstance(x, int) and self.get(x) is not None

    def flat(self) -> dict[int, _V]:
        """Every visible entry, in one plain dict."""
        out = {} if self.parent is None else self.parent.flat()
        for x in self.stale:
            out.pop(x, None)
        if self.parent is not None and self.width < self.parent.width:
            out = {x: v for x, v in out.items() if x < self.width}
        out.update(self)
        return out

    def child(self, width: int, stale: frozenset[int]) -> Layer[_V]:
        """The layer of a tree derived from this one (``stale``: its invalid entries)."""
        if self.depth < _MAX_DEPTH:
            return Layer(width, self, stale)
        fresh: Layer[_V] = Layer(width)
        fresh.update((x, v) for x, v in self.flat().items() if x < width and x not in stale)
        return fresh


def _ancestors_and_self(x: int, width: int) -> Iterable[int]:
    """``x`` and every node above it in a full tree of ``width`` nodes (array layout)."""
    root = (1 << (width.bit_length() - 1)) - 1
    while True:
        yield x
        if x == root:
            return
        k = 0
        while (x >> k) & 1:
            k += 1
        # x is at level k: it is a left child when bit k+1 is clear.
        x = x + (1 << k) if not (x >> (k + 1)) & 1 else x - (1 << k)


def invalidated(changed: Iterable[int], width: int) -> set[int]:
    """The nodes whose memo entries a change of ``changed`` makes stale."""
    out: set[int] = set()
    for x in changed:
        for y in _ancestors_and_self(x, width):
            if y in out:
                break
            out.add(y)
    return out


class TreeMemo:
    """Tree hashes (for one cipher suite) and resolutions of the nodes of one tree.

    Mutable, but only ever filled with values that are a pure function of the tree it
    belongs to; each tree has its own memo (derivations copy).
    """

    __slots__ = (
        "changed",
        "encodings",
        "full_below",
        "hashes",
        "origin",
        "resolutions",
        "suite_id",
        "values",
        "values_changed",
        "values_origin",
    )

    def __init__(
        self,
        suite_id: int | None = None,
        hashes: Layer[bytes] | None = None,
        resolutions: Layer[tuple[int, ...]] | None = None,
        full_below: int = 0,
        origin: object = None,
        changed: frozenset[int] = frozenset(),
    ) -> None:
        self.suite_id = suite_id
        #: The tree this one was derived from by replacing ``changed`` (and resizing), when
        #: few nodes changed: lets storage write a new tree in O(changed), not O(width).
        self.origin = origin
        self.changed = changed
        #: Other values computed from this tree alone (e.g. an index of its members), by
        #: whoever computes them (:meth:`remember`); never carried to a derived tree, but
        #: ``values_origin`` is the nearest ancestor holding some, and ``values_changed``
        #: the nodes replaced since, so they can be updated rather than recomputed.
        self.values: dict[object, object] = {}
        self.values_origin: object = None
        self.values_changed: frozenset[int] = frozenset()
        #: Every leaf below this index is non-blank: where the search for a free leaf starts.
        self.full_below = full_below
        self.hashes: Layer[bytes] = Layer(1 << 62) if hashes is None else hashes
        self.resolutions: Layer[tuple[int, ...]] = (
            Layer(1 << 62) if resolutions is None else resolutions
        )
        #: Encodings of single nodes (a node's own bytes do not depend on its subtree).
        self.encodings: Layer[bytes] = Layer(1 << 62)

    def hashes_for(self, suite_id: int) -> dict[int, bytes]:
        """The tree-hash memo for ``suite_id`` (a memo of another suite is dropped)."""
        if self.suite_id != suite_id:
            self.suite_id = suite_id
            self.hashes = Layer(1 << 62)
        return self.hashes

    def derive(
        self, owner: object, width: int, changed: Iterable[int], *, shrunk: bool = False
    ) -> TreeMemo:
        """A copy for a tree of ``width`` nodes made from ``owner`` by replacing ``changed``.

        Entries of the changed nodes and their ancestors are dropped; with ``shrunk`` (the
        tree was truncated) so are entries at or beyond ``width``, which a tree that grows
        again must not find.
        """
        del shrunk  # a layer hides its parent's entries at or beyond its width
        changed = frozenset(changed)
        stale = frozenset(invalidated(changed, width))
        hashes = self.hashes.child(width, stale)
        resolutions = self.resolutions.child(width, stale)
        full_below = min(self.full_below, (width + 1) // 2)
        for x in stale:
            if not x & 1:
                full_below = min(full_below, x // 2)
        origin, since = (
            (owner, changed) if self.origin is None else (self.origin, self.changed | changed)
        )
        if len(since) > _LINEAGE_LIMIT:
            origin, since = None, frozenset()  # many changes: a full comparison is as cheap
        memo = TreeMemo(self.suite_id, hashes, resolutions, full_below, origin, since)
        memo.encodings = self.encodings.child(width, stale)
        if self.values:
            memo.values_origin, memo.values_changed = owner, changed
        elif self.values_origin is not None:
            memo.values_origin = self.values_origin
            memo.values_changed = self.values_changed | changed
        if len(memo.values_changed) > _LINEAGE_LIMIT:
            memo.values_origin, memo.values_changed = None, frozenset()
        return memo

    def remember(self, key: object, value: object) -> None:
        """Keep a value computed from this tree; its ancestors are no longer needed for it
        (dropping the reference keeps at most one ancestor alive per tree)."""
        self.values[key] = value
        self.values_origin, self.values_changed = None, frozenset()

    def changed_since(self, origin: object) -> frozenset[int] | None:
        """The nodes replaced since ``origin`` if this tree derives from it, else ``None``."""
        return self.changed if origin is not None and self.origin is origin else None

    def forget_origin(self) -> None:
        """Drop the lineage (once stored, a tree is the origin of the next ones)."""
        self.origin, self.changed = None, frozenset()


#: Beyond this many changed nodes the lineage is dropped (it would cost more than it saves).
_LINEAGE_LIMIT = 256
