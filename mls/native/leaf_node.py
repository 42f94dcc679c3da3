"""Credentials, extensions, capabilities and LeafNode (RFC 9420 §5.3, §7.2, §13)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .codec import Reader, Struct, Writer, read_opaque, write_opaque, write_u16
from .errors import DecodeError, EncodeError
from .suites import CipherSuite

PROTOCOL_VERSION_MLS10 = 1


class CredentialType(IntEnum):
    """Registered credential types."""

    BASIC = 1
    X509 = 2


class LeafNodeSource(IntEnum):
    """Why a LeafNode was created."""

    KEY_PACKAGE = 1
    UPDATE = 2
    COMMIT = 3


class ExtensionType(IntEnum):
    """Registered extension types used by the engine."""

    APPLICATION_ID = 1
    RATCHET_TREE = 2
    REQUIRED_CAPABILITIES = 3
    EXTERNAL_PUB = 4
    EXTERNAL_SENDERS = 5


@dataclass(frozen=True, slots=True)
class Extension(Struct):
    """A typed opaque extension payload."""

    extension_type: int
    extension_data: bytes

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.u16(self.extension_type)
        w.opaque(self.extension_data)

    @classmethod
    def decode(cls, r: Reader) -> Extension:
        """Decode."""
        return cls(r.u16(), r.opaque())


def write_extension(w: Writer, ext: Extension) -> None:
    """Item writer for Extension vectors."""
    ext.encode(w)


def write_extensions(w: Writer, exts: tuple[Extension, ...]) -> None:
    """Write ``Extension extensions<V>``."""
    w.vector(exts, write_extension)


def read_extensions(r: Reader) -> tuple[Extension, ...]:
    """Read ``Extension extensions<V>``, rejecting duplicate types."""
    exts = tuple(r.vector(Extension.decode))
    if len({e.extension_type for e in exts}) != len(exts):
        raise DecodeError("duplicate extension type")
    return exts


@dataclass(frozen=True, slots=True)
class Credential(Struct):
    """Basic or X.509 credential; other types keep their raw body for re-encoding."""

    credential_type: int
    identity: bytes = b""
    certificates: tuple[bytes, ...] = ()

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.u16(self.credential_type)
        if self.credential_type == CredentialType.X509:
            w.vector(self.certificates, write_opaque)
        else:
            w.opaque(self.identity)

    @classmethod
    def decode(cls, r: Reader) -> Credential:
        """Decode."""
        ctype = r.u16()
        if ctype == CredentialType.X509:
            return cls(ctype, certificates=tuple(r.vector(read_opaque)))
        if ctype == CredentialType.BASIC:
            return cls(ctype, identity=r.opaque())
        raise DecodeError(f"unsupported credential type {ctype}")


@dataclass(frozen=True, slots=True)
class Capabilities(Struct):
    """What a client supports."""

    versions: tuple[int, ...]
    cipher_suites: tuple[int, ...]
    extensions: tuple[int, ...]
    proposals: tuple[int, ...]
    credentials: tuple[int, ...]

    def encode(self, w: Writer) -> None:
        """Encode."""
        for field in (
            self.versions,
            self.cipher_suites,
            self.extensions,
            self.proposals,
            self.credentials,
        ):
            w.vector(field, write_u16)

    @classmethod
    def decode(cls, r: Reader) -> Capabilities:
        """Decode."""
        return cls(*(r.uint_vector(2) for _ in range(5)))


@dataclass(frozen=True, slots=True)
class Lifetime(Struct):
    """Validity window of a KeyPackage leaf, in seconds since the epoch."""

    not_before: int
    not_after: int

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.u64(self.not_before)
        w.u64(self.not_after)

    @classmethod
    def decode(cls, r: Reader) -> Lifetime:
        """Decode."""
        return cls(r.u64(), r.u64())


@dataclass(frozen=True, slots=True)
class LeafNode(Struct):
    """A member's leaf: keys, credential, capabilities and the source-specific field."""

    encryption_key: bytes
    signature_key: bytes
    credential: Credential
    capabilities: Capabilities
    leaf_node_source: LeafNodeSource
    lifetime: Lifetime | None
    parent_hash: bytes
    extensions: tuple[Extension, ...]
    signature: bytes

    def _encode_body(self, w: Writer) -> None:
        w.opaque(self.encryption_key)
        w.opaque(self.signature_key)
        self.credential.encode(w)
        self.capabilities.encode(w)
        w.u8(self.leaf_node_source)
        if self.leaf_node_source == LeafNodeSource.KEY_PACKAGE:
            if self.lifetime is None:
                raise EncodeError("key_package leaf without lifetime")
            self.lifetime.encode(w)
        elif self.leaf_node_source == LeafNodeSource.COMMIT:
            w.opaque(self.parent_hash)
        write_extensions(w, self.extensions)

    def encode(self, w: Writer) -> None:
        """Encode."""
        self._encode_body(w)
        w.opaque(self.signature)

    def tbs(self, group_id: bytes | None, leaf_index: int | None) -> bytes:
        """LeafNodeTBS; update/commit leaves bind the group id and leaf index."""
        w = Writer()
        self._encode_body(w)
        if self.leaf_node_source != LeafNodeSource.KEY_PACKAGE:
            if group_id is None or leaf_index is None:
                raise EncodeError("update/commit leaf needs group id and leaf index")
            w.opaque(group_id)
            w.u32(leaf_index)
        return w.getvalue()

    @classmethod
    def decode(cls, r: Reader) -> LeafNode:
        """Decode."""
        enc, sig_key = r.opaque(), r.opaque()
        cred = Credential.decode(r)
        caps = Capabilities.decode(r)
        raw_source = r.u8()
        try:
            source = LeafNodeSource(raw_source)
        except ValueError:
            raise DecodeError(f"invalid leaf node source {raw_source}") from None
        lifetime = Lifetime.decode(r) if source == LeafNodeSource.KEY_PACKAGE else None
        parent_hash = r.opaque() if source == LeafNodeSource.COMMIT else b""
        exts = read_extensions(r)
        return cls(enc, sig_key, cred, caps, source, lifetime, parent_hash, exts, r.opaque())

    def verify(self, cs: CipherSuite, group_id: bytes | None, leaf_index: int | None) -> None:
        """Check the leaf signature; raises :class:`InvalidSignature`."""
        cs.verify_with_label(
            self.signature_key, "LeafNodeTBS", self.tbs(group_id, leaf_index), self.signature
        )

    def signed(
        self, cs: CipherSuite, sig_priv: bytes, group_id: bytes | None, leaf_index: int | None
    ) -> LeafNode:
        """Copy of the leaf carrying a fresh signature."""
        sig = cs.sign_with_label(sig_priv, "LeafNodeTBS", self.tbs(group_id, leaf_index))
        return LeafNode(
            self.encryption_key,
            self.signature_key,
            self.credential,
            self.capabilities,
            self.leaf_node_source,
            self.lifetime,
            self.parent_hash,
            self.extensions,
            sig,
        )
