"""GroupInfo, GroupSecrets and Welcome (RFC 9420 §12.4.3)."""

from __future__ import annotations

from dataclasses import dataclass

from .codec import Reader, Struct, Writer, decode_exact
from .errors import InvalidMessage
from .group_context import GroupContext
from .leaf_node import Extension, read_extensions, write_extensions
from .proposals import HPKECiphertext, PreSharedKeyID
from .suites import CipherSuite


def _write_struct(w: Writer, s: Struct) -> None:
    s.encode(w)


@dataclass(frozen=True, slots=True)
class GroupInfo(Struct):
    """Signed public state a joiner needs."""

    group_context: GroupContext
    extensions: tuple[Extension, ...]
    confirmation_tag: bytes
    signer: int
    signature: bytes

    def tbs(self) -> bytes:
        """GroupInfoTBS."""
        w = Writer()
        self.group_context.encode(w)
        write_extensions(w, self.extensions)
        w.opaque(self.confirmation_tag)
        w.u32(self.signer)
        return w.getvalue()

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.raw(self.tbs())
        w.opaque(self.signature)

    @classmethod
    def decode(cls, r: Reader) -> GroupInfo:
        """Decode."""
        return cls(GroupContext.decode(r), read_extensions(r), r.opaque(), r.u32(), r.opaque())

    def verify(self, cs: CipherSuite, signer_key: bytes) -> None:
        """Check the signer's signature; raises :class:`InvalidSignature`."""
        cs.verify_with_label(signer_key, "GroupInfoTBS", self.tbs(), self.signature)


@dataclass(frozen=True, slots=True, repr=False)
class GroupSecrets(Struct):
    """Secrets a new member receives: joiner secret, optional path secret, PSK ids."""

    joiner_secret: bytes
    path_secret: bytes | None
    psks: tuple[PreSharedKeyID, ...]

    def __repr__(self) -> str:
        """Never print secrets (the joiner secret opens the group's first epoch)."""
        has_path = self.path_secret is not None
        return f"GroupSecrets(<redacted>, path_secret={has_path}, psks={len(self.psks)})"

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.opaque(self.joiner_secret)
        w.optional(self.path_secret, Writer.opaque)
        w.vector(self.psks, _write_struct)

    @classmethod
    def decode(cls, r: Reader) -> GroupSecrets:
        """Decode."""
        return cls(r.opaque(), r.optional(Reader.opaque), tuple(r.vector(PreSharedKeyID.decode)))


@dataclass(frozen=True, slots=True)
class EncryptedGroupSecrets(Struct):
    """GroupSecrets sealed to one KeyPackage's init key."""

    new_member: bytes
    encrypted_group_secrets: HPKECiphertext

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.opaque(self.new_member)
        self.encrypted_group_secrets.encode(w)

    @classmethod
    def decode(cls, r: Reader) -> EncryptedGroupSecrets:
        """Decode."""
        return cls(r.opaque(), HPKECiphertext.decode(r))


@dataclass(frozen=True, slots=True)
class Welcome(Struct):
    """Invitation: per-joiner encrypted secrets plus the encrypted GroupInfo."""

    cipher_suite: int
    secrets: tuple[EncryptedGroupSecrets, ...]
    encrypted_group_info: bytes

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.u16(self.cipher_suite)
        w.vector(self.secrets, _write_struct)
        w.opaque(self.encrypted_group_info)

    @classmethod
    def decode(cls, r: Reader) -> Welcome:
        """Decode."""
        return cls(r.u16(), tuple(r.vector(EncryptedGroupSecrets.decode)), r.opaque())

    def open_group_secrets(
        self, cs: CipherSuite, key_package_ref: bytes, init_priv: bytes
    ) -> GroupSecrets:
        """Find the entry for ``key_package_ref`` and decrypt it with the init key."""
        for entry in self.secrets:
            if entry.new_member == key_package_ref:
                ct = entry.encrypted_group_secrets
                plain = cs.decrypt_with_label(
                    init_priv, "Welcome", self.encrypted_group_info, ct.kem_output, ct.ciphertext
                )
                return decode_exact(plain, GroupSecrets.decode)
        raise InvalidMessage("Welcome has no entry for this KeyPackage")

    def open_group_info(self, cs: CipherSuite, welcome_secret: bytes) -> GroupInfo:
        """Decrypt the GroupInfo with the welcome key and nonce."""
        key = cs.expand_with_label(welcome_secret, "key", b"", cs.aead_key_size)
        nonce = cs.expand_with_label(welcome_secret, "nonce", b"", cs.aead_nonce_size)
        plain = cs.aead_open(key, nonce, b"", self.encrypted_group_info)
        return decode_exact(plain, GroupInfo.decode)
