"""X.509 credentials through ``MlsClient``: our own chain, members named by their certificates.

Each test makes its certificate authorities with ``cryptography`` (P-256 root and
intermediate, Ed25519 leaves for cipher suite 1) and runs native-engine clients through the
public API only.  The validators check certificates at a fixed time (``NOW``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from keystore import profiles
from mls import (
    InvalidCredential,
    InvalidMessage,
    MlsClient,
    ReceivedKind,
    Unsupported,
    X509Credential,
    X509CredentialValidator,
)
from tests.native.test_x509 import NOW, certificate, der

PASS = "x509 passphrase"
FAST = profiles.INSECURE_FOR_TESTS_ONLY
GID = b"x509 group"
X509_CREDENTIAL_TYPE = b"\x00\x02"


def san(name: str) -> str:
    """A Wire-style client URI naming ``name``."""
    return f"wireapp://{name}!0123456789abcdef@example.com"


@dataclass
class Ca:
    """A root and an intermediate that issues leaf certificates for MLS signature keys."""

    root: x509.Certificate
    intermediate: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey

    @classmethod
    def make(cls) -> Ca:
        """A fresh two-level PKI."""
        root_key = ec.generate_private_key(ec.SECP256R1())
        root = certificate("Root", root_key.public_key(), "Root", root_key, ca=True)
        key = ec.generate_private_key(ec.SECP256R1())
        inter = certificate("Intermediate", key.public_key(), "Root", root_key, ca=True)
        return cls(root, inter, key)

    def issue(self, name: str, signature_key: bytes) -> list[bytes]:
        """A chain (leaf, intermediate) certifying an Ed25519 MLS signature key for ``name``."""
        public = ed25519.Ed25519PublicKey.from_public_bytes(signature_key)
        leaf = certificate(
            name, public, "Intermediate", self.intermediate_key, ca=False, san=san(name)
        )
        return [der(leaf), der(self.intermediate)]

    def credential(self, name: str) -> X509Credential:
        """A new Ed25519 key and its chain, as an application that made its own key has."""
        key = ed25519.Ed25519PrivateKey.generate()
        chain = self.issue(name, key.public_key().public_bytes_raw())
        return X509Credential(tuple(chain), key)

    def validator(self, **options: object) -> X509CredentialValidator:
        """A validator trusting this CA's root."""
        return X509CredentialValidator([self.root], clock=lambda: NOW, **options)  # type: ignore[arg-type]


class Clients:
    """Native clients in their own vaults, closed at the end of the test."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.open: list[MlsClient] = []

    def create(self, name: str, **options: object) -> MlsClient:
        """A new client called ``name`` (its basic identity, until an X.509 chain is set)."""
        client = MlsClient.create(
            self.folder / f"{name}.vault",
            PASS,
            identity=san(name).encode(),
            kdf=FAST,
            **options,  # type: ignore[arg-type]
        )
        self.open.append(client)
        return client

    def reopen(self, client: MlsClient, name: str, **options: object) -> MlsClient:
        """Close ``client`` and open its vault again, as a new process would."""
        client.close()
        again = MlsClient.open(self.folder / f"{name}.vault", PASS, **options)  # type: ignore[arg-type]
        self.open.append(again)
        return again


@pytest.fixture
def clients(tmp_path: Path) -> Iterator[Clients]:
    """Factory of native clients."""
    made = Clients(tmp_path)
    try:
        yield made
    finally:
        for client in made.open:
            client.close()


@pytest.fixture
def ca() -> Ca:
    """A fresh certificate authority."""
    return Ca.make()


def test_an_x509_group_through_the_client_names_members_by_their_certificates(
    clients: Clients, ca: Ca
) -> None:
    """Alice brings her own key and chain; Bob has his key certified; both see SAN identities."""
    alice = clients.create(
        "alice", credential=ca.credential("alice"), credential_validator=ca.validator()
    )
    bob = clients.create("bob", credential_validator=ca.validator())
    bob.set_credential(ca.issue("bob", bob.signature_key()))
    assert (alice.identity, bob.identity) == (san("alice").encode(), san("bob").encode())

    alice.create_group(GID)
    _, welcome = alice.add_members(GID, [bob.generate_key_package()])
    assert bob.join(welcome) == GID
    roster = bob.roster(GID)
    assert [m.identity for m in roster] == [san("alice").encode(), san("bob").encode()]
    assert all(m.credential.startswith(X509_CREDENTIAL_TYPE) for m in roster)
    got = bob.process(GID, alice.encrypt(GID, b"certified hello"))
    assert (got.kind, got.sender, got.data) == (
        ReceivedKind.APPLICATION,
        san("alice").encode(),
        b"certified hello",
    )
    got = alice.process(GID, bob.update_keys(GID))
    assert got.sender == san("bob").encode() and got.changes is not None
    assert got.changes.updated == (san("bob").encode(),)
    assert alice.export_secret(GID, b"l", b"c", 32) == bob.export_secret(GID, b"l", b"c", 32)


def test_the_credential_survives_a_restart(clients: Clients, ca: Ca) -> None:
    """After reopening, the client is still its certificate: key packages carry the chain."""
    bob = clients.create("bob", credential_validator=ca.validator())
    key = bob.signature_key()
    bob.set_credential(ca.issue("bob", key))
    bob = clients.reopen(bob, "bob", credential_validator=ca.validator())
    assert bob.identity == san("bob").encode()
    assert bob.signature_key() == key
    alice = clients.create(
        "alice", credential=ca.credential("alice"), credential_validator=ca.validator()
    )
    alice.create_group(GID)
    _, welcome = alice.add_members(GID, [bob.generate_key_package()])
    bob.join(welcome)
    (_, member) = alice.roster(GID)
    assert member.identity == san("bob").encode()
    assert member.credential.startswith(X509_CREDENTIAL_TYPE)
    assert member.signature_key == key


def test_a_chain_from_another_ca_is_refused_for_our_own_credential(
    clients: Clients, ca: Ca
) -> None:
    """set_credential and create(credential=) refuse an untrusted chain with our error."""
    stranger = Ca.make()
    bob = clients.create("bob", credential_validator=ca.validator())
    with pytest.raises(InvalidCredential, match="does not verify"):
        bob.set_credential(stranger.issue("bob", bob.signature_key()))
    assert bob.identity == san("bob").encode()  # still the basic credential
    with pytest.raises(InvalidCredential, match="not the leaf node's signature key"):
        bob.set_credential(
            ca.issue("bob", ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw())
        )
    path = clients.folder / "carol.vault"
    with pytest.raises(InvalidCredential):
        MlsClient.create(
            path,
            PASS,
            identity=b"carol",
            kdf=FAST,
            credential=stranger.credential("carol"),
            credential_validator=ca.validator(),
        )
    assert not path.exists(), "a refused create leaves no file behind"
    with pytest.raises(InvalidCredential, match="signs with"):  # a P-256 key for suite 1
        MlsClient.create(
            path,
            PASS,
            identity=b"carol",
            kdf=FAST,
            credential=X509Credential(
                tuple(ca.issue("carol", bob.signature_key())),
                ec.generate_private_key(ec.SECP256R1()),
            ),
            credential_validator=ca.validator(),
        )
    assert not path.exists()


def test_a_member_with_an_untrusted_chain_is_kept_out(clients: Clients, ca: Ca) -> None:
    """A key package whose chain leads to another CA cannot be added (our validator says no)."""
    alice = clients.create(
        "alice", credential=ca.credential("alice"), credential_validator=ca.validator()
    )
    stranger = Ca.make()
    mallory = clients.create(
        "mallory",
        credential=stranger.credential("mallory"),
        credential_validator=stranger.validator(),
    )
    alice.create_group(GID)
    with pytest.raises(InvalidCredential):
        alice.add_members(GID, [mallory.generate_key_package()])
    assert alice.members(GID) == [san("alice").encode()]
    assert alice.pending_events == 0


def test_external_joins_are_judged_by_the_validator(clients: Clients, ca: Ca) -> None:
    """A certified newcomer joins by external commit; one of another CA is refused."""
    alice = clients.create(
        "alice", credential=ca.credential("alice"), credential_validator=ca.validator()
    )
    alice.create_group(GID)
    carol = clients.create(
        "carol", credential=ca.credential("carol"), credential_validator=ca.validator()
    )
    _, commit = carol.join_by_external_commit(alice.group_info(GID))
    got = alice.process(GID, commit)
    assert got.sender == san("carol").encode()
    assert got.changes is not None and got.changes.added == (san("carol").encode(),)

    # Mallory's certificate comes from a CA Alice does not trust (Mallory trusts both).
    stranger = Ca.make()
    both = X509CredentialValidator([ca.root, stranger.root], clock=lambda: NOW)
    mallory = clients.create(
        "mallory", credential=stranger.credential("mallory"), credential_validator=both
    )
    _, commit = mallory.join_by_external_commit(alice.group_info(GID))
    with pytest.raises(InvalidCredential, match="does not verify"):
        alice.process(GID, commit)
    assert alice.members(GID) == [san("alice").encode(), san("carol").encode()]


def test_a_member_with_a_renewed_certificate_resyncs_after_losing_its_state(
    clients: Clients, ca: Ca
) -> None:
    """Resync removes the old leaf when the new credential is a valid successor (same name).

    The renewed certificate is for a new key, so the credentials differ byte for byte: an
    equality rule would refuse the resync; the validator's successor rule accepts it.
    """
    alice = clients.create(
        "alice", credential=ca.credential("alice"), credential_validator=ca.validator()
    )
    bob = clients.create(
        "bob", credential=ca.credential("bob"), credential_validator=ca.validator()
    )
    alice.create_group(GID)
    _, welcome = alice.add_members(GID, [bob.generate_key_package()])
    bob.join(welcome)
    # Bob's device loses its vault; a new one gets a renewed certificate for a new key.
    bob2 = clients.create(
        "bob-again", credential=ca.credential("bob"), credential_validator=ca.validator()
    )
    assert bob2.identity == bob.identity
    _, commit = bob2.join_by_external_commit(alice.group_info(GID), resync=True)
    got = alice.process(GID, commit)
    assert got.changes is not None
    assert alice.members(GID) == [san("alice").encode(), san("bob").encode()]
    assert bob2.own_leaf_index(GID) == 1  # the old leaf was removed, the new one took its place
    assert alice.export_secret(GID, b"l", b"", 16) == bob2.export_secret(GID, b"l", b"", 16)
    # Someone else cannot remove Bob's leaf by "resyncing" with another name.
    carol = clients.create(
        "carol", credential=ca.credential("carol"), credential_validator=ca.validator()
    )
    with pytest.raises(InvalidMessage, match="no leaf of ours"):
        carol.join_by_external_commit(alice.group_info(GID), resync=True)


def test_a_basic_member_upgrades_to_x509_in_place(clients: Clients, ca: Ca) -> None:
    """A member already in a group sets a chain naming the same identity; its next commit
    carries it, and the other member accepts it as a valid successor."""
    mixed = {"credential_validator": ca.validator(accept_basic=True)}
    alice = clients.create("alice", **mixed)
    bob = clients.create("bob", **mixed)
    alice.create_group(GID)
    _, welcome = alice.add_members(GID, [bob.generate_key_package()])
    bob.join(welcome)
    bob.set_credential(ca.issue("bob", bob.signature_key()))
    alice.process(GID, bob.update_keys(GID))
    (_, member) = alice.roster(GID)
    assert member.credential.startswith(X509_CREDENTIAL_TYPE)
    assert member.identity == san("bob").encode()


def test_mls_rs_refuses_x509_credentials(clients: Clients, ca: Ca) -> None:
    """The mls-rs binding has basic credentials only: one clear Unsupported."""
    pytest.importorskip("mls_rs_uniffi")
    rs = clients.create("rs", engine="mls-rs")
    assert len(rs.signature_key()) == 32
    with pytest.raises(Unsupported, match=r"X\.509"):
        rs.set_credential(ca.issue("rs", rs.signature_key()))
    with pytest.raises(Unsupported, match=r"X\.509"):
        clients.create("rs2", engine="mls-rs", credential=ca.credential("rs2"))


def test_a_credential_whose_flush_failed_is_durable_before_it_is_sent(
    clients: Clients, ca: Ca, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed vault write under set_credential is retried before any key package leaves.

    The key package that first carries the chain is returned only once the chain is in the
    vault: reopened, the client is still its certificate.
    """
    bob = clients.create("bob", credential_validator=ca.validator())
    chain = ca.issue("bob", bob.signature_key())

    def failing_flush() -> None:
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(bob._drainer, "flush", failing_flush)
        with pytest.raises(OSError, match="disk full"):
            bob.set_credential(chain)
    assert bob.pending_events > 0
    key_package = bob.generate_key_package()  # the disk is back: everything is flushed first
    assert bob.pending_events == 0
    bob = clients.reopen(bob, "bob", credential_validator=ca.validator())
    assert bob.identity == san("bob").encode()
    alice = clients.create(
        "alice", credential=ca.credential("alice"), credential_validator=ca.validator()
    )
    alice.create_group(GID)
    _, welcome = alice.add_members(GID, [key_package])
    assert bob.join(welcome) == GID
    assert alice.roster(GID)[1].credential.startswith(X509_CREDENTIAL_TYPE)
