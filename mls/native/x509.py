"""X.509 credentials (RFC 9420 §5.3): chains checked against the application's trust anchors.

An X.509 credential carries a certificate chain, leaf first, each certificate certified by the
next (DER, as in the credential's ``certificates``).  :class:`X509CredentialValidator` accepts
such a credential when

* every certificate parses, and the chain verifies with ``cryptography.x509.verification``
  (path building, validity period, basic constraints, key usage, name constraints...) to one
  of the trust anchors the application configured, at the validator's clock;
* the path the verifier built starts with the certificates in the order the credential lists
  them (RFC 9420 §5.3.1: each entry certifies the previous one), so a credential cannot pass
  with a shuffled or padded chain;
* the leaf certificate's public key is the leaf node's signature key (encoded as MLS encodes
  signature keys: raw for EdDSA, an uncompressed point for ECDSA) — otherwise anyone holding a
  copy of a certificate could sign as its subject.

It satisfies the engine's credential-validator protocol structurally (``identity``,
``validate``, ``valid_successor``, ``allow_duplicate_identities``), so it can be handed to the
engine in place of the default basic-credential policy; it imports nothing of that protocol.

Limits of the verifier (``cryptography``'s web-PKI profile): certificate authorities must sign
with RSA or ECDSA keys — a chain whose CA key is Ed25519 or Ed448 is refused, though the leaf's
own key may be EdDSA (as MLS cipher suites 1 and 3 need); the leaf must carry a
subjectAltName extension, and an extendedKeyUsage extension, when present, must allow client
authentication.  Revocation (CRLs, OCSP) is not checked.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509 import verification

from .errors import InvalidCredential, MlsError
from .leaf_node import Credential, CredentialType

__all__ = ["MAX_CHAIN_CERTIFICATES", "InvalidCredential", "X509CredentialValidator", "san_identity"]

#: Certificates one credential may carry.  Real chains have two to four; the bound keeps a
#: hostile credential from making every member parse and path-build over thousands.
MAX_CHAIN_CERTIFICATES = 16


def san_identity(certificate: x509.Certificate) -> bytes:
    """The default application identity of a leaf certificate: its first subjectAltName.

    URIs are preferred (Wire's client ids are ``wireapp://`` URIs), then DNS names, then
    e-mail addresses; the value is returned UTF-8 encoded.

    Raises:
        InvalidCredential: the certificate names no such subject.
    """
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError) as exc:
        raise InvalidCredential("the leaf certificate has no subjectAltName") from exc
    for kind in (x509.UniformResourceIdentifier, x509.DNSName, x509.RFC822Name):
        values = names.get_values_for_type(kind)
        if values:
            return values[0].encode("utf-8")
    raise InvalidCredential("the leaf certificate's subjectAltName has no URI, DNS or e-mail name")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _mls_signature_key(certificate: x509.Certificate) -> bytes:
    """The certificate's public key encoded as an MLS SignaturePublicKey."""
    try:
        key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidCredential("the leaf certificate's public key cannot be read") from exc
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    raise InvalidCredential("the leaf certificate's key type is not an MLS signature key type")


class X509CredentialValidator:
    """Accept X.509 credentials whose chain leads to a configured trust anchor.

    Args:
        trust_anchors: root certificates the application trusts (at least one).
        identity_of: maps a verified leaf certificate to the application identity it names
            (:func:`san_identity` by default); members compare identities through it.
        accept_basic: also accept basic credentials (identity: their identity bytes), for
            groups that mix both types.  Off by default: an X.509 deployment usually must not
            let a self-asserted identity in.
        allow_duplicates: let two leaves of one group name the same identity.
        max_chain_depth: the longest path the verifier will build (its default when None).
        clock: the time certificates are checked at (tests inject it).

    Raises:
        ValueError: no trust anchor was given.
    """

    __slots__ = ("_accept_basic", "_allow_duplicates", "_anchors", "_clock", "_depth", "_identity")

    def __init__(
        self,
        trust_anchors: Iterable[x509.Certificate],
        *,
        identity_of: Callable[[x509.Certificate], bytes] = san_identity,
        accept_basic: bool = False,
        allow_duplicates: bool = False,
        max_chain_depth: int | None = None,
        clock: Callable[[], datetime.datetime] = _utcnow,
    ) -> None:
        anchors = list(trust_anchors)
        if not anchors:
            raise ValueError("an X.509 credential validator needs at least one trust anchor")
        if not all(isinstance(a, x509.Certificate) for a in anchors):
            raise TypeError("trust anchors must be cryptography.x509.Certificate objects")
        self._anchors = verification.Store(anchors)
        self._identity = identity_of
        self._accept_basic = accept_basic
        self._allow_duplicates = allow_duplicates
        self._depth = max_chain_depth
        self._clock = clock

    # ------------------------------------------------------------------ the four questions

    def identity(self, credential: Credential) -> bytes:
        """The identity the credential names: ``identity_of(leaf certificate)``, or basic bytes.

        Raises:
            InvalidCredential: the chain is empty or its leaf cannot be parsed or named.
        """
        if credential.credential_type == CredentialType.BASIC:
            return credential.identity
        if credential.credential_type != CredentialType.X509:
            raise InvalidCredential(f"credential type {credential.credential_type} is unknown")
        return self._name(self._parse(credential.certificates)[0])

    def validate(self, credential: Credential, signature_key: bytes) -> None:
        """Raise :class:`InvalidCredential` unless this credential may be a member.

        Raises:
            InvalidCredential: with the reason (type refused, unparsable certificate, chain not
                verified to a trust anchor, chain out of order, leaf key not the signature key).
        """
        if not signature_key:
            raise InvalidCredential("a member needs a signature key")
        if credential.credential_type == CredentialType.BASIC:
            if not self._accept_basic:
                raise InvalidCredential("basic credentials are not accepted by this validator")
            if not credential.identity:
                raise InvalidCredential("a basic credential must name a non-empty identity")
            return
        if credential.credential_type != CredentialType.X509:
            raise InvalidCredential(f"credential type {credential.credential_type} is unknown")
        chain = self._parse(credential.certificates)
        if _mls_signature_key(chain[0]) != signature_key:
            raise InvalidCredential(
                "the leaf certificate's public key is not the leaf node's signature key"
            )
        self._verify(chain)
        self._name(chain[0])  # the leaf must name someone

    def valid_successor(self, old: Credential, new: Credential) -> bool:
        """The same identity, and never a step down from X.509 to a basic credential.

        A certificate may be renewed (new key, new validity) and a basic credential may be
        upgraded to an X.509 one naming the same identity; anything else is refused.
        """
        if (
            old.credential_type == CredentialType.X509
            and new.credential_type != old.credential_type
        ):
            return False
        try:
            return self.identity(old) == self.identity(new)
        except MlsError:
            return False

    def allow_duplicate_identities(self) -> bool:
        """As configured; ``False`` by default."""
        return self._allow_duplicates

    # ------------------------------------------------------------------ chain checks

    def _name(self, leaf: x509.Certificate) -> bytes:
        """``identity_of(leaf)``; a failure of the application's function is a refusal too."""
        try:
            identity = self._identity(leaf)
        except MlsError:
            raise
        except Exception as exc:
            raise InvalidCredential(f"the leaf certificate names no identity: {exc}") from exc
        if not isinstance(identity, bytes) or not identity:
            raise InvalidCredential("the leaf certificate names no identity")
        return identity

    @staticmethod
    def _parse(certificates: Sequence[bytes]) -> list[x509.Certificate]:
        if not certificates:
            raise InvalidCredential("an X.509 credential must carry at least one certificate")
        if len(certificates) > MAX_CHAIN_CERTIFICATES:
            raise InvalidCredential(
                f"an X.509 credential carries more than {MAX_CHAIN_CERTIFICATES} certificates"
            )
        try:
            return [x509.load_der_x509_certificate(der) for der in certificates]
        except ValueError as exc:
            raise InvalidCredential("an X.509 credential carries a malformed certificate") from exc

    def _verify(self, chain: list[x509.Certificate]) -> None:
        builder = verification.PolicyBuilder().store(self._anchors).time(self._clock())
        if self._depth is not None:
            builder = builder.max_chain_depth(self._depth)
        verifier = builder.build_client_verifier()
        try:
            verified = verifier.verify(chain[0], chain[1:])
        except verification.VerificationError as exc:
            raise InvalidCredential(f"the certificate chain does not verify: {exc}") from exc
        # The verifier builds its own path from the pool; RFC 9420 wants the credential's list
        # itself to be that path (each certificate certified by the next), anchor optional.
        if verified.chain[: len(chain)] != chain:
            raise InvalidCredential(
                "the credential's certificates are not a chain in order (leaf first, each "
                "certified by the next)"
            )
