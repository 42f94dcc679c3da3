"""WriteBehindDrainer: durable flushes, failures that lose nothing, threads."""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
from pathlib import Path

import pytest

from keystore import Vault, VaultIOError, VaultLocked
from mls import GranularStorage, WriteBehindDrainer
from tests.conftest import PASSPHRASE
from tests.mls.conftest import FULL, FlakyVault, storage_rows, vault_rows


def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.005)
    return False


def committed_rows(path: Path) -> dict[tuple[str, bytes], bytes]:
    """The rows another reader of the file sees (i.e. committed ones)."""
    with Vault.open(path, readonly=True) as reader:
        reader.unlock(PASSPHRASE)
        return vault_rows(reader)


def test_flush_returns_with_the_rows_committed(storage: GranularStorage, vault: Vault) -> None:
    """After flush() another reader of the file sees every row."""
    drainer = WriteBehindDrainer(storage, vault)
    storage.write("c", b"k", b"v")
    storage.write_tree(b"g", b"tree")
    assert drainer.flush() == 2
    assert committed_rows(vault.path) == storage_rows(storage)
    drainer.close()


def test_flush_with_nothing_pending_does_not_touch_the_vault(
    storage: GranularStorage, flaky: FlakyVault
) -> None:
    """An empty log means no transaction at all."""
    drainer = WriteBehindDrainer(storage, flaky)  # type: ignore[arg-type]
    assert drainer.flush() == 0
    drainer.close()
    assert flaky.batches == []


def test_failed_flush_requeues_and_a_retry_persists_the_same_batch(
    storage: GranularStorage, flaky: FlakyVault
) -> None:
    """An apply failure raises, loses nothing and keeps the order; the retry writes it all."""
    drainer = WriteBehindDrainer(storage, flaky)  # type: ignore[arg-type]
    for i in range(5):
        storage.write("c", b"k", b"v%d" % i)
        storage.write("c", b"%d" % i, b"x")
    flaky.failures_left = 1
    with pytest.raises(VaultIOError):
        drainer.flush()
    assert storage.pending_events() == 10
    storage.write("c", b"k", b"newest")
    drainer.flush()
    drainer.close()
    assert [value for c, key, value in flaky.batches[0] if key == b"k"][-1] == b"newest"
    assert vault_rows(flaky.vault) == storage_rows(storage)


def test_background_failure_is_reported_retried_and_recovered(
    storage: GranularStorage, flaky: FlakyVault, caplog: pytest.LogCaptureFixture
) -> None:
    """The thread logs and calls on_error, backs off, retries; writes keep working meanwhile."""
    errors: list[BaseException] = []
    flaky.failures_left = 2
    drainer = WriteBehindDrainer(
        storage, flaky, interval=0.01, on_error=errors.append, max_backoff=0.05  # type: ignore[arg-type]
    )
    with caplog.at_level(logging.WARNING, logger="mls.drainer"), drainer:
        storage.write("c", b"secret-key", b"secret-value")
        assert wait_until(lambda: len(errors) == 2)
        storage.write("c", b"during-outage", b"still-works")
        assert wait_until(lambda: storage.pending_events() == 0)
    assert all(isinstance(e, VaultIOError) for e in errors)
    assert drainer.failures == 2
    assert "write-behind flush failed" in caplog.text
    assert "secret" not in caplog.text
    assert vault_rows(flaky.vault) == storage_rows(storage)


def test_a_locked_vault_holds_events_until_it_is_unlocked(
    storage: GranularStorage, vault: Vault
) -> None:
    """A real VaultLocked failure: nothing lost, everything lands after unlock."""
    errors: list[BaseException] = []
    with WriteBehindDrainer(storage, vault, interval=0.01, on_error=errors.append,
                            max_backoff=0.05):
        vault.lock()
        storage.write("c", b"k", b"v")
        assert wait_until(lambda: errors)
        assert storage.pending_events() == 1
        vault.unlock(PASSPHRASE)
        assert wait_until(lambda: storage.pending_events() == 0)
    assert isinstance(errors[0], VaultLocked)
    assert vault.get("c", b"k") == b"v"


def test_threshold_wakes_the_background_flush_early(
    storage: GranularStorage, vault: Vault
) -> None:
    """Crossing the threshold flushes long before the (one-minute) interval."""
    with WriteBehindDrainer(storage, vault, interval=60.0, threshold=10, max_backoff=60.0):
        for i in range(10):
            storage.write("c", b"%d" % i, b"v")
        assert wait_until(lambda: len(vault_rows(vault)) == 10)


def test_close_flushes_what_is_left_and_detaches(storage: GranularStorage, vault: Vault) -> None:
    """After close the vault has everything and a new drainer may attach."""
    drainer = WriteBehindDrainer(storage, vault, interval=60.0, max_backoff=60.0)
    drainer.start()
    storage.write("c", b"k", b"v")
    drainer.close()
    drainer.close()
    assert vault.get("c", b"k") == b"v"
    WriteBehindDrainer(storage, vault).close()


def test_only_one_drainer_per_storage(storage: GranularStorage, vault: Vault) -> None:
    """Two drainers would race each other's batches: the second is refused."""
    first = WriteBehindDrainer(storage, vault)
    with pytest.raises(RuntimeError, match="already attached"):
        WriteBehindDrainer(storage, vault)
    first.close()


def test_close_with_the_disk_gone_raises_and_keeps_the_events(
    storage: GranularStorage, flaky: FlakyVault
) -> None:
    """The final flush failing is reported to the caller; memory still holds the batch."""
    drainer = WriteBehindDrainer(storage, flaky)  # type: ignore[arg-type]
    storage.write("c", b"k", b"v")
    flaky.failures_left = 1
    with pytest.raises(VaultIOError):
        drainer.close()
    assert storage.pending_events() == 1


def test_concurrent_flush_callers_each_return_after_their_writes_are_committed(
    storage: GranularStorage, vault: Vault
) -> None:
    """Every caller of flush() finds its own row committed when flush() returns."""
    drainer = WriteBehindDrainer(storage, vault)
    missing: list[bytes] = []

    def writer(n: int) -> None:
        for i in range(20):
            key = b"%d-%d" % (n, i)
            storage.write("c", key, b"v")
            drainer.flush()
            if (("c", key)) not in committed_rows(vault.path):
                missing.append(key)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    drainer.close()
    assert missing == []


def test_eight_writer_threads_and_a_running_drainer_end_with_vault_equal_to_memory(
    storage: GranularStorage, vault: Vault
) -> None:
    """Writes, deletes, committed and failed operations from 8 threads on shared rows."""
    rounds = 2000 if FULL else 250

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(rounds):
            key = b"k%d" % rng.randrange(40)
            action = rng.random()
            if action < 0.5:
                storage.write("shared", key, b"%d" % rng.randrange(1000))
            elif action < 0.65:
                storage.delete("shared", key)
            else:
                try:
                    with storage.operation():
                        storage.write("shared", key, b"op")
                        storage.append_own_leaf_node(b"g%d" % seed, b"leaf")
                        storage.delete("shared", b"k%d" % rng.randrange(40))
                        if action > 0.9:
                            raise KeyError("abandon")
                except KeyError:
                    pass

    # Switch threads every microsecond so operations of different threads interleave.
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with WriteBehindDrainer(storage, vault, interval=0.001, threshold=64):
            threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        sys.setswitchinterval(previous)
    assert storage.pending_events() == 0
    assert vault_rows(vault) == storage_rows(storage)


def test_bounded_batches_split_a_flush_but_never_an_operation(
    storage: GranularStorage, flaky: FlakyVault
) -> None:
    """max_batch_events makes several transactions, each holding whole operations."""
    drainer = WriteBehindDrainer(storage, flaky, max_batch_events=4)  # type: ignore[arg-type]
    for i in range(6):
        storage.write("c", b"s%d" % i, b"v")
    with storage.operation():
        for i in range(7):
            storage.write("c", b"op%d" % i, b"v")
    assert drainer.flush() == 13
    drainer.close()
    assert [len(batch) for batch in flaky.batches] == [4, 9]
    assert vault_rows(flaky.vault) == storage_rows(storage)


def test_failure_in_a_later_bounded_batch_keeps_the_rest_pending(
    storage: GranularStorage, flaky: FlakyVault
) -> None:
    """Batches already applied stay applied; the failed one and the rest stay in order."""
    drainer = WriteBehindDrainer(storage, flaky, max_batch_events=2)  # type: ignore[arg-type]
    for i in range(6):
        storage.write("c", b"%d" % i, b"v%d" % i)
    real_apply = flaky.apply
    calls = []

    def fail_second(changes: object) -> int:
        calls.append(1)
        if len(calls) == 2:
            raise VaultIOError("injected")
        return real_apply(changes)  # type: ignore[arg-type]

    flaky.apply = fail_second  # type: ignore[method-assign]
    with pytest.raises(VaultIOError):
        drainer.flush()
    assert len(vault_rows(flaky.vault)) == 2
    assert [e.key for e in storage.drain_storage_events()] == [b"%d" % i for i in range(2, 6)]
    drainer.close()


def test_a_busy_writer_cannot_keep_a_bounded_flush_running(
    storage: GranularStorage, flaky: FlakyVault
) -> None:
    """flush() applies what was pending at its call and returns, while writes continue.

    The writer starts flooding once the first ten-event transaction is in, faster than
    such transactions drain, so a flush that chased the log would never end.
    """
    drainer = WriteBehindDrainer(storage, flaky, max_batch_events=10)  # type: ignore[arg-type]
    for i in range(50):
        storage.write("c", b"before-%d" % i, b"v")
    first_batch_applied = threading.Event()
    real_apply = flaky.apply

    def apply(changes: object) -> int:
        count = real_apply(changes)  # type: ignore[arg-type]
        first_batch_applied.set()
        return count

    flaky.apply = apply  # type: ignore[method-assign]
    stop = threading.Event()

    def flood() -> None:
        first_batch_applied.wait(30)
        n = 0
        while not stop.is_set():
            storage.write("c", b"during-%d" % n, b"v")
            n += 1
            if n % 100 == 0:
                time.sleep(0)

    writer = threading.Thread(target=flood)
    writer.start()
    try:
        flusher = threading.Thread(target=drainer.flush)
        flusher.start()
        flusher.join(20)
        returned = not flusher.is_alive()
    finally:
        stop.set()
        writer.join()
        flusher.join()
    storage.drain_storage_events()  # the flood itself need not reach the disk
    drainer.close()
    assert returned
    assert all(flaky.vault.get("c", b"before-%d" % i) == b"v" for i in range(50))
