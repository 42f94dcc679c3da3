"""GroupContext (RFC 9420 §8.1): the per-epoch summary every key derivation binds to."""

from __future__ import annotations

from dataclasses import dataclass

from .codec import Reader, Struct, Writer
from .leaf_node import PROTOCOL_VERSION_MLS10, Extension, read_extensions, write_extensions


@dataclass(frozen=True, slots=True)
class GroupContext(Struct):
    """State shared by all members in one epoch."""

    cipher_suite: int
    group_id: bytes
    epoch: int
    tree_hash: bytes
    confirmed_transcript_hash: bytes
    extensions: tuple[Extension, ...] = ()
    version: int = PROTOCOL_VERSION_MLS10

    def encode(self, w: Writer) -> None:
        """Encode."""
        w.u16(self.version)
        w.u16(self.cipher_suite)
        w.opaque(self.group_id)
        w.u64(self.epoch)
        w.opaque(self.tree_hash)
        w.opaque(self.confirmed_transcript_hash)
        write_extensions(w, self.extensions)

    @classmethod
    def decode(cls, r: Reader) -> GroupContext:
        """Decode."""
        version, suite = r.u16(), r.u16()
        gid, epoch = r.opaque(), r.u64()
        th, cth = r.opaque(), r.opaque()
        return cls(suite, gid, epoch, th, cth, read_extensions(r), version)
