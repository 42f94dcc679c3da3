"""Writes that do not read back what they replace, on PostgreSQL vaults.

After a full read checked against the state record, the vault subtracts replaced
rows' digest contributions from the tails it keeps in memory.  On a shared server
that is safe because every write is fenced by the lease epoch: these tests prove the
records match a full scan, that a retried write (its first attempt may have
committed) reads back, that a lost lease drops the tails, and that an operator's
edit while the vault is open is still caught.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from keystore import Change, RollbackDetected
from keystore.backends.postgres import PostgresDatabase
from keystore.digest import RowSetDigest, value_tails
from keystore.errors import LeaseLost
from keystore.postgres_vault import PostgresVault
from mls.storage import GranularStorage
from tests.postgres.conftest import FAST_KDF, PASSPHRASE

CAT = "openmls/v1/message_secrets"


def _admin(dsn: str):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(dsn, autocommit=True)


def expected_record(vault: PostgresVault) -> bytes:
    """The record a full scan of the stored rows gives at the vault's generation."""
    rows, _ = vault._pg.scan_with_state()
    keys = vault._digest
    assert keys is not None and vault.generation is not None
    digest = RowSetDigest(keys)
    digest.add(rows)
    return keys.seal(digest.state(vault.generation))


@pytest.fixture
def loaded(pg_db: PostgresDatabase) -> Iterator[PostgresVault]:
    """A vault with rows, reopened, unlocked and loaded (its tails in memory)."""
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="tails") as v:
        v.apply([Change(CAT, b"k%d" % i, b"value %d" % i) for i in range(6)])
    vault = PostgresVault.open(pg_db, name="tails")
    vault.unlock(PASSPHRASE)
    GranularStorage.load(vault)
    yield vault
    vault.close()


def test_writes_after_a_load_read_nothing_back_and_match_a_full_scan(
    pg_db: PostgresDatabase, loaded: PostgresVault, read_backs: list[int]
) -> None:
    """Replacing, inserting and deleting rows after a load reads no old value back;
    every record equals the one a full scan gives, and a reopened vault loads."""
    v = loaded
    v.apply([Change(CAT, b"k0", b"new"), Change(CAT, b"k1", None), Change(CAT, b"n", b"x")])
    assert v._pg.read_state() == expected_record(v)
    v.apply([Change(CAT, b"n", None), Change(CAT, b"k2", b"newer")])
    assert v._pg.read_state() == expected_record(v)
    assert read_backs == []
    assert v._tails_now() == value_tails(v._pg.scan_all())
    v.close()
    with PostgresVault.open(pg_db, name="tails") as again:
        again.unlock(PASSPHRASE)
        assert GranularStorage.load(again) is not None
        assert again.verify().ok


def test_a_retried_write_whose_first_attempt_committed_reads_back(
    pg_db: PostgresDatabase, loaded: PostgresVault, read_backs: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection is lost after the commit landed, so the backend runs the
    transaction again: the retry reads the rows it already wrote back (the tails in
    memory describe the rows before the first attempt), and the record stays right."""
    v = loaded
    db = v._pg._db
    real_run = db.run

    def commit_then_retry(fn: Any, **kwargs: Any) -> Any:
        real_run(fn, **kwargs)  # committed, but its acknowledgement "was lost"
        return real_run(fn, **kwargs)

    monkeypatch.setattr(db, "run", commit_then_retry)
    v.apply([Change(CAT, b"k0", b"retried"), Change(CAT, b"k1", None)])
    monkeypatch.setattr(db, "run", real_run)
    assert read_backs == [1]
    assert v._pg.read_state() == expected_record(v)
    v.put(CAT, b"k0", b"after the retry")
    assert v._pg.read_state() == expected_record(v)
    v.close()
    with PostgresVault.open(pg_db, name="tails") as again:
        again.unlock(PASSPHRASE)
        assert again.open_rows()[CAT][b"k0"] == b"after the retry"


def test_a_lost_lease_drops_the_tails_and_the_new_holder_loads(
    pg_dsn: str, pg_schema: str
) -> None:
    """Another worker takes the lease over and writes: the old holder's next write
    is refused with LeaseLost before writing, its tails are dropped, and the new
    holder's rows and record agree."""
    w1 = PostgresDatabase(pg_dsn, schema=pg_schema, lease_ttl=1.0, renew=False)
    w2 = PostgresDatabase(pg_dsn, schema=pg_schema, lease_ttl=30, renew=False)
    try:
        old = PostgresVault.create(w1, PASSPHRASE, FAST_KDF, name="id")
        old.apply([Change(CAT, b"k%d" % i, b"v") for i in range(3)])
        GranularStorage.load(old)
        assert old._tails_now() is not None
        time.sleep(1.2)
        new = PostgresVault.open(w2, name="id")
        new.unlock(PASSPHRASE)
        GranularStorage.load(new)
        new.put(CAT, b"k0", b"taken over")
        with pytest.raises(LeaseLost):
            old.put(CAT, b"k0", b"stale")
        assert old._tails_now() is None
        new.put(CAT, b"k1", b"still right")
        assert new.open_rows()[CAT] == {b"k0": b"taken over", b"k1": b"still right",
                                        b"k2": b"v"}
        old.close()
        new.close()
    finally:
        w1.close()
        w2.close()


def test_an_operators_edit_while_the_vault_is_open_is_detected(
    pg_db: PostgresDatabase, loaded: PostgresVault
) -> None:
    """An older version of a row is put back while the vault is open; the vault goes
    on writing other rows from memory, and the next full read refuses the rows."""
    v = loaded
    kh = v._unlocked().key_hash(CAT, b"k3")
    with _admin(pg_db.dsn) as admin:
        (before,) = admin.execute(
            f"SELECT value FROM {pg_db.schema}.rows WHERE store_id = %s AND key_hash = %s",
            (v.store_id, kh),
        ).fetchone()
    v.put(CAT, b"k3", b"newer")
    with _admin(pg_db.dsn) as admin:
        admin.execute(
            f"UPDATE {pg_db.schema}.rows SET value = %s WHERE store_id = %s AND key_hash = %s",
            (before, v.store_id, kh),
        )
    v.put(CAT, b"k4", b"written from memory")
    with pytest.raises(RollbackDetected):
        v.verify()
