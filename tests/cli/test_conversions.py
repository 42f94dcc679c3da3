"""convert, import --sqlcipher, compact; --json on every command; progress per phase."""

from __future__ import annotations

import importlib.util
import io
import json
import os
from pathlib import Path

import pytest

from keystore import Change, Vault, profiles
from keystore.cli import ExitCode
from tests.cli.conftest import (
    FAST,
    PASSPHRASE,
    ROWS,
    Runner,
    digest,
    read_rows,
    secret_file,
)

needs_sqlcipher = pytest.mark.skipif(
    importlib.util.find_spec("sqlcipher3") is None,
    reason="the [sqlcipher] extra (sqlcipher3) is not installed (no wheel for this platform)",
)


@needs_sqlcipher
def test_convert_plain_to_sqlcipher_and_back_keeps_every_row(
    run: Runner, tmp_path: Path, vault_file: Path, pwfile: Path
) -> None:
    """Two conversions later the rows are the same; the source is never modified."""
    before = digest(vault_file)
    enc, plain = tmp_path / "enc.vault", tmp_path / "plain.vault"
    result = run("convert", vault_file, enc, "--passphrase-file", pwfile, "--json")
    assert result.code == ExitCode.OK, result.err
    assert result.json()["sqlcipher"] is True and result.json()["rows"] == len(ROWS)
    assert (tmp_path / "enc.vault.header").is_file()
    assert not enc.read_bytes().startswith(b"SQLite format 3")
    assert digest(vault_file) == before
    result = run("convert", enc, plain, "--passphrase-file", pwfile)
    assert result.code == ExitCode.OK, result.err
    assert read_rows(plain) == read_rows(vault_file) == sorted(ROWS)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".converting")]


def test_convert_refuses_an_existing_destination(
    run: Runner, tmp_path: Path, vault_file: Path, pwfile: Path
) -> None:
    """The destination must not exist: exit 2 and nothing changed."""
    other = tmp_path / "other.vault"
    other.write_bytes(b"keep")
    result = run("convert", vault_file, other, "--passphrase-file", pwfile)
    assert result.code == ExitCode.USAGE
    assert other.read_bytes() == b"keep"


@needs_sqlcipher
def test_convert_a_raw_key_vault(cli: Runner, tmp_path: Path) -> None:
    """A raw-key vault converts with its key file, and stays keyed by it."""
    key = secret_file(tmp_path / "k.hex", os.urandom(32).hex())
    src, dest = tmp_path / "raw.vault", tmp_path / "raw-enc.vault"
    assert cli("init", src, "--raw-key-file", key).code == 0
    assert cli("convert", src, dest, "--raw-key-file", key).code == ExitCode.OK
    assert cli("verify", dest, "--raw-key-file", key, "--json").json()["ok"] is True


@needs_sqlcipher
def test_import_sqlcipher_restores_into_a_sqlcipher_vault(
    run: Runner, tmp_path: Path, vault_file: Path, pwfile: Path
) -> None:
    """import --sqlcipher: the rows of the export, in a whole-file-encrypted vault."""
    out = tmp_path / "b.export"
    assert run("export", vault_file, out, "--passphrase-file", pwfile,
               "--backup-passphrase-file", pwfile, *FAST).code == 0
    dest = tmp_path / "restored.vault"
    result = run("import", out, dest, "--sqlcipher", "--backup-passphrase-file", pwfile,
                 "--passphrase-file", pwfile, *FAST, "--json")
    assert result.code == ExitCode.OK, result.err
    assert result.json()["rows"] == len(ROWS)
    with Vault.open(dest, readonly=True) as v:
        assert v.sqlcipher
    assert read_rows(dest) == sorted(ROWS)


def test_compact_gives_deleted_space_back(
    cli: Runner, tmp_path: Path, pwfile: Path
) -> None:
    """After deleting most rows the file shrinks; the remaining rows are intact."""
    path = tmp_path / "big.vault"
    with Vault.create(path, PASSPHRASE, kdf=profiles.INSECURE_FOR_TESTS_ONLY) as v:
        v.apply(Change("c", i.to_bytes(4, "big"), os.urandom(2048)) for i in range(400))
        v.apply(Change("c", i.to_bytes(4, "big"), None) for i in range(40, 400))
    result = cli("compact", path, "--json")
    assert result.code == ExitCode.OK, result.err
    report = result.json()
    assert report["bytes_after"] < report["bytes_before"] / 3
    with Vault.open(path, readonly=True) as v:
        v.unlock(PASSPHRASE)
        assert v.verify().ok and v.stats().total_rows == 40


# ---------------------------------------------------------------------- --json everywhere


def test_every_command_prints_json_that_parses(
    run: Runner, tmp_path: Path, vault_file: Path, pwfile: Path
) -> None:
    """Each subcommand, demo included, with --json: stdout is one JSON document."""
    backup = secret_file(tmp_path / "backup.txt", "the backup passphrase\n")
    new = secret_file(tmp_path / "new.txt", "the next passphrase\n")
    unlock: list[str | Path] = ["--passphrase-file", pwfile]
    commands: list[list[str | Path]] = [
        ["init", tmp_path / "fresh.vault", *unlock, *FAST],
        ["status", vault_file],
        ["migrate", vault_file, *unlock],
        ["verify", vault_file, *unlock],
        ["stats", vault_file],
        ["export", vault_file, tmp_path / "b.export", *unlock, "--backup-passphrase-file",
         backup, *FAST],
        ["import", tmp_path / "b.export", tmp_path / "imp.vault", "--backup-passphrase-file",
         backup, *unlock, *FAST],
        ["convert", vault_file, tmp_path / "conv.vault", *unlock],
        ["compact", vault_file, *unlock],
        ["rekey", vault_file, *unlock],
        ["passwd", tmp_path / "fresh.vault", *unlock, "--new-passphrase-file", new],
        ["demo", tmp_path / "demo", *FAST],
        ["mls", "groups", tmp_path / "demo" / "alice.vault", "--passphrase-file",
         secret_file(tmp_path / "demo.txt", "demo json passphrase\n")],
        ["verify", tmp_path / "absent.vault", *unlock],  # a failure: the error object
        ["verfy", vault_file],  # a usage error: the error object too
    ]
    seen = set()
    for argv in commands:
        result = run(*argv, "--json", env={"MLS_KEYSTORE_PASSPHRASE": "demo json passphrase"}
                     if argv[0] == "demo" else None)
        document = json.loads(result.out)
        assert isinstance(document, dict), argv
        assert (result.code == 0) == (document.get("ok", True) is not False), (argv, result.err)
        seen.add(str(argv[0]))
    from keystore.cli import _parser

    parser = _parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) <= seen  # type: ignore[arg-type]


# ---------------------------------------------------------------------- progress


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """Make the progress display draw (as on a terminal) into a buffer."""
    from rich.console import Console

    from keystore import cli_progress

    buffer = io.StringIO()
    monkeypatch.setattr(
        cli_progress, "_console",
        lambda: Console(file=buffer, force_terminal=True, width=160, color_system=None),
    )
    return buffer


def test_rekey_shows_derive_copy_and_commit_phases(
    cli: Runner, vault_file: Path, pwfile: Path, drawn: io.StringIO
) -> None:
    """Every phase gets a line, ticked when done: the commit is not hidden behind the bar."""
    assert cli("rekey", vault_file, "--passphrase-file", pwfile).code == ExitCode.OK
    text = drawn.getvalue()
    for phase in ("deriving the key", "re-encrypting rows", "committing"):
        assert phase in text, text
    assert text.count("✓") >= 3
    assert f"{len(ROWS)}/{len(ROWS)} rows" in text


def test_import_shows_sizes_in_human_units_and_one_category(
    cli: Runner, tmp_path: Path, pwfile: Path, drawn: io.StringIO
) -> None:
    """Bytes as kB/MB, not raw counts; "1 category", not "1 categories"."""
    path = tmp_path / "one.vault"
    with Vault.create(path, PASSPHRASE, kdf=profiles.INSECURE_FOR_TESTS_ONLY) as v:
        v.put("only", b"k", os.urandom(5000))
    out = tmp_path / "one.export"
    result = cli("export", path, out, "--passphrase-file", pwfile, "--backup-passphrase-file",
                 pwfile, *FAST)
    assert "1 row in 1 category" in result.out
    result = cli("import", out, tmp_path / "two.vault", "--passphrase-file", pwfile,
                 "--backup-passphrase-file", pwfile, *FAST)
    assert result.code == ExitCode.OK, result.err
    assert "1 row in 1 category (5.0 kB)" in result.out
    text = drawn.getvalue()
    assert "checking the backup passphrase" in text and "kB" in text
    assert "writing the vault to disk" in text
