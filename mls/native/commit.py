"""Commits (RFC 9420 §12.2-§12.4): applying proposals, creating and processing commits, Welcomes.

Both sides share one code path: :func:`apply_proposals` evolves the tree the same way for the
committer and for every receiver, and :func:`validate_proposal_list` enforces the same §12.2
rules on what we send and what we accept.  Everything here is a pure function of a
:class:`GroupEpoch`; persistence is the engine's business (:mod:`mls.native.engine`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives import constant_time

from . import tree_math as tm
from .errors import AuthenticationError, InvalidMessage, InvalidProposal, KeyNotFound
from .framing import (
    AuthenticatedContent,
    FramedContent,
    FramedContentAuthData,
    Sender,
    SenderType,
    WireFormat,
)
from .group_context import GroupContext
from .identity import CredentialValidator
from .join import GroupEpoch
from .key_package import KeyPackage
from .key_schedule import next_epoch, psk_secret, welcome_key_nonce
from .leaf_node import Credential, Extension, ExtensionType, LeafNodeSource
from .proposals import (
    Add,
    Commit,
    GroupContextExtensions,
    HPKECiphertext,
    PreSharedKey,
    PreSharedKeyID,
    ProposalOrRef,
    Remove,
    Update,
)
from .protection import framed_content_tbs
from .suites import CipherSuite, get_suite
from .tree import RatchetTree
from .treekem import TreePrivate, create_update_path, process_update_path
from .validation import (
    DEFAULT_EXTENSION_TYPES,
    PendingProposal,
    RequiredCapabilities,
    path_required,
    validate_leaf_node,
    validate_proposal_list,
)
from .welcome import EncryptedGroupSecrets, GroupInfo, GroupSecrets, Welcome

#: Looks up the value of a PSK named in a proposal; raises when it is unknown.
PskLookup = Callable[[PreSharedKeyID], bytes]
#: Finds the private key of one of our own leaf encryption keys (pending Updates).
LeafKeyLookup = Callable[[bytes], bytes | None]


@dataclass(frozen=True, slots=True)
class Applied:
    """The provisional state after a commit's proposals, before its UpdatePath."""

    tree: RatchetTree
    extensions: tuple[Extension, ...]
    joiners: tuple[tuple[int, KeyPackage], ...]
    psk_ids: tuple[PreSharedKeyID, ...]
    removed: frozenset[int]


def resolve_proposals(
    commit: Commit, committer: int, queued: Mapping[bytes, PendingProposal]
) -> list[PendingProposal]:
    """The commit's proposals, by value or by reference to ones received earlier."""
    out: list[PendingProposal] = []
    for por in commit.proposals:
        if por.proposal is not None:
            out.append(PendingProposal(committer, por.proposal))
        elif por.reference in queued:
            out.append(queued[por.reference])
        else:
            raise InvalidMessage("commit references an unknown proposal")
    return out


def apply_proposals(
    tree: RatchetTree, extensions: tuple[Extension, ...], proposals: Sequence[PendingProposal]
) -> Applied:
    """Apply in the §12.3 order: GroupContextExtensions, Update, Remove, Add; collect PSKs."""
    joiners: list[tuple[int, KeyPackage]] = []
    psks: list[PreSharedKeyID] = []
    removed: set[int] = set()
    for p in proposals:
        if isinstance(p.proposal.body, GroupContextExtensions):
            extensions = p.proposal.body.extensions
    for p in proposals:
        if isinstance(p.proposal.body, Update):
            tree = tree.update_leaf(p.sender, p.proposal.body.leaf_node)
    for p in proposals:
        if isinstance(p.proposal.body, Remove):
            tree = tree.remove_leaf(p.proposal.body.removed)
            removed.add(p.proposal.body.removed)
    for p in proposals:
        if isinstance(p.proposal.body, Add):
            kp = p.proposal.body.key_package
            tree, index = tree.add_leaf(kp.leaf_node)
            joiners.append((index, kp))
        elif isinstance(p.proposal.body, PreSharedKey):
            psks.append(p.proposal.body.psk)
    return Applied(tree, extensions, tuple(joiners), tuple(psks), frozenset(removed))


def _kept_private(private: TreePrivate, tree: RatchetTree, leaf_priv: bytes) -> TreePrivate:
    """Our private keys minus those of nodes the proposals blanked."""
    nodes = {n: k for n, k in private.node_privs.items() if n < len(tree.nodes) and tree.nodes[n]}
    return TreePrivate(private.leaf_index, leaf_priv, nodes)


def _check_required_capabilities(applied: Applied, before: GroupContext) -> None:
    """Every member must support new GroupContext extensions and their requirements (§12.1.7)."""
    if applied.extensions == before.extensions:
        return
    required = RequiredCapabilities.from_extensions(applied.extensions)
    custom = {e.extension_type for e in applied.extensions} - DEFAULT_EXTENSION_TYPES
    for i in applied.tree.member_leaves():
        leaf = applied.tree.leaf(i)
        assert leaf is not None
        if not custom <= set(leaf.capabilities.extensions):
            raise InvalidProposal("a member does not support the new GroupContext extensions")
        if required is not None:
            required.check(leaf)


def _psk_secret(cs: CipherSuite, ids: Sequence[PreSharedKeyID], lookup: PskLookup) -> bytes | None:
    if not ids:
        return None
    return psk_secret(cs, [(i, lookup(i)) for i in ids])


def process_commit(
    group: GroupEpoch,
    auth: AuthenticatedContent,
    proposals: Sequence[PendingProposal],
    psk_lookup: PskLookup,
    *,
    leaf_key: LeafKeyLookup | None = None,
    now: int | None = None,
    validator: CredentialValidator | None = None,
) -> GroupEpoch | None:
    """Validate and apply another member's verified commit; ``None`` if it removed us.

    Args:
        proposals: the commit's proposals, resolved (:func:`resolve_proposals`).
        leaf_key: private keys of our pending Update leaves, for when a commit takes one.
        now: Unix time for key-package lifetime checks (``None`` skips them).
        validator: the credential policy new and replaced leaves must satisfy.
    """
    cs = get_suite(group.context.cipher_suite)
    commit = auth.content.content
    if not isinstance(commit, Commit) or auth.content.sender.sender_type != SenderType.MEMBER:
        raise InvalidMessage("expected a Commit from a member")
    if auth.auth.confirmation_tag is None:
        raise InvalidMessage("commit without confirmation tag")
    committer = auth.content.sender.index
    validate_proposal_list(
        cs,
        group.tree,
        group.context,
        proposals,
        committer,
        has_path=commit.path is not None,
        now=now,
        validator=validator,
    )
    applied = apply_proposals(group.tree, group.context.extensions, proposals)
    _check_required_capabilities(applied, group.context)
    me = group.private.leaf_index
    tree = applied.tree
    if me in applied.removed:  # our leaf may already hold someone added by the same commit
        return None
    own, before = tree.leaf(me), group.tree.leaf(me)
    assert own is not None and before is not None
    leaf_priv = group.private.encryption_priv
    if own.encryption_key != before.encryption_key:
        found = leaf_key(own.encryption_key) if leaf_key is not None else None
        if found is None:
            raise KeyNotFound("the commit applies an Update of ours whose key is unknown")
        leaf_priv = found
    private = _kept_private(group.private, tree, leaf_priv)
    provisional = replace(
        group.context,
        epoch=group.context.epoch + 1,
        extensions=applied.extensions,
        tree_hash=b"",
    )
    commit_secret: bytes | None = None
    if commit.path is not None:
        validate_leaf_node(
            cs,
            commit.path.leaf_node,
            tree,
            provisional,
            source=LeafNodeSource.COMMIT,
            replaces=committer,
            validator=validator,
        )
        joiners = [i for i, _ in applied.joiners]
        result, _ = process_update_path(
            cs, tree, committer, commit.path, provisional, private, joiners
        )
        tree, private, commit_secret = result.tree, result.private, result.commit_secret
    confirmed = cs.hash(group.interim_transcript_hash + auth.confirmed_transcript_input())
    context = replace(
        provisional, tree_hash=tree.tree_hash(cs), confirmed_transcript_hash=confirmed
    )
    secrets = next_epoch(
        cs,
        group.secrets.init_secret,
        commit_secret,
        _psk_secret(cs, applied.psk_ids, psk_lookup),
        context.to_bytes(),
    )
    tag = auth.auth.confirmation_tag
    if not constant_time.bytes_eq(secrets.confirmation_tag(confirmed), tag):
        raise AuthenticationError("commit confirmation tag mismatch")
    return GroupEpoch.begin(cs, context, tree, private, secrets, tag)


@dataclass(frozen=True, slots=True, repr=False)
class CommitOutput:
    """A commit we made: its signed content, our next epoch, and the Welcome if any."""

    auth: AuthenticatedContent
    group: GroupEpoch
    welcome: Welcome | None
    joiners: tuple[KeyPackage, ...]

    def __repr__(self) -> str:
        """Never print secrets."""
        return f"CommitOutput(epoch={self.group.context.epoch}, joiners={len(self.joiners)})"


def create_commit(
    group: GroupEpoch,
    sig_priv: bytes,
    proposals: Sequence[PendingProposal],
    psk_lookup: PskLookup,
    *,
    wire_format: WireFormat,
    force_path: bool = False,
    ratchet_tree_extension: bool = True,
    authenticated_data: bytes = b"",
    now: int | None = None,
    validator: CredentialValidator | None = None,
    credential: Credential | None = None,
) -> CommitOutput:
    """Commit ``proposals`` (inline when ``ref`` is empty, else by reference).

    ``credential``: ours, for the new leaf of the UpdatePath (default: the old leaf's).

    Includes an UpdatePath when §12.4 requires one or ``force_path`` asks for it, and builds
    the Welcome (GroupInfo signed by us, ``ratchet_tree`` extension) for added members.
    """
    cs = get_suite(group.context.cipher_suite)
    me = group.private.leaf_index
    with_path = force_path or path_required(proposals)
    validate_proposal_list(
        cs,
        group.tree,
        group.context,
        proposals,
        me,
        has_path=with_path,
        now=now,
        validator=validator,
    )
    applied = apply_proposals(group.tree, group.context.extensions, proposals)
    _check_required_capabilities(applied, group.context)
    tree = applied.tree
    private = _kept_private(group.private, tree, group.private.encryption_priv)
    provisional = replace(
        group.context,
        epoch=group.context.epoch + 1,
        extensions=applied.extensions,
        tree_hash=b"",
    )
    joiner_indices = [i for i, _ in applied.joiners]
    commit_secret: bytes | None = None
    path_secret_of: dict[int, bytes] = {}
    path = None
    if with_path:
        fdp = tree.filtered_direct_path(me)
        path, result, _ = create_update_path(
            cs, tree, me, sig_priv, provisional, excluded=joiner_indices, credential=credential
        )
        ps = result.path_secret
        for i, node in enumerate(fdp):
            if i:
                ps = cs.derive_secret(ps, "path")
            path_secret_of[node] = ps
        tree, private, commit_secret = result.tree, result.private, result.commit_secret
    commit = Commit(
        tuple(
            ProposalOrRef(reference=p.ref) if p.ref else ProposalOrRef(proposal=p.proposal)
            for p in proposals
        ),
        path,
    )
    content = FramedContent(
        group.context.group_id,
        group.context.epoch,
        Sender(SenderType.MEMBER, me),
        authenticated_data,
        commit,
    )
    tbs = framed_content_tbs(wire_format, content, group.context)
    signature = cs.sign_with_label(sig_priv, "FramedContentTBS", tbs)
    unconfirmed = AuthenticatedContent(wire_format, content, FramedContentAuthData(signature, b""))
    confirmed = cs.hash(group.interim_transcript_hash + unconfirmed.confirmed_transcript_input())
    context = replace(
        provisional, tree_hash=tree.tree_hash(cs), confirmed_transcript_hash=confirmed
    )
    psk = _psk_secret(cs, applied.psk_ids, psk_lookup)
    secrets = next_epoch(cs, group.secrets.init_secret, commit_secret, psk, context.to_bytes())
    tag = secrets.confirmation_tag(confirmed)
    auth = replace(unconfirmed, auth=FramedContentAuthData(signature, tag))
    new_group = GroupEpoch.begin(cs, context, tree, private, secrets, tag)
    welcome = None
    if applied.joiners:
        extensions: tuple[Extension, ...] = ()
        if ratchet_tree_extension:
            extensions = (Extension(ExtensionType.RATCHET_TREE, tree.to_bytes()),)
        info = GroupInfo(context, extensions, tag, me, b"")
        info = replace(info, signature=cs.sign_with_label(sig_priv, "GroupInfoTBS", info.tbs()))
        key, nonce = welcome_key_nonce(cs, secrets.welcome_secret)
        encrypted_info = cs.aead_seal(key, nonce, b"", info.to_bytes())
        entries = []
        for index, kp in applied.joiners:
            leaf_node = tm.leaf_to_node(index)
            path_secret = next(
                (s for n, s in path_secret_of.items() if tm.is_in_subtree(leaf_node, n)), None
            )
            secrets_for = GroupSecrets(secrets.joiner_secret, path_secret, applied.psk_ids)
            kem_output, ct = cs.encrypt_with_label(
                kp.init_key, "Welcome", encrypted_info, secrets_for.to_bytes()
            )
            entries.append(EncryptedGroupSecrets(kp.ref(cs), HPKECiphertext(kem_output, ct)))
        welcome = Welcome(cs.suite_id, tuple(entries), encrypted_info)
    return CommitOutput(auth, new_group, welcome, tuple(kp for _, kp in applied.joiners))


def new_psk_nonce(cs: CipherSuite) -> bytes:
    """A fresh PSK nonce of the hash length (§8.4)."""
    return os.urandom(cs.hash_size)


__all__ = [
    "Applied",
    "CommitOutput",
    "LeafKeyLookup",
    "PendingProposal",
    "PskLookup",
    "apply_proposals",
    "create_commit",
    "new_psk_nonce",
    "process_commit",
    "resolve_proposals",
]
