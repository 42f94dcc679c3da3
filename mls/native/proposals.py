"""Proposals, Commit and UpdatePath wire structs (RFC 9420 §7.6, §8.4, §12.1, §12.4)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .codec import Reader, Struct, Writer
from .errors import DecodeError
from .key_package import KeyPackage
from .leaf_node import Extension, LeafNode, read_extensions, write_extensions


class PskType(IntEnum):
    """Kinds of pre-shared key."""

    EXTERNAL = 1
    RESUMPTION = 2


class ResumptionPskUsage(IntEnum):
    """Purpose of a resumption PSK."""

    APPLICATION = 1
    REINIT = 2
    BRANCH = 3


@dataclass(frozen=True, slots=True)
class PreSharedKeyID(Struct):
    """Identifies an external or resumption PSK plus a fresh nonce."""

    psktype: PskType
    psk_nonce: bytes
    psk_id: bytes = b""
    usage: int = 0
    psk_group_id: bytes = b""
    psk_epoch: int = 0

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.u8(self.psktype)
        if self.psktype == PskType.EXTERNAL:
            w.opaque(self.psk_id)
        else:
            w.u8(self.usage)
            w.opaque(self.psk_group_id)
            w.u64(self.psk_epoch)
        w.opaque(self.psk_nonce)

    @classmethod
    def decode(cls, r: Reader) -> PreSharedKeyID:
        """Decode."""
        t = r.u8()
        if t == PskType.EXTERNAL:
            psk_id = r.opaque()
            return cls(PskType.EXTERNAL, r.opaque(), psk_id=psk_id)
        if t == PskType.RESUMPTION:
            usage = r.u8()
            if usage not in (1, 2, 3):
                raise DecodeError(f"invalid resumption usage {usage}")
            gid, epoch = r.opaque(), r.u64()
            return cls(
                PskType.RESUMPTION, r.opaque(), usage=usage, psk_group_id=gid, psk_epoch=epoch
            )
        raise DecodeError(f"invalid psk type {t}")


class ProposalType(IntEnum):
    """Registered proposal types."""

    ADD = 1
    UPDATE = 2
    REMOVE = 3
    PSK = 4
    REINIT = 5
    EXTERNAL_INIT = 6
    GROUP_CONTEXT_EXTENSIONS = 7


@dataclass(frozen=True, slots=True)
class Add(Struct):
    """Add a member by KeyPackage."""

    key_package: KeyPackage

    def encode(self, w: Writer) -> None:
        """Encode."""
        self.key_package.encode(w)

    @classmethod
    def decode(cls, r: Reader) -> Add:
        """Decode."""
        return cls(KeyPackage.decode(r))


@dataclass(frozen=True, slots=True)
class Update(Struct):
    """Replace the sender's leaf."""

    leaf_node: LeafNode

    def encode(self, w: Writer) -> None:
        """Encode."""
        self.leaf_node.encode(w)

    @classmethod
    def decode(cls, r: Reader) -> Update:
        """Decode."""
        return cls(LeafNode.decode(r))


@dataclass(frozen=True, slots=True)
class Remove(Struct):
    """Remove the member at a leaf index."""

    removed: int

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.u32(self.removed)

    @classmethod
    def decode(cls, r: Reader) -> Remove:
        """Decode."""
        return cls(r.u32())


@dataclass(frozen=True, slots=True)
class PreSharedKey(Struct):
    """Inject a PSK into the next epoch."""

    psk: PreSharedKeyID

    def encode(self, w: Writer) -> None:
        """Encode."""
        self.psk.encode(w)

    @classmethod
    def decode(cls, r: Reader) -> PreSharedKey:
        """Decode."""
        return cls(PreSharedKeyID.decode(r))


@dataclass(frozen=True, slots=True)
class ReInit(Struct):
    """Re-initialize the group with new parameters."""

    group_id: bytes
    version: int
    cipher_suite: int
    extensions: tuple[Extension, ...]

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.opaque(self.group_id)
        w.u16(self.version)
        w.u16(self.cipher_suite)
        write_extensions(w, self.extensions)

    @classmethod
    def decode(cls, r: Reader) -> ReInit:
        """Decode."""
        return cls(r.opaque(), r.u16(), r.u16(), read_extensions(r))


@dataclass(frozen=True, slots=True)
class ExternalInit(Struct):
    """KEM output for an external commit."""

    kem_output: bytes

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.opaque(self.kem_output)

    @classmethod
    def decode(cls, r: Reader) -> ExternalInit:
        """Decode."""
        return cls(r.opaque())


@dataclass(frozen=True, slots=True)
class GroupContextExtensions(Struct):
    """Replace the group context extensions."""

    extensions: tuple[Extension, ...]

    def encode(self, w: Writer) -> None:
        """Encode."""
        write_extensions(w, self.extensions)

    @classmethod
    def decode(cls, r: Reader) -> GroupContextExtensions:
        """Decode."""
        return cls(read_extensions(r))


ProposalBody = Add | Update | Remove | PreSharedKey | ReInit | ExternalInit | GroupContextExtensions

_BODY_TYPES: dict[int, type[ProposalBody]] = {
    ProposalType.ADD: Add,
    ProposalType.UPDATE: Update,
    ProposalType.REMOVE: Remove,
    ProposalType.PSK: PreSharedKey,
    ProposalType.REINIT: ReInit,
    ProposalType.EXTERNAL_INIT: ExternalInit,
    ProposalType.GROUP_CONTEXT_EXTENSIONS: GroupContextExtensions,
}
_TYPE_OF: dict[type[ProposalBody], ProposalType] = {
    cls: ProposalType(t) for t, cls in _BODY_TYPES.items()
}


@dataclass(frozen=True, slots=True)
class Proposal(Struct):
    """A proposal: its type tag plus the typed body."""

    body: ProposalBody

    @property
    def proposal_type(self) -> ProposalType:
        """Registered type of the body."""
        return _TYPE_OF[type(self.body)]

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.u16(self.proposal_type)
        self.body.encode(w)

    @classmethod
    def decode(cls, r: Reader) -> Proposal:
        """Decode."""
        t = r.u16()
        body_cls = _BODY_TYPES.get(t)
        if body_cls is None:
            raise DecodeError(f"unsupported proposal type {t}")
        return cls(body_cls.decode(r))


@dataclass(frozen=True, slots=True)
class ProposalOrRef(Struct):
    """A proposal inline or by ProposalRef."""

    proposal: Proposal | None = None
    reference: bytes = b""

    def encode(self, w: Writer) -> None:
        """Encode."""
        if self.proposal is not None:
            w.u8(1)
            self.proposal.encode(w)
        else:
            w.u8(2)
            w.opaque(self.reference)

    @classmethod
    def decode(cls, r: Reader) -> ProposalOrRef:
        """Decode."""
        t = r.u8()
        if t == 1:
            return cls(proposal=Proposal.decode(r))
        if t == 2:
            return cls(reference=r.opaque())
        raise DecodeError(f"invalid ProposalOrRef type {t}")


@dataclass(frozen=True, slots=True)
class HPKECiphertext(Struct):
    """KEM output plus AEAD ciphertext."""

    kem_output: bytes
    ciphertext: bytes

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.opaque(self.kem_output)
        w.opaque(self.ciphertext)

    @classmethod
    def decode(cls, r: Reader) -> HPKECiphertext:
        """Decode."""
        return cls(r.opaque(), r.opaque())


def _write_struct(w: Writer, s: Struct) -> None:
    s.encode(w)


@dataclass(frozen=True, slots=True)
class UpdatePathNode(Struct):
    """New public key of one filtered direct-path node and its encrypted path secrets."""

    encryption_key: bytes
    encrypted_path_secret: tuple[HPKECiphertext, ...]

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.opaque(self.encryption_key)
        w.vector(self.encrypted_path_secret, _write_struct)

    @classmethod
    def decode(cls, r: Reader) -> UpdatePathNode:
        """Decode."""
        return cls(r.opaque(), tuple(r.vector(HPKECiphertext.decode)))


@dataclass(frozen=True, slots=True)
class UpdatePath(Struct):
    """The committer's new leaf and its filtered direct path."""

    leaf_node: LeafNode
    nodes: tuple[UpdatePathNode, ...]

    def encode(self, w: Writer) -> None:
        """Encode."""
        self.leaf_node.encode(w)
        w.vector(self.nodes, _write_struct)

    @classmethod
    def decode(cls, r: Reader) -> UpdatePath:
        """Decode."""
        return cls(LeafNode.decode(r), tuple(r.vector(UpdatePathNode.decode)))


@dataclass(frozen=True, slots=True)
class Commit(Struct):
    """Proposals being enacted plus an optional UpdatePath."""

    proposals: tuple[ProposalOrRef, ...]
    path: UpdatePath | None

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.vector(self.proposals, _write_struct)
        w.optional(self.path, _write_struct)

    @classmethod
    def decode(cls, r: Reader) -> Commit:
        """Decode."""
        return cls(tuple(r.vector(ProposalOrRef.decode)), r.optional(UpdatePath.decode))
