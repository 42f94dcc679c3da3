"""The plaintext baseline of ``bench.postgres_bench`` does the work it is credited with.

The encrypted apply is compared with the fastest of four plaintext upserts into a
table keyed like the vault's (identity id, category, key): each method must store
exactly the rows given, replace them on the next batch, and keep the identity id;
the untimed vacuum step must run on every table written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from bench.postgres_bench import _METHODS, _PlainTable, _vacuum


@pytest.fixture
def schema(pg_dsn: str, pg_schema: str) -> Iterator[str]:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {pg_schema}")
    yield pg_schema


def _stored(table: _PlainTable) -> list[tuple[object, ...]]:
    with table.conn.cursor(binary=True) as cur:
        cur.execute(f"SELECT * FROM {table.table} ORDER BY category, key")
        return [tuple(bytes(c) if isinstance(c, memoryview) else c for c in r)
                for r in cur.fetchall()]


@pytest.mark.parametrize("method", _METHODS)
@pytest.mark.parametrize("store_id", [True, False])
def test_every_baseline_method_stores_and_replaces_the_rows(
    pg_dsn: str, schema: str, method: str, store_id: bool
) -> None:
    table = _PlainTable(pg_dsn, schema, store_id=store_id)
    try:
        for _ in range(2):  # an insert, then a replacement of every row
            rows = [(f"c{i % 3}", b"k%d" % i, os.urandom(40)) for i in range(7)]
            table.upsert(rows, method)
            prefix: tuple[bytes, ...] = () if table.sid is None else (table.sid,)
            assert _stored(table) == sorted((*prefix, *r) for r in rows)
    finally:
        table.close()


def test_the_vacuum_step_runs_on_every_table(pg_dsn: str, schema: str) -> None:
    a, b = _PlainTable(pg_dsn, schema), _PlainTable(pg_dsn, schema, store_id=False)
    try:
        rows = [("c", b"k%d" % i, b"v") for i in range(5)]
        for t in (a, b):
            t.upsert(rows, "arrays")
            t.upsert(rows, "arrays")  # one dead copy of each row
        _vacuum(a, b)()
        counts = a.conn.execute(
            "SELECT relname, n_dead_tup, vacuum_count FROM pg_stat_user_tables"
            " WHERE schemaname = %s ORDER BY relname", (schema,),
        ).fetchall()
        assert [(name, vacuums > 0) for name, _, vacuums in counts] == [
            ("plain_rows", True), ("plain_rows_no_id", True)]
    finally:
        a.close()
        b.close()
