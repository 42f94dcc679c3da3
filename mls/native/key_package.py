"""KeyPackage (RFC 9420 §10)."""

from __future__ import annotations

from dataclasses import dataclass

from .codec import Reader, Struct, Writer
from .errors import InvalidMessage
from .leaf_node import (
    PROTOCOL_VERSION_MLS10,
    Extension,
    LeafNode,
    LeafNodeSource,
    read_extensions,
    write_extensions,
)
from .suites import CipherSuite


@dataclass(frozen=True, slots=True)
class KeyPackage(Struct):
    """A signed bundle announcing a prospective member's keys."""

    version: int
    cipher_suite: int
    init_key: bytes
    leaf_node: LeafNode
    extensions: tuple[Extension, ...]
    signature: bytes

    def _encode_tbs(self, w: Writer) -> None:
        w.u16(self.version)
        w.u16(self.cipher_suite)
        w.opaque(self.init_key)
        self.leaf_node.encode(w)
        write_extensions(w, self.extensions)

    def encode(self, w: Writer) -> None:
        """Encode."""
        self._encode_tbs(w)
        w.opaque(self.signature)

    def tbs(self) -> bytes:
        """KeyPackageTBS."""
        w = Writer()
        self._encode_tbs(w)
        return w.getvalue()

    @classmethod
    def decode(cls, r: Reader) -> KeyPackage:
        """Decode."""
        return cls(r.u16(), r.u16(), r.opaque(), LeafNode.decode(r), read_extensions(r), r.opaque())

    def ref(self, cs: CipherSuite) -> bytes:
        """KeyPackageRef."""
        return cs.make_key_package_ref(self.to_bytes())

    def verify(self, cs: CipherSuite) -> None:
        """Check version, suite, leaf source, and both signatures."""
        if self.version != PROTOCOL_VERSION_MLS10 or self.cipher_suite != cs.suite_id:
            raise InvalidMessage("KeyPackage version or cipher suite mismatch")
        if self.leaf_node.leaf_node_source != LeafNodeSource.KEY_PACKAGE:
            raise InvalidMessage("KeyPackage leaf must have source key_package")
        if self.init_key == self.leaf_node.encryption_key:
            raise InvalidMessage("KeyPackage init_key equals the leaf encryption key")
        self.leaf_node.verify(cs, None, None)
        cs.verify_with_label(
            self.leaf_node.signature_key, "KeyPackageTBS", self.tbs(), self.signature
        )
