"""Key schedule (RFC 9420 §8): epoch secrets, joiner/welcome secrets, PSKs, exporter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from .codec import Reader, Struct, Writer, decode_exact
from .errors import CryptoError
from .proposals import PreSharedKeyID
from .suites import CipherSuite, get_suite

_EPOCH_LABELS = (
    ("sender_data_secret", "sender data"),
    ("encryption_secret", "encryption"),
    ("exporter_secret", "exporter"),
    ("external_secret", "external"),
    ("confirmation_key", "confirm"),
    ("membership_key", "membership"),
    ("resumption_psk", "resumption"),
    ("epoch_authenticator", "authentication"),
)


@dataclass(frozen=True, slots=True, repr=False)
class EpochSecrets(Struct):
    """All secrets of one epoch; the epoch secret itself is not retained."""

    suite_id: int
    joiner_secret: bytes
    welcome_secret: bytes
    sender_data_secret: bytes
    encryption_secret: bytes
    exporter_secret: bytes
    external_secret: bytes
    confirmation_key: bytes
    membership_key: bytes
    resumption_psk: bytes
    epoch_authenticator: bytes
    init_secret: bytes

    def __repr__(self) -> str:
        """Never print secrets."""
        return f"EpochSecrets(suite_id={self.suite_id}, <redacted>)"

    @property
    def suite(self) -> CipherSuite:
        """The cipher suite these secrets belong to."""
        return get_suite(self.suite_id)

    def encode(self, w: Writer) -> None:
        """Serialize for storage."""
        w.u16(self.suite_id)
        for f in fields(self)[1:]:
            w.opaque(getattr(self, f.name))

    @classmethod
    def decode(cls, r: Reader) -> EpochSecrets:
        """Deserialize from storage."""
        suite_id = r.u16()
        return cls(suite_id, *(r.opaque() for _ in fields(cls)[1:]))

    @classmethod
    def from_bytes(cls, data: bytes) -> EpochSecrets:
        """Strict inverse of :meth:`to_bytes`."""
        return decode_exact(data, cls.decode)

    def external_key_pair(self) -> tuple[bytes, bytes]:
        """(external_priv, external_pub) = KEM.DeriveKeyPair(external_secret)."""
        return self.suite.derive_key_pair(self.external_secret)

    def exporter(self, label: str, context: bytes, length: int) -> bytes:
        """MLS-Exporter(Label, Context, Length)."""
        return mls_exporter(self.suite, self.exporter_secret, label, context, length)

    def confirmation_tag(self, confirmed_transcript_hash: bytes) -> bytes:
        """MAC(confirmation_key, confirmed_transcript_hash)."""
        return self.suite.mac(self.confirmation_key, confirmed_transcript_hash)


def zero(cs: CipherSuite) -> bytes:
    """The all-zero Nh-byte vector used for absent commit or PSK secrets."""
    return bytes(cs.hash_size)


def joiner_secret(
    cs: CipherSuite, init_secret: bytes, commit_secret: bytes | None, group_context: bytes
) -> bytes:
    """joiner_secret = ExpandWithLabel(Extract(init_secret, commit_secret), "joiner", GC, Nh)."""
    prk = cs.extract(init_secret, commit_secret if commit_secret is not None else zero(cs))
    return cs.expand_with_label(prk, "joiner", group_context, cs.hash_size)


def welcome_secret(cs: CipherSuite, joiner: bytes, psk_secret: bytes | None) -> bytes:
    """welcome_secret = DeriveSecret(Extract(joiner_secret, psk_secret), "welcome")."""
    member = cs.extract(joiner, psk_secret if psk_secret is not None else zero(cs))
    return cs.derive_secret(member, "welcome")


def epoch_from_joiner(
    cs: CipherSuite, joiner: bytes, psk_secret: bytes | None, group_context: bytes
) -> EpochSecrets:
    """Derive the welcome secret and every epoch secret from the joiner secret."""
    member = cs.extract(joiner, psk_secret if psk_secret is not None else zero(cs))
    welcome = cs.derive_secret(member, "welcome")
    epoch_secret = cs.expand_with_label(member, "epoch", group_context, cs.hash_size)
    derived = {name: cs.derive_secret(epoch_secret, label) for name, label in _EPOCH_LABELS}
    return EpochSecrets(
        suite_id=cs.suite_id,
        joiner_secret=joiner,
        welcome_secret=welcome,
        init_secret=cs.derive_secret(epoch_secret, "init"),
        **derived,
    )


def next_epoch(
    cs: CipherSuite,
    init_secret: bytes,
    commit_secret: bytes | None,
    psk_secret: bytes | None,
    group_context: bytes,
) -> EpochSecrets:
    """Full key schedule step from the previous init secret."""
    joiner = joiner_secret(cs, init_secret, commit_secret, group_context)
    return epoch_from_joiner(cs, joiner, psk_secret, group_context)


def welcome_key_nonce(cs: CipherSuite, welcome_secret: bytes) -> tuple[bytes, bytes]:
    """AEAD key and nonce protecting the Welcome's GroupInfo."""
    key = cs.expand_with_label(welcome_secret, "key", b"", cs.aead_key_size)
    return key, cs.expand_with_label(welcome_secret, "nonce", b"", cs.aead_nonce_size)


def mls_exporter(
    cs: CipherSuite, exporter_secret: bytes, label: str, context: bytes, length: int
) -> bytes:
    """ExpandWithLabel(DeriveSecret(exporter_secret, Label), "exported", Hash(Context), L)."""
    return cs.expand_with_label(
        cs.derive_secret(exporter_secret, label), "exported", cs.hash(context), length
    )


def psk_secret(cs: CipherSuite, psks: Sequence[tuple[PreSharedKeyID, bytes]]) -> bytes:
    """Chain external/resumption PSKs into ``psk_secret`` (RFC 9420 §8.4)."""
    count = len(psks)
    if count > 0xFFFF:
        raise CryptoError("too many PSKs")
    secret = zero(cs)
    for index, (psk_id, psk) in enumerate(psks):
        w = Writer()
        psk_id.encode(w)
        w.u16(index)
        w.u16(count)
        extracted = cs.extract(zero(cs), psk)
        psk_input = cs.expand_with_label(extracted, "derived psk", w.getvalue(), cs.hash_size)
        secret = cs.extract(psk_input, secret)
    return secret
