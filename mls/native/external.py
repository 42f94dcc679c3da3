"""Joining from outside (RFC 9420 §12.4.3.2, §12.1.8): GroupInfo export, external commits and
external senders.

A member can publish a signed GroupInfo carrying the ``external_pub`` extension (the HPKE key
derived from the epoch's ``external_secret``).  Anyone holding it can join with an *external
commit*: an ExternalInit proposal whose ``kem_output`` carries a fresh ``init_secret`` to the
group (HPKE export), an UpdatePath from the joiner's new leaf (the leftmost blank one), and
optionally one Remove of the joiner's own old leaf (a *resync*, to come back after losing its
state).  Members accept such a commit only if it obeys the §12.2 rules for external commits,
checked by :func:`validate_external_proposals`.

The ``external_senders`` GroupContext extension names non-members (a server, a directory
bot) allowed to send Add/Remove/PreSharedKey/GroupContextExtensions proposals as
PublicMessages signed with their key; members queue them and commit them by reference.

Everything here is a pure function; the engine persists the results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives import constant_time

from .codec import Reader, Writer, decode_exact
from .commit import PskLookup, apply_proposals
from .errors import AuthenticationError, InvalidMessage, InvalidProposal, InvalidTree
from .framing import (
    AuthenticatedContent,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    PublicMessage,
    Sender,
    SenderType,
    WireFormat,
)
from .group_context import GroupContext
from .identity import BasicCredentialValidator, CredentialValidator
from .join import GroupEpoch
from .key_schedule import EpochSecrets, next_epoch, psk_secret
from .leaf_node import (
    Capabilities,
    Credential,
    Extension,
    ExtensionType,
    LeafNode,
    LeafNodeSource,
)
from .proposals import (
    Add,
    Commit,
    ExternalInit,
    GroupContextExtensions,
    PreSharedKey,
    Proposal,
    ProposalBody,
    ProposalOrRef,
    Remove,
)
from .protection import framed_content_tbs, sign_content
from .suites import CipherSuite, get_suite
from .transcript import interim_transcript_hash
from .tree import RatchetTree
from .treekem import TreePrivate, create_update_path, process_update_path
from .validation import PendingProposal, validate_leaf_node
from .welcome import GroupInfo

__all__ = [
    "EXTERNAL_INIT_LABEL",
    "ExternalCommitOutput",
    "ExternalSender",
    "create_external_commit",
    "decode_external_senders",
    "external_proposal",
    "external_pub_extension",
    "external_senders_extension",
    "process_external_commit",
    "read_external_pub",
    "sign_group_info",
    "validate_external_proposals",
    "verify_group_info",
]

#: HPKE exporter context of the external init secret (§8.3).
EXTERNAL_INIT_LABEL = b"MLS 1.0 external init secret"
#: Proposal types an ``external`` sender may send (§12.1.8; ReInit is not supported here).
_EXTERNAL_SENDER_PROPOSALS = (Add, Remove, PreSharedKey, GroupContextExtensions)


# ---------------------------------------------------------------------------- GroupInfo


def external_pub_extension(secrets: EpochSecrets) -> Extension:
    """The ``external_pub`` GroupInfo extension of an epoch: ``struct { opaque key<V>; }``."""
    _, public = secrets.external_key_pair()
    w = Writer()
    w.opaque(public)
    return Extension(ExtensionType.EXTERNAL_PUB, w.getvalue())


def read_external_pub(extensions: Sequence[Extension]) -> bytes:
    """The external public key a GroupInfo offers; raises when it offers none."""
    ext = next((e for e in extensions if e.extension_type == ExtensionType.EXTERNAL_PUB), None)
    if ext is None:
        raise InvalidMessage("the GroupInfo has no external_pub extension: no external joins")
    return decode_exact(ext.extension_data, lambda r: r.opaque())


def sign_group_info(
    cs: CipherSuite,
    context: GroupContext,
    tree: RatchetTree,
    secrets: EpochSecrets,
    confirmation_tag: bytes,
    signer: int,
    sig_priv: bytes,
    *,
    with_ratchet_tree: bool,
) -> GroupInfo:
    """A GroupInfo for the current epoch, signed by the member at leaf ``signer``."""
    extensions = [external_pub_extension(secrets)]
    if with_ratchet_tree:
        extensions.append(Extension(ExtensionType.RATCHET_TREE, tree.to_bytes()))
    info = GroupInfo(context, tuple(extensions), confirmation_tag, signer, b"")
    return replace(info, signature=cs.sign_with_label(sig_priv, "GroupInfoTBS", info.tbs()))


def verify_group_info(
    info: GroupInfo,
    ratchet_tree: RatchetTree | None,
    *,
    validator: CredentialValidator | None = None,
) -> RatchetTree:
    """Check a GroupInfo against its tree (from the extension or out of band); return the tree.

    Verified: the tree's parent hashes and leaf signatures, its hash against the context, the
    GroupInfo signature by its signer's leaf, and every leaf's §7.3 group rules, credentials
    judged by ``validator`` (the joiner's identity policy; default: basic credentials).
    """
    cs = get_suite(info.group_context.cipher_suite)
    gc = info.group_context
    if ratchet_tree is None:
        ext = next(
            (e for e in info.extensions if e.extension_type == ExtensionType.RATCHET_TREE), None
        )
        if ext is None:
            raise InvalidMessage("no ratchet tree in the GroupInfo and none supplied")
        ratchet_tree = RatchetTree.from_bytes(ext.extension_data)
    tree = ratchet_tree
    tree.verify(cs, gc.group_id)
    if tree.tree_hash(cs) != gc.tree_hash:
        raise InvalidTree("ratchet tree does not match the GroupContext tree hash")
    signer = tree.leaf(info.signer) if info.signer < tree.n_leaves else None
    if signer is None:
        raise InvalidTree("GroupInfo signer is not a member")
    info.verify(cs, signer.signature_key)
    for i in tree.member_leaves():
        leaf = tree.leaf(i)
        assert leaf is not None
        validate_leaf_node(
            cs,
            leaf,
            tree,
            gc,
            source=leaf.leaf_node_source,
            replaces=i,
            in_tree=True,
            validator=validator,
        )
    return tree


# ---------------------------------------------------------------------------- external commits


def validate_external_proposals(
    cs: CipherSuite,
    tree: RatchetTree,
    commit: Commit,
    joiner_credential: Credential,
    validator: CredentialValidator | None = None,
) -> list[PendingProposal]:
    """The §12.2 rules for an external commit; returns its proposals (all by value).

    Exactly one ExternalInit, at most one Remove (only of the joiner's own old leaf: a
    resync), any PreSharedKey proposals, nothing else, and no references.  "Its own old
    leaf" is the application's call, not byte equality: the joiner's new credential must be
    a valid successor of the removed leaf's (``validator.valid_successor``), so a member
    whose certificate was renewed while its state was lost can still resync, and nobody can
    remove another identity's leaf this way.
    """
    validator = BasicCredentialValidator() if validator is None else validator
    out: list[PendingProposal] = []
    inits = removes = 0
    psk_ids: set[bytes] = set()
    for por in commit.proposals:
        if por.proposal is None:
            raise InvalidProposal("an external commit cannot reference proposals")
        body = por.proposal.body
        if isinstance(body, ExternalInit):
            inits += 1
        elif isinstance(body, Remove):
            removes += 1
            old = tree.leaf(body.removed) if body.removed < tree.n_leaves else None
            if old is None:
                raise InvalidProposal("Remove of a blank or absent leaf")
            if not validator.valid_successor(old.credential, joiner_credential):
                raise InvalidProposal("an external commit may only remove the joiner's old leaf")
        elif isinstance(body, PreSharedKey):
            key = body.psk.to_bytes()
            if key in psk_ids:
                raise InvalidProposal("the same PSK is proposed twice")
            if len(body.psk.psk_nonce) != cs.hash_size:
                raise InvalidProposal("PSK nonce length differs from the hash length")
            psk_ids.add(key)
        else:
            raise InvalidProposal(f"{type(body).__name__} is not allowed in an external commit")
        out.append(PendingProposal(0, por.proposal))
    if inits != 1:
        raise InvalidProposal("an external commit needs exactly one ExternalInit")
    if removes > 1:
        raise InvalidProposal("an external commit may remove at most one leaf")
    if commit.path is None:
        raise InvalidProposal("an external commit requires an UpdatePath")
    return out


def _psk_secret(
    cs: CipherSuite, proposals: Sequence[PendingProposal], lookup: PskLookup
) -> bytes | None:
    ids = [p.proposal.body.psk for p in proposals if isinstance(p.proposal.body, PreSharedKey)]
    return psk_secret(cs, [(i, lookup(i)) for i in ids]) if ids else None


@dataclass(frozen=True, slots=True, repr=False)
class ExternalCommitOutput:
    """An external commit we made: the signed content and the epoch it leads us into."""

    auth: AuthenticatedContent
    group: GroupEpoch

    def __repr__(self) -> str:
        """Never print secrets."""
        return f"ExternalCommitOutput(epoch={self.group.context.epoch})"

    def message(self) -> bytes:
        """The commit as a PublicMessage MLSMessage (no membership tag: we are no member)."""
        return MLSMessage(PublicMessage(self.auth.content, self.auth.auth, None)).to_bytes()


def create_external_commit(
    info: GroupInfo,
    tree: RatchetTree,
    *,
    sig_priv: bytes,
    signature_key: bytes,
    credential: Credential,
    capabilities: Capabilities,
    resync_leaf: int | None = None,
    authenticated_data: bytes = b"",
    validator: CredentialValidator | None = None,
) -> ExternalCommitOutput:
    """Join the group of a verified GroupInfo (:func:`verify_group_info`) by external commit.

    Args:
        resync_leaf: our own old leaf to remove in the same commit (rejoin after state loss).
        validator: the identity policy our own new leaf is checked against, as the members
            will check it (default: basic credentials).
    """
    gc = info.group_context
    cs = get_suite(gc.cipher_suite)
    kem_output, init_secret = cs.hpke.export_base_sender(
        read_external_pub(info.extensions), b"", EXTERNAL_INIT_LABEL, cs.hash_size
    )
    bodies: list[ProposalBody] = [ExternalInit(kem_output)]
    if resync_leaf is not None:
        bodies.append(Remove(resync_leaf))
    proposals = [PendingProposal(0, Proposal(b)) for b in bodies]
    applied = apply_proposals(tree, gc.extensions, proposals)
    # A placeholder leaf marks where we land; the UpdatePath replaces it with our real leaf.
    placeholder_priv, placeholder_pub = cs.hpke.generate_key_pair()
    del placeholder_priv
    placeholder = LeafNode(
        placeholder_pub,
        signature_key,
        credential,
        capabilities,
        LeafNodeSource.COMMIT,
        None,
        b"",
        (),
        b"",
    )
    grown, me = applied.tree.add_leaf(placeholder)
    provisional = replace(gc, epoch=gc.epoch + 1, tree_hash=b"")
    path, result, _ = create_update_path(cs, grown, me, sig_priv, provisional)
    validate_leaf_node(
        cs,
        path.leaf_node,
        applied.tree,
        provisional,
        source=LeafNodeSource.COMMIT,
        validator=validator,
    )
    commit = Commit(tuple(ProposalOrRef(proposal=p.proposal) for p in proposals), path)
    content = FramedContent(
        gc.group_id, gc.epoch, Sender(SenderType.NEW_MEMBER_COMMIT), authenticated_data, commit
    )
    wire = WireFormat.PUBLIC_MESSAGE
    signature = cs.sign_with_label(
        sig_priv, "FramedContentTBS", framed_content_tbs(wire, content, gc)
    )
    unconfirmed = AuthenticatedContent(wire, content, FramedContentAuthData(signature, b""))
    interim = interim_transcript_hash(cs, gc.confirmed_transcript_hash, info.confirmation_tag)
    confirmed = cs.hash(interim + unconfirmed.confirmed_transcript_input())
    context = replace(
        provisional, tree_hash=result.tree.tree_hash(cs), confirmed_transcript_hash=confirmed
    )
    secrets = next_epoch(cs, init_secret, result.commit_secret, None, context.to_bytes())
    tag = secrets.confirmation_tag(confirmed)
    group = GroupEpoch.begin(cs, context, result.tree, result.private, secrets, tag)
    return ExternalCommitOutput(
        replace(unconfirmed, auth=FramedContentAuthData(signature, tag)), group
    )


def process_external_commit(
    group: GroupEpoch,
    auth: AuthenticatedContent,
    psk_lookup: PskLookup,
    *,
    validator: CredentialValidator | None = None,
) -> tuple[GroupEpoch | None, int]:
    """Apply another party's verified external commit; returns (next epoch, joiner's leaf).

    The epoch is ``None`` when the commit removed us (someone resynced with our credential).
    The caller has verified the signature with the key of the commit's path leaf.  The
    joiner's leaf must satisfy ``validator`` (the application's identity policy; default:
    basic credentials), like any member added by a Welcome.
    """
    cs = get_suite(group.context.cipher_suite)
    commit = auth.content.content
    if not isinstance(commit, Commit) or auth.content.sender.sender_type != (
        SenderType.NEW_MEMBER_COMMIT
    ):
        raise InvalidMessage("expected an external commit")
    if auth.auth.confirmation_tag is None:
        raise InvalidMessage("commit without confirmation tag")
    if commit.path is None:
        raise InvalidProposal("an external commit requires an UpdatePath")
    proposals = validate_external_proposals(
        cs, group.tree, commit, commit.path.leaf_node.credential, validator
    )
    applied = apply_proposals(group.tree, group.context.extensions, proposals)
    me = group.private.leaf_index
    if me in applied.removed:
        return None, applied.tree.add_leaf(commit.path.leaf_node)[1]
    provisional = replace(group.context, epoch=group.context.epoch + 1, tree_hash=b"")
    validate_leaf_node(
        cs,
        commit.path.leaf_node,
        applied.tree,
        provisional,
        source=LeafNodeSource.COMMIT,
        validator=validator,
    )
    grown, joiner = applied.tree.add_leaf(commit.path.leaf_node)
    nodes = {
        n: k for n, k in group.private.node_privs.items() if n < len(grown.nodes) and grown.nodes[n]
    }
    private = TreePrivate(me, group.private.encryption_priv, nodes)
    result, _ = process_update_path(cs, grown, joiner, commit.path, provisional, private)
    kem_output = next(
        p.proposal.body.kem_output for p in proposals if isinstance(p.proposal.body, ExternalInit)
    )
    external_priv, _ = group.secrets.external_key_pair()
    init_secret = cs.hpke.export_base_receiver(
        kem_output, external_priv, b"", EXTERNAL_INIT_LABEL, cs.hash_size
    )
    confirmed = cs.hash(group.interim_transcript_hash + auth.confirmed_transcript_input())
    context = replace(
        provisional, tree_hash=result.tree.tree_hash(cs), confirmed_transcript_hash=confirmed
    )
    secrets = next_epoch(
        cs,
        init_secret,
        result.commit_secret,
        _psk_secret(cs, proposals, psk_lookup),
        context.to_bytes(),
    )
    tag = auth.auth.confirmation_tag
    if not constant_time.bytes_eq(secrets.confirmation_tag(confirmed), tag):
        raise AuthenticationError("commit confirmation tag mismatch")
    return (
        GroupEpoch.begin(cs, context, result.tree, result.private, secrets, tag),
        joiner,
    )


# ---------------------------------------------------------------------------- external senders


@dataclass(frozen=True, slots=True)
class ExternalSender:
    """A non-member allowed to send proposals: its signature key and credential (§12.1.8.1)."""

    signature_key: bytes
    credential: Credential


def external_senders_extension(senders: Sequence[ExternalSender]) -> Extension:
    """The ``external_senders`` GroupContext extension listing ``senders`` in order."""

    def write(w: Writer, s: ExternalSender) -> None:
        w.opaque(s.signature_key)
        s.credential.encode(w)

    w = Writer()
    w.vector(senders, write)
    return Extension(ExtensionType.EXTERNAL_SENDERS, w.getvalue())


def decode_external_senders(extensions: Sequence[Extension]) -> list[ExternalSender]:
    """The external senders a GroupContext allows (empty without the extension)."""
    ext = next((e for e in extensions if e.extension_type == ExtensionType.EXTERNAL_SENDERS), None)
    if ext is None:
        return []

    def read(r: Reader) -> ExternalSender:
        return ExternalSender(r.opaque(), Credential.decode(r))

    return decode_exact(ext.extension_data, lambda r: r.vector(read))


def check_external_sender_proposal(proposal: Proposal) -> None:
    """§12.1.8: an ``external`` sender may only send the proposal types it is allowed."""
    if not isinstance(proposal.body, _EXTERNAL_SENDER_PROPOSALS):
        raise InvalidMessage(
            f"an external sender may not send {type(proposal.body).__name__} proposals"
        )


def external_proposal(
    suite: int,
    sig_priv: bytes,
    context: GroupContext,
    sender_index: int,
    body: ProposalBody,
    *,
    authenticated_data: bytes = b"",
) -> bytes:
    """A proposal from external sender number ``sender_index``, as a PublicMessage MLSMessage.

    For a server or bot listed in the group's ``external_senders`` extension; ``context`` is
    the group's current GroupContext (its id and epoch are what the proposal names).
    """
    check_external_sender_proposal(Proposal(body))
    cs = get_suite(suite)
    content = FramedContent(
        context.group_id,
        context.epoch,
        Sender(SenderType.EXTERNAL, sender_index),
        authenticated_data,
        Proposal(body),
    )
    auth = sign_content(cs, WireFormat.PUBLIC_MESSAGE, content, sig_priv, None)
    return MLSMessage(PublicMessage(auth.content, auth.auth, None)).to_bytes()
