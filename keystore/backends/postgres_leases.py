"""Writer leases: one writer per vault across machines, fenced by an epoch.

A vault's row in ``stores`` says who may write it (``lease_holder``), until when
(``lease_expires``, by the server's clock only) and under which ``lease_epoch``, a
number that grows at every acquisition.  The write transactions of
:class:`~keystore.backends.postgres.PostgresBackend` check epoch and holder first
(the fencing token), so a holder that lost its lease writes nothing.  This module
takes, renews and gives back those leases for one worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keystore.backends._psycopg import first_line as _first_line
from keystore.backends._psycopg import require as _psycopg
from keystore.errors import KeystoreError, NotAVault, VaultBusy, VaultClosed, VaultIOError

if TYPE_CHECKING:
    import psycopg

    from keystore.backends.postgres import PostgresDatabase

__all__ = ["DEFAULT_LEASE_TTL", "Lease", "LeaseManager"]

logger = logging.getLogger("keystore.postgres")

#: Seconds a lease lives without renewal.  A crashed holder blocks its vaults this
#: long; a holder paused longer than this loses them (and is fenced).
DEFAULT_LEASE_TTL = 30.0


@dataclass(slots=True)
class Lease:
    """This worker's right to write one vault, while ``epoch`` is the stored one.

    Attributes:
        store_id: the vault.
        epoch: the fencing token every write transaction checks.
        lost: set when a renewal found the lease taken over (writes fail anyway).
    """

    store_id: bytes
    epoch: int
    lost: bool = False


class LeaseManager:
    """Acquires, renews and releases the writer leases of one worker.

    One statement renews every lease the worker holds
    (``UPDATE … WHERE lease_holder = me``), from one background thread, so a worker
    with 10,000 identities makes one round trip per renewal period, not 10,000
    timers.  The leases are rows, not session advisory locks: a stopped process
    keeps its session locks forever, but its lease simply expires.
    """

    def __init__(
        self,
        db: PostgresDatabase,
        *,
        ttl: float = DEFAULT_LEASE_TTL,
        worker_id: str | None = None,
        renew: bool = True,
    ) -> None:
        if not ttl > 0:
            raise ValueError("lease ttl must be positive")
        self._db = db
        self.ttl = float(ttl)
        self.worker_id = worker_id or (
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        )
        self._held: dict[bytes, Lease] = {}
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renew = renew
        self._closed = False

    @property
    def held(self) -> list[Lease]:
        """The leases this worker holds (as last known)."""
        with self._lock:
            return list(self._held.values())

    def _run(
        self, sql: str, params: Sequence[object], *, durable: bool = False,
        lock_timeout: float | None = None,
    ) -> list[tuple[Any, ...]]:
        """One statement on the lease connection, reconnecting once.

        Renewals and releases commit without waiting for a disk flush: losing one
        in a server crash only makes a lease end sooner or later, and the fencing
        check inside every (synchronous) write keeps that safe.  Acquisitions are
        ``durable``: a lost one would let the next acquirer get the same epoch.
        With ``lock_timeout`` (durable statements only), a row lock held longer than
        that makes the statement give up and return no rows.
        """
        pg = _psycopg()
        for attempt in (1, 2):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._db.connect()
                    self._conn.execute("SET synchronous_commit = off")
                if durable:
                    with self._conn.transaction():
                        self._conn.execute("SET LOCAL synchronous_commit = on")
                        if lock_timeout is not None:
                            ms = max(50, int(lock_timeout * 1000))
                            self._conn.execute(f"SET LOCAL lock_timeout = {ms}")
                        cur = self._conn.execute(sql, params)
                        return cur.fetchall() if cur.description else []
                cur = self._conn.execute(sql, params)
                return cur.fetchall() if cur.description else []
            except pg.errors.LockNotAvailable:
                return []  # a write in flight holds the row: not acquired this time
            except pg.Error as exc:
                conn = self._conn
                lost = isinstance(exc, pg.OperationalError) or conn is None or (
                    conn.closed or conn.broken
                )
                if not lost:
                    raise VaultIOError(
                        f"lease statement refused on {self._db.location}: {_first_line(exc)}"
                    ) from None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                self._conn = None
                if attempt == 2:
                    raise VaultIOError(
                        f"lease statement failed on {self._db.location}: {_first_line(exc)}"
                    ) from None
        raise AssertionError("unreachable")

    def adopt(self, store_id: bytes, epoch: int) -> Lease:
        """Track a lease taken by inserting the vault (see ``create_store``)."""
        lease = Lease(store_id, epoch)
        with self._lock:
            self._held[store_id] = lease
        self._start()
        return lease

    def acquire(self, store_id: bytes, timeout: float = 0.0) -> Lease:
        """Take the writer lease of a vault: free, released, or expired by the server's clock.

        Args:
            timeout: seconds to keep trying while another worker holds it.

        Raises:
            VaultBusy: another worker holds an unexpired lease (after ``timeout``).
            NotAVault: no such vault.
        """
        s = self._db.schema
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closed:
                raise VaultClosed(f"the lease manager of {self._db.location} is closed")
            if store_id in self._held:
                raise VaultBusy(
                    f"this worker already holds vault {store_id.hex()}: one writer object "
                    "per vault"
                )
        while True:
            with self._lock:
                rows = self._run(
                    f"UPDATE {s}.stores SET lease_epoch = lease_epoch + 1, lease_holder = %s,"
                    " lease_expires = statement_timestamp() + %s * interval '1 second'"
                    " WHERE store_id = %s AND (lease_holder IS NULL"
                    " OR lease_expires <= statement_timestamp())"
                    " RETURNING lease_epoch",
                    (self.worker_id, self.ttl, store_id),
                    durable=True,
                    # Never wait on a holder's write in flight past our own timeout.
                    lock_timeout=min(1.0, max(0.0, deadline - time.monotonic())),
                )
                if rows:
                    lease = Lease(store_id, int(rows[0][0]))
                    self._held[store_id] = lease
                    break
                holder = self._run(
                    f"SELECT lease_holder, lease_expires - statement_timestamp(), lease_epoch"
                    f" FROM {s}.stores WHERE store_id = %s",
                    (store_id,),
                )
                if holder and holder[0][0] == self.worker_id:
                    # Recorded under our name, though this manager holds no such lease:
                    # an acquisition whose reply was lost with its connection, a
                    # release that failed -- or another live process given the same
                    # worker id.  Take it with a NEW epoch, never the recorded one:
                    # whoever else holds that epoch is fenced from its next write on.
                    bumped = self._run(
                        f"UPDATE {s}.stores SET lease_epoch = lease_epoch + 1,"
                        " lease_expires = statement_timestamp() + %s * interval '1 second'"
                        " WHERE store_id = %s AND lease_holder = %s RETURNING lease_epoch",
                        (self.ttl, store_id, self.worker_id),
                        durable=True,
                        lock_timeout=min(1.0, max(0.0, deadline - time.monotonic())),
                    )
                    if bumped:
                        lease = Lease(store_id, int(bumped[0][0]))
                        self._held[store_id] = lease
                        break
                    continue  # the row changed hands meanwhile: try again
            if not holder:
                raise NotAVault(f"no vault with id {store_id.hex()} in {self._db.location}")
            if time.monotonic() >= deadline:
                raise VaultBusy(
                    f"vault {store_id.hex()} is held by worker {holder[0][0]!r} for "
                    f"another {holder[0][1]} (or until it releases it)"
                )
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        self._start()
        return lease

    def renew(self) -> int:
        """Extend every lease this worker holds, in one statement; return how many.

        A lease missing from the result was taken over: it is marked ``lost`` and
        forgotten (the vault's writes fail with LeaseLost anyway).
        """
        s = self._db.schema
        with self._lock:
            if not self._held:
                return 0
            rows = self._run(
                f"UPDATE {s}.stores SET lease_expires = statement_timestamp()"
                " + %s * interval '1 second'"
                " WHERE lease_holder = %s AND store_id = ANY(%s)"
                " RETURNING store_id, lease_epoch",
                (self.ttl, self.worker_id, list(self._held)),
            )
            alive = {bytes(sid): int(epoch) for sid, epoch in rows}
            for sid, lease in list(self._held.items()):
                if alive.get(sid) != lease.epoch:
                    lease.lost = True
                    del self._held[sid]
                    logger.warning("writer lease on vault %s was lost", sid.hex())
            return len(alive)

    def release(self, lease: Lease) -> None:
        """Give a lease up now (another worker may take it at once).  Best effort."""
        s = self._db.schema
        with self._lock:
            if self._closed:
                return  # close() released every lease already
            self._held.pop(lease.store_id, None)
            with contextlib.suppress(KeystoreError):
                self._run(
                    f"UPDATE {s}.stores SET lease_holder = NULL, lease_expires = NULL"
                    " WHERE store_id = %s AND lease_epoch = %s AND lease_holder = %s",
                    (lease.store_id, lease.epoch, self.worker_id),
                )

    def _start(self) -> None:
        if not self._renew or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._loop, name="mls-keystore-lease-renewal", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except KeystoreError as exc:
                logger.warning("lease renewal failed (%s); retrying", exc)

    def close(self) -> None:
        """Stop renewing and release every lease."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        for lease in self.held:
            self.release(lease)
        with self._lock:
            self._closed = True
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
