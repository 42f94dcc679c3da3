"""X509CredentialValidator: chains to configured trust anchors, the leaf key is the MLS key.

Each test makes a small PKI with ``cryptography`` (a P-256 root, optionally an intermediate,
and a leaf whose key is the member's MLS signature key) and checks one rule.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mls.native.codec import decode_exact
from mls.native.engine import NativeEngine
from mls.native.errors import InvalidLeafNode
from mls.native.framing import MLSMessage
from mls.native.identity import CredentialValidator
from mls.native.key_package import KeyPackage
from mls.native.leaf_node import (
    PROTOCOL_VERSION_MLS10,
    Capabilities,
    Credential,
    CredentialType,
    LeafNode,
    LeafNodeSource,
    Lifetime,
)
from mls.native.suites import get_suite
from mls.native.x509 import (
    MAX_CHAIN_CERTIFICATES,
    InvalidCredential,
    X509CredentialValidator,
    san_identity,
)
from mls.storage import GranularStorage
from tests.native.engine_helpers import GID

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
CLIENT = "wireapp://alice!0123456789abcdef@example.com"
CS1 = get_suite(1)  # Ed25519 signatures
CS2 = get_suite(2)  # ECDSA P-256 signatures
CaKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def certificate(
    subject: str,
    public_key: object,
    issuer: str,
    issuer_key: CaKey,
    *,
    ca: bool,
    san: str | None = CLIENT,
    eku: x509.ObjectIdentifier | None = ExtendedKeyUsageOID.CLIENT_AUTH,
    days: int = 30,
) -> x509.Certificate:
    """One certificate valid from a day before NOW for ``days`` days."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        ).add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key),  # type: ignore[arg-type]
            critical=False,
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        if san is not None:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(san)]), critical=False
            )
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(issuer_key, algorithm)


@dataclass(frozen=True)
class Pki:
    """A root, an intermediate, and the DER chain of one leaf (leaf first)."""

    root: x509.Certificate
    intermediate: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey
    chain: tuple[bytes, ...]
    signature_key: bytes  # the leaf's key as MLS encodes it

    def credential(self, chain: tuple[bytes, ...] | None = None) -> Credential:
        """An X.509 credential carrying ``chain`` (this PKI's by default)."""
        return Credential(CredentialType.X509, certificates=self.chain if chain is None else chain)

    def validator(self, **options: object) -> X509CredentialValidator:
        """A validator trusting this PKI's root, checking at NOW."""
        return X509CredentialValidator([self.root], clock=lambda: NOW, **options)  # type: ignore[arg-type]


def der(cert: x509.Certificate) -> bytes:
    """DER bytes, as an X.509 credential carries them."""
    return cert.public_bytes(serialization.Encoding.DER)


def make_pki(*, suite: int = 1, san: str = CLIENT, days: int = 30) -> tuple[Pki, bytes]:
    """A PKI whose leaf key is a fresh MLS signature key; returns it and the private key."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = certificate("Root", root_key.public_key(), "Root", root_key, ca=True)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = certificate("Intermediate", inter_key.public_key(), "Root", root_key, ca=True)
    cs = get_suite(suite)
    sig_priv, sig_pub = cs.generate_signature_key_pair()
    if suite == 2:
        leaf_public: object = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sig_pub)
    else:
        leaf_public = ed25519.Ed25519PublicKey.from_public_bytes(sig_pub)
    leaf = certificate(
        "Alice", leaf_public, "Intermediate", inter_key, ca=False, san=san, days=days
    )
    return Pki(root, inter, inter_key, (der(leaf), der(inter)), sig_pub), sig_priv


@pytest.fixture
def pki() -> Pki:
    """A fresh PKI with an Ed25519 leaf (cipher suite 1)."""
    return make_pki()[0]


def test_a_chain_to_the_trust_anchor_with_the_signature_key_is_accepted(pki: Pki) -> None:
    """Leaf + intermediate verifying to the configured root, leaf key = signature key: accepted."""
    validator = pki.validator()
    validator.validate(pki.credential(), pki.signature_key)
    assert validator.identity(pki.credential()) == CLIENT.encode()


def test_the_anchor_may_be_included_at_the_end_of_the_chain(pki: Pki) -> None:
    """RFC 9420 lets the chain end with the trust anchor itself."""
    pki.validator().validate(pki.credential((*pki.chain, der(pki.root))), pki.signature_key)


def test_an_ecdsa_leaf_key_is_compared_as_an_uncompressed_point() -> None:
    """Suite 2 (P-256): the MLS signature key is the uncompressed point of the leaf's key."""
    p256, _ = make_pki(suite=2)
    p256.validator().validate(p256.credential(), p256.signature_key)


def test_a_leaf_key_other_than_the_signature_key_is_refused(pki: Pki) -> None:
    """A copy of someone's certificate does not let another key sign as its subject."""
    _, other = CS1.generate_signature_key_pair()
    with pytest.raises(InvalidCredential, match="not the leaf node's signature key"):
        pki.validator().validate(pki.credential(), other)


def test_a_chain_to_another_root_is_refused(pki: Pki) -> None:
    """A chain that does not reach a configured trust anchor is refused."""
    stranger = make_pki()[0]
    with pytest.raises(InvalidCredential, match="does not verify"):
        stranger.validator().validate(pki.credential(), pki.signature_key)


def test_a_chain_missing_its_intermediate_is_refused(pki: Pki) -> None:
    """The leaf alone cannot be linked to the root."""
    with pytest.raises(InvalidCredential, match="does not verify"):
        pki.validator().validate(pki.credential(pki.chain[:1]), pki.signature_key)


def test_a_chain_out_of_order_is_refused(pki: Pki) -> None:
    """Each certificate must be certified by the next: extra or shuffled entries are refused."""
    padded = (*pki.chain, der(make_pki()[0].root))
    with pytest.raises(InvalidCredential, match="not a chain in order"):
        pki.validator().validate(pki.credential(padded), pki.signature_key)
    swapped = (pki.chain[0], der(pki.root), pki.chain[1])
    with pytest.raises(InvalidCredential, match="not a chain in order"):
        pki.validator().validate(pki.credential(swapped), pki.signature_key)


def test_an_expired_leaf_is_refused() -> None:
    """Validity periods are checked at the validator's clock."""
    short, _ = make_pki(days=1)
    later = NOW + datetime.timedelta(days=2)
    validator = X509CredentialValidator([short.root], clock=lambda: later)
    with pytest.raises(InvalidCredential, match="does not verify"):
        validator.validate(short.credential(), short.signature_key)


def test_a_ca_certificate_cannot_be_a_member(pki: Pki) -> None:
    """The intermediate's own certificate is not an end-entity certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    rogue = certificate("Rogue", key.public_key(), "Intermediate", pki.intermediate_key, ca=True)
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    with pytest.raises(InvalidCredential, match="does not verify"):
        pki.validator().validate(pki.credential((der(rogue), pki.chain[1])), point)


def test_a_leaf_only_for_server_authentication_is_refused(pki: Pki) -> None:
    """An extendedKeyUsage without client authentication does not make a member."""
    key = ed25519.Ed25519PrivateKey.generate()
    server = certificate(
        "Server",
        key.public_key(),
        "Intermediate",
        pki.intermediate_key,
        ca=False,
        eku=ExtendedKeyUsageOID.SERVER_AUTH,
    )
    raw = key.public_key().public_bytes_raw()
    with pytest.raises(InvalidCredential, match="does not verify"):
        pki.validator().validate(pki.credential((der(server), pki.chain[1])), raw)


def test_an_eddsa_certificate_authority_is_refused() -> None:
    """The verifier's web-PKI profile refuses EdDSA CA keys (a documented limit)."""
    root_key = ed25519.Ed25519PrivateKey.generate()
    root = certificate("Root", root_key.public_key(), "Root", root_key, ca=True)
    leaf_key = ed25519.Ed25519PrivateKey.generate()
    leaf = certificate("Alice", leaf_key.public_key(), "Root", root_key, ca=False)
    validator = X509CredentialValidator([root], clock=lambda: NOW)
    credential = Credential(CredentialType.X509, certificates=(der(leaf),))
    with pytest.raises(InvalidCredential, match="does not verify"):
        validator.validate(credential, leaf_key.public_key().public_bytes_raw())


def test_malformed_or_empty_chains_are_refused(pki: Pki) -> None:
    """Garbage certificates and empty chains raise InvalidCredential, never a library error."""
    validator = pki.validator()
    for chain in ((), (b"\x30\x03\x02\x01\x00",), (pki.chain[0][:-5], pki.chain[1])):
        with pytest.raises(InvalidCredential):
            validator.validate(pki.credential(chain), pki.signature_key)
    with pytest.raises(InvalidCredential):
        validator.identity(pki.credential(()))


def test_an_overlong_chain_is_refused_before_any_parsing(pki: Pki) -> None:
    """More than MAX_CHAIN_CERTIFICATES entries is refused outright, even if all are junk."""
    junk = (pki.chain[0], *([b"not a certificate"] * MAX_CHAIN_CERTIFICATES))
    with pytest.raises(InvalidCredential, match="more than"):
        pki.validator().validate(pki.credential(junk), pki.signature_key)
    with pytest.raises(InvalidCredential, match="more than"):
        pki.validator().identity(pki.credential(junk))


def test_invalid_credential_is_an_invalid_leaf_node(pki: Pki) -> None:
    """Code that handles the engine's leaf-node errors handles credential refusals too."""
    assert issubclass(InvalidCredential, InvalidLeafNode)


def test_basic_credentials_are_refused_unless_accepted(pki: Pki) -> None:
    """An X.509 deployment refuses self-asserted identities unless told to accept them."""
    basic = Credential(CredentialType.BASIC, identity=b"bob")
    with pytest.raises(InvalidCredential, match="basic credentials are not accepted"):
        pki.validator().validate(basic, pki.signature_key)
    mixed = pki.validator(accept_basic=True)
    mixed.validate(basic, pki.signature_key)
    assert mixed.identity(basic) == b"bob"
    with pytest.raises(InvalidCredential):
        mixed.validate(Credential(CredentialType.BASIC, identity=b""), pki.signature_key)


def test_identity_can_be_derived_by_the_application(pki: Pki) -> None:
    """``identity_of`` decides what a certificate names; its failure is a refusal."""

    def common_name(cert: x509.Certificate) -> bytes:
        value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        return str(value).encode()

    assert pki.validator(identity_of=common_name).identity(pki.credential()) == b"Alice"

    def broken(cert: x509.Certificate) -> bytes:
        raise KeyError("no such attribute")

    with pytest.raises(InvalidCredential, match="names no identity"):
        pki.validator(identity_of=broken).validate(pki.credential(), pki.signature_key)


def test_successor_rules(pki: Pki) -> None:
    """Renewal under the same name passes; another name or a step down to basic does not."""
    validator = pki.validator(accept_basic=True)
    renewed, _ = make_pki()  # another key and root, same subjectAltName
    other, _ = make_pki(san="wireapp://mallory!0fedcba987654321@example.com")
    assert validator.valid_successor(pki.credential(), renewed.credential())
    assert not validator.valid_successor(pki.credential(), other.credential())
    basic = Credential(CredentialType.BASIC, identity=CLIENT.encode())
    assert validator.valid_successor(basic, pki.credential())  # upgrade to X.509
    assert not validator.valid_successor(pki.credential(), basic)  # never a step down
    assert not validator.valid_successor(pki.credential(), pki.credential(()))
    assert not validator.allow_duplicate_identities()
    assert pki.validator(allow_duplicates=True).allow_duplicate_identities()


def test_a_validator_needs_a_trust_anchor() -> None:
    """No anchors would trust nothing and hide a configuration mistake."""
    with pytest.raises(ValueError):
        X509CredentialValidator([])


def test_san_identity_prefers_uris(pki: Pki) -> None:
    """The default identity is the first URI of the subjectAltName."""
    leaf = x509.load_der_x509_certificate(pki.chain[0])
    assert san_identity(leaf) == CLIENT.encode()


def test_satisfies_the_engine_credential_validator_protocol(pki: Pki) -> None:
    """Structurally the engine's CredentialValidator protocol (it subclasses nothing)."""
    assert isinstance(pki.validator(), CredentialValidator)


def x509_key_package(pki: Pki, sig_priv: bytes) -> tuple[bytes, bytes]:
    """A KeyPackage (MLSMessage) whose leaf carries ``pki``'s chain; returns it and init priv."""
    init_priv, init_pub = CS1.hpke.generate_key_pair()
    _, enc_pub = CS1.hpke.generate_key_pair()
    leaf = LeafNode(
        enc_pub,
        pki.signature_key,
        pki.credential(),
        Capabilities((1,), (1,), (), (), (CredentialType.BASIC, CredentialType.X509)),
        LeafNodeSource.KEY_PACKAGE,
        Lifetime(0, 2**64 - 1),
        b"",
        (),
        b"",
    ).signed(CS1, sig_priv, None, None)
    kp = KeyPackage(PROTOCOL_VERSION_MLS10, 1, init_pub, leaf, (), b"")
    kp = replace(kp, signature=CS1.sign_with_label(sig_priv, "KeyPackageTBS", kp.tbs()))
    return MLSMessage(kp).to_bytes(), init_priv


def engine_judging_with(validator: X509CredentialValidator, name: bytes = b"alice") -> NativeEngine:
    """A fresh engine (basic credential ``name``) that judges credentials with ``validator``."""
    storage = GranularStorage()
    NativeEngine.create(storage, name)
    return NativeEngine(storage, credential_validator=validator)


def test_an_x509_key_package_is_made_verified_and_added_by_the_engine() -> None:
    """A key package carrying a chain round-trips, verifies, and a native group adds it."""
    pki, sig_priv = make_pki()
    wire, _ = x509_key_package(pki, sig_priv)
    kp = decode_exact(wire, MLSMessage.decode).body
    assert isinstance(kp, KeyPackage)
    kp.verify(CS1)
    assert kp.leaf_node.credential.certificates == pki.chain
    validator = pki.validator(accept_basic=True)
    validator.validate(kp.leaf_node.credential, kp.leaf_node.signature_key)

    alice = engine_judging_with(validator)
    alice.create_group(GID)
    commit, welcome = alice.commit(GID, add=[wire])
    assert welcome is not None and commit
    assert len(alice.members(GID)) == 2


def test_an_engine_judging_with_it_refuses_an_untrusted_chain() -> None:
    """Given to the engine, the validator keeps a key package of another CA out of a group."""
    pki, sig_priv = make_pki()
    stranger, stranger_priv = make_pki()
    alice = engine_judging_with(pki.validator(accept_basic=True))
    alice.create_group(GID)
    wire, _ = x509_key_package(stranger, stranger_priv)
    with pytest.raises(InvalidLeafNode):
        alice.commit(GID, add=[wire])
    trusted, _ = x509_key_package(pki, sig_priv)
    alice.commit(GID, add=[trusted])
    assert len(alice.members(GID)) == 2


def test_an_x509_members_identity_is_the_one_its_certificate_names() -> None:
    """The engine names an X.509 member by what its validator says the certificate names."""
    pki, sig_priv = make_pki()
    wire, _ = x509_key_package(pki, sig_priv)
    alice = engine_judging_with(pki.validator(accept_basic=True))
    alice.create_group(GID)
    alice.commit(GID, add=[wire])
    assert [who for _, who in alice.members(GID)] == [b"alice", CLIENT.encode()]
