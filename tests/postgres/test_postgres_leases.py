"""One writer per vault across processes: leases, expiry, renewal and fencing."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from keystore import Change
from keystore.backends.postgres import PostgresDatabase
from keystore.errors import LeaseLost, VaultBusy
from keystore.postgres_vault import PostgresVault
from tests.postgres.conftest import FAST_KDF, PASSPHRASE
from tests.postgres.launch import read_line as _line
from tests.postgres.launch import start_worker as _worker


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Worker processes, killed (by pid) at the end of the test whatever happened."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
            p.kill()
        p.wait(timeout=10)


def test_a_stale_writer_is_fenced_by_the_epoch(pg_dsn: str, pg_schema: str) -> None:
    """After its lease expired and another worker took it, the old holder's apply is
    refused with LeaseLost and writes nothing (no renewal threads: pure fencing)."""
    w1 = PostgresDatabase(pg_dsn, schema=pg_schema, lease_ttl=2.0, renew=False)
    w2 = PostgresDatabase(pg_dsn, schema=pg_schema, lease_ttl=30, renew=False)
    try:
        old = PostgresVault.create(w1, PASSPHRASE, FAST_KDF, name="id")
        old.put("c", b"before", b"1")
        with pytest.raises(VaultBusy):
            PostgresVault.open(w2, name="id")
        time.sleep(2.2)
        new = PostgresVault.open(w2, name="id")
        assert new.lease_epoch == (old.lease_epoch or 0) + 1
        with pytest.raises(LeaseLost):
            old.put("c", b"stale", b"2")
        with pytest.raises(LeaseLost):
            old.change_passphrase(PASSPHRASE, "stolen")
        new.unlock(PASSPHRASE)
        assert new.get("c", b"stale") is None
        assert new.get("c", b"before") == b"1"
        new.put("c", b"after", b"3")
        old.close()  # releasing a lost lease must not free the new holder's
        with pytest.raises(VaultBusy):
            PostgresVault.open(w1, name="id")
        new.close()
    finally:
        w1.close()
        w2.close()


def test_one_renewal_statement_extends_every_lease_of_a_worker(
    pg_dsn: str, pg_schema: str
) -> None:
    """renew() extends all of a worker's leases at once and notices a lost one."""
    w1 = PostgresDatabase(pg_dsn, schema=pg_schema, lease_ttl=2.0, renew=False)
    w2 = PostgresDatabase(pg_dsn, schema=pg_schema, lease_ttl=30, renew=False)
    try:
        vaults = [PostgresVault.create(w1, PASSPHRASE, FAST_KDF, name=f"v{i}") for i in range(20)]
        for _ in range(3):  # 3.6 s in all: alive only because renewed
            time.sleep(1.2)
            assert w1.leases.renew() == 20
        with pytest.raises(VaultBusy):
            PostgresVault.open(w2, name="v0")
        # Let them expire; another worker takes one; the next renewal reports it lost.
        time.sleep(2.2)
        taken = PostgresVault.open(w2, name="v7")
        assert w1.leases.renew() == 19
        lost = [v for v in vaults if v._pg.lease is not None and v._pg.lease.lost]
        assert [v.name for v in lost] == ["v7"]
        taken.close()
        for v in vaults:
            v.close()
    finally:
        w1.close()
        w2.close()


def test_two_worker_processes_race_for_one_identity_and_one_wins(
    pg_db: PostgresDatabase, procs: list[subprocess.Popen[str]]
) -> None:
    """Two processes open the same vault at once: exactly one holds the lease."""
    PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="race").close()
    procs.extend(_worker("hold", pg_db.dsn, pg_db.schema, "race", "30") for _ in range(2))
    results = sorted(_line(p) for p in procs)
    assert results[0] == "busy" and results[1].startswith("won ")
    for p in procs:
        assert p.stdin is not None
        p.stdin.close()
        assert p.wait(timeout=20) == 0


def test_a_killed_holder_is_taken_over_and_nothing_acknowledged_is_lost(
    pg_db: PostgresDatabase, procs: list[subprocess.Popen[str]]
) -> None:
    """kill -9 mid-drain; after the lease expires another worker takes over, finds every
    acknowledged row, and carries on writing."""
    PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="drain").close()
    holder = _worker("drain", pg_db.dsn, pg_db.schema, "drain", "3")
    procs.append(holder)
    acked: list[int] = []
    while len(acked) < 40:
        line = _line(holder)
        assert line.startswith("ack "), line
        acked.append(int(line.split()[1]))
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    with pytest.raises(VaultBusy):  # the dead holder's lease has not expired yet
        PostgresVault.open(pg_db, name="drain")
    with PostgresVault.open(pg_db, name="drain", timeout=10) as v:
        v.unlock(PASSPHRASE)
        stored = {k for k, _ in v.items("seq")}
        assert {b"seq-%d" % n for n in acked} <= stored
        n = len(stored)
        v.put("seq", b"seq-%d" % n, b"value-%d" % n)
        assert v.get("seq", b"seq-%d" % n) == b"value-%d" % n


def test_a_sigstopped_holder_resumes_after_takeover_and_is_fenced(
    pg_db: PostgresDatabase, procs: list[subprocess.Popen[str]]
) -> None:
    """A paused holder whose lease was taken over writes nothing when it resumes."""
    PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="paused").close()
    stale = _worker("stale", pg_db.dsn, pg_db.schema, "paused", "1.0")
    procs.append(stale)
    epoch = int(_line(stale).split()[1])
    os.kill(stale.pid, signal.SIGSTOP)
    with PostgresVault.open(pg_db, name="paused", timeout=10) as v:
        assert v.lease_epoch == epoch + 1
        v.unlock(PASSPHRASE)
        v.put("seq", b"new-holder", b"x")
        os.kill(stale.pid, signal.SIGCONT)
        assert stale.stdin is not None
        stale.stdin.write("go\n")
        stale.stdin.flush()
        assert _line(stale) == "leaselost"
        assert v.get("seq", b"stale") is None
        assert v.get("seq", b"new-holder") == b"x"
        v.apply([Change("seq", b"still-mine", b"y")])
    assert stale.wait(timeout=20) == 0


def test_a_writer_is_fenced_by_the_holder_as_well_as_the_epoch(
    pg_db: PostgresDatabase,
) -> None:
    """Were an epoch ever handed out twice, the other holder's name still fences."""
    import psycopg

    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="h") as v:
        v.put("c", b"k", b"1")
        with psycopg.connect(pg_db.dsn, autocommit=True) as conn:
            conn.execute(f"UPDATE {pg_db.schema}.stores SET lease_holder = 'someone else'")
        with pytest.raises(LeaseLost):
            v.put("c", b"k", b"2")
        v.unlock(PASSPHRASE)
        assert v.get("c", b"k") == b"1"


def test_a_holder_stopped_inside_its_transaction_does_not_block_a_takeover(
    pg_db: PostgresDatabase, procs: list[subprocess.Popen[str]]
) -> None:
    """A holder SIGSTOPped mid-apply holds its vault's row lock; the server ends its
    idle transaction after a lease period, another worker takes over, and the stopped
    holder, resumed, is fenced and writes nothing."""
    PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="stalled").close()
    stalled = _worker("stall", pg_db.dsn, pg_db.schema, "stalled", "1.5")
    procs.append(stalled)
    assert _line(stalled) == "in-txn"
    os.kill(stalled.pid, signal.SIGSTOP)
    started = time.monotonic()
    with PostgresVault.open(pg_db, name="stalled", timeout=30) as v:
        assert time.monotonic() - started < 20
        v.unlock(PASSPHRASE)
        v.put("seq", b"taken-over", b"x")
        os.kill(stalled.pid, signal.SIGCONT)
        assert _line(stalled) == "leaselost"
        assert v.get("seq", b"stalled") is None
        assert v.get("seq", b"taken-over") == b"x"
    assert stalled.wait(timeout=20) == 0


def test_the_drainer_keeps_a_batch_refused_by_a_lost_lease(pg_dsn: str, pg_schema: str) -> None:
    """A flush refused with LeaseLost leaves the events in the storage, nothing written."""
    from mls.drainer import WriteBehindDrainer
    from mls.storage import GranularStorage

    w1 = PostgresDatabase(pg_dsn, schema=pg_schema, lease_ttl=1.0, renew=False)
    w2 = PostgresDatabase(pg_dsn, schema=pg_schema, lease_ttl=30, renew=False)
    try:
        v = PostgresVault.create(w1, PASSPHRASE, FAST_KDF, name="d")
        storage = GranularStorage.load(v)
        drainer = WriteBehindDrainer(storage, v)
        time.sleep(1.2)
        taker = PostgresVault.open(w2, name="d")
        storage.write("c", b"k", b"late")
        with pytest.raises(LeaseLost):
            drainer.flush()
        assert storage.pending_events() == 1
        taker.unlock(PASSPHRASE)
        assert taker.get("c", b"k") is None
        taker.close()
        v.close()
    finally:
        w1.close()
        w2.close()


def test_a_lease_whose_acquisition_reply_was_lost_is_recognised_as_ours(
    pg_dsn: str, pg_schema: str
) -> None:
    """The row names this worker although it tracks no lease (the reply of an
    acquisition was lost): acquiring again takes it at once instead of waiting a whole
    TTL, under a new epoch (so a process that may hold the recorded one is fenced)."""
    import psycopg

    w = PostgresDatabase(pg_dsn, schema=pg_schema, lease_ttl=30, renew=False)
    try:
        PostgresVault.create(w, PASSPHRASE, FAST_KDF, name="mine").close()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # what the lost reply did
            conn.execute(
                f"UPDATE {pg_schema}.stores SET lease_epoch = lease_epoch + 1,"
                " lease_holder = %s, lease_expires = now() + interval '30 seconds'",
                (w.leases.worker_id,),
            )
        with PostgresVault.open(w, name="mine") as v:
            assert v.lease_epoch == 3
            v.unlock(PASSPHRASE)
            v.put("c", b"k", b"v")
    finally:
        w.close()
