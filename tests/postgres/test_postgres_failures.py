"""Failures on the server side: lost connections, restarts, a server that is down,
and schema migrations run by several workers at once."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from keystore import Change
from keystore.backends import postgres
from keystore.backends.postgres import PostgresDatabase, PostgresUnavailable
from keystore.errors import MigrationError, SchemaTooNew, VaultIOError
from keystore.postgres_vault import PostgresVault
from mls.drainer import WriteBehindDrainer
from mls.storage import GranularStorage
from tests.postgres.conftest import FAST_KDF, PASSPHRASE

REPO = Path(__file__).resolve().parents[2]


def _admin(dsn: str):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(dsn, autocommit=True)


def _blocked_apply(
    db: PostgresDatabase, v: PostgresVault, batch: list[Change]
) -> tuple[threading.Thread, list[BaseException | int], object]:
    """Start ``v.apply(batch)`` in a thread, stalled on a row lock the test holds."""
    blocker = _admin(db.dsn)
    blocker.execute("BEGIN")
    blocker.execute(f"SELECT 1 FROM {db.schema}.stores WHERE store_id = %s FOR UPDATE",
                    (v.store_id,))
    outcome: list[BaseException | int] = []

    def run() -> None:
        try:
            outcome.append(v.apply(batch))
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=run)
    t.start()
    with _admin(db.dsn) as probe:
        for _ in range(200):
            waiting = probe.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'mls-keystore'"
                " AND wait_event_type = 'Lock'"
            ).fetchall()
            if waiting:
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the apply never reached the server")
    return t, outcome, blocker


def test_pg_terminate_backend_during_apply_loses_nothing(pg_db: PostgresDatabase) -> None:
    """The apply's server process is killed mid-transaction: it reconnects, retries,
    and the whole batch lands once."""
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF) as v:
        batch = [Change("c", b"k%d" % i, b"v%d" % i) for i in range(100)]
        t, outcome, blocker = _blocked_apply(pg_db, v, batch)
        with _admin(pg_db.dsn) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'mls-keystore' AND wait_event_type = 'Lock'"
            ).fetchall()
        assert killed == [(True,)]
        blocker.execute("ROLLBACK")  # type: ignore[attr-defined]
        blocker.close()  # type: ignore[attr-defined]
        t.join(timeout=30)
        assert outcome == [100]
        assert dict(v.items("c")) == {b"k%d" % i: b"v%d" % i for i in range(100)}


def test_a_server_restart_during_apply_loses_nothing(
    pg_server: object | None, pg_db: PostgresDatabase
) -> None:
    """The server restarts while an apply waits inside its transaction: the apply
    retries on a new connection once the server is back, and lands whole."""
    if pg_server is None:
        pytest.skip("needs the throwaway server (cannot restart an external one)")
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF) as v:
        v.put("c", b"before", b"acknowledged")
        batch = [Change("c", b"k%d" % i, b"v%d" % i) for i in range(100)]
        t, outcome, blocker = _blocked_apply(pg_db, v, batch)
        pg_server.stop("fast")  # type: ignore[attr-defined]
        pg_server.start()  # type: ignore[attr-defined]
        t.join(timeout=60)
        blocker.close()  # type: ignore[attr-defined]
        assert outcome == [100]
        assert v.get("c", b"before") == b"acknowledged"
        assert len(dict(v.items("c"))) == 101


def test_a_server_that_is_down_raises_vault_io_error_and_the_drainer_requeues(
    pg_server: object | None, pg_dsn: str, pg_schema: str
) -> None:
    """With the server down apply raises VaultIOError; the drainer keeps the batch and
    lands it once the server is back."""
    if pg_server is None:
        pytest.skip("needs the throwaway server (cannot stop an external one)")
    db = PostgresDatabase(pg_dsn, schema=pg_schema, retry_for=0.5, lease_ttl=60)
    try:
        v = PostgresVault.create(db, PASSPHRASE, FAST_KDF)
        storage = GranularStorage.load(v)
        drainer = WriteBehindDrainer(storage, v)
        storage.write("c", b"k", b"written while the server was down")
        pg_server.stop("fast")  # type: ignore[attr-defined]
        try:
            with pytest.raises(VaultIOError):
                drainer.flush()
            assert storage.pending_events() == 1
        finally:
            pg_server.start()  # type: ignore[attr-defined]
        assert drainer.flush() == 1
        assert v.get("c", b"k") == b"written while the server was down"
        drainer.close()
        v.close()
    finally:
        db.close()


def test_an_unreachable_server_is_vault_io_error(tmp_path: Path) -> None:
    """No server at the address: our own VaultIOError, not a psycopg error."""
    pytest.importorskip("psycopg")
    db = PostgresDatabase(f"host={tmp_path} port=1 dbname=x", retry_for=0.2)
    with pytest.raises(VaultIOError, match="cannot connect"):
        PostgresVault.create(db, PASSPHRASE, FAST_KDF)
    db.close()


def test_a_missing_extra_raises_postgres_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without psycopg the error is ours, and an ImportError too."""
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(PostgresUnavailable) as info:
        PostgresDatabase("host=/nowhere")
    assert isinstance(info.value, ImportError)
    assert "pip install -e '.[postgres]'" in str(info.value)


def _migrator(dsn: str, schema: str, wait: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.postgres.worker", "migrate", dsn, schema, wait],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def test_two_processes_migrating_at_once_are_serialised(pg_dsn: str, pg_schema: str) -> None:
    """The second migrator waits on the advisory lock while the first is inside its
    first step, then finds that step applied: each step is applied and recorded once
    (the later steps by whichever of the two takes the lock first)."""
    first = _migrator(pg_dsn, pg_schema, "stdin")
    second = None
    try:
        assert first.stdout is not None
        assert first.stdout.readline().strip() == "in-step"
        second = _migrator(pg_dsn, pg_schema, "no")
        key = postgres._advisory_key(pg_schema)
        with _admin(pg_dsn) as admin:
            for _ in range(1200):  # up to a minute: a loaded machine starts Python slowly
                waiting = admin.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND NOT granted AND ((classid::bigint << 32) | objid::bigint) = %s",
                    (key,),  # the signed 64-bit key, as the shift wraps
                ).fetchone()
                if waiting and waiting[0] == 1:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the second migrator never waited on the lock")
        out1, err1 = first.communicate("go\n", timeout=60)
        out2, err2 = second.communicate(timeout=60)
        assert first.returncode == 0, err1
        assert second.returncode == 0, err2
        done1 = ast.literal_eval(out1.strip().rsplit("done ", 1)[1])
        done2 = ast.literal_eval(out2.strip().rsplit("done ", 1)[1])
        assert done1[0] == 1 and 1 not in done2  # step 1: the first migrator's alone
        assert sorted(done1 + done2) == [m.version for m in postgres.PG_MIGRATIONS]
        with _admin(pg_dsn) as admin:
            rows = admin.execute(
                f"SELECT version FROM {pg_schema}.schema_migrations ORDER BY version"
            ).fetchall()
        assert rows == [(m.version,) for m in postgres.PG_MIGRATIONS]
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def test_a_recorded_checksum_that_differs_is_refused(pg_db: PostgresDatabase) -> None:
    """A schema whose recorded step differs from the shipped one is MigrationError."""
    pg_db.migrate()
    with _admin(pg_db.dsn) as admin:
        admin.execute(f"UPDATE {pg_db.schema}.schema_migrations SET checksum = 'edited'")
    with pytest.raises(MigrationError, match="checksum"):
        PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF)


def test_a_newer_schema_is_left_alone(pg_db: PostgresDatabase) -> None:
    """A schema migrated by newer code is SchemaTooNew, and nothing is changed."""
    pg_db.migrate()
    future = postgres.PG_LATEST_VERSION + 1
    with _admin(pg_db.dsn) as admin:
        admin.execute(
            f"INSERT INTO {pg_db.schema}.schema_migrations VALUES (%s, 'future', 'x', now())",
            (future,),
        )
    with pytest.raises(SchemaTooNew):
        PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF)
    assert pg_db.schema_version() == future


def test_a_failing_step_rolls_back_with_its_record(
    pg_db: PostgresDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that fails leaves neither its tables nor its record behind."""
    def boom(version: int) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(postgres, "_migration_step_hook", boom)
    with pytest.raises(RuntimeError):
        pg_db.migrate()
    monkeypatch.setattr(postgres, "_migration_step_hook", None)
    assert pg_db.schema_version() == 0
    with _admin(pg_db.dsn) as admin:
        assert admin.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s"
            " AND table_name IN ('stores', 'rows')", (pg_db.schema,)
        ).fetchone() == (0,)
    assert pg_db.migrate() == [m.version for m in postgres.PG_MIGRATIONS]


def test_writes_are_synchronous_even_when_the_role_says_otherwise(
    pg_dsn: str, pg_schema: str
) -> None:
    """A connection defaulting to synchronous_commit = off is raised to on for rows."""
    from psycopg.conninfo import make_conninfo

    dsn = make_conninfo(pg_dsn, options="-c synchronous_commit=off")
    db = PostgresDatabase(dsn, schema=pg_schema)
    try:
        with PostgresVault.create(db, PASSPHRASE, FAST_KDF) as v:
            v.put("c", b"k", b"v")
            assert db.run(
                lambda conn: conn.execute("SHOW synchronous_commit").fetchone()
            ) == ("on",)
    finally:
        db.close()
