"""How the command takes, checks and guards its secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from keystore import IntegrityError, Vault, profiles
from keystore.cli import PASSPHRASE_ENV, ExitCode
from keystore.passphrase import (
    MIN_BITS,
    MIN_LENGTH,
    WeakPassphrase,
    check_strength,
    estimate_bits,
)
from tests.cli.conftest import (
    FAST,
    PASSPHRASE,
    REPO,
    ROWS,
    Runner,
    one_clear_line,
    read_rows,
    secret_file,
    terminal,
)

# ---------------------------------------------------------------------- strength rule


@pytest.mark.parametrize(
    "weak", ["x", "short pass", "aaaaaaaaaaaaaaaaaaaa", "abababababababab", "123412341234"]
)
def test_weak_new_passphrases_are_refused(weak: str) -> None:
    """Too short, or too repetitive for the documented estimate."""
    assert len(weak) < MIN_LENGTH or estimate_bits(weak) < MIN_BITS
    with pytest.raises(WeakPassphrase, match="passphrase") as info:
        check_strength(weak)
    assert weak not in str(info.value)


@pytest.mark.parametrize(
    "strong", [PASSPHRASE, "correct horse battery staple", "Tr0ub4dor&3-plus-more"]
)
def test_reasonable_passphrases_pass(strong: str) -> None:
    """Phrases of a few words pass the rule."""
    check_strength(strong)


def test_init_refuses_a_weak_passphrase_from_a_file(
    cli: Runner, tmp_path: Path
) -> None:
    """A one-character passphrase is no longer accepted silently: exit 2, no vault."""
    weak = secret_file(tmp_path / "weak.txt", "x\n")
    result = cli("init", tmp_path / "w.vault", "--passphrase-file", weak, *FAST)
    assert result.code == ExitCode.USAGE
    assert f"at least {MIN_LENGTH}" in result.err
    assert not (tmp_path / "w.vault").exists()


# ---------------------------------------------------------------------- prompts


def test_a_weak_then_mismatched_entry_is_asked_again(
    cli: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a terminal: weak -> asked again; mismatch -> asked again; third try wins."""
    prompts = terminal(monkeypatch, "weak", "a good long passphrase", "a typo passphrase",
                       "a good long passphrase", "a good long passphrase")
    result = cli("init", tmp_path / "t.vault", *FAST)
    assert result.code == ExitCode.OK, result.err
    assert len(prompts) == 5
    assert "try again" in result.err
    assert read_rows(tmp_path / "t.vault", "a good long passphrase") == []


def test_a_wrong_passphrase_at_the_prompt_is_asked_again(
    cli: Runner, vault_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo at the prompt is forgiven: the second answer unlocks."""
    prompts = terminal(monkeypatch, "not it at all", PASSPHRASE)
    result = cli("verify", vault_file)
    assert result.code == ExitCode.OK, result.err
    assert len(prompts) == 2 and "wrong vault passphrase; try again" in result.err


def test_three_wrong_passphrases_at_the_prompt_exit_3(
    cli: Runner, vault_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retries are bounded: three wrong answers, then exit 3."""
    prompts = terminal(monkeypatch, "wrong one", "wrong two", "wrong three")
    result = cli("verify", vault_file)
    assert result.code == ExitCode.WRONG_PASSPHRASE
    assert len(prompts) == 3


def test_a_wrong_passphrase_from_a_file_is_not_retried(
    cli: Runner, tmp_path: Path, vault_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a file there is one try, even with a terminal attached."""
    prompts = terminal(monkeypatch)
    wrong = secret_file(tmp_path / "wrong.txt", "not the passphrase\n")
    assert cli("verify", vault_file, "--passphrase-file", wrong).code == 3
    assert prompts == []


def test_import_checks_the_backup_passphrase_before_asking_for_a_new_one(
    cli: Runner, tmp_path: Path, vault_file: Path, pwfile: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three wrong backup passphrases end the import before any new-passphrase prompt."""
    out = tmp_path / "b.export"
    assert cli("export", vault_file, out, "--passphrase-file", pwfile,
               "--backup-passphrase-file", pwfile, *FAST).code == 0
    prompts = terminal(monkeypatch, "bad backup one", "bad backup two", "bad backup three")
    result = cli("import", out, tmp_path / "new.vault", *FAST)
    assert result.code == ExitCode.WRONG_PASSPHRASE
    assert [p.split(":")[0] for p in prompts] == ["Backup passphrase"] * 3
    assert not (tmp_path / "new.vault").exists()


# ---------------------------------------------------------------------- the environment


def test_the_environment_variable_is_removed_after_reading(
    cli: Runner, vault_file: Path
) -> None:
    """MLS_KEYSTORE_PASSPHRASE unlocks, and is gone from os.environ afterwards."""
    result = cli("verify", vault_file, env={PASSPHRASE_ENV: PASSPHRASE})
    assert result.code == ExitCode.OK, result.err
    assert PASSPHRASE_ENV not in os.environ


@pytest.mark.parametrize("given", [["--passphrase", "hunterhunter"], ["--passphrase=hunterhunter"],
                                   ["hunterhunter"]])
def test_a_passphrase_on_the_command_line_is_never_echoed(
    run: Runner, tmp_path: Path, given: list[str]
) -> None:
    """argparse's error would repeat the stray word; ours hides it and says what to use."""
    result = run("init", "new.vault", *given, *FAST)
    assert result.code == ExitCode.USAGE
    assert "hunterhunter" not in result.err + result.out
    assert "--passphrase-file" in result.err
    one_clear_line(result.err)
    assert not (tmp_path / "new.vault").exists()


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_a_secret_file_others_can_read_is_warned_about(
    cli: Runner, tmp_path: Path, vault_file: Path, mode: int
) -> None:
    """A passphrase file readable by group or others: a warning naming it (still used)."""
    exposed = secret_file(tmp_path / "exposed.txt", PASSPHRASE + "\n")
    exposed.chmod(mode)
    result = cli("verify", vault_file, "--passphrase-file", exposed)
    assert result.code == ExitCode.OK
    assert f"{exposed} can be read or changed by other users" in result.err
    exposed.chmod(0o600)
    assert "warning" not in cli("verify", vault_file, "--passphrase-file", exposed).err


def test_the_command_refuses_core_dumps() -> None:
    """After main() runs, RLIMIT_CORE is 0 (hard too) and the process is not dumpable."""
    resource = pytest.importorskip("resource")
    code = (
        "import resource\n"
        "from keystore.cli import main\n"
        "from keystore.cli_hardening import dumpable\n"
        "main(['status', 'no-such.vault'])\n"
        "print(resource.getrlimit(resource.RLIMIT_CORE), dumpable())\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True, timeout=60)
    assert resource.RLIMIT_CORE is not None
    expected_dumpable = "False" if sys.platform.startswith("linux") else "None"
    assert proc.stdout.split() == ["(0,", "0)", expected_dumpable]


def test_raw_key_rotation_from_the_command_line(cli: Runner, tmp_path: Path) -> None:
    """passwd --raw-key-file OLD --new-raw-key-file NEW: the new key opens, the old not."""
    old = secret_file(tmp_path / "old.key", os.urandom(32).hex())
    new = secret_file(tmp_path / "new.key", os.urandom(32).hex())
    path = tmp_path / "raw.vault"
    assert cli("init", path, "--raw-key-file", old).code == 0
    result = cli("passwd", path, "--raw-key-file", old, "--new-raw-key-file", new, "--json")
    assert result.code == ExitCode.OK, result.err
    assert cli("verify", path, "--raw-key-file", new).code == ExitCode.OK
    assert cli("verify", path, "--raw-key-file", old).code == ExitCode.WRONG_PASSPHRASE


def test_passwd_rekey_revokes_the_old_passphrase_for_old_header_copies(
    cli: Runner, tmp_path: Path, vault_file: Path, pwfile: Path
) -> None:
    """An old copy of the header unwraps with the old passphrase, but its keys open
    nothing current: the unlock is refused (their state-record key fails too)."""
    import sqlite3

    conn = sqlite3.connect(vault_file)
    (old_header,) = conn.execute("SELECT header FROM keystore_header").fetchone()
    conn.close()
    new = secret_file(tmp_path / "new.txt", "the next passphrase\n")
    result = cli("passwd", vault_file, "--passphrase-file", pwfile, "--new-passphrase-file", new,
                 "--rekey", "--json")
    assert result.code == ExitCode.OK, result.err
    assert result.json()["rekeyed"] is True and result.json()["key_generation"] == 2
    assert read_rows(vault_file, "the next passphrase") == sorted(ROWS)
    # The attacker's view: today's file with yesterday's header and passphrase.
    conn = sqlite3.connect(vault_file)
    conn.execute("UPDATE keystore_header SET header = ?", (old_header,))
    conn.commit()
    conn.close()
    with Vault.open(vault_file, readonly=True) as v:
        # The old header still unwraps the OLD keys, which open nothing current:
        # not the state record (checked at unlock), not a row.
        with pytest.raises(IntegrityError):
            v.unlock(PASSPHRASE)
        assert v.locked


def test_passwd_without_rekey_says_old_copies_still_open(
    cli: Runner, tmp_path: Path, vault_file: Path, pwfile: Path
) -> None:
    """Without --rekey, the output tells the user what is not revoked."""
    new = secret_file(tmp_path / "new.txt", "the next passphrase\n")
    result = cli("passwd", vault_file, "--passphrase-file", pwfile, "--new-passphrase-file", new)
    assert result.code == ExitCode.OK
    assert "passwd --rekey" in result.out


def test_status_never_recommends_a_weaker_kdf(cli: Runner, tmp_path: Path) -> None:
    """A stronger-than-default KDF is left alone; a weaker one is pointed upward."""
    strong = profiles.KdfParameters(4, 64 * 1024, 4, "stronger")
    Vault.create(tmp_path / "strong.vault", PASSPHRASE, kdf=strong).close()
    Vault.create(tmp_path / "weak.vault", PASSPHRASE, kdf=profiles.INSECURE_FOR_TESTS_ONLY).close()
    assert cli("status", tmp_path / "strong.vault", "--json").json()["needs_rehash"] is False
    assert "needs rehash" not in cli("status", tmp_path / "strong.vault").out
    assert cli("status", tmp_path / "weak.vault", "--json").json()["needs_rehash"] is True
    assert "RFC_9106_LOW_MEMORY" in cli("status", tmp_path / "weak.vault").out


def test_passwd_rekey_uses_the_one_step_library_call_when_there_is_one(
    cli: Runner, tmp_path: Path, vault_file: Path, pwfile: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A library whose change_passphrase takes rekey=True is called once, with it."""
    calls: list[tuple[str, bool]] = []
    real_change, real_rekey = Vault.change_passphrase, Vault.rekey

    def change_passphrase(self: Vault, old: str, new: str, *, kdf: object = None,
                          rekey: bool = False) -> None:
        calls.append(("change_passphrase", rekey))
        real_change(self, old, new, kdf=kdf)  # type: ignore[arg-type]
        if rekey:
            real_rekey(self)

    def spied_rekey(self: Vault, progress: object = None) -> None:
        calls.append(("rekey", False))
        real_rekey(self)

    monkeypatch.setattr(Vault, "change_passphrase", change_passphrase)
    monkeypatch.setattr(Vault, "rekey", spied_rekey)
    new = secret_file(tmp_path / "new.txt", "the next passphrase\n")
    result = cli("passwd", vault_file, "--passphrase-file", pwfile, "--new-passphrase-file", new,
                 "--rekey", "--json")
    assert result.code == ExitCode.OK, result.err
    assert calls == [("change_passphrase", True)]
    assert result.json()["key_generation"] == 2
    assert read_rows(vault_file, "the next passphrase") == sorted(ROWS)
