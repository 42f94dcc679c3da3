"""An MLS client whose state lives in PostgreSQL keeps its conversation across workers.

``MlsClient.create``/``open`` take a :class:`keystore.PostgresAddress` where they take
a file path; the client then holds the vault's writer lease until it is closed.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from keystore import LeaseLost, PostgresAddress
from keystore.backends.postgres import PostgresDatabase
from mls import MlsClient, ReceivedKind
from tests.postgres.conftest import FAST_KDF, PASSPHRASE
from tests.postgres.test_postgres_leases import _line, _worker

GID = b"room on postgres"


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Worker processes, killed (by pid) at the end of the test whatever happened."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
            p.kill()
            p.wait()


def _alice_and_bob(address: PostgresAddress, tmp_path: Path) -> MlsClient:
    """Alice (on PostgreSQL) makes the group and adds Bob (a SQLite client); Bob returned."""
    bob = MlsClient.create(tmp_path / "bob.vault", PASSPHRASE, identity=b"bob", kdf=FAST_KDF)
    with MlsClient.create(address, PASSPHRASE, identity=b"alice", kdf=FAST_KDF) as alice:
        alice.create_group(GID)
        _, welcome = alice.add_members(GID, [bob.generate_key_package()])
        assert bob.join(welcome) == GID
    return bob


def test_a_client_on_postgres_continues_its_conversation_on_another_worker(
    pg_dsn: str, pg_schema: str, tmp_path: Path
) -> None:
    """Alice's state is in PostgreSQL: worker 1 creates the group and talks with Bob
    (a SQLite client); worker 2 opens Alice by name and the conversation goes on."""
    worker1 = PostgresDatabase(pg_dsn, schema=pg_schema)
    alice = MlsClient.create(PostgresAddress(worker1, name="alice"), PASSPHRASE,
                             identity=b"alice", kdf=FAST_KDF)
    bob = MlsClient.create(tmp_path / "bob.vault", PASSPHRASE, identity=b"bob", kdf=FAST_KDF)
    try:
        alice.create_group(GID)
        _, welcome = alice.add_members(GID, [bob.generate_key_package()])
        assert bob.join(welcome) == GID
        assert bob.process(GID, alice.encrypt(GID, b"hello from worker 1")).data == (
            b"hello from worker 1"
        )
        alice.close()  # worker 1 stops; its lease is released
        worker1.close()

        where = PostgresAddress(pg_dsn, name="alice", schema=pg_schema)
        with MlsClient.open(where, PASSPHRASE, timeout=10) as alice2:
            got = bob.process(GID, alice2.encrypt(GID, b"hello from worker 2"))
            assert (got.kind, got.sender, got.data) == (
                ReceivedKind.APPLICATION, b"alice", b"hello from worker 2"
            )
            alice2.process(GID, bob.update_keys(GID))
            assert alice2.process(GID, bob.encrypt(GID, b"welcome back")).data == (
                b"welcome back"
            )
            assert alice2.members(GID) == [b"alice", b"bob"]
            assert alice2.vault.verify().ok
    finally:
        bob.close()


def test_a_second_client_of_the_same_postgres_vault_is_refused(
    pg_dsn: str, pg_schema: str, tmp_path: Path
) -> None:
    """One writer per identity: while a client holds Alice, opening her again is VaultBusy."""
    from keystore import VaultBusy

    where = PostgresAddress(pg_dsn, name="alice", schema=pg_schema)
    with (
        MlsClient.create(where, PASSPHRASE, identity=b"alice", kdf=FAST_KDF),
        pytest.raises(VaultBusy),
    ):
        MlsClient.open(where, PASSPHRASE)


def test_a_postgres_address_refuses_sqlcipher(pg_dsn: str, pg_schema: str) -> None:
    """SQLCipher encrypts a SQLite file: asking for it on PostgreSQL is an error, not ignored."""
    where = PostgresAddress(pg_dsn, name="alice", schema=pg_schema)
    with pytest.raises(ValueError, match="sqlcipher"):
        MlsClient.create(where, PASSPHRASE, identity=b"alice", kdf=FAST_KDF, sqlcipher=True)


def test_a_killed_worker_is_taken_over_and_the_conversation_goes_on(
    pg_dsn: str, pg_schema: str, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    """Alice's worker is kill -9'd while sending; after its lease expires another worker
    takes Alice over: Bob has read every acknowledged message, and Alice's next ones
    decrypt (her sending state includes everything she acknowledged)."""
    where = PostgresAddress(pg_dsn, name="alice", schema=pg_schema)
    bob = _alice_and_bob(where, tmp_path)
    try:
        sender = _worker("mls-send", pg_dsn, pg_schema, "alice", "1.5", GID.hex())
        procs.append(sender)
        for n in range(15):
            word, number, ciphertext = _line(sender).split()
            assert (word, int(number)) == ("ack", n)
            assert bob.process(GID, bytes.fromhex(ciphertext)).data == b"msg-%d" % n
        os.kill(sender.pid, signal.SIGKILL)
        sender.wait(timeout=10)
        with MlsClient.open(where, PASSPHRASE, timeout=15) as alice2:
            for text in (b"after the takeover", b"and again"):
                got = bob.process(GID, alice2.encrypt(GID, text))
                assert (got.sender, got.data) == (b"alice", text)
            assert alice2.process(GID, bob.encrypt(GID, b"still here")).data == b"still here"
    finally:
        bob.close()


def test_a_fenced_stale_client_cannot_send_and_loses_nothing_it_sent(
    pg_dsn: str, pg_schema: str, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    """A client paused (SIGSTOP) past its lease is taken over; resumed, its send fails
    with LeaseLost and returns no ciphertext, and every message it acknowledged before
    the pause stays persisted: the new holder goes on from there and Bob reads it all."""
    where = PostgresAddress(pg_dsn, name="alice", schema=pg_schema)
    bob = _alice_and_bob(where, tmp_path)
    try:
        stale = _worker("mls-stale", pg_dsn, pg_schema, "alice", "1.0", GID.hex(), "5")
        procs.append(stale)
        for n in range(5):
            word, number, ciphertext = _line(stale).split()
            assert (word, int(number)) == ("ack", n)
            assert bob.process(GID, bytes.fromhex(ciphertext)).data == b"msg-%d" % n
        assert _line(stale) == "ready"
        os.kill(stale.pid, signal.SIGSTOP)
        with MlsClient.open(where, PASSPHRASE, timeout=15) as alice2:
            got = bob.process(GID, alice2.encrypt(GID, b"from the new holder"))
            assert got.data == b"from the new holder"
            os.kill(stale.pid, signal.SIGCONT)
            assert stale.stdin is not None
            stale.stdin.write("go\n")
            stale.stdin.flush()
            assert _line(stale) == "leaselost"
            assert _line(stale) == "closed"
            for text in (b"the holder goes on", b"unbothered"):
                assert bob.process(GID, alice2.encrypt(GID, text)).data == text
            assert alice2.process(GID, bob.encrypt(GID, b"ack")).data == b"ack"
        assert stale.wait(timeout=20) == 0
        # A fresh worker sees the state the new holder left, whole.
        with MlsClient.open(where, PASSPHRASE, timeout=15) as alice3:
            assert bob.process(GID, alice3.encrypt(GID, b"third")).data == b"third"
            assert alice3.vault.verify().ok
    finally:
        bob.close()


def test_lease_lost_is_what_a_fenced_client_raises(pg_dsn: str, pg_schema: str) -> None:
    """In one process: a client whose lease another worker took raises LeaseLost on
    send, and the ciphertext it would have sent is never returned."""
    w1 = PostgresDatabase(pg_dsn, schema=pg_schema, lease_ttl=1.0, renew=False)
    w2 = PostgresDatabase(pg_dsn, schema=pg_schema, lease_ttl=30.0, renew=False)
    try:
        stale = MlsClient.create(PostgresAddress(w1, name="alice"), PASSPHRASE,
                                 identity=b"alice", kdf=FAST_KDF)
        stale.create_group(GID)
        with MlsClient.open(PostgresAddress(w2, name="alice"), PASSPHRASE, timeout=10) as new:
            with pytest.raises(LeaseLost):
                stale.encrypt(GID, b"never sent")
            assert new.group_ids() == [GID]
            assert new.encrypt(GID, b"the new holder is undisturbed")
        with pytest.raises(LeaseLost):  # what it still holds is refused at close too
            stale.close()
    finally:
        w1.close()
        w2.close()


def test_the_async_client_runs_on_postgres_too(pg_dsn: str, pg_schema: str) -> None:
    """AsyncMlsClient.create/open take the same address, off the event loop."""
    import asyncio

    from mls import AsyncMlsClient

    where = PostgresAddress(pg_dsn, name="async-alice", schema=pg_schema)

    async def run() -> list[bytes]:
        first = await AsyncMlsClient.create(where, PASSPHRASE, identity=b"alice", kdf=FAST_KDF)
        await first.create_group(GID)
        await first.close()
        again = await AsyncMlsClient.open(where, PASSPHRASE, timeout=10)
        try:
            return await again.group_ids()
        finally:
            await again.close()

    assert asyncio.run(run()) == [GID]


def test_an_address_never_shows_a_password_and_names_one_vault(pg_dsn: str) -> None:
    """repr redacts the DSN's password; a name and a store id together, or a new
    vault addressed by store id, or an open with neither, are refused before any I/O."""
    where = PostgresAddress("postgresql://u:hunter2@db.invalid/x", name="alice")
    assert "hunter2" not in repr(where) and "alice" in repr(where)
    with pytest.raises(ValueError, match="not both"):
        PostgresAddress(pg_dsn, name="a", store_id=bytes(16))
    with pytest.raises(ValueError, match="draws its own store id"):
        PostgresAddress(pg_dsn, store_id=bytes(16)).create_vault(PASSPHRASE, FAST_KDF)
    with pytest.raises(ValueError, match="names no vault"):
        PostgresAddress(pg_dsn).open_vault()
    with pytest.raises(TypeError):
        MlsClient.open(object(), PASSPHRASE)  # type: ignore[arg-type]


def test_a_refused_open_releases_the_lease_at_once(pg_dsn: str, pg_schema: str) -> None:
    """A wrong passphrase raises WrongPassphrase and leaves no lease behind: the next
    open, without waiting, succeeds."""
    from keystore import WrongPassphrase

    where = PostgresAddress(pg_dsn, name="alice", schema=pg_schema)
    MlsClient.create(where, PASSPHRASE, identity=b"alice", kdf=FAST_KDF).close()
    with pytest.raises(WrongPassphrase):
        MlsClient.open(where, "not the passphrase")
    with MlsClient.open(where, PASSPHRASE, timeout=0) as alice:
        assert alice.identity == b"alice"
