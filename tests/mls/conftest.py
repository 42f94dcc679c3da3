"""Fixtures for the storage tests: storages, a failure-injecting vault, a reopen helper."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from keystore import Change, ChangeLike, Vault, VaultIOError
from mls import GranularStorage
from tests.conftest import FAST_KDF, PASSPHRASE

#: Multiply the sizes of the long campaigns (hypothesis, thread stress) by hand:
#: ``MLS_STORAGE_FULL=1 python -m pytest tests/mls``.
FULL = os.environ.get("MLS_STORAGE_FULL") == "1"


class FlakyVault:
    """A real vault whose ``apply`` fails on demand, like a disk that comes and goes."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self.failures_left = 0
        self.batches: list[list[tuple[str, bytes, bytes | None]]] = []

    def apply(self, changes: Iterable[ChangeLike], **options: bool) -> int:
        batch = [(c.category, c.key, c.value) for c in changes]
        if self.failures_left:
            self.failures_left -= 1
            raise VaultIOError("injected: disk I/O error")
        self.batches.append(batch)
        return self.vault.apply(batch_changes(batch), **options)

    def __getattr__(self, name: str) -> object:
        return getattr(self.vault, name)


def batch_changes(batch: list[tuple[str, bytes, bytes | None]]) -> list[ChangeLike]:
    """Turn recorded tuples back into ``Change`` objects."""
    return [Change(c, k, v) for c, k, v in batch]


def vault_rows(vault: Vault) -> dict[tuple[str, bytes], bytes]:
    """Every row of a vault, as ``{(category, key): value}``."""
    return {(c, k): v for c in vault.categories() for k, v in vault.items(c)}


def storage_rows(storage: GranularStorage) -> dict[tuple[str, bytes], bytes]:
    """Every row of a storage, as ``{(category, key): value}``."""
    return {(c, k): v for c in storage.categories() for k, v in storage.items(c)}


@pytest.fixture
def storage() -> GranularStorage:
    """An empty storage with the default bounds."""
    return GranularStorage()


@pytest.fixture
def flaky(vault: Vault) -> FlakyVault:
    """The test vault behind a switch that makes ``apply`` fail."""
    return FlakyVault(vault)


Reopen = Callable[[GranularStorage], GranularStorage]


@pytest.fixture(params=["memory", "rehydrated"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Reopen]:
    """``memory``: the storage itself; ``rehydrated``: drain it to a vault, load a new one.

    Each rehydration drains into the same vault, closes it, reopens it from the file and
    loads a fresh storage, so a test passing under both proves persistence is complete.
    """
    if request.param == "memory":
        yield lambda s: s
        return
    path = tmp_path / "reopen.vault"
    Vault.create(path, PASSPHRASE, kdf=FAST_KDF).close()

    def rehydrate(current: GranularStorage) -> GranularStorage:
        with Vault.open(path) as v:
            v.unlock(PASSPHRASE)
            v.apply(current.drain_storage_events())
        with Vault.open(path) as v:
            v.unlock(PASSPHRASE)
            return GranularStorage.load(v)

    yield rehydrate
