"""MLS layer: granular write-behind storage, drainers and engines (filled in by the MLS issues)."""

from mls.drainer import AsyncDrainer, WriteBehindDrainer
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
    "BackpressureError",
    "BackpressurePolicy",
    "GranularStorage",
    "StorageEvent",
    "StorageNotEmpty",
    "StorageProvider",
    "WriteBehindDrainer",
]
