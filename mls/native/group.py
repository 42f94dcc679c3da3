"""Following a group as a passive member: proposals and commits from other members (§12)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from .commit import process_commit as apply_commit
from .commit import resolve_proposals
from .errors import InvalidMessage
from .framing import AuthenticatedContent, MLSMessage, PrivateMessage, PublicMessage, SenderType
from .join import GroupEpoch
from .proposals import Commit, PreSharedKeyID, PskType
from .protection import unprotect_private, unprotect_public
from .suites import CipherSuite, get_suite
from .tree import RatchetTree
from .validation import PendingProposal

__all__ = ["PendingProposal", "open_message", "process_commit", "proposal_ref"]


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
    """Apply a verified Commit from another member and advance to the next epoch.

    The passive-member entry point of :func:`mls.native.commit.process_commit` (the §12.2
    validation, proposals, UpdatePath, transcript, key schedule and confirmation tag).
    """
    commit = auth.content.content
    if not isinstance(commit, Commit) or auth.content.sender.sender_type != SenderType.MEMBER:
        raise InvalidMessage("expected a Commit from a member")
    proposals = resolve_proposals(commit, auth.content.sender.index, pending)
    new = apply_commit(
        group, auth, proposals, lambda psk: _psk_value(psk, external_psks, resumption_psks)
    )
    if new is None:
        raise InvalidMessage("this member was removed by the commit")
    return new
