"""Builders for native-engine tests: members on fresh storages, groups, agreement checks."""

from __future__ import annotations

import os
from collections.abc import Sequence

from mls.native import GroupConfig, NativeEngine
from mls.storage import GranularStorage

GID = b"test-group"
#: Run the random campaigns at full size by hand: ``MLS_NATIVE_FULL=1 python -m pytest
#: tests/native -k random``; CI runs them small.
FULL = os.environ.get("MLS_NATIVE_FULL") == "1"
SEEDS = list(range(1, 21)) if FULL else [1, 2, 3]
STEPS = 200 if FULL else 40


def member(name: str, *, suite: int = 1, clock: float | None = None) -> NativeEngine:
    """A native engine with its own empty storage and a fresh identity."""
    if clock is None:
        return NativeEngine.create(GranularStorage(), name.encode(), suite=suite)
    return NativeEngine.create(GranularStorage(), name.encode(), suite=suite, clock=lambda: clock)


def group(
    names: Sequence[str], *, suite: int = 1, config: GroupConfig | None = None
) -> list[NativeEngine]:
    """The first member creates the group and adds all others in one commit."""
    engines = [member(n, suite=suite) for n in names]
    creator = engines[0]
    creator.create_group(GID, config=config)
    if len(engines) > 1:
        _, welcome = creator.commit(GID, add=[e.generate_key_package() for e in engines[1:]])
        assert welcome is not None
        for e in engines[1:]:
            assert e.join(welcome, config=config) == GID
    return engines


def deliver(message: bytes, receivers: Sequence[NativeEngine]) -> None:
    """Process one handshake message at every receiver."""
    for r in receivers:
        r.process(GID, message)


def agreed(engines: Sequence[NativeEngine]) -> bool:
    """Every member is in the same epoch with the same epoch authenticator."""
    return len({(e.epoch(GID), e.epoch_authenticator(GID)) for e in engines}) == 1


def rows(storage: GranularStorage) -> dict[tuple[str, bytes], bytes]:
    """Every row of a storage, as ``{(category, key): value}``."""
    return {(c, k): v for c in storage.categories() for k, v in storage.items(c)}
