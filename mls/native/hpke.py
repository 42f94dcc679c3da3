"""HPKE base mode (RFC 9180) composed from ``cryptography`` primitives.

``cryptography.hazmat.primitives.hpke`` (v48) has no X448 KEM, no ``DeriveKeyPair`` and no way to
inject the ephemeral key, all of which MLS needs (DeriveKeyPair for path secrets and the
external key, deterministic encapsulation for reproducible tests). So this module builds the
RFC 9180 labeled KDF, DHKEM and key schedule on top of cryptography's HMAC, HKDFExpand, ECDH,
X25519/X448 and AEAD classes. No primitive is implemented here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidTag as _CryptoInvalidTag
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x448, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from .errors import AuthenticationError, CryptoError

HashName = Literal["sha256", "sha384", "sha512"]
KemCurve = Literal["x25519", "x448", "p256", "p384", "p521"]
AeadName = Literal["aes128gcm", "aes256gcm", "chacha20poly1305"]

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_KDF_IDS: dict[str, int] = {"sha256": 0x0001, "sha384": 0x0002, "sha512": 0x0003}
_AEAD_PARAMS: dict[str, tuple[int, int, int]] = {  # id, Nk, Nn
    "aes128gcm": (0x0001, 16, 12),
    "aes256gcm": (0x0002, 32, 12),
    "chacha20poly1305": (0x0003, 32, 12),
}


def hash_algorithm(name: str) -> hashes.HashAlgorithm:
    """Instantiate the cryptography hash object for ``name``."""
    return _HASHES[name]()


def hash_bytes(name: str, data: bytes) -> bytes:
    """One-shot hash."""
    h = hashes.Hash(hash_algorithm(name))
    h.update(data)
    return h.finalize()


def hmac_bytes(name: str, key: bytes, data: bytes) -> bytes:
    """One-shot HMAC."""
    mac = hmac.HMAC(key, hash_algorithm(name))
    mac.update(data)
    return mac.finalize()


def kdf_extract(name: str, salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869): HMAC keyed with the salt."""
    return hmac_bytes(name, salt, ikm)


def kdf_expand(name: str, prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869) via cryptography's HKDFExpand."""
    try:
        return HKDFExpand(hash_algorithm(name), length, info).derive(prk)
    except ValueError as exc:
        raise CryptoError(f"HKDF-Expand failed: {exc}") from exc


def aead_seal(aead: str, key: bytes, nonce: bytes, aad: bytes, pt: bytes) -> bytes:
    """AEAD encryption with the named algorithm."""
    try:
        if aead == "chacha20poly1305":
            return ChaCha20Poly1305(key).encrypt(nonce, pt, aad)
        return AESGCM(key).encrypt(nonce, pt, aad)
    except (ValueError, OverflowError) as exc:
        raise CryptoError(f"AEAD seal failed: {exc}") from exc


def aead_open(aead: str, key: bytes, nonce: bytes, aad: bytes, ct: bytes) -> bytes:
    """AEAD decryption; a bad tag raises :class:`AuthenticationError`."""
    try:
        if aead == "chacha20poly1305":
            return ChaCha20Poly1305(key).decrypt(nonce, ct, aad)
        return AESGCM(key).decrypt(nonce, ct, aad)
    except _CryptoInvalidTag as exc:
        raise AuthenticationError("AEAD authentication failed") from exc
    except (ValueError, OverflowError) as exc:
        raise CryptoError(f"AEAD open failed: {exc}") from exc


def aead_key_size(aead: str) -> int:
    """Nk of the AEAD."""
    return _AEAD_PARAMS[aead][1]


def aead_nonce_size(aead: str) -> int:
    """Nn of the AEAD."""
    return _AEAD_PARAMS[aead][2]


@dataclass(frozen=True, slots=True)
class _KemParams:
    kem_id: int
    hash_name: HashName
    n_secret: int
    n_sk: int
    bitmask: int


_KEMS: dict[str, _KemParams] = {
    "p256": _KemParams(0x0010, "sha256", 32, 32, 0xFF),
    "p384": _KemParams(0x0011, "sha384", 48, 48, 0xFF),
    "p521": _KemParams(0x0012, "sha512", 64, 66, 0x01),
    "x25519": _KemParams(0x0020, "sha256", 32, 32, 0),
    "x448": _KemParams(0x0021, "sha512", 64, 56, 0),
}
_CURVES: dict[str, ec.EllipticCurve] = {
    "p256": ec.SECP256R1(),
    "p384": ec.SECP384R1(),
    "p521": ec.SECP521R1(),
}
_ORDERS: dict[str, int] = {
    "p256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "p384": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196AC"
        "CC52973",
        16,
    ),
    "p521": int(
        "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA"
        "51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}


@dataclass(frozen=True, slots=True)
class Hpke:
    """One HPKE configuration (KEM, KDF, AEAD) in base mode, keys as serialized bytes."""

    kem: KemCurve
    kdf: HashName
    aead: AeadName

    # -- labeled KDF -------------------------------------------------------------------------

    @property
    def _kem(self) -> _KemParams:
        return _KEMS[self.kem]

    def _kem_suite_id(self) -> bytes:
        return b"KEM" + self._kem.kem_id.to_bytes(2, "big")

    def _hpke_suite_id(self) -> bytes:
        return (
            b"HPKE"
            + self._kem.kem_id.to_bytes(2, "big")
            + _KDF_IDS[self.kdf].to_bytes(2, "big")
            + _AEAD_PARAMS[self.aead][0].to_bytes(2, "big")
        )

    @staticmethod
    def _labeled_extract(h: str, suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
        return kdf_extract(h, salt, b"HPKE-v1" + suite + label + ikm)

    @staticmethod
    def _labeled_expand(
        h: str, suite: bytes, prk: bytes, label: bytes, info: bytes, length: int
    ) -> bytes:
        labeled = length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info
        return kdf_expand(h, prk, labeled, length)

    # -- keys --------------------------------------------------------------------------------

    @property
    def public_key_size(self) -> int:
        """Npk (also Nenc) of the KEM."""
        return {"x25519": 32, "x448": 56, "p256": 65, "p384": 97, "p521": 133}[self.kem]

    @property
    def private_key_size(self) -> int:
        """Nsk of the KEM."""
        return self._kem.n_sk

    def derive_key_pair(self, ikm: bytes) -> tuple[bytes, bytes]:
        """RFC 9180 DeriveKeyPair: deterministic (private, public) key bytes from ``ikm``."""
        k = self._kem
        suite = self._kem_suite_id()
        prk = self._labeled_extract(k.hash_name, suite, b"", b"dkp_prk", ikm)
        if self.kem in ("x25519", "x448"):
            sk = self._labeled_expand(k.hash_name, suite, prk, b"sk", b"", k.n_sk)
            return sk, self.public_from_private(sk)
        order = _ORDERS[self.kem]
        for counter in range(256):
            cand = bytearray(
                self._labeled_expand(
                    k.hash_name, suite, prk, b"candidate", bytes([counter]), k.n_sk
                )
            )
            cand[0] &= k.bitmask
            scalar = int.from_bytes(cand, "big")
            if 0 < scalar < order:
                sk = bytes(cand)
                return sk, self.public_from_private(sk)
        raise CryptoError("DeriveKeyPair: no valid candidate")

    def generate_key_pair(self) -> tuple[bytes, bytes]:
        """Fresh random key pair (DeriveKeyPair over OS randomness)."""
        return self.derive_key_pair(os.urandom(self._kem.n_sk))

    def _load_private(
        self, sk: bytes
    ) -> x25519.X25519PrivateKey | x448.X448PrivateKey | ec.EllipticCurvePrivateKey:
        try:
            if self.kem == "x25519":
                return x25519.X25519PrivateKey.from_private_bytes(sk)
            if self.kem == "x448":
                return x448.X448PrivateKey.from_private_bytes(sk)
            if not 0 < len(sk) <= self._kem.n_sk:
                raise ValueError("wrong private key length")
            return ec.derive_private_key(int.from_bytes(sk, "big"), _CURVES[self.kem])
        except ValueError as exc:
            raise CryptoError(f"invalid HPKE private key: {exc}") from exc

    def _load_public(
        self, pk: bytes
    ) -> x25519.X25519PublicKey | x448.X448PublicKey | ec.EllipticCurvePublicKey:
        try:
            if self.kem == "x25519":
                return x25519.X25519PublicKey.from_public_bytes(pk)
            if self.kem == "x448":
                return x448.X448PublicKey.from_public_bytes(pk)
            return ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[self.kem], pk)
        except ValueError as exc:
            raise CryptoError(f"invalid HPKE public key: {exc}") from exc

    def public_from_private(self, sk: bytes) -> bytes:
        """SerializePublicKey(pk(sk))."""
        key = self._load_private(sk)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        return key.public_key().public_bytes_raw()

    def _dh(self, sk: bytes, pk: bytes) -> bytes:
        priv = self._load_private(sk)
        pub = self._load_public(pk)
        try:
            if isinstance(priv, x25519.X25519PrivateKey) and isinstance(
                pub, x25519.X25519PublicKey
            ):
                return priv.exchange(pub)
            if isinstance(priv, x448.X448PrivateKey) and isinstance(pub, x448.X448PublicKey):
                return priv.exchange(pub)
            if isinstance(priv, ec.EllipticCurvePrivateKey) and isinstance(
                pub, ec.EllipticCurvePublicKey
            ):
                return priv.exchange(ec.ECDH(), pub)
        except ValueError as exc:
            raise CryptoError(f"DH failed: {exc}") from exc
        raise CryptoError("mismatched DH key types")

    # -- DHKEM -------------------------------------------------------------------------------

    def _extract_and_expand(self, dh: bytes, kem_context: bytes) -> bytes:
        k = self._kem
        suite = self._kem_suite_id()
        prk = self._labeled_extract(k.hash_name, suite, b"", b"eae_prk", dh)
        return self._labeled_expand(
            k.hash_name, suite, prk, b"shared_secret", kem_context, k.n_secret
        )

    def encap(self, pk_r: bytes, ikm_e: bytes | None = None) -> tuple[bytes, bytes]:
        """Encap: (shared_secret, enc). ``ikm_e`` pins the ephemeral key (for tests)."""
        sk_e, pk_e = self.derive_key_pair(ikm_e) if ikm_e is not None else self.generate_key_pair()
        dh = self._dh(sk_e, pk_r)
        return self._extract_and_expand(dh, pk_e + pk_r), pk_e

    def decap(self, enc: bytes, sk_r: bytes) -> bytes:
        """Decap: shared secret from the encapsulation and the recipient private key."""
        dh = self._dh(sk_r, enc)
        return self._extract_and_expand(dh, enc + self.public_from_private(sk_r))

    # -- key schedule and single-shot API ----------------------------------------------------

    def _key_schedule(self, shared_secret: bytes, info: bytes) -> tuple[bytes, bytes]:
        suite = self._hpke_suite_id()
        h = self.kdf
        psk_id_hash = self._labeled_extract(h, suite, b"", b"psk_id_hash", b"")
        info_hash = _info_hash(self, h, suite, info)
        context = b"\x00" + psk_id_hash + info_hash
        secret = self._labeled_extract(h, suite, shared_secret, b"secret", b"")
        key = self._labeled_expand(h, suite, secret, b"key", context, aead_key_size(self.aead))
        nonce = self._labeled_expand(
            h, suite, secret, b"base_nonce", context, aead_nonce_size(self.aead)
        )
        return key, nonce

    def seal_base(
        self, pk_r: bytes, info: bytes, aad: bytes, pt: bytes, ikm_e: bytes | None = None
    ) -> tuple[bytes, bytes]:
        """SealBase: returns ``(enc, ciphertext)``."""
        shared, enc = self.encap(pk_r, ikm_e)
        key, nonce = self._key_schedule(shared, info)
        return enc, aead_seal(self.aead, key, nonce, aad, pt)

    def open_base(self, enc: bytes, sk_r: bytes, info: bytes, aad: bytes, ct: bytes) -> bytes:
        """OpenBase: plaintext, or :class:`AuthenticationError`."""
        shared = self.decap(enc, sk_r)
        key, nonce = self._key_schedule(shared, info)
        return aead_open(self.aead, key, nonce, aad, ct)

    # -- secret export (RFC 9180 §5.3), used by MLS external initialization ------------------

    def _exporter_secret(self, shared_secret: bytes, info: bytes) -> bytes:
        suite = self._hpke_suite_id()
        h = self.kdf
        psk_id_hash = self._labeled_extract(h, suite, b"", b"psk_id_hash", b"")
        info_hash = self._labeled_extract(h, suite, b"", b"info_hash", info)
        context = b"\x00" + psk_id_hash + info_hash
        secret = self._labeled_extract(h, suite, shared_secret, b"secret", b"")
        size = hash_algorithm(h).digest_size
        return self._labeled_expand(h, suite, secret, b"exp", context, size)

    def _export(self, exporter_secret: bytes, exporter_context: bytes, length: int) -> bytes:
        suite = self._hpke_suite_id()
        return self._labeled_expand(
            self.kdf, suite, exporter_secret, b"sec", exporter_context, length
        )

    def export_base_sender(
        self, pk_r: bytes, info: bytes, exporter_context: bytes, length: int
    ) -> tuple[bytes, bytes]:
        """SetupBaseS then Export: returns ``(enc, exported secret)``."""
        shared, enc = self.encap(pk_r)
        return enc, self._export(self._exporter_secret(shared, info), exporter_context, length)

    def export_base_receiver(
        self, enc: bytes, sk_r: bytes, info: bytes, exporter_context: bytes, length: int
    ) -> bytes:
        """SetupBaseR then Export: the secret the sender exported for ``enc``."""
        shared = self.decap(enc, sk_r)
        return self._export(self._exporter_secret(shared, info), exporter_context, length)


#: The last (suite, info, info_hash) computed.  A Welcome seals its GroupSecrets to every
#: joiner with the same info (the encrypted GroupInfo, which carries the whole tree): hashing
#: it once instead of once per joiner keeps adding n members O(n), not O(n²).  Public data.
_last_info_hash: tuple[bytes, bytes, bytes] = (b"", b"", b"")


def _info_hash(hpke: Hpke, h: str, suite: bytes, info: bytes) -> bytes:
    global _last_info_hash
    last_suite, last_info, last_hash = _last_info_hash
    if last_suite == suite + h.encode() and last_info == info and last_hash:
        return last_hash
    out = hpke._labeled_extract(h, suite, b"", b"info_hash", info)
    if len(info) > 4096:  # only worth remembering for large infos
        _last_info_hash = (suite + h.encode(), info, out)
    return out
