"""A real PostgreSQL server for the tests in this folder (``pg_server``/``pg_dsn`` live in
``tests/conftest.py`` so that the documentation examples can use the same server).

``$MLS_KEYSTORE_PG_DSN`` when set (a server someone runs; each test works in its own
schema and drops it); otherwise a throwaway server of our own, started once per
session with ``initdb`` + ``pg_ctl`` on a unix socket in a fresh directory; when
neither is possible every test here is skipped, and the skip says why (or fails,
when ``$MLS_KEYSTORE_PG_REQUIRED`` is set, as ``.ci/run`` does).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from keystore import profiles

PASSPHRASE = "correct horse battery staple"
FAST_KDF = profiles.INSECURE_FOR_TESTS_ONLY


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A fresh schema name for one test, dropped afterwards."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    except psycopg.Error:
        pass  # a test that stopped the server; the throwaway directory goes anyway


@pytest.fixture
def pg_db(pg_dsn: str, pg_schema: str) -> Iterator[object]:
    """A :class:`PostgresDatabase` on the test server, in the test's own schema."""
    from keystore.backends.postgres import PostgresDatabase

    db = PostgresDatabase(pg_dsn, schema=pg_schema, lease_ttl=5.0)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def read_backs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the backend's reads of the values a write replaces."""
    calls: list[int] = []
    from keystore.backends.postgres import PostgresBackend

    real = PostgresBackend._old_values

    def counting(self: PostgresBackend, *args: Any) -> Any:
        calls.append(1)
        return real(self, *args)

    monkeypatch.setattr(PostgresBackend, "_old_values", counting)
    yield calls
