"""Official vectors: welcome, messages, passive-client-welcome (join only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mls.native.codec import Reader, Struct, decode_exact
from mls.native.framing import MLSMessage, PrivateMessage, PublicMessage, WireFormat
from mls.native.join import GroupEpoch, join_from_welcome
from mls.native.key_package import KeyPackage
from mls.native.key_schedule import epoch_from_joiner, welcome_secret
from mls.native.proposals import (
    Add,
    Commit,
    ExternalInit,
    GroupContextExtensions,
    PreSharedKey,
    ReInit,
    Remove,
    Update,
)
from mls.native.suites import get_suite
from mls.native.tree import RatchetTree
from mls.native.welcome import GroupInfo, GroupSecrets, Welcome

from .conftest import h, vector_cases


@pytest.mark.parametrize("case", vector_cases("welcome"))
def test_welcome(case: dict[str, Any]) -> None:
    """The Welcome decrypts for the KeyPackage, GroupInfo verifies, confirmation tag matches."""
    cs = get_suite(case["cipher_suite"])
    kp_msg = decode_exact(h(case["key_package"]), MLSMessage.decode)
    welcome_msg = decode_exact(h(case["welcome"]), MLSMessage.decode)
    assert kp_msg.to_bytes() == h(case["key_package"])
    assert welcome_msg.to_bytes() == h(case["welcome"])
    kp, welcome = kp_msg.body, welcome_msg.body
    assert isinstance(kp, KeyPackage)
    assert isinstance(welcome, Welcome)
    kp.verify(cs)
    secrets = welcome.open_group_secrets(cs, kp.ref(cs), h(case["init_priv"]))
    assert secrets.psks == ()
    info = welcome.open_group_info(cs, welcome_secret(cs, secrets.joiner_secret, None))
    info.verify(cs, h(case["signer_pub"]))
    gc = info.group_context
    epoch = epoch_from_joiner(cs, secrets.joiner_secret, None, gc.to_bytes())
    assert epoch.confirmation_tag(gc.confirmed_transcript_hash) == info.confirmation_tag


_MLS_MESSAGES = {
    "mls_welcome": WireFormat.WELCOME,
    "mls_group_info": WireFormat.GROUP_INFO,
    "mls_key_package": WireFormat.KEY_PACKAGE,
    "public_message_application": WireFormat.PUBLIC_MESSAGE,
    "public_message_proposal": WireFormat.PUBLIC_MESSAGE,
    "public_message_commit": WireFormat.PUBLIC_MESSAGE,
    "private_message": WireFormat.PRIVATE_MESSAGE,
}
_STRUCTS: dict[str, Callable[[Reader], Struct]] = {
    "ratchet_tree": RatchetTree.decode,
    "group_secrets": GroupSecrets.decode,
    "add_proposal": Add.decode,
    "update_proposal": Update.decode,
    "remove_proposal": Remove.decode,
    "pre_shared_key_proposal": PreSharedKey.decode,
    "re_init_proposal": ReInit.decode,
    "external_init_proposal": ExternalInit.decode,
    "group_context_extensions_proposal": GroupContextExtensions.decode,
    "commit": Commit.decode,
}
_BODY = {
    WireFormat.WELCOME: Welcome,
    WireFormat.GROUP_INFO: GroupInfo,
    WireFormat.KEY_PACKAGE: KeyPackage,
    WireFormat.PUBLIC_MESSAGE: PublicMessage,
    WireFormat.PRIVATE_MESSAGE: PrivateMessage,
}


@pytest.mark.parametrize("case", vector_cases("messages"))
def test_messages(case: dict[str, Any]) -> None:
    """Every message and struct decodes with the right type and re-encodes byte-equal."""
    for field, wire_format in _MLS_MESSAGES.items():
        raw = h(case[field])
        msg = decode_exact(raw, MLSMessage.decode)
        assert msg.wire_format == wire_format, field
        assert isinstance(msg.body, _BODY[wire_format])
        assert msg.to_bytes() == raw, field
    for field, decoder in _STRUCTS.items():
        raw = h(case[field])
        assert decode_exact(raw, decoder).to_bytes() == raw, field


@pytest.mark.parametrize("case", vector_cases("passive-client-welcome"))
def test_passive_client_welcome(case: dict[str, Any]) -> None:
    """Joining via the Welcome reproduces the initial epoch authenticator."""
    cs = get_suite(case["cipher_suite"])
    kp = decode_exact(h(case["key_package"]), MLSMessage.decode).body
    assert isinstance(kp, KeyPackage)
    assert cs.signature_public_key(h(case["signature_priv"])) == kp.leaf_node.signature_key
    assert cs.hpke.public_from_private(h(case["encryption_priv"])) == kp.leaf_node.encryption_key
    assert cs.hpke.public_from_private(h(case["init_priv"])) == kp.init_key
    welcome = decode_exact(h(case["welcome"]), MLSMessage.decode).body
    assert isinstance(welcome, Welcome)
    tree = RatchetTree.from_bytes(h(case["ratchet_tree"])) if case["ratchet_tree"] else None
    psks = {h(p["psk_id"]): h(p["psk"]) for p in case["external_psks"]}
    group = join_from_welcome(
        welcome, kp, h(case["init_priv"]), h(case["encryption_priv"]), psks, tree
    )
    assert group.secrets.epoch_authenticator == h(case["initial_epoch_authenticator"])
    assert GroupEpoch.from_bytes(group.to_bytes()) == group
