"""Native, dependency-light implementation of MLS (RFC 9420).

Building blocks (codec, suites, HPKE, trees, key schedule, framing) in the submodules; the
group state machine persisted through :class:`mls.storage.GranularStorage` in
:class:`NativeEngine`.  The package knows nothing above its storage: the vault, the drainer
and the durability barrier belong to :class:`mls.MlsClient`, which runs this engine through
:mod:`mls.engines.native`.
"""

from .engine import NativeEngine, Processed, ProcessedKind
from .errors import (
    AuthenticationError,
    CryptoError,
    DecodeError,
    EncodeError,
    EpochMismatch,
    InvalidLeafNode,
    InvalidMessage,
    InvalidProposal,
    InvalidSignature,
    InvalidTag,
    InvalidTree,
    KeyNotFound,
    MlsError,
    NoIdentity,
    UnknownGroup,
    UnknownKeyPackage,
    UnsupportedCipherSuite,
)
from .rows import GroupConfig
from .suites import SUITES, CipherSuite, get_suite

__all__ = [
    "SUITES",
    "AuthenticationError",
    "CipherSuite",
    "CryptoError",
    "DecodeError",
    "EncodeError",
    "EpochMismatch",
    "GroupConfig",
    "InvalidLeafNode",
    "InvalidMessage",
    "InvalidProposal",
    "InvalidSignature",
    "InvalidTag",
    "InvalidTree",
    "KeyNotFound",
    "MlsError",
    "NativeEngine",
    "NoIdentity",
    "Processed",
    "ProcessedKind",
    "UnknownGroup",
    "UnknownKeyPackage",
    "UnsupportedCipherSuite",
    "get_suite",
]
