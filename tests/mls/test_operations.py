"""Operation atomicity: an MLS operation's writes are drained together or not at all."""

from __future__ import annotations

import threading

import pytest

from keystore import Vault
from mls import GranularStorage, WriteBehindDrainer
from tests.mls.conftest import FlakyVault, storage_rows, vault_rows


class Boom(Exception):
    """Raised inside operations by these tests."""


def drained(storage: GranularStorage) -> list[tuple[str, bytes, bytes | None]]:
    return [(e.category, e.key, e.value) for e in storage.drain_storage_events()]


def test_events_of_an_open_operation_are_not_drained(storage: GranularStorage) -> None:
    """While the block runs, its writes are visible but not drainable."""
    with storage.operation():
        storage.write("c", b"k1", b"v1")
        storage.write("c", b"k2", b"v2")
        assert storage.read("c", b"k1") == b"v1"
        assert storage.drain_storage_events() == []
    assert drained(storage) == [("c", b"k1", b"v1"), ("c", b"k2", b"v2")]


def test_standalone_writes_drain_while_another_operation_is_open(storage: GranularStorage) -> None:
    """A drain takes completed units and leaves the open operation behind."""
    storage.write("c", b"before", b"1")
    with storage.operation():
        storage.write("c", b"inside", b"2")
        assert drained(storage) == [("c", b"before", b"1")]
    assert drained(storage) == [("c", b"inside", b"2")]


def test_operation_coalesces_repeated_writes_to_one_event_per_row(storage: GranularStorage) -> None:
    """A row written three times in one operation is drained once, with its last value."""
    with storage.operation():
        for value in (b"a", b"b", b"c"):
            storage.write("c", b"k", value)
        storage.write("c", b"gone", b"x")
        storage.delete("c", b"gone")
    assert drained(storage) == [("c", b"k", b"c"), ("c", b"gone", None)]


def test_exception_rolls_memory_back_and_emits_nothing(storage: GranularStorage) -> None:
    """Writes, overwrites and deletes inside a failed block are all undone."""
    storage.write("c", b"kept", b"old")
    storage.write("c", b"deleted", b"old")
    storage.drain_storage_events()
    with pytest.raises(Boom), storage.operation():
        storage.write("c", b"kept", b"new")
        storage.delete("c", b"deleted")
        storage.write("c", b"created", b"new")
        raise Boom
    assert storage_rows(storage) == {("c", b"kept"): b"old", ("c", b"deleted"): b"old"}
    assert storage.drain_storage_events() == []


def test_rollback_also_undoes_provider_methods(storage: GranularStorage) -> None:
    """A failed operation takes back list appends and queued proposals too."""
    storage.append_own_leaf_node(b"g", b"leaf-1")
    storage.drain_storage_events()
    with pytest.raises(Boom), storage.operation():
        storage.append_own_leaf_node(b"g", b"leaf-2")
        storage.queue_proposal(b"g", b"ref", b"proposal")
        storage.write_tree(b"g", b"tree")
        raise Boom
    assert storage.own_leaf_nodes(b"g") == [b"leaf-1"]
    assert storage.queued_proposals(b"g") == []
    assert storage.tree(b"g") is None
    assert storage.pending_events() == 0


def test_nested_operation_is_one_unit(storage: GranularStorage) -> None:
    """Nothing of an inner block is drainable until the outermost block ends."""
    with storage.operation():
        storage.write("c", b"outer", b"1")
        with storage.operation():
            storage.write("c", b"inner", b"2")
        assert storage.drain_storage_events() == []
    assert drained(storage) == [("c", b"outer", b"1"), ("c", b"inner", b"2")]


def test_failed_inner_block_undoes_only_its_own_writes(storage: GranularStorage) -> None:
    """An inner block that raises is a savepoint: the outer block continues and commits."""
    with storage.operation():
        storage.write("c", b"outer", b"1")
        with pytest.raises(Boom), storage.operation():
            storage.write("c", b"outer", b"overwritten")
            storage.write("c", b"inner", b"2")
            raise Boom
        storage.write("c", b"after", b"3")
    assert storage_rows(storage) == {("c", b"outer"): b"1", ("c", b"after"): b"3"}
    events = drained(storage)
    assert ("c", b"outer", b"1") in events and ("c", b"after", b"3") in events
    assert all(value != b"2" and value != b"overwritten" for _, _, value in events)


def test_failed_outer_block_undoes_committed_inner_blocks(storage: GranularStorage) -> None:
    """The outermost block defines the unit: its failure discards inner blocks too."""
    with pytest.raises(Boom), storage.operation():
        with storage.operation():
            storage.write("c", b"inner", b"2")
        raise Boom
    assert storage_rows(storage) == {}
    assert storage.drain_storage_events() == []


def test_other_threads_are_not_blocked_by_an_open_operation(storage: GranularStorage) -> None:
    """Another thread writes and drains while this thread's operation is open."""
    done = threading.Event()

    def other() -> None:
        storage.write("c", b"other", b"x")
        done.set()

    with storage.operation():
        storage.write("c", b"mine", b"1")
        worker = threading.Thread(target=other)
        worker.start()
        assert done.wait(5)
        worker.join()
        assert drained(storage) == [("c", b"other", b"x")]
    assert drained(storage) == [("c", b"mine", b"1")]


def test_other_threads_writes_are_not_rolled_back(storage: GranularStorage) -> None:
    """A rollback undoes only the failing thread's writes, even on a shared row."""
    def other() -> None:
        storage.write("c", b"shared", b"theirs")
        storage.write("c", b"their-own", b"x")

    with pytest.raises(Boom), storage.operation():
        storage.write("c", b"shared", b"mine")
        worker = threading.Thread(target=other)
        worker.start()
        worker.join()
        raise Boom
    assert storage_rows(storage) == {("c", b"shared"): b"theirs", ("c", b"their-own"): b"x"}


def test_commit_after_a_later_foreign_write_persists_the_foreign_value(
    storage: GranularStorage, vault: Vault
) -> None:
    """When another thread overwrote a row after the operation, the vault ends like memory."""
    def other() -> None:
        storage.write("c", b"shared", b"later")

    with storage.operation():
        storage.write("c", b"shared", b"earlier")
        worker = threading.Thread(target=other)
        worker.start()
        worker.join()
    vault.apply(storage.drain_storage_events())
    assert storage.read("c", b"shared") == b"later"
    assert vault_rows(vault) == storage_rows(storage)


def test_interleaved_operations_of_two_threads_roll_back_independently(
    storage: GranularStorage, vault: Vault
) -> None:
    """Two threads' operations on one row: whichever fails, memory and vault agree."""
    storage.write("c", b"row", b"base")
    a_wrote, b_wrote = threading.Event(), threading.Event()

    def thread_b() -> None:
        with pytest.raises(Boom), storage.operation():
            a_wrote.wait(5)
            storage.write("c", b"row", b"from-b")
            b_wrote.set()
            raise Boom

    worker = threading.Thread(target=thread_b)
    worker.start()
    with storage.operation():
        storage.write("c", b"row", b"from-a")
        a_wrote.set()
        b_wrote.wait(5)
        worker.join()
    vault.apply(storage.drain_storage_events())
    assert storage.read("c", b"row") == b"from-a"
    assert vault_rows(vault) == storage_rows(storage)


def test_an_operation_lands_in_a_single_vault_transaction(
    storage: GranularStorage, flaky: FlakyVault
) -> None:
    """The drainer applies an operation's rows in one batch, never split."""
    drainer = WriteBehindDrainer(storage, flaky)  # type: ignore[arg-type]
    try:
        with storage.operation():
            for i in range(50):
                storage.write("c", b"%d" % i, b"v")
                if i == 25:
                    drainer.flush()
        drainer.flush()
    finally:
        drainer.close()
    assert [len(batch) for batch in flaky.batches] == [50]


def test_ending_an_operation_on_another_thread_is_refused(storage: GranularStorage) -> None:
    """An operation belongs to its thread: closing it elsewhere is a clear error."""
    scope = storage.operation()
    scope.__enter__()
    storage.write("c", b"k", b"v")
    errors: list[BaseException] = []

    def close_elsewhere() -> None:
        try:
            scope.__exit__(None, None, None)
        except RuntimeError as exc:
            errors.append(exc)

    worker = threading.Thread(target=close_elsewhere)
    worker.start()
    worker.join()
    assert len(errors) == 1
    assert storage.pending_events() == 0
    scope.__exit__(None, None, None)
    assert storage.pending_events() == 1
