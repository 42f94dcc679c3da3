"""ts-mls specifics: X.509 credentials it makes, and where it departs from RFC 9420.

Three departures of ts-mls 1.6.4 are pinned here (each test fails once ts-mls changes, so the
pin and the marks that depend on it can be updated): its ``external_pub`` encoding, its
unmerged-leaves check, and its extension commits without an UpdatePath.

ts-mls 1.6.4 writes the GroupInfo ``external_pub`` extension (RFC 9420 §12.4.3.2) as the bare
HPKE public key; the RFC defines its data as the ``ExternalPub`` struct, i.e. the key with a
variable-length prefix, and that is what core-crypto (OpenMLS) writes and our engine reads.
GroupInfos therefore do not cross between ts-mls and other implementations, which is why the
external-join scenarios with ts-mls are marked as failing in ``test_peers.py``.  If a later
ts-mls fixes this, the first test here fails: update the pin and lift those marks.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from mls import InvalidCredential, InvalidProposal, ReceivedKind, X509CredentialValidator
from mls.native.codec import Reader, decode_exact
from mls.native.framing import MLSMessage
from mls.native.key_package import KeyPackage
from mls.native.leaf_node import Credential, CredentialType, ExtensionType
from mls.native.suites import get_suite
from mls.native.welcome import GroupInfo
from tests.interop.conftest import Ours
from tests.interop.peer import NodePeer, PeerError
from tests.interop.room import (
    TS_MLS_NESTED_UNMERGED_REFUSAL,
    Room,
    nest_unmerged_leaves,
    required_capabilities,
    tree_of,
    unmerged_leaves_violations,
    wire_client_id,
)
from tests.native.test_x509 import CLIENT, NOW, certificate, der, make_pki

GID = b"ts-mls x509 group"

X25519_KEY_LEN = 32


def external_pub_data(group_info: bytes) -> bytes:
    """The raw extension_data of a GroupInfo's external_pub extension."""
    message = decode_exact(group_info, MLSMessage.decode)
    assert isinstance(message.body, GroupInfo)
    (ext,) = [e for e in message.body.extensions if e.extension_type == ExtensionType.EXTERNAL_PUB]
    return ext.extension_data


def test_ts_mls_external_pub_is_a_bare_key(ts_mls: NodePeer) -> None:
    """ts-mls: 32 bytes of X25519 key, with no ExternalPub length prefix."""
    ts_mls.call("create_group", who="t", identity=wire_client_id("t"), group_id=b"g")
    data = external_pub_data(ts_mls.call("group_info", who="t")["group_info"])
    assert len(data) == X25519_KEY_LEN


def test_core_crypto_external_pub_is_the_rfc_struct(core_crypto: NodePeer) -> None:
    """core-crypto: the ExternalPub struct, a length-prefixed 32-byte key."""
    core_crypto.call("create_group", who="c", identity=wire_client_id("c"), group_id=b"g")
    core_crypto.call("commit", who="c")
    data = external_pub_data(core_crypto.call("group_info", who="c")["group_info"])
    key = decode_exact(data, Reader.opaque)
    assert len(key) == X25519_KEY_LEN


def test_an_x509_key_package_from_ts_mls_passes_our_validator_and_joins(
    ts_mls: NodePeer, ours: Ours
) -> None:
    """ts-mls signs a key package with an X.509 credential for its own key; we accept it.

    The chain (P-256 root and intermediate, Ed25519 leaf for the ts-mls member's signature
    key) is made here; our validator checks what ts-mls put on the wire, then our member adds
    it and both sides talk and export the same secret.
    """
    pki, _ = make_pki()
    public = ts_mls.call("signature_key", who="x")["public_key"]
    leaf = certificate(
        "ts-mls member",
        ed25519.Ed25519PublicKey.from_public_bytes(public),
        "Intermediate",
        pki.intermediate_key,
        ca=False,
    )
    chain = (der(leaf), der(pki.intermediate))
    wire = ts_mls.call("x509_key_package", who="x", certificates=list(chain))["key_package"]
    kp = decode_exact(wire, MLSMessage.decode).body
    assert isinstance(kp, KeyPackage)
    assert kp.leaf_node.credential == Credential(CredentialType.X509, certificates=chain)
    validator = X509CredentialValidator([pki.root], accept_basic=True, clock=lambda: NOW)
    validator.validate(kp.leaf_node.credential, kp.leaf_node.signature_key)
    assert validator.identity(kp.leaf_node.credential) == CLIENT.encode()

    # Our member judges credentials with the validator, creates a group, adds the ts-mls
    # member, and both sides talk; the member is named by its certificate.
    me = ours.create(wire_client_id("n1"), credential_validator=validator)
    me.create_group(GID)
    _, welcome = me.add_members(GID, [wire])
    assert ts_mls.call("join", who="x", welcome=welcome)["group_id"] == GID
    assert me.members(GID) == [wire_client_id("n1"), CLIENT.encode()]
    me = ours.restart(me)  # the validator is given again on open
    got = me.process(GID, ts_mls.call("encrypt", who="x", plaintext=b"signed by a CA")["message"])
    assert (got.data, got.sender) == (b"signed by a CA", CLIENT.encode())
    reply = ts_mls.call("process", who="x", message=me.encrypt(GID, b"seen"))
    assert reply["data"] == b"seen"
    theirs = ts_mls.call("export_secret", who="x", label=b"l", context=b"c", length=32)
    assert theirs["secret"] == me.export_secret(GID, b"l", b"c", 32)


def test_a_certificate_for_another_key_in_a_ts_mls_key_package_is_refused(
    ts_mls: NodePeer, ours: Ours
) -> None:
    """A validly signed key package carrying someone else's certificate is refused."""
    pki, _ = make_pki()  # its leaf certificate is for a key ts-mls does not hold
    ts_mls.call("signature_key", who="x")
    wire = ts_mls.call("x509_key_package", who="x", certificates=list(pki.chain))["key_package"]
    kp = decode_exact(wire, MLSMessage.decode).body
    assert isinstance(kp, KeyPackage)
    kp.verify(get_suite(1))  # the signatures are fine: only the binding is wrong
    validator = X509CredentialValidator([pki.root], clock=lambda: NOW)
    with pytest.raises(InvalidCredential, match="not the leaf node's signature key"):
        validator.validate(kp.leaf_node.credential, kp.leaf_node.signature_key)
    # Through the client: our member will not add it, and nothing changed.
    me = ours.create(wire_client_id("n1"), credential_validator=validator)
    me.create_group(GID)
    with pytest.raises(InvalidCredential, match="not the leaf node's signature key"):
        me.add_members(GID, [wire])
    assert me.members(GID) == [wire_client_id("n1")] and me.epoch(GID) == 0


def test_ts_mls_refuses_a_valid_tree_with_nested_unmerged_leaves(
    ts_mls: NodePeer, ours: Ours
) -> None:
    """ts-mls 1.6.4 wants equal unmerged lists all along a leaf's path; RFC 9420 does not.

    RFC 9420 §12.4.3.1 only asks that every non-blank node *between* an unmerged leaf and
    the parent listing it lists that leaf too.  ts-mls compares the whole lists, on the whole
    direct path, so it refuses to join a valid group that core-crypto and we join (see
    ``test_core_crypto.py``).  If a later ts-mls joins, update this pin.
    """
    room = Room(ours, ts_mls, GID)
    committer, newcomer = nest_unmerged_leaves(room)
    room.new_peer_member("t")
    kps = [room.key_packages.pop(newcomer), room.key_packages.pop("t")]
    commit, welcome = room.client(committer).add_members(GID, kps)
    room.deliver(commit, sender=committer, kind=ReceivedKind.COMMIT)
    tree = tree_of(room.client(committer), GID)
    assert [tree.parent_node(x).unmerged_leaves for x in (3, 7)] == [(0,), (0, 5)]  # type: ignore[union-attr]
    assert unmerged_leaves_violations(tree) == []
    assert room.client(newcomer).join(welcome) == GID  # our engine accepts the tree
    with pytest.raises(PeerError, match=TS_MLS_NESTED_UNMERGED_REFUSAL):
        ts_mls.call("join", who="t", welcome=welcome)


def test_ts_mls_extension_commits_lack_the_required_update_path(
    ts_mls: NodePeer, ours: Ours
) -> None:
    """RFC 9420 §12.4 requires a path for GroupContextExtensions; ts-mls 1.6.4 sends none.

    Its commit of a GroupContextExtensions proposal has no UpdatePath (ts-mls requires one
    only for Update and Remove), and our engine refuses it as RFC 9420 says.  Our own
    extension commits carry the path, and ts-mls follows them (``test_peers.py``).
    """
    room = Room(ours, ts_mls, GID)
    me = room.we_create("n1")
    room.new_peer_member("t")
    room.we_add(me, theirs=("t",))
    both = required_capabilities([CredentialType.BASIC, CredentialType.X509])
    reply = ts_mls.call("group_context_extensions", who="t", extensions=[[3, both]])
    with pytest.raises(InvalidProposal, match="requires an UpdatePath"):
        room.client(me).process(GID, reply["commit"])


def test_our_member_with_an_x509_credential_works_in_a_ts_mls_group(
    ts_mls: NodePeer, ours: Ours
) -> None:
    """Our client's own credential is an X.509 chain its CA issued for its signature key.

    ts-mls adds it from its key package, both sides talk, commit with a path each way, and
    agree on the exporter; ts-mls sees our leaf certificate, we name ourselves by its SAN.
    """
    pki, _ = make_pki()
    validator = X509CredentialValidator([pki.root], accept_basic=True, clock=lambda: NOW)
    identity = wire_client_id("n1")
    me = ours.create(identity, credential_validator=validator)
    leaf = certificate(
        "n1",
        ed25519.Ed25519PublicKey.from_public_bytes(me.signature_key()),
        "Intermediate",
        pki.intermediate_key,
        ca=False,
    )
    me.set_credential([der(leaf), der(pki.intermediate)])
    assert me.identity == CLIENT.encode()
    room = Room(ours, ts_mls, GID)
    room.peer_creates("t")
    reply = ts_mls.call("add", who="t", key_packages=[me.generate_key_package()])
    me = ours.restart(me)  # the credential is in the vault; the validator is given again
    assert me.join(reply["welcome"]) == GID
    assert me.members(GID) == [wire_client_id("t"), CLIENT.encode()]
    assert sorted(ts_mls.call("members", who="t")["members"]) == sorted(
        [wire_client_id("t"), der(leaf)]
    )
    got = me.process(GID, ts_mls.call("encrypt", who="t", plaintext=b"hi x509")["message"])
    assert (got.data, got.sender) == (b"hi x509", wire_client_id("t"))
    assert ts_mls.call("process", who="t", message=me.encrypt(GID, b"hi"))["data"] == b"hi"
    me.process(GID, ts_mls.call("commit", who="t")["commit"])
    ts_mls.call("process", who="t", message=me.update_keys(GID))
    theirs = ts_mls.call("export_secret", who="t", label=b"l", context=b"c", length=32)
    assert theirs["secret"] == me.export_secret(GID, b"l", b"c", 32)
