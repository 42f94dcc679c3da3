"""Validation of leaf nodes, key packages and proposal lists (RFC 9420 §7.3, §10.1, §12.1-§12.2).

Signatures are checked where the structures are decoded and used (``LeafNode.verify``,
``KeyPackage.verify``); this module adds the group-level rules a signature cannot express:
capabilities, lifetimes, required capabilities, uniqueness of keys, and the rules a commit's
list of proposals must obey.  Every rejection is an :class:`InvalidLeafNode` or
:class:`InvalidProposal`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .codec import Reader, decode_exact, read_u16
from .errors import InvalidLeafNode, InvalidProposal, MlsError
from .group_context import GroupContext
from .key_package import KeyPackage
from .leaf_node import PROTOCOL_VERSION_MLS10, Extension, ExtensionType, LeafNode, LeafNodeSource
from .proposals import (
    Add,
    ExternalInit,
    GroupContextExtensions,
    PreSharedKey,
    Proposal,
    ReInit,
    Remove,
    Update,
)
from .suites import CipherSuite
from .tree import RatchetTree

#: Extension and proposal types defined by RFC 9420 itself: capabilities never list them.
DEFAULT_EXTENSION_TYPES = frozenset(int(t) for t in ExtensionType)
DEFAULT_PROPOSAL_TYPES = frozenset(range(1, 8))


@dataclass(frozen=True, slots=True)
class RequiredCapabilities:
    """The ``required_capabilities`` GroupContext extension (§11.1)."""

    extensions: tuple[int, ...]
    proposals: tuple[int, ...]
    credentials: tuple[int, ...]

    @classmethod
    def from_extensions(cls, extensions: Sequence[Extension]) -> RequiredCapabilities | None:
        """Parse the extension if present; ``None`` when the group requires nothing."""
        ext = next(
            (e for e in extensions if e.extension_type == ExtensionType.REQUIRED_CAPABILITIES),
            None,
        )
        if ext is None:
            return None

        def read(r: Reader) -> RequiredCapabilities:
            return cls(*(tuple(r.vector(read_u16)) for _ in range(3)))

        try:
            return decode_exact(ext.extension_data, read)
        except MlsError as exc:
            raise InvalidProposal(f"malformed required_capabilities extension: {exc}") from exc

    def check(self, leaf: LeafNode) -> None:
        """The leaf must support every required non-default type."""
        caps = leaf.capabilities
        missing = [
            e
            for e in self.extensions
            if e not in DEFAULT_EXTENSION_TYPES and e not in caps.extensions
        ]
        missing += [
            p for p in self.proposals if p not in DEFAULT_PROPOSAL_TYPES and p not in caps.proposals
        ]
        missing += [c for c in self.credentials if c not in caps.credentials]
        if missing:
            raise InvalidLeafNode(f"leaf lacks required capabilities {sorted(missing)}")


def validate_leaf_node(
    cs: CipherSuite,
    leaf: LeafNode,
    tree: RatchetTree,
    context: GroupContext,
    *,
    source: LeafNodeSource,
    replaces: int | None = None,
    now: int | None = None,
    in_tree: bool = False,
) -> None:
    """Group-level LeafNode checks of §7.3 (the signature is checked by the caller).

    Args:
        replaces: the leaf index this node takes over (Update/UpdatePath), excluded from the
            uniqueness and credential comparisons; such a leaf must bring a new encryption
            key (§12.1.2, §12.4.2).
        in_tree: the leaf already sits at ``replaces`` (a joiner checking a received tree).
        now: Unix time for the lifetime check of key_package leaves; ``None`` skips it.
    """
    if leaf.leaf_node_source != source:
        raise InvalidLeafNode(f"leaf source is {leaf.leaf_node_source.name}, not {source.name}")
    caps = leaf.capabilities
    if PROTOCOL_VERSION_MLS10 not in caps.versions or cs.suite_id not in caps.cipher_suites:
        raise InvalidLeafNode("leaf does not support the group's protocol version and suite")
    if leaf.credential.credential_type not in caps.credentials:
        raise InvalidLeafNode("leaf does not support its own credential type")
    for ext in leaf.extensions:
        if ext.extension_type not in DEFAULT_EXTENSION_TYPES and (
            ext.extension_type not in caps.extensions
        ):
            raise InvalidLeafNode(f"leaf carries unsupported extension {ext.extension_type}")
    required = RequiredCapabilities.from_extensions(context.extensions)
    if required is not None:
        required.check(leaf)
    if source == LeafNodeSource.KEY_PACKAGE and now is not None:
        lifetime = leaf.lifetime
        if lifetime is None or not lifetime.not_before <= now <= lifetime.not_after:
            raise InvalidLeafNode("key package leaf is outside its lifetime")
    if replaces is not None and not in_tree and source != LeafNodeSource.KEY_PACKAGE:
        current = tree.leaf(replaces) if replaces < tree.n_leaves else None
        if current is not None and current.encryption_key == leaf.encryption_key:
            raise InvalidLeafNode("an Update or UpdatePath leaf must bring a new encryption key")
    for i in tree.member_leaves():
        if i == replaces:
            continue
        other = tree.leaf(i)
        assert other is not None
        if other.signature_key == leaf.signature_key:
            raise InvalidLeafNode("signature key already used by another member")
        if other.encryption_key == leaf.encryption_key:
            raise InvalidLeafNode("encryption key already used by another member")
        if leaf.credential.credential_type not in other.capabilities.credentials:
            raise InvalidLeafNode("a member does not support this leaf's credential type")
        if other.credential.credential_type not in caps.credentials:
            raise InvalidLeafNode("leaf does not support a member's credential type")


def validate_key_package(
    cs: CipherSuite,
    kp: KeyPackage,
    tree: RatchetTree,
    context: GroupContext,
    *,
    now: int | None,
) -> None:
    """§10.1 and §12.1.1: signatures, suite, version, then the leaf rules."""
    try:
        kp.verify(cs)
    except InvalidLeafNode:
        raise
    except MlsError as exc:
        raise InvalidLeafNode(f"invalid key package: {exc}") from exc
    validate_leaf_node(cs, kp.leaf_node, tree, context, source=LeafNodeSource.KEY_PACKAGE, now=now)


@dataclass(frozen=True, slots=True)
class PendingProposal:
    """A proposal with the leaf index of its sender and its ProposalRef (``b""`` inline)."""

    sender: int
    proposal: Proposal
    ref: bytes = b""


def path_required(proposals: Sequence[PendingProposal]) -> bool:
    """§12.4: a path is required unless every proposal is Add, PreSharedKey or ReInit."""
    if not proposals:
        return True
    return any(not isinstance(p.proposal.body, Add | PreSharedKey | ReInit) for p in proposals)


def validate_proposal_list(
    cs: CipherSuite,
    tree: RatchetTree,
    context: GroupContext,
    proposals: Sequence[PendingProposal],
    committer: int,
    *,
    has_path: bool,
    now: int | None,
) -> None:
    """The §12.2 rules for the proposals a member commits, plus §12.1 per proposal.

    Raises:
        InvalidProposal: the list is unacceptable; InvalidLeafNode for a bad key package or
            update leaf.
    """
    touched: set[int] = set()
    removed: set[int] = set()
    added_keys: set[bytes] = set()
    psk_ids: set[tuple[int, bytes, int]] = set()
    gce = 0
    for p in proposals:
        body = p.proposal.body
        if isinstance(body, ReInit | ExternalInit):
            raise InvalidProposal(f"{type(body).__name__} proposals are not supported")
        if isinstance(body, Update):
            if p.sender == committer:
                raise InvalidProposal("the committer cannot commit its own Update")
            if p.sender in touched:
                raise InvalidProposal("several Update/Remove proposals for one leaf")
            touched.add(p.sender)
            try:
                body.leaf_node.verify(cs, context.group_id, p.sender)
            except MlsError as exc:
                raise InvalidLeafNode(f"invalid Update leaf: {exc}") from exc
            validate_leaf_node(
                cs, body.leaf_node, tree, context, source=LeafNodeSource.UPDATE, replaces=p.sender
            )
        elif isinstance(body, Remove):
            if body.removed == committer:
                raise InvalidProposal("the committer cannot remove itself")
            if body.removed >= tree.n_leaves or tree.leaf(body.removed) is None:
                raise InvalidProposal("Remove of a blank or absent leaf")
            if body.removed in touched:
                raise InvalidProposal("several Update/Remove proposals for one leaf")
            touched.add(body.removed)
            removed.add(body.removed)
        elif isinstance(body, PreSharedKey):
            psk = body.psk
            ident = (int(psk.psktype), psk.psk_id or psk.psk_group_id, psk.psk_epoch)
            if ident in psk_ids:
                raise InvalidProposal("the same PSK is proposed twice")
            if len(body.psk.psk_nonce) != cs.hash_size:
                raise InvalidProposal("PSK nonce length differs from the hash length")
            psk_ids.add(ident)
        elif isinstance(body, GroupContextExtensions):
            gce += 1
            if gce > 1:
                raise InvalidProposal("several GroupContextExtensions proposals")
    for p in proposals:
        body = p.proposal.body
        if isinstance(body, Add):
            sig = body.key_package.leaf_node.signature_key
            if sig in added_keys:
                raise InvalidProposal("two Add proposals for the same client")
            added_keys.add(sig)
            remaining = tree
            for r in removed:
                remaining = remaining.with_nodes({2 * r: None})
            validate_key_package(cs, body.key_package, remaining, context, now=now)
    if path_required(proposals) and not has_path:
        raise InvalidProposal("this commit requires an UpdatePath")
