"""MLS layer: granular write-behind storage, drainers and engines (filled in by the MLS issues)."""

from mls.client import AsyncMlsClient, LostKeyPackage, MlsClient, Received, ReceivedKind
from mls.drainer import AsyncDrainer, WriteBehindDrainer
from mls.errors import (
    InvalidMessage,
    KeyPackageLost,
    MlsEngineError,
    MlsError,
    MlsRsUnavailable,
    NotAnMlsVault,
    UnknownGroup,
    UnknownMember,
)
from mls.provider import StorageProvider
from mls.storage import (
    BackpressureError,
    BackpressurePolicy,
    GranularStorage,
    StorageEvent,
    StorageNotEmpty,
)

__all__ = [
    "AsyncDrainer",
    "AsyncMlsClient",
    "BackpressureError",
    "BackpressurePolicy",
    "GranularStorage",
    "InvalidMessage",
    "KeyPackageLost",
    "LostKeyPackage",
    "MlsClient",
    "MlsEngineError",
    "MlsError",
    "MlsRsUnavailable",
    "NotAnMlsVault",
    "Received",
    "ReceivedKind",
    "StorageEvent",
    "StorageNotEmpty",
    "StorageProvider",
    "UnknownGroup",
    "UnknownMember",
    "WriteBehindDrainer",
]
