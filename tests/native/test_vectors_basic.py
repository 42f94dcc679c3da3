"""Official vectors: tree-math, deserialization, crypto-basics."""

from __future__ import annotations

from typing import Any

import pytest

from mls.native import tree_math as tm
from mls.native.codec import Reader, encode_varint
from mls.native.suites import get_suite

from .conftest import h, vector_cases


@pytest.mark.parametrize("case", vector_cases("tree-math"))
def test_tree_math(case: dict[str, Any]) -> None:
    """Node count, root and left/right/parent/sibling match the vector for every node."""
    n = case["n_leaves"]
    assert tm.node_width(n) == case["n_nodes"]
    assert tm.root(n) == case["root"]
    for x in range(case["n_nodes"]):
        assert (None if tm.is_leaf(x) else tm.left(x)) == case["left"][x]
        assert (None if tm.is_leaf(x) else tm.right(x)) == case["right"][x]
        at_root = x == tm.root(n)
        assert (None if at_root else tm.parent(x, n)) == case["parent"][x]
        assert (None if at_root else tm.sibling(x, n)) == case["sibling"][x]


@pytest.mark.parametrize("case", vector_cases("deserialization"))
def test_deserialization(case: dict[str, Any]) -> None:
    """The varint header decodes to the length and re-encodes to the same bytes."""
    header = h(case["vlbytes_header"])
    reader = Reader(header)
    assert reader.varint() == case["length"]
    reader.finish()
    assert encode_varint(case["length"]) == header


@pytest.mark.parametrize("case", vector_cases("crypto-basics"))
def test_crypto_basics(case: dict[str, Any]) -> None:
    """RefHash, ExpandWithLabel, DeriveSecret, DeriveTreeSecret, signatures, HPKE match."""
    cs = get_suite(case["cipher_suite"])
    v = case["ref_hash"]
    assert cs.ref_hash(v["label"].encode(), h(v["value"])) == h(v["out"])
    v = case["expand_with_label"]
    out = cs.expand_with_label(h(v["secret"]), v["label"], h(v["context"]), v["length"])
    assert out == h(v["out"])
    v = case["derive_secret"]
    assert cs.derive_secret(h(v["secret"]), v["label"]) == h(v["out"])
    v = case["derive_tree_secret"]
    out = cs.derive_tree_secret(h(v["secret"]), v["label"], v["generation"], v["length"])
    assert out == h(v["out"])
    v = case["sign_with_label"]
    priv, pub, content = h(v["priv"]), h(v["pub"]), h(v["content"])
    assert cs.signature_public_key(priv) == pub
    cs.verify_with_label(pub, v["label"], content, h(v["signature"]))
    cs.verify_with_label(pub, v["label"], content, cs.sign_with_label(priv, v["label"], content))
    v = case["encrypt_with_label"]
    priv, pub, ctx = h(v["priv"]), h(v["pub"]), h(v["context"])
    assert cs.hpke.public_from_private(priv) == pub
    pt = cs.decrypt_with_label(priv, v["label"], ctx, h(v["kem_output"]), h(v["ciphertext"]))
    assert pt == h(v["plaintext"])
    kem_out, ct = cs.encrypt_with_label(pub, v["label"], ctx, h(v["plaintext"]))
    assert cs.decrypt_with_label(priv, v["label"], ctx, kem_out, ct) == h(v["plaintext"])
