"""An export of a PostgreSQL vault carries the generation of the rows it holds, and an
import into PostgreSQL lands in one transaction.

Two failures these tests pin down: an exporter that opened the vault read-only while
another worker kept writing must not label its file with the older generation it saw
at unlock (the source's anchor would then refuse the restored vault), and an import
that dies partway must not leave a vault behind that is empty, partial, or at a
generation below the one the file carries.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from keystore import RollbackDetected, Vault, VaultBusy
from keystore.backends import postgres
from keystore.backends.postgres import IMPORTED_LEASE_EPOCH, PostgresDatabase
from keystore.errors import NotAVault
from keystore.export import ExportStream, export_vault
from keystore.postgres_vault import PostgresVault, import_export_file
from tests.postgres.conftest import FAST_KDF, PASSPHRASE
from tests.postgres.launch import REPO, read_line

BACKUP = "a backup passphrase"
_T = TypeVar("_T")


class AccountAnchor:
    """An application's anchor kept per account (not per store id), so it follows the
    account's vault across a restore: what an import has to satisfy."""

    def __init__(self) -> None:
        self.generation: int | None = None

    def load(self, store_id: bytes) -> int | None:
        return self.generation

    def store(self, store_id: bytes, generation: int) -> None:
        if self.generation is None or generation > self.generation:
            self.generation = generation


def _export_file(tmp_path: Path, writes: int) -> tuple[Path, dict[bytes, bytes], int]:
    """An export of a SQLite vault after ``writes`` one-row writes: (file, rows, generation)."""
    path = tmp_path / "source.vault"
    rows = {b"g%d" % i: b"epoch secret %d" % i for i in range(writes)}
    Vault.create(path, PASSPHRASE, kdf=FAST_KDF).close()
    with Vault.open(path) as v:
        v.unlock(PASSPHRASE)
        for key, value in rows.items():
            v.put("groups", key, value)
        summary = export_vault(v, tmp_path / "source.export", BACKUP, FAST_KDF)
    assert summary.generation == writes
    return tmp_path / "source.export", rows, writes


def test_a_readonly_export_carries_the_generation_of_its_rows(
    pg_db: PostgresDatabase, tmp_path: Path
) -> None:
    """Another worker holds the lease and writes between the exporter's (read-only) unlock
    and its export: the file carries the generation of the rows it holds, and the source's
    anchor accepts the vault restored from it."""
    anchor = AccountAnchor()
    writer = PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="src", anchor=anchor)
    other = PostgresDatabase(pg_db.dsn, schema=pg_db.schema)
    try:
        for i in range(3):
            writer.put("groups", b"g%d" % i, b"epoch %d" % i)
        with PostgresVault.open(other, name="src", readonly=True) as exporter:
            exporter.unlock(PASSPHRASE)
            seen = exporter.generation
            for i in range(3, 8):
                writer.put("groups", b"g%d" % i, b"epoch %d" % i)
            rows_generation = writer.generation
            assert seen == 3 and rows_generation == 8
            assert exporter.generation == seen  # it has not seen those writes itself
            summary = export_vault(exporter, tmp_path / "src.export", BACKUP, FAST_KDF)
    finally:
        writer.close()
        other.close()
    assert summary.rows == 8 and summary.generation == rows_generation
    with (tmp_path / "src.export").open("rb") as fh:
        stream = ExportStream(fh, BACKUP)
        assert len(list(stream)) == 8
    assert stream.generation == rows_generation
    import_export_file(pg_db, tmp_path / "src.export", BACKUP, PASSPHRASE, FAST_KDF,
                       name="restored").close()
    with PostgresVault.open(pg_db, name="restored", anchor=anchor) as v:
        v.unlock(PASSPHRASE)  # accepted: not older than the anchor
        assert v.generation == rows_generation
        assert len(v.open_rows()["groups"]) == 8


def test_a_snapshot_with_another_vaults_state_record_is_refused(
    pg_db: PostgresDatabase,
) -> None:
    """The snapshot's generation is authenticated: a record copied from another vault
    into this one's store row fails on entry."""
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="a") as a, \
            PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="b") as b:
        for i in range(4):
            b.put("groups", b"k%d" % i, b"v")
        s = pg_db.schema
        pg_db.run(lambda conn: conn.execute(
            f"UPDATE {s}.stores SET state = (SELECT state FROM {s}.stores WHERE name = 'b')"
            " WHERE name = 'a'"))
        with pytest.raises(RollbackDetected), a.read_snapshot():
            pass


class _Crash(BaseException):
    """Stands for the process dying at that point (not an Exception: nothing catches it)."""


def _crash_after(calls: int) -> Callable[..., Any]:
    """A ``PostgresDatabase.run`` that dies right after its ``calls``-th call returned
    (in this thread: the lease renewer's are left alone)."""
    original = PostgresDatabase.run
    count = [0]

    def run(self: PostgresDatabase, fn: Callable[[Any], _T], *, idempotent: bool = True) -> _T:
        result = original(self, fn, idempotent=idempotent)
        if threading.current_thread() is threading.main_thread():
            count[0] += 1
            if count[0] == calls:
                raise _Crash
        return result

    return run


def test_an_import_that_dies_after_any_step_leaves_all_or_nothing(
    pg_db: PostgresDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Die after each round trip to the server in turn: every time, the database holds
    either no vault of that name or the whole one at the exported generation (never an
    empty vault, some of the rows, or the rows at a lower generation)."""
    export, rows, generation = _export_file(tmp_path, 6)
    pg_db.migrate()  # the schema is installed (a crash there is the migrations' business)
    outcomes = []
    for calls in range(1, 40):
        name = f"restored-{calls}"
        db = PostgresDatabase(pg_db.dsn, schema=pg_db.schema, lease_ttl=2.0)
        monkeypatch.setattr(PostgresDatabase, "run", _crash_after(calls))
        try:
            import_export_file(db, export, BACKUP, PASSPHRASE, FAST_KDF, name=name).close()
            finished = True
        except _Crash:
            finished = False
        finally:
            monkeypatch.undo()
            db.close()
        try:
            pg_db.find_store(store_id=None, name=name)
        except NotAVault:
            outcomes.append("nothing")
            assert not finished
            continue
        with PostgresVault.open(pg_db, name=name, readonly=True) as v:
            v.unlock(PASSPHRASE)
            assert v.generation == generation, f"died after call {calls}"
            assert v.open_rows() == {"groups": rows}, f"died after call {calls}"
        outcomes.append("whole")
        if finished:
            break
    else:
        raise AssertionError("the import never finished")
    assert outcomes[-1] == "whole" and "nothing" in outcomes


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Worker processes, killed (by pid) at the end of the test whatever happened."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def _import_worker(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.postgres.import_worker", *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, cwd=REPO,
    )


def test_kill_9_inside_the_import_transaction_leaves_nothing(
    pg_db: PostgresDatabase, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    """A process killed (SIGKILL) with every row of its import inserted but not committed
    leaves no vault; the same import run to the end lands it whole."""
    export, rows, generation = _export_file(tmp_path, 5)
    pg_db.migrate()
    killed = _import_worker(pg_db.dsn, pg_db.schema, "restored", str(export), BACKUP)
    procs.append(killed)
    assert read_line(killed) == "in-txn"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=10)
    assert pg_db.list_stores() == []
    finishing = _import_worker(pg_db.dsn, pg_db.schema, "restored", str(export), BACKUP)
    procs.append(finishing)
    assert read_line(finishing) == "in-txn"
    assert finishing.stdin is not None
    finishing.stdin.write("go on\n")
    finishing.stdin.flush()
    assert read_line(finishing) == f"done {generation}"
    with PostgresVault.open(pg_db, name="restored", readonly=True) as v:
        v.unlock(PASSPHRASE)
        assert v.generation == generation and v.open_rows() == {"groups": rows}


def test_the_imported_vault_is_returned_holding_its_lease(
    pg_db: PostgresDatabase, tmp_path: Path
) -> None:
    """The lease is taken in the import's transaction: no other worker can open the new
    vault for writing until the importer closes it; its nonce counter counts the rows."""
    export, rows, generation = _export_file(tmp_path, 4)
    other = PostgresDatabase(pg_db.dsn, schema=pg_db.schema)
    try:
        with import_export_file(pg_db, export, BACKUP, PASSPHRASE, FAST_KDF,
                                name="restored") as v:
            assert v.lease_epoch == IMPORTED_LEASE_EPOCH
            assert v.generation == generation
            assert v.stats().encryptions == len(rows)
            with pytest.raises(VaultBusy):
                PostgresVault.open(other, name="restored")
            v.put("groups", b"after", b"a write under the lease")
            assert v.generation == generation + 1
        with PostgresVault.open(other, name="restored") as w:
            w.unlock(PASSPHRASE)
            assert w.generation == generation + 1
            assert w.lease_epoch == IMPORTED_LEASE_EPOCH + 1
    finally:
        other.close()


def test_a_failure_inside_the_import_transaction_writes_nothing(
    pg_db: PostgresDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error raised after every row was inserted rolls the whole import back."""
    export, _, _ = _export_file(tmp_path, 3)

    def fail() -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(postgres, "_import_hook", fail)
    with pytest.raises(OSError, match="disk on fire"):
        import_export_file(pg_db, export, BACKUP, PASSPHRASE, FAST_KDF, name="restored")
    assert pg_db.list_stores() == []


def _newer_vault(db: PostgresDatabase, name: str, writes: int,
                 anchor: AccountAnchor | None = None) -> tuple[bytes, int]:
    """A vault ``name`` after ``writes`` one-row writes, closed: (store id, generation)."""
    with PostgresVault.create(db, PASSPHRASE, FAST_KDF, name=name, anchor=anchor) as v:
        for i in range(writes):
            v.put("old", b"o%d" % i, b"old row %d" % i)
        generation = v.generation
        assert generation is not None
        return v.store_id, generation


def _row_count(db: PostgresDatabase, store_id: bytes) -> int:
    s = db.schema
    row = db.run(lambda conn: conn.execute(
        f"SELECT count(*) FROM {s}.rows WHERE store_id = %s", (store_id,)).fetchone())
    assert row is not None
    return int(row[0])


def test_replace_lands_above_the_replaced_vault_in_one_step(
    pg_db: PostgresDatabase, tmp_path: Path
) -> None:
    """``replace=True`` over a vault no worker holds: the old vault and its rows are gone,
    the new one holds the export's rows at a generation above the replaced one's, and
    the replaced vault's anchor accepts it."""
    export, rows, exported = _export_file(tmp_path, 3)
    anchor = AccountAnchor()
    old_id, old_generation = _newer_vault(pg_db, "alice", 10, anchor)
    assert old_generation > exported
    with import_export_file(pg_db, export, BACKUP, PASSPHRASE, FAST_KDF, name="alice",
                            replace=True) as v:
        assert v.generation == old_generation + 1
        new_id = v.store_id
    assert new_id != old_id and _row_count(pg_db, old_id) == 0
    assert [n for _, n in pg_db.list_stores()] == ["alice"]
    with PostgresVault.open(pg_db, name="alice", anchor=anchor) as v:
        v.unlock(PASSPHRASE)  # accepted by the replaced vault's anchor
        assert v.open_rows() == {"groups": rows}
    # Without a vault of that name, replace simply creates it.
    with import_export_file(pg_db, export, BACKUP, PASSPHRASE, FAST_KDF, name="bob",
                            replace=True) as v:
        assert v.generation == exported


def test_replace_refuses_a_vault_a_worker_holds_and_changes_nothing(
    pg_db: PostgresDatabase, tmp_path: Path
) -> None:
    """While a worker holds the vault's lease the replacement is refused (VaultBusy); a
    failure inside the replacing transaction leaves the old vault as it was too."""
    export, _, _ = _export_file(tmp_path, 3)
    old_id, old_generation = _newer_vault(pg_db, "alice", 4)
    other = PostgresDatabase(pg_db.dsn, schema=pg_db.schema)
    try:
        with PostgresVault.open(other, name="alice") as holder:
            with pytest.raises(VaultBusy):
                import_export_file(pg_db, export, BACKUP, PASSPHRASE, FAST_KDF, name="alice",
                                   replace=True)
            holder.unlock(PASSPHRASE)
            holder.put("old", b"still", b"mine")  # its lease is intact
    finally:
        other.close()

    def fail() -> None:
        raise OSError("disk on fire")

    postgres_hook = postgres._import_hook
    postgres._import_hook = fail
    try:
        with pytest.raises(OSError, match="disk on fire"):
            import_export_file(pg_db, export, BACKUP, PASSPHRASE, FAST_KDF, name="alice",
                               replace=True)
    finally:
        postgres._import_hook = postgres_hook
    assert pg_db.find_store(store_id=None, name="alice")[0] == old_id
    with PostgresVault.open(pg_db, name="alice", readonly=True) as v:
        v.unlock(PASSPHRASE)
        assert v.generation == old_generation + 1
        assert len(v.open_rows()["old"]) == 5


def test_a_worker_whose_lease_expired_cannot_write_into_the_replaced_vault(
    pg_dsn: str, pg_schema: str, tmp_path: Path
) -> None:
    """A holder paused past its lease's expiry, then replaced: its next write is fenced
    off (LeaseLost), and nothing of it reaches the new vault."""
    from keystore import LeaseLost

    export, rows, _ = _export_file(tmp_path, 2)
    stale_db = PostgresDatabase(pg_dsn, schema=pg_schema, renew=False)  # a paused worker
    db = PostgresDatabase(pg_dsn, schema=pg_schema)
    try:
        stale = PostgresVault.create(stale_db, PASSPHRASE, FAST_KDF, name="alice")
        stale.put("old", b"o", b"before the pause")
        s = pg_schema
        db.run(lambda conn: conn.execute(  # its lease expires, as after a long pause
            f"UPDATE {s}.stores SET lease_expires = statement_timestamp() WHERE name = 'alice'"))
        import_export_file(db, export, BACKUP, PASSPHRASE, FAST_KDF, name="alice",
                           replace=True).close()
        with pytest.raises(LeaseLost):
            stale.put("old", b"late", b"after the replacement")
        with PostgresVault.open(db, name="alice", readonly=True) as v:
            v.unlock(PASSPHRASE)
            assert v.open_rows() == {"groups": rows}
        stale.close()
    finally:
        stale_db.close()
        db.close()


def test_cli_import_force_replaces_a_vault_in_postgresql(
    pg_db: PostgresDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``import --force`` with ``--dsn``: replaces the named vault above its generation
    (exit 0), and exits 4 (busy) while a worker holds it."""
    import json

    from keystore.cli import PASSPHRASE_ENV, main

    export, rows, _ = _export_file(tmp_path, 3)
    _, old_generation = _newer_vault(pg_db, "alice", 6)
    for name, text in (("pw", PASSPHRASE), ("backup", BACKUP)):
        fd = os.open(tmp_path / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    args = ["import", str(export), "alice", "--dsn", pg_db.dsn, "--schema", pg_db.schema,
            "--force", "--passphrase-file", str(tmp_path / "pw"), "--backup-passphrase-file",
            str(tmp_path / "backup"), "--kdf-profile", "INSECURE_FOR_TESTS_ONLY", "--json"]
    capsys.readouterr()
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["generation"] == old_generation + 1
    with PostgresVault.open(pg_db, name="alice") as v:
        v.unlock(PASSPHRASE)
        assert v.open_rows() == {"groups": rows}
        assert main(args) == 4
