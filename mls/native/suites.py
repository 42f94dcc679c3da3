"""MLS cipher suites (RFC 9420 §5.1, §17.1) and the labeled crypto helpers built on them.

Keys cross this API as serialized bytes (the formats of the MLS test vectors), so any secret
can be persisted as-is and no ``cryptography`` key object leaks into engine state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import constant_time, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519

from .codec import Writer
from .errors import AuthenticationError, CryptoError, InvalidSignature, UnsupportedCipherSuite
from .hpke import (
    AeadName,
    HashName,
    Hpke,
    KemCurve,
    aead_key_size,
    aead_nonce_size,
    aead_open,
    aead_seal,
    hash_algorithm,
    hash_bytes,
    hmac_bytes,
    kdf_expand,
    kdf_extract,
)

SigName = Literal["ed25519", "ed448", "p256", "p384", "p521"]

_SIG_CURVES: dict[str, tuple[ec.EllipticCurve, HashName, int]] = {
    "p256": (ec.SECP256R1(), "sha256", 32),
    "p384": (ec.SECP384R1(), "sha384", 48),
    "p521": (ec.SECP521R1(), "sha512", 66),
}


@dataclass(frozen=True, slots=True)
class CipherSuite:
    """An MLS cipher suite: KEM, AEAD, hash/KDF and signature scheme."""

    suite_id: int
    name: str
    kem: KemCurve
    aead: AeadName
    hash_name: HashName
    sig: SigName

    # -- primitives --------------------------------------------------------------------------

    @property
    def hpke(self) -> Hpke:
        """The HPKE configuration of the suite (its KDF is the suite hash)."""
        return Hpke(self.kem, self.hash_name, self.aead)

    @property
    def hash_size(self) -> int:
        """Nh: output size of the hash / KDF."""
        return hash_algorithm(self.hash_name).digest_size

    @property
    def aead_key_size(self) -> int:
        """Nk of the AEAD."""
        return aead_key_size(self.aead)

    @property
    def aead_nonce_size(self) -> int:
        """Nn of the AEAD."""
        return aead_nonce_size(self.aead)

    def hash(self, data: bytes) -> bytes:
        """Hash with the suite hash."""
        return hash_bytes(self.hash_name, data)

    def mac(self, key: bytes, data: bytes) -> bytes:
        """MAC = HMAC with the suite hash."""
        return hmac_bytes(self.hash_name, key, data)

    def verify_mac(self, key: bytes, data: bytes, tag: bytes) -> None:
        """Constant-time MAC check, raising :class:`AuthenticationError`."""
        if not constant_time.bytes_eq(self.mac(key, data), tag):
            raise AuthenticationError("MAC verification failed")

    def extract(self, salt: bytes, ikm: bytes) -> bytes:
        """KDF.Extract."""
        return kdf_extract(self.hash_name, salt, ikm)

    def expand(self, prk: bytes, info: bytes, length: int) -> bytes:
        """KDF.Expand."""
        return kdf_expand(self.hash_name, prk, info, length)

    def aead_seal(self, key: bytes, nonce: bytes, aad: bytes, pt: bytes) -> bytes:
        """AEAD.Seal."""
        return aead_seal(self.aead, key, nonce, aad, pt)

    def aead_open(self, key: bytes, nonce: bytes, aad: bytes, ct: bytes) -> bytes:
        """AEAD.Open, raising :class:`AuthenticationError` on a bad tag."""
        return aead_open(self.aead, key, nonce, aad, ct)

    # -- MLS labeled functions (RFC 9420 §5.1-§5.2, §8) --------------------------------------

    def expand_with_label(self, secret: bytes, label: str, context: bytes, length: int) -> bytes:
        """ExpandWithLabel: KDF.Expand over the KDFLabel struct."""
        w = Writer()
        w.u16(length)
        w.opaque(b"MLS 1.0 " + label.encode())
        w.opaque(context)
        return self.expand(secret, w.getvalue(), length)

    def derive_secret(self, secret: bytes, label: str) -> bytes:
        """DeriveSecret = ExpandWithLabel(secret, label, "", Nh)."""
        return self.expand_with_label(secret, label, b"", self.hash_size)

    def derive_tree_secret(self, secret: bytes, label: str, generation: int, length: int) -> bytes:
        """DeriveTreeSecret = ExpandWithLabel(secret, label, uint32 generation, length)."""
        return self.expand_with_label(secret, label, generation.to_bytes(4, "big"), length)

    def ref_hash(self, label: bytes, value: bytes) -> bytes:
        """RefHash(label, value) = Hash(RefHashInput)."""
        w = Writer()
        w.opaque(label)
        w.opaque(value)
        return self.hash(w.getvalue())

    def make_key_package_ref(self, key_package: bytes) -> bytes:
        """KeyPackageRef of an encoded KeyPackage."""
        return self.ref_hash(b"MLS 1.0 KeyPackage Reference", key_package)

    def make_proposal_ref(self, authenticated_content: bytes) -> bytes:
        """ProposalRef of an encoded AuthenticatedContent carrying a proposal."""
        return self.ref_hash(b"MLS 1.0 Proposal Reference", authenticated_content)

    # -- signatures --------------------------------------------------------------------------

    @staticmethod
    def _labeled(label: str, content: bytes) -> bytes:
        w = Writer()
        w.opaque(b"MLS 1.0 " + label.encode())
        w.opaque(content)
        return w.getvalue()

    def sign(self, private_key: bytes, message: bytes) -> bytes:
        """Signature.Sign with a serialized private key."""
        try:
            if self.sig == "ed25519":
                return ed25519.Ed25519PrivateKey.from_private_bytes(private_key).sign(message)
            if self.sig == "ed448":
                return ed448.Ed448PrivateKey.from_private_bytes(private_key).sign(message)
            curve, h, size = _SIG_CURVES[self.sig]
            if not 0 < len(private_key) <= size:
                raise ValueError("wrong private key length")
            key = ec.derive_private_key(int.from_bytes(private_key, "big"), curve)
            return key.sign(message, ec.ECDSA(hash_algorithm(h)))
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CryptoError(f"invalid signature private key: {exc}") from exc

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> None:
        """Signature.Verify, raising :class:`InvalidSignature`."""
        try:
            if self.sig == "ed25519":
                ed25519.Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
            elif self.sig == "ed448":
                ed448.Ed448PublicKey.from_public_bytes(public_key).verify(signature, message)
            else:
                curve, h, _ = _SIG_CURVES[self.sig]
                key = ec.EllipticCurvePublicKey.from_encoded_point(curve, public_key)
                key.verify(signature, message, ec.ECDSA(hash_algorithm(h)))
        except _CryptoInvalidSignature as exc:
            raise InvalidSignature("signature verification failed") from exc
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise InvalidSignature(f"invalid signature public key: {exc}") from exc

    def signature_public_key(self, private_key: bytes) -> bytes:
        """Public key bytes matching a serialized signature private key."""
        try:
            if self.sig == "ed25519":
                k = ed25519.Ed25519PrivateKey.from_private_bytes(private_key)
                return k.public_key().public_bytes_raw()
            if self.sig == "ed448":
                return (
                    ed448.Ed448PrivateKey.from_private_bytes(private_key)
                    .public_key()
                    .public_bytes_raw()
                )
            curve, _, _ = _SIG_CURVES[self.sig]
            key = ec.derive_private_key(int.from_bytes(private_key, "big"), curve)
            return key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        except ValueError as exc:
            raise CryptoError(f"invalid signature private key: {exc}") from exc

    def generate_signature_key_pair(self) -> tuple[bytes, bytes]:
        """Fresh signature key pair as serialized (private, public) bytes."""
        if self.sig == "ed25519":
            priv = ed25519.Ed25519PrivateKey.generate().private_bytes_raw()
        elif self.sig == "ed448":
            priv = ed448.Ed448PrivateKey.generate().private_bytes_raw()
        else:
            curve, _, size = _SIG_CURVES[self.sig]
            scalar = ec.generate_private_key(curve).private_numbers().private_value
            priv = scalar.to_bytes(size, "big")
        return priv, self.signature_public_key(priv)

    def sign_with_label(self, private_key: bytes, label: str, content: bytes) -> bytes:
        """SignWithLabel(SignatureKey, Label, Content)."""
        return self.sign(private_key, self._labeled(label, content))

    def verify_with_label(
        self, public_key: bytes, label: str, content: bytes, signature: bytes
    ) -> None:
        """VerifyWithLabel; raises :class:`InvalidSignature` on failure."""
        self.verify(public_key, self._labeled(label, content), signature)

    # -- public-key encryption ---------------------------------------------------------------

    def encrypt_with_label(
        self,
        public_key: bytes,
        label: str,
        context: bytes,
        plaintext: bytes,
        ikm_e: bytes | None = None,
    ) -> tuple[bytes, bytes]:
        """EncryptWithLabel: returns ``(kem_output, ciphertext)``."""
        return self.hpke.seal_base(public_key, self._labeled(label, context), b"", plaintext, ikm_e)

    def decrypt_with_label(
        self, private_key: bytes, label: str, context: bytes, kem_output: bytes, ct: bytes
    ) -> bytes:
        """DecryptWithLabel; raises :class:`AuthenticationError` on a bad tag."""
        return self.hpke.open_base(kem_output, private_key, self._labeled(label, context), b"", ct)

    def derive_key_pair(self, ikm: bytes) -> tuple[bytes, bytes]:
        """KEM.DeriveKeyPair: (private, public) HPKE key bytes."""
        return self.hpke.derive_key_pair(ikm)


SUITES: dict[int, CipherSuite] = {
    s.suite_id: s
    for s in (
        CipherSuite(
            0x0001,
            "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519",
            "x25519",
            "aes128gcm",
            "sha256",
            "ed25519",
        ),
        CipherSuite(
            0x0002,
            "MLS_128_DHKEMP256_AES128GCM_SHA256_P256",
            "p256",
            "aes128gcm",
            "sha256",
            "p256",
        ),
        CipherSuite(
            0x0003,
            "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519",
            "x25519",
            "chacha20poly1305",
            "sha256",
            "ed25519",
        ),
        CipherSuite(
            0x0004,
            "MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448",
            "x448",
            "aes256gcm",
            "sha512",
            "ed448",
        ),
        CipherSuite(
            0x0005,
            "MLS_256_DHKEMP521_AES256GCM_SHA512_P521",
            "p521",
            "aes256gcm",
            "sha512",
            "p521",
        ),
        CipherSuite(
            0x0006,
            "MLS_256_DHKEMX448_CHACHA20POLY1305_SHA512_Ed448",
            "x448",
            "chacha20poly1305",
            "sha512",
            "ed448",
        ),
        CipherSuite(
            0x0007,
            "MLS_256_DHKEMP384_AES256GCM_SHA384_P384",
            "p384",
            "aes256gcm",
            "sha384",
            "p384",
        ),
    )
}


def get_suite(suite_id: int) -> CipherSuite:
    """Look up a supported cipher suite, raising :class:`UnsupportedCipherSuite`."""
    try:
        return SUITES[suite_id]
    except KeyError:
        raise UnsupportedCipherSuite(f"cipher suite 0x{suite_id:04x} not supported") from None
