"""PostgresVault keeps the SQLite vault's promises, on a real PostgreSQL server."""

from __future__ import annotations

import pytest

from keystore import Change, IntegrityError, VaultClosed, VaultLocked, WrongPassphrase
from keystore.backends.postgres import PostgresDatabase
from keystore.errors import NotAVault, VaultBusy, VaultIOError
from keystore.postgres_vault import PostgresVault
from mls.drainer import WriteBehindDrainer
from mls.storage import GranularStorage
from tests.postgres.conftest import FAST_KDF, PASSPHRASE


def _raw(db: PostgresDatabase, sql: str, *params: object) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(db.dsn, autocommit=True) as conn:
        cur = conn.execute(sql.replace("{s}", db.schema), params)
        return cur.fetchall() if cur.description else []


def test_rows_round_trip_through_get_items_categories_delete(pg_db: PostgresDatabase) -> None:
    """put/get/items/categories/delete behave as on SQLite."""
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="alice") as v:
        v.put("groups", b"g1", b"state-1")
        v.put("groups", b"g2", b"state-2")
        v.put("key_packages", b"kp", b"kp-bytes")
        assert v.get("groups", b"g1") == b"state-1"
        assert v.get("groups", b"nope") is None
        assert v.categories() == ["groups", "key_packages"]
        assert dict(v.items("groups")) == {b"g1": b"state-1", b"g2": b"state-2"}
        v.delete("groups", b"g1")
        assert v.get("groups", b"g1") is None
        assert v.stats().total_rows == 2


def test_apply_is_atomic_and_coalesces(pg_db: PostgresDatabase) -> None:
    """A batch with an invalid change writes nothing; repeated keys keep the last value."""
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF) as v:
        assert v.apply([Change("c", b"k", b"1"), Change("c", b"k", b"2")]) == 1
        assert v.get("c", b"k") == b"2"
        with pytest.raises(ValueError):
            v.apply([Change("c", b"other", b"x"), Change("bad category!", b"k", b"y")])
        assert v.get("c", b"other") is None
        assert v.apply([Change("c", b"k", None), Change("c", b"n", b"v")]) == 2
        assert dict(v.items("c")) == {b"n": b"v"}


def test_the_apply_transaction_rolls_back_whole_on_a_server_error(
    pg_db: PostgresDatabase,
) -> None:
    """A batch the server rejects half way leaves no row of it behind."""
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF) as v:
        # A trigger that fails on the 3rd row of a statement: the first two were
        # already inserted inside the same transaction.
        _raw(pg_db, "CREATE FUNCTION {s}.boom() RETURNS trigger LANGUAGE plpgsql AS $$"
             " BEGIN IF NEW.category = 'z' THEN RAISE EXCEPTION 'refused'; END IF;"
             " RETURN NEW; END $$")
        _raw(pg_db, "CREATE TRIGGER boom BEFORE INSERT ON {s}.rows FOR EACH ROW"
             " EXECUTE FUNCTION {s}.boom()")
        before = v.stats().encryptions
        with pytest.raises(VaultIOError):
            v.apply([Change("a", b"1", b"x"), Change("b", b"2", b"y"), Change("z", b"3", b"z")])
        assert v.categories() == []
        assert v.stats().encryptions == before


def test_wrong_passphrase_is_refused(pg_db: PostgresDatabase) -> None:
    """Unlocking with the wrong passphrase raises WrongPassphrase."""
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="v") as v:
        v.put("c", b"k", b"v")
    with PostgresVault.open(pg_db, name="v", readonly=True) as v:
        with pytest.raises(WrongPassphrase):
            v.unlock("not the passphrase")
        assert v.locked
        with pytest.raises(VaultLocked):
            v.get("c", b"k")
        v.unlock(PASSPHRASE)
        assert v.get("c", b"k") == b"v"


def test_an_edited_row_fails_authentication(pg_db: PostgresDatabase) -> None:
    """Flipping one stored byte makes get and verify report IntegrityError."""
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF) as v:
        v.put("c", b"k", b"secret value")
        v.put("c", b"k2", b"other")
        _raw(pg_db, "UPDATE {s}.rows SET value = set_byte(value, 20, get_byte(value, 20) # 1)"
             " WHERE store_id = %s AND key_hash = (SELECT key_hash FROM {s}.rows"
             " WHERE store_id = %s ORDER BY key_hash LIMIT 1)", v.store_id, v.store_id)
        report = v.verify()
        assert not report.ok and report.rows_checked == 2 and len(report.failures) == 1
        bad = [k for k in (b"k", b"k2") if _fails(v, k)]
        assert len(bad) == 1


def _fails(v: PostgresVault, key: bytes) -> bool:
    try:
        v.get("c", key)
    except IntegrityError:
        return True
    return False


def test_an_edited_header_is_refused(pg_db: PostgresDatabase) -> None:
    """An edited header byte makes unlock fail as a wrong passphrase would."""
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="h"):
        pass
    _raw(pg_db, "UPDATE {s}.stores SET header = set_byte(header, 40, get_byte(header, 40) # 1)")
    with PostgresVault.open(pg_db, name="h") as v, pytest.raises(WrongPassphrase):
        v.unlock(PASSPHRASE)


def test_many_vaults_in_one_database_are_isolated(pg_db: PostgresDatabase) -> None:
    """Two vaults with the same row key see only their own rows; a row moved between
    them fails authentication (the AAD binds the store id)."""
    a = PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="a")
    b = PostgresVault.create(pg_db, "another passphrase", FAST_KDF, name="b")
    try:
        a.put("c", b"same key", b"alice's")
        b.put("c", b"same key", b"bob's")
        assert a.get("c", b"same key") == b"alice's"
        assert b.get("c", b"same key") == b"bob's"
        assert [n for _, n in pg_db.list_stores()] == ["a", "b"]
        # Copy a's sealed row over b's address, keeping b's store id and key hash.
        a_hash = a._cipher.key_hash("c", b"same key")  # type: ignore[union-attr]
        b_hash = b._cipher.key_hash("c", b"same key")  # type: ignore[union-attr]
        assert a_hash != b_hash  # each vault hashes row keys under its own key
        _raw(pg_db, "UPDATE {s}.rows SET value = (SELECT value FROM {s}.rows WHERE"
             " store_id = %s) WHERE store_id = %s", a.store_id, b.store_id)
        with pytest.raises(IntegrityError):
            b.get("c", b"same key")
    finally:
        a.close()
        b.close()


def test_names_are_unique_and_unknown_vaults_are_not_vaults(pg_db: PostgresDatabase) -> None:
    """A taken name is refused without overwriting; an unknown one is NotAVault."""
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="dup") as v:
        v.put("c", b"k", b"kept")
        with pytest.raises(FileExistsError):
            PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="dup")
        assert v.get("c", b"k") == b"kept"
    with pytest.raises(NotAVault):
        PostgresVault.open(pg_db, name="nobody")


def test_passphrase_change_and_rekey(pg_db: PostgresDatabase) -> None:
    """A new passphrase opens the vault, the old does not; rekey keeps every row."""
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="r") as v:
        v.apply([Change("c", b"k%d" % i, b"v%d" % i) for i in range(50)])
        v.change_passphrase(PASSPHRASE, "new passphrase")
        old_blob = _raw(pg_db, "SELECT value FROM {s}.rows ORDER BY key_hash LIMIT 1")
        v.rekey()
        assert _raw(pg_db, "SELECT value FROM {s}.rows ORDER BY key_hash LIMIT 1") != old_blob
        assert v.stats().key_generation == 2
    with PostgresVault.open(pg_db, name="r") as v:
        with pytest.raises(WrongPassphrase):
            v.unlock(PASSPHRASE)
        v.unlock("new passphrase")
        assert dict(v.items("c")) == {b"k%d" % i: b"v%d" % i for i in range(50)}
        assert v.verify().ok


def test_a_second_writer_in_the_same_worker_is_refused(pg_db: PostgresDatabase) -> None:
    """One writer object per vault: a second writable open is VaultBusy, readonly is fine."""
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="w"):
        with pytest.raises(VaultBusy):
            PostgresVault.open(pg_db, name="w")
        with PostgresVault.open(pg_db, name="w", readonly=True) as r:
            r.unlock(PASSPHRASE)
            with pytest.raises(VaultIOError):
                r.put("c", b"k", b"v")


def test_closed_vault_refuses_use(pg_db: PostgresDatabase) -> None:
    """After close every operation raises VaultClosed and the lease is free again."""
    v = PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="x")
    v.close()
    with pytest.raises(VaultClosed):
        v.get("c", b"k")
    with PostgresVault.open(pg_db, name="x") as again:
        assert again.lease_epoch == 2


def test_granular_storage_loads_and_drains_through_a_postgres_vault(
    pg_db: PostgresDatabase,
) -> None:
    """The MLS layer's storage rehydrates from, and write-behind drains into, Postgres."""
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="mls") as v:
        storage = GranularStorage.load(v)  # type: ignore[arg-type]
        drainer = WriteBehindDrainer(storage, v)  # type: ignore[arg-type]
        storage.write("groups", b"g", b"group state")
        storage.write("key_packages", b"kp", b"package")
        drainer.flush()
        drainer.close()
    with PostgresVault.open(pg_db, name="mls") as v:
        v.unlock(PASSPHRASE)
        loaded = GranularStorage.load(v)  # type: ignore[arg-type]
        assert loaded.read("groups", b"g") == b"group state"
        assert loaded.categories() == ["groups", "key_packages"]


def test_dsn_string_makes_a_private_database_handle(pg_dsn: str, pg_schema: str) -> None:
    """A DSN instead of a PostgresDatabase works, and close releases everything."""
    with PostgresVault.create(pg_dsn, PASSPHRASE, FAST_KDF, name="own", schema=pg_schema) as v:
        v.put("c", b"k", b"v")
        store_id = v.store_id
    with PostgresVault.open(pg_dsn, store_id=store_id, schema=pg_schema) as v:
        v.unlock(PASSPHRASE)
        assert v.get("c", b"k") == b"v"
        assert v.name == "own"


def test_a_load_reads_ahead_but_never_serves_stale_rows(pg_db: PostgresDatabase) -> None:
    """categories() then items() reads the vault once; a write in between, or a second
    items() of the same category, still sees exactly the stored rows."""
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF) as v:
        v.apply([Change("a", b"1", b"x"), Change("b", b"2", b"y")])
        assert v.categories() == ["a", "b"]
        assert dict(v.items("a")) == {b"1": b"x"}
        assert dict(v.items("a")) == {b"1": b"x"}
        v.put("b", b"3", b"z")  # a write drops the read-ahead
        assert dict(v.items("b")) == {b"2": b"y", b"3": b"z"}
        assert v.categories() == ["a", "b"]
        v.delete("a", b"1")
        assert dict(v.items("a")) == {}
        assert dict(v.items("b")) == {b"2": b"y", b"3": b"z"}


def test_closing_the_database_first_releases_the_leases(pg_dsn: str, pg_schema: str) -> None:
    """db.close() releases every lease at once; vaults closed afterwards stay quiet."""
    db = PostgresDatabase(pg_dsn, schema=pg_schema)
    v = PostgresVault.create(db, PASSPHRASE, FAST_KDF, name="early")
    db.close()
    v.close()
    with PostgresVault.open(pg_dsn, name="early", schema=pg_schema) as again:
        assert again.lease_epoch == 2


def test_a_raw_key_vault_and_its_key_change(pg_db: PostgresDatabase) -> None:
    """create_with_key/unlock_with_key/change_key work as on SQLite."""
    key, new_key = bytes(range(32)), bytes(range(1, 33))
    with PostgresVault.create_with_key(pg_db, key, name="raw") as v:
        v.put("c", b"k", b"v")
        assert v.kdf is None
        v.change_key(key, new_key)
    with PostgresVault.open(pg_db, name="raw") as v:
        with pytest.raises(WrongPassphrase):
            v.unlock_with_key(key)
        with pytest.raises(ValueError):
            v.unlock(PASSPHRASE)
        v.unlock_with_key(new_key)
        assert v.get("c", b"k") == b"v"


def test_the_postgres_backend_is_a_vault_backend(pg_db: PostgresDatabase) -> None:
    """PostgresBackend has every method of the keystore.backend.VaultBackend Protocol."""
    from keystore.backend import VaultBackend

    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF) as v:
        assert isinstance(v._pg, VaultBackend)
        assert v._pg.encryptions() == 0
        v.apply([Change("c", b"%d" % i, b"x") for i in range(5)])
        assert v._pg.encryptions() == 5
        assert v._pg.category_counts() == [("c", 5, 5 * (1 + 12 + 4 + 1 + 1 + 16))]


def test_threads_share_one_database_handle(pg_db: PostgresDatabase) -> None:
    """Vaults of one worker, written from several threads at once, lose nothing."""
    import threading

    vaults = [PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name=f"t{i}") for i in range(4)]
    errors: list[BaseException] = []

    def writer(v: PostgresVault) -> None:
        try:
            for n in range(20):
                v.apply([Change("c", b"%d-%d" % (n, i), b"x") for i in range(10)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(v,)) for v in vaults]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    for v in vaults:
        assert len(dict(v.items("c"))) == 200
        v.close()


def test_the_package_exports_the_postgres_names() -> None:
    """keystore re-exports the PostgreSQL API (loaded on first use)."""
    import keystore
    from keystore.backends import postgres

    assert keystore.PostgresVault is PostgresVault
    assert keystore.PostgresDatabase is postgres.PostgresDatabase
    assert keystore.LeaseManager is postgres.LeaseManager
    assert keystore.PostgresUnavailable is postgres.PostgresUnavailable
    assert issubclass(keystore.LeaseLost, keystore.VaultBusy)
