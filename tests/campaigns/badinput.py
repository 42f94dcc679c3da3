"""Bad-input campaign: each kind of bad input, through the library and through the CLI.

For every case the library call must raise the documented exception (a
:class:`~keystore.KeystoreError` subclass for a bad file, ``TypeError``/``ValueError``
for API misuse), the command ``python -m keystore ...`` must exit with its documented
non-zero code and print exactly one line on stderr (no traceback), neither may print a
plaintext row value, and every file in the directory must keep its bytes (SHA-256
before and after; the writer's ``*.lock`` file is the one file a writable open may
create, and it holds only a pid).  Library-only kinds (category names, value sizes, key
types) have no CLI form: the command never takes a row from its arguments.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from keystore import (
    IntegrityError,
    NotAVault,
    SchemaTooNew,
    Vault,
    WrongPassphrase,
)
from keystore.export import export_vault, import_vault
from keystore.vault import MAX_VALUE_LEN
from tests.campaigns.common import FAST_KDF, PASSPHRASE, CampaignReport, tree_digest

__all__ = ["CASES", "Case", "Fixture", "run", "run_case"]

REPO = Path(__file__).resolve().parents[2]
SECRET_VALUE = b"PLAINTEXT-bad-input-campaign-value"
BACKUP_PASSPHRASE = "backup passphrase of the campaign"


@dataclass(frozen=True, slots=True)
class Fixture:
    """A directory with a good vault, a raw-key vault, an export, and secret files."""

    root: Path
    vault: Path
    raw_vault: Path
    export: Path
    pass_file: Path
    wrong_file: Path
    backup_file: Path
    target: Path  # where each case puts its bad input

    @classmethod
    def build(cls, root: Path) -> Fixture:
        vault, raw_vault, export = root / "good.vault", root / "raw.vault", root / "good.export"
        with Vault.create(vault, PASSPHRASE, kdf=FAST_KDF) as v:
            v.put("openmls/v1/key_package", b"kp-1", SECRET_VALUE)
            export_vault(v, export, BACKUP_PASSPHRASE, kdf=FAST_KDF)
        Vault.create_with_key(raw_vault, bytes(range(32))).close()
        files = {}
        for name, text in (("pass", PASSPHRASE), ("wrong", "not the passphrase"),
                           ("backup", BACKUP_PASSPHRASE)):
            files[name] = root / f"{name}.txt"
            files[name].write_text(text + "\n")
            files[name].chmod(0o600)  # as the docs advise (the command warns otherwise)
        return cls(root, vault, raw_vault, export, files["pass"], files["wrong"],
                   files["backup"], root / "bad")


@dataclass(frozen=True, slots=True)
class Case:
    """One kind of bad input.

    Attributes:
        prepare: puts the bad input in place (at ``fixture.target`` or by editing a file).
        library: the library call that must fail.
        errors: what it must raise.
        cli: the command's arguments, or ``None`` when the kind has no CLI form.
        codes: the exit codes the command may use for it (docs/cli.md).
        env: the passphrase environment for the command (``None``: unset).
    """

    name: str
    prepare: Callable[[Fixture], None]
    library: Callable[[Fixture], object]
    errors: tuple[type[BaseException], ...]
    cli: Callable[[Fixture], list[str]] | None
    codes: tuple[int, ...]
    env: str | None = PASSPHRASE


def _nothing(f: Fixture) -> None:
    return None


def _open_unlock_verify(path: Path, passphrase: str | bytes = PASSPHRASE) -> object:
    with Vault.open(path) as vault:
        vault.unlock(passphrase)
        return vault.verify()


def _write(content: bytes) -> Callable[[Fixture], None]:
    def prepare(f: Fixture) -> None:
        f.target.write_bytes(content)

    return prepare


def _other_app_db(f: Fixture) -> None:
    conn = sqlite3.connect(f.target)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.execute("INSERT INTO notes VALUES ('hello')")
    conn.commit()
    conn.close()


def _truncated_vault(f: Fixture) -> None:
    data = f.vault.read_bytes()
    f.target.write_bytes(data[: len(data) // 2])


def _future_vault(f: Fixture) -> None:
    conn = sqlite3.connect(f.vault, isolation_level=None)
    conn.execute("PRAGMA user_version = 99")
    conn.close()


def _corrupt_export(f: Fixture) -> None:
    data = bytearray(f.export.read_bytes())
    data[len(data) // 2] ^= 0x40
    f.target.write_bytes(bytes(data))


def _truncated_export(f: Fixture) -> None:
    data = f.export.read_bytes()
    f.target.write_bytes(data[: len(data) - 7])


def _future_export(f: Fixture) -> None:
    data = bytearray(f.export.read_bytes())
    data[8] = 0x7F  # the format byte, after the 8-byte magic
    f.target.write_bytes(bytes(data))


def _sqlcipher_without_header_file(f: Fixture) -> None:
    Vault.create(f.root / "sc.vault", PASSPHRASE, kdf=FAST_KDF, sqlcipher=True).close()
    (f.root / "sc.vault.header").unlink()


def _key_file(length: int) -> Callable[[Fixture], None]:
    def prepare(f: Fixture) -> None:
        f.target.write_bytes(b"\x01" * length)
        f.target.chmod(0o600)  # a key file as the docs advise (the command warns otherwise)

    return prepare


def _put(category: object, key: object, value: object) -> Callable[[Fixture], object]:
    def call(f: Fixture) -> object:
        with Vault.open(f.vault) as vault:
            vault.unlock(PASSPHRASE)
            vault.put(category, key, value)  # type: ignore[arg-type]
        return None

    return call


def _import(source: Callable[[Fixture], Path], dest: Callable[[Fixture], Path],
            backup: str = BACKUP_PASSPHRASE) -> Callable[[Fixture], object]:
    def call(f: Fixture) -> object:
        return import_vault(source(f), dest(f), backup, PASSPHRASE, kdf=FAST_KDF)

    return call


def _verify_cmd(path: Callable[[Fixture], Path]) -> Callable[[Fixture], list[str]]:
    return lambda f: ["verify", str(path(f))]


def _target(f: Fixture) -> Path:
    return f.target


def _fresh(f: Fixture) -> Path:
    return f.root / "restored.vault"


_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _digest(root: Path) -> dict[str, str]:
    """File digests, minus what opening a WAL database may legitimately leave behind.

    That is the writer's ``*.lock`` (a pid), SQLite's ``-shm`` index (derived from the
    WAL, rebuilt at will) and an *empty* ``-wal``; a non-empty WAL is vault data and
    stays in the comparison.
    """
    return {
        k: v
        for k, v in tree_digest(root).items()
        if not k.endswith((".lock", "-shm")) and not (k.endswith("-wal") and v == _EMPTY_SHA256)
    }


def _closing(open_vault: Callable[[Fixture], Vault], then: Callable[[Vault], object]
             ) -> Callable[[Fixture], object]:
    """Open with ``open_vault``, call ``then`` on it, and always close it."""

    def call(f: Fixture) -> object:
        with open_vault(f) as vault:
            return then(vault)

    return call


def _unlocked(f: Fixture) -> Vault:
    vault = Vault.open(f.vault)
    vault.unlock(PASSPHRASE)
    return vault


NOT_A_VAULT = 6
USAGE = 2
WRONG = 3
SCHEMA = 5
FAILURE = 1

CASES: tuple[Case, ...] = (
    Case("missing-file", _nothing, lambda f: Vault.open(f.target), (NotAVault,),
         _verify_cmd(_target), (NOT_A_VAULT,)),
    Case("directory", lambda f: f.target.mkdir(), lambda f: Vault.open(f.target), (NotAVault,),
         _verify_cmd(_target), (NOT_A_VAULT,)),
    Case("empty-file", _write(b""), lambda f: Vault.open(f.target), (NotAVault,),
         _verify_cmd(_target), (NOT_A_VAULT,)),
    Case("random-bytes", _write(os.urandom(8192)), lambda f: Vault.open(f.target),
         (NotAVault,), _verify_cmd(_target), (NOT_A_VAULT,)),
    Case("other-apps-sqlite", _other_app_db, lambda f: Vault.open(f.target), (NotAVault,),
         _verify_cmd(_target), (NOT_A_VAULT,)),
    Case("truncated-vault", _truncated_vault, lambda f: _open_unlock_verify(f.target),
         (NotAVault, IntegrityError), _verify_cmd(_target), (NOT_A_VAULT, FAILURE)),
    Case("vault-from-the-future", _future_vault, lambda f: Vault.open(f.vault),
         (SchemaTooNew,), _verify_cmd(lambda f: f.vault), (SCHEMA,)),
    Case("wrong-passphrase", _nothing,
         lambda f: _open_unlock_verify(f.vault, "not the passphrase"), (WrongPassphrase,),
         _verify_cmd(lambda f: f.vault), (WRONG,), env="not the passphrase"),
    Case("empty-passphrase", _nothing, lambda f: _open_unlock_verify(f.vault, ""),
         (ValueError,), _verify_cmd(lambda f: f.vault), (USAGE,), env=""),
    Case("wrong-raw-key-length", _key_file(31),
         _closing(lambda f: Vault.open(f.raw_vault),
                  lambda v: v.unlock_with_key(b"\x01" * 31)),
         (ValueError,), lambda f: ["verify", str(f.raw_vault), "--raw-key-file", str(f.target)],
         (USAGE,), env=None),
    Case("raw-key-on-passphrase-vault", _key_file(32),
         _closing(lambda f: Vault.open(f.vault), lambda v: v.unlock_with_key(b"\x01" * 32)),
         (ValueError,), lambda f: ["verify", str(f.vault), "--raw-key-file", str(f.target)],
         (USAGE,), env=None),
    Case("passphrase-file-missing", _nothing,
         lambda f: _open_unlock_verify(f.vault, f.target.read_text()), (FileNotFoundError,),
         lambda f: ["verify", str(f.vault), "--passphrase-file", str(f.target)], (USAGE,),
         env=None),
    Case("invalid-category", _nothing, _put("has space", b"k", b"v"), (ValueError,), None, ()),
    Case("category-not-str", _nothing, _put(b"bytes", b"k", b"v"), (TypeError,), None, ()),
    Case("huge-value", _nothing, _put("c", b"k", b"\0" * (MAX_VALUE_LEN + 1)), (ValueError,),
         None, ()),
    Case("non-bytes-key", _nothing, _put("c", "text", b"v"), (TypeError,), None, ()),
    Case("corrupted-export", _corrupt_export, _import(_target, _fresh), (IntegrityError,),
         lambda f: ["import", str(f.target), str(_fresh(f)),
                    "--backup-passphrase-file", str(f.backup_file)], (FAILURE,)),
    Case("truncated-export", _truncated_export, _import(_target, _fresh), (IntegrityError,),
         lambda f: ["import", str(f.target), str(_fresh(f)),
                    "--backup-passphrase-file", str(f.backup_file)], (FAILURE,)),
    Case("export-from-the-future", _future_export, _import(_target, _fresh), (SchemaTooNew,),
         lambda f: ["import", str(f.target), str(_fresh(f)),
                    "--backup-passphrase-file", str(f.backup_file)], (SCHEMA,)),
    Case("export-wrong-backup-passphrase", _nothing,
         _import(lambda f: f.export, _fresh, "wrong backup"), (WrongPassphrase,),
         lambda f: ["import", str(f.export), str(_fresh(f)),
                    "--backup-passphrase-file", str(f.wrong_file)], (WRONG,)),
    Case("import-onto-existing-vault", _nothing, _import(lambda f: f.export, lambda f: f.vault),
         (FileExistsError,),
         lambda f: ["import", str(f.export), str(f.vault),
                    "--backup-passphrase-file", str(f.backup_file)], (USAGE,)),
    Case("export-onto-existing-file", _write(b"precious"),
         _closing(_unlocked,
                  lambda v: export_vault(v, v.path.with_name("bad"), BACKUP_PASSPHRASE,
                                         kdf=FAST_KDF)),
         (FileExistsError,),
         lambda f: ["export", str(f.vault), str(f.target),
                    "--backup-passphrase-file", str(f.backup_file)], (USAGE,)),
    Case("init-onto-existing-file", _write(b"precious"),
         lambda f: Vault.create(f.target, PASSPHRASE, kdf=FAST_KDF), (FileExistsError,),
         lambda f: ["init", str(f.target)], (USAGE,)),
    Case("sqlcipher-database-without-header-file", _sqlcipher_without_header_file,
         lambda f: Vault.open(f.root / "sc.vault"), (NotAVault,),
         _verify_cmd(lambda f: f.root / "sc.vault"), (NOT_A_VAULT,)),
)


def run_cli(
    args: list[str], env_passphrase: str | None, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``python -m keystore ARGS`` as a user runs it: no terminal, stdin closed."""
    env = {k: v for k, v in os.environ.items() if k != "MLS_KEYSTORE_PASSPHRASE"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if env_passphrase is not None:
        env["MLS_KEYSTORE_PASSPHRASE"] = env_passphrase
    return subprocess.run(
        [sys.executable, "-m", "keystore", *args],
        cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=60, start_new_session=True, check=False,
    )


def run_case(case: Case, root: Path, report: CampaignReport) -> None:
    """Run one case through the library, then the CLI, on a fresh fixture."""
    fixture = Fixture.build(root)
    case.prepare(fixture)
    tag = f"[{case.name}]"
    before = _digest(root)
    report.trials += 1
    try:
        result = case.library(fixture)
        if isinstance(result, Vault):
            result.close()
    except case.errors as exc:
        report.count("library refusals")
        if SECRET_VALUE.decode() in str(exc):
            report.find(f"{tag} library error message holds plaintext")
    except Exception as exc:
        report.find(f"{tag} library raised {type(exc).__name__} ({exc}), not {case.errors}")
    else:
        report.find(f"{tag} library accepted the bad input")
    if _digest(root) != before:
        report.find(f"{tag} library call changed files on disk")
    if case.cli is None:
        return
    done = run_cli(case.cli(fixture), case.env, root)
    report.count("CLI refusals")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if done.returncode not in case.codes:
        report.find(f"{tag} CLI exit {done.returncode}, expected {case.codes}: {done.stderr}")
    if len(lines) != 1 or "Traceback" in done.stderr:
        report.find(f"{tag} CLI stderr is not one line: {done.stderr!r}")
    if SECRET_VALUE.decode() in done.stdout + done.stderr:
        report.find(f"{tag} CLI output holds plaintext")
    if _digest(root) != before:
        report.find(f"{tag} CLI run changed files on disk")


def run(full: bool = False, seed: int = 0, directory: Path | None = None) -> CampaignReport:
    """Every case (the size does not change this campaign: it is a matrix)."""
    report = CampaignReport("bad input (library and CLI)")
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        for i, case in enumerate(CASES):
            root = Path(tmp) / f"{i}-{case.name}"
            root.mkdir()
            run_case(case, root, report)
    return report
