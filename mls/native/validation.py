"""Validation of leaf nodes, key packages and proposal lists (RFC 9420 §7.3, §10.1, §12.1-§12.2).

Signatures are checked where the structures are decoded and used (``LeafNode.verify``,
``KeyPackage.verify``); this module adds the group-level rules a signature cannot express:
capabilities, lifetimes, required capabilities, uniqueness of keys, and the rules a commit's
list of proposals must obey.  Every rejection is an :class:`InvalidLeafNode` or
:class:`InvalidProposal`.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from .codec import Reader, decode_exact
from .errors import InvalidCredential, InvalidLeafNode, InvalidProposal, MlsError
from .group_context import GroupContext
from .identity import BasicCredentialValidator, CredentialValidator
from .key_package import KeyPackage
from .leaf_node import PROTOCOL_VERSION_MLS10, Extension, ExtensionType, LeafNode, LeafNodeSource
from .proposals import (
    Add,
    ExternalInit,
    GroupContextExtensions,
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    PskType,
    ReInit,
    Remove,
    ResumptionPskUsage,
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
            return cls(*(r.uint_vector(2) for _ in range(3)))

        try:
            return decode_exact(ext.extension_data, read)
        except MlsError as exc:
            raise InvalidProposal(f"malformed required_capabilities extension: {exc}") from exc

    def check(self, leaf: LeafNode) -> None:
        """The leaf must support every required non-default type.

        Sets, not tuple scans: both lists may hold tens of thousands of entries.
        """
        caps = leaf.capabilities
        missing = sorted(
            (set(self.extensions) - DEFAULT_EXTENSION_TYPES) - set(caps.extensions)
        )
        missing += sorted((set(self.proposals) - DEFAULT_PROPOSAL_TYPES) - set(caps.proposals))
        missing += sorted(set(self.credentials) - set(caps.credentials))
        if missing:
            raise InvalidLeafNode(f"leaf lacks required capabilities {sorted(missing)}")


#: Extension types RFC 9420 §17.3 allows in a GroupContext (custom types are allowed too,
#: when every member advertises them): the others belong in a LeafNode or a GroupInfo.
_GROUP_CONTEXT_DEFAULT_TYPES = frozenset(
    {ExtensionType.REQUIRED_CAPABILITIES, ExtensionType.EXTERNAL_SENDERS}
)


@dataclass(frozen=True, slots=True)
class TreeIndex:
    """What the uniqueness and compatibility rules need to know about a tree's members.

    Built in one pass over the tree, so checking a leaf against every member is a few
    dictionary look-ups instead of a loop over the members: validating all ``n`` leaves of a
    joined tree, or ``k`` Adds in one commit, stays linear (comparing each leaf with every
    other made a crafted 4000-leaf Welcome cost seconds).
    """

    members: int
    signature_keys: dict[bytes, int]
    encryption_keys: dict[bytes, int]
    identities: dict[bytes, list[int]]
    credential_use: Counter[int]
    credential_support: Counter[int]

    @classmethod
    def of(cls, tree: RatchetTree, validator: CredentialValidator) -> TreeIndex:
        """Index the members (non-blank leaves) of ``tree``.

        Kept in the tree's memo; a tree derived from an indexed one by changing a few
        leaves (a commit) gets its index by updating that one, so a commit's validation
        costs O(changed leaves) after the first, not a pass over every member.
        """
        memo = tree.memo()
        kept = memo.values.get(cls)
        if isinstance(kept, tuple) and kept[0] is validator:
            return kept[1]  # type: ignore[no-any-return]
        index = None
        origin = memo.values_origin
        if isinstance(origin, type(tree)):
            base = origin.memo().values.get(cls)
            if isinstance(base, tuple) and base[0] is validator:
                index = base[1].updated(origin, tree, memo.values_changed, validator)
        if index is None:
            index = cls.build(tree, validator)
        memo.remember(cls, (validator, index))
        return index

    def updated(
        self,
        old: RatchetTree,
        new: RatchetTree,
        changed: frozenset[int],
        validator: CredentialValidator,
    ) -> TreeIndex | None:
        """The index of ``new``, made of ``changed`` node positions of ``old`` (plus any
        cut off by truncation); ``None`` when the result could differ from :meth:`build`
        (a key held twice), so the caller builds it instead."""
        sig, enc = dict(self.signature_keys), dict(self.encryption_keys)
        ids = dict(self.identities)  # lists are replaced, never changed in place
        use, support = Counter(self.credential_use), Counter(self.credential_support)
        members = self.members
        positions = changed.union(range(len(new.nodes), len(old.nodes)))
        for x in sorted(positions):
            if x & 1:
                continue
            i = x // 2
            before = old.nodes[x] if x < len(old.nodes) else None
            after = new.nodes[x] if x < len(new.nodes) else None
            if before is after:
                continue
            if before is not None:
                assert isinstance(before, LeafNode)
                identity = validator.identity(before.credential)
                if sig.get(before.signature_key) != i or enc.get(before.encryption_key) != i:
                    return None
                if i not in ids.get(identity, ()):
                    return None
                del sig[before.signature_key], enc[before.encryption_key]
                rest = [j for j in ids[identity] if j != i]
                if rest:
                    ids[identity] = rest
                else:
                    del ids[identity]
                _count(use, before.credential.credential_type, -1)
                for t in set(before.capabilities.credentials):
                    _count(support, t, -1)
                members -= 1
            if after is not None:
                assert isinstance(after, LeafNode)
                if after.signature_key in sig or after.encryption_key in enc:
                    return None
                sig[after.signature_key] = enc[after.encryption_key] = i
                identity = validator.identity(after.credential)
                ids[identity] = sorted([*ids.get(identity, ()), i])
                _count(use, after.credential.credential_type, 1)
                for t in set(after.capabilities.credentials):
                    _count(support, t, 1)
                members += 1
        return TreeIndex(members, sig, enc, ids, use, support)

    @classmethod
    def build(cls, tree: RatchetTree, validator: CredentialValidator) -> TreeIndex:
        """Index the members of ``tree`` in one pass over its leaves."""
        sig: dict[bytes, int] = {}
        enc: dict[bytes, int] = {}
        ids: dict[bytes, list[int]] = {}
        use: Counter[int] = Counter()
        support: Counter[int] = Counter()
        members = 0
        for i in tree.member_leaves():
            leaf = tree.leaf(i)
            assert leaf is not None
            members += 1
            sig.setdefault(leaf.signature_key, i)
            enc.setdefault(leaf.encryption_key, i)
            ids.setdefault(validator.identity(leaf.credential), []).append(i)
            use[leaf.credential.credential_type] += 1
            support.update(set(leaf.capabilities.credentials))
        return cls(members, sig, enc, ids, use, support)


def _count(counter: Counter[int], key: int, delta: int) -> None:
    """Add ``delta`` to a count, dropping it at zero (as a freshly built Counter would)."""
    value = counter[key] + delta
    if value:
        counter[key] = value
    else:
        del counter[key]


def _check_leaf_alone(
    cs: CipherSuite, leaf: LeafNode, context: GroupContext, validator: CredentialValidator
) -> None:
    """The rules of §7.3 that look at one leaf only (its capabilities and credential)."""
    caps = leaf.capabilities
    if PROTOCOL_VERSION_MLS10 not in caps.versions or cs.suite_id not in caps.cipher_suites:
        raise InvalidLeafNode("leaf does not support the group's protocol version and suite")
    if leaf.credential.credential_type not in caps.credentials:
        raise InvalidLeafNode("leaf does not support its own credential type")
    if leaf.extensions:  # a set: a hostile leaf may list 60,000 extensions and capabilities
        unsupported = (
            {ext.extension_type for ext in leaf.extensions} - DEFAULT_EXTENSION_TYPES
        ) - set(caps.extensions)
        if unsupported:
            raise InvalidLeafNode(f"leaf carries unsupported extension {min(unsupported)}")
    required = RequiredCapabilities.from_extensions(context.extensions)
    if required is not None:
        required.check(leaf)
    validator.validate(leaf.credential, leaf.signature_key)


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
    validator: CredentialValidator | None = None,
    index: TreeIndex | None = None,
) -> None:
    """Group-level LeafNode checks of §7.3 (the signature is checked by the caller).

    Args:
        replaces: the leaf index this node takes over (Update/UpdatePath), excluded from the
            uniqueness and credential comparisons; such a leaf must bring a new encryption
            key (§12.1.2, §12.4.2) and keep the member's identity unless ``validator`` says
            the new credential is a valid successor (§5.3.1).
        in_tree: the leaf already sits at ``replaces`` (a joiner checking a received tree;
            :func:`validate_tree_leaves` does that for a whole tree in linear time).
        now: Unix time for the lifetime check of key_package leaves; ``None`` skips it.
        validator: the application's credential policy (default: basic credentials, one
            leaf per identity).
        index: a :class:`TreeIndex` of ``tree``, when the caller checks several leaves.

    Raises:
        InvalidLeafNode: a rule is broken; :class:`InvalidCredential` when the credential
            policy refuses it.
    """
    validator = BasicCredentialValidator() if validator is None else validator
    if leaf.leaf_node_source != source:
        raise InvalidLeafNode(f"leaf source is {leaf.leaf_node_source.name}, not {source.name}")
    _check_leaf_alone(cs, leaf, context, validator)
    if source == LeafNodeSource.KEY_PACKAGE and now is not None:
        lifetime = leaf.lifetime
        if lifetime is None or not lifetime.not_before <= now <= lifetime.not_after:
            raise InvalidLeafNode("key package leaf is outside its lifetime")
    current = (
        tree.leaf(replaces) if replaces is not None and 0 <= replaces < tree.n_leaves else None
    )
    if current is not None and not in_tree and source != LeafNodeSource.KEY_PACKAGE:
        if current.encryption_key == leaf.encryption_key:
            raise InvalidLeafNode("an Update or UpdatePath leaf must bring a new encryption key")
        if not validator.valid_successor(current.credential, leaf.credential):
            raise InvalidCredential(
                "the new credential is not a valid successor of the member's credential"
            )
    index = TreeIndex.of(tree, validator) if index is None else index
    _check_against_members(leaf, index, replaces, current, validator)


def _check_against_members(
    leaf: LeafNode,
    index: TreeIndex,
    replaces: int | None,
    current: LeafNode | None,
    validator: CredentialValidator,
) -> None:
    """Uniqueness of keys and identity, and credential-type compatibility, in O(1).

    ``current`` is the member leaf at ``replaces`` (left out of every comparison), if any.
    """
    if current is None:
        replaces = None
    if index.signature_keys.get(leaf.signature_key, replaces) != replaces:
        raise InvalidLeafNode("signature key already used by another member")
    if index.encryption_keys.get(leaf.encryption_key, replaces) != replaces:
        raise InvalidLeafNode("encryption key already used by another member")
    if not validator.allow_duplicate_identities():
        holders = index.identities.get(validator.identity(leaf.credential), [])
        if any(i != replaces for i in holders):
            raise InvalidCredential("another member already has this identity")
    # Every other member must support this leaf's credential type, and this leaf every type
    # the other members use; counting lets us leave the replaced member out in O(1).
    others = index.members - (0 if current is None else 1)
    ctype = leaf.credential.credential_type
    support = index.credential_support[ctype]
    if current is not None and ctype in current.capabilities.credentials:
        support -= 1
    if support < others:
        raise InvalidLeafNode("a member does not support this leaf's credential type")
    caps = set(leaf.capabilities.credentials)
    for t, n in index.credential_use.items():
        if current is not None and current.credential.credential_type == t:
            n -= 1
        if n > 0 and t not in caps:
            raise InvalidLeafNode("leaf does not support a member's credential type")


def validate_tree_leaves(
    cs: CipherSuite, tree: RatchetTree, context: GroupContext, validator: CredentialValidator
) -> None:
    """A joiner's checks of every leaf of a received tree (§12.4.3.1), in linear time.

    Each leaf must pass the one-leaf rules of §7.3 and the credential policy; signature
    keys, encryption keys (of every node) and, unless the policy allows duplicates,
    identities must be unique; every member must support every credential type in use.
    """
    sig: set[bytes] = set()
    enc: set[bytes] = set()
    ids: set[bytes] = set()
    used: set[int] = set()
    supported: list[frozenset[int]] = []
    for x, node in enumerate(tree.nodes):
        if node is None:
            continue
        if node.encryption_key in enc:
            raise InvalidLeafNode(f"encryption key of node {x} is used twice in the tree")
        enc.add(node.encryption_key)
        if not isinstance(node, LeafNode):
            continue
        _check_leaf_alone(cs, node, context, validator)
        if node.signature_key in sig:
            raise InvalidLeafNode("two members of the tree share a signature key")
        sig.add(node.signature_key)
        identity = validator.identity(node.credential)
        if identity in ids and not validator.allow_duplicate_identities():
            raise InvalidCredential("two members of the tree have the same identity")
        ids.add(identity)
        used.add(node.credential.credential_type)
        supported.append(frozenset(node.capabilities.credentials))
    for caps in supported:
        if not used <= caps:
            raise InvalidLeafNode("a member does not support a credential type in use")


def validate_group_context_extensions(
    extensions: Sequence[Extension], tree: RatchetTree
) -> None:
    """§12.1.7: a GroupContextExtensions proposal every member can live with.

    Only GroupContext extension types (required_capabilities, external_senders, or custom
    types every member advertises); a well-formed required_capabilities that every member
    meets.

    Raises:
        InvalidProposal: otherwise.
    """
    custom: set[int] = set()
    for ext in extensions:
        t = ext.extension_type
        if t in DEFAULT_EXTENSION_TYPES and t not in _GROUP_CONTEXT_DEFAULT_TYPES:
            raise InvalidProposal(f"extension type {t} does not belong in a GroupContext")
        if t not in DEFAULT_EXTENSION_TYPES:
            custom.add(t)
    required = RequiredCapabilities.from_extensions(extensions)
    for i in tree.member_leaves():
        leaf = tree.leaf(i)
        assert leaf is not None
        if not custom <= set(leaf.capabilities.extensions):
            raise InvalidProposal("a member does not support the proposed GroupContext extensions")
        if required is not None:
            try:
                required.check(leaf)
            except InvalidLeafNode as exc:
                raise InvalidProposal(f"a member lacks a required capability: {exc}") from exc


def validate_psk_proposal(cs: CipherSuite, psk: PreSharedKeyID) -> None:
    """§8.4, §11.2-§11.3: a PSK an ordinary commit may inject.

    The nonce must be as long as the suite's hash; a resumption PSK must have usage
    ``application`` (``reinit`` and ``branch`` PSKs belong only in a reinitialization or
    branch, which MUST reject them anywhere else).

    Raises:
        InvalidProposal: otherwise.
    """
    if len(psk.psk_nonce) != cs.hash_size:
        raise InvalidProposal("PSK nonce length differs from the hash length")
    if psk.psktype == PskType.RESUMPTION and psk.usage != ResumptionPskUsage.APPLICATION:
        raise InvalidProposal(
            "a resumption PSK with usage reinit or branch is not allowed in an ordinary commit"
        )


def validate_key_package(
    cs: CipherSuite,
    kp: KeyPackage,
    tree: RatchetTree,
    context: GroupContext,
    *,
    now: int | None,
    validator: CredentialValidator | None = None,
    index: TreeIndex | None = None,
) -> None:
    """§10.1 and §12.1.1: signatures, suite, version, then the leaf rules."""
    try:
        kp.verify(cs)
    except InvalidLeafNode:
        raise
    except MlsError as exc:
        raise InvalidLeafNode(f"invalid key package: {exc}") from exc
    validate_leaf_node(
        cs,
        kp.leaf_node,
        tree,
        context,
        source=LeafNodeSource.KEY_PACKAGE,
        now=now,
        validator=validator,
        index=index,
    )



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
    validator: CredentialValidator | None = None,
) -> None:
    """The §12.2 rules for the proposals a member commits, plus §12.1 per proposal.

    Linear in the size of the tree plus the number of proposals: the members are indexed
    once (:class:`TreeIndex`), not compared pairwise.

    Raises:
        InvalidProposal: the list is unacceptable; InvalidLeafNode for a bad key package or
            update leaf (InvalidCredential when the credential policy refuses it).
    """
    validator = BasicCredentialValidator() if validator is None else validator
    index = TreeIndex.of(tree, validator)
    touched: set[int] = set()
    removed: set[int] = set()
    updated: dict[int, LeafNode] = {}
    psk_ids: set[tuple[int, bytes, int]] = set()
    adds: list[Add] = []
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
            _check_update(cs, tree, context, p.sender, body, validator, index)
            updated[p.sender] = body.leaf_node
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
            ident = _psk_ident(body.psk)
            if ident in psk_ids:
                raise InvalidProposal("the same PSK is proposed twice")
            validate_psk_proposal(cs, body.psk)
            psk_ids.add(ident)
        elif isinstance(body, GroupContextExtensions):
            gce += 1
            if gce > 1:
                raise InvalidProposal("several GroupContextExtensions proposals")
            validate_group_context_extensions(body.extensions, tree)
        elif isinstance(body, Add):
            adds.append(body)
    after, after_index = _after_updates_and_removes(tree, index, updated, removed, validator)
    added = _AddedSoFar(validator)
    for body in adds:
        validate_key_package(
            cs, body.key_package, after, context, now=now, validator=validator, index=after_index
        )
        added.check_and_add(body.key_package.leaf_node)
    if path_required(proposals) and not has_path:
        raise InvalidProposal("this commit requires an UpdatePath")


def _psk_ident(psk: PreSharedKeyID) -> tuple[int, bytes, int]:
    return (int(psk.psktype), psk.psk_id or psk.psk_group_id, psk.psk_epoch)


def _check_update(
    cs: CipherSuite,
    tree: RatchetTree,
    context: GroupContext,
    sender: int,
    body: Update,
    validator: CredentialValidator,
    index: TreeIndex,
) -> None:
    if not 0 <= sender < tree.n_leaves or tree.leaf(sender) is None:
        raise InvalidProposal("Update from a leaf that is not a member")
    try:
        body.leaf_node.verify(cs, context.group_id, sender)
    except MlsError as exc:
        raise InvalidLeafNode(f"invalid Update leaf: {exc}") from exc
    validate_leaf_node(
        cs,
        body.leaf_node,
        tree,
        context,
        source=LeafNodeSource.UPDATE,
        replaces=sender,
        validator=validator,
        index=index,
    )


def _after_updates_and_removes(
    tree: RatchetTree,
    index: TreeIndex,
    updated: dict[int, LeafNode],
    removed: set[int],
    validator: CredentialValidator,
) -> tuple[RatchetTree, TreeIndex]:
    """The tree Adds are checked against (removed members free their keys and identity)."""
    changes: dict[int, LeafNode | None] = {2 * i: leaf for i, leaf in updated.items()}
    changes.update({2 * i: None for i in removed})
    if not changes:
        return tree, index
    after = tree.with_nodes(dict(changes))
    return after, TreeIndex.of(after, validator)


class _AddedSoFar:
    """Keys and identities of the Adds accepted so far in one commit (no two the same)."""

    __slots__ = ("_enc", "_ids", "_sig", "_validator")

    def __init__(self, validator: CredentialValidator) -> None:
        self._validator = validator
        self._sig: set[bytes] = set()
        self._enc: set[bytes] = set()
        self._ids: set[bytes] = set()

    def check_and_add(self, leaf: LeafNode) -> None:
        if leaf.signature_key in self._sig or leaf.encryption_key in self._enc:
            raise InvalidProposal("two Add proposals for the same client")
        identity = self._validator.identity(leaf.credential)
        if identity in self._ids and not self._validator.allow_duplicate_identities():
            raise InvalidCredential("two Add proposals for the same identity")
        self._sig.add(leaf.signature_key)
        self._enc.add(leaf.encryption_key)
        self._ids.add(identity)


def validate_received_proposal(
    cs: CipherSuite,
    tree: RatchetTree,
    context: GroupContext,
    proposal: Proposal,
    sender: int,
    *,
    now: int | None,
    validator: CredentialValidator,
    psk_lookup: Callable[[PreSharedKeyID], bytes],
) -> None:
    """§12.1: the checks a member makes on a proposal when it arrives, before queuing it.

    A proposal that fails them could never be part of a valid commit, so queuing it would
    only hand the attacker a way to make every later commit of ours fail.  What depends on
    the other proposals of the commit is not judged here but by the committer
    (:func:`select_committable`) and by every receiver of the commit: conflicts between
    valid proposals (two GroupContextExtensions, one key package in two Adds), and whether
    an Add's keys and identity are new to the group (a queued Remove may free them, and a
    commit of both by another implementation must not be refused by us for lack of the
    Add).

    Raises:
        InvalidProposal, InvalidLeafNode, InvalidCredential: the proposal is refused.
    """
    body = proposal.body
    if isinstance(body, Add):
        full = TreeIndex.of(tree, validator)
        unique_later = replace(full, signature_keys={}, encryption_keys={}, identities={})
        validate_key_package(
            cs, body.key_package, tree, context, now=now, validator=validator, index=unique_later
        )
    elif isinstance(body, Update):
        _check_update(cs, tree, context, sender, body, validator, TreeIndex.of(tree, validator))
    elif isinstance(body, Remove):
        if not 0 <= body.removed < tree.n_leaves or tree.leaf(body.removed) is None:
            raise InvalidProposal("Remove of a blank or absent leaf")
    elif isinstance(body, PreSharedKey):
        validate_psk_proposal(cs, body.psk)
        try:
            psk_lookup(body.psk)
        except MlsError as exc:
            raise InvalidProposal(f"the proposal names an unknown PSK: {exc}") from exc
    elif isinstance(body, GroupContextExtensions):
        validate_group_context_extensions(body.extensions, tree)
    else:
        raise InvalidProposal(f"{type(body).__name__} proposals are not supported")


def select_committable(
    cs: CipherSuite,
    tree: RatchetTree,
    context: GroupContext,
    queued: Sequence[PendingProposal],
    committer: int,
    *,
    inline: Sequence[PendingProposal] = (),
    now: int | None,
    validator: CredentialValidator | None = None,
    psk_lookup: Callable[[PreSharedKeyID], bytes] | None = None,
) -> list[PendingProposal]:
    """The queued proposals a committer includes: every one valid, no two in conflict.

    What is left out instead of failing the commit: invalid proposals (a peer running other
    software may have queued what we would have refused), our own Update and Removes of
    ourselves, a second Update/Remove of one leaf, a PSK proposed twice, a second Add of
    one client or identity, every GroupContextExtensions but the newest (a later one
    supersedes an earlier one), and Updates and Adds whose leaf would not support the
    extensions that GroupContextExtensions brings.  ``inline`` are the committer's own new
    proposals, which win over queued ones that conflict with them.
    """
    validator = BasicCredentialValidator() if validator is None else validator
    index = TreeIndex.of(tree, validator)
    touched: set[int] = set()
    removed: set[int] = set()
    psk_ids: set[tuple[int, bytes, int]] = set()
    for p in inline:
        body = p.proposal.body
        if isinstance(body, Remove):
            touched.add(body.removed)
        elif isinstance(body, PreSharedKey):
            psk_ids.add(_psk_ident(body.psk))
    gce, fits = _choose_extensions(tree, context, queued, inline)
    chosen: list[PendingProposal] = []
    updated: dict[int, LeafNode] = {}
    adds: list[PendingProposal] = []
    for p in queued:
        body = p.proposal.body
        try:
            if isinstance(body, Update):
                if p.sender == committer or p.sender in touched:
                    continue
                _check_update(cs, tree, context, p.sender, body, validator, index)
                fits(body.leaf_node)
                touched.add(p.sender)
                updated[p.sender] = body.leaf_node
            elif isinstance(body, Remove):
                r = body.removed
                if r == committer or r in touched or r >= tree.n_leaves or tree.leaf(r) is None:
                    continue
                touched.add(r)
                removed.add(r)
            elif isinstance(body, PreSharedKey):
                ident = _psk_ident(body.psk)
                if ident in psk_ids:
                    continue
                validate_psk_proposal(cs, body.psk)
                if psk_lookup is not None:
                    psk_lookup(body.psk)
                psk_ids.add(ident)
            elif isinstance(body, Add):
                adds.append(p)
                continue
            else:  # GroupContextExtensions (chosen above), ReInit, ExternalInit
                continue
        except MlsError:
            continue
        chosen.append(p)
    if gce is not None:
        chosen.append(gce)
    after, after_index = _after_updates_and_removes(tree, index, updated, removed, validator)
    added = _AddedSoFar(validator)
    for p in inline:
        if isinstance(p.proposal.body, Add):
            with contextlib.suppress(MlsError):
                added.check_and_add(p.proposal.body.key_package.leaf_node)
    for p in adds:
        assert isinstance(p.proposal.body, Add)
        kp = p.proposal.body.key_package
        try:
            validate_key_package(
                cs, kp, after, context, now=now, validator=validator, index=after_index
            )
            fits(kp.leaf_node)
            added.check_and_add(kp.leaf_node)
        except MlsError:
            continue
        chosen.append(p)
    return chosen


def _choose_extensions(
    tree: RatchetTree,
    context: GroupContext,
    queued: Sequence[PendingProposal],
    inline: Sequence[PendingProposal],
) -> tuple[PendingProposal | None, Callable[[LeafNode], None]]:
    """The queued GroupContextExtensions to commit (the newest valid one, none if the
    committer brings its own or if it would refuse one of the committer's own Adds), and
    a check that a leaf supports the extensions the commit will leave in force."""
    extensions = context.extensions
    gce: PendingProposal | None = None
    own = [p.proposal.body for p in inline if isinstance(p.proposal.body, GroupContextExtensions)]
    if own:
        extensions = own[-1].extensions
    else:
        for p in queued:
            body = p.proposal.body
            if isinstance(body, GroupContextExtensions):
                with contextlib.suppress(MlsError):
                    validate_group_context_extensions(body.extensions, tree)
                    gce = p
    if gce is not None:
        assert isinstance(gce.proposal.body, GroupContextExtensions)
        candidate = _supports(gce.proposal.body.extensions)
        try:
            for p in inline:
                if isinstance(p.proposal.body, Add):
                    candidate(p.proposal.body.key_package.leaf_node)
            extensions = gce.proposal.body.extensions
        except MlsError:
            gce = None
    return gce, _supports(extensions)


def _supports(extensions: Sequence[Extension]) -> Callable[[LeafNode], None]:
    """A check that a leaf supports ``extensions`` as a GroupContext (§12.1.7, §11.1)."""
    custom = {e.extension_type for e in extensions} - DEFAULT_EXTENSION_TYPES
    try:
        required = RequiredCapabilities.from_extensions(extensions)
    except MlsError:
        required = None

    def check(leaf: LeafNode) -> None:
        if not custom <= set(leaf.capabilities.extensions):
            raise InvalidLeafNode("leaf does not support the group's extensions")
        if required is not None:
            required.check(leaf)

    return check
