"""Secret tree and per-leaf hash ratchets (RFC 9420 §9).

The tree is a value object: every operation returns the derived key material together with a
*new* :class:`SecretTree`, so a caller can persist the successor state before using a key.
Consumed secrets are deleted as the RFC's deletion schedule requires: a node secret is dropped
once its children are derived, a leaf secret once its two ratchets exist, and a ratchet key
once it has been handed out. Skipped generations are retained in a bounded window for
out-of-order delivery.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

from . import tree_math as tm
from .codec import Reader, Struct, Writer, decode_exact
from .errors import DecodeError, KeyNotFound
from .suites import CipherSuite, get_suite

DEFAULT_MAX_FORWARD = 1024
DEFAULT_WINDOW = 32


class RatchetType(IntEnum):
    """The two ratchets every leaf owns."""

    HANDSHAKE = 0
    APPLICATION = 1


_RATCHET_LABELS = {RatchetType.HANDSHAKE: "handshake", RatchetType.APPLICATION: "application"}


@dataclass(frozen=True, slots=True, repr=False)
class KeyNonce:
    """One AEAD key and nonce of a ratchet generation."""

    generation: int
    key: bytes
    nonce: bytes

    def __repr__(self) -> str:
        """Never print secrets."""
        return f"KeyNonce(generation={self.generation}, <redacted>)"


@dataclass(frozen=True, slots=True, repr=False)
class HashRatchet(Struct):
    """Ratchet secret for ``generation`` plus retained keys of skipped generations."""

    secret: bytes
    generation: int
    retained: tuple[KeyNonce, ...] = ()

    def __repr__(self) -> str:
        """Never print secrets."""
        return f"HashRatchet(generation={self.generation}, retained={len(self.retained)})"

    def encode(self, w: Writer) -> None:
        """Serialize for storage."""
        w.opaque(self.secret)
        w.u32(self.generation)
        w.u32(len(self.retained))
        for kn in self.retained:
            w.u32(kn.generation)
            w.opaque(kn.key)
            w.opaque(kn.nonce)

    @classmethod
    def decode(cls, r: Reader) -> HashRatchet:
        """Deserialize from storage."""
        secret, generation, count = r.opaque(), r.u32(), r.u32()
        retained = tuple(KeyNonce(r.u32(), r.opaque(), r.opaque()) for _ in range(count))
        return cls(secret, generation, retained)

    def _derive(self, cs: CipherSuite) -> tuple[KeyNonce, HashRatchet]:
        g = self.generation
        kn = KeyNonce(
            g,
            cs.derive_tree_secret(self.secret, "key", g, cs.aead_key_size),
            cs.derive_tree_secret(self.secret, "nonce", g, cs.aead_nonce_size),
        )
        nxt = cs.derive_tree_secret(self.secret, "secret", g, cs.hash_size)
        return kn, HashRatchet(nxt, g + 1, self.retained)

    def next(self, cs: CipherSuite) -> tuple[KeyNonce, HashRatchet]:
        """Key for the current generation (sending side); the ratchet moves forward."""
        return self._derive(cs)

    def get(
        self, cs: CipherSuite, generation: int, max_forward: int, window: int
    ) -> tuple[KeyNonce, HashRatchet]:
        """Key for ``generation`` (receiving side); it is removed from the state."""
        if generation < self.generation:
            for kn in self.retained:
                if kn.generation == generation:
                    rest = tuple(k for k in self.retained if k.generation != generation)
                    return kn, HashRatchet(self.secret, self.generation, rest)
            raise KeyNotFound(f"key for generation {generation} already used or expired")
        if generation - self.generation > max_forward:
            raise KeyNotFound(f"generation {generation} too far ahead of {self.generation}")
        ratchet = self
        skipped: list[KeyNonce] = []
        while ratchet.generation < generation:
            kn, ratchet = ratchet._derive(cs)
            skipped.append(kn)
        kn, ratchet = ratchet._derive(cs)
        retained = (*ratchet.retained, *skipped)[-window:] if window > 0 else ()
        return kn, HashRatchet(ratchet.secret, ratchet.generation, retained)


def _padded(n_leaves: int) -> int:
    return 1 << max(0, (n_leaves - 1).bit_length())


@dataclass(frozen=True, slots=True, repr=False)
class SecretTree(Struct):
    """Unconsumed tree-node secrets and instantiated leaf ratchets of one epoch."""

    suite_id: int
    n_leaves: int
    node_secrets: dict[int, bytes]
    ratchets: dict[tuple[int, RatchetType], HashRatchet]
    max_forward: int = DEFAULT_MAX_FORWARD
    window: int = DEFAULT_WINDOW

    def __repr__(self) -> str:
        """Never print secrets."""
        return f"SecretTree(suite_id={self.suite_id}, n_leaves={self.n_leaves}, <redacted>)"

    @classmethod
    def create(
        cls,
        cs: CipherSuite,
        encryption_secret: bytes,
        n_leaves: int,
        max_forward: int = DEFAULT_MAX_FORWARD,
        window: int = DEFAULT_WINDOW,
    ) -> SecretTree:
        """Tree whose root secret is the epoch's encryption secret."""
        if n_leaves < 1:
            raise KeyNotFound("secret tree needs at least one leaf")
        root = tm.root(_padded(n_leaves))
        return cls(cs.suite_id, n_leaves, {root: encryption_secret}, {}, max_forward, window)

    # -- storage -----------------------------------------------------------------------------

    def encode(self, w: Writer) -> None:
        """Serialize for storage."""
        w.u16(self.suite_id)
        w.u32(self.n_leaves)
        w.u32(self.max_forward)
        w.u32(self.window)
        w.u32(len(self.node_secrets))
        for node, secret in sorted(self.node_secrets.items()):
            w.u32(node)
            w.opaque(secret)
        w.u32(len(self.ratchets))
        for (leaf, rtype), ratchet in sorted(self.ratchets.items()):
            w.u32(leaf)
            w.u8(rtype)
            ratchet.encode(w)

    @classmethod
    def decode(cls, r: Reader) -> SecretTree:
        """Deserialize from storage."""
        suite_id, n_leaves, max_forward, window = r.u16(), r.u32(), r.u32(), r.u32()
        nodes = {r.u32(): r.opaque() for _ in range(r.u32())}
        ratchets: dict[tuple[int, RatchetType], HashRatchet] = {}
        for _ in range(r.u32()):
            leaf = r.u32()
            raw = r.u8()
            if raw not in (RatchetType.HANDSHAKE, RatchetType.APPLICATION):
                raise DecodeError(f"invalid ratchet type {raw}")
            rtype = RatchetType(raw)
            ratchets[(leaf, rtype)] = HashRatchet.decode(r)
        return cls(suite_id, n_leaves, nodes, ratchets, max_forward, window)

    @classmethod
    def from_bytes(cls, data: bytes) -> SecretTree:
        """Strict inverse of :meth:`to_bytes`."""
        return decode_exact(data, cls.decode)

    # -- derivation --------------------------------------------------------------------------

    def _with_ratchets(self, leaf: int) -> SecretTree:
        """Instantiate both ratchets of ``leaf``, deleting every consumed node secret."""
        if (leaf, RatchetType.HANDSHAKE) in self.ratchets:
            return self
        if not 0 <= leaf < self.n_leaves:
            raise KeyNotFound(f"leaf {leaf} outside the secret tree")
        cs = get_suite(self.suite_id)
        n = _padded(self.n_leaves)
        target = tm.leaf_to_node(leaf)
        path = [target, *tm.direct_path(target, n)]
        start = next((x for x in path if x in self.node_secrets), None)
        if start is None:
            raise KeyNotFound(f"secret for leaf {leaf} was already consumed")
        nodes = dict(self.node_secrets)
        node = start
        while node != target:
            secret = nodes.pop(node)
            lnode, rnode = tm.left(node), tm.right(node)
            nodes[lnode] = cs.expand_with_label(secret, "tree", b"left", cs.hash_size)
            nodes[rnode] = cs.expand_with_label(secret, "tree", b"right", cs.hash_size)
            node = lnode if tm.is_in_subtree(target, lnode) else rnode
        leaf_secret = nodes.pop(target)
        ratchets = dict(self.ratchets)
        for rtype, label in _RATCHET_LABELS.items():
            initial = cs.expand_with_label(leaf_secret, label, b"", cs.hash_size)
            ratchets[(leaf, rtype)] = HashRatchet(initial, 0)
        return replace(self, node_secrets=nodes, ratchets=ratchets)

    def next_key(self, leaf: int, rtype: RatchetType) -> tuple[KeyNonce, SecretTree]:
        """Key for sending from ``leaf``; returns it with the successor tree."""
        tree = self._with_ratchets(leaf)
        kn, ratchet = tree.ratchets[(leaf, rtype)].next(get_suite(self.suite_id))
        return kn, replace(tree, ratchets={**tree.ratchets, (leaf, rtype): ratchet})

    def get_key(
        self, leaf: int, rtype: RatchetType, generation: int
    ) -> tuple[KeyNonce, SecretTree]:
        """Key of ``generation`` for receiving from ``leaf``; it is deleted from the successor."""
        tree = self._with_ratchets(leaf)
        kn, ratchet = tree.ratchets[(leaf, rtype)].get(
            get_suite(self.suite_id), generation, self.max_forward, self.window
        )
        return kn, replace(tree, ratchets={**tree.ratchets, (leaf, rtype): ratchet})


def sender_data_key_nonce(
    cs: CipherSuite, sender_data_secret: bytes, ciphertext: bytes
) -> tuple[bytes, bytes]:
    """Key and nonce for SenderData, bound to the first Nh bytes of the ciphertext."""
    sample = ciphertext[: cs.hash_size]
    key = cs.expand_with_label(sender_data_secret, "key", sample, cs.aead_key_size)
    nonce = cs.expand_with_label(sender_data_secret, "nonce", sample, cs.aead_nonce_size)
    return key, nonce
