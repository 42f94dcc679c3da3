"""GranularStorage: the MLS engine's synchronous storage, with a dirty log for the vault.

An MLS engine calls storage synchronously and expects an answer at once, while durable
storage is slow.  ``GranularStorage`` answers every call from in-memory maps (one dict per
category, under one lock) and records each change as a :class:`StorageEvent` in a dirty
log.  A drainer (:mod:`mls.drainer`) later takes the log with
:meth:`~GranularStorage.drain_storage_events` and applies it to the vault in one
transaction.  Data flows one way: engine → storage → dirty log → drainer → vault.

Operations.  OpenMLS commits every write on its own, so a crash between two writes of one
commit leaves a torn epoch.  ``with storage.operation():`` makes the writes of one MLS
operation a unit: none of its events can be drained before the block ends, all of them
are drained together (so they land in one vault transaction), and if the block raises,
memory is rolled back and the events are discarded.  Operations nest (an inner block is a
savepoint) and belong to the thread that opened them.  Other threads are never blocked
by an operation: their writes are standalone units, drained as usual.  Reads see every
write at once, including writes of other threads' open operations (read-uncommitted);
engines serialize work per group, so this only matters for callers that share a row
across threads.

Each row touched by an open operation keeps a short history (its value before, then
every later write, tagged with its writer); it is what makes a rollback exact even when
another thread wrote the same row meanwhile, and it is dropped when the last operation
touching the row ends.  Rows no operation touches cost nothing extra.

Backpressure.  The log is bounded (events and bytes).  When a write finds it full, the
``"flush"`` policy (default) makes the writer flush through the attached drainer
synchronously; the ``"raise"`` policy raises :class:`BackpressureError`.  Either way, if
the log cannot be emptied, the write fails and nothing changes, so memory cannot grow
without limit while the disk is gone.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Literal, NamedTuple

from keystore.vault import MAX_KEY_LEN, MAX_VALUE_LEN, check_category
from mls import categories as cat
from mls.categories import (
    decode_list,
    encode_list,
    epoch_key_pairs_key,
    queued_proposal_key,
)
from mls.errors import MlsError
from mls.provider import StorageProvider

if TYPE_CHECKING:
    from keystore.vault import RowVault

__all__ = [
    "DEFAULT_MAX_PENDING_BYTES",
    "DEFAULT_MAX_PENDING_EVENTS",
    "BackpressureError",
    "BackpressurePolicy",
    "GranularStorage",
    "StorageEvent",
    "StorageNotEmpty",
    "StorageProvider",
]

BackpressurePolicy = Literal["flush", "raise"]
DEFAULT_MAX_PENDING_EVENTS = 1_000_000
DEFAULT_MAX_PENDING_BYTES = 256 * 1024 * 1024
_NEVER = 1 << 62


class StorageEvent(NamedTuple):
    """One change in the dirty log; ``value=None`` deletes the row.

    ``seq`` increases along the log, so a drained batch can be put back in order.
    It has ``category``/``key``/``value``, so a batch passes straight to
    :meth:`keystore.Vault.apply`.
    """

    seq: int
    category: str
    key: bytes
    value: bytes | None

    def __repr__(self) -> str:
        # Row values are MLS secrets (keys, ratchets): a repr names the row, never its value.
        shown = "None" if self.value is None else f"<{len(self.value)} bytes>"
        return (
            f"StorageEvent(seq={self.seq}, category={self.category!r}, key={self.key!r}, "
            f"value={shown})"
        )


class StorageNotEmpty(MlsError):
    """Rehydrating was refused: the storage already holds state or pending changes.

    Loading vault rows over live state is how a restore erases a group joined a moment
    earlier; the only way to rehydrate is into a fresh storage (:meth:`GranularStorage.load`).
    """


class BackpressureError(MlsError):
    """The dirty log is full and could not be flushed; the write was not made."""


# A raw log entry: (seq, category, key, value).  Plain tuples keep the hot path cheap;
# they become StorageEvents when drained.  A unit of several events (a committed
# operation, a requeued batch) sits in the log as one list, so no drain can split it.
_Entry = tuple[int, str, bytes, bytes | None]
_Unit = _Entry | list[_Entry]
_Row = tuple[str, bytes]


def _entry_bytes(entry: _Entry) -> int:
    return len(entry[2]) + (0 if entry[3] is None else len(entry[3]))


class _Operation:
    """One thread's open operation (all its nesting levels)."""

    __slots__ = ("depth", "marks", "open", "touched", "writes")

    def __init__(self) -> None:
        self.depth = 0
        self.open = True
        self.writes = 0  # count of this operation's history entries, for savepoints
        self.marks: list[int] = []  # ``writes`` at the start of each inner level
        self.touched: dict[_Row, None] = {}  # rows written, in first-write order


# (writer or None for a standalone write or the value before, writer's count, value).
# A row's history starts with the value it had before the first open operation wrote it.
_HistoryEntry = tuple[_Operation | None, int, bytes | None]


def _held_open(history: list[_HistoryEntry]) -> bool:
    """Whether an open operation still has a write in this history."""
    return any(writer is not None and writer.open for writer, _, _ in history)


class _OperationScope:
    """The context manager :meth:`GranularStorage.operation` returns."""

    __slots__ = ("_storage",)

    def __init__(self, storage: GranularStorage) -> None:
        self._storage = storage

    def __enter__(self) -> None:
        self._storage._begin()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._storage._end(committed=exc_type is None)


def _reject(key: object, value: object) -> None:
    """Explain why a key/value pair was refused (the hot path only checks cheaply)."""
    for what, obj, limit in (("row key", key, MAX_KEY_LEN), ("value", value, MAX_VALUE_LEN)):
        if not isinstance(obj, bytes):
            raise TypeError(f"{what} must be bytes, not {type(obj).__name__}")
        if len(obj) > limit:
            raise ValueError(f"{what} is {len(obj)} bytes; the limit is {limit}")


def _flatten(units: Iterable[_Unit]) -> Iterator[_Entry]:
    for unit in units:
        if isinstance(unit, list):
            yield from unit
        else:
            yield unit


def _check_bytes(name: str, obj: object) -> bytes:
    if not isinstance(obj, bytes):
        raise TypeError(f"{name} must be bytes, not {type(obj).__name__}")
    return obj


class GranularStorage:
    """In-memory MLS storage with a dirty log; implements :class:`StorageProvider`.

    Thread-safe.  Every call is O(1) except appends to a list-valued row, which are
    O(list).  See the module docstring for operations and backpressure.

    Args:
        max_pending_events: bound on the events waiting in the dirty log.
        max_pending_bytes: bound on their keys and values, in bytes.
        backpressure: ``"flush"`` (flush in the writer through the attached drainer) or
            ``"raise"`` (raise :class:`BackpressureError`) when a bound is reached.
    """

    def __init__(
        self,
        *,
        max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        backpressure: BackpressurePolicy = "flush",
    ) -> None:
        if backpressure not in ("flush", "raise"):
            raise ValueError('backpressure must be "flush" or "raise"')
        for name, bound in (
            ("max_pending_events", max_pending_events),
            ("max_pending_bytes", max_pending_bytes),
        ):
            if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
                raise ValueError(f"{name} must be a positive int")
        self._lock = threading.RLock()
        self._maps: dict[str, dict[bytes, bytes]] = {}
        self._log: deque[_Unit] = deque()  # deque: bounded drains pop from the front
        self._grouped = 0  # events in the log beyond the first of each multi-event unit
        self._seq = itertools.count(1)
        self._pending_bytes = 0
        self._ops: dict[int, _Operation] = {}
        self._history: dict[_Row, list[_HistoryEntry]] = {}
        self._loaded = False
        self._max_events = max_pending_events
        self._max_bytes = max_pending_bytes
        self._policy: BackpressurePolicy = backpressure
        self._wake: Callable[[], None] | None = None
        self._flush: Callable[[], object] | None = None
        self._wake_threshold = _NEVER  # pending events that wake the drainer, minus one
        self._wake_at = _NEVER  # the same, or _NEVER once woken until the next drain
        # The hot path compares len(self._log) (units) with this; it folds in the
        # events grouped into units, so the comparison is in events.
        self._attention_at = max_pending_events

    # ------------------------------------------------------------------ generic rows

    def write(self, category: str, key: bytes, value: bytes) -> None:
        """Set a row and log the change.  The engine's hot path: keep it lean.

        Raises:
            TypeError/ValueError: not bytes, too long, or a bad category name.
            BackpressureError: the dirty log is full and could not be flushed.
        """
        if (
            key.__class__ is not bytes
            or value.__class__ is not bytes
            or len(key) > MAX_KEY_LEN
            or len(value) > MAX_VALUE_LEN
        ):
            _reject(key, value)
        if len(self._log) >= self._attention_at or self._pending_bytes >= self._max_bytes:
            self._attend()
        with self._lock:
            rows = self._maps.get(category)
            if rows is None:
                rows = self._new_category(category)
            if self._ops:
                self._record(category, key, value, rows)
                return
            rows[key] = value
            self._log.append((next(self._seq), category, key, value))
            self._pending_bytes += len(key) + len(value)

    def delete(self, category: str, key: bytes) -> None:
        """Delete a row if present (and log it); deleting an absent row changes nothing."""
        if key.__class__ is not bytes:
            _reject(key, b"")
        if len(self._log) >= self._attention_at or self._pending_bytes >= self._max_bytes:
            self._attend()
        with self._lock:
            self._put_locked(category, key, None)

    def read(self, category: str, key: bytes) -> bytes | None:
        """The row's value, or ``None``."""
        with self._lock:
            rows = self._maps.get(category)
            if rows is None:
                check_category(category)
                return None
            return rows.get(key)

    def keys(self, category: str) -> list[bytes]:
        """The keys a category holds (insertion order); ``[]`` for an unknown category."""
        with self._lock:
            rows = self._maps.get(category)
            return [] if rows is None else list(rows)

    def items(self, category: str) -> list[tuple[bytes, bytes]]:
        """The ``(key, value)`` rows of a category (insertion order)."""
        with self._lock:
            rows = self._maps.get(category)
            return [] if rows is None else list(rows.items())

    def categories(self) -> list[str]:
        """The categories holding at least one row, sorted."""
        with self._lock:
            return sorted(name for name, rows in self._maps.items() if rows)

    def _new_category(self, category: str) -> dict[bytes, bytes]:
        rows: dict[bytes, bytes] = {}
        self._maps[check_category(category)] = rows
        return rows

    def _put_locked(self, category: str, key: bytes, value: bytes | None) -> None:
        """Write (``value`` set) or delete one row; the caller holds the lock."""
        if value is not None:
            if key.__class__ is not bytes or value.__class__ is not bytes:
                _reject(key, value)
            if len(key) > MAX_KEY_LEN or len(value) > MAX_VALUE_LEN:
                _reject(key, value)
        elif key.__class__ is not bytes:
            _reject(key, b"")
        rows = self._maps.get(category)
        if rows is None:
            if value is None:
                check_category(category)
                return
            rows = self._new_category(category)
        if value is None and key not in rows:
            return
        if self._ops:
            self._record(category, key, value, rows)
            return
        if value is None:
            del rows[key]
            self._pending_bytes += len(key)
        else:
            rows[key] = value
            self._pending_bytes += len(key) + len(value)
        self._log.append((next(self._seq), category, key, value))

    def _record(
        self, category: str, key: bytes, value: bytes | None, rows: dict[bytes, bytes]
    ) -> None:
        """A write while some operation is open (lock held): keep row histories exact."""
        row = (category, key)
        history = self._history.get(row)
        op = self._ops.get(threading.get_ident())
        if op is None:
            if history is not None:
                history.append((None, 0, value))
            self._log.append((next(self._seq), category, key, value))
            self._pending_bytes += len(key) + (0 if value is None else len(value))
        else:
            if history is None:
                history = self._history[row] = [(None, 0, rows.get(key))]
            op.touched[row] = None
            op.writes += 1
            history.append((op, op.writes, value))
        if value is None:
            rows.pop(key, None)
        else:
            rows[key] = value

    # ------------------------------------------------------------------ operations

    def operation(self) -> _OperationScope:
        """Group the writes of one MLS operation: drained together, rolled back on error.

        Use as ``with storage.operation(): ...``.  Nested blocks are savepoints: an inner
        block that raises undoes only its own writes.  The operation belongs to the
        calling thread; other threads' writes stay standalone units.
        """
        return _OperationScope(self)

    def _begin(self) -> None:
        with self._lock:
            tid = threading.get_ident()
            op = self._ops.get(tid)
            if op is None:
                op = self._ops[tid] = _Operation()
            else:
                op.marks.append(op.writes)
            op.depth += 1

    def _end(self, *, committed: bool) -> None:
        with self._lock:
            tid = threading.get_ident()
            op = self._ops.get(tid)
            if op is None:
                raise RuntimeError("an operation must end on the thread that opened it")
            op.depth -= 1
            if op.depth:
                mark = op.marks.pop()
                if not committed:
                    self._undo(op, mark)
                return
            del self._ops[tid]
            op.open = False
            if not committed:
                self._undo(op, 0)
                return
            self._commit(op)
        if self.pending_events() >= self._wake_at:
            self._wake_if_due()

    def _undo(self, op: _Operation, mark: int) -> None:
        """Drop ``op``'s writes numbered above ``mark``; each row takes its last remaining value.

        A row's history is dropped once no open operation has a write left in it.
        """
        for row in op.touched:
            history = self._history.get(row)
            if history is None:  # released: a savepoint already dropped op's writes here
                continue
            kept = [e for e in history if e[0] is not op or e[1] <= mark]
            if len(kept) != len(history):
                value = kept[-1][2]
                rows = self._maps[row[0]]
                if value is None:
                    rows.pop(row[1], None)
                else:
                    rows[row[1]] = value
            if _held_open(kept):
                self._history[row] = kept
            else:
                del self._history[row]

    def _commit(self, op: _Operation) -> None:
        """Log one event per row ``op`` touched, carrying the row's last committed value.

        That value is ``op``'s own last write unless another thread wrote the row later;
        then it is that later write, so the vault never ends older than memory.
        """
        seq = self._seq
        unit: list[_Entry] = []
        for row in op.touched:
            history = self._history.get(row)
            if history is None:  # no open operation holds it: memory is committed
                value = self._maps[row[0]].get(row[1])
            else:
                value = None
                for writer, _, entry_value in reversed(history):
                    if writer is None or not writer.open:
                        value = entry_value
                        break
                if not _held_open(history):
                    del self._history[row]
            unit.append((next(seq), row[0], row[1], value))
        self._push_unit(unit, front=False)

    def _push_unit(self, unit: list[_Entry], *, front: bool) -> None:
        """Add events that must be drained together (lock held)."""
        if not unit:
            return
        item: _Unit = unit[0] if len(unit) == 1 else unit
        if front:
            self._log.appendleft(item)
        else:
            self._log.append(item)
        self._grouped += len(unit) - 1
        self._pending_bytes += sum(map(_entry_bytes, unit))
        self._refresh_attention()

    def _refresh_attention(self) -> None:
        self._attention_at = min(self._wake_at, self._max_events) - self._grouped

    # ------------------------------------------------------------------ dirty log

    def drain_storage_events(self, max_events: int | None = None) -> list[StorageEvent]:
        """Take the events of completed operations and standalone writes, in order.

        Events of a still-open operation stay behind (they are not in the log yet), and
        the events of one operation are always taken together, so a batch never holds
        part of an operation.  The caller owns the batch: apply it, or give it back
        with :meth:`requeue`.

        Args:
            max_events: take whole units from the front until at least this many events
                are taken (one unit may overshoot it); ``None`` takes everything.
        """
        # tuple.__new__ directly: a third cheaper than StorageEvent._make per event.
        new = tuple.__new__
        return [new(StorageEvent, entry) for entry in self._drain_entries(max_events)]

    def _drain_entries(self, max_events: int | None = None) -> list[_Entry]:
        """:meth:`drain_storage_events` as plain ``(seq, category, key, value)`` tuples.

        The drainers use this: plain tuples of bytes and str leave the garbage
        collector's view at its first pass, while a batch of ``StorageEvent``
        objects (a tuple subclass) stays tracked and, held through a transaction,
        gets promoted and ends up triggering full collections (milliseconds with
        the GIL held, which an event loop feels as lag).
        """
        with self._lock:
            log = self._log
            if not log:
                return []
            if max_events is None or self.pending_events() <= max_events:
                taken: Iterable[_Unit] = log
                flat = not self._grouped
                self._log = deque()
                self._grouped = 0
                self._pending_bytes = 0
            else:
                if max_events < 1:
                    raise ValueError("max_events must be positive")
                front: list[_Unit] = []
                count = 0
                pop = log.popleft
                while count < max_events:
                    unit = pop()
                    front.append(unit)
                    count += len(unit) if type(unit) is list else 1
                taken = front
                flat = count == len(front)
                self._grouped -= count - len(front)
                self._pending_bytes -= sum(map(_entry_bytes, _flatten(front)))
            self._wake_at = self._wake_threshold
            self._refresh_attention()
        return list(taken) if flat else list(_flatten(taken))  # type: ignore[arg-type]

    def requeue(self, events: Iterable[StorageEvent]) -> None:
        """Put a drained batch back at the front of the log (its apply failed).

        The batch becomes one unit: it was drained together and will be again.

        Raises:
            ValueError: the batch is not older than the events now pending, i.e. it is
                not the batch drained last.
        """
        self._requeue_entries([(e.seq, e.category, e.key, e.value) for e in events])

    def _requeue_entries(self, batch: list[_Entry]) -> None:
        """:meth:`requeue` for a batch taken with :meth:`_drain_entries`."""
        if not batch:
            return
        with self._lock:
            if self._log:
                first = self._log[0]
                first_seq = first[0][0] if isinstance(first, list) else first[0]
                if batch[-1][0] >= first_seq:
                    raise ValueError("requeued events must be older than the pending ones")
            self._push_unit(list(batch), front=True)

    def pending_events(self) -> int:
        """How many events wait in the dirty log (open operations not counted)."""
        return len(self._log) + self._grouped

    def pending_bytes(self) -> int:
        """Bytes of keys and values waiting in the dirty log."""
        return self._pending_bytes

    # ------------------------------------------------------------------ drainer hooks

    def _attach(
        self, *, wake: Callable[[], None], flush: Callable[[], object], threshold: int
    ) -> None:
        """Let a drainer be woken at ``threshold`` pending events and flush under pressure."""
        with self._lock:
            if self._wake is not None:
                raise RuntimeError("a drainer is already attached to this storage")
            self._wake, self._flush = wake, flush
            # Checked before a write appends: finding threshold-1 pending means the
            # write about to be logged makes it threshold.
            self._wake_threshold = self._wake_at = max(1, threshold) - 1
            self._refresh_attention()

    def _detach(self, wake: Callable[[], None]) -> None:
        with self._lock:
            if self._wake is wake:
                self._wake = self._flush = None
                self._wake_threshold = self._wake_at = _NEVER
                self._refresh_attention()

    def _attend(self) -> None:
        """Slow path of a write that found the log at a threshold (lock not held)."""
        pending = self.pending_events()
        if pending >= self._max_events or self._pending_bytes >= self._max_bytes:
            flush = self._flush
            if self._policy == "raise" or flush is None:
                raise BackpressureError(
                    f"dirty log is full ({pending} events, {self._pending_bytes} bytes)"
                    + ("" if flush is not None else "; no drainer is attached")
                )
            try:
                flush()
            except Exception as exc:
                raise BackpressureError(
                    f"dirty log is full and flushing it failed ({type(exc).__name__})"
                ) from exc
            return
        self._wake_if_due()

    def _wake_if_due(self) -> None:
        """Wake the attached drainer once per drain when the log reaches its threshold."""
        wake = None
        with self._lock:
            if self.pending_events() >= self._wake_at:
                wake = self._wake
                self._wake_at = _NEVER
                self._refresh_attention()
        if wake is not None:
            wake()

    # ------------------------------------------------------------------ rehydrate

    @classmethod
    def load(
        cls,
        vault: RowVault,
        *,
        max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        backpressure: BackpressurePolicy = "flush",
    ) -> GranularStorage:
        """A new storage holding every row of an unlocked vault (all categories).

        Raises:
            VaultLocked, VaultClosed, IntegrityError: from the vault; nothing is loaded.
        """
        storage = cls(
            max_pending_events=max_pending_events,
            max_pending_bytes=max_pending_bytes,
            backpressure=backpressure,
        )
        storage.rehydrate(vault)
        return storage

    def rehydrate(self, vault: RowVault) -> None:
        """Fill a fresh storage from the vault; refused once it has held anything.

        Raises:
            StorageNotEmpty: the storage was written to, loaded, or has an open operation.
        """
        self._check_fresh()
        maps = vault.open_rows()
        with self._lock:
            self._check_fresh()
            self._maps = maps
            self._loaded = True

    def _check_fresh(self) -> None:
        with self._lock:
            if self._maps or self._log or self._ops or self._loaded:
                raise StorageNotEmpty(
                    "refusing to rehydrate a storage that already holds state or pending "
                    "changes: it would overwrite them; load into a new GranularStorage"
                )

    # ================================================================ OpenMLS provider
    # The 53 methods of StorageProvider<1>.  Group-keyed values are one row per group;
    # the layout of every category is in mls.categories and docs/storage.md.
    # The writes call write() directly: it already refuses non-bytes keys and values
    # (TypeError) before touching anything, and a second check per call would cost
    # the engine's hot path a quarter of its time.

    def _get(self, category: str, key: bytes) -> bytes | None:
        return self.read(category, _check_bytes("key", key))

    def _del(self, category: str, key: bytes) -> None:
        self.delete(category, _check_bytes("key", key))

    def _pressure_check(self) -> None:
        if len(self._log) >= self._attention_at or self._pending_bytes >= self._max_bytes:
            self._attend()

    # ---- writes (17)

    def write_mls_join_config(self, group_id: bytes, config: bytes) -> None:
        """Store the group's ``MlsGroupJoinConfig``."""
        self.write(cat.MLS_JOIN_CONFIG, group_id, config)

    def append_own_leaf_node(self, group_id: bytes, leaf_node: bytes) -> None:
        """Append one of our own leaf nodes to the group's list (O(list))."""
        _check_bytes("group_id", group_id)
        _check_bytes("leaf_node", leaf_node)
        self._pressure_check()
        with self._lock:  # read-modify-write: concurrent appends must not lose one
            nodes = decode_list(self.read(cat.OWN_LEAF_NODES, group_id))
            nodes.append(leaf_node)
            self._put_locked(cat.OWN_LEAF_NODES, group_id, encode_list(nodes))

    def queue_proposal(self, group_id: bytes, proposal_ref: bytes, proposal: bytes) -> None:
        """Store a proposal by reference and append the reference to the group's queue.

        Queueing a reference that is already queued replaces its proposal and keeps its
        place.  The two rows change as one unit.
        """
        _check_bytes("group_id", group_id)
        _check_bytes("proposal_ref", proposal_ref)
        _check_bytes("proposal", proposal)
        self._pressure_check()
        with self._lock, self.operation():
            refs = decode_list(self.read(cat.PROPOSAL_QUEUE, group_id))
            if proposal_ref not in refs:
                refs.append(proposal_ref)
                self._put_locked(cat.PROPOSAL_QUEUE, group_id, encode_list(refs))
            self._put_locked(
                cat.QUEUED_PROPOSAL, queued_proposal_key(group_id, proposal_ref), proposal
            )

    def write_tree(self, group_id: bytes, tree: bytes) -> None:
        """Store the group's ``TreeSync``."""
        self.write(cat.TREE, group_id, tree)

    def write_interim_transcript_hash(
        self, group_id: bytes, interim_transcript_hash: bytes
    ) -> None:
        """Store the group's interim transcript hash."""
        self.write(cat.INTERIM_TRANSCRIPT_HASH, group_id, interim_transcript_hash)

    def write_context(self, group_id: bytes, group_context: bytes) -> None:
        """Store the group's ``GroupContext``."""
        self.write(cat.GROUP_CONTEXT, group_id, group_context)

    def write_confirmation_tag(self, group_id: bytes, confirmation_tag: bytes) -> None:
        """Store the group's confirmation tag."""
        self.write(cat.CONFIRMATION_TAG, group_id, confirmation_tag)

    def write_group_state(self, group_id: bytes, group_state: bytes) -> None:
        """Store the group's ``MlsGroupState``."""
        self.write(cat.GROUP_STATE, group_id, group_state)

    def write_message_secrets(self, group_id: bytes, message_secrets: bytes) -> None:
        """Store the group's ``MessageSecretsStore``."""
        self.write(cat.MESSAGE_SECRETS, group_id, message_secrets)

    def write_resumption_psk_store(self, group_id: bytes, resumption_psk_store: bytes) -> None:
        """Store the group's ``ResumptionPskStore``."""
        self.write(cat.RESUMPTION_PSK_STORE, group_id, resumption_psk_store)

    def write_own_leaf_index(self, group_id: bytes, own_leaf_index: bytes) -> None:
        """Store our leaf index in the group."""
        self.write(cat.OWN_LEAF_INDEX, group_id, own_leaf_index)

    def write_group_epoch_secrets(self, group_id: bytes, group_epoch_secrets: bytes) -> None:
        """Store the group's ``GroupEpochSecrets``."""
        self.write(cat.GROUP_EPOCH_SECRETS, group_id, group_epoch_secrets)

    def write_signature_key_pair(self, public_key: bytes, signature_key_pair: bytes) -> None:
        """Store a signature key pair under its public key."""
        self.write(cat.SIGNATURE_KEY_PAIR, public_key, signature_key_pair)

    def write_encryption_key_pair(self, public_key: bytes, key_pair: bytes) -> None:
        """Store an HPKE key pair (update leaf nodes) under its public key."""
        self.write(cat.ENCRYPTION_KEY_PAIR, public_key, key_pair)

    def write_encryption_epoch_key_pairs(
        self, group_id: bytes, epoch: bytes, leaf_index: int, key_pairs: list[bytes]
    ) -> None:
        """Replace the HPKE key pairs of one (group, epoch, leaf index)."""
        self.write(
            cat.ENCRYPTION_EPOCH_KEY_PAIRS,
            epoch_key_pairs_key(group_id, epoch, leaf_index),
            encode_list(key_pairs),
        )

    def write_key_package(self, hash_ref: bytes, key_package: bytes) -> None:
        """Store a key package (with its private init key) under its hash reference."""
        self.write(cat.KEY_PACKAGE, hash_ref, key_package)

    def write_psk(self, psk_id: bytes, psk_bundle: bytes) -> None:
        """Store a PSK bundle under its id."""
        self.write(cat.PSK, psk_id, psk_bundle)

    # ---- reads (18)

    def mls_group_join_config(self, group_id: bytes) -> bytes | None:
        """The group's ``MlsGroupJoinConfig``, or ``None``."""
        return self._get(cat.MLS_JOIN_CONFIG, group_id)

    def own_leaf_nodes(self, group_id: bytes) -> list[bytes]:
        """Our own leaf nodes in the group, in append order (``[]`` if none)."""
        return decode_list(self._get(cat.OWN_LEAF_NODES, group_id))

    def queued_proposal_refs(self, group_id: bytes) -> list[bytes]:
        """The references in the group's proposal queue, in queue order."""
        return decode_list(self._get(cat.PROPOSAL_QUEUE, group_id))

    def queued_proposals(self, group_id: bytes) -> list[tuple[bytes, bytes]]:
        """``(reference, proposal)`` for every queued proposal, in queue order."""
        with self._lock:
            out = []
            for ref in decode_list(self._get(cat.PROPOSAL_QUEUE, group_id)):
                proposal = self.read(cat.QUEUED_PROPOSAL, queued_proposal_key(group_id, ref))
                if proposal is None:
                    raise ValueError("the proposal queue names a proposal that is not stored")
                out.append((ref, proposal))
            return out

    def tree(self, group_id: bytes) -> bytes | None:
        """The group's ``TreeSync``, or ``None``."""
        return self._get(cat.TREE, group_id)

    def group_context(self, group_id: bytes) -> bytes | None:
        """The group's ``GroupContext``, or ``None``."""
        return self._get(cat.GROUP_CONTEXT, group_id)

    def interim_transcript_hash(self, group_id: bytes) -> bytes | None:
        """The group's interim transcript hash, or ``None``."""
        return self._get(cat.INTERIM_TRANSCRIPT_HASH, group_id)

    def confirmation_tag(self, group_id: bytes) -> bytes | None:
        """The group's confirmation tag, or ``None``."""
        return self._get(cat.CONFIRMATION_TAG, group_id)

    def group_state(self, group_id: bytes) -> bytes | None:
        """The group's ``MlsGroupState``, or ``None``."""
        return self._get(cat.GROUP_STATE, group_id)

    def message_secrets(self, group_id: bytes) -> bytes | None:
        """The group's ``MessageSecretsStore``, or ``None``."""
        return self._get(cat.MESSAGE_SECRETS, group_id)

    def resumption_psk_store(self, group_id: bytes) -> bytes | None:
        """The group's ``ResumptionPskStore``, or ``None``."""
        return self._get(cat.RESUMPTION_PSK_STORE, group_id)

    def own_leaf_index(self, group_id: bytes) -> bytes | None:
        """Our leaf index in the group, or ``None``."""
        return self._get(cat.OWN_LEAF_INDEX, group_id)

    def group_epoch_secrets(self, group_id: bytes) -> bytes | None:
        """The group's ``GroupEpochSecrets``, or ``None``."""
        return self._get(cat.GROUP_EPOCH_SECRETS, group_id)

    def signature_key_pair(self, public_key: bytes) -> bytes | None:
        """The signature key pair of a public key, or ``None``."""
        return self._get(cat.SIGNATURE_KEY_PAIR, public_key)

    def encryption_key_pair(self, public_key: bytes) -> bytes | None:
        """The HPKE key pair of a public key, or ``None``."""
        return self._get(cat.ENCRYPTION_KEY_PAIR, public_key)

    def encryption_epoch_key_pairs(
        self, group_id: bytes, epoch: bytes, leaf_index: int
    ) -> list[bytes]:
        """The HPKE key pairs of one (group, epoch, leaf index), or ``[]``."""
        key = epoch_key_pairs_key(group_id, epoch, leaf_index)
        return decode_list(self.read(cat.ENCRYPTION_EPOCH_KEY_PAIRS, key))

    def key_package(self, hash_ref: bytes) -> bytes | None:
        """The key package with this hash reference, or ``None``."""
        return self._get(cat.KEY_PACKAGE, hash_ref)

    def psk(self, psk_id: bytes) -> bytes | None:
        """The PSK bundle with this id, or ``None``."""
        return self._get(cat.PSK, psk_id)

    # ---- deletes (18)

    def remove_proposal(self, group_id: bytes, proposal_ref: bytes) -> None:
        """Remove one proposal from the group's queue (both rows as one unit)."""
        _check_bytes("group_id", group_id)
        _check_bytes("proposal_ref", proposal_ref)
        self._pressure_check()
        with self._lock, self.operation():
            refs = decode_list(self.read(cat.PROPOSAL_QUEUE, group_id))
            if proposal_ref in refs:
                refs.remove(proposal_ref)
                self._put_locked(
                    cat.PROPOSAL_QUEUE, group_id, encode_list(refs) if refs else None
                )
            self._put_locked(cat.QUEUED_PROPOSAL, queued_proposal_key(group_id, proposal_ref), None)

    def delete_own_leaf_nodes(self, group_id: bytes) -> None:
        """Delete all of our own leaf nodes in the group."""
        self._del(cat.OWN_LEAF_NODES, group_id)

    def delete_group_config(self, group_id: bytes) -> None:
        """Delete the group's ``MlsGroupJoinConfig``."""
        self._del(cat.MLS_JOIN_CONFIG, group_id)

    def delete_tree(self, group_id: bytes) -> None:
        """Delete the group's tree."""
        self._del(cat.TREE, group_id)

    def delete_confirmation_tag(self, group_id: bytes) -> None:
        """Delete the group's confirmation tag."""
        self._del(cat.CONFIRMATION_TAG, group_id)

    def delete_group_state(self, group_id: bytes) -> None:
        """Delete the group's ``MlsGroupState``."""
        self._del(cat.GROUP_STATE, group_id)

    def delete_context(self, group_id: bytes) -> None:
        """Delete the group's ``GroupContext``."""
        self._del(cat.GROUP_CONTEXT, group_id)

    def delete_interim_transcript_hash(self, group_id: bytes) -> None:
        """Delete the group's interim transcript hash."""
        self._del(cat.INTERIM_TRANSCRIPT_HASH, group_id)

    def delete_message_secrets(self, group_id: bytes) -> None:
        """Delete the group's ``MessageSecretsStore``."""
        self._del(cat.MESSAGE_SECRETS, group_id)

    def delete_all_resumption_psk_secrets(self, group_id: bytes) -> None:
        """Delete the group's ``ResumptionPskStore``."""
        self._del(cat.RESUMPTION_PSK_STORE, group_id)

    def delete_own_leaf_index(self, group_id: bytes) -> None:
        """Delete our leaf index in the group."""
        self._del(cat.OWN_LEAF_INDEX, group_id)

    def delete_group_epoch_secrets(self, group_id: bytes) -> None:
        """Delete the group's ``GroupEpochSecrets``."""
        self._del(cat.GROUP_EPOCH_SECRETS, group_id)

    def clear_proposal_queue(self, group_id: bytes) -> None:
        """Remove every proposal from the group's queue (all rows as one unit)."""
        _check_bytes("group_id", group_id)
        self._pressure_check()
        with self._lock, self.operation():
            for ref in decode_list(self.read(cat.PROPOSAL_QUEUE, group_id)):
                self._put_locked(cat.QUEUED_PROPOSAL, queued_proposal_key(group_id, ref), None)
            self._put_locked(cat.PROPOSAL_QUEUE, group_id, None)

    def delete_signature_key_pair(self, public_key: bytes) -> None:
        """Delete the signature key pair of a public key."""
        self._del(cat.SIGNATURE_KEY_PAIR, public_key)

    def delete_encryption_key_pair(self, public_key: bytes) -> None:
        """Delete the HPKE key pair of a public key."""
        self._del(cat.ENCRYPTION_KEY_PAIR, public_key)

    def delete_encryption_epoch_key_pairs(
        self, group_id: bytes, epoch: bytes, leaf_index: int
    ) -> None:
        """Delete the HPKE key pairs of one (group, epoch, leaf index)."""
        key = epoch_key_pairs_key(group_id, epoch, leaf_index)
        self.delete(cat.ENCRYPTION_EPOCH_KEY_PAIRS, key)

    def delete_key_package(self, hash_ref: bytes) -> None:
        """Delete a key package (not its encryption key pair)."""
        self._del(cat.KEY_PACKAGE, hash_ref)

    def delete_psk(self, psk_id: bytes) -> None:
        """Delete a PSK bundle."""
        self._del(cat.PSK, psk_id)
