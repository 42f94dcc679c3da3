"""Where the dirty log is drained: write-behind from GranularStorage to the vault.

A drainer takes a batch with :meth:`GranularStorage.drain_storage_events` and applies it
with :meth:`keystore.Vault.apply`: one transaction, durable when ``apply`` returns (the
vault's default ``synchronous=FULL``).  If ``apply`` fails the batch goes back to the
front of the log (:meth:`GranularStorage.requeue`), the failure is reported, and the
background loop retries with exponential backoff; the engine keeps reading and writing
memory meanwhile, up to the storage's backpressure bound.

:class:`WriteBehindDrainer` flushes on a thread; :class:`AsyncDrainer` does the same for
asyncio, running every blocking step on its own worker thread so the event loop never
waits on the disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from keystore.errors import KeystoreError
from mls.storage import StorageEvent

if TYPE_CHECKING:
    from keystore.vault import RowVault
    from mls.storage import GranularStorage

__all__ = [
    "DEFAULT_ASYNC_BATCH_EVENTS",
    "DEFAULT_INTERVAL",
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_THRESHOLD",
    "AsyncDrainer",
    "WriteBehindDrainer",
]

logger = logging.getLogger("mls.drainer")

#: Seconds between background flushes when nothing else triggers one.
DEFAULT_INTERVAL = 0.05
#: Pending events that wake the background flush before the interval ends.
DEFAULT_THRESHOLD = 4096
#: Longest wait between retries after failures.
DEFAULT_MAX_BACKOFF = 5.0
#: AsyncDrainer's transaction size: small enough that no single GIL-holding step of
#: Vault.apply stalls the event loop for long.
DEFAULT_ASYNC_BATCH_EVENTS = 2048

#: Seconds AsyncDrainer's worker sleeps before taking each transaction from the log:
#: the GIL is free for that moment, so a loop waiting for it runs now rather than
#: after the switch interval, and the worker's longest stretch of Python without a
#: release stops at the first slice ``Vault.apply(yield_gil=True)`` pauses before.
_TRANSACTION_PAUSE = 0.0001

ErrorCallback = Callable[[BaseException], None]

#: A drained ``(seq, category, key, value)`` tuple as the StorageEvent it is.
_as_event: Callable[[tuple[int, str, bytes, bytes | None]], StorageEvent] = functools.partial(
    tuple.__new__, StorageEvent
)


def _describe(exc: BaseException) -> str:
    """The error for a log line: keystore messages carry no secrets, others only a type."""
    if isinstance(exc, KeystoreError):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


class _Flusher:
    """One-at-a-time drain → apply → (requeue on failure), shared by both drainers."""

    def __init__(
        self,
        storage: GranularStorage,
        vault: RowVault,
        *,
        interval: float,
        threshold: int,
        max_backoff: float,
        on_error: ErrorCallback | None,
        wake: Callable[[], None],
        max_batch_events: int | None,
        yield_gil: bool = False,
    ) -> None:
        if max_batch_events is not None and (
            isinstance(max_batch_events, bool)
            or not isinstance(max_batch_events, int)
            or max_batch_events < 1
        ):
            raise ValueError("max_batch_events must be a positive int or None")
        if not interval > 0:
            raise ValueError("interval must be positive")
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise ValueError("threshold must be a positive int")
        if max_backoff < interval:
            raise ValueError("max_backoff must be at least interval")
        self.storage = storage
        self.vault = vault
        self.interval = interval
        self.max_backoff = max_backoff
        self.on_error = on_error
        self.max_batch_events = max_batch_events
        self.yield_gil = yield_gil
        self.lock = threading.Lock()
        self.persisted = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.last_error: BaseException | None = None
        self.wake = wake
        storage._attach(wake=wake, flush=self.flush, threshold=threshold)

    def flush(self, *, yield_gil: bool = False) -> int:
        """Persist everything pending; raise (after requeueing) if the vault refuses.

        With ``max_batch_events`` the events pending at the start are applied in
        several transactions of whole units, front first; events written meanwhile
        are left to the next flush, so a busy writer cannot keep a flush running.
        ``yield_gil`` pauses as a drainer built with it does, for this flush only.
        """
        yield_gil = yield_gil or self.yield_gil
        with self.lock:
            storage, limit = self.storage, self.max_batch_events
            target = storage.pending_events()
            done = 0
            while done < target:
                if yield_gil:
                    time.sleep(_TRANSACTION_PAUSE)
                entries = storage._drain_entries(limit)
                if not entries:
                    break
                try:
                    # One short-lived StorageEvent per row as apply reads it: a whole
                    # batch of them would stay tracked by the garbage collector.
                    if yield_gil:
                        self.vault.apply(map(_as_event, entries), yield_gil=True)
                    else:
                        self.vault.apply(map(_as_event, entries))
                except BaseException:
                    storage._requeue_entries(entries)
                    raise
                done += len(entries)
                self.persisted += len(entries)
            return done

    def succeeded(self) -> None:
        self.consecutive_failures = 0

    def failed(self, exc: BaseException) -> float:
        """Record and report a background failure; return the delay before the retry."""
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = exc
        delay = min(self.max_backoff, self.interval * 2.0 ** min(self.consecutive_failures, 30))
        logger.warning(
            "write-behind flush failed (%s); %d events kept in memory, retrying in %.2fs",
            _describe(exc),
            self.storage.pending_events(),
            delay,
        )
        if self.on_error is not None:
            try:
                self.on_error(exc)
            except Exception:
                logger.exception("the drainer's on_error callback raised")
        return delay

    def detach(self) -> None:
        self.storage._detach(self.wake)


class _DrainerStats:
    """What both drainers report about their flushes (shared by the thread and asyncio one)."""

    _core: _Flusher

    @property
    def persisted_events(self) -> int:
        """Events applied to the vault so far."""
        return self._core.persisted

    @property
    def failures(self) -> int:
        """Background flushes that failed so far."""
        return self._core.failures

    @property
    def last_error(self) -> BaseException | None:
        """The latest background failure, if any."""
        return self._core.last_error


class WriteBehindDrainer(_DrainerStats):
    """Flushes a storage's dirty log to a vault, on demand and on a background thread.

    Constructing it attaches it to the storage (one drainer per storage), so the
    storage's ``"flush"`` backpressure policy can use it even before :meth:`start`.

    Args:
        storage: the storage to drain.
        vault: an unlocked, writable vault.
        interval: seconds between background flushes.
        threshold: pending events that trigger a background flush at once.
        on_error: called with each background failure (after it is logged).
        max_backoff: the longest wait between retries after failures.
        max_batch_events: split a flush into transactions of about this many events
            (whole operations only); ``None`` (default) applies a flush in one.
    """

    def __init__(
        self,
        storage: GranularStorage,
        vault: RowVault,
        interval: float = DEFAULT_INTERVAL,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        on_error: ErrorCallback | None = None,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        max_batch_events: int | None = None,
    ) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._core = _Flusher(
            storage,
            vault,
            interval=interval,
            threshold=threshold,
            max_backoff=max_backoff,
            on_error=on_error,
            wake=self._wake.set,
            max_batch_events=max_batch_events,
        )
        self._state = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def flush(self, *, yield_gil: bool = False) -> int:
        """Apply every pending event to the vault; return when it is durable.

        One transaction, or with ``max_batch_events`` several, each of whole operations.

        Safe to call from many threads: flushes run one at a time, and a caller returns
        only once everything written before its call is durable.  Writes inside an
        operation that is still open are not "written" yet and are not flushed.

        Args:
            yield_gil: for a caller on a worker thread beside an event loop: the flush
                frees the GIL for a moment before each transaction and while it seals
                rows (``Vault.apply(yield_gil=True)``), so the loop is not kept waiting
                for the whole flush.  Each pause asks for 0.1 ms (0.2 ms or more in
                practice, longer on a busy machine): worth it for big flushes only.

        Returns:
            The number of events applied by this call (0 if another caller did it).

        Raises:
            KeystoreError: the vault refused the batch; it is back in the storage.
        """
        return self._core.flush(yield_gil=yield_gil)

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        with self._state:
            if self._closed:
                raise RuntimeError("the drainer is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="mls-write-behind", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        core = self._core
        while not self._stop.is_set():
            self._wake.wait(core.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                core.flush()
            except Exception as exc:
                # Back off without listening to wake-ups: hammering a failing disk helps no one.
                if self._stop.wait(core.failed(exc)):
                    return
            else:
                core.succeeded()

    def close(self) -> None:
        """Stop the background thread, flush what is left, and detach (idempotent).

        Raises:
            KeystoreError: the final flush failed; the events stay in the storage.
        """
        with self._state:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._stop.set()
        self._wake.set()
        if thread is not None:
            thread.join()
        try:
            self._core.flush()
        finally:
            self._core.detach()

    def __enter__(self) -> WriteBehindDrainer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncDrainer(_DrainerStats):
    """:class:`WriteBehindDrainer` for asyncio: ``await flush()``, ``async with``.

    The drain, the encryption and the SQLite transaction run on one worker thread owned
    by the drainer, so the event loop only schedules and awaits.  The background task
    starts with ``async with`` (or :meth:`start`, called on the running loop).

    A flush is applied in transactions of about ``max_batch_events`` events (whole
    operations only; default 2048): some of the vault's steps over a whole batch hold
    the GIL from start to end (sorting the sealed rows is one C call), so one
    100k-event transaction would stall the loop for as long as they take.  Each
    transaction is applied with ``Vault.apply(..., yield_gil=True)``, which frees
    the GIL for a moment every 256 rows it hashes or encrypts, and the worker frees
    it before taking each transaction from the log, so the loop rarely waits for a
    whole switch interval.  See ``docs/storage.md`` for the resulting bound on the
    loop's lag.
    """

    def __init__(
        self,
        storage: GranularStorage,
        vault: RowVault,
        interval: float = DEFAULT_INTERVAL,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        on_error: ErrorCallback | None = None,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        max_batch_events: int | None = DEFAULT_ASYNC_BATCH_EVENTS,
    ) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._core = _Flusher(
            storage,
            vault,
            interval=interval,
            threshold=threshold,
            max_backoff=max_backoff,
            on_error=on_error,
            wake=self._on_threshold,
            max_batch_events=max_batch_events,
            yield_gil=True,
        )
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="mls-async-drainer"
        )
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def _on_threshold(self) -> None:
        """Called by the storage from any writer thread: wake the task on its loop."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    async def flush(self) -> int:
        """Apply every pending event to the vault, off the event loop; durable on return.

        Returns:
            The number of events applied by this call.

        Raises:
            KeystoreError: the vault refused the batch; it is back in the storage.
            RuntimeError: the drainer was closed (its worker thread is gone).
        """
        if self._closed:
            raise RuntimeError("the drainer is closed")
        return await self._flush_on_worker()

    async def _flush_on_worker(self) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._core.flush)

    def start(self) -> None:
        """Start the background task on the running loop (idempotent)."""
        if self._closed:
            raise RuntimeError("the drainer is closed")
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            self._stop = asyncio.Event()
            self._task = self._loop.create_task(self._run(), name="mls-async-drainer")

    async def _run(self) -> None:
        core = self._core
        assert self._wake is not None and self._stop is not None
        wake, stop = self._wake, self._stop
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), core.interval)
            wake.clear()
            if stop.is_set():
                return
            try:
                await self._flush_on_worker()
            except Exception as exc:
                try:
                    await asyncio.wait_for(stop.wait(), core.failed(exc))
                    return
                except TimeoutError:
                    pass
            else:
                core.succeeded()

    async def aclose(self) -> None:
        """Stop the background task, flush what is left, and detach (idempotent).

        Raises:
            KeystoreError: the final flush failed; the events stay in the storage.
        """
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            assert self._stop is not None and self._wake is not None
            self._stop.set()
            self._wake.set()
            await self._task
        try:
            await self._flush_on_worker()
        finally:
            self._core.detach()
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> AsyncDrainer:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
