"""Every subcommand run as a user runs it: ``python -m keystore ...`` in a subprocess."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from keystore import Vault, migrations, profiles
from keystore.export import export_vault
from tests.cli.conftest import (
    FAST,
    PASSPHRASE,
    ROWS,
    Runner,
    digest,
    read_rows,
    secret_file,
)
from tests.fixtures.make_fixtures import PASSPHRASE as V1_PASSPHRASE
from tests.fixtures.make_fixtures import ROWS as V1_ROWS
from tests.fixtures.make_fixtures import VAULT_V1


def _one_clear_line(err: str) -> None:
    """stderr holds exactly one error line (besides the test-only KDF warning)."""
    lines = [
        line for line in err.splitlines()
        if line.strip() and not line.startswith("WARNING: KDF profile INSECURE_FOR_TESTS_ONLY")
    ]
    assert len(lines) == 1, err
    assert lines[0].startswith("mls-keystore: error: "), err
    assert "Traceback" not in err


def _secret_file(tmp_path: Path, name: str, text: str) -> Path:
    return secret_file(tmp_path / name, text)


# ---------------------------------------------------------------------- bad input


def _directory(tmp: Path, vault: Path) -> Path:
    (tmp / "adir").mkdir()
    return tmp / "adir"


def _missing(tmp: Path, vault: Path) -> Path:
    return tmp / "nothing-here.vault"


def _text(tmp: Path, vault: Path) -> Path:
    return _secret_file(tmp, "notes.txt", "just some text, not a database\n")


def _empty(tmp: Path, vault: Path) -> Path:
    return _secret_file(tmp, "empty.vault", "")


def _truncated(tmp: Path, vault: Path) -> Path:
    path = tmp / "truncated.vault"
    path.write_bytes(vault.read_bytes()[:8192])
    return path


def _foreign_sqlite(tmp: Path, vault: Path) -> Path:
    path = tmp / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    return path


def _future(tmp: Path, vault: Path) -> Path:
    conn = sqlite3.connect(vault)
    conn.execute(f"PRAGMA user_version = {migrations.LATEST_VERSION + 1}")
    conn.close()
    return vault


def _old(tmp: Path, vault: Path) -> Path:
    path = tmp / "old.vault"
    shutil.copyfile(VAULT_V1, path)
    return path


BAD_INPUT: list[tuple[str, Callable[[Path, Path], Path], str, int, str]] = [
    ("a directory", _directory, "status", 6, "not a regular file"),
    ("a missing file", _missing, "verify", 6, "does not exist"),
    ("a text file", _text, "verify", 6, "not an mls-keystore vault"),
    ("an empty file", _empty, "status", 6, "empty file"),
    ("a truncated vault", _truncated, "verify", 6, "not a readable vault"),
    ("a foreign SQLite file", _foreign_sqlite, "stats", 6, "not an mls-keystore vault"),
    ("a vault from the future", _future, "verify", 5, "schema version"),
    ("a vault from the future (status)", _future, "status", 5, "Upgrade mls-keystore"),
    ("an old vault", _old, "rekey", 7, "mls-keystore migrate"),
]


@pytest.mark.parametrize(
    ("make", "command", "code", "message"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_bad_vault_input_fails_cleanly_and_changes_nothing(
    run: Runner, tmp_path: Path, vault_file: Path, pwfile: Path,
    make: Callable[[Path, Path], Path], command: str, code: int, message: str,
) -> None:
    """Each kind of bad input: one clear line, its own exit code, the bytes unchanged."""
    target = make(tmp_path, vault_file)
    before = digest(target) if target.is_file() else None
    args = [command, target] if command == "status" else [command, target, "--passphrase-file",
                                                         pwfile]
    result = run(*args)
    assert result.code == code, result.err
    assert message in result.err
    _one_clear_line(result.err)
    assert (digest(target) if target.is_file() else None) == before


def test_wrong_passphrase_exits_3_and_changes_nothing(
    run: Runner, tmp_path: Path, vault_file: Path
) -> None:
    """A wrong passphrase is exit 3 with a clear line; the vault is byte-identical."""
    before = digest(vault_file)
    wrong = _secret_file(tmp_path, "wrong.txt", "not the passphrase\n")
    result = run("verify", vault_file, "--passphrase-file", wrong)
    assert result.code == 3
    assert "wrong passphrase" in result.err
    _one_clear_line(result.err)
    assert digest(vault_file) == before


def test_empty_passphrase_file_is_a_usage_error(
    run: Runner, tmp_path: Path, vault_file: Path
) -> None:
    """An empty passphrase file is refused (exit 2), never tried as a passphrase."""
    before = digest(vault_file)
    empty = _secret_file(tmp_path, "empty.txt", "\n")
    result = run("rekey", vault_file, "--passphrase-file", empty)
    assert result.code == 2
    assert "is empty" in result.err
    _one_clear_line(result.err)
    assert digest(vault_file) == before


def test_no_terminal_and_no_passphrase_source_fails_fast(run: Runner, tmp_path: Path) -> None:
    """Without a terminal, file or env var, init says how to give one instead of hanging."""
    result = run("init", "new.vault", *FAST)
    assert result.code == 2
    assert "--passphrase-file" in result.err and "MLS_KEYSTORE_PASSPHRASE" in result.err
    assert not (tmp_path / "new.vault").exists()


def test_passphrase_cannot_be_given_on_the_command_line(run: Runner, tmp_path: Path) -> None:
    """There is no --passphrase option: argv is visible to every user on the machine."""
    result = run("init", "new.vault", "--passphrase", "hunter2", *FAST)
    assert result.code == 2
    assert not (tmp_path / "new.vault").exists()


def test_busy_vault_exits_4_and_changes_nothing(run: Runner, vault_file: Path,
                                                 pwfile: Path) -> None:
    """A vault held by another writer is exit 4, for rekey and for migrate alike."""
    with Vault.open(vault_file):
        before = digest(vault_file)
        for command in ("rekey", "migrate"):
            result = run(command, vault_file, "--passphrase-file", pwfile)
            assert result.code == 4, result.err
            assert "open for writing elsewhere" in result.err
        assert digest(vault_file) == before


def test_usage_error_without_a_command(run: Runner) -> None:
    """No subcommand is a usage error (exit 2) with a one-line message."""
    result = run()
    assert result.code == 2
    assert "required" in result.err


def test_json_errors_are_machine_readable(run: Runner, tmp_path: Path) -> None:
    """With --json, a failure also prints an error object with the exit code."""
    result = run("status", tmp_path / "missing.vault", "--json")
    assert result.code == 6
    assert result.json() == {
        "ok": False, "error": "NotAVault", "exit_code": 6,
        "message": f"no vault at {tmp_path / 'missing.vault'}: the file does not exist",
    }


# ---------------------------------------------------------------------- init / status


def test_init_creates_a_vault_that_opens_with_the_passphrase(
    run: Runner, tmp_path: Path, pwfile: Path
) -> None:
    """init makes a new vault at the latest schema, unlocked by the given passphrase."""
    result = run("init", "new.vault", "--passphrase-file", pwfile, *FAST, "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert report["schema_version"] == migrations.LATEST_VERSION
    assert "INSECURE_FOR_TESTS_ONLY" in result.err  # the loud warning
    with Vault.open(tmp_path / "new.vault") as v:
        v.unlock(PASSPHRASE)
        assert v.store_id.hex() == report["store_id"]


def test_init_refuses_an_existing_path(run: Runner, vault_file: Path, pwfile: Path) -> None:
    """init never overwrites: exit 2 and the existing vault is byte-identical."""
    before = digest(vault_file)
    result = run("init", vault_file, "--passphrase-file", pwfile, *FAST)
    assert result.code == 2
    assert "already exists" in result.err
    assert digest(vault_file) == before


def test_status_needs_no_passphrase_and_changes_nothing(run: Runner, vault_file: Path) -> None:
    """status reports versions, KDF, store id and rows read-only, without a passphrase."""
    before = digest(vault_file)
    result = run("status", vault_file, "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert report["schema_version"] == migrations.LATEST_VERSION
    assert report["pending"] == [] and report["problems"] == []
    assert report["kdf"]["memory_cost_kib"] == 8 and report["needs_rehash"] is True
    assert report["rows"] == len(ROWS)
    assert digest(vault_file) == before


def test_status_of_an_old_vault_lists_pending_steps(run: Runner, tmp_path: Path) -> None:
    """status works on a vault that needs migrating, and names the steps and the command."""
    old = _old(tmp_path, tmp_path)
    before = digest(old)
    result = run("status", old)
    assert result.code == 0, result.err
    assert "schema       1" in result.out
    assert "mls-keystore migrate" in result.out
    assert "pending      2: nonce-budget counter" in result.out
    assert digest(old) == before


# ---------------------------------------------------------------------- migrate


def test_migrate_upgrades_the_v1_fixture_after_a_backup(run: Runner, tmp_path: Path) -> None:
    """migrate brings the v1 fixture to the latest version, data intact, v1 backup beside."""
    old = _old(tmp_path, tmp_path)
    conn = sqlite3.connect(old)
    original = conn.execute("SELECT * FROM keystore_rows ORDER BY 1, 2").fetchall()
    conn.close()
    result = run("migrate", old, "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert (report["from_version"], report["to_version"]) == (1, migrations.LATEST_VERSION)
    backup = Path(report["backup"])
    conn = sqlite3.connect(backup)
    assert migrations.schema_version(conn) == 1
    assert conn.execute("SELECT * FROM keystore_rows ORDER BY 1, 2").fetchall() == original
    conn.close()
    assert read_rows(old, V1_PASSPHRASE) == sorted(V1_ROWS)


def test_migrate_dry_run_writes_nothing(run: Runner, tmp_path: Path) -> None:
    """--dry-run lists the steps and leaves the file and its directory as they were."""
    old = _old(tmp_path, tmp_path)
    before = digest(old)
    result = run("migrate", old, "--dry-run")
    assert result.code == 0, result.err
    assert "would apply" in result.out
    assert digest(old) == before
    assert not list(tmp_path.glob("*.bak"))


# ---------------------------------------------------------------------- keys


def test_passwd_changes_the_passphrase(run: Runner, tmp_path: Path, vault_file: Path,
                                       pwfile: Path) -> None:
    """passwd rewraps the key: the new passphrase unlocks, the rows are untouched."""
    new = _secret_file(tmp_path, "new.txt", "a brand new passphrase\n")
    result = run("passwd", vault_file, "--passphrase-file", pwfile, "--new-passphrase-file", new)
    assert result.code == 0, result.err
    assert read_rows(vault_file, "a brand new passphrase") == sorted(ROWS)


def test_passwd_with_wrong_old_passphrase_changes_nothing(
    run: Runner, tmp_path: Path, vault_file: Path
) -> None:
    """passwd with a wrong current passphrase is exit 3, vault byte-identical."""
    before = digest(vault_file)
    wrong = _secret_file(tmp_path, "wrong.txt", "nope\n")
    new = _secret_file(tmp_path, "new.txt", "new\n")
    result = run("passwd", vault_file, "--passphrase-file", wrong, "--new-passphrase-file", new)
    assert result.code == 3
    assert digest(vault_file) == before


def test_rekey_reencrypts_every_row(run: Runner, vault_file: Path, pwfile: Path) -> None:
    """rekey bumps the key generation, changes every ciphertext and keeps every value."""
    conn = sqlite3.connect(vault_file)
    before = dict(conn.execute("SELECT key_hash, value FROM keystore_rows").fetchall())
    conn.close()
    result = run("rekey", vault_file, "--passphrase-file", pwfile, "--json")
    assert result.code == 0, result.err
    assert result.json() == {"path": str(vault_file), "key_generation": 2,
                             "rows_reencrypted": len(ROWS)}
    conn = sqlite3.connect(vault_file)
    after = dict(conn.execute("SELECT key_hash, value FROM keystore_rows").fetchall())
    conn.close()
    # The hash key rotates with the data key: every key hash and ciphertext changes.
    assert len(after) == len(before) and not after.keys() & before.keys()
    assert not set(after.values()) & set(before.values())
    assert read_rows(vault_file) == sorted(ROWS)


# ---------------------------------------------------------------------- verify / stats


def test_verify_passes_and_changes_nothing(run: Runner, vault_file: Path,
                                           pwfile: Path) -> None:
    """verify on a sound vault is exit 0 and leaves the file byte-identical."""
    before = digest(vault_file)
    result = run("verify", vault_file, "--passphrase-file", pwfile)
    assert result.code == 0, result.err
    assert f"{len(ROWS)} rows checked, all authentic" in result.out
    assert digest(vault_file) == before


def test_verify_reports_a_tampered_row_by_category_and_hash(
    run: Runner, vault_file: Path, pwfile: Path
) -> None:
    """A flipped bit in one row: exit 1, its category and key hash named, no plaintext."""
    conn = sqlite3.connect(vault_file)
    key_hash, value = conn.execute(
        "SELECT key_hash, value FROM keystore_rows WHERE category = 'groups/epoch'"
    ).fetchone()
    tampered = bytearray(value)
    tampered[-1] ^= 0x01
    conn.execute("UPDATE keystore_rows SET value = ? WHERE key_hash = ?",
                 (bytes(tampered), key_hash))
    conn.commit()
    conn.close()
    result = run("verify", vault_file, "--passphrase-file", pwfile, "--json")
    assert result.code == 1
    report = result.json()
    assert report["ok"] is False and report["rows_checked"] == len(ROWS)
    assert [(f["category"], f["key_hash"]) for f in report["failures"]] == [
        ("groups/epoch", key_hash.hex())
    ]
    assert "secret key package" not in result.out + result.err


def test_stats_reads_counts_without_a_passphrase(run: Runner, vault_file: Path) -> None:
    """stats gives rows and bytes per category and the nonce budget, read-only."""
    before = digest(vault_file)
    result = run("stats", vault_file, "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert {c: s["rows"] for c, s in report["categories"].items()} == {
        "groups/epoch": 1, "key_packages": 2
    }
    assert report["encryptions"] == len(ROWS) and report["nonce_budget"] == 2**32
    assert digest(vault_file) == before


# ---------------------------------------------------------------------- export / import


@pytest.fixture
def backup(tmp_path: Path, vault_file: Path) -> Path:
    """An export of ``vault_file`` (made in-process) under the passphrase in backup-pass.txt."""
    _secret_file(tmp_path, "backup-pass.txt", "the backup passphrase\n")
    out = tmp_path / "backup.mlksx"
    with Vault.open(vault_file, readonly=True) as v:
        v.unlock(PASSPHRASE)
        export_vault(v, out, "the backup passphrase", profiles.INSECURE_FOR_TESTS_ONLY)
    return out


def test_export_then_import_restores_every_row(
    run: Runner, tmp_path: Path, vault_file: Path, pwfile: Path
) -> None:
    """import of an export gives a new vault (new store id) with exactly the same rows."""
    bpw = _secret_file(tmp_path, "backup-pass.txt", "the backup passphrase\n")
    result = run("export", vault_file, "backup.mlksx", "--passphrase-file", pwfile,
                 "--backup-passphrase-file", bpw, *FAST)
    assert result.code == 0, result.err
    backup = tmp_path / "backup.mlksx"
    new_pw = _secret_file(tmp_path, "new.txt", "restored passphrase\n")
    result = run("import", backup, "restored.vault", "--backup-passphrase-file",
                 tmp_path / "backup-pass.txt", "--passphrase-file", new_pw, *FAST, "--json")
    assert result.code == 0, result.err
    assert result.json()["rows"] == len(ROWS)
    restored = tmp_path / "restored.vault"
    assert read_rows(restored, "restored passphrase") == read_rows(vault_file)
    with Vault.open(vault_file, readonly=True) as a, Vault.open(restored, readonly=True) as b:
        assert a.store_id != b.store_id


def test_import_of_a_tampered_export_writes_nothing(
    run: Runner, tmp_path: Path, backup: Path, pwfile: Path
) -> None:
    """A flipped byte in the export: exit 1, a clear line, no vault created."""
    data = bytearray(backup.read_bytes())
    data[-20] ^= 0x04
    backup.write_bytes(bytes(data))
    result = run("import", backup, "restored.vault", "--backup-passphrase-file",
                 tmp_path / "backup-pass.txt", "--passphrase-file", pwfile, *FAST)
    assert result.code == 1
    assert "damaged or was modified" in result.err
    _one_clear_line(result.err)
    assert not [p for p in tmp_path.iterdir() if "restored" in p.name]


def test_import_onto_an_existing_vault_is_refused(
    run: Runner, tmp_path: Path, vault_file: Path, backup: Path, pwfile: Path
) -> None:
    """Without --force, import onto an existing vault is exit 2, vault byte-identical."""
    before = digest(vault_file)
    result = run("import", backup, vault_file, "--backup-passphrase-file",
                 tmp_path / "backup-pass.txt", "--passphrase-file", pwfile, *FAST)
    assert result.code == 2
    assert "already exists" in result.err
    assert digest(vault_file) == before


def test_import_force_replaces_the_vault_with_the_complete_new_one(
    run: Runner, tmp_path: Path, vault_file: Path, backup: Path
) -> None:
    """With --force the old vault is replaced, by rename, with the restored one."""
    new_pw = _secret_file(tmp_path, "new.txt", "replacement passphrase\n")
    with Vault.open(vault_file, readonly=True) as v:
        old_id = v.store_id
    result = run("import", backup, vault_file, "--force", "--backup-passphrase-file",
                 tmp_path / "backup-pass.txt", "--passphrase-file", new_pw, *FAST)
    assert result.code == 0, result.err
    assert read_rows(vault_file, "replacement passphrase") == sorted(ROWS)
    with Vault.open(vault_file, readonly=True) as v:
        assert v.store_id != old_id


def test_import_of_a_wrong_backup_passphrase_is_exit_3(
    run: Runner, tmp_path: Path, backup: Path, pwfile: Path
) -> None:
    """A wrong backup passphrase is reported as such (exit 3), nothing created."""
    result = run("import", backup, "restored.vault", "--backup-passphrase-file", pwfile,
                 "--passphrase-file", pwfile, *FAST)
    assert result.code == 3
    assert "backup passphrase" in result.err
    assert not (tmp_path / "restored.vault").exists()


def test_import_of_a_file_that_is_not_an_export(
    run: Runner, tmp_path: Path, vault_file: Path, pwfile: Path
) -> None:
    """Importing a vault file (not an export) says so before any prompt, exit 6."""
    result = run("import", vault_file, "restored.vault", "--passphrase-file", pwfile, *FAST)
    assert result.code == 6
    assert "is a vault" in result.err and "not an export file" in result.err
    _one_clear_line(result.err)
