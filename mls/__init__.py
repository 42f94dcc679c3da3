"""MLS layer: granular write-behind storage, drainers, one client over two engines, and a
read-only inspector of a client's vault (``MlsInspector``, also ``mls-keystore mls ...``).

The credential validators (``CredentialValidator``, ``BasicCredentialValidator``,
``X509CredentialValidator``, ``san_identity``) live in the native engine and are loaded on
first access, so ``import mls`` for the storage layer alone stays light.
"""

from typing import TYPE_CHECKING, Any

from mls.client import (
    DEFAULT_MAX_MESSAGE_SIZE,
    AsyncMlsClient,
    LostKeyPackage,
    MlsClient,
    NativeClient,
    Received,
    ReceivedKind,
)
from mls.drainer import AsyncDrainer, WriteBehindDrainer
from mls.engine import (
    CommitChanges,
    GroupContextExtension,
    GroupSettings,
    GroupState,
    Handshake,
    Member,
    MlsEngine,
    PendingCommit,
    PendingProposal,
    X509Credential,
)
from mls.errors import (
    EpochMismatch,
    InvalidCredential,
    InvalidMessage,
    InvalidProposal,
    KeyPackageLost,
    MlsEngineError,
    MlsError,
    MlsRsUnavailable,
    NoPendingCommit,
    NotAnMlsVault,
    PendingCommitExists,
    UnknownGroup,
    UnknownKeyPackage,
    UnknownMember,
    Unsupported,
)
from mls.inspection import KeyPackageInfo, MlsInspector
from mls.provider import StorageProvider
from mls.storage import (
    BackpressureError,
    BackpressurePolicy,
    GranularStorage,
    StorageEvent,
    StorageNotEmpty,
)

if TYPE_CHECKING:
    from mls.native.identity import BasicCredentialValidator, CredentialValidator
    from mls.native.x509 import X509CredentialValidator, san_identity

_LAZY = {
    "BasicCredentialValidator": "mls.native.identity",
    "CredentialValidator": "mls.native.identity",
    "X509CredentialValidator": "mls.native.x509",
    "san_identity": "mls.native.x509",
}


def __getattr__(name: str) -> Any:
    """Load the credential validators on first use (they import the native engine)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mls' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "AsyncDrainer",
    "AsyncMlsClient",
    "BackpressureError",
    "BackpressurePolicy",
    "BasicCredentialValidator",
    "CommitChanges",
    "CredentialValidator",
    "EpochMismatch",
    "GranularStorage",
    "GroupContextExtension",
    "GroupSettings",
    "GroupState",
    "Handshake",
    "InvalidCredential",
    "InvalidMessage",
    "InvalidProposal",
    "KeyPackageInfo",
    "KeyPackageLost",
    "LostKeyPackage",
    "Member",
    "MlsClient",
    "MlsEngine",
    "MlsEngineError",
    "MlsError",
    "MlsInspector",
    "MlsRsUnavailable",
    "NativeClient",
    "NoPendingCommit",
    "NotAnMlsVault",
    "PendingCommit",
    "PendingCommitExists",
    "PendingProposal",
    "Received",
    "ReceivedKind",
    "StorageEvent",
    "StorageNotEmpty",
    "StorageProvider",
    "UnknownGroup",
    "UnknownKeyPackage",
    "UnknownMember",
    "Unsupported",
    "WriteBehindDrainer",
    "X509Credential",
    "X509CredentialValidator",
    "san_identity",
]
