"""Joining a group from a Welcome (RFC 9420 §12.4.3.1) into a persistable epoch state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import constant_time

from . import tree_math as tm
from .codec import Reader, Struct, Writer, decode_exact
from .errors import AuthenticationError, InvalidMessage, InvalidTree
from .group_context import GroupContext
from .key_package import KeyPackage
from .key_schedule import EpochSecrets, epoch_from_joiner, psk_secret, welcome_secret
from .leaf_node import ExtensionType
from .proposals import PskType
from .secret_tree import SecretTree
from .suites import CipherSuite, get_suite
from .transcript import interim_transcript_hash
from .tree import RatchetTree
from .treekem import TreePrivate, node_key_pair
from .welcome import Welcome


@dataclass(frozen=True, slots=True, repr=False)
class GroupEpoch(Struct):
    """Everything a member holds for one epoch; serializable for persistent storage."""

    context: GroupContext
    tree: RatchetTree
    private: TreePrivate
    secrets: EpochSecrets
    secret_tree: SecretTree
    interim_transcript_hash: bytes

    def __repr__(self) -> str:
        """Never print secrets."""
        return f"GroupEpoch(epoch={self.context.epoch}, leaf={self.private.leaf_index})"

    @classmethod
    def begin(
        cls,
        cs: CipherSuite,
        context: GroupContext,
        tree: RatchetTree,
        private: TreePrivate,
        secrets: EpochSecrets,
        confirmation_tag: bytes,
    ) -> GroupEpoch:
        """The state at the start of an epoch, whichever way it was entered.

        Its secret tree (§9) and interim transcript hash (§8.2) follow from the rest, so
        creating, joining, committing and processing a commit cannot derive them
        differently.
        """
        return cls(
            context,
            tree,
            private,
            secrets,
            SecretTree.create(cs, secrets.encryption_secret, tree.n_leaves),
            interim_transcript_hash(cs, context.confirmed_transcript_hash, confirmation_tag),
        )

    def encode(self, w: Writer) -> None:
        """Serialize for storage."""
        for part in (self.context, self.tree, self.private, self.secrets, self.secret_tree):
            w.opaque(part.to_bytes())
        w.opaque(self.interim_transcript_hash)

    @classmethod
    def decode(cls, r: Reader) -> GroupEpoch:
        """Deserialize from storage."""
        return cls(
            decode_exact(r.opaque(), GroupContext.decode),
            RatchetTree.from_bytes(r.opaque()),
            TreePrivate.from_bytes(r.opaque()),
            EpochSecrets.from_bytes(r.opaque()),
            SecretTree.from_bytes(r.opaque()),
            r.opaque(),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> GroupEpoch:
        """Strict inverse of :meth:`to_bytes`."""
        return decode_exact(data, cls.decode)


def join_from_welcome(
    welcome: Welcome,
    key_package: KeyPackage,
    init_priv: bytes,
    encryption_priv: bytes,
    external_psks: Mapping[bytes, bytes],
    ratchet_tree: RatchetTree | None = None,
) -> GroupEpoch:
    """Process a Welcome for ``key_package`` and return the joined epoch.

    The ratchet tree comes from the GroupInfo's ratchet_tree extension unless given out of
    band. The tree, GroupInfo signature, tree hash and confirmation tag are all verified.
    """
    cs = get_suite(welcome.cipher_suite)
    if key_package.cipher_suite != cs.suite_id:
        raise InvalidMessage("Welcome and KeyPackage use different cipher suites")
    secrets = welcome.open_group_secrets(cs, key_package.ref(cs), init_priv)
    psks = []
    for psk_id in secrets.psks:
        if psk_id.psktype != PskType.EXTERNAL or psk_id.psk_id not in external_psks:
            raise InvalidMessage("Welcome requires an unavailable PSK")
        psks.append((psk_id, external_psks[psk_id.psk_id]))
    psk = psk_secret(cs, psks)
    info = welcome.open_group_info(cs, welcome_secret(cs, secrets.joiner_secret, psk))
    gc = info.group_context
    if gc.cipher_suite != cs.suite_id:
        raise InvalidMessage("GroupInfo cipher suite differs from the Welcome")
    if ratchet_tree is None:
        ext = next(
            (e for e in info.extensions if e.extension_type == ExtensionType.RATCHET_TREE), None
        )
        if ext is None:
            raise InvalidMessage("no ratchet tree in the Welcome and none supplied")
        ratchet_tree = RatchetTree.from_bytes(ext.extension_data)
    tree = ratchet_tree
    signer = tree.leaf(info.signer) if info.signer < tree.n_leaves else None
    if signer is None:
        raise InvalidTree("GroupInfo signer is not a member")
    info.verify(cs, signer.signature_key)
    tree.verify(cs, gc.group_id)
    if tree.tree_hash(cs) != gc.tree_hash:
        raise InvalidTree("ratchet tree does not match the GroupContext tree hash")
    own = next((i for i in tree.member_leaves() if tree.leaf(i) == key_package.leaf_node), None)
    if own is None:
        raise InvalidTree("own leaf not found in the ratchet tree")
    private = TreePrivate(own, encryption_priv, {})
    if secrets.path_secret is not None:
        x, y = tm.leaf_to_node(own), tm.leaf_to_node(info.signer)
        start = tm.common_ancestor(x, y)
        ps = secrets.path_secret
        for node in [start, *tm.direct_path(start, tree.n_leaves)]:
            if tree.nodes[node] is not None:
                priv, pub = node_key_pair(cs, ps)
                if pub != tree.encryption_key(node):
                    raise InvalidTree(f"path secret does not match node {node}")
                private = TreePrivate(own, encryption_priv, {**private.node_privs, node: priv})
            ps = cs.derive_secret(ps, "path")
    private.check_consistent(cs, tree)
    epoch = epoch_from_joiner(cs, secrets.joiner_secret, psk, gc.to_bytes())
    if not constant_time.bytes_eq(
        epoch.confirmation_tag(gc.confirmed_transcript_hash), info.confirmation_tag
    ):
        raise AuthenticationError("GroupInfo confirmation tag mismatch")
    return GroupEpoch.begin(cs, gc, tree, private, epoch, info.confirmation_tag)
