"""Row formats of the native engine's state in GranularStorage, and where each row lives.

Every value starts with a format byte (``FORMAT``), so a later layout can be told apart and
migrated; the category names carry the layout version too (``openmls/v1/...``).

Layout (OpenMLS ``StorageProvider`` v1 categories, see :mod:`mls.categories`):

=============================  ===========================================================
category                       rows
=============================  ===========================================================
signature_key_pair             our signature key pair, under its public key
key_package                    a published KeyPackage with its private init and leaf keys
encryption_key_pair            our current leaf HPKE key (and pending Update leaves' keys)
encryption_epoch_key_pairs     our parent-node HPKE keys of the current epoch
psk                            external PSKs, under their id
mls_join_config                the group's :class:`GroupConfig`
group_context,                 the public group state of the current epoch
interim_transcript_hash,
confirmation_tag
native/v1/tree,                the ratchet tree: its width, and one row per non-blank node
native/v1/tree_node            (:mod:`mls.native.tree_rows`; older vaults: ``tree``, the
                               whole tree in one row, converted by the next epoch)
group_epoch_secrets            the current epoch's secrets (tree root and joiner secrets
                               erased once used)
own_leaf_index, group_state    where we sit; 1 = operational
own_leaf_nodes                 leaves of our pending Update proposals
proposal_queue,                received and own proposals by reference, until a commit
queued_proposal
resumption_psk_store           resumption PSKs of the retained epochs
message_secrets                the index of retained epochs (current + ``max_past_epochs``)
message_secrets/epoch          per epoch: sender-data secret, unconsumed secret-tree nodes
message_secrets/members        per past epoch: context, and who sat at the leaves the next
                               commit changed (late messages; see :class:`MembersRow`)
message_secrets/ratchet        per epoch, leaf and ratchet type: one hash ratchet
native/v1/pending_commit       our commit awaiting the delivery service: its exact bytes
                               (and Welcome) and the epoch it leads to
                               (:mod:`mls.native.pending`)
=============================  ===========================================================

The three ``message_secrets/*`` sub-categories split OpenMLS's single message-secrets row so
that an application message writes only the one ratchet it advanced (plus, the first time a
sender is seen in an epoch, that epoch's node secrets), never a whole-group snapshot.
Our own identity (credential and signature public key) is in ``native/v1/identity``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from mls import categories as cat

from . import tree_math as tm
from .codec import Reader, Struct, Writer, decode_exact
from .errors import DecodeError
from .framing import WireFormat
from .group_context import GroupContext
from .key_schedule import EpochSecrets
from .leaf_node import Credential, LeafNode
from .secret_tree import DEFAULT_MAX_FORWARD, DEFAULT_WINDOW, HashRatchet, RatchetType
from .tree import RatchetTree
from .tree_rows import candidates

CATEGORY_IDENTITY = "native/v1/identity"
CATEGORY_EPOCH = cat.MESSAGE_SECRETS + "/epoch"
CATEGORY_MEMBERS = cat.MESSAGE_SECRETS + "/members"
CATEGORY_RATCHET = cat.MESSAGE_SECRETS + "/ratchet"
#: One row per group with a commit of ours not yet merged or cleared (row key: group id).
CATEGORY_PENDING_COMMIT = "native/v1/pending_commit"
IDENTITY_KEY = b"self"
FORMAT = 1
OPERATIONAL = b"\x01"
_T = TypeVar("_T")


def versioned(write: Callable[[Writer], None]) -> bytes:
    w = Writer()
    w.u8(FORMAT)
    write(w)
    return w.getvalue()


def read_versioned(data: bytes, read: Callable[[Reader], _T]) -> _T:
    def inner(r: Reader) -> _T:
        if r.u8() != FORMAT:
            raise DecodeError("stored MLS row has an unknown format")
        return read(r)

    return decode_exact(data, inner)


def u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def epoch_row_key(group_id: bytes, epoch: int) -> bytes:
    return len(group_id).to_bytes(4, "big") + group_id + u64(epoch)


def ratchet_row_key(group_id: bytes, epoch: int, leaf: int, rtype: RatchetType) -> bytes:
    return epoch_row_key(group_id, epoch) + leaf.to_bytes(4, "big") + bytes((rtype,))


@dataclass(frozen=True, slots=True)
class GroupConfig(Struct):
    """Per-group settings, stored as the group's join config.

    Attributes:
        handshake: wire format of our proposals and commits (PublicMessage, as mls-rs does
            by default, or PrivateMessage).
        padding: zero bytes appended inside every PrivateMessage.
        max_past_epochs: past epochs whose secrets are kept for late application messages.
        max_forward: how far ahead of a ratchet a message generation may be.
        window: skipped-generation keys kept per ratchet for out-of-order delivery.
        ratchet_tree_extension: put the ratchet tree in the GroupInfo of our Welcomes.
    """

    handshake: WireFormat = WireFormat.PUBLIC_MESSAGE
    padding: int = 0
    max_past_epochs: int = 2
    max_forward: int = DEFAULT_MAX_FORWARD
    window: int = DEFAULT_WINDOW
    ratchet_tree_extension: bool = True

    def __post_init__(self) -> None:
        """Reject settings the engine cannot honour."""
        if self.handshake not in (WireFormat.PUBLIC_MESSAGE, WireFormat.PRIVATE_MESSAGE):
            raise ValueError("handshake must be PUBLIC_MESSAGE or PRIVATE_MESSAGE")
        for name in ("padding", "max_past_epochs", "max_forward", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**16:
                raise ValueError(f"{name} must be an int in [0, 65535]")

    def encode(self, w: Writer) -> None:
        """Serialize for storage."""
        w.u8(FORMAT)
        w.u16(self.handshake)
        for value in (self.padding, self.max_past_epochs, self.max_forward, self.window):
            w.u32(value)
        w.boolean(self.ratchet_tree_extension)

    @classmethod
    def decode(cls, r: Reader) -> GroupConfig:
        """Deserialize from storage."""
        if r.u8() != FORMAT:
            raise DecodeError("stored group config has an unknown format")
        handshake = r.u16()
        if handshake not in (WireFormat.PUBLIC_MESSAGE, WireFormat.PRIVATE_MESSAGE):
            raise DecodeError("stored group config has a bad wire format")
        values = (r.u32(), r.u32(), r.u32(), r.u32(), r.boolean())
        try:
            return cls(WireFormat(handshake), *values)
        except ValueError as exc:
            raise DecodeError(f"stored group config is out of range: {exc}") from exc


@dataclass(frozen=True, slots=True, repr=False)
class EpochRow:
    """``message_secrets/epoch``: what decrypting in one epoch needs besides the ratchets."""

    suite_id: int
    n_leaves: int
    max_forward: int
    window: int
    sender_data_secret: bytes
    node_secrets: dict[int, bytes]
    leaves: frozenset[int]  # leaves whose ratchets exist (rows in message_secrets/ratchet)

    def to_bytes(self) -> bytes:
        def write(w: Writer) -> None:
            w.u16(self.suite_id)
            for value in (self.n_leaves, self.max_forward, self.window):
                w.u32(value)
            w.opaque(self.sender_data_secret)
            w.u32(len(self.node_secrets))
            for node, secret in sorted(self.node_secrets.items()):
                w.u32(node)
                w.opaque(secret)
            w.u32(len(self.leaves))
            for leaf in sorted(self.leaves):
                w.u32(leaf)

        return versioned(write)

    @classmethod
    def from_bytes(cls, data: bytes) -> EpochRow:
        def read(r: Reader) -> EpochRow:
            suite, n, fwd, win, sds = r.u16(), r.u32(), r.u32(), r.u32(), r.opaque()
            nodes = {r.u32(): r.opaque() for _ in range(r.u32())}
            return cls(suite, n, fwd, win, sds, nodes, frozenset(r.u32() for _ in range(r.u32())))

        return read_versioned(data, read)


#: Format byte of a ``message_secrets/members`` row holding only the leaves a commit changed.
MEMBERS_DELTA_FORMAT = 2
#: A member's signature key and credential identity.
MemberKey = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class MembersRow:
    """``message_secrets/members``: a past epoch's context and members, for late messages.

    Written when the group leaves the epoch, it lists only the leaves whose member (signature
    key, identity) the next commit changed, with their value in this epoch (``None``: no
    member there), so a commit writes O(changed leaves), never the whole group.  A member
    of epoch ``e`` is found in the first row of ``e, e+1, ...`` that lists its leaf, else in
    the current tree.  Rows of format 1 (vaults made before this layout) list every member
    of their epoch: ``complete`` — a leaf they do not list was blank then.
    """

    context: GroupContext
    members: dict[int, MemberKey | None]
    complete: bool = False

    def to_bytes(self) -> bytes:
        w = Writer()
        w.u8(MEMBERS_DELTA_FORMAT)
        w.opaque(self.context.to_bytes())
        w.boolean(self.complete)
        w.u32(len(self.members))
        for leaf, member in sorted(self.members.items()):
            w.u32(leaf)
            w.boolean(member is not None)
            if member is not None:
                w.opaque(member[0])
                w.opaque(member[1])
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> MembersRow:
        def read(r: Reader) -> MembersRow:
            fmt = r.u8()
            context = decode_exact(r.opaque(), GroupContext.decode)
            if fmt == FORMAT:  # every member of the epoch
                members = {r.u32(): (r.opaque(), r.opaque()) for _ in range(r.u32())}
                return cls(context, dict(members), complete=True)
            if fmt != MEMBERS_DELTA_FORMAT:
                raise DecodeError("stored MLS row has an unknown format")
            complete = r.boolean()
            delta: dict[int, MemberKey | None] = {}
            for _ in range(r.u32()):
                leaf = r.u32()
                delta[leaf] = (r.opaque(), r.opaque()) if r.boolean() else None
            return cls(context, delta, complete)

        return decode_exact(data, read)

    @classmethod
    def between(
        cls,
        context: GroupContext,
        old: RatchetTree,
        new: RatchetTree,
        identity_of: Callable[[Credential], bytes] | None = None,
    ) -> MembersRow:
        """The row of the epoch of ``context`` (tree ``old``) left for tree ``new``.

        ``identity_of`` names each member (the credential validator's ``identity``, so X.509
        members are named by their certificate; default: the basic credential's bytes).
        """
        changed: dict[int, MemberKey | None] = {}
        for x in candidates(old, new):
            if x & 1:
                continue
            a = old.nodes[x] if x < len(old.nodes) else None
            b = new.nodes[x] if x < len(new.nodes) else None
            if a is b:
                continue
            before = None if a is None else _member_key(a, identity_of)
            after = None if b is None else _member_key(b, identity_of)
            if before != after:
                changed[x // 2] = before
        return cls(context, changed)


def _member_key(
    node: object, identity_of: Callable[[Credential], bytes] | None = None
) -> MemberKey:
    assert isinstance(node, LeafNode)
    name = node.credential.identity if identity_of is None else identity_of(node.credential)
    return node.signature_key, name


def encode_epochs(epochs: Sequence[int]) -> bytes:
    def write(w: Writer) -> None:
        for epoch in epochs:
            w.u64(epoch)

    return versioned(write)


def encode_node_key(node: int, priv: bytes) -> bytes:
    def write(w: Writer) -> None:
        w.u32(node)
        w.opaque(priv)

    return versioned(write)


def encode_secret(secret: bytes) -> bytes:
    return versioned(lambda w: w.opaque(secret))


def decode_secret(row: bytes) -> bytes:
    return read_versioned(row, lambda r: r.opaque())


def decode_epochs(data: bytes) -> list[int]:
    def read(r: Reader) -> list[int]:
        out = []
        while r.remaining:
            out.append(r.u64())
        return out

    return read_versioned(data, read)


def encode_pairs(pairs: Iterable[tuple[int, bytes]]) -> bytes:
    def write(w: Writer) -> None:
        for number, value in pairs:
            w.u64(number)
            w.opaque(value)

    return versioned(write)


def decode_pairs(data: bytes) -> list[tuple[int, bytes]]:
    def read(r: Reader) -> list[tuple[int, bytes]]:
        out = []
        while r.remaining:
            out.append((r.u64(), r.opaque()))
        return out

    return read_versioned(data, read)


def stored_secrets(secrets: EpochSecrets) -> EpochSecrets:
    """The epoch secrets worth keeping: the tree root and joiner/welcome secrets are erased.

    The secret tree's root lives (until consumed) in ``message_secrets/epoch``; keeping it
    here too would defeat the secret tree's deletion schedule.
    """
    return replace(secrets, encryption_secret=b"", joiner_secret=b"", welcome_secret=b"")


def secret_tree_root(n_leaves: int) -> int:
    """Root node index of the secret tree of ``n_leaves`` (padded to a power of two)."""
    return tm.root(1 << max(0, (n_leaves - 1).bit_length()))


def decode_ratchet(data: bytes) -> HashRatchet:
    return decode_exact(data, HashRatchet.decode)
