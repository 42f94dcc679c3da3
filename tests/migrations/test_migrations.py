"""Schema migrations: fixture upgrade, rollback, re-runs, checksums, data steps."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from keystore import MigrationError, MigrationRequired, SchemaTooNew, Vault, VaultLocked, migrations
from tests.fixtures.make_fixtures import PASSPHRASE, ROWS
from tests.migrations.conftest import (
    DATA_VERSION,
    REENCRYPT,
    WITH_DATA_STEP,
    connect,
    digest,
    reencrypt_rows,
    row_blobs,
    unlock_cipher,
)

LATEST = migrations.LATEST_VERSION
NEXT = DATA_VERSION  # a test-only step goes one past whatever ships today


def _fail(conn: sqlite3.Connection) -> None:
    raise RuntimeError("step broke half-way")


def test_shipped_checksums_never_change() -> None:
    """The first shipped steps keep the checksums recorded in every existing vault."""
    assert [m.checksum for m in migrations.MIGRATIONS[:2]] == [
        "37aac8efa9f5d59d78c90190598b0e5b1c3522601ea7707657ed08b30991eee0",
        "3bcb64be412ef211cc6ae32603b1fcad19aa9b00f3250913f581dc6de932208a",
    ]


def test_fixture_is_a_version_1_vault(v1_vault: Path) -> None:
    """The checked-in fixture really is at version 1, with only step 1 recorded."""
    conn = connect(v1_vault)
    assert migrations.schema_version(conn) == 1
    assert [a.version for a in migrations.applied(conn)] == [1]
    assert len(row_blobs(conn)) == len(ROWS)


def test_fixture_upgrades_to_latest_with_data_intact(v1_vault: Path) -> None:
    """Opening the v1 fixture with auto_migrate reaches the latest schema, rows intact."""
    with Vault.open(v1_vault, auto_migrate=True) as v:
        assert v.schema_version == migrations.LATEST_VERSION
        v.unlock(PASSPHRASE)
        for category, key, value in ROWS:
            assert v.get(category, key) == value
        assert v.stats().encryptions == len(ROWS)
        assert v.verify().ok


def test_auto_migrate_keeps_a_backup_at_the_old_version(v1_vault: Path) -> None:
    """auto_migrate leaves a consistent version-1 copy beside the vault."""
    before = row_blobs(connect(v1_vault))
    Vault.open(v1_vault, auto_migrate=True).close()
    (backup,) = v1_vault.parent.glob("*.bak")
    conn = connect(backup)
    assert migrations.schema_version(conn) == 1
    assert row_blobs(conn) == before


def test_open_old_vault_requires_migration_and_changes_nothing(v1_vault: Path) -> None:
    """An old schema raises MigrationRequired naming the command; the file is untouched."""
    before = digest(v1_vault)
    with pytest.raises(MigrationRequired, match="mls-keystore migrate"):
        Vault.open(v1_vault)
    assert digest(v1_vault) == before
    assert not list(v1_vault.parent.glob("*.bak"))


def test_open_newer_vault_raises_schema_too_new_and_changes_nothing(v1_vault: Path) -> None:
    """A vault migrated by newer code raises SchemaTooNew and is left byte-identical."""
    conn = connect(v1_vault)
    migrations.migrate(conn, NEXT, migrations=WITH_DATA_STEP, cipher=unlock_cipher(conn))
    conn.close()
    before = digest(v1_vault)
    for auto in (False, True):
        with pytest.raises(SchemaTooNew):
            Vault.open(v1_vault, auto_migrate=auto)
    assert digest(v1_vault) == before


def test_pending_and_applied_never_write(v1_vault: Path) -> None:
    """pending(), applied() and check_recorded() make no change to the database."""
    before = digest(v1_vault)
    conn = connect(v1_vault)
    assert [m.version for m in migrations.pending(conn)] == list(range(2, LATEST + 1))
    assert [a.version for a in migrations.applied(conn)] == [1]
    migrations.check_recorded(conn)
    assert conn.total_changes == 0
    conn.close()
    assert digest(v1_vault) == before


def test_failing_step_rolls_back_entirely(v1_vault: Path) -> None:
    """A step that fails half-way leaves no table, no record and the old user_version."""
    broken = migrations.Migration(
        NEXT, "breaks", ("CREATE TABLE half_done (x INTEGER)",), python=_fail, python_id="fail"
    )
    conn = connect(v1_vault)
    with pytest.raises(MigrationError, match="rolled back"):
        migrations.migrate(conn, NEXT, migrations=(*migrations.MIGRATIONS, broken))
    assert migrations.schema_version(conn) == LATEST
    assert [a.version for a in migrations.applied(conn)] == list(range(1, LATEST + 1))
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "half_done" not in tables


def test_rerun_after_failure_applies_each_step_once(v1_vault: Path) -> None:
    """After a failure, a re-run applies only the remaining steps, each exactly once."""
    broken = migrations.Migration(NEXT, "next", ("CREATE TABLE nxt (x)",), _fail, "v-next")
    fixed = migrations.Migration(NEXT, "next", ("CREATE TABLE nxt (x)",))
    conn = connect(v1_vault)
    with pytest.raises(MigrationError):
        migrations.migrate(conn, NEXT, migrations=(*migrations.MIGRATIONS, broken))
    done = migrations.migrate(conn, NEXT, migrations=(*migrations.MIGRATIONS, fixed))
    assert [m.version for m in done] == [NEXT]
    assert migrations.migrate(conn, NEXT, migrations=(*migrations.MIGRATIONS, fixed)) == []
    assert [a.version for a in migrations.applied(conn)] == list(range(1, NEXT + 1))


def test_checksum_mismatch_is_reported(v1_vault: Path) -> None:
    """A recorded step whose checksum differs from the shipped one stops open and migrate."""
    conn = connect(v1_vault)
    conn.execute("UPDATE keystore_migrations SET checksum = 'edited' WHERE version = 1")
    conn.close()
    before = digest(v1_vault)
    conn = connect(v1_vault)
    with pytest.raises(MigrationError, match="checksum"):
        migrations.migrate(conn)
    conn.close()
    with pytest.raises(MigrationError, match="checksum"):
        Vault.open(v1_vault, auto_migrate=True)
    assert digest(v1_vault) == before


def test_records_disagreeing_with_user_version_are_reported(v1_vault: Path) -> None:
    """A user_version with no matching record is an inconsistency, not a version."""
    conn = connect(v1_vault)
    conn.execute("PRAGMA user_version = 2")
    with pytest.raises(MigrationError, match="disagrees"):
        migrations.check_recorded(conn)


def test_python_code_without_id_is_refused() -> None:
    """A step with Python but no python_id is refused: its edits would not change the checksum."""
    with pytest.raises(ValueError, match="python_id"):
        migrations.Migration(NEXT, "x", (), data=reencrypt_rows)


def test_data_step_on_locked_vault_writes_nothing(v1_vault: Path) -> None:
    """A pending data step without the cipher raises VaultLocked before any step runs."""
    before = digest(v1_vault)
    conn = connect(v1_vault)
    with pytest.raises(VaultLocked, match="unlocked"):
        migrations.migrate(conn, NEXT, migrations=WITH_DATA_STEP)
    assert migrations.schema_version(conn) == 1
    conn.close()
    assert digest(v1_vault) == before


def test_data_step_reencrypts_every_row(v1_vault: Path) -> None:
    """A data step gets the unlocked cipher and rewrites every row, all still readable."""
    conn = connect(v1_vault)
    cipher = unlock_cipher(conn)
    before = row_blobs(conn)
    migrations.migrate(conn, NEXT, migrations=WITH_DATA_STEP, cipher=cipher)
    after = row_blobs(conn)
    assert after.keys() == before.keys()
    assert all(after[k] != before[k] for k in before)
    plain = {cipher.decrypt_row(c, kh, blob) for (c, kh), blob in after.items()}
    assert plain == {(key, value) for _, key, value in ROWS}


def test_failing_data_step_leaves_every_row_as_it_was(v1_vault: Path) -> None:
    """A data step that fails after rewriting rows commits none of them."""

    def reencrypt_then_fail(conn: sqlite3.Connection, cipher: object) -> None:
        reencrypt_rows(conn, unlock_cipher(conn))
        raise RuntimeError("disk full, say")

    broken = migrations.Migration(
        NEXT, REENCRYPT.name, REENCRYPT.statements, data=reencrypt_then_fail, python_id="broken"
    )
    conn = connect(v1_vault)
    migrations.migrate(conn)
    before = row_blobs(conn)
    with pytest.raises(MigrationError, match="rolled back"):
        migrations.migrate(
            conn, NEXT, migrations=(*migrations.MIGRATIONS, broken), cipher=unlock_cipher(conn)
        )
    assert row_blobs(conn) == before
    assert migrations.schema_version(conn) == LATEST
