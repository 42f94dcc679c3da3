"""Official vectors: secret-tree, key-schedule, psk_secret, transcript-hashes."""

from __future__ import annotations

from typing import Any

import pytest

from mls.native.codec import decode_exact
from mls.native.framing import AuthenticatedContent
from mls.native.group_context import GroupContext
from mls.native.key_schedule import EpochSecrets, next_epoch, psk_secret
from mls.native.proposals import PreSharedKeyID, PskType
from mls.native.secret_tree import RatchetType, SecretTree, sender_data_key_nonce
from mls.native.suites import get_suite
from mls.native.transcript import update_transcript

from .conftest import h, vector_cases


@pytest.mark.parametrize("case", vector_cases("secret-tree"))
def test_secret_tree(case: dict[str, Any]) -> None:
    """Sender-data key/nonce and every leaf's ratchet keys match, also after a storage trip."""
    cs = get_suite(case["cipher_suite"])
    sd = case["sender_data"]
    key, nonce = sender_data_key_nonce(cs, h(sd["sender_data_secret"]), h(sd["ciphertext"]))
    assert (key, nonce) == (h(sd["key"]), h(sd["nonce"]))
    tree = SecretTree.create(cs, h(case["encryption_secret"]), len(case["leaves"]))
    for leaf, entries in enumerate(case["leaves"]):
        for e in entries:
            hs, tree = tree.get_key(leaf, RatchetType.HANDSHAKE, e["generation"])
            app, tree = tree.get_key(leaf, RatchetType.APPLICATION, e["generation"])
            tree = SecretTree.from_bytes(tree.to_bytes())
            assert (hs.key, hs.nonce) == (h(e["handshake_key"]), h(e["handshake_nonce"]))
            assert (app.key, app.nonce) == (h(e["application_key"]), h(e["application_nonce"]))


@pytest.mark.parametrize("case", vector_cases("key-schedule"))
def test_key_schedule(case: dict[str, Any]) -> None:
    """Group contexts, all epoch secrets, external_pub and exporter match for every epoch."""
    cs = get_suite(case["cipher_suite"])
    init_secret = h(case["initial_init_secret"])
    for epoch, e in enumerate(case["epochs"]):
        gc = GroupContext(
            cs.suite_id,
            h(case["group_id"]),
            epoch,
            h(e["tree_hash"]),
            h(e["confirmed_transcript_hash"]),
        )
        assert gc.to_bytes() == h(e["group_context"])
        assert decode_exact(gc.to_bytes(), GroupContext.decode) == gc
        secrets = next_epoch(
            cs, init_secret, h(e["commit_secret"]), h(e["psk_secret"]), gc.to_bytes()
        )
        secrets = EpochSecrets.from_bytes(secrets.to_bytes())
        for name in (
            "joiner_secret",
            "welcome_secret",
            "init_secret",
            "sender_data_secret",
            "encryption_secret",
            "exporter_secret",
            "epoch_authenticator",
            "external_secret",
            "confirmation_key",
            "membership_key",
            "resumption_psk",
        ):
            assert getattr(secrets, name) == h(e[name]), name
        assert secrets.external_key_pair()[1] == h(e["external_pub"])
        x = e["exporter"]
        assert secrets.exporter(x["label"], h(x["context"]), x["length"]) == h(x["secret"])
        init_secret = secrets.init_secret


@pytest.mark.parametrize("case", vector_cases("psk_secret"))
def test_psk_secret(case: dict[str, Any]) -> None:
    """psk_secret chained from external PSK ids and values matches."""
    cs = get_suite(case["cipher_suite"])
    psks = [
        (PreSharedKeyID(PskType.EXTERNAL, h(p["psk_nonce"]), psk_id=h(p["psk_id"])), h(p["psk"]))
        for p in case["psks"]
    ]
    assert psk_secret(cs, psks) == h(case["psk_secret"])


@pytest.mark.parametrize("case", vector_cases("transcript-hashes"))
def test_transcript_hashes(case: dict[str, Any]) -> None:
    """Confirmation tag verifies and both transcript hashes after the commit match."""
    cs = get_suite(case["cipher_suite"])
    raw = h(case["authenticated_content"])
    content = decode_exact(raw, AuthenticatedContent.decode)
    assert content.to_bytes() == raw
    confirmed, interim = update_transcript(cs, h(case["interim_transcript_hash_before"]), content)
    assert confirmed == h(case["confirmed_transcript_hash_after"])
    assert interim == h(case["interim_transcript_hash_after"])
    tag = content.auth.confirmation_tag
    assert tag is not None
    cs.verify_mac(h(case["confirmation_key"]), confirmed, tag)
