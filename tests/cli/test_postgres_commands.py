"""Every vault command on a vault in PostgreSQL, against the real test server.

``init``, ``passwd`` (with and without ``--rekey``), ``rekey`` and ``mls ...`` work on a
PostgreSQL vault; ``convert`` and ``compact`` (file operations) refuse it with a usage
error; export and import carry the vault's generation between both backends.  The other
reading commands are covered in ``tests/postgres/test_postgres_cli.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from keystore import (
    Change,
    PostgresAddress,
    PostgresVault,
    RollbackDetected,
    Vault,
    WrongPassphrase,
)
from keystore.backends.postgres import PostgresDatabase
from keystore.export import export_vault, import_vault
from keystore.postgres_vault import import_export_file
from tests.cli.conftest import Runner, secret_file
from tests.cli.test_export_generation import AccountAnchor
from tests.postgres.conftest import FAST_KDF, PASSPHRASE, pg_schema  # noqa: F401

FAST = ("--kdf-profile", "INSECURE_FOR_TESTS_ONLY")
NEW = "a brand new passphrase"
BACKUP = "a backup passphrase"
ROWS = [("key_packages", b"kp-%d" % i, b"secret %d" % i) for i in range(20)]


@pytest.fixture
def dsn(pg_dsn: str, pg_schema: str) -> str:  # noqa: F811
    """The test server; every command below also gets ``--schema`` (the test's own)."""
    return pg_dsn


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Passphrase files: the vault's, a new one, a backup's."""
    return {
        "pw": secret_file(tmp_path / "pw.txt", PASSPHRASE + "\n"),
        "new": secret_file(tmp_path / "new.txt", NEW + "\n"),
        "backup": secret_file(tmp_path / "backup.txt", BACKUP + "\n"),
    }


def _make(dsn: str, schema: str, name: str = "bot") -> bytes:
    """A vault holding ROWS; its store id."""
    with PostgresVault.create(dsn, PASSPHRASE, FAST_KDF, name=name, schema=schema) as v:
        v.apply(Change(c, k, val) for c, k, val in ROWS)
        return v.store_id


def _rows(dsn: str, schema: str, name: str, passphrase: str) -> list[tuple[str, bytes, bytes]]:
    with PostgresVault.open(dsn, name=name, readonly=True, schema=schema) as v:
        v.unlock(passphrase)
        return sorted((c, k, val) for c, kv in v.open_rows().items() for k, val in kv.items())


def _key_generation(dsn: str, schema: str, name: str) -> int:
    with PostgresVault.open(dsn, name=name, readonly=True, schema=schema) as v:
        return v.stats().key_generation


def test_init_creates_a_vault_in_postgresql(
    cli: Runner, dsn: str, pg_schema: str, files: dict[str, Path]  # noqa: F811
) -> None:
    """``init --dsn DSN NAME`` makes a vault that opens with the passphrase given."""
    r = cli("init", "--dsn", dsn, "--schema", pg_schema, "alice", "--passphrase-file",
            files["pw"], *FAST, "--json")
    assert r.code == 0, r.err
    with PostgresVault.open(dsn, name="alice", schema=pg_schema) as v:
        v.unlock(PASSPHRASE)
        assert v.store_id.hex() == r.json()["store_id"]
    again = cli("init", "--dsn", dsn, "--schema", pg_schema, "alice", "--passphrase-file",
                files["pw"], *FAST)
    assert again.code == 2 and "already exists" in again.err
    assert "Traceback" not in again.err


def test_passwd_changes_the_passphrase_of_a_postgresql_vault(
    cli: Runner, dsn: str, pg_schema: str, files: dict[str, Path]  # noqa: F811
) -> None:
    """After ``passwd`` the new passphrase opens the vault, the old one does not, and every
    row is unchanged (no rekey: the key generation stays)."""
    _make(dsn, pg_schema)
    r = cli("passwd", "--dsn", dsn, "--schema", pg_schema, "bot", "--passphrase-file",
            files["pw"], "--new-passphrase-file", files["new"], *FAST, "--json")
    assert r.code == 0, r.err
    assert r.json()["rekeyed"] is False and r.json()["key_generation"] == 1
    assert _rows(dsn, pg_schema, "bot", NEW) == sorted(ROWS)
    with pytest.raises(WrongPassphrase):
        _rows(dsn, pg_schema, "bot", PASSPHRASE)


def test_passwd_rekey_and_rekey_reencrypt_a_postgresql_vault(
    cli: Runner, dsn: str, pg_schema: str, files: dict[str, Path]  # noqa: F811
) -> None:
    """``passwd --rekey`` and ``rekey`` each give the rows a new data key (the key
    generation goes up) and keep every row; a URL names the vault as well as --dsn."""
    _make(dsn, pg_schema)
    r = cli("passwd", "--dsn", dsn, "--schema", pg_schema, "bot", "--rekey",
            "--passphrase-file", files["pw"], "--new-passphrase-file", files["new"], "--json")
    assert r.code == 0, r.err
    assert r.json()["rekeyed"] is True and r.json()["key_generation"] == 2
    assert _rows(dsn, pg_schema, "bot", NEW) == sorted(ROWS)
    url = f"{dsn}#bot" if dsn.startswith("postgres") else None
    target = [url] if url else ["--dsn", dsn, "bot"]
    r = cli("rekey", *target, "--schema", pg_schema, "--passphrase-file", files["new"],
            "--json")
    assert r.code == 0, r.err
    assert r.json() == {"path": r.json()["path"], "key_generation": 3,
                        "rows_reencrypted": len(ROWS)}
    assert _key_generation(dsn, pg_schema, "bot") == 3
    assert _rows(dsn, pg_schema, "bot", NEW) == sorted(ROWS)


def test_passwd_of_a_raw_key_vault_in_postgresql(
    cli: Runner, dsn: str, pg_schema: str, tmp_path: Path  # noqa: F811
) -> None:
    """A raw-key vault rotates its key with --raw-key-file OLD --new-raw-key-file NEW."""
    old, new = bytes(range(32)), bytes(range(1, 33))
    with PostgresVault.create_with_key(dsn, old, name="k", schema=pg_schema) as v:
        v.put("c", b"k", b"v")
    old_file = secret_file(tmp_path / "old.key", old.hex())
    new_file = secret_file(tmp_path / "new.key", new.hex())
    r = cli("passwd", "--dsn", dsn, "--schema", pg_schema, "k", "--raw-key-file", old_file,
            "--new-raw-key-file", new_file)
    assert r.code == 0, r.err
    with PostgresVault.open(dsn, name="k", readonly=True, schema=pg_schema) as v:
        v.unlock_with_key(new)
        assert v.get("c", b"k") == b"v"


def test_writing_commands_wait_for_no_worker_they_fail_busy(
    cli: Runner, dsn: str, pg_schema: str, files: dict[str, Path]  # noqa: F811
) -> None:
    """``passwd`` and ``rekey`` need the writer lease: while a worker holds the vault they
    exit 4 at once and change nothing."""
    _make(dsn, pg_schema)
    with PostgresVault.open(dsn, name="bot", schema=pg_schema) as worker:
        worker.unlock(PASSPHRASE)
        r = cli("passwd", "--dsn", dsn, "--schema", pg_schema, "bot", "--passphrase-file",
                files["pw"], "--new-passphrase-file", files["new"])
        assert r.code == 4, r.err
        r = cli("rekey", "--dsn", dsn, "--schema", pg_schema, "bot", "--passphrase-file",
                files["pw"])
        assert r.code == 4, r.err
        worker.put("c", b"still", b"writable")
    assert _key_generation(dsn, pg_schema, "bot") == 1
    assert len(_rows(dsn, pg_schema, "bot", PASSPHRASE)) == len(ROWS) + 1


@pytest.mark.parametrize("command", ["convert", "compact"])
def test_file_only_commands_refuse_a_postgresql_vault_clearly(
    cli: Runner, dsn: str, pg_schema: str, files: dict[str, Path], command: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """``convert`` and ``compact`` are about files: a usage error (exit 2) that says what
    to do instead, never a traceback, whether named by --dsn or by a URL."""
    _make(dsn, pg_schema)
    extra = [str(tmp_path / "new.vault")] if command == "convert" else []
    r = cli(command, "--dsn", dsn, "--schema", pg_schema, "bot", *extra, "--passphrase-file",
            files["pw"], "--json")
    assert r.code == 2 and "Traceback" not in r.err
    assert ("export" in r.err) if command == "convert" else ("VACUUM" in r.err)
    assert r.json()["error"] == "UsageError"
    r = cli(command, "postgresql://localhost/db#bot", *extra, "--passphrase-file", files["pw"])
    assert r.code == 2 and "PostgreSQL" in r.err
    if command == "convert":  # a URL as the destination is refused the same way
        source = tmp_path / "file.vault"
        Vault.create(source, PASSPHRASE, kdf=FAST_KDF).close()
        r = cli("convert", source, "postgresql://localhost/db#x", "--passphrase-file",
                files["pw"])
        assert r.code == 2 and "export" in r.err
        assert not (tmp_path / "new.vault").exists()


def test_mls_inspection_reads_a_postgresql_vault_beside_its_worker(
    cli: Runner, dsn: str, pg_schema: str, files: dict[str, Path], tmp_path: Path,  # noqa: F811
) -> None:
    """``mls-keystore mls groups|members|key-packages`` on a client whose vault is in
    PostgreSQL, while that client holds the writer lease: no lease is taken, nothing
    is written."""
    from mls import MlsClient
    from mls.inspection import MlsInspector

    db = PostgresDatabase(dsn, schema=pg_schema)
    bob = MlsClient.create(tmp_path / "bob.vault", PASSPHRASE, identity=b"bob", kdf=FAST_KDF)
    alice = MlsClient.create(PostgresAddress(db, name="alice"), PASSPHRASE,
                             identity=b"alice", kdf=FAST_KDF)
    try:
        gid = alice.create_group()
        _, welcome = alice.add_members(gid, [bob.generate_key_package()])
        bob.join(welcome)
        alice.generate_key_package()
        epoch = alice.vault.generation
        target = ["--dsn", dsn, "--schema", pg_schema, "alice"]
        r = cli("mls", "groups", *target, "--passphrase-file", files["pw"], "--json")
        assert r.code == 0, r.err
        report = r.json()
        assert report["client"]["identity_text"] == "alice"
        assert [g["group_id"] for g in report["groups"]] == [gid.hex()]
        r = cli("mls", "members", *target, gid.hex(), "--passphrase-file", files["pw"],
                "--json")
        assert r.code == 0, r.err
        assert "bob" in r.out
        r = cli("mls", "key-packages", *target, "--passphrase-file", files["pw"], "--json")
        assert r.code == 0, r.err
        assert len(r.json()["key_packages"]) == 1
        wrong = secret_file(tmp_path / "wrong", "not it")
        r = cli("mls", "groups", *target, "--passphrase-file", wrong)
        assert r.code == 3 and "Traceback" not in r.err
        assert alice.vault.generation == epoch  # the holder's state was not written to
        alice.encrypt(gid, b"the worker still writes")  # its lease is intact
        with MlsInspector.open(PostgresAddress(dsn, name="alice", schema=pg_schema),
                               PASSPHRASE) as inspector:
            assert inspector.group_ids() == [gid]
    finally:
        alice.close()
        bob.close()
        db.close()


def test_export_and_import_carry_the_generation_through_postgresql(
    dsn: str, pg_schema: str, tmp_path: Path  # noqa: F811
) -> None:
    """PostgreSQL -> export -> PostgreSQL and -> file: the new vaults are not older than
    the source, so an anchor that tracked the source accepts them; a file's export
    imported into PostgreSQL likewise."""
    anchor = AccountAnchor()
    with PostgresVault.create(dsn, PASSPHRASE, FAST_KDF, name="src", schema=pg_schema,
                              anchor=anchor) as v:
        for i in range(6):
            v.put("groups", b"g%d" % i, b"epoch %d" % i)
        source_generation = v.generation
        summary = export_vault(v, tmp_path / "src.export", BACKUP, FAST_KDF)
    assert source_generation == 6 and summary.generation == 6
    restored = import_export_file(dsn, tmp_path / "src.export", BACKUP, PASSPHRASE, FAST_KDF,
                                  name="restored", schema=pg_schema)
    restored.close()
    with PostgresVault.open(dsn, name="restored", schema=pg_schema, anchor=anchor) as v:
        v.unlock(PASSPHRASE)  # the anchor accepts it
        assert v.generation is not None and v.generation >= source_generation
    import_vault(tmp_path / "src.export", tmp_path / "f.vault", BACKUP, PASSPHRASE, FAST_KDF)
    with Vault.open(tmp_path / "f.vault", anchor=anchor) as fv:
        fv.unlock(PASSPHRASE)
        assert fv.generation is not None and fv.generation >= source_generation
        for i in range(4):
            fv.put("groups", b"more%d" % i, b"x")
        file_generation = fv.generation
        export_vault(fv, tmp_path / "f.export", BACKUP, FAST_KDF)
    assert file_generation is not None
    back = import_export_file(dsn, tmp_path / "f.export", BACKUP, PASSPHRASE, FAST_KDF,
                              name="back", schema=pg_schema, )
    back.close()
    with PostgresVault.open(dsn, name="back", schema=pg_schema, anchor=anchor) as v:
        v.unlock(PASSPHRASE)
        assert v.generation is not None and v.generation >= file_generation
    # The older PostgreSQL restore is now behind the anchor: refused, as it should be.
    with PostgresVault.open(dsn, name="restored", schema=pg_schema, anchor=anchor) as v, \
            pytest.raises(RollbackDetected):
        v.unlock(PASSPHRASE)


def test_cli_import_into_postgresql_reports_the_carried_generation(
    cli: Runner, dsn: str, pg_schema: str, files: dict[str, Path], tmp_path: Path,  # noqa: F811
) -> None:
    """``export --dsn`` then ``import --dsn``: both JSON reports carry the generation."""
    _make(dsn, pg_schema)
    with PostgresVault.open(dsn, name="bot", schema=pg_schema) as v:
        v.unlock(PASSPHRASE)
        for i in range(5):
            v.put("c", b"%d" % i, b"x")
        generation = v.generation
    r = cli("export", "--dsn", dsn, "--schema", pg_schema, "bot", tmp_path / "bot.export",
            "--passphrase-file", files["pw"], "--backup-passphrase-file", files["backup"],
            *FAST, "--json")
    assert r.code == 0, r.err
    assert r.json()["generation"] == generation
    r = cli("import", tmp_path / "bot.export", "--dsn", dsn, "--schema", pg_schema, "bot2",
            "--passphrase-file", files["pw"], "--backup-passphrase-file", files["backup"],
            *FAST, "--json")
    assert r.code == 0, r.err
    assert generation is not None and r.json()["generation"] >= generation


def test_init_of_a_raw_key_vault_and_inspection_that_installs_nothing(
    cli: Runner, dsn: str, pg_schema: str, files: dict[str, Path], tmp_path: Path,  # noqa: F811
) -> None:
    """``init --raw-key-file`` keys the new vault by that key; ``mls ...`` on a database
    without the vault schema exits 6 and does not install it."""
    import psycopg

    key = bytes(range(32))
    key_file = secret_file(tmp_path / "k.key", key.hex())
    r = cli("mls", "groups", "--dsn", dsn, "--schema", pg_schema, "nobody",
            "--passphrase-file", files["pw"])
    assert r.code == 6 and "Traceback" not in r.err
    with psycopg.connect(dsn) as conn:
        found = conn.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s",
                             (pg_schema,)).fetchone()
    assert found is None
    r = cli("init", "--dsn", dsn, "--schema", pg_schema, "raw", "--raw-key-file", key_file)
    assert r.code == 0, r.err
    with PostgresVault.open(dsn, name="raw", readonly=True, schema=pg_schema) as v:
        assert v.kdf is None
        v.unlock_with_key(key)
