"""Rollback detection on PostgreSQL vaults: whoever can write the database (its operator,
a restored backup) puts back an old row, deletes one or re-inserts a deleted one, and a
full read raises RollbackDetected with nothing written; crashes and restarts in the
middle of an apply never look like a rollback; rekey rotates the hash key too."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keystore import Change, RollbackDetected
from keystore.anchor import FileAnchor
from keystore.backends import postgres
from keystore.backends.postgres import PostgresDatabase
from keystore.errors import VaultLocked, WrongPassphrase
from keystore.header import KDF_ARGON2ID, Header
from keystore.postgres_vault import PostgresVault, new_header, open_header, seal_batch
from mls.storage import GranularStorage
from tests.postgres.conftest import FAST_KDF, PASSPHRASE
from tests.postgres.launch import read_line as _line
from tests.postgres.launch import start_worker as _worker
from tests.postgres.test_postgres_failures import _blocked_apply

Snapshot = tuple[tuple[Any, ...], list[tuple[str, bytes, bytes]]]


def _admin(dsn: str):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(dsn, autocommit=True)


def _snapshot(db: PostgresDatabase, store_id: bytes) -> Snapshot:
    """Everything stored for one vault: its stores row (header, counter, state) and rows."""
    with _admin(db.dsn) as admin:
        store = admin.execute(
            f"SELECT header, encryptions, state FROM {db.schema}.stores WHERE store_id = %s",
            (store_id,),
        ).fetchone()
        rows = admin.execute(
            f"SELECT category, key_hash, value FROM {db.schema}.rows WHERE store_id = %s"
            " ORDER BY category, key_hash",
            (store_id,),
        ).fetchall()
    assert store is not None
    return tuple(bytes(x) if isinstance(x, (bytes, memoryview)) else x for x in store), [
        (str(c), bytes(k), bytes(v)) for c, k, v in rows
    ]


def _sql(db: PostgresDatabase, statement: str, *params: object) -> None:
    with _admin(db.dsn) as admin:
        admin.execute(statement.replace("{s}", db.schema), params)


def _every_full_read_refuses(v: PostgresVault, match: str) -> None:
    """open_rows, verify, read_snapshot and a GranularStorage load all raise."""
    with pytest.raises(RollbackDetected, match=match) as caught:
        v.open_rows()
    assert caught.value.reason == "rows"
    with pytest.raises(RollbackDetected, match=match):
        v.verify()
    with pytest.raises(RollbackDetected, match=match), v.read_snapshot():
        pass
    with pytest.raises(RollbackDetected, match=match):
        GranularStorage.load(v)


@pytest.fixture
def vault(pg_db: PostgresDatabase) -> Iterator[PostgresVault]:
    """A vault with three rows written in three generations, then closed and reopened."""
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="victim") as v:
        v.put("groups", b"g1", b"epoch 1")
        v.put("groups", b"g2", b"other group")
        v.put("keys", b"k1", b"a key")
        assert v.generation == 3
    v = PostgresVault.open(pg_db, name="victim")
    try:
        yield v
    finally:
        v.close()


def test_writes_keep_the_record_in_step_with_the_rows(vault: PostgresVault) -> None:
    """Overwrites, deletes, re-writes and repeated keys in one batch all leave a record
    that a full read accepts; each committed apply is one generation."""
    vault.unlock(PASSPHRASE)
    assert vault.generation == 3
    vault.apply([Change("groups", b"g1", b"epoch 2"), Change("keys", b"k1", None),
                 Change("keys", b"k2", b"x"), Change("keys", b"k2", b"y")])
    vault.delete("groups", b"missing")  # deleting an absent row is still a write
    vault.put("keys", b"k1", b"back again, by the application")
    assert vault.generation == 6
    assert vault.open_rows() == {
        "groups": {b"g1": b"epoch 2", b"g2": b"other group"},
        "keys": {b"k1": b"back again, by the application", b"k2": b"y"},
    }
    assert vault.verify().ok
    vault.lock()
    vault.unlock(PASSPHRASE)
    assert vault.generation == 6


def test_the_trimmed_old_values_an_apply_reads_count_as_the_stored_values(
    pg_db: PostgresDatabase, vault: PostgresVault
) -> None:
    """An apply reads back only the last 16 bytes of each replaced value (its AES-GCM
    tag); the digest contribution of that is the stored value's, for long and short
    values."""
    from keystore.digest import DigestKeys

    vault.unlock(PASSPHRASE)
    vault.put("groups", b"big", os.urandom(5000))
    _sql(pg_db, "INSERT INTO {s}.rows VALUES (%s, 'x', %s, %s)", vault.store_id,
         bytes(32), b"short")  # shorter than a tag: read back whole
    full = _snapshot(pg_db, vault.store_id)[1]
    pg = vault._pg
    trimmed = pg._db.run(lambda conn: pg._old_values(conn, [(c, k) for c, k, _ in full]))
    assert len(trimmed) == len(full)
    assert sorted(len(v) for _, _, v in trimmed) == sorted(min(len(v), 16) for _, _, v in full)
    assert vault._cipher is not None
    keys = DigestKeys(vault._cipher.secrets(), vault.store_id)
    assert keys.sum_rows(trimmed) == keys.sum_rows(full)


def test_an_older_version_of_a_row_put_back_is_detected(
    pg_db: PostgresDatabase, vault: PostgresVault
) -> None:
    """The operator restores a row's earlier sealed value (it authenticates on its own):
    every full read refuses, also after further writes, and nothing is written."""
    vault.unlock(PASSPHRASE)
    old = {(c, k): v for c, k, v in _snapshot(pg_db, vault.store_id)[1]}
    vault.put("groups", b"g1", b"epoch 2")
    new = {(c, k): v for c, k, v in _snapshot(pg_db, vault.store_id)[1]}
    (target,) = [ck for ck in new if old[ck] != new[ck]]
    _sql(pg_db, "UPDATE {s}.rows SET value = %s WHERE store_id = %s AND category = %s"
         " AND key_hash = %s", old[target], vault.store_id, *target)
    assert vault.get("groups", b"g1") == b"epoch 1"  # alone, the old row authenticates
    before = _snapshot(pg_db, vault.store_id)
    _every_full_read_refuses(vault, "older or foreign value")
    assert _snapshot(pg_db, vault.store_id) == before
    vault.put("keys", b"k9", b"later write")  # writes do not hide the put-back row
    with pytest.raises(RollbackDetected):
        vault.open_rows()


def test_a_deleted_row_is_detected(pg_db: PostgresDatabase, vault: PostgresVault) -> None:
    """The operator deletes one row: every full read says a row was deleted."""
    vault.unlock(PASSPHRASE)
    _sql(pg_db, "DELETE FROM {s}.rows WHERE store_id = %s AND category = 'keys'",
         vault.store_id)
    before = _snapshot(pg_db, vault.store_id)
    _every_full_read_refuses(vault, "1 row\\(s\\) were deleted")
    assert _snapshot(pg_db, vault.store_id) == before


def test_a_reinserted_deleted_row_is_detected(
    pg_db: PostgresDatabase, vault: PostgresVault
) -> None:
    """The application deletes a row; the operator puts it back from a backup."""
    vault.unlock(PASSPHRASE)
    (row,) = [r for r in _snapshot(pg_db, vault.store_id)[1] if r[0] == "keys"]
    vault.delete("keys", b"k1")
    assert vault.get("keys", b"k1") is None
    _sql(pg_db, "INSERT INTO {s}.rows (store_id, category, key_hash, value)"
         " VALUES (%s, %s, %s, %s)", vault.store_id, *row)
    assert vault.get("keys", b"k1") == b"a key"
    before = _snapshot(pg_db, vault.store_id)
    _every_full_read_refuses(vault, "were added or re-inserted")
    assert _snapshot(pg_db, vault.store_id) == before


def test_a_removed_or_edited_record_is_refused_at_unlock(
    pg_db: PostgresDatabase, vault: PostgresVault
) -> None:
    """No record, an edited one, or one from another vault: unlock raises, the vault
    stays locked, and nothing is written (no adoption over a record that vanished)."""
    record = _snapshot(pg_db, vault.store_id)[0][2]
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF) as other:
        foreign = _snapshot(pg_db, other.store_id)[0][2]
    for bad in (None, record[:-1] + bytes([record[-1] ^ 1]), foreign):
        _sql(pg_db, "UPDATE {s}.stores SET state = %s WHERE store_id = %s", bad,
             vault.store_id)
        before = _snapshot(pg_db, vault.store_id)
        with pytest.raises(RollbackDetected) as caught:
            vault.unlock(PASSPHRASE)
        assert caught.value.reason == "record"
        assert vault.locked
        with pytest.raises(VaultLocked):
            vault.put("keys", b"k", b"v")
        assert _snapshot(pg_db, vault.store_id) == before


def test_an_apply_finding_no_record_writes_nothing(
    pg_db: PostgresDatabase, vault: PostgresVault
) -> None:
    """The record disappears while the vault is unlocked: the next apply is refused
    inside its transaction and no row lands."""
    vault.unlock(PASSPHRASE)
    _sql(pg_db, "UPDATE {s}.stores SET state = NULL WHERE store_id = %s", vault.store_id)
    before = _snapshot(pg_db, vault.store_id)
    with pytest.raises(RollbackDetected, match="nothing was written"):
        vault.put("keys", b"new", b"v")
    assert _snapshot(pg_db, vault.store_id) == before


def test_whole_vault_rollback_is_caught_by_an_anchor_only(
    pg_db: PostgresDatabase, tmp_path: Path
) -> None:
    """The operator restores the vault's stores row and rows from an old backup: the
    old copy is self-consistent, so only an anchor kept elsewhere catches it."""
    anchor = FileAnchor(tmp_path / "victim.anchor")
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="v", anchor=anchor) as v:
        v.put("groups", b"g1", b"epoch 1")
        sid = v.store_id
        backup = _snapshot(pg_db, sid)
        v.put("groups", b"g1", b"epoch 2")
        v.put("groups", b"g2", b"new group")
        assert anchor.load(sid) == 3
    (header, encryptions, state), rows = backup
    _sql(pg_db, "DELETE FROM {s}.rows WHERE store_id = %s", sid)
    for c, k, val in rows:
        _sql(pg_db, "INSERT INTO {s}.rows VALUES (%s, %s, %s, %s)", sid, c, k, val)
    _sql(pg_db, "UPDATE {s}.stores SET header = %s, encryptions = %s, state = %s"
         " WHERE store_id = %s", header, encryptions, state, sid)
    with PostgresVault.open(pg_db, name="v") as v:  # no anchor: not detectable
        v.unlock(PASSPHRASE)
        assert v.open_rows() == {"groups": {b"g1": b"epoch 1"}}
    with PostgresVault.open(pg_db, name="v", anchor=anchor) as v:
        with pytest.raises(RollbackDetected, match="anchor holds generation 3") as caught:
            v.unlock(PASSPHRASE)
        assert caught.value.reason == "anchor" and v.locked
    assert _snapshot(pg_db, sid) == backup
    assert anchor.load(sid) == 3


def test_an_mls_client_on_postgres_keeps_its_anchor_and_refuses_an_older_vault(
    pg_db: PostgresDatabase, tmp_path: Path
) -> None:
    """PostgresAddress(anchor=...) reaches the vault: the client's writes advance the
    anchor, and after the whole vault is put back the client does not open."""
    from keystore import PostgresAddress
    from mls import MlsClient

    anchor = FileAnchor(tmp_path / "agent.anchor")
    where = PostgresAddress(pg_db, name="agent", anchor=anchor)
    with MlsClient.create(where, PASSPHRASE, identity=b"agent", kdf=FAST_KDF):
        pass
    sid = pg_db.find_store(store_id=None, name="agent")[0]
    backup = _snapshot(pg_db, sid)
    with MlsClient.open(where, PASSPHRASE, timeout=10) as client:
        client.create_group(b"room")
    anchored = anchor.load(sid)
    assert anchored is not None and anchored > 0
    (header, encryptions, state), rows = backup
    _sql(pg_db, "DELETE FROM {s}.rows WHERE store_id = %s", sid)
    for c, k, val in rows:
        _sql(pg_db, "INSERT INTO {s}.rows VALUES (%s, %s, %s, %s)", sid, c, k, val)
    _sql(pg_db, "UPDATE {s}.stores SET header = %s, encryptions = %s, state = %s"
         " WHERE store_id = %s", header, encryptions, state, sid)
    with pytest.raises(RollbackDetected, match="anchor"):
        MlsClient.open(where, PASSPHRASE, timeout=10)


def _pre_record_vault(db: PostgresDatabase, rows: dict[bytes, bytes]) -> bytes:
    """A vault as code before the state record made it: header flag clear, no record,
    in a schema that has only step 1; then the schema is migrated to the latest."""
    shipped, latest = postgres.PG_MIGRATIONS, postgres.PG_LATEST_VERSION
    postgres.PG_MIGRATIONS, postgres.PG_LATEST_VERSION = shipped[:1], 1
    try:
        db.migrate()
    finally:
        postgres.PG_MIGRATIONS, postgres.PG_LATEST_VERSION = shipped, latest
    header, cipher, _kek = new_header(KDF_ARGON2ID, FAST_KDF, PASSPHRASE.encode(), flags=0)
    _, upserts, _ = seal_batch(cipher, [Change("c", k, v) for k, v in rows.items()])
    cipher.wipe()
    _sql(db, "INSERT INTO {s}.stores (store_id, header) VALUES (%s, %s)",
         header.store_id, header.to_bytes())
    for c, kh, val in upserts:
        _sql(db, "INSERT INTO {s}.rows VALUES (%s, %s, %s, %s)", header.store_id, c, kh, val)
    assert db.migrate() == [m.version for m in shipped[1:]]
    return header.store_id


def test_a_vault_made_before_the_record_adopts_it_at_its_first_writable_unlock(
    pg_dsn: str, pg_schema: str
) -> None:
    """Read-only it is left alone; the first writable unlock gives it a record (and the
    header flag), from when on a deleted row is detected."""
    db = PostgresDatabase(pg_dsn, schema=pg_schema, lease_ttl=5.0)
    try:
        sid = _pre_record_vault(db, {b"a": b"1", b"b": b"2"})
        with PostgresVault.open(db, store_id=sid, readonly=True) as ro:
            ro.unlock(PASSPHRASE)
            assert ro.generation is None
            assert ro.open_rows() == {"c": {b"a": b"1", b"b": b"2"}}
        assert _snapshot(db, sid)[0][2] is None
        with PostgresVault.open(db, store_id=sid) as v:
            v.unlock(PASSPHRASE)
            assert v.generation == 0
            assert Header.from_bytes(_snapshot(db, sid)[0][0]).state_digest
            v.put("c", b"c", b"3")
            assert v.generation == 1
        _, kh, _ = _snapshot(db, sid)[1][0]
        _sql(db, "DELETE FROM {s}.rows WHERE store_id = %s AND key_hash = %s", sid, kh)
        with PostgresVault.open(db, store_id=sid) as v:
            v.unlock(PASSPHRASE)
            with pytest.raises(RollbackDetected, match="deleted"):
                v.open_rows()
        _sql(db, "UPDATE {s}.stores SET state = NULL WHERE store_id = %s", sid)
        # The flag now in the header makes the record required: no second adoption.
        with PostgresVault.open(db, store_id=sid) as v, pytest.raises(
            RollbackDetected, match="lost its state record"
        ):
            v.unlock(PASSPHRASE)
    finally:
        db.close()




def test_a_state_format_1_record_is_checked_then_resealed_in_format_2(
    pg_db: PostgresDatabase, vault: PostgresVault
) -> None:
    """A record in state format 1 (what earlier releases wrote) is checked with the
    format-1 function: read-only it is left as it is; the first writable unlock
    seals the same rows in format 2 at the next generation, leaving the header alone."""
    from keystore.digest import DigestKeys, RowSetDigest

    vault.unlock(PASSPHRASE)
    assert vault._cipher is not None
    keys = DigestKeys(vault._cipher.secrets(), vault.store_id)
    vault.close()
    (header, _, _), rows = _snapshot(pg_db, vault.store_id)
    old = RowSetDigest(keys, state_format=1)
    old.add(rows)
    record1 = keys.seal(old.state(3))
    _sql(pg_db, "UPDATE {s}.stores SET state = %s WHERE store_id = %s", record1, vault.store_id)
    with PostgresVault.open(pg_db, name="victim", readonly=True) as ro:
        ro.unlock(PASSPHRASE)
        assert ro.generation == 3
        assert ro.verify().ok
    assert _snapshot(pg_db, vault.store_id)[0][2] == record1
    with PostgresVault.open(pg_db, name="victim") as v:
        v.unlock(PASSPHRASE)
        assert v.generation == 4
        v.put("keys", b"k2", b"another key")
        assert v.generation == 5
        assert v.verify().ok
    (header_after, _, record2), _ = _snapshot(pg_db, vault.store_id)
    assert header_after == header
    assert record2[0] == 2
    _sql(pg_db, "UPDATE {s}.stores SET state = %s WHERE store_id = %s", record1, vault.store_id)
    with PostgresVault.open(pg_db, name="victim") as v:
        # The old record put back: its rows no longer match (k2 was added since).
        with pytest.raises(RollbackDetected) as info:
            v.unlock(PASSPHRASE)
        assert info.value.reason == "rows"


def _wait_for_expiry(db: PostgresDatabase, name: str) -> None:
    """Wait (up to 20 s) until the vault's writer lease has expired by the server's clock."""
    sid = db.find_store(store_id=None, name=name)[0]
    for _ in range(200):
        if not db.lease_state(sid)[3]:
            return
        time.sleep(0.1)
    raise AssertionError("the killed holder's lease never expired")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Worker processes, killed (by pid) at the end of the test whatever happened."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def test_no_false_alarm_after_workers_killed_mid_apply(
    pg_db: PostgresDatabase, procs: list[subprocess.Popen[str]]
) -> None:
    """kill -9 of a draining worker at an arbitrary point, three times over (each new
    worker's load is itself a full check of the rows against the record), and of a
    worker stopped inside its apply transaction: the next holder's full read accepts
    the rows."""
    PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="drain").close()
    acked: list[int] = []
    for _ in range(3):
        holder = _worker("drain", pg_db.dsn, pg_db.schema, "drain", "2")
        procs.append(holder)
        for _ in range(15):
            line = _line(holder)  # a worker whose load raised ends: this says why
            assert line.startswith("ack "), line
            acked.append(int(line.split()[1]))
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        _wait_for_expiry(pg_db, "drain")
    stalled = _worker("stall", pg_db.dsn, pg_db.schema, "drain", "2")
    procs.append(stalled)
    assert _line(stalled) == "in-txn"  # after the fencing update, before the record
    os.kill(stalled.pid, signal.SIGKILL)
    stalled.wait(timeout=10)
    with PostgresVault.open(pg_db, name="drain", timeout=15) as v:
        v.unlock(PASSPHRASE)
        rows = v.open_rows()["seq"]
        assert {b"seq-%d" % n for n in acked} <= set(rows)
        assert b"stalled" not in rows
        assert v.verify().ok
        v.put("seq", b"after", b"takeover")
        assert b"after" in v.open_rows()["seq"]


def test_no_false_alarm_after_a_server_restart_mid_apply(
    pg_server: object | None, pg_db: PostgresDatabase
) -> None:
    """The server restarts while an apply is inside its transaction: the retried apply
    lands once with a record that matches, as seen by this vault and a fresh one."""
    if pg_server is None:
        pytest.skip("needs the throwaway server (cannot restart an external one)")
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="r") as v:
        v.put("c", b"before", b"acknowledged")
        batch = [Change("c", b"k%d" % i, b"v%d" % i) for i in range(50)]
        batch.append(Change("c", b"before", b"overwritten in the batch"))
        t, outcome, blocker = _blocked_apply(pg_db, v, batch)
        pg_server.stop("fast")  # type: ignore[attr-defined]
        pg_server.start()  # type: ignore[attr-defined]
        t.join(timeout=60)
        blocker.close()  # type: ignore[attr-defined]
        assert outcome == [51]
        assert len(v.open_rows()["c"]) == 51
        assert v.verify().ok
    with PostgresVault.open(pg_db, name="r") as fresh:
        fresh.unlock(PASSPHRASE)
        assert fresh.open_rows()["c"][b"before"] == b"overwritten in the batch"


def test_rekey_rotates_the_hash_key_and_reseals_the_record(
    pg_db: PostgresDatabase, vault: PostgresVault
) -> None:
    """After rekey every stored key hash and value is new, the old header's secrets
    recognise no row key, and the record vouches for the new rows one generation on."""
    vault.unlock(PASSPHRASE)
    (old_header, _, old_state), old_rows = _snapshot(pg_db, vault.store_id)
    vault.rekey()
    (header, encryptions, state), rows = _snapshot(pg_db, vault.store_id)
    assert Header.from_bytes(header).key_generation == 2 and encryptions == 3
    assert not {kh for _, kh, _ in rows} & {kh for _, kh, _ in old_rows}
    assert not {val for _, _, val in rows} & {val for _, _, val in old_rows}
    assert state != old_state and vault.generation == 4
    old_cipher, _kek = open_header(
        Header.from_bytes(old_header), KDF_ARGON2ID, PASSPHRASE.encode()
    )
    assert old_cipher.key_hash("groups", b"g1") not in {kh for _, kh, _ in rows}
    old_cipher.wipe()
    assert vault.get("groups", b"g1") == b"epoch 1"
    assert vault.verify().ok
    vault.lock()
    vault.unlock(PASSPHRASE)
    assert vault.generation == 4
    assert vault.open_rows()["keys"] == {b"k1": b"a key"}


def test_a_rekey_write_retried_after_it_landed_changes_nothing(
    pg_db: PostgresDatabase, vault: PostgresVault
) -> None:
    """The rekey transaction is retried when a connection breaks; if its commit had
    landed, the retry finds its own record and writes nothing (no false alarm)."""
    vault.unlock(PASSPHRASE)
    pg = vault._pg
    sent: list[tuple[Any, ...]] = []
    real = pg.rehash

    def recording(*args: Any) -> None:
        sent.append(args)
        real(*args)

    pg.rehash = recording  # type: ignore[method-assign,assignment]
    vault.rekey()
    after = _snapshot(pg_db, vault.store_id)
    real(*sent[0])  # the same transaction again, as a retry would send it
    assert _snapshot(pg_db, vault.store_id) == after
    assert vault.open_rows()["groups"][b"g1"] == b"epoch 1"


def test_change_passphrase_with_rekey_rotates_both_secrets(
    pg_db: PostgresDatabase, vault: PostgresVault
) -> None:
    """change_passphrase(rekey=True): one transaction with a new passphrase, new key
    hashes and a new record; the old passphrase opens nothing."""
    vault.unlock(PASSPHRASE)
    old_rows = _snapshot(pg_db, vault.store_id)[1]
    with pytest.raises(WrongPassphrase):
        vault.change_passphrase("not it", "new passphrase", rekey=True)
    assert _snapshot(pg_db, vault.store_id)[1] == old_rows
    vault.change_passphrase(PASSPHRASE, "new passphrase", rekey=True)
    rows = _snapshot(pg_db, vault.store_id)[1]
    assert not {kh for _, kh, _ in rows} & {kh for _, kh, _ in old_rows}
    vault.lock()
    with pytest.raises(WrongPassphrase):
        vault.unlock(PASSPHRASE)
    vault.unlock("new passphrase")
    assert vault.open_rows()["groups"][b"g2"] == b"other group"


def test_rekey_over_a_tampered_vault_is_refused_and_writes_nothing(
    pg_db: PostgresDatabase, vault: PostgresVault
) -> None:
    """A rekey checks the rows against the record first: sealing a deleted row's
    absence under new keys would make the operator's change permanent."""
    vault.unlock(PASSPHRASE)
    _sql(pg_db, "DELETE FROM {s}.rows WHERE store_id = %s AND category = 'keys'",
         vault.store_id)
    before = _snapshot(pg_db, vault.store_id)
    with pytest.raises(RollbackDetected, match="deleted"):
        vault.rekey()
    assert _snapshot(pg_db, vault.store_id) == before
