"""AsyncDrainer: the same guarantees as the threaded drainer, without stalling the loop."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from keystore import Vault, VaultIOError
from mls import AsyncDrainer, GranularStorage, WriteBehindDrainer
from mls import drainer as drainer_module
from tests.mls.conftest import FlakyVault, storage_rows, vault_rows


def test_await_flush_persists_every_pending_event(storage: GranularStorage, vault: Vault) -> None:
    """``await flush()`` returns the count and the rows are in the vault."""

    async def main() -> int:
        drainer = AsyncDrainer(storage, vault)
        storage.write("c", b"k", b"v")
        storage.write_tree(b"g", b"tree")
        count = await drainer.flush()
        await drainer.aclose()
        return count

    assert asyncio.run(main()) == 2
    assert vault_rows(vault) == storage_rows(storage)


def test_async_with_flushes_on_exit(storage: GranularStorage, vault: Vault) -> None:
    """Leaving ``async with`` flushes what the background task has not."""

    async def main() -> None:
        async with AsyncDrainer(storage, vault, interval=60.0, max_backoff=60.0):
            storage.write("c", b"k", b"v")

    asyncio.run(main())
    assert vault.get("c", b"k") == b"v"


def test_threshold_wakes_the_background_task(storage: GranularStorage, vault: Vault) -> None:
    """Crossing the threshold flushes long before the (one-minute) interval."""

    async def main() -> bool:
        async with AsyncDrainer(storage, vault, interval=60.0, threshold=5, max_backoff=60.0):
            for i in range(5):
                storage.write("c", b"%d" % i, b"v")
            for _ in range(1000):
                if storage.pending_events() == 0:
                    return True
                await asyncio.sleep(0.01)
            return False

    assert asyncio.run(main())


def test_background_failure_requeues_reports_and_recovers(
    storage: GranularStorage, flaky: FlakyVault
) -> None:
    """A failing apply is retried after backoff; on_error sees it; nothing is lost."""
    errors: list[BaseException] = []
    flaky.failures_left = 2

    async def main() -> None:
        async with AsyncDrainer(
            storage, flaky, interval=0.01, on_error=errors.append, max_backoff=0.05  # type: ignore[arg-type]
        ):
            storage.write("c", b"k", b"v")
            while len(errors) < 2 or storage.pending_events():
                await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(main(), 20))
    assert [type(e) for e in errors] == [VaultIOError, VaultIOError]
    assert vault_rows(flaky.vault) == storage_rows(storage)


def test_failed_await_flush_raises_and_keeps_the_batch(
    storage: GranularStorage, flaky: FlakyVault
) -> None:
    """The caller of flush() sees the vault's error; the events are back in the storage."""

    async def main() -> None:
        drainer = AsyncDrainer(storage, flaky)  # type: ignore[arg-type]
        storage.write("c", b"k", b"v")
        flaky.failures_left = 1
        with pytest.raises(VaultIOError):
            await drainer.flush()
        assert storage.pending_events() == 1
        await drainer.aclose()

    asyncio.run(main())
    assert flaky.vault.get("c", b"k") == b"v"


def test_the_event_loop_keeps_running_during_a_flush(
    storage: GranularStorage, vault: Vault
) -> None:
    """Other coroutines get turns while a large batch is encrypted and committed."""
    for i in range(20_000):
        storage.write("c", i.to_bytes(4, "big"), b"value")

    async def main() -> int:
        drainer = AsyncDrainer(storage, vault)
        ticks = 0
        flushing = asyncio.ensure_future(drainer.flush())
        while not flushing.done():
            ticks += 1
            await asyncio.sleep(0.001)
        await flushing
        await drainer.aclose()
        return ticks

    assert asyncio.run(main()) > 1
    assert len(vault_rows(vault)) == 20_000


def test_flush_after_aclose_is_refused(storage: GranularStorage, vault: Vault) -> None:
    """A closed drainer says so instead of failing inside its stopped worker."""

    async def main() -> None:
        drainer = AsyncDrainer(storage, vault)
        await drainer.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await drainer.flush()

    asyncio.run(main())


def test_transactions_are_applied_yielding_the_gil(storage: GranularStorage, vault: Vault) -> None:
    """Each transaction is applied with ``yield_gil=True`` and in batches of 2048 events."""
    calls: list[tuple[int, dict[str, bool]]] = []
    real_apply = vault.apply

    class Recording:
        def apply(self, changes: list[object], **options: bool) -> int:
            batch = list(changes)
            calls.append((len(batch), options))
            return real_apply(batch, **options)  # type: ignore[arg-type]

        def __getattr__(self, name: str) -> object:
            return getattr(vault, name)

    for i in range(5000):
        storage.write("c", b"%d" % i, b"v")

    async def main() -> int:
        drainer = AsyncDrainer(storage, Recording())  # type: ignore[arg-type]
        count = await drainer.flush()
        await drainer.aclose()
        return count

    assert asyncio.run(main()) == 5000
    assert [size for size, _ in calls] == [2048, 2048, 904]
    assert all(options == {"yield_gil": True} for _, options in calls)
    assert vault_rows(vault) == storage_rows(storage)


def test_the_worker_frees_the_gil_before_each_transaction(
    storage: GranularStorage, vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AsyncDrainer's worker sleeps before taking each transaction; WriteBehindDrainer does not."""
    pauses: list[float] = []

    def recording_sleep(seconds: float) -> None:
        pauses.append(seconds)
        time.sleep(seconds)

    # Only the drainer module's view of ``time``: the vault's own pauses are not counted.
    monkeypatch.setattr(drainer_module, "time", SimpleNamespace(sleep=recording_sleep))
    for i in range(5000):
        storage.write("c", b"%d" % i, b"v")

    async def main() -> int:
        drainer = AsyncDrainer(storage, vault)
        count = await drainer.flush()
        await drainer.aclose()
        return count

    assert asyncio.run(main()) == 5000
    assert len(pauses) == 3  # 2048 + 2048 + 904 events: one pause before each
    assert all(0 < p <= 0.001 for p in pauses)
    threaded = WriteBehindDrainer(storage, vault, max_batch_events=2048)
    try:
        for i in range(5000):
            storage.write("c", b"%d" % i, b"w")
        assert threaded.flush() == 5000
    finally:
        threaded.close()
    assert len(pauses) == 3
