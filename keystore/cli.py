"""The ``mls-keystore`` command (also ``python -m keystore``).

Subcommands: ``init``, ``status``, ``migrate``, ``passwd``, ``rekey``, ``verify``,
``stats``, ``export``, ``import``, ``demo``.  See ``docs/cli.md``.

Passphrases come from ``--passphrase-file``, the ``MLS_KEYSTORE_PASSPHRASE``
environment variable, or a terminal prompt, never from the command line (argv is
visible to every user through ``ps``).  With none of these and no terminal, the
command fails at once instead of waiting for input that cannot come.

Expected failures print one line on stderr (and, with ``--json``, an error object
on stdout) and exit with a code from :class:`ExitCode`; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import importlib
import os
import sqlite3
import sys
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from enum import IntEnum
from pathlib import Path
from typing import NoReturn, cast

from pydantic import BaseModel, ConfigDict

from keystore import __version__, migrations, profiles
from keystore.cipher import (
    StoreCipher,
    check_raw_key,
    derive_wrapping_key,
    normalize_passphrase,
    unwrap_secrets,
)
from keystore.errors import (
    IntegrityError,
    KeystoreError,
    MigrationError,
    MigrationRequired,
    NotAVault,
    SchemaTooNew,
    VaultBusy,
    VaultIOError,
    WrongPassphrase,
)
from keystore.export import export_vault, import_vault, read_header
from keystore.header import HEADER_FORMAT, KDF_RAW_KEY, Header
from keystore.lockfile import WriterLock, lock_path_for
from keystore.profiles import KdfParameters
from keystore.reports import KdfInfo, StatsReport, VerifyReport
from keystore.vault import Vault, backup_vault_file, probe

__all__ = ["PASSPHRASE_ENV", "ExitCode", "main"]

PASSPHRASE_ENV = "MLS_KEYSTORE_PASSPHRASE"
_PROG = "mls-keystore"
_SOURCE_HINT = f"use --passphrase-file FILE or set {PASSPHRASE_ENV}"


class ExitCode(IntEnum):
    """The command's exit status; part of its interface, documented in docs/cli.md."""

    OK = 0
    FAILURE = 1  # a check found a problem: bad rows, tampering, failed migration
    USAGE = 2  # bad arguments or input; nothing was changed
    WRONG_PASSPHRASE = 3
    BUSY = 4
    SCHEMA_TOO_NEW = 5
    NOT_A_VAULT = 6
    MIGRATION_REQUIRED = 7
    IO_ERROR = 8
    INTERRUPTED = 130


class UsageError(Exception):
    """Input the user can correct (missing passphrase, file exists, bad option)."""


# ---------------------------------------------------------------------- reports


class _Report(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StepInfo(_Report):
    """A migration step, pending or just applied."""

    version: int
    name: str
    checksum: str
    needs_unlock: bool


class AppliedInfo(_Report):
    """A step recorded in the vault, and whether it matches the shipped one."""

    version: int
    name: str
    checksum: str
    applied_at: str
    matches_shipped: bool | None  # None: a step this code does not know


class StatusReport(_Report):
    """What ``status`` can tell without a passphrase."""

    path: str
    file_bytes: int
    header_format: int
    sqlcipher: bool
    schema_version: int
    latest_schema_version: int
    applied: list[AppliedInfo]
    pending: list[StepInfo]
    problems: list[str]
    kdf: KdfInfo
    needs_rehash: bool
    store_id: str
    key_generation: int
    rows: int | None  # None for SQLCipher: hidden until unlocked
    writer_pid: int | None  # the process holding the writer lock, when known


class MigrateReport(_Report):
    """What ``migrate`` did (or, with ``--dry-run``, would do)."""

    path: str
    dry_run: bool
    from_version: int
    to_version: int
    steps: list[StepInfo]
    backup: str | None


class InitReport(_Report):
    """The vault ``init`` created."""

    path: str
    store_id: str
    sqlcipher: bool
    schema_version: int
    kdf: KdfInfo


class PasswdReport(_Report):
    """The outcome of ``passwd``."""

    path: str
    kdf: KdfInfo
    needs_rehash: bool


class RekeyReport(_Report):
    """The outcome of ``rekey``."""

    path: str
    key_generation: int
    rows_reencrypted: int


class TransferReport(_Report):
    """The outcome of ``export`` or ``import``."""

    source: str
    destination: str
    rows: int
    categories: int
    plaintext_bytes: int
    store_id: str | None  # of the new vault, for import


class ErrorReport(_Report):
    """Printed on stdout with ``--json`` when a command fails."""

    ok: bool = False
    error: str
    exit_code: int
    message: str


# ---------------------------------------------------------------------- output


# rich is imported only where a bar is drawn: it is a tenth of the start-up time,
# and most failing invocations never need it.


@contextlib.contextmanager
def _working(description: str) -> Iterator[None]:
    """A spinner on stderr for steps of unknown length (key derivation, checks)."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    ) as bar:
        bar.add_task(description, total=None)
        yield


@contextlib.contextmanager
def _progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr; yields ``update(done, total)``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _emit(args: argparse.Namespace, report: BaseModel, lines: Sequence[str]) -> None:
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        for line in lines:
            print(line)


def _kdf_info(kdf: KdfParameters | None) -> KdfInfo:
    if kdf is None:
        return KdfInfo(kind="raw-key")
    return KdfInfo(
        kind="argon2id",
        time_cost=kdf.time_cost,
        memory_cost_kib=kdf.memory_cost,
        parallelism=kdf.parallelism,
    )


def _kdf_text(info: KdfInfo) -> str:
    if info.kind != "argon2id":
        return "raw 32-byte key (HKDF-SHA256)"
    return f"Argon2id t={info.time_cost} m={info.memory_cost_kib} KiB p={info.parallelism}"


# ---------------------------------------------------------------------- secrets


def _read_secret_file(path: str, what: str) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"the {what} file {path} is not UTF-8 text") from None
    # One trailing newline is how editors and `echo` end a file, not part of the secret.
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise UsageError(f"the {what} file {path} is empty")
    return text


def _prompt(label: str, *, confirm: bool, hint: str) -> str:
    if not sys.stdin.isatty():
        raise UsageError(f"no {label.lower()} given and no terminal to ask on: {hint}")
    try:
        secret = getpass.getpass(f"{label}: ")
        if not secret:
            raise UsageError(f"empty {label.lower()}")
        if confirm and getpass.getpass(f"{label} (again): ") != secret:
            raise UsageError(f"the two {label.lower()}s differ")
    except EOFError:  # Ctrl-D at the prompt
        raise UsageError(f"no {label.lower()} entered") from None
    return secret


def _passphrase(args: argparse.Namespace, *, confirm: bool = False,
                label: str = "Vault passphrase") -> str:
    """The vault passphrase from --passphrase-file, the environment, or a prompt."""
    if getattr(args, "passphrase_file", None):
        return _read_secret_file(args.passphrase_file, "passphrase")
    env = os.environ.get(PASSPHRASE_ENV)
    if env is not None:
        if not env:
            raise UsageError(f"{PASSPHRASE_ENV} is set but empty")
        return env
    return _prompt(label, confirm=confirm, hint=_SOURCE_HINT)


def _secondary(path: str | None, label: str, what: str, option: str, *, confirm: bool) -> str:
    """A second secret (new or backup passphrase): a file or a prompt, never the env."""
    if path:
        return _read_secret_file(path, what)
    return _prompt(label, confirm=confirm, hint=f"use {option} FILE")


def _raw_key(path: str) -> bytes:
    """A raw key file: 32 bytes, or 64 hex digits (optionally newline-terminated)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the raw key file {path}: {exc.strerror}") from None
    if len(data) != 32:
        try:
            data = bytes.fromhex(data.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise UsageError(
                f"the raw key file {path} must hold 32 bytes or 64 hex digits"
            ) from None
    try:
        return check_raw_key(data)
    except ValueError as exc:
        raise UsageError(f"the raw key file {path}: {exc}") from None


def _kdf_choice(args: argparse.Namespace) -> KdfParameters | None:
    name: str | None = getattr(args, "kdf_profile", None)
    if name is None:
        return None
    try:
        kdf = profiles.by_name(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if kdf == profiles.INSECURE_FOR_TESTS_ONLY:
        print(
            "WARNING: KDF profile INSECURE_FOR_TESTS_ONLY: the passphrase protects nothing; "
            "use it for tests only",
            file=sys.stderr,
        )
    return kdf


def _unlock(vault: Vault, args: argparse.Namespace) -> None:
    """Unlock with the raw key file or the passphrase, whichever the vault needs."""
    if vault.kdf is None:
        if not getattr(args, "raw_key_file", None):
            raise UsageError(f"{vault.path} is keyed by a raw key: pass --raw-key-file FILE")
        vault.unlock_with_key(_raw_key(args.raw_key_file))
        return
    passphrase = _passphrase(args)
    with _working("deriving the key"):
        vault.unlock(passphrase)


def _cipher_for(header: Header, args: argparse.Namespace) -> StoreCipher:
    """The unlocked cipher of a plain vault's header, for data migration steps."""
    if header.kdf_id == KDF_RAW_KEY:
        if not getattr(args, "raw_key_file", None):
            raise UsageError("this vault is keyed by a raw key: pass --raw-key-file FILE")
        secret = _raw_key(args.raw_key_file)
    else:
        secret = normalize_passphrase(_passphrase(args))
    with _working("deriving the key"):
        kek = derive_wrapping_key(header, secret)
    try:
        secrets = unwrap_secrets(kek, header)
    finally:
        kek[:] = bytes(len(kek))
    try:
        return StoreCipher(secrets, header.store_id)
    finally:
        secrets[:] = bytes(len(secrets))


# ---------------------------------------------------------------------- plain-file access


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    uri = f"file:{urllib.parse.quote(str(path))}?mode={'ro' if readonly else 'rw'}"
    try:
        return sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise NotAVault(f"cannot open {path} as a vault: {exc}") from None


def _check_schema(conn: sqlite3.Connection, path: Path) -> int:
    """The schema version of a connected plain vault, refusing what we cannot read."""
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = migrations.schema_version(conn)
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise VaultBusy(f"vault {path} is busy: {exc}") from None
        raise NotAVault(f"{path} is not a readable vault: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise NotAVault(f"{path} is not a readable vault: {exc}") from None
    if "keystore_header" not in tables:
        raise NotAVault(f"{path} is a SQLite database, but not an mls-keystore vault")
    if version > migrations.LATEST_VERSION:
        raise SchemaTooNew(
            f"{path} has schema version {version}; this code reads up to "
            f"{migrations.LATEST_VERSION}. Upgrade mls-keystore; the file was not changed."
        )
    return version


def _read_header(conn: sqlite3.Connection, path: Path) -> Header:
    try:
        row = conn.execute("SELECT header FROM keystore_header WHERE id = 1").fetchone()
    except sqlite3.DatabaseError as exc:
        raise IntegrityError(f"vault {path} is corrupt: {exc}") from None
    if row is None:
        raise IntegrityError(f"vault {path} has no header row")
    return Header.from_bytes(bytes(row[0]))


def _writer_pid(path: Path) -> int | None:
    """The pid holding the vault's writer lock, read from /proc/locks.

    Looking, rather than trying the lock, keeps ``status`` from ever making a real
    writer fail with VaultBusy.  ``None`` when free or unknowable (not Linux).
    """
    try:
        st = lock_path_for(path).stat()
        with open("/proc/locks", encoding="ascii") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "FLOCK" not in fields or "->" in fields:
            continue
        try:
            i = fields.index("FLOCK")
            pid, dev_ino = int(fields[i + 3]), fields[i + 4]
            major, minor, inode = dev_ino.split(":")
            same = (int(major, 16), int(minor, 16), int(inode)) == (
                os.major(st.st_dev), os.minor(st.st_dev), st.st_ino,
            )
        except (IndexError, ValueError):
            continue
        if same:
            return pid
    return None


def _step_info(m: migrations.Migration) -> StepInfo:
    return StepInfo(version=m.version, name=m.name, checksum=m.checksum,
                    needs_unlock=m.needs_keys)


# ---------------------------------------------------------------------- commands


def _cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if args.raw_key_file and args.kdf_profile:
        raise UsageError("--kdf-profile does not apply to a raw-key vault")
    kdf = _kdf_choice(args) or profiles.RFC_9106_LOW_MEMORY
    if args.raw_key_file:
        vault = Vault.create_with_key(path, _raw_key(args.raw_key_file), sqlcipher=args.sqlcipher)
    else:
        if path.exists() or path.is_symlink():
            raise UsageError(f"{path} already exists; refusing to overwrite it")
        passphrase = _passphrase(args, confirm=True, label="New vault passphrase")
        with _working("deriving the key"):
            vault = Vault.create(path, passphrase, kdf=kdf, sqlcipher=args.sqlcipher)
    with vault:
        report = InitReport(
            path=str(path), store_id=vault.store_id.hex(), sqlcipher=vault.sqlcipher,
            schema_version=vault.schema_version, kdf=_kdf_info(vault.kdf),
        )
    _emit(args, report, [
        f"created {path}",
        f"  store id  {report.store_id}",
        f"  key       {_kdf_text(report.kdf)}",
        f"  schema    {report.schema_version}" + ("  (SQLCipher file)" if report.sqlcipher else ""),
    ])
    return ExitCode.OK


def _status(path: Path) -> StatusReport:
    sidecar = probe(path)
    writer = _writer_pid(path)
    file_bytes = path.stat().st_size
    if sidecar is not None:
        header, version = sidecar.current, sidecar.schema_version
        if version > migrations.LATEST_VERSION:
            raise SchemaTooNew(
                f"{path} has schema version {version}; this code reads up to "
                f"{migrations.LATEST_VERSION}. Upgrade mls-keystore; the file was not changed."
            )
        applied: list[AppliedInfo] = []
        pending = [_step_info(m) for m in migrations.MIGRATIONS if m.version > version]
        problems: list[str] = []
        rows = None
    else:
        conn = _connect(path, readonly=True)
        try:
            version = _check_schema(conn, path)
            header = _read_header(conn, path)
            shipped = {m.version: m for m in migrations.MIGRATIONS}
            applied = [
                AppliedInfo(
                    version=a.version, name=a.name, checksum=a.checksum,
                    applied_at=a.applied_at,
                    matches_shipped=(
                        shipped[a.version].checksum == a.checksum if a.version in shipped
                        else None
                    ),
                )
                for a in migrations.applied(conn)
            ]
            pending = [_step_info(m) for m in migrations.pending(conn)]
            problems = []
            try:
                migrations.check_recorded(conn)
            except KeystoreError as exc:
                problems.append(str(exc))
            rows = int(conn.execute("SELECT COUNT(*) FROM keystore_rows").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise NotAVault(f"{path} is not a readable vault: {exc}") from None
        finally:
            conn.close()
    return StatusReport(
        path=str(path), file_bytes=file_bytes, header_format=HEADER_FORMAT,
        sqlcipher=header.sqlcipher, schema_version=version,
        latest_schema_version=migrations.LATEST_VERSION, applied=applied, pending=pending,
        problems=problems, kdf=_kdf_info(header.kdf),
        needs_rehash=header.kdf is not None
        and not header.kdf.same_cost(profiles.RFC_9106_LOW_MEMORY),
        store_id=header.store_id.hex(), key_generation=header.key_generation, rows=rows,
        writer_pid=writer,
    )


def _cmd_status(args: argparse.Namespace) -> int:
    r = _status(Path(args.path))
    lines = [
        f"vault        {r.path} ({r.file_bytes} bytes{', SQLCipher' if r.sqlcipher else ''})",
        f"store id     {r.store_id}",
        f"schema       {r.schema_version} (this code: {r.latest_schema_version})",
        f"key          {_kdf_text(r.kdf)}, generation {r.key_generation}"
        + ("  [needs rehash: run passwd --kdf-profile RFC_9106_LOW_MEMORY]"
           if r.needs_rehash else ""),
        f"rows         {'hidden until unlocked' if r.rows is None else r.rows}",
        f"writer       {'none' if r.writer_pid is None else f'pid {r.writer_pid}'}",
    ]
    for step in r.pending:
        lines.append(f"pending      {step.version}: {step.name}")
    if r.pending:
        lines.append(f"             run `{_PROG} migrate {r.path}` (it makes a backup first)")
    lines += [f"PROBLEM      {p}" for p in r.problems]
    _emit(args, r, lines)
    return ExitCode.FAILURE if r.problems else ExitCode.OK


def _cmd_migrate(args: argparse.Namespace) -> int:
    path = Path(args.path)
    sidecar = probe(path)
    if sidecar is not None:
        return _migrate_sqlcipher(args, path, sidecar.schema_version)
    lock = None if args.dry_run else WriterLock.acquire(path)
    cipher: StoreCipher | None = None
    try:
        conn = _connect(path, readonly=args.dry_run)
        try:
            version = _check_schema(conn, path)
            migrations.check_recorded(conn)
            target = _target(args, version)
            steps = migrations.pending(conn, target)
            backup = None
            if steps and not args.dry_run:
                if any(m.needs_keys for m in steps):
                    cipher = _cipher_for(_read_header(conn, path), args)
                conn.execute("PRAGMA synchronous=FULL")
                if not args.no_backup:
                    with _working("backing up"):
                        backup = str(backup_vault_file(conn, path, f"v{version}"))
                _run_steps(conn, steps, cipher, backup)
        except sqlite3.DatabaseError as exc:
            raise VaultIOError(f"storage failure on vault {path}: {exc}") from None
        finally:
            conn.close()
    finally:
        if cipher is not None:
            cipher.wipe()
        if lock is not None:
            lock.release()
    report = MigrateReport(
        path=str(path), dry_run=args.dry_run, from_version=version, to_version=target,
        steps=[_step_info(m) for m in steps], backup=backup,
    )
    _emit(args, report, _migrate_lines(report))
    return ExitCode.OK


def _run_steps(
    conn: sqlite3.Connection,
    steps: Sequence[migrations.Migration],
    cipher: StoreCipher | None,
    backup: str | None,
) -> None:
    """Apply ``steps`` one transaction each, with a progress bar."""
    with _progress("migrating") as update:
        for i, step in enumerate(steps):
            update(i, len(steps))
            try:
                migrations.migrate(conn, step.version, cipher=cipher)
            except MigrationError as exc:
                # The steps before this one stay applied; say where the old copy is.
                where = f"; the copy made before migrating is {backup}" if backup else ""
                raise MigrationError(f"{exc}{where}") from exc
        update(len(steps), len(steps))


def _target(args: argparse.Namespace, version: int) -> int:
    target: int = migrations.LATEST_VERSION if args.to is None else args.to
    if target > migrations.LATEST_VERSION:
        raise UsageError(
            f"no migration produces version {target}; the latest is {migrations.LATEST_VERSION}"
        )
    if target < version:
        raise UsageError(
            f"the vault is at version {version}; migrations only go forward (restore the "
            "backup made before migrating to go back)"
        )
    return target


def _migrate_sqlcipher(args: argparse.Namespace, path: Path, version: int) -> int:
    """SQLCipher vaults migrate on unlock (the file cannot be read before): no --to."""
    if args.to is not None or args.no_backup:
        raise UsageError("--to and --no-backup are not supported for SQLCipher vaults")
    target = migrations.LATEST_VERSION
    if version > target:
        raise SchemaTooNew(f"{path} has schema version {version}; this code reads up to {target}")
    steps = [m for m in migrations.MIGRATIONS if m.version > version]
    backup = None
    if steps and not args.dry_run:
        before = set(path.parent.glob(f"{path.name}.*.bak"))
        with Vault.open(path, auto_migrate=True) as vault:
            _unlock(vault, args)
        made = sorted(set(path.parent.glob(f"{path.name}.*.bak")) - before)
        backup = str(made[-1]) if made else None
    report = MigrateReport(
        path=str(path), dry_run=args.dry_run, from_version=version, to_version=target,
        steps=[_step_info(m) for m in steps], backup=backup,
    )
    _emit(args, report, _migrate_lines(report))
    return ExitCode.OK


def _migrate_lines(r: MigrateReport) -> list[str]:
    if not r.steps:
        return [f"{r.path} is at schema version {r.from_version}: nothing to do"]
    verb = "would apply" if r.dry_run else "applied"
    lines = [f"{verb} {len(r.steps)} step(s) to {r.path}, version {r.from_version} -> "
             f"{r.to_version}:"]
    lines += [f"  {s.version}: {s.name}" for s in r.steps]
    if r.backup:
        lines.append(f"backup of version {r.from_version}: {r.backup}")
    elif not r.dry_run:
        lines.append("no backup was made (--no-backup)")
    return lines


def _cmd_passwd(args: argparse.Namespace) -> int:
    path = Path(args.path)
    kdf = _kdf_choice(args)
    with Vault.open(path) as vault:
        if vault.kdf is None:
            raise UsageError(f"{path} is keyed by a raw key; passwd changes passphrases")
        old = _passphrase(args, label="Current passphrase")
        with _working("checking the passphrase"):
            vault.unlock(old)  # fail before asking for the new one twice
        new = _secondary(args.new_passphrase_file, "New passphrase", "new passphrase",
                         "--new-passphrase-file", confirm=True)
        with _working("re-wrapping the vault key"):
            vault.change_passphrase(old, new, kdf=kdf)
        report = PasswdReport(path=str(path), kdf=_kdf_info(vault.kdf),
                              needs_rehash=vault.needs_rehash())
    _emit(args, report, [f"passphrase of {path} changed ({_kdf_text(report.kdf)})"])
    return ExitCode.OK


def _cmd_rekey(args: argparse.Namespace) -> int:
    path = Path(args.path)
    with Vault.open(path) as vault:
        _unlock(vault, args)
        with _progress("re-encrypting rows") as update:
            vault.rekey(progress=update)
        stats = vault.stats()
    report = RekeyReport(path=str(path), key_generation=stats.key_generation,
                         rows_reencrypted=stats.total_rows)
    _emit(args, report, [
        f"new data key for {path} (generation {report.key_generation}); "
        f"{report.rows_reencrypted} rows re-encrypted",
    ])
    return ExitCode.OK


def _cmd_verify(args: argparse.Namespace) -> int:
    path = Path(args.path)
    with Vault.open(path, readonly=True) as vault:
        _unlock(vault, args)
        with _working("decrypting every row"):
            report: VerifyReport = vault.verify()
    lines = [
        f"FAILED  category={f.category} key_hash={f.key_hash}: {f.reason}"
        for f in report.failures
    ]
    lines.append(
        f"{report.rows_checked} rows checked, "
        + ("all authentic" if report.ok else f"{len(report.failures)} failed authentication")
    )
    _emit(args, report, lines)
    return ExitCode.OK if report.ok else ExitCode.FAILURE


def _cmd_stats(args: argparse.Namespace) -> int:
    path = Path(args.path)
    with Vault.open(path, readonly=True) as vault:
        if vault.sqlcipher:
            _unlock(vault, args)  # SQLCipher hides even the row counts until unlocked
        r: StatsReport = vault.stats()
    width = max([len(c) for c in r.categories] + [8])
    lines = [
        f"vault {r.path}: {r.total_rows} rows, {r.total_bytes} bytes stored, "
        f"{r.file_bytes} bytes on disk",
        f"nonce budget: {r.encryptions} of {r.nonce_budget} encryptions under key generation "
        f"{r.key_generation} ({r.budget_used:.6%})"
        + ("; rekey recommended" if r.rekey_recommended else ""),
        f"{'category':<{width}}  {'rows':>10}  {'bytes':>14}",
    ]
    lines += [f"{c:<{width}}  {s.rows:>10}  {s.bytes:>14}" for c, s in r.categories.items()]
    _emit(args, r, lines)
    return ExitCode.OK


def _cmd_export(args: argparse.Namespace) -> int:
    path, out = Path(args.path), Path(args.out)
    kdf = _kdf_choice(args) or profiles.RFC_9106_LOW_MEMORY
    if not args.force and (out.exists() or out.is_symlink()):
        raise UsageError(f"{out} already exists; refusing to overwrite it (use --force)")
    with Vault.open(path, readonly=True) as vault:
        _unlock(vault, args)
        backup_pw = _secondary(args.backup_passphrase_file, "Backup passphrase",
                               "backup passphrase", "--backup-passphrase-file", confirm=True)
        with _progress("exporting rows") as update:
            summary = export_vault(vault, out, backup_pw, kdf, overwrite=args.force,
                                   progress=update)
    report = TransferReport(source=str(path), destination=str(out), rows=summary.rows,
                            categories=summary.categories,
                            plaintext_bytes=summary.plaintext_bytes, store_id=None)
    _emit(args, report, [f"exported {report.rows} rows in {report.categories} categories "
                         f"from {path} to {out}"])
    return ExitCode.OK


def _cmd_import(args: argparse.Namespace) -> int:
    src, dest = Path(args.input), Path(args.path)
    kdf = _kdf_choice(args) or profiles.RFC_9106_LOW_MEMORY
    if not src.is_file():
        raise UsageError(f"{src} is not a file")
    if not args.force and (dest.exists() or dest.is_symlink()):
        raise UsageError(f"{dest} already exists; refusing to overwrite it (use --force)")
    with src.open("rb") as fh:
        read_header(fh)  # a foreign file fails here, before any prompt
    backup_pw = _secondary(args.backup_passphrase_file, "Backup passphrase",
                           "backup passphrase", "--backup-passphrase-file", confirm=False)
    vault_pw = _passphrase(args, confirm=True, label="New vault passphrase")
    with _progress("importing") as update:
        summary = import_vault(src, dest, backup_pw, vault_pw, kdf, overwrite=args.force,
                               progress=update)
    assert summary.store_id is not None  # import_vault always reports the new vault's id
    store_id = summary.store_id.hex()
    report = TransferReport(source=str(src), destination=str(dest), rows=summary.rows,
                            categories=summary.categories,
                            plaintext_bytes=summary.plaintext_bytes, store_id=store_id)
    _emit(args, report, [f"imported {report.rows} rows in {report.categories} categories "
                         f"into a new vault {dest} (store id {store_id})"])
    return ExitCode.OK


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        module = importlib.import_module("mls.demo")
    except ModuleNotFoundError as exc:
        if exc.name not in ("mls", "mls.demo"):
            raise
        raise UsageError(
            "the MLS demo is not available in this installation (no mls.demo)"
        ) from None
    demo_main = cast(Callable[[list[str]], int | None], module.main)
    result = demo_main(list(args.demo_args))
    return int(result or 0)


# ---------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr with our exit code."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    # SUPPRESS: a --json given before the subcommand is not reset by the subparser.
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output on stdout")
    passphrase = _Parser(add_help=False)
    passphrase.add_argument("--passphrase-file", metavar="FILE",
                            help=f"read the vault passphrase from FILE (else "
                                 f"${PASSPHRASE_ENV}, else a prompt)")
    raw_key = _Parser(add_help=False)
    raw_key.add_argument("--raw-key-file", metavar="FILE",
                         help="unlock a raw-key vault with FILE (32 bytes or 64 hex digits)")
    kdf = _Parser(add_help=False)
    kdf.add_argument("--kdf-profile", metavar="NAME",
                     help="Argon2id profile: RFC_9106_LOW_MEMORY (default) or "
                          "RFC_9106_HIGH_MEMORY")
    unlock = [common, passphrase, raw_key]

    parser = _Parser(prog=_PROG, description="Manage an mls-keystore vault.",
                     epilog="Exit codes: 0 ok, 1 failure found, 2 usage, 3 wrong passphrase, "
                            "4 busy, 5 schema too new, 6 not a vault, 7 migration required, "
                            "8 I/O error.  See docs/cli.md.")
    parser.add_argument("--version", action="version", version=f"{_PROG} {__version__}")
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    def command(name: str, parents: list[_Parser], help_text: str,
                func: Callable[[argparse.Namespace], int]) -> _Parser:
        p = sub.add_parser(name, parents=parents, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = command("init", [common, passphrase, kdf], "create a new vault", _cmd_init)
    p.add_argument("path", metavar="PATH", help="where to create it (must not exist)")
    p.add_argument("--raw-key-file", metavar="FILE",
                   help="key the vault by FILE (32 bytes or 64 hex digits) instead of a "
                        "passphrase")
    p.add_argument("--sqlcipher", action="store_true",
                   help="also encrypt the whole file with SQLCipher")

    p = command("status", [common], "versions, pending migrations, KDF, store id "
                "(no passphrase needed)", _cmd_status)
    p.add_argument("path", metavar="PATH")

    p = command("migrate", unlock, "upgrade the schema (after a backup beside the vault)",
                _cmd_migrate)
    p.add_argument("path", metavar="PATH")
    p.add_argument("--dry-run", action="store_true", help="list the steps, write nothing")
    p.add_argument("--to", type=int, metavar="N", help="stop at schema version N")
    p.add_argument("--no-backup", action="store_true", help="do not copy the vault first")

    p = command("passwd", [common, passphrase, kdf],
                "change the passphrase (O(1): no row is touched)", _cmd_passwd)
    p.add_argument("path", metavar="PATH")
    p.add_argument("--new-passphrase-file", metavar="FILE",
                   help="read the new passphrase from FILE (else prompt twice)")

    p = command("rekey", unlock, "new data key, every row re-encrypted", _cmd_rekey)
    p.add_argument("path", metavar="PATH")

    p = command("verify", unlock, "decrypt and check every row", _cmd_verify)
    p.add_argument("path", metavar="PATH")

    p = command("stats", unlock, "rows and bytes per category, nonce budget "
                "(passphrase only for SQLCipher)", _cmd_stats)
    p.add_argument("path", metavar="PATH")

    backup_help = "read the backup passphrase from FILE (else a prompt)"
    p = command("export", [*unlock, kdf], "write every row to an encrypted export file",
                _cmd_export)
    p.add_argument("path", metavar="PATH")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--backup-passphrase-file", metavar="FILE", help=backup_help)
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")

    p = command("import", [common, passphrase, kdf],
                "restore an export file into a new vault (new store id, new keys)", _cmd_import)
    p.add_argument("input", metavar="IN")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--backup-passphrase-file", metavar="FILE", help=backup_help)
    p.add_argument("--force", action="store_true",
                   help="replace an existing vault (only once the new one is complete)")

    p = command("demo", [], "run the MLS end-to-end demo in DIR", _cmd_demo)
    p.add_argument("demo_args", nargs=argparse.REMAINDER, metavar="DIR ...")
    return parser


_EXIT_CODES: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (UsageError, ExitCode.USAGE),
    (FileExistsError, ExitCode.USAGE),
    (ValueError, ExitCode.USAGE),
    (WrongPassphrase, ExitCode.WRONG_PASSPHRASE),
    (VaultBusy, ExitCode.BUSY),
    (SchemaTooNew, ExitCode.SCHEMA_TOO_NEW),
    (NotAVault, ExitCode.NOT_A_VAULT),
    (MigrationRequired, ExitCode.MIGRATION_REQUIRED),
    (VaultIOError, ExitCode.IO_ERROR),
    (KeystoreError, ExitCode.FAILURE),
    (OSError, ExitCode.IO_ERROR),
)


def _fail(args: argparse.Namespace | None, exc: BaseException, code: ExitCode) -> int:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, FileExistsError) and exc.strerror:
        message = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    message = " ".join(message.split())  # exactly one line
    if args is not None and getattr(args, "json", False):
        print(ErrorReport(error=type(exc).__name__, exit_code=int(code),
                          message=message).model_dump_json())
    print(f"{_PROG}: error: {message}", file=sys.stderr)
    return int(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args = _parser().parse_args(argv)
    if not hasattr(args, "json"):
        args.json = False
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return _fail(args, KeyboardInterrupt("interrupted"), ExitCode.INTERRUPTED)
    except (KeystoreError, UsageError, ValueError, OSError) as exc:
        for kind, code in _EXIT_CODES:
            if isinstance(exc, kind):
                return _fail(args, exc, code)
        raise  # unreachable: every caught type is in the table
