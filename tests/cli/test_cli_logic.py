"""Command logic tested in-process through ``keystore.cli.main`` (no subprocess needed)."""

from __future__ import annotations

import getpass
import os
import shutil
import sqlite3
import sys
import types
from pathlib import Path

import pytest

from keystore import Change, MigrationRequired, Vault, migrations, profiles
from keystore.cli import PASSPHRASE_ENV, ExitCode
from keystore.sidecar import sidecar_path_for
from tests.cli.conftest import FAST, PASSPHRASE, ROWS, Runner, digest, read_rows
from tests.fixtures.make_fixtures import PASSPHRASE as V1_PASSPHRASE
from tests.fixtures.make_fixtures import ROWS as V1_ROWS
from tests.fixtures.make_fixtures import VAULT_V1
from tests.migrations.conftest import DATA_VERSION, WITH_DATA_STEP, unlock_cipher


@pytest.fixture
def old_vault(tmp_path: Path) -> Path:
    """A copy of the version-1 fixture."""
    path = tmp_path / "old.vault"
    shutil.copyfile(VAULT_V1, path)
    return path


def _terminal(monkeypatch: pytest.MonkeyPatch, *answers: str) -> list[str]:
    """Pretend stdin is a terminal whose user types ``answers``; returns the prompts."""
    prompts: list[str] = []
    replies = iter(answers)

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(replies)

    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    return prompts


def test_passphrase_from_the_environment(cli: Runner, vault_file: Path) -> None:
    """MLS_KEYSTORE_PASSPHRASE unlocks when no file is given."""
    result = cli("verify", vault_file, env={PASSPHRASE_ENV: PASSPHRASE})
    assert result.code == ExitCode.OK, result.err


def test_empty_environment_passphrase_is_refused(cli: Runner, vault_file: Path) -> None:
    """A set-but-empty MLS_KEYSTORE_PASSPHRASE is a usage error, not an empty passphrase."""
    result = cli("verify", vault_file, env={PASSPHRASE_ENV: ""})
    assert result.code == ExitCode.USAGE
    assert "set but empty" in result.err


def test_passphrase_file_wins_over_the_environment(
    cli: Runner, vault_file: Path, pwfile: Path
) -> None:
    """An explicit --passphrase-file is used even when the env var holds something else."""
    result = cli("verify", vault_file, "--passphrase-file", pwfile,
                 env={PASSPHRASE_ENV: "something else"})
    assert result.code == ExitCode.OK, result.err


def test_init_prompts_twice_on_a_terminal(
    cli: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a terminal and no other source, init asks for the passphrase twice."""
    prompts = _terminal(monkeypatch, "typed secret", "typed secret")
    result = cli("init", tmp_path / "t.vault", *FAST)
    assert result.code == ExitCode.OK, result.err
    assert len(prompts) == 2
    assert read_rows(tmp_path / "t.vault", "typed secret") == []
    assert "typed secret" not in result.out + result.err


def test_mismatched_confirmation_creates_nothing(
    cli: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three times two different answers to the passphrase prompts: exit 2, no vault."""
    _terminal(monkeypatch, *["first long passphrase", "second long passphrase"] * 3)
    result = cli("init", tmp_path / "t.vault", *FAST)
    assert result.code == ExitCode.USAGE
    assert "differ (3 tries)" in result.err
    assert not (tmp_path / "t.vault").exists()


def test_passwd_asks_for_the_new_passphrase_twice(
    cli: Runner, vault_file: Path, pwfile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --new-passphrase-file, passwd prompts for the new passphrase and a repeat."""
    prompts = _terminal(monkeypatch, "fresh passphrase", "fresh passphrase")
    result = cli("passwd", vault_file, "--passphrase-file", pwfile)
    assert result.code == ExitCode.OK, result.err
    assert [p.startswith("New passphrase") for p in prompts] == [True, True]
    assert read_rows(vault_file, "fresh passphrase") == sorted(ROWS)


def test_raw_key_vault_round_trip(cli: Runner, tmp_path: Path) -> None:
    """init --raw-key-file makes a raw-key vault that verify opens with the same file."""
    key_file = tmp_path / "key.hex"
    key_file.write_text(os.urandom(32).hex() + "\n")
    path = tmp_path / "raw.vault"
    assert cli("init", path, "--raw-key-file", key_file).code == ExitCode.OK
    assert cli("verify", path, "--raw-key-file", key_file).code == ExitCode.OK
    result = cli("verify", path, env={PASSPHRASE_ENV: "irrelevant"})
    assert result.code == ExitCode.USAGE
    assert "--raw-key-file" in result.err


def test_bad_raw_key_file_is_a_usage_error(cli: Runner, tmp_path: Path) -> None:
    """A raw key file that is neither 32 bytes nor 64 hex digits is refused."""
    key_file = tmp_path / "key"
    key_file.write_text("too short\n")
    result = cli("init", tmp_path / "raw.vault", "--raw-key-file", key_file)
    assert result.code == ExitCode.USAGE
    assert not (tmp_path / "raw.vault").exists()


def test_unknown_kdf_profile_is_a_usage_error(cli: Runner, tmp_path: Path,
                                              pwfile: Path) -> None:
    """An unknown --kdf-profile names the valid ones and creates nothing."""
    result = cli("init", tmp_path / "x.vault", "--passphrase-file", pwfile,
                 "--kdf-profile", "FAST")
    assert result.code == ExitCode.USAGE
    assert "RFC_9106_LOW_MEMORY" in result.err
    assert not (tmp_path / "x.vault").exists()


def test_migrate_to_stops_at_the_requested_version(cli: Runner, old_vault: Path) -> None:
    """--to 2 applies only the steps up to version 2."""
    result = cli("migrate", old_vault, "--to", "2", "--json")
    assert result.code == ExitCode.OK, result.err
    conn = sqlite3.connect(old_vault)
    assert migrations.schema_version(conn) == 2
    conn.close()


@pytest.mark.parametrize("target", ["0", str(migrations.LATEST_VERSION + 1)])
def test_migrate_to_an_impossible_version_changes_nothing(
    cli: Runner, old_vault: Path, target: str
) -> None:
    """A --to below the current version or past the latest is a usage error."""
    cli("migrate", old_vault, "--to", "1")
    before = digest(old_vault)
    result = cli("migrate", old_vault, "--to", target)
    assert result.code == ExitCode.USAGE
    assert digest(old_vault) == before


def test_migrate_no_backup_makes_no_copy(cli: Runner, old_vault: Path) -> None:
    """--no-backup migrates without writing a .bak file."""
    result = cli("migrate", old_vault, "--no-backup")
    assert result.code == ExitCode.OK, result.err
    assert not list(old_vault.parent.glob("*.bak"))
    assert read_rows(old_vault, V1_PASSPHRASE) == sorted(V1_ROWS)


def test_migrate_twice_is_a_no_op(cli: Runner, old_vault: Path) -> None:
    """A second migrate has nothing to do and makes no second backup."""
    cli("migrate", old_vault)
    result = cli("migrate", old_vault)
    assert result.code == ExitCode.OK
    assert "nothing to do" in result.out
    assert len(list(old_vault.parent.glob("*.bak"))) == 1


def test_checksum_mismatch_is_reported_by_status_and_migrate(
    cli: Runner, old_vault: Path
) -> None:
    """An edited migration record: status lists the problem (exit 1), migrate refuses."""
    conn = sqlite3.connect(old_vault)
    conn.execute("UPDATE keystore_migrations SET checksum = 'edited'")
    conn.commit()
    conn.close()
    status = cli("status", old_vault, "--json")
    assert status.code == ExitCode.FAILURE
    assert "checksum" in status.json()["problems"][0]
    assert status.json()["applied"][0]["matches_shipped"] is False
    before = digest(old_vault)
    result = cli("migrate", old_vault)
    assert result.code == ExitCode.FAILURE
    assert "checksum" in result.err
    assert digest(old_vault) == before


def test_status_names_the_writer(cli: Runner, vault_file: Path) -> None:
    """status shows the pid holding the writer lock, without taking it."""
    with Vault.open(vault_file):
        result = cli("status", vault_file, "--json")
    assert result.json()["writer_pid"] == os.getpid()
    assert cli("status", vault_file, "--json").json()["writer_pid"] is None


def test_json_may_come_before_the_subcommand(cli: Runner, vault_file: Path) -> None:
    """`mls-keystore --json stats V` and `stats V --json` both print JSON."""
    assert cli("--json", "stats", vault_file).json()["total_rows"] == len(ROWS)
    assert cli("stats", vault_file, "--json").json()["total_rows"] == len(ROWS)


def test_export_refuses_an_existing_output(cli: Runner, tmp_path: Path, vault_file: Path,
                                           pwfile: Path) -> None:
    """export does not overwrite a file unless --force."""
    out = tmp_path / "exists.bin"
    out.write_bytes(b"keep me")
    result = cli("export", vault_file, out, "--passphrase-file", pwfile,
                 "--backup-passphrase-file", pwfile, *FAST)
    assert result.code == ExitCode.USAGE
    assert out.read_bytes() == b"keep me"


def test_verify_output_never_contains_plaintext(cli: Runner, vault_file: Path,
                                                pwfile: Path) -> None:
    """No value, key or passphrase appears in verify's output."""
    result = cli("verify", vault_file, "--passphrase-file", pwfile, "--json")
    text = result.out + result.err
    assert PASSPHRASE not in text
    assert not any(k.decode() in text or v[:8].decode() in text for _, k, v in ROWS[:2])


def test_demo_passes_its_arguments_through(
    cli: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """demo DIR ... calls mls.demo.main with everything after `demo`."""
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 0

    fake = types.ModuleType("mls.demo")
    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mls.demo", fake)
    assert cli("demo", "some/dir", "--flag").code == ExitCode.OK
    assert seen == [["some/dir", "--flag"]]


def test_demo_without_the_mls_demo_module_is_a_clear_error(
    cli: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If mls.demo is missing, demo prints one line and exits 9 (an extra is missing)."""
    monkeypatch.setitem(sys.modules, "mls.demo", None)
    result = cli("demo", "somewhere")
    assert result.code == ExitCode.MISSING_EXTRA
    assert "not available" in result.err


def test_sqlcipher_vault_status_needs_no_passphrase(cli: Runner, tmp_path: Path,
                                                    pwfile: Path) -> None:
    """status reads a SQLCipher vault's header file: versions without rows or passphrase."""
    pytest.importorskip("sqlcipher3")
    path = tmp_path / "enc.vault"
    assert cli("init", path, "--sqlcipher", "--passphrase-file", pwfile, *FAST).code == 0
    report = cli("status", path, "--json").json()
    assert report["sqlcipher"] is True and report["rows"] is None
    assert report["schema_version"] == migrations.LATEST_VERSION
    assert cli("migrate", path, "--dry-run").out.endswith("nothing to do\n")
    stats = cli("stats", path, "--passphrase-file", pwfile, "--json")
    assert stats.code == ExitCode.OK and stats.json()["sqlcipher"] is True


@pytest.fixture
def ships_data_step(monkeypatch: pytest.MonkeyPatch) -> int:
    """Pretend this code ships the test-only re-encrypting step (it never really does)."""
    monkeypatch.setattr(migrations, "MIGRATIONS", WITH_DATA_STEP)
    monkeypatch.setattr(migrations, "LATEST_VERSION", DATA_VERSION)
    return DATA_VERSION


def _blobs(path: Path) -> dict[bytes, bytes]:
    conn = sqlite3.connect(path)
    try:
        return {bytes(k): bytes(v) for k, v in conn.execute(
            "SELECT key_hash, value FROM keystore_rows")}
    finally:
        conn.close()


def test_migrate_unlocks_the_vault_for_a_data_step(
    cli: Runner, old_vault: Path, ships_data_step: int
) -> None:
    """A pending data step makes migrate take the passphrase; every row is re-encrypted."""
    before = _blobs(old_vault)
    result = cli("migrate", old_vault, "--json", env={PASSPHRASE_ENV: V1_PASSPHRASE})
    assert result.code == ExitCode.OK, result.err
    assert result.json()["steps"][-1]["needs_unlock"] is True
    after = _blobs(old_vault)
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in before)
    conn = sqlite3.connect(old_vault)
    assert migrations.schema_version(conn) == ships_data_step
    cipher = unlock_cipher(conn, V1_PASSPHRASE)
    rows = conn.execute("SELECT category, key_hash, value FROM keystore_rows").fetchall()
    assert {cipher.decrypt_row(c, bytes(k), bytes(v)) for c, k, v in rows} == {
        (key, value) for _, key, value in V1_ROWS
    }
    conn.close()


@pytest.mark.parametrize(("env", "code"), [({}, ExitCode.USAGE),
                                           ({PASSPHRASE_ENV: "wrong"}, ExitCode.WRONG_PASSPHRASE)])
def test_data_step_without_the_right_passphrase_writes_nothing(
    cli: Runner, old_vault: Path, ships_data_step: int, env: dict[str, str], code: ExitCode
) -> None:
    """No passphrase source, or a wrong one: migrate stops before any step or backup."""
    before = digest(old_vault)
    result = cli("migrate", old_vault, env=env)
    assert result.code == code
    assert digest(old_vault) == before
    assert not list(old_vault.parent.glob("*.bak"))


def test_failed_step_is_reported_with_the_backup(
    cli: Runner, old_vault: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that fails: exit 1, rolled back, earlier steps kept, the backup named."""

    def explode(conn: sqlite3.Connection) -> None:
        raise RuntimeError("no space left on device")

    broken = migrations.Migration(DATA_VERSION, "breaks", ("CREATE TABLE t (x)",),
                                  python=explode, python_id="explode")
    shipped = migrations.MIGRATIONS
    monkeypatch.setattr(migrations, "MIGRATIONS", (*shipped, broken))
    monkeypatch.setattr(migrations, "LATEST_VERSION", DATA_VERSION)
    result = cli("migrate", old_vault)
    assert result.code == ExitCode.FAILURE
    (backup,) = old_vault.parent.glob("*.bak")
    assert "rolled back" in result.err and str(backup) in result.err
    conn = sqlite3.connect(old_vault)
    assert migrations.schema_version(conn) == shipped[-1].version
    conn.close()


def test_older_sqlcipher_vault_migrates_on_unlock_after_a_backup(
    cli: Runner, tmp_path: Path, pwfile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """migrate unlocks an older SQLCipher vault, backs it up with its header file, upgrades it."""
    pytest.importorskip("sqlcipher3")
    path = tmp_path / "enc.vault"
    with Vault.create(path, PASSPHRASE, kdf=profiles.INSECURE_FOR_TESTS_ONLY,
                      sqlcipher=True) as v:
        v.apply(Change(c, k, val) for c, k, val in ROWS)
    old = migrations.LATEST_VERSION
    marker = migrations.Migration(old + 1, "test only: marker", ("CREATE TABLE marker (x)",))
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, marker))
    monkeypatch.setattr(migrations, "LATEST_VERSION", old + 1)
    status = cli("status", path, "--json").json()
    assert [s["version"] for s in status["pending"]] == [old + 1]
    result = cli("migrate", path, "--passphrase-file", pwfile, "--json")
    assert result.code == ExitCode.OK, result.err
    report = result.json()
    assert (report["from_version"], report["to_version"]) == (old, old + 1)
    backup = Path(report["backup"])
    assert sidecar_path_for(backup).exists()
    assert cli("status", path, "--json").json()["schema_version"] == old + 1
    assert read_rows(path) == sorted(ROWS)
    with pytest.raises(MigrationRequired):
        Vault.open(backup)  # the copy is still the old version, and opens as a vault


def test_end_of_input_at_the_prompt_is_a_usage_error(
    cli: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-D at the passphrase prompt ends the command with one line, not a traceback."""

    def eof(prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(getpass, "getpass", eof)
    result = cli("init", tmp_path / "t.vault", *FAST)
    assert result.code == ExitCode.USAGE
    assert "no new vault passphrase entered" in result.err
