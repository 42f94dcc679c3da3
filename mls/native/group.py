"""Following a group as a passive member: proposals and commits from other members (§12)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives import constant_time

from .errors import AuthenticationError, InvalidMessage
from .framing import AuthenticatedContent, MLSMessage, PrivateMessage, PublicMessage, SenderType
from .join import GroupEpoch
from .key_schedule import next_epoch, psk_secret
from .leaf_node import LeafNode
from .proposals import (
    Add,
    Commit,
    GroupContextExtensions,
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    PskType,
    Remove,
    Update,
)
from .protection import unprotect_private, unprotect_public
from .secret_tree import SecretTree
from .suites import CipherSuite, get_suite
from .transcript import update_transcript
from .tree import RatchetTree
from .treekem import TreePrivate, process_update_path


@dataclass(frozen=True, slots=True)
class PendingProposal:
    """A proposal received by reference, with its sender leaf."""

    sender: int
    proposal: Proposal


def _signature_keys(tree: RatchetTree) -> dict[int, bytes]:
    out = {}
    for i in tree.member_leaves():
        leaf = tree.leaf(i)
        assert leaf is not None
        out[i] = leaf.signature_key
    return out


def open_message(group: GroupEpoch, raw: MLSMessage) -> tuple[AuthenticatedContent, GroupEpoch]:
    """Verify and decrypt a member's Public/PrivateMessage; returns content and new state."""
    cs = get_suite(group.context.cipher_suite)
    body = raw.body
    keys = _signature_keys(group.tree)
    if isinstance(body, PublicMessage):
        sender = body.content.sender
        if sender.sender_type != SenderType.MEMBER or sender.index not in keys:
            raise InvalidMessage("only member senders are supported")
        auth = unprotect_public(
            cs, body, group.secrets.membership_key, group.context, keys[sender.index]
        )
        return auth, group
    if isinstance(body, PrivateMessage):
        auth, secret_tree = unprotect_private(
            cs, body, group.secret_tree, group.secrets.sender_data_secret, group.context, keys
        )
        return auth, replace(group, secret_tree=secret_tree)
    raise InvalidMessage("not a group message")


def proposal_ref(cs: CipherSuite, auth: AuthenticatedContent) -> bytes:
    """ProposalRef of a proposal's AuthenticatedContent."""
    return cs.make_proposal_ref(auth.to_bytes())


def _psk_value(
    psk: PreSharedKeyID,
    external: Mapping[bytes, bytes],
    resumption: Mapping[tuple[bytes, int], bytes],
) -> bytes:
    if psk.psktype == PskType.EXTERNAL:
        value = external.get(psk.psk_id)
    else:
        value = resumption.get((psk.psk_group_id, psk.psk_epoch))
    if value is None:
        raise InvalidMessage("commit references an unknown PSK")
    return value


def process_commit(
    group: GroupEpoch,
    auth: AuthenticatedContent,
    pending: Mapping[bytes, PendingProposal],
    external_psks: Mapping[bytes, bytes],
    resumption_psks: Mapping[tuple[bytes, int], bytes],
) -> GroupEpoch:
    """Apply a verified Commit from another member and advance to the next epoch."""
    cs = get_suite(group.context.cipher_suite)
    commit = auth.content.content
    if not isinstance(commit, Commit) or auth.content.sender.sender_type != SenderType.MEMBER:
        raise InvalidMessage("expected a Commit from a member")
    committer = auth.content.sender.index
    proposals: list[PendingProposal] = []
    for por in commit.proposals:
        if por.proposal is not None:
            proposals.append(PendingProposal(committer, por.proposal))
        elif por.reference in pending:
            proposals.append(pending[por.reference])
        else:
            raise InvalidMessage("commit references an unknown proposal")
    tree = group.tree
    extensions = group.context.extensions
    by_type: dict[type, list[PendingProposal]] = {}
    for p in proposals:
        by_type.setdefault(type(p.proposal.body), []).append(p)
    for p in by_type.get(GroupContextExtensions, []):
        assert isinstance(p.proposal.body, GroupContextExtensions)
        extensions = p.proposal.body.extensions
    for p in by_type.get(Update, []):
        assert isinstance(p.proposal.body, Update)
        if p.sender == committer:
            raise InvalidMessage("committer cannot include its own Update")
        leaf: LeafNode = p.proposal.body.leaf_node
        leaf.verify(cs, group.context.group_id, p.sender)
        tree = tree.update_leaf(p.sender, leaf)
    for p in by_type.get(Remove, []):
        assert isinstance(p.proposal.body, Remove)
        tree = tree.remove_leaf(p.proposal.body.removed)
    joiners: list[int] = []
    for p in by_type.get(Add, []):
        assert isinstance(p.proposal.body, Add)
        kp = p.proposal.body.key_package
        kp.verify(cs)
        tree, index = tree.add_leaf(kp.leaf_node)
        joiners.append(index)
    psk_ids = []
    for p in by_type.get(PreSharedKey, []):
        assert isinstance(p.proposal.body, PreSharedKey)
        psk_ids.append(p.proposal.body.psk)
    me = group.private.leaf_index
    if me >= tree.n_leaves or tree.leaf(me) is None:
        raise InvalidMessage("this member was removed by the commit")
    private = TreePrivate(
        me,
        group.private.encryption_priv,
        {
            n: k
            for n, k in group.private.node_privs.items()
            if n < len(tree.nodes) and tree.nodes[n] is not None
        },
    )
    provisional = replace(
        group.context, epoch=group.context.epoch + 1, extensions=extensions, tree_hash=b""
    )
    commit_secret: bytes | None = None
    if commit.path is not None:
        result, _ = process_update_path(
            cs, tree, committer, commit.path, provisional, private, joiners
        )
        tree, private, commit_secret = result.tree, result.private, result.commit_secret
    confirmed, interim = update_transcript(cs, group.interim_transcript_hash, auth)
    context = replace(
        provisional, tree_hash=tree.tree_hash(cs), confirmed_transcript_hash=confirmed
    )
    psks = [(pid, _psk_value(pid, external_psks, resumption_psks)) for pid in psk_ids]
    secrets = next_epoch(
        cs,
        group.secrets.init_secret,
        commit_secret,
        psk_secret(cs, psks) if psks else None,
        context.to_bytes(),
    )
    tag = auth.auth.confirmation_tag
    assert tag is not None
    if not constant_time.bytes_eq(secrets.confirmation_tag(confirmed), tag):
        raise AuthenticationError("commit confirmation tag mismatch")
    return GroupEpoch(
        context,
        tree,
        private,
        secrets,
        SecretTree.create(cs, secrets.encryption_secret, tree.n_leaves),
        interim,
    )
