"""Official vectors: message-protection."""

from __future__ import annotations

from typing import Any

import pytest

from mls.native.codec import decode_exact
from mls.native.errors import InvalidMessage
from mls.native.framing import (
    AuthenticatedContent,
    Content,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    PrivateMessage,
    PublicMessage,
    Sender,
    SenderType,
    WireFormat,
)
from mls.native.group_context import GroupContext
from mls.native.proposals import Commit, Proposal
from mls.native.protection import (
    protect_private,
    protect_public,
    sign_content,
    unprotect_private,
    unprotect_public,
)
from mls.native.secret_tree import SecretTree
from mls.native.suites import get_suite

from .conftest import h, vector_cases

SENDER = 1


def _message(raw: bytes) -> MLSMessage:
    msg = decode_exact(raw, MLSMessage.decode)
    assert msg.to_bytes() == raw
    return msg


@pytest.mark.parametrize("case", vector_cases("message-protection"))
def test_message_protection(case: dict[str, Any]) -> None:
    """Vector messages unprotect to the raw content, and our own protection round-trips."""
    cs = get_suite(case["cipher_suite"])
    ctx = GroupContext(
        cs.suite_id,
        h(case["group_id"]),
        case["epoch"],
        h(case["tree_hash"]),
        h(case["confirmed_transcript_hash"]),
    )
    sig_priv, sig_pub = h(case["signature_priv"]), h(case["signature_pub"])
    membership_key, sds = h(case["membership_key"]), h(case["sender_data_secret"])
    proposal = decode_exact(h(case["proposal"]), Proposal.decode)
    commit = decode_exact(h(case["commit"]), Commit.decode)
    assert proposal.to_bytes() == h(case["proposal"])
    assert commit.to_bytes() == h(case["commit"])
    raw_content: dict[str, Content] = {
        "proposal": proposal,
        "commit": commit,
        "application": h(case["application"]),
    }
    sender = Sender(SenderType.MEMBER, SENDER)
    for kind, body in raw_content.items():
        tag = cs.mac(membership_key, b"confirmation") if kind == "commit" else None
        framed = FramedContent(ctx.group_id, ctx.epoch, sender, b"", body)
        if kind != "application":
            pub = _message(h(case[f"{kind}_pub"])).body
            assert isinstance(pub, PublicMessage)
            got = unprotect_public(cs, pub, membership_key, ctx, sig_pub)
            assert got.content.content == body
            signed = sign_content(cs, WireFormat.PUBLIC_MESSAGE, framed, sig_priv, ctx, tag)
            mine = protect_public(cs, signed, membership_key, ctx)
            again = decode_exact(mine.to_bytes(), PublicMessage.decode)
            assert unprotect_public(cs, again, membership_key, ctx, sig_pub).content == framed
        else:
            fake = AuthenticatedContent(
                WireFormat.PUBLIC_MESSAGE, framed, FramedContentAuthData(b"sig")
            )
            with pytest.raises(InvalidMessage):
                protect_public(cs, fake, membership_key, ctx)
        tree = SecretTree.create(cs, h(case["encryption_secret"]), 2)
        priv = _message(h(case[f"{kind}_priv"])).body
        assert isinstance(priv, PrivateMessage)
        got, _ = unprotect_private(cs, priv, tree, sds, ctx, {SENDER: sig_pub})
        assert got.content.content == body
        signed = sign_content(cs, WireFormat.PRIVATE_MESSAGE, framed, sig_priv, ctx, tag)
        mine_priv, _ = protect_private(cs, signed, tree, sds, padding=7)
        again_priv = decode_exact(mine_priv.to_bytes(), PrivateMessage.decode)
        got, _ = unprotect_private(cs, again_priv, tree, sds, ctx, {SENDER: sig_pub})
        assert got.content == framed
