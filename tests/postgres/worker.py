"""A worker process for the multi-process PostgreSQL tests (``python -m tests.postgres.worker``).

Commands (all print one line per event, flushed, so the test can follow along):

* ``hold DSN SCHEMA NAME TTL`` — open the vault writable (no waiting), print
  ``won EPOCH`` or ``busy``, then hold it until stdin closes.
* ``drain DSN SCHEMA NAME TTL`` — open and unlock the vault, load a
  GranularStorage from it, then forever: write row ``seq-N`` into the storage, flush
  the write-behind drainer, and print ``ack N`` only after the flush returned.
* ``stale DSN SCHEMA NAME TTL`` — open and unlock, print ``ready EPOCH``, wait for a
  line on stdin, then try to write row ``stale`` and print ``wrote`` or
  ``leaselost`` (or ``error TYPE``).
* ``mls-send DSN SCHEMA NAME TTL GROUP_HEX`` — run the native MLS client of the vault
  and encrypt ``msg-N`` in the group forever, printing ``ack N CIPHERTEXT_HEX`` only
  after ``encrypt`` returned (the state it advanced is durable then).
* ``stall DSN SCHEMA NAME TTL`` — open and unlock, then apply row ``stalled`` with
  the apply stopping inside its transaction (after the fencing update): print
  ``in-txn``, sleep 2 s there, go on; print ``wrote``, ``leaselost`` or ``error TYPE``.
* ``migrate DSN SCHEMA WAIT`` — migrate the schema; with WAIT ``stdin``, print
  ``in-step`` inside each step and wait there for a line on stdin; print
  ``done VERSIONS``.
"""

from __future__ import annotations

import sys

from keystore import profiles
from keystore.backends import postgres
from keystore.backends.postgres import PostgresDatabase
from keystore.errors import LeaseLost, VaultBusy
from keystore.postgres_vault import PostgresVault

PASSPHRASE = "correct horse battery staple"
FAST_KDF = profiles.INSECURE_FOR_TESTS_ONLY


def say(line: str) -> None:
    """One event line, flushed at once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    """Run one command; see the module docstring."""
    cmd, dsn, schema = argv[0], argv[1], argv[2]
    if cmd == "migrate":
        if argv[3] == "stdin":

            def hook(version: int) -> None:
                say("in-step")
                sys.stdin.readline()

            postgres._migration_step_hook = hook
        with PostgresDatabase(dsn, schema=schema) as db:
            say(f"done {db.migrate()}")
        return 0
    name, ttl = argv[3], float(argv[4])
    db = PostgresDatabase(dsn, schema=schema, lease_ttl=ttl)
    if cmd == "hold":
        try:
            vault = PostgresVault.open(db, name=name)
        except VaultBusy:
            say("busy")
            sys.stdin.read()
            return 0
        say(f"won {vault.lease_epoch}")
        sys.stdin.read()
        vault.close()
        return 0
    vault = PostgresVault.open(db, name=name)
    vault.unlock(PASSPHRASE)
    if cmd == "drain":
        from mls.drainer import WriteBehindDrainer
        from mls.storage import GranularStorage

        storage = GranularStorage.load(vault)
        drainer = WriteBehindDrainer(storage, vault)  # type: ignore[arg-type]
        n = len(storage.keys("seq"))
        while True:
            storage.write("seq", b"seq-%d" % n, b"value-%d" % n)
            drainer.flush()
            say(f"ack {n}")
            n += 1
    if cmd == "mls-send":
        from mls.native.client import NativeClient
        from mls.storage import GranularStorage

        group = bytes.fromhex(argv[5])
        client = NativeClient(vault, GranularStorage.load(vault), retention=4)  # type: ignore[arg-type]
        n = 0
        while True:
            ciphertext = client.encrypt(group, b"msg-%d" % n)
            say(f"ack {n} {ciphertext.hex()}")
            n += 1
    if cmd == "stall":
        import time

        def stop_here() -> None:
            postgres._apply_hook = None
            say("in-txn")
            time.sleep(2)

        postgres._apply_hook = stop_here
        try:
            vault.put("seq", b"stalled", b"written by a writer stopped mid-transaction")
            say("wrote")
        except LeaseLost:
            say("leaselost")
        except Exception as exc:
            say(f"error {type(exc).__name__}")
        return 0
    if cmd == "stale":
        say(f"ready {vault.lease_epoch}")
        sys.stdin.readline()
        try:
            vault.put("seq", b"stale", b"written by a stale holder")
            say("wrote")
        except LeaseLost:
            say("leaselost")
        except Exception as exc:
            say(f"error {type(exc).__name__}")
        return 0
    raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
