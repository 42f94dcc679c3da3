"""``mls-keystore`` on a vault in PostgreSQL (``--dsn``, or a URL), against the real server."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from keystore import Change, PostgresAddress, PostgresDatabase, PostgresVault, Vault
from keystore.backends.postgres import PG_LATEST_VERSION, PG_MIGRATIONS
from keystore.cli import PASSPHRASE_ENV, main
from tests.postgres.conftest import FAST_KDF, PASSPHRASE

FAST = ("--kdf-profile", "INSECURE_FOR_TESTS_ONLY")
ROWS = [
    ("key_packages", b"kp-1", b"secret key package one"),
    ("key_packages", b"kp-2", b"secret key package two"),
    ("groups/epoch", b"g", b"\x00" * 2000),
]


@dataclass(frozen=True)
class Result:
    """Exit code and output of one in-process run of the command."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """stdout parsed as JSON."""
        return json.loads(self.out)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``keystore.cli.main`` in-process."""

    def runner(*args: str | Path) -> Result:
        monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return runner


def _secret(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Passphrase files: the vault's, a backup's, and a wrong one."""
    return {
        "pw": _secret(tmp_path / "pw.txt", PASSPHRASE),
        "backup": _secret(tmp_path / "backup.txt", "a backup passphrase"),
        "wrong": _secret(tmp_path / "wrong.txt", "not the passphrase"),
    }


def _pg_rows(dsn: str, schema: str, name: str) -> list[tuple[str, bytes, bytes]]:
    with PostgresVault.open(dsn, name=name, readonly=True, schema=schema) as v:
        v.unlock(PASSPHRASE)
        return sorted((c, k, val) for c, kv in v.open_rows().items() for k, val in kv.items())


def _file_rows(path: Path) -> list[tuple[str, bytes, bytes]]:
    with Vault.open(path, readonly=True) as v:
        v.unlock(PASSPHRASE)
        return sorted((c, k, val) for c in v.categories() for k, val in v.items(c))


def test_export_and_import_move_a_vault_between_sqlite_and_postgres(
    cli: Any, pg_dsn: str, pg_schema: str, tmp_path: Path, files: dict[str, Path]
) -> None:
    """A SQLite vault exported and imported with --dsn arrives whole in PostgreSQL, and
    back again into a new file: the same rows, verified at each stop."""
    src = tmp_path / "src.vault"
    with Vault.create(src, PASSPHRASE, kdf=FAST_KDF) as v:
        v.apply(Change(c, k, val) for c, k, val in ROWS)
    pg = ("--dsn", pg_dsn, "--schema", pg_schema)
    assert cli("export", src, tmp_path / "a.export", "--passphrase-file", files["pw"],
               "--backup-passphrase-file", files["backup"], *FAST).code == 0
    r = cli("import", tmp_path / "a.export", "alice", *pg, "--passphrase-file", files["pw"],
            "--backup-passphrase-file", files["backup"], *FAST, "--json")
    assert r.code == 0, r.err
    assert (r.json()["rows"], r.json()["categories"]) == (3, 2)
    assert r.json()["plaintext_bytes"] == sum(len(k) + len(v) for _, k, v in ROWS)
    assert _pg_rows(pg_dsn, pg_schema, "alice") == sorted(ROWS)

    r = cli("verify", "alice", *pg, "--passphrase-file", files["pw"])
    assert r.code == 0, r.err
    assert "3 rows checked, all authentic" in r.out
    r = cli("stats", "alice", *pg, "--json")
    assert r.code == 0, r.err
    assert r.json()["total_rows"] == 3
    assert r.json()["categories"]["key_packages"]["rows"] == 2

    assert cli("export", "alice", tmp_path / "b.export", *pg, "--passphrase-file",
               files["pw"], "--backup-passphrase-file", files["backup"], *FAST).code == 0
    back = tmp_path / "back.vault"
    assert cli("import", tmp_path / "b.export", back, "--passphrase-file", files["pw"],
               "--backup-passphrase-file", files["backup"], *FAST).code == 0
    assert _file_rows(back) == sorted(ROWS)


def test_a_postgresql_url_names_the_database_and_the_vault(
    cli: Any, pg_dsn: str, pg_schema: str, files: dict[str, Path]
) -> None:
    """``postgresql://…/DB#NAME`` as the vault argument works like ``--dsn DSN NAME``."""
    params = dict(part.split("=", 1) for part in pg_dsn.split())
    url = (f"postgresql://{params['user']}@/{params['dbname']}?host={params['host']}"
           f"&port={params.get('port', '5432')}")
    with PostgresVault.create(pg_dsn, PASSPHRASE, FAST_KDF, name="bob", schema=pg_schema) as v:
        v.put("c", b"k", b"v")
    r = cli("verify", f"{url}#bob", "--schema", pg_schema, "--passphrase-file", files["pw"])
    assert r.code == 0, r.err
    assert "1 row checked, all authentic" in r.out
    r = cli("stats", f"{url}#nobody", "--schema", pg_schema)
    assert r.code == 6  # no such vault
    r = cli("stats", url, "--schema", pg_schema)
    assert r.code == 2 and "name the vault" in r.err


def test_status_shows_schema_and_the_writer_lease(
    cli: Any, pg_dsn: str, pg_schema: str
) -> None:
    """status needs no passphrase and says who holds the writer lease, read-only."""
    db = PostgresDatabase(pg_dsn, schema=pg_schema)
    try:
        v = PostgresVault.create(db, PASSPHRASE, FAST_KDF, name="carol")
        v.apply([Change("c", b"k%d" % i, b"x") for i in range(4)])
        r = cli("status", "carol", "--dsn", pg_dsn, "--schema", pg_schema, "--json")
        assert r.code == 0, r.err
        report = r.json()
        assert report["store_id"] == v.store_id.hex()
        assert (report["rows"], report["schema_version"], report["pending"]) == (
            4, PG_LATEST_VERSION, [])
        assert report["lease_holder"] == db.leases.worker_id
        assert report["lease_live"] is True
        assert report["lease_epoch"] == v.lease_epoch
        assert all(a["matches_shipped"] for a in report["applied"])
        v.put("c", b"after-status", b"y")  # status took no lease: the holder writes on
        v.close()
        r = cli("status", "carol", "--dsn", pg_dsn, "--schema", pg_schema)
        assert r.code == 0 and "writer       none" in r.out
    finally:
        db.close()


def test_migrate_installs_a_schema_and_dry_run_writes_nothing(
    cli: Any, pg_dsn: str, pg_schema: str
) -> None:
    """migrate --dsn --dry-run lists the steps of an empty schema and installs nothing;
    migrate --dsn installs them; a second run has nothing to do."""
    pg = ("--dsn", pg_dsn, "--schema", pg_schema)
    r = cli("migrate", *pg, "--dry-run", "--json")
    assert r.code == 0, r.err
    assert (r.json()["from_version"], [s["version"] for s in r.json()["steps"]]) == (
        0, [m.version for m in PG_MIGRATIONS])
    with PostgresDatabase(pg_dsn, schema=pg_schema, renew=False) as db:
        assert db.schema_version() == 0
    r = cli("migrate", *pg, "--json")
    assert r.code == 0, r.err
    with PostgresDatabase(pg_dsn, schema=pg_schema, renew=False) as db:
        assert db.schema_version() == PG_LATEST_VERSION
    r = cli("migrate", *pg, "--json")
    assert (r.code, r.json()["steps"]) == (0, [])


def test_expected_failures_on_postgres_exit_with_their_codes(
    cli: Any, pg_dsn: str, pg_schema: str, tmp_path: Path, files: dict[str, Path]
) -> None:
    """Wrong passphrase 3, unknown vault 6, name taken 2, --sqlcipher refused 2."""
    pg = ("--dsn", pg_dsn, "--schema", pg_schema)
    PostgresVault.create(pg_dsn, PASSPHRASE, FAST_KDF, name="dave", schema=pg_schema).close()
    assert cli("verify", "dave", *pg, "--passphrase-file", files["wrong"]).code == 3
    assert cli("verify", "nobody", *pg, "--passphrase-file", files["pw"]).code == 6
    src = tmp_path / "src.vault"
    Vault.create(src, PASSPHRASE, kdf=FAST_KDF).close()
    assert cli("export", src, tmp_path / "e.export", "--passphrase-file", files["pw"],
               "--backup-passphrase-file", files["backup"], *FAST).code == 0
    imp = ("--passphrase-file", files["pw"], "--backup-passphrase-file", files["backup"], *FAST)
    assert cli("import", tmp_path / "e.export", "dave", *pg, *imp).code == 2
    assert cli("import", tmp_path / "e.export", "eve", *pg, *imp, "--sqlcipher").code == 2
    assert cli("rekey", "dave", *pg).code == 2  # not offered on PostgreSQL


def test_reading_commands_run_beside_the_lease_holder(
    cli: Any, pg_dsn: str, pg_schema: str, files: dict[str, Path]
) -> None:
    """verify and stats take no lease: they work while a worker holds the vault."""
    where = PostgresAddress(pg_dsn, name="frank", schema=pg_schema)
    with where.create_vault(PASSPHRASE, FAST_KDF) as holder:
        holder.put("c", b"k", b"v")
        pg = ("--dsn", pg_dsn, "--schema", pg_schema)
        assert cli("verify", "frank", *pg, "--passphrase-file", files["pw"]).code == 0
        assert cli("stats", "frank", *pg).code == 0
        holder.put("c", b"k2", b"still the writer")


def test_an_unreachable_server_exits_8_without_showing_the_password(
    cli: Any, pg_dsn: str, tmp_path: Path
) -> None:
    """No server at the address: exit 8 after a short retry, the password redacted."""
    dsn = f"host={tmp_path / 'no-server-here'} dbname=x user=u password=hunter2"
    r = cli("--json", "stats", "--dsn", dsn, "alice")
    assert r.code == 8
    assert r.json()["error"] == "VaultIOError"
    assert "hunter2" not in r.out + r.err
    assert "password=***" in r.err


def test_reading_commands_never_install_a_schema(
    cli: Any, pg_dsn: str, pg_schema: str, files: dict[str, Path]
) -> None:
    """status, stats and verify on a database with no vault schema exit 6 and leave
    the database as it was (opening a vault would otherwise install the schema)."""
    pg = ("--dsn", pg_dsn, "--schema", pg_schema)
    assert cli("status", "alice", *pg).code == 6
    assert cli("stats", "alice", *pg).code == 6
    assert cli("verify", "alice", *pg, "--passphrase-file", files["pw"]).code == 6
    with PostgresDatabase(pg_dsn, schema=pg_schema, renew=False) as db:
        assert db.schema_version() == 0


def test_status_without_a_name_lists_every_vault_of_the_database(
    cli: Any, pg_dsn: str, pg_schema: str
) -> None:
    """status --dsn DSN: the schema and each vault with its writer, read-only; on a
    database without the schema it says so and installs nothing."""
    pg = ("--dsn", pg_dsn, "--schema", pg_schema)
    r = cli("status", *pg, "--json")
    assert r.code == 0, r.err
    assert (r.json()["schema_version"], r.json()["vaults"]) == (0, [])
    with PostgresDatabase(pg_dsn, schema=pg_schema, renew=False) as db:
        assert db.schema_version() == 0
    with PostgresDatabase(pg_dsn, schema=pg_schema) as db:
        held = PostgresVault.create(db, PASSPHRASE, FAST_KDF, name="held")
        PostgresVault.create(db, PASSPHRASE, FAST_KDF).close()
        r = cli("status", *pg, "--json")
        assert r.code == 0, r.err
        vaults = r.json()["vaults"]
        assert [v["name"] for v in vaults] == ["held", None]
        assert vaults[0]["store_id"] == held.store_id.hex()
        assert (vaults[0]["lease_live"], vaults[1]["lease_live"]) == (True, False)
        assert vaults[0]["lease_holder"] == db.leases.worker_id
        held.close()


def test_status_of_a_file_still_needs_its_path(cli: Any, pg_dsn: str) -> None:
    """Without --dsn, status without PATH is a usage error (exit 2), as before."""
    r = cli("status")
    assert r.code == 2 and "PATH" in r.err
