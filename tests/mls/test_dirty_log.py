"""The dirty log: one event per change, drain/requeue, bad input and backpressure."""

from __future__ import annotations

import pytest

from keystore import Vault
from mls import BackpressureError, GranularStorage, StorageEvent, WriteBehindDrainer
from tests.mls.conftest import FlakyVault, vault_rows


def test_every_write_and_delete_appends_an_event_in_order(storage: GranularStorage) -> None:
    """Events carry increasing seqs; a delete carries value None."""
    storage.write("c", b"a", b"1")
    storage.write("d", b"b", b"2")
    storage.delete("c", b"a")
    events = storage.drain_storage_events()
    assert [(e.category, e.key, e.value) for e in events] == [
        ("c", b"a", b"1"), ("d", b"b", b"2"), ("c", b"a", None)
    ]
    assert [e.seq for e in events] == sorted({e.seq for e in events})
    assert all(isinstance(e, StorageEvent) for e in events)


def test_deleting_an_absent_row_logs_nothing(storage: GranularStorage) -> None:
    """No row, no event: the vault has nothing to delete either."""
    storage.delete("c", b"never-written")
    assert storage.pending_events() == 0


def test_drain_takes_everything_once(storage: GranularStorage) -> None:
    """A second drain returns nothing new."""
    storage.write("c", b"a", b"1")
    assert len(storage.drain_storage_events()) == 1
    assert storage.drain_storage_events() == []
    assert storage.pending_events() == 0


def test_requeue_puts_a_batch_back_in_front_in_order(storage: GranularStorage) -> None:
    """A requeued batch comes back before newer events, same content, same order."""
    for i in range(3):
        storage.write("c", b"%d" % i, b"old")
    batch = storage.drain_storage_events()
    storage.write("c", b"new", b"later")
    storage.requeue(batch)
    again = storage.drain_storage_events()
    assert again[:3] == batch
    assert (again[3].key, again[3].value) == (b"new", b"later")


def test_requeue_refuses_a_batch_newer_than_pending_events(storage: GranularStorage) -> None:
    """Putting back anything but the last drained batch would reorder history."""
    storage.write("c", b"a", b"1")
    first = storage.drain_storage_events()
    storage.write("c", b"a", b"2")
    second = storage.drain_storage_events()
    storage.requeue(second)
    with pytest.raises(ValueError, match="older"):
        storage.requeue(first + second)


def test_write_rejects_bad_types_and_names(storage: GranularStorage) -> None:
    """Non-bytes keys/values raise TypeError, bad category names ValueError; nothing logged."""
    with pytest.raises(TypeError):
        storage.write("c", "key", b"v")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        storage.write("c", b"k", bytearray(b"v"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        storage.delete("c", 7)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        storage.write("bad name!", b"k", b"v")
    with pytest.raises(ValueError):
        storage.read("", b"k")
    assert storage.pending_events() == 0
    assert storage.categories() == []


def test_write_rejects_keys_over_the_vault_limit(storage: GranularStorage) -> None:
    """A key the vault would refuse is refused now, so it can never poison a batch."""
    with pytest.raises(ValueError, match="limit"):
        storage.write("c", bytes(64 * 1024 + 1), b"v")
    assert storage.pending_events() == 0


def test_generic_api_lists_keys_and_items(storage: GranularStorage) -> None:
    """keys/items list what a category holds; unknown categories are empty."""
    storage.write("engine.rows", b"k1", b"v1")
    storage.write("engine.rows", b"k2", b"v2")
    assert storage.keys("engine.rows") == [b"k1", b"k2"]
    assert storage.items("engine.rows") == [(b"k1", b"v1"), (b"k2", b"v2")]
    assert storage.keys("unknown") == [] and storage.items("unknown") == []


def test_backpressure_raise_policy_refuses_writes_when_full() -> None:
    """With "raise", the write past the bound fails and changes nothing."""
    storage = GranularStorage(max_pending_events=3, backpressure="raise")
    for i in range(3):
        storage.write("c", b"%d" % i, b"v")
    with pytest.raises(BackpressureError):
        storage.write("c", b"extra", b"v")
    assert storage.read("c", b"extra") is None
    assert storage.pending_events() == 3


def test_backpressure_bounds_pending_bytes() -> None:
    """The byte bound trips on large values even when few events are pending."""
    storage = GranularStorage(max_pending_bytes=1000, backpressure="raise")
    storage.write("c", b"big", bytes(1200))
    with pytest.raises(BackpressureError):
        storage.write("c", b"small", b"v")


def test_backpressure_flush_policy_flushes_in_the_writer(vault: Vault) -> None:
    """With "flush", the writer empties the log through the drainer and goes on."""
    storage = GranularStorage(max_pending_events=3, backpressure="flush")
    drainer = WriteBehindDrainer(storage, vault)  # attached, background thread not started
    try:
        for i in range(4):
            storage.write("c", b"%d" % i, b"v")
        assert storage.pending_events() == 1
        assert len(vault_rows(vault)) == 3
    finally:
        drainer.close()


def test_backpressure_flush_policy_raises_when_the_disk_is_gone(flaky: FlakyVault) -> None:
    """If the synchronous flush fails, the write fails and nothing is lost or changed."""
    storage = GranularStorage(max_pending_events=3, backpressure="flush")
    drainer = WriteBehindDrainer(storage, flaky)  # type: ignore[arg-type]
    for i in range(3):
        storage.write("c", b"%d" % i, b"v")
    flaky.failures_left = 1
    with pytest.raises(BackpressureError) as caught:
        storage.write("c", b"extra", b"v")
    assert "VaultIOError" in str(caught.value)
    assert storage.read("c", b"extra") is None
    assert storage.pending_events() == 3
    drainer.close()
    assert len(vault_rows(flaky.vault)) == 3


def test_backpressure_flush_policy_without_a_drainer_raises() -> None:
    """Nothing to flush with: the bound still holds."""
    storage = GranularStorage(max_pending_events=1)
    storage.write("c", b"a", b"v")
    with pytest.raises(BackpressureError, match="no drainer"):
        storage.write("c", b"b", b"v")


@pytest.mark.parametrize(
    "kwargs",
    [{"max_pending_events": 0}, {"max_pending_bytes": -1}, {"backpressure": "drop"}],
)
def test_bad_bounds_are_refused(kwargs: dict[str, object]) -> None:
    """Nonsense bounds or policies raise ValueError at construction."""
    with pytest.raises(ValueError):
        GranularStorage(**kwargs)  # type: ignore[arg-type]


def test_bounded_drain_takes_whole_operations(storage: GranularStorage) -> None:
    """A drain of at most 2 events still takes a 5-row operation whole."""
    with storage.operation():
        for i in range(5):
            storage.write("c", b"op-%d" % i, b"v")
    storage.write("c", b"after", b"v")
    first = storage.drain_storage_events(max_events=2)
    assert [e.key for e in first] == [b"op-%d" % i for i in range(5)]
    assert [e.key for e in storage.drain_storage_events(max_events=2)] == [b"after"]


def test_bounded_drain_stops_at_the_bound_between_units(storage: GranularStorage) -> None:
    """Standalone writes are units of one: a bound of 3 takes exactly 3."""
    for i in range(10):
        storage.write("c", b"%d" % i, b"v")
    assert len(storage.drain_storage_events(max_events=3)) == 3
    assert storage.pending_events() == 7
    assert storage.pending_bytes() == sum(len(b"%d" % i) + 1 for i in range(3, 10))


def test_a_requeued_batch_is_drained_whole_again(storage: GranularStorage) -> None:
    """A batch that failed together is retried together, even under a bound."""
    for i in range(4):
        storage.write("c", b"%d" % i, b"v")
    batch = storage.drain_storage_events()
    storage.write("c", b"new", b"v")
    storage.requeue(batch)
    assert storage.pending_events() == 5
    assert storage.drain_storage_events(max_events=1) == batch
