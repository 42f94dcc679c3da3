"""An MLS client whose state lives in PostgreSQL keeps its conversation across workers.

The client classes open SQLite vaults by path today; their constructor takes any
vault and storage, which is how a worker runs the native engine on a PostgresVault
here.  (Opening a client from a database directly comes with the client's next API.)
"""

from __future__ import annotations

from pathlib import Path

from keystore.backends.postgres import PostgresDatabase
from keystore.postgres_vault import PostgresVault
from mls.native.client import NativeClient
from mls.native.engine import NativeEngine
from mls.receipts import ReceivedKind
from mls.storage import GranularStorage
from tests.postgres.conftest import FAST_KDF, PASSPHRASE

GID = b"room on postgres"


def _client_on(vault: PostgresVault) -> NativeClient:
    storage = GranularStorage.load(vault)  # type: ignore[arg-type]
    return NativeClient(vault, storage, retention=4)  # type: ignore[arg-type]


def test_a_client_on_postgres_continues_its_conversation_on_another_worker(
    pg_dsn: str, pg_schema: str, tmp_path: Path
) -> None:
    """Alice's state is in PostgreSQL: worker 1 creates the group and talks with Bob
    (a SQLite client); worker 2 takes Alice over and the conversation goes on."""
    worker1 = PostgresDatabase(pg_dsn, schema=pg_schema)
    vault = PostgresVault.create(worker1, PASSPHRASE, FAST_KDF, name="alice")
    storage = GranularStorage.load(vault)  # type: ignore[arg-type]
    NativeEngine.create(storage, b"alice")
    alice = NativeClient(vault, storage, retention=4)  # type: ignore[arg-type]
    bob = NativeClient.create(tmp_path / "bob.vault", PASSPHRASE, identity=b"bob", kdf=FAST_KDF)
    try:
        alice.create_group(GID)
        _, welcome = alice.add_members(GID, [bob.generate_key_package()])
        assert bob.join(welcome) == GID
        assert bob.process(GID, alice.encrypt(GID, b"hello from worker 1")).data == (
            b"hello from worker 1"
        )
        alice.close()  # worker 1 stops; its lease is released
        worker1.close()

        with PostgresDatabase(pg_dsn, schema=pg_schema) as worker2:
            vault2 = PostgresVault.open(worker2, name="alice", timeout=10)
            vault2.unlock(PASSPHRASE)
            alice2 = _client_on(vault2)
            try:
                got = bob.process(GID, alice2.encrypt(GID, b"hello from worker 2"))
                assert (got.kind, got.sender, got.data) == (
                    ReceivedKind.APPLICATION, b"alice", b"hello from worker 2"
                )
                commit = bob.update_keys(GID)
                alice2.process(GID, commit)
                reply = alice2.process(GID, bob.encrypt(GID, b"welcome back"))
                assert reply.data == b"welcome back"
                assert alice2.members(GID) == [b"alice", b"bob"]
            finally:
                alice2.close()
    finally:
        bob.close()


def test_a_killed_worker_is_taken_over_and_the_conversation_goes_on(
    pg_dsn: str, pg_schema: str, tmp_path: Path
) -> None:
    """Alice's worker is kill -9'd while sending; after its lease expires another worker
    takes Alice over: Bob has read every acknowledged message, and Alice's next ones
    decrypt (her sending state includes everything she acknowledged)."""
    import os
    import signal

    from tests.postgres.test_postgres_leases import _line, _worker

    with PostgresDatabase(pg_dsn, schema=pg_schema) as setup:
        vault = PostgresVault.create(setup, PASSPHRASE, FAST_KDF, name="alice")
        storage = GranularStorage.load(vault)  # type: ignore[arg-type]
        NativeEngine.create(storage, b"alice")
        alice = NativeClient(vault, storage, retention=4)  # type: ignore[arg-type]
        bob = NativeClient.create(tmp_path / "bob.vault", PASSPHRASE, identity=b"bob",
                                  kdf=FAST_KDF)
        alice.create_group(GID)
        _, welcome = alice.add_members(GID, [bob.generate_key_package()])
        bob.join(welcome)
        alice.close()
    sender = _worker("mls-send", pg_dsn, pg_schema, "alice", "1.5", GID.hex())
    try:
        for n in range(15):
            word, number, ciphertext = _line(sender).split()
            assert (word, int(number)) == ("ack", n)
            assert bob.process(GID, bytes.fromhex(ciphertext)).data == b"msg-%d" % n
        os.kill(sender.pid, signal.SIGKILL)
        sender.wait(timeout=10)
        with PostgresDatabase(pg_dsn, schema=pg_schema) as worker2:
            vault2 = PostgresVault.open(worker2, name="alice", timeout=15)
            vault2.unlock(PASSPHRASE)
            alice2 = _client_on(vault2)
            try:
                for text in (b"after the takeover", b"and again"):
                    got = bob.process(GID, alice2.encrypt(GID, text))
                    assert (got.sender, got.data) == (b"alice", text)
                assert alice2.process(GID, bob.encrypt(GID, b"still here")).data == b"still here"
            finally:
                alice2.close()
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
        bob.close()
