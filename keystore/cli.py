"""The ``mls-keystore`` command (also ``python -m keystore``).

Subcommands: ``init``, ``status``, ``migrate``, ``passwd``, ``rekey``, ``verify``,
``stats``, ``export``, ``import``, ``convert``, ``compact``, ``demo``, ``mls`` (MLS
inspection, in :mod:`mls.cli`).  See
``docs/cli.md``.  Secrets are handled in :mod:`keystore.passphrase`, progress in
:mod:`keystore.cli_progress`, new-vault building in :mod:`keystore.cli_convert`.

Passphrases come from ``--passphrase-file``, the ``MLS_KEYSTORE_PASSPHRASE``
environment variable, or a terminal prompt, never from the command line (argv is
visible to every user through ``ps``).  With none of these and no terminal, the
command fails at once instead of waiting for input that cannot come.

Expected failures print one line on stderr (and, with ``--json``, an error object
on stdout) and exit with a code from :class:`ExitCode`; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import sqlite3
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, cast

from pydantic import BaseModel, ConfigDict

from keystore import __version__, migrations, profiles
from keystore.cipher import (
    StoreCipher,
    derive_wrapping_key,
    normalize_passphrase,
    unwrap_secrets,
)
from keystore.cli_common import ExitCode, MissingExtra, UsageError
from keystore.cli_convert import build_vault, vault_rows
from keystore.cli_hardening import refuse_core_dumps
from keystore.cli_progress import Phases, human_bytes, plural
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
from keystore.export import (
    ExportStream,
    check_replaceable_export,
    export_vault,
    generation_floor,
    import_vault,
    read_export,
    read_header,
)
from keystore.header import HEADER_FORMAT, KDF_RAW_KEY, Header
from keystore.lockfile import WriterLock, lock_path_for
from keystore.passphrase import (
    PASSPHRASE_ENV,
    new_secret,
    read_raw_key_file,
    take_from_environment,
    use_secret,
)
from keystore.profiles import KdfParameters
from keystore.reports import KdfInfo, StatsReport, VerifyReport
from keystore.vault import Vault, _on_read_only_media, backup_vault_file, probe

__all__ = ["PASSPHRASE_ENV", "ExitCode", "main"]

_PROG = "mls-keystore"
_SOURCE_HINT = f"use --passphrase-file FILE or set {PASSPHRASE_ENV}"
_SQLITE_MAGIC = b"SQLite format 3\x00"


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
    rekeyed: bool = False  # --rekey: a new data key too, so old header copies open nothing
    key_generation: int | None = None


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
    #: export: the vault generation the file carries; import: the new vault's
    #: (at least the carried one).  None: an export from before generations.
    generation: int | None = None


class ConvertReport(_Report):
    """The outcome of ``convert``: a new vault of the other kind beside the source."""

    source: str
    destination: str
    sqlcipher: bool
    rows: int
    categories: int
    store_id: str


class CompactReport(_Report):
    """The outcome of ``compact``: file size (with its WAL) before and after."""

    path: str
    bytes_before: int
    bytes_after: int


class ErrorReport(_Report):
    """Printed on stdout with ``--json`` when a command fails."""

    ok: bool = False
    error: str
    exit_code: int
    message: str


# ---------------------------------------------------------------------- output


def _emit(args: argparse.Namespace, report: BaseModel, lines: Sequence[str]) -> None:
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        for line in lines:
            print(line)


def _warn(message: str) -> None:
    print(f"{_PROG}: warning: {message}", file=sys.stderr)


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


def _weaker_than_default(kdf: KdfParameters | None) -> bool:
    """Whether a rehash should be recommended: only ever toward a STRONGER profile.

    Argon2id's cost grows with time x memory; parameters costing less than the
    default profile are worth raising, a deliberately stronger choice (such as
    RFC_9106_HIGH_MEMORY) never is.
    """
    if kdf is None:
        return False
    default = profiles.RFC_9106_LOW_MEMORY
    return kdf.time_cost * kdf.memory_cost < default.time_cost * default.memory_cost


# ---------------------------------------------------------------------- secrets


def _raw_key(path: str) -> bytes:
    return read_raw_key_file(path, warn=_warn)


def _new_passphrase(args: argparse.Namespace, label: str = "New vault passphrase") -> str:
    """A new vault passphrase: --passphrase-file, the variable, or a prompt (twice)."""
    return new_secret(
        getattr(args, "passphrase_file", None), args.env_passphrase, label=label,
        hint=_SOURCE_HINT, what="passphrase", warn=_warn,
    )


def _new_secondary(path: str | None, label: str, what: str, option: str) -> str:
    """A second NEW secret (new or backup passphrase): a file or a prompt, never the env."""
    return new_secret(path, None, label=label, hint=f"use {option} FILE", what=what, warn=_warn)


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


def _check_key_options(path: Path, raw_key_vault: bool, args: argparse.Namespace) -> None:
    """Refuse a key option that does not fit the vault instead of silently ignoring it."""
    if raw_key_vault:
        if getattr(args, "passphrase_file", None):
            raise UsageError(
                f"{path} is keyed by a raw key, not a passphrase: use --raw-key-file FILE "
                "instead of --passphrase-file"
            )
    elif getattr(args, "raw_key_file", None):
        raise UsageError(
            f"{path} is protected by a passphrase, not a raw key: drop --raw-key-file "
            f"({_SOURCE_HINT})"
        )


def _unlock(vault: Vault, args: argparse.Namespace, phases: Phases) -> str | bytes:
    """Unlock with the raw key file or the passphrase, whichever the vault needs.

    Returns the secret that worked (the caller may need it again, e.g. ``convert``).
    At a terminal prompt a wrong passphrase is asked again (three tries in all).
    """
    _check_key_options(vault.path, vault.kdf is None, args)
    if vault.kdf is None:
        if not getattr(args, "raw_key_file", None):
            raise UsageError(f"{vault.path} is keyed by a raw key: pass --raw-key-file FILE")
        key = _raw_key(args.raw_key_file)
        with phases.step("deriving the key"):
            vault.unlock_with_key(key)
        return key

    def attempt(passphrase: str) -> str:
        with phases.step("deriving the key"):
            vault.unlock(passphrase)
        return passphrase

    return use_secret(
        getattr(args, "passphrase_file", None), args.env_passphrase, attempt,
        label="Vault passphrase", hint=_SOURCE_HINT, what="passphrase", warn=_warn,
    )


def _cipher_for(header: Header, args: argparse.Namespace) -> StoreCipher:
    """The unlocked cipher of a plain vault's header, for data migration steps."""
    _check_key_options(Path(args.path), header.kdf_id == KDF_RAW_KEY, args)

    def attempt(secret: bytes) -> StoreCipher:
        with Phases() as phases, phases.step("deriving the key"):
            kek = derive_wrapping_key(header, secret)
        try:
            secrets = unwrap_secrets(kek, header)
        finally:
            kek[:] = bytes(len(kek))
        try:
            return StoreCipher(secrets, header.store_id)
        finally:
            secrets[:] = bytes(len(secrets))

    if header.kdf_id == KDF_RAW_KEY:
        if not getattr(args, "raw_key_file", None):
            raise UsageError("this vault is keyed by a raw key: pass --raw-key-file FILE")
        return attempt(_raw_key(args.raw_key_file))
    return use_secret(
        getattr(args, "passphrase_file", None), args.env_passphrase,
        lambda p: attempt(normalize_passphrase(p)),
        label="Vault passphrase", hint=_SOURCE_HINT, what="passphrase", warn=_warn,
    )


# ---------------------------------------------------------------------- plain-file access


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    uri = f"file:{urllib.parse.quote(str(path))}?mode={'ro' if readonly else 'rw'}"
    if readonly and _on_read_only_media(path):
        uri += "&immutable=1"  # see keystore.vault._on_read_only_media
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
    # The vault's typed read: a header stored as TEXT, REAL or a huge INTEGER is damage.
    from keystore.vault import read_header_row

    try:
        return read_header_row(conn, path)
    except sqlite3.DatabaseError as exc:
        raise IntegrityError(f"vault {path} is corrupt: {exc}") from None


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


def _on_postgres(args: argparse.Namespace) -> bool:
    """``--dsn`` given, or PATH is a ``postgresql://`` URL: see keystore.cli_postgres."""
    from keystore.cli_postgres import on_postgres

    return on_postgres(args)


def _step_info(m: migrations.Migration) -> StepInfo:
    return StepInfo(version=m.version, name=m.name, checksum=m.checksum,
                    needs_unlock=m.needs_keys)


# ---------------------------------------------------------------------- commands


def _cmd_init(args: argparse.Namespace) -> int:
    if _on_postgres(args):
        from keystore import cli_postgres

        return cli_postgres.cmd_init(args)
    path = Path(args.path)
    if args.raw_key_file and args.kdf_profile:
        raise UsageError("--kdf-profile does not apply to a raw-key vault")
    kdf = _kdf_choice(args) or profiles.RFC_9106_LOW_MEMORY
    if path.exists() or path.is_symlink():
        raise UsageError(f"{path} already exists; refusing to overwrite it")
    _check_writable_folder(path)
    if args.sqlcipher:
        _require_sqlcipher()
    if args.raw_key_file:
        if args.passphrase_file:
            raise UsageError("give --raw-key-file or --passphrase-file, not both")
        vault = Vault.create_with_key(path, _raw_key(args.raw_key_file), sqlcipher=args.sqlcipher)
    else:
        passphrase = _new_passphrase(args)
        with Phases() as phases, phases.step("deriving the key and creating the vault"):
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


def _check_writable_folder(path: Path) -> None:
    """Fail before any prompt when the vault's folder cannot be written."""
    folder = path.parent
    if not folder.is_dir():
        raise VaultIOError(f"cannot create {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise VaultIOError(f"cannot create {path}: the folder {folder} is read-only or not "
                           "writable")


def _require_sqlcipher() -> None:
    from keystore import sqlcipher

    if not sqlcipher.available():
        raise MissingExtra(
            "SQLCipher is not installed: from a checkout, pip install -e '.[sqlcipher]'"
        )


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
        needs_rehash=_weaker_than_default(header.kdf),
        store_id=header.store_id.hex(), key_generation=header.key_generation, rows=rows,
        writer_pid=writer,
    )


def _cmd_status(args: argparse.Namespace) -> int:
    if _on_postgres(args):
        from keystore import cli_postgres

        return cli_postgres.cmd_status(args)
    if args.path is None:
        raise UsageError("the following arguments are required: PATH")
    r = _status(Path(args.path))
    lines = [
        f"vault        {r.path} ({human_bytes(r.file_bytes)}"
        f"{', SQLCipher' if r.sqlcipher else ''})",
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
    if _on_postgres(args):
        from keystore import cli_postgres

        return cli_postgres.cmd_migrate(args)
    if args.path is None:
        raise UsageError("the following arguments are required: PATH")
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
            _check_key_options(path, _read_header(conn, path).kdf_id == KDF_RAW_KEY, args)
            migrations.check_recorded(conn)
            target = _target(args, version)
            steps = migrations.pending(conn, target)
            backup = None
            if steps and not args.dry_run:
                if any(m.needs_keys for m in steps):
                    cipher = _cipher_for(_read_header(conn, path), args)
                conn.execute("PRAGMA synchronous=FULL")
                if not args.no_backup:
                    with Phases() as phases, phases.step("backing up the vault"):
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
    with Phases() as phases, phases.count("migrating", "steps") as update:
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
        with Vault.open(path, auto_migrate=True) as vault, Phases() as phases:
            _unlock(vault, args, phases)
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


def _change_passphrase(
    vault: Vault, old: str, new: str, kdf: KdfParameters | None, *, rekey: bool,
    phases: Phases,
) -> None:
    """Rewrap under ``new``; with ``rekey``, also replace the data key.

    Uses the library's ``change_passphrase(..., rekey=True)`` where this version
    has it (one step), else the two calls in a row: the passphrase change is O(1)
    and atomic, the rekey is one transaction after it.
    """
    one_step = "rekey" in inspect.signature(vault.change_passphrase).parameters
    if rekey and one_step:
        with phases.step("re-wrapping the vault key and re-encrypting every row"):
            cast(Callable[..., None], vault.change_passphrase)(old, new, kdf=kdf, rekey=True)
        return
    with phases.step("re-wrapping the vault key"):
        vault.change_passphrase(old, new, kdf=kdf)
    if rekey:
        with phases.count("re-encrypting rows", "rows", then="committing") as update:
            vault.rekey(progress=update)


def _cmd_passwd(args: argparse.Namespace) -> int:
    if _on_postgres(args):
        from keystore import cli_postgres

        return cli_postgres.cmd_passwd(args)
    path = Path(args.path)
    kdf = _kdf_choice(args)
    with Vault.open(path) as vault, Phases() as phases:
        if vault.kdf is None:
            _check_key_options(path, True, args)
            if not args.raw_key_file or not args.new_raw_key_file:
                raise UsageError(
                    f"{path} is keyed by a raw key: rotate it with --raw-key-file OLD "
                    "--new-raw-key-file NEW"
                )
            if kdf is not None:
                raise UsageError("--kdf-profile does not apply to a raw-key vault")
            old_key, new_key = _raw_key(args.raw_key_file), _raw_key(args.new_raw_key_file)
            with phases.step("checking the key"):
                vault.unlock_with_key(old_key)
            # One atomic step with --rekey: were the key changed first and the rows
            # re-encrypted after, a failed re-encryption would leave the vault opened
            # by the new key only, while the command reports a failure.
            step = ("re-wrapping the vault key and re-encrypting every row" if args.rekey
                    else "re-wrapping the vault key")
            with phases.step(step):
                vault.change_key(old_key, new_key, rekey=args.rekey)
        else:
            if args.new_raw_key_file:
                raise UsageError(
                    f"{path} is protected by a passphrase; --new-raw-key-file applies to "
                    "raw-key vaults only"
                )
            # Check the current passphrase before asking for the new one twice.
            old = cast(str, _unlock(vault, args, phases))
            new = _new_secondary(args.new_passphrase_file, "New passphrase", "new passphrase",
                                 "--new-passphrase-file")
            _change_passphrase(vault, old, new, kdf, rekey=args.rekey, phases=phases)
        report = PasswdReport(
            path=str(path), kdf=_kdf_info(vault.kdf), needs_rehash=_weaker_than_default(vault.kdf),
            rekeyed=args.rekey, key_generation=vault.stats().key_generation,
        )
    _emit(args, report, passwd_lines(str(path), report))
    return ExitCode.OK


def passwd_lines(target: str, report: PasswdReport) -> list[str]:
    """What ``passwd`` says it did, for a vault file or a vault in PostgreSQL."""
    what = "key" if report.kdf.kind != "argon2id" else "passphrase"
    lines = [f"{what} of {target} changed ({_kdf_text(report.kdf)})"]
    if report.rekeyed:
        lines.append(f"new data key (generation {report.key_generation}): copies of the vault "
                     f"taken before can no longer be read with the old {what}'s header")
    else:
        lines.append(f"an old copy of the vault still opens with the old {what}; "
                     f"`{_PROG} passwd --rekey` also revokes that")
    return lines


def _cmd_rekey(args: argparse.Namespace) -> int:
    if _on_postgres(args):
        from keystore import cli_postgres

        return cli_postgres.cmd_rekey(args)
    path = Path(args.path)
    with Vault.open(path) as vault, Phases() as phases:
        _unlock(vault, args, phases)
        with phases.count("re-encrypting rows", "rows", then="committing") as update:
            vault.rekey(progress=update)
        stats = vault.stats()
    report = RekeyReport(path=str(path), key_generation=stats.key_generation,
                         rows_reencrypted=stats.total_rows)
    _emit(args, report, [
        f"new data key for {path} (generation {report.key_generation}); "
        f"{plural(report.rows_reencrypted, 'row')} re-encrypted",
    ])
    return ExitCode.OK


def _emit_verify(args: argparse.Namespace, report: VerifyReport) -> int:
    """Print a verify report (one line per failed row, then the count); its exit code."""
    lines = [
        f"FAILED  category={f.category} key_hash={f.key_hash}: {f.reason}"
        for f in report.failures
    ]
    lines.append(
        f"{plural(report.rows_checked, 'row')} checked, "
        + ("all authentic" if report.ok else f"{len(report.failures)} failed authentication")
    )
    _emit(args, report, lines)
    return ExitCode.OK if report.ok else ExitCode.FAILURE


def _cmd_verify(args: argparse.Namespace) -> int:
    if _on_postgres(args):
        from keystore import cli_postgres

        return cli_postgres.cmd_verify(args)
    path = Path(args.path)
    with Vault.open(path, readonly=True) as vault, Phases() as phases:
        _unlock(vault, args, phases)
        with phases.step("decrypting and checking every row"):
            report: VerifyReport = vault.verify()
    return _emit_verify(args, report)


def _cmd_stats(args: argparse.Namespace) -> int:
    if _on_postgres(args):
        from keystore import cli_postgres

        return cli_postgres.cmd_stats(args)
    path = Path(args.path)
    with Vault.open(path, readonly=True) as vault, Phases() as phases:
        _check_key_options(path, vault.kdf is None, args)
        if vault.sqlcipher:
            _unlock(vault, args, phases)  # SQLCipher hides even the row counts until unlocked
        r: StatsReport = vault.stats()
    _emit(args, r, stats_lines(r, f", {human_bytes(r.file_bytes)} on disk"))
    return ExitCode.OK


def stats_lines(r: StatsReport, where: str = "") -> list[str]:
    """What ``stats`` prints, for a vault file or a vault in PostgreSQL (``where``: what
    the storage itself adds, e.g. the file's size on disk)."""
    width = max([len(c) for c in r.categories] + [8])
    lines = [
        f"vault {r.path}: {plural(r.total_rows, 'row')}, {human_bytes(r.total_bytes)} stored"
        + where,
        f"nonce budget: {r.encryptions} of {r.nonce_budget} encryptions under key generation "
        f"{r.key_generation} ({r.budget_used:.6%})"
        + ("; rekey recommended" if r.rekey_recommended else ""),
        f"{'category':<{width}}  {'rows':>10}  {'bytes':>14}",
    ]
    lines += [f"{c:<{width}}  {s.rows:>10}  {s.bytes:>14}" for c, s in r.categories.items()]
    return lines


def _export_target(out: Path, vault_path: Path) -> Path:
    """OUT itself, or ``OUT/<vault name>.export`` when OUT is a directory (as ``cp`` does)."""
    if out.is_dir():
        return out / f"{vault_path.name}.export"
    return out


def _cmd_export(args: argparse.Namespace) -> int:
    if _on_postgres(args):
        from keystore import cli_postgres

        return cli_postgres.cmd_export(args)
    path = Path(args.path)
    out = _export_target(Path(args.out), path)
    kdf = _kdf_choice(args) or profiles.RFC_9106_LOW_MEMORY
    if not args.force and (out.exists() or out.is_symlink()):
        raise UsageError(f"{out} already exists; refusing to overwrite it (use --force)")
    if out.is_dir():
        raise UsageError(f"{out} is a directory; not replacing it")
    if args.force:
        check_replaceable_export(out)  # before any passphrase is asked for
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise VaultIOError(f"cannot write {out}: the folder {out.parent} does not exist or "
                           "is not writable")
    with Vault.open(path, readonly=True) as vault, Phases() as phases:
        _unlock(vault, args, phases)
        backup_pw = _new_secondary(args.backup_passphrase_file, "Backup passphrase",
                                   "backup passphrase", "--backup-passphrase-file")
        with phases.count("deriving the backup key and exporting", "rows",
                          then="writing the file to disk") as update:
            summary = export_vault(vault, out, backup_pw, kdf, overwrite=args.force,
                                   progress=update)
    report = TransferReport(source=str(path), destination=str(out), rows=summary.rows,
                            categories=summary.categories,
                            plaintext_bytes=summary.plaintext_bytes, store_id=None,
                            generation=summary.generation)
    _emit(args, report, [
        f"exported {plural(report.rows, 'row')} in "
        f"{plural(report.categories, 'category', 'categories')} "
        f"({human_bytes(report.plaintext_bytes)}) from {path} to {out}"
    ])
    return ExitCode.OK


def _check_export_file(src: Path) -> None:
    """Refuse, before any prompt, what is not an export file -- saying what it is instead."""
    if not src.exists():
        raise NotAVault(f"no export file at {src}: the file does not exist")
    if not src.is_file():
        raise NotAVault(f"{src} is not a regular file, so not an export file")
    with src.open("rb") as fh:
        start = fh.read(len(_SQLITE_MAGIC))
        fh.seek(0)
        if start == _SQLITE_MAGIC or Path(f"{src}.header").exists():
            raise NotAVault(
                f"{src} is a vault (or another SQLite database), not an export file; "
                f"to copy a vault, `{_PROG} export` it first, or use `{_PROG} convert`"
            )
        try:
            read_header(fh)
        except IntegrityError as exc:
            raise NotAVault(f"{src} is not an mls-keystore export file ({exc})") from None


def _check_backup_passphrase(src: Path, passphrase: str, phases: Phases) -> str:
    """Authenticate the export's header (and first chunk) with ``passphrase``.

    Costs one key derivation, paid so that a wrong backup passphrase is known before
    the user is asked to invent and repeat a new vault passphrase.
    """
    with phases.step("checking the backup passphrase"), src.open("rb") as fh:
        records = read_export(fh, passphrase)
        next(records, None)  # the header tag and the first chunk authenticate, or raise
    return passphrase


def _backup_passphrase(args: argparse.Namespace, src: Path, phases: Phases) -> str:
    """The export file's passphrase (from its file or a prompt), checked against ``src``
    before the import asks for anything else (both backends)."""
    return use_secret(
        args.backup_passphrase_file, None,
        lambda p: _check_backup_passphrase(src, p, phases),
        label="Backup passphrase", hint="use --backup-passphrase-file FILE",
        what="backup passphrase", warn=_warn,
    )


def _cmd_import(args: argparse.Namespace) -> int:
    if _on_postgres(args):
        from keystore import cli_postgres

        return cli_postgres.cmd_import(args)
    src, dest = Path(args.input), Path(args.path)
    kdf = _kdf_choice(args) or profiles.RFC_9106_LOW_MEMORY
    if args.sqlcipher:
        if args.force:
            raise UsageError("--force cannot replace a vault with a SQLCipher one; import to a "
                             "new path")
        _require_sqlcipher()
    _check_export_file(src)
    if not args.force and (dest.exists() or dest.is_symlink()):
        raise UsageError(f"{dest} already exists; refusing to overwrite it (use --force)")
    _check_writable_folder(dest)
    with Phases() as phases:
        backup_pw = _backup_passphrase(args, src, phases)
        vault_pw = _new_passphrase(args)
        if args.sqlcipher:
            with phases.step("importing into a new SQLCipher vault"), src.open("rb") as fh:
                stream = ExportStream(fh, backup_pw)
                copy = build_vault(
                    dest, stream,
                    lambda tmp: Vault.create(tmp, vault_pw, kdf=kdf, sqlcipher=True),
                    lambda: generation_floor(stream.generation),
                )
            rows, categories, plain, store = (copy.rows, copy.categories,
                                              copy.plaintext_bytes, copy.store_id)
            generation = copy.generation
        else:
            with phases.count("deriving keys and importing", "bytes",
                              then="writing the vault to disk") as update:
                summary = import_vault(src, dest, backup_pw, vault_pw, kdf,
                                       overwrite=args.force, progress=update)
            assert summary.store_id is not None  # import_vault reports the new vault's id
            rows, categories, plain, store = (summary.rows, summary.categories,
                                              summary.plaintext_bytes, summary.store_id)
            generation = summary.generation
    report = TransferReport(source=str(src), destination=str(dest), rows=rows,
                            categories=categories, plaintext_bytes=plain, store_id=store.hex(),
                            generation=generation)
    _emit(args, report, [
        f"imported {plural(rows, 'row')} in {plural(categories, 'category', 'categories')} "
        f"({human_bytes(plain)}) into a new "
        f"{'SQLCipher ' if args.sqlcipher else ''}vault {dest} (store id {store.hex()}"
        + (f", generation {generation}" if generation is not None else "") + ")"
    ])
    return ExitCode.OK


def _cmd_convert(args: argparse.Namespace) -> int:
    if _on_postgres(args) or str(args.dest).startswith(("postgresql://", "postgres://")):
        from keystore import cli_postgres

        return cli_postgres.file_only(args)
    src, dest = Path(args.path), Path(args.dest)
    if dest.exists() or dest.is_symlink():
        raise UsageError(f"{dest} already exists; refusing to overwrite it")
    _check_writable_folder(dest)
    kdf_choice = _kdf_choice(args)
    with Vault.open(src, readonly=True) as vault, Phases() as phases:
        to_sqlcipher = not vault.sqlcipher if args.to is None else args.to == "sqlcipher"
        if to_sqlcipher == vault.sqlcipher:
            kind = "SQLCipher" if vault.sqlcipher else "plain"
            raise UsageError(f"{src} is already a {kind} vault")
        if to_sqlcipher:
            _require_sqlcipher()
        if vault.kdf is None and kdf_choice is not None:
            raise UsageError("--kdf-profile does not apply to a raw-key vault")
        secret = _unlock(vault, args, phases)
        kdf = kdf_choice or vault.kdf

        def create(tmp: Path) -> Vault:
            if isinstance(secret, bytes):
                return Vault.create_with_key(tmp, secret, sqlcipher=to_sqlcipher)
            assert kdf is not None
            return Vault.create(tmp, secret, kdf=kdf, sqlcipher=to_sqlcipher)

        # The copy gets at least the generation of the rows it copies, as an import
        # does, so an anchor that follows the account (not the store id) accepts it.
        seen: list[int | None] = []
        with phases.count("copying rows into the new vault", "rows",
                          then="writing the new vault to disk") as update:
            copy = build_vault(
                dest, vault_rows(vault, update, on_generation=seen.append), create,
                lambda: generation_floor(seen[0] if seen else None),
            )
    report = ConvertReport(source=str(src), destination=str(dest), sqlcipher=to_sqlcipher,
                           rows=copy.rows, categories=copy.categories,
                           store_id=copy.store_id.hex())
    _emit(args, report, [
        f"copied {plural(copy.rows, 'row')} in "
        f"{plural(copy.categories, 'category', 'categories')} from {src} into a new "
        f"{'SQLCipher' if to_sqlcipher else 'plain'} vault {dest} "
        f"(store id {report.store_id}); {src} is unchanged",
    ])
    return ExitCode.OK


def _cmd_compact(args: argparse.Namespace) -> int:
    if _on_postgres(args):
        from keystore import cli_postgres

        return cli_postgres.file_only(args)
    path = Path(args.path)
    with Vault.open(path) as vault, Phases() as phases:
        _check_key_options(path, vault.kdf is None, args)
        if vault.sqlcipher:
            _unlock(vault, args, phases)  # its pages can only be rewritten with the page key
        with phases.step("rewriting the file without its free pages"):
            before, after = vault.compact()
    report = CompactReport(path=str(path), bytes_before=before, bytes_after=after)
    _emit(args, report, [
        f"{path}: {human_bytes(before)} -> {human_bytes(after)} "
        f"({human_bytes(max(before - after, 0))} given back)"
    ])
    return ExitCode.OK


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        module = importlib.import_module("mls.demo")
    except ModuleNotFoundError as exc:
        if exc.name not in ("mls", "mls.demo"):
            raise
        raise MissingExtra(
            "the MLS demo is not available in this installation (no mls.demo)"
        ) from None
    demo_main = cast(Callable[..., int | None], module.main)
    demo_args = list(args.demo_args)
    if args.json and "--json" not in demo_args:
        demo_args.append("--json")
    if args.env_passphrase is not None:
        # main() read the variable and removed it from the environment: hand it over.
        result = demo_main(demo_args, env_passphrase=args.env_passphrase)
    else:
        result = demo_main(demo_args)
    return int(result or 0)


def _cmd_mls(args: argparse.Namespace) -> int:
    """``mls-keystore mls ...``: handed to :mod:`mls.cli`, imported only now (the vault
    layer knows no MLS; the command lives one layer up, as the demo does)."""
    try:
        module = importlib.import_module("mls.cli")
    except ModuleNotFoundError as exc:
        if exc.name not in ("mls", "mls.cli"):
            raise
        raise MissingExtra(
            "MLS inspection is not available in this installation (no mls.cli)"
        ) from None
    mls_main = cast(Callable[..., int], module.main)
    mls_args = list(args.mls_args)
    if args.json and "--json" not in mls_args:
        mls_args.append("--json")
    return int(mls_main(mls_args, env_passphrase=args.env_passphrase))


# ---------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr with our exit code, and
    never repeats a value from the command line: a passphrase typed there by mistake
    (``--passphrase hunter2``) must not be echoed to the terminal, a log or a CI page.
    """

    #: Option strings and command names: the only words an error may repeat.
    known_words: frozenset[str] = frozenset()
    #: The command line being parsed; every other word of it is hidden in errors.
    argv: tuple[str, ...] = ()

    def __init__(self, *args: object, **kwargs: object) -> None:
        # No abbreviations: `--passphrase SECRET` would otherwise be taken as
        # `--passphrase-file SECRET` and the secret printed as a missing file name.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        hint = ""
        if "unrecognized arguments" in message or "invalid choice" in message:
            hint = (" (values are not repeated here; a passphrase is never read from the "
                    f"command line: {_SOURCE_HINT})")
        message = _redact(message)
        if "--json" in _Parser.argv:
            print(ErrorReport(error="UsageError", exit_code=int(ExitCode.USAGE),
                              message=message).model_dump_json())
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}{hint}\n")


def _redact(message: str) -> str:
    """``message`` with every command-line word that is not an option or a command hidden."""
    for word in sorted(set(_Parser.argv) - _Parser.known_words, key=len, reverse=True):
        if word:
            pattern = r"(?<![^\s'\"(\[,=])" + re.escape(word) + r"(?![^\s'\",)\]])"
            message = re.sub(pattern, "…", message)
    return message


_PASSWD_HELP = ("change the passphrase (O(1): no row is touched); --rekey also replaces the "
                "data key, so old copies of the vault no longer open with the old passphrase")


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
    pg = _Parser(add_help=False)
    pg.add_argument("--dsn", metavar="DSN",
                    help="the vault is in this PostgreSQL database; PATH is its name "
                         "(or give PATH as postgresql://.../DB#NAME); see docs/postgres.md")
    pg.add_argument("--schema", metavar="NAME", default="mls_keystore",
                    help="PostgreSQL schema holding the vaults (default mls_keystore)")

    parser = _Parser(prog=_PROG, description="Manage an mls-keystore vault.",
                     epilog="Exit codes: 0 ok, 1 failure found, 2 usage, 3 wrong passphrase, "
                            "4 busy, 5 schema too new, 6 not a vault (or not an export), "
                            "7 migration required, 8 I/O error, 9 optional extra missing, "
                            "130 interrupted.  See docs/cli.md.")
    parser.add_argument("--version", action="version", version=f"{_PROG} {__version__}")
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    def command(name: str, parents: list[_Parser], help_text: str,
                func: Callable[[argparse.Namespace], int]) -> _Parser:
        p = sub.add_parser(name, parents=parents, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = command("init", [common, passphrase, kdf, pg], "create a new vault", _cmd_init)
    p.add_argument("path", metavar="PATH", help="where to create it (must not exist; with "
                   "--dsn: the new vault's name)")
    p.add_argument("--raw-key-file", metavar="FILE",
                   help="key the vault by FILE (32 bytes or 64 hex digits) instead of a "
                        "passphrase")
    p.add_argument("--sqlcipher", action="store_true",
                   help="also encrypt the whole file with SQLCipher")

    p = command("status", [common, pg], "versions, pending migrations, KDF, store id "
                "(no passphrase needed)", _cmd_status)
    p.add_argument("path", metavar="PATH", nargs="?",
                   help="the vault file (with --dsn: a vault's name, or none to list them)")

    p = command("migrate", [*unlock, pg], "upgrade the schema (after a backup beside the "
                "vault; PostgreSQL: of the whole database, each step in one transaction)",
                _cmd_migrate)
    p.add_argument("path", metavar="PATH", nargs="?",
                   help="the vault file (with --dsn: not needed)")
    p.add_argument("--dry-run", action="store_true", help="list the steps, write nothing")
    p.add_argument("--to", type=int, metavar="N", help="stop at schema version N")
    p.add_argument("--no-backup", action="store_true", help="do not copy the vault first")

    p = command("passwd", [*unlock, kdf, pg], _PASSWD_HELP, _cmd_passwd)
    p.add_argument("path", metavar="PATH")
    p.add_argument("--new-passphrase-file", metavar="FILE",
                   help="read the new passphrase from FILE (else prompt twice)")
    p.add_argument("--new-raw-key-file", metavar="FILE",
                   help="raw-key vault: the new key (with --raw-key-file for the current one)")
    p.add_argument("--rekey", action="store_true",
                   help="also replace the data key and re-encrypt every row")

    p = command("rekey", [*unlock, pg], "new data key, every row re-encrypted", _cmd_rekey)
    p.add_argument("path", metavar="PATH")

    p = command("verify", [*unlock, pg], "decrypt and check every row", _cmd_verify)
    p.add_argument("path", metavar="PATH")

    p = command("stats", [*unlock, pg], "rows and bytes per category, nonce budget "
                "(passphrase only for SQLCipher)", _cmd_stats)
    p.add_argument("path", metavar="PATH")

    backup_help = "read the backup passphrase from FILE (else a prompt)"
    p = command("export", [*unlock, kdf, pg], "write every row to an encrypted export file",
                _cmd_export)
    p.add_argument("path", metavar="PATH")
    p.add_argument("out", metavar="OUT", help="the export file, or a folder to put "
                   "PATH's name + .export in")
    p.add_argument("--backup-passphrase-file", metavar="FILE", help=backup_help)
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")

    p = command("import", [common, passphrase, kdf, pg],
                "restore an export file into a new vault (new store id, new keys)", _cmd_import)
    p.add_argument("input", metavar="IN")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--backup-passphrase-file", metavar="FILE", help=backup_help)
    p.add_argument("--sqlcipher", action="store_true",
                   help="make the new vault a SQLCipher one")
    p.add_argument("--force", action="store_true",
                   help="replace an existing vault (only once the new one is complete)")

    p = command("convert", [*unlock, kdf, pg], "copy a vault into a NEW vault of the other kind "
                "(plain <-> SQLCipher); the source is not changed", _cmd_convert)
    p.add_argument("path", metavar="PATH")
    p.add_argument("dest", metavar="DEST", help="where to create the new vault (must not exist)")
    p.add_argument("--to", choices=("sqlcipher", "plain"),
                   help="the kind of the new vault (default: the other kind)")

    p = command("compact", [*unlock, pg], "give the space of deleted rows back to the file system",
                _cmd_compact)
    p.add_argument("path", metavar="PATH")

    p = command("demo", [common], "run the MLS end-to-end demo in DIR (options after DIR; "
                "`demo DIR --help` lists them)",
                _cmd_demo)
    p.add_argument("demo_args", nargs=argparse.REMAINDER, metavar="DIR ...")

    p = command("mls", [common], "inspect an MLS client vault, read-only: groups, members, "
                "key-packages, pending (`mls COMMAND --help` for each)", _cmd_mls)
    p.add_argument("mls_args", nargs=argparse.REMAINDER, metavar="COMMAND ...")

    words = {"mls-keystore", *sub.choices}
    for each in (parser, *sub.choices.values()):
        for action in each._actions:
            words.update(action.option_strings)
            if action.metavar and isinstance(action.metavar, str):
                words.add(action.metavar)
            if action.dest:
                words.add(action.dest)
    _Parser.known_words = frozenset(words)
    return parser


_EXIT_CODES: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (UsageError, ExitCode.USAGE),
    (MissingExtra, ExitCode.MISSING_EXTRA),
    (ImportError, ExitCode.MISSING_EXTRA),  # SQLCipherUnavailable, MlsRsUnavailable
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
    if isinstance(exc, ImportError) and not isinstance(exc, MissingExtra) and "pip install" \
            in message and "from a checkout" not in message:
        message += " (from a checkout: pip install -e '.[EXTRA]', see docs/operations.md)"
    message = " ".join(message.split())  # exactly one line
    if args is not None and getattr(args, "json", False):
        print(ErrorReport(error=type(exc).__name__, exit_code=int(code),
                          message=message).model_dump_json())
    print(f"{_PROG}: error: {message}", file=sys.stderr)
    return int(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Before anything else: no core dumps (the process will hold secrets), and the
    passphrase variable is taken out of the environment so no child inherits it.
    """
    refuse_core_dumps()
    env_passphrase = take_from_environment()
    _Parser.argv = tuple(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except KeyboardInterrupt:  # pragma: no cover - Ctrl-C while argparse runs
        return int(ExitCode.INTERRUPTED)
    if not hasattr(args, "json"):
        args.json = False
    args.env_passphrase = env_passphrase
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return _fail(args, KeyboardInterrupt("interrupted"), ExitCode.INTERRUPTED)
    except (KeystoreError, UsageError, MissingExtra, ImportError, ValueError, OSError) as exc:
        for kind, code in _EXIT_CODES:
            if isinstance(exc, kind):
                return _fail(args, exc, code)
        raise  # unreachable: every caught type is in the table
