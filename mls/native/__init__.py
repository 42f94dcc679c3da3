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
    InvalidCredential,
    InvalidLeafNode,
    InvalidMessage,
    InvalidProposal,
    InvalidSignature,
    InvalidTag,
    InvalidTree,
    KeyNotFound,
    MessageTooLarge,
    MlsError,
    NoIdentity,
    NoPendingCommit,
    PendingCommitExists,
    UnknownGroup,
    UnknownKeyPackage,
    UnsupportedCipherSuite,
)
from .external import ExternalSender
from .identity import BasicCredentialValidator, CredentialValidator
from .leaf_node import Credential, CredentialType
from .pending import PendingCommit
from .rows import GroupConfig
from .suites import SUITES, CipherSuite, get_suite
from .x509 import MAX_CHAIN_CERTIFICATES, X509CredentialValidator, san_identity

__all__ = [
    "MAX_CHAIN_CERTIFICATES",
    "SUITES",
    "AuthenticationError",
    "BasicCredentialValidator",
    "CipherSuite",
    "Credential",
    "CredentialType",
    "CredentialValidator",
    "CryptoError",
    "DecodeError",
    "EncodeError",
    "EpochMismatch",
    "ExternalSender",
    "GroupConfig",
    "InvalidCredential",
    "InvalidLeafNode",
    "InvalidMessage",
    "InvalidProposal",
    "InvalidSignature",
    "InvalidTag",
    "InvalidTree",
    "KeyNotFound",
    "MessageTooLarge",
    "MlsError",
    "NativeEngine",
    "NoIdentity",
    "NoPendingCommit",
    "PendingCommit",
    "PendingCommitExists",
    "Processed",
    "ProcessedKind",
    "UnknownGroup",
    "UnknownKeyPackage",
    "UnsupportedCipherSuite",
    "X509CredentialValidator",
    "get_suite",
    "san_identity",
]
