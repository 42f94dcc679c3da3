"""A real PostgreSQL server for the tests in this folder.

``$MLS_KEYSTORE_PG_DSN`` when set (a server someone runs; each test works in its own
schema and drops it); otherwise a throwaway server of our own, started once per
session with ``initdb`` + ``pg_ctl`` on a unix socket in a fresh directory; when
neither is possible every test here is skipped, and the skip says why (or fails,
when ``$MLS_KEYSTORE_PG_REQUIRED`` is set, as ``.ci/run`` does).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import pytest

from keystore import profiles

PASSPHRASE = "correct horse battery staple"
FAST_KDF = profiles.INSECURE_FOR_TESTS_ONLY


def _skip_reason() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'mls-keystore[postgres]')"
    if os.environ.get("MLS_KEYSTORE_PG_DSN"):
        return None
    from keystore.backends._pgserver import find_bindir

    if find_bindir() is None:
        return "no PostgreSQL binaries (initdb, pg_ctl) and MLS_KEYSTORE_PG_DSN is not set"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as another user"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


@pytest.fixture(scope="session")
def pg_server() -> Iterator[object | None]:
    """The throwaway server (``None`` when an external server is used)."""
    reason = _skip_reason()
    if reason is not None:
        if os.environ.get("MLS_KEYSTORE_PG_REQUIRED"):  # CI: these tests must run
            pytest.fail(f"PostgreSQL tests required but cannot run: {reason}")
        pytest.skip(reason)
    if os.environ.get("MLS_KEYSTORE_PG_DSN"):
        yield None
        return
    from keystore.backends._pgserver import ThrowawayServer, find_bindir

    bindir = find_bindir()
    assert bindir is not None
    server = ThrowawayServer(bindir)
    try:
        server.__enter__()
    except Exception as exc:  # pragma: no cover - depends on the machine
        why = f"could not start a throwaway PostgreSQL server: {exc}"
        if os.environ.get("MLS_KEYSTORE_PG_REQUIRED"):
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def pg_dsn(pg_server: object | None) -> str:
    """A DSN reaching the test server as a superuser."""
    if pg_server is None:
        return os.environ["MLS_KEYSTORE_PG_DSN"]
    dsn: str = pg_server.dsn  # type: ignore[attr-defined]
    return dsn


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
