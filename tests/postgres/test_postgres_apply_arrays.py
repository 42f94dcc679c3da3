"""The default PostgreSQL apply path ("arrays"): rows framed as binary arrays by us, the
fence returning the state record, one upsert statement with no staging table.  It must
store exactly what the COPY path stores, keep the record consistent, and turn every
failure into our error with nothing written."""

from __future__ import annotations

import os
from typing import Any

import pytest

from keystore import Change, RollbackDetected
from keystore.backends.postgres import (
    PostgresBackend,
    PostgresDatabase,
    _ByteaArray,
    _register_array_dumpers,
    _TextArray,
)
from keystore.errors import VaultIOError
from keystore.postgres_vault import PostgresVault
from tests.postgres.conftest import FAST_KDF, PASSPHRASE


def _stored(db: PostgresDatabase, store_id: bytes) -> tuple[Any, list[tuple[str, bytes, bytes]]]:
    import psycopg

    with psycopg.connect(db.dsn, autocommit=True) as admin:
        store = admin.execute(
            f"SELECT encryptions, state FROM {db.schema}.stores WHERE store_id = %s",
            (store_id,),
        ).fetchone()
        rows = admin.execute(
            f"SELECT category, key_hash, value FROM {db.schema}.rows WHERE store_id = %s"
            " ORDER BY category, key_hash",
            (store_id,),
        ).fetchall()
    return store, [(str(c), bytes(k), bytes(v)) for c, k, v in rows]


def test_arrays_is_the_default_upsert_method() -> None:
    """A vault uses the binary-array path unless told otherwise."""
    assert PostgresBackend.upsert_method == "arrays"


@pytest.mark.parametrize(
    "items",
    [
        [],
        [b""],
        [b"\x00" * 40, b"", os.urandom(5000), b"\xff"],
        [os.urandom(32) for _ in range(300)],
    ],
)
def test_binary_arrays_reach_the_server_element_for_element(
    pg_dsn: str, items: list[bytes]
) -> None:
    """What we frame by hand is what the server reads as ``bytea[]`` and ``text[]``."""
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        _register_array_dumpers(conn)
        got = conn.execute(
            "SELECT coalesce(array_length(%b::bytea[], 1), 0), x FROM unnest(%b::bytea[])"
            " WITH ORDINALITY AS t(x, n) ORDER BY n",
            (_ByteaArray(items), _ByteaArray(items)),
        ).fetchall()
        assert [bytes(x) for _, x in got] == items
        names = [f"cat/{i}" for i in range(len(items))]
        text = conn.execute("SELECT %b::text[]", (_TextArray(names),)).fetchone()
        assert text is not None and list(text[0]) == names


def _vault(db: PostgresDatabase, name: str, method: str) -> PostgresVault:
    vault = PostgresVault.create(db, PASSPHRASE, FAST_KDF, name=name)
    vault._pg.upsert_method = method
    return vault


def test_arrays_and_copy_paths_keep_the_same_rows_and_a_valid_record(
    pg_db: PostgresDatabase,
) -> None:
    """The same batches (inserts, replacements, deletes, mixed) through the arrays path
    and the COPY path leave the same plaintext, and each vault's record vouches for
    its rows (verify, and a fresh unlock that checks it)."""
    batches = [
        [Change(f"c{i % 3}", b"k%d" % i, os.urandom(i * 7 % 3000)) for i in range(200)],
        [Change("c1", b"k1", b"replaced"), Change("c0", b"k0", None), Change("new", b"n", b"")],
        [Change("c2", b"k2", None), Change("c2", b"k5", None)],  # deletes only
        [Change("c1", b"k1", b"once"), Change("c1", b"k1", b"twice")],  # coalesced
    ]
    vaults = [_vault(pg_db, "arrays", "arrays"), _vault(pg_db, "copy", "copy")]
    for batch in batches:
        for vault in vaults:
            vault.apply(batch)
    opened = []
    for vault in vaults:
        assert vault.verify().ok
        vault.lock()
        vault.unlock(PASSPHRASE)  # checks the stored record against every row
        opened.append(vault.open_rows())
        assert vault.generation == len(batches)  # one step per batch, none lost
    assert opened[0] == opened[1]
    assert opened[0]["c1"][b"k1"] == b"twice"
    assert b"k0" not in opened[0]["c0"] and b"k2" not in opened[0]["c2"]
    for vault in vaults:
        vault.close()


def test_a_failed_upsert_is_our_error_and_writes_nothing(
    pg_db: PostgresDatabase,
) -> None:
    """When the server refuses the upsert (after the fence bumped the counter), the
    caller gets VaultIOError, not a psycopg error, and neither the rows, the counter
    nor the state record change."""
    vault = _vault(pg_db, "v", "arrays")
    vault.apply([Change("c", b"k%d" % i, b"v%d" % i) for i in range(10)])
    before = _stored(pg_db, vault.store_id)
    backend = vault._pg
    good = backend._sql_upsert_arrays, backend._sql_upsert_arrays_state
    # A syntax error in both forms (with and without the state record).
    backend._sql_upsert_arrays, backend._sql_upsert_arrays_state = (
        sql.replace("ON CONFLICT", "ON CONFLICTS") for sql in good
    )
    with pytest.raises(VaultIOError, match="refused"):
        vault.apply([Change("c", b"k1", b"new"), Change("c", b"k99", b"added")])
    assert _stored(pg_db, vault.store_id) == before
    backend._sql_upsert_arrays, backend._sql_upsert_arrays_state = good
    vault.apply([Change("c", b"k1", b"new")])  # the connection is usable again
    assert vault.get("c", b"k1") == b"new"
    vault.close()


def test_a_record_that_cannot_be_advanced_rolls_the_upsert_back(
    pg_db: PostgresDatabase,
) -> None:
    """The record is computed from the values read under the fence, before any row is
    sent; if that fails (here: the record was removed underneath), nothing is written,
    not even the counter bump."""
    vault = _vault(pg_db, "v", "arrays")
    vault.apply([Change("c", b"k%d" % i, b"v%d" % i) for i in range(50)])
    import psycopg

    with psycopg.connect(pg_db.dsn, autocommit=True) as admin:
        admin.execute(
            f"UPDATE {pg_db.schema}.stores SET state = NULL WHERE store_id = %s",
            (vault.store_id,),
        )
    before = _stored(pg_db, vault.store_id)
    with pytest.raises(RollbackDetected):
        vault.apply([Change("c", b"k%d" % i, b"new") for i in range(50)])
    assert _stored(pg_db, vault.store_id) == before
    vault.close()


def test_an_apply_creates_no_temporary_table(pg_db: PostgresDatabase) -> None:
    """The default path stages nothing, so a worker role without ``TEMPORARY`` can
    write (docs/postgres.md, Roles)."""
    vault = _vault(pg_db, "v", "arrays")
    vault.apply([Change("c", b"k%d" % i, b"v") for i in range(20)])
    vault.apply([Change("c", b"k1", None)])
    temp = pg_db.run(
        lambda conn: conn.execute(
            "SELECT count(*) FROM pg_class WHERE relpersistence = 't'"
            " AND relnamespace = pg_my_temp_schema()"
        ).fetchone()
    )
    assert temp == (0,)
    vault._pg.upsert_method = "copy"  # the COPY path does stage: the check can fail
    vault.apply([Change("c", b"k2", b"w")])
    assert pg_db.run(
        lambda conn: conn.execute(
            "SELECT count(*) FROM pg_class WHERE relpersistence = 't'"
            " AND relnamespace = pg_my_temp_schema()"
        ).fetchone()
    ) == (1,)
    vault.close()
