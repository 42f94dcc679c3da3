"""The ``mls-keystore`` commands on a vault kept in PostgreSQL (``--dsn``, or a URL).

A vault in PostgreSQL is addressed by its database and its name:
``--dsn DSN NAME`` (``--schema`` when not the default), or one argument
``postgresql://user@host/db#NAME`` (the part after ``#`` is the vault's name and is
never sent to the server).  ``id:HEX`` in place of a name addresses a vault by its
store id.  ``init``, ``status``, ``verify``, ``stats``, ``export``, ``import``,
``migrate``, ``passwd`` (with or without ``--rekey``) and ``rekey`` work on one, and so
does ``mls-keystore mls ...``; ``convert`` and ``compact`` are about files and refuse a
PostgreSQL vault with a usage error saying what to do instead.

Reading commands (``status``, ``verify``, ``stats``, ``export``) open the vault
read-only: they take no writer lease, so they run beside the worker that holds it.
``passwd`` and ``rekey`` write the vault, so they take its writer lease (every write
is fenced by it): while a worker holds the vault they fail at once as busy (exit 4).
``init`` and ``import`` create a new vault (and refuse a name that is taken; nothing
is ever replaced in a database).  ``migrate`` upgrades the database's schema, each
step in one transaction (no backup file: use the server's own backups).

Put the database password in ``PGPASSWORD`` or a ``~/.pgpass`` file rather than in
the DSN: a command line is visible to every user through ``ps``.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from keystore import profiles
from keystore.cli import (
    _SOURCE_HINT,
    AppliedInfo,
    MigrateReport,
    StepInfo,
    TransferReport,
    _backup_passphrase,
    _check_export_file,
    _emit,
    _emit_verify,
    _export_target,
    _kdf_choice,
    _kdf_info,
    _kdf_text,
    _migrate_lines,
    _new_passphrase,
    _new_secondary,
    _raw_key,
    _warn,
    _weaker_than_default,
    passwd_lines,
    stats_lines,
)
from keystore.cli_common import ExitCode, UsageError
from keystore.cli_progress import Phases, human_bytes, plural
from keystore.errors import NotAVault
from keystore.export import check_replaceable_export, export_vault
from keystore.passphrase import use_secret
from keystore.reports import KdfInfo, StatsReport, VerifyReport

if TYPE_CHECKING:
    from keystore.backends.postgres import PostgresDatabase
    from keystore.postgres_vault import PostgresAddress, PostgresVault

__all__ = [
    "cmd_export", "cmd_import", "cmd_init", "cmd_migrate", "cmd_passwd", "cmd_rekey",
    "cmd_stats", "cmd_status", "cmd_verify", "file_only", "on_postgres", "open_vault",
    "postgres_address",
]

_URL_SCHEMES = ("postgresql://", "postgres://")
#: Seconds a command keeps retrying an unreachable server before it fails (exit 8).
_CLI_RETRY_FOR = 3.0


class PostgresStatusReport(BaseModel):
    """What ``status`` reports for a vault in PostgreSQL (no passphrase needed)."""

    location: str
    name: str | None
    store_id: str
    schema_version: int
    latest_schema_version: int
    applied: list[AppliedInfo]
    pending: list[StepInfo]
    problems: list[str]
    kdf: KdfInfo
    needs_rehash: bool
    key_generation: int
    rows: int
    bytes: int
    lease_holder: str | None
    lease_expires: str | None
    lease_epoch: int
    lease_live: bool


def on_postgres(args: argparse.Namespace) -> bool:
    """Whether the arguments name a vault in PostgreSQL: ``--dsn`` given, or PATH a URL."""
    value = getattr(args, "path", None)
    return bool(getattr(args, "dsn", None)) or (
        isinstance(value, str) and value.startswith(_URL_SCHEMES)
    )


def _dsn_and_vault(args: argparse.Namespace, positional: str) -> tuple[str, str | None]:
    value: str | None = getattr(args, positional, None)
    if getattr(args, "dsn", None):
        if value is not None and value.startswith(_URL_SCHEMES):
            raise UsageError("give the database either with --dsn or as a URL, not both")
        return str(args.dsn), value
    assert value is not None
    dsn, _, vault = value.partition("#")
    return dsn, (vault or None)


@contextlib.contextmanager
def _database(args: argparse.Namespace, *, renew: bool = False) -> Iterator[PostgresDatabase]:
    """The database the arguments name, closed afterwards.

    A command gives up on an unreachable server after :data:`_CLI_RETRY_FOR` seconds
    (a worker keeps trying longer: it has state to save, a command only a report).
    """
    from keystore.backends.postgres import PostgresDatabase

    dsn, _ = _dsn_and_vault(args, "path")
    with PostgresDatabase(dsn, schema=args.schema, renew=renew,
                          retry_for=_CLI_RETRY_FOR) as db:
        yield db


def postgres_address(args: argparse.Namespace, db: PostgresDatabase) -> PostgresAddress:
    """The :class:`keystore.PostgresAddress` the arguments name in ``db`` (a vault is
    required)."""
    from keystore.postgres_vault import PostgresAddress

    _, vault = _dsn_and_vault(args, "path")
    if not vault:
        raise UsageError(
            "name the vault: --dsn DSN NAME, or postgresql://.../DB#NAME (id:HEX for a "
            "store id)"
        )
    if vault.startswith("id:"):
        try:
            store_id = bytes.fromhex(vault[3:])
        except ValueError:
            raise UsageError(f"{vault!r} is not id: followed by a hex store id") from None
        return PostgresAddress(db, store_id=store_id)
    return PostgresAddress(db, name=vault)


@contextlib.contextmanager
def open_vault(args: argparse.Namespace, *, readonly: bool) -> Iterator[PostgresVault]:
    """The vault the arguments name, opened (read-only: no lease; else with its lease,
    renewed in the background while the command runs, failing at once if held)."""
    with _database(args, renew=not readonly) as db:
        address = postgres_address(args, db)
        if db.schema_version() == 0:
            # Opening would install the schema: a reading command writes nothing.
            raise NotAVault(f"no vaults in {db.location}: the schema is not installed")
        with address.open_vault(readonly=readonly) as vault:
            yield vault


def _unlock(vault: PostgresVault, args: argparse.Namespace, phases: Phases) -> str | bytes:
    """Unlock with the raw key file or the passphrase, whichever the vault needs.

    Returns the secret that worked (``passwd`` needs the old one again).
    """
    raw_key_file = getattr(args, "raw_key_file", None)
    if vault.kdf is None:
        if not raw_key_file:
            raise UsageError(f"vault {vault.location} is keyed by a raw key: pass "
                             "--raw-key-file FILE")
        key = _raw_key(raw_key_file)
        with phases.step("deriving the key"):
            vault.unlock_with_key(key)
        return key
    if raw_key_file:
        raise UsageError(f"vault {vault.location} is protected by a passphrase, not a raw "
                         f"key: drop --raw-key-file ({_SOURCE_HINT})")

    def attempt(passphrase: str) -> str:
        with phases.step("deriving the key"):
            vault.unlock(passphrase)
        return passphrase

    return use_secret(
        getattr(args, "passphrase_file", None), args.env_passphrase, attempt,
        label="Vault passphrase", hint=_SOURCE_HINT, what="passphrase", warn=_warn,
    )


class VaultEntry(BaseModel):
    """One vault of a database, as ``status --dsn DSN`` lists it."""

    store_id: str
    name: str | None
    lease_holder: str | None
    lease_expires: str | None
    lease_live: bool


class PostgresDatabaseReport(BaseModel):
    """What ``status --dsn DSN`` (no vault named) reports: the schema and every vault."""

    location: str
    schema_version: int
    latest_schema_version: int
    pending: list[StepInfo]
    problems: list[str]
    vaults: list[VaultEntry]


def _database_status(args: argparse.Namespace) -> int:
    from keystore.backends.postgres import PG_LATEST_VERSION, PG_MIGRATIONS

    with _database(args) as db:
        version = db.schema_version()
        r = PostgresDatabaseReport(
            location=db.location, schema_version=version,
            latest_schema_version=PG_LATEST_VERSION,
            pending=[StepInfo(version=m.version, name=m.name, checksum=m.checksum,
                              needs_unlock=m.needs_keys)
                     for m in PG_MIGRATIONS if m.version > version],
            problems=db.schema_problems() if version else [],
            vaults=[VaultEntry(store_id=sid.hex(), name=name, lease_holder=holder,
                               lease_expires=expires, lease_live=live)
                    for sid, name, holder, expires, _, live in db.lease_states()],
        )
    lines = [
        f"database     {r.location}",
        f"schema       {r.schema_version} (this code: {r.latest_schema_version})"
        + ("  [not installed]" if r.schema_version == 0 else ""),
        f"vaults       {len(r.vaults)}",
    ]
    lines += [
        f"  {v.store_id}  {v.name or '-'}  "
        + (f"writer {v.lease_holder} until {v.lease_expires}" if v.lease_live else "no writer")
        for v in r.vaults
    ]
    lines += [f"pending      {s.version}: {s.name}" for s in r.pending]
    lines += [f"PROBLEM      {p}" for p in r.problems]
    _emit(args, r, lines)
    return ExitCode.FAILURE if r.problems else ExitCode.OK


def cmd_status(args: argparse.Namespace) -> int:
    """``status`` of a vault in PostgreSQL: schema, steps, KDF, rows, writer lease; with
    no vault named, the database's schema and every vault in it."""
    from keystore.backends.postgres import PG_LATEST_VERSION, PG_MIGRATIONS

    if _dsn_and_vault(args, "path")[1] is None:
        return _database_status(args)
    with open_vault(args, readonly=True) as vault:
        db = vault.database
        version = db.schema_version()
        shipped = {m.version: m for m in PG_MIGRATIONS}
        applied = [
            AppliedInfo(version=v, name=n, checksum=c, applied_at=at,
                        matches_shipped=shipped[v].checksum == c if v in shipped else None)
            for v, n, c, at in db.migration_records()
        ]
        pending = [StepInfo(version=m.version, name=m.name, checksum=m.checksum,
                            needs_unlock=m.needs_keys)
                   for m in PG_MIGRATIONS if m.version > version]
        holder, expires, epoch, live = db.lease_state(vault.store_id)
        stats = vault.stats()
        r = PostgresStatusReport(
            location=vault.location, name=vault.name, store_id=vault.store_id.hex(),
            schema_version=version, latest_schema_version=PG_LATEST_VERSION,
            applied=applied, pending=pending, problems=db.schema_problems(),
            kdf=_kdf_info(vault.kdf), needs_rehash=_weaker_than_default(vault.kdf),
            key_generation=stats.key_generation, rows=stats.total_rows,
            bytes=stats.total_bytes, lease_holder=holder, lease_expires=expires,
            lease_epoch=epoch, lease_live=live,
        )
    writer = ("none" if r.lease_holder is None else
              f"{r.lease_holder} (epoch {r.lease_epoch}, "
              f"{'held until' if r.lease_live else 'expired at'} {r.lease_expires})")
    lines = [
        f"vault        {r.location}" + (f" name {r.name!r}" if r.name else ""),
        f"store id     {r.store_id}",
        f"schema       {r.schema_version} (this code: {r.latest_schema_version})",
        f"key          {_kdf_text(r.kdf)}, generation {r.key_generation}"
        + ("  [needs rehash]" if r.needs_rehash else ""),
        f"rows         {r.rows} ({human_bytes(r.bytes)} sealed)",
        f"writer       {writer}",
    ]
    lines += [f"pending      {s.version}: {s.name}" for s in r.pending]
    lines += [f"PROBLEM      {p}" for p in r.problems]
    _emit(args, r, lines)
    return ExitCode.FAILURE if r.problems else ExitCode.OK


def cmd_migrate(args: argparse.Namespace) -> int:
    """``migrate`` a database's schema: every pending step, each in one transaction."""
    from keystore.backends.postgres import PG_LATEST_VERSION, PG_MIGRATIONS

    if args.to is not None and args.to != PG_LATEST_VERSION:
        raise UsageError(f"--to with --dsn: only the latest version ({PG_LATEST_VERSION})")
    with _database(args) as db:
        version = db.schema_version()
        problems = db.schema_problems()
        if problems:
            raise UsageError(problems[0])
        steps = [m for m in PG_MIGRATIONS if m.version > version]
        if steps and not args.dry_run:
            with Phases() as phases, phases.step("migrating the schema"):
                db.migrate()
    report = MigrateReport(
        path=db.location, dry_run=args.dry_run, from_version=version,
        to_version=PG_LATEST_VERSION,
        steps=[StepInfo(version=m.version, name=m.name, checksum=m.checksum,
                        needs_unlock=m.needs_keys) for m in steps],
        backup=None,
    )
    _emit(args, report, _migrate_lines(report))
    return ExitCode.OK


def cmd_verify(args: argparse.Namespace) -> int:
    """``verify`` every row of a vault in PostgreSQL (read-only: no lease taken)."""
    with open_vault(args, readonly=True) as vault, Phases() as phases:
        _unlock(vault, args, phases)
        with phases.step("decrypting and checking every row"):
            report: VerifyReport = vault.verify()
    return _emit_verify(args, report)


def cmd_stats(args: argparse.Namespace) -> int:
    """``stats`` of a vault in PostgreSQL (no passphrase: the server sees these anyway)."""
    with open_vault(args, readonly=True) as vault:
        r: StatsReport = vault.stats()
    _emit(args, r, stats_lines(r))
    return ExitCode.OK


def cmd_export(args: argparse.Namespace) -> int:
    """``export`` a vault in PostgreSQL to an export file (one consistent snapshot)."""
    import os

    from keystore.errors import VaultIOError

    _, vault_name = _dsn_and_vault(args, "path")
    out = _export_target(Path(args.out), Path(vault_name or "vault"))
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
    with open_vault(args, readonly=True) as vault, Phases() as phases:
        _unlock(vault, args, phases)
        backup_pw = _new_secondary(args.backup_passphrase_file, "Backup passphrase",
                                   "backup passphrase", "--backup-passphrase-file")
        with phases.count("deriving the backup key and exporting", "rows",
                          then="writing the file to disk") as update:
            summary = export_vault(vault, out, backup_pw, kdf, overwrite=args.force,
                                   progress=update)
        source = vault.location
    report = TransferReport(source=source, destination=str(out), rows=summary.rows,
                            categories=summary.categories,
                            plaintext_bytes=summary.plaintext_bytes, store_id=None,
                            generation=summary.generation)
    _emit(args, report, [
        f"exported {plural(report.rows, 'row')} in "
        f"{plural(report.categories, 'category', 'categories')} "
        f"({human_bytes(report.plaintext_bytes)}) from {source} to {out}"
    ])
    return ExitCode.OK


def cmd_import(args: argparse.Namespace) -> int:
    """``import`` an export file into a NEW vault in PostgreSQL (one transaction);
    ``--force`` replaces a vault of that name in the same transaction, when no worker
    holds it."""
    from keystore.postgres_vault import import_export_file

    if args.sqlcipher:
        raise UsageError("--sqlcipher makes a SQLCipher file; it has no meaning with --dsn")
    _, name = _dsn_and_vault(args, "path")
    if name is None or name.startswith("id:"):
        raise UsageError("name the new vault: --dsn DSN NAME, or postgresql://.../DB#NAME")
    src = Path(args.input)
    kdf = _kdf_choice(args) or profiles.RFC_9106_LOW_MEMORY
    _check_export_file(src)
    with Phases() as phases:
        backup_pw = _backup_passphrase(args, src, phases)
        vault_pw = _new_passphrase(args)
        with (phases.step("deriving keys and importing in one transaction"),
              _database(args, renew=True) as db):
            vault = import_export_file(db, src, backup_pw, vault_pw, kdf, name=name,
                                       replace=args.force)
            try:
                stats = vault.stats()
                location, store, generation = vault.location, vault.store_id, vault.generation
                plain = sum(len(k) + len(v) for rows in vault.open_rows().values()
                            for k, v in rows.items())
            finally:
                vault.close()
    report = TransferReport(source=str(src), destination=location, rows=stats.total_rows,
                            categories=len(stats.categories), plaintext_bytes=plain,
                            store_id=store.hex(), generation=generation)
    _emit(args, report, [
        f"imported {plural(report.rows, 'row')} in "
        f"{plural(report.categories, 'category', 'categories')} into a new vault "
        f"{name!r} in {location} (store id {store.hex()}, generation {generation})"
    ])
    return ExitCode.OK


def file_only(args: argparse.Namespace) -> int:
    """``convert`` and ``compact`` name a PostgreSQL vault: say why not, and what instead."""
    if args.command == "convert":
        raise UsageError(
            "convert makes a SQLCipher or plain vault FILE from another; it has no "
            "meaning for a vault in PostgreSQL. To copy one into a file (or back), "
            "`mls-keystore export` it, then `mls-keystore import` the export file"
        )
    raise UsageError(
        "compact rewrites a vault file without its free pages; in PostgreSQL the server "
        "reclaims the space of deleted rows itself (autovacuum, or VACUUM by the operator)"
    )


def cmd_init(args: argparse.Namespace) -> int:
    """``init`` a new vault in PostgreSQL (installing the schema into an empty database)."""
    from keystore.cli import InitReport

    if args.sqlcipher:
        raise UsageError("--sqlcipher makes a SQLCipher file; it has no meaning with --dsn")
    if args.raw_key_file and args.kdf_profile:
        raise UsageError("--kdf-profile does not apply to a raw-key vault")
    _, name = _dsn_and_vault(args, "path")
    if name is None or name.startswith("id:"):
        raise UsageError("name the new vault: --dsn DSN NAME, or postgresql://.../DB#NAME")
    kdf = _kdf_choice(args) or profiles.RFC_9106_LOW_MEMORY
    with _database(args, renew=True) as db:
        from keystore.postgres_vault import PostgresAddress

        address = PostgresAddress(db, name=name)
        if args.raw_key_file:
            if args.passphrase_file:
                raise UsageError("give --raw-key-file or --passphrase-file, not both")
            vault = address.create_vault_with_key(_raw_key(args.raw_key_file))
        else:
            passphrase = _new_passphrase(args)
            with Phases() as phases, phases.step("deriving the key and creating the vault"):
                vault = address.create_vault(passphrase, kdf)
        with vault:
            report = InitReport(path=vault.location, store_id=vault.store_id.hex(),
                                sqlcipher=False, schema_version=vault.schema_version,
                                kdf=_kdf_info(vault.kdf))
    _emit(args, report, [
        f"created vault {name!r} in {report.path}",
        f"  store id  {report.store_id}",
        f"  key       {_kdf_text(report.kdf)}",
        f"  schema    {report.schema_version}",
    ])
    return ExitCode.OK


def cmd_passwd(args: argparse.Namespace) -> int:
    """``passwd`` of a vault in PostgreSQL: one fenced header update (with ``--rekey``,
    the rows re-encrypted in the same transaction).  Takes the vault's writer lease."""
    from keystore.cli import PasswdReport

    kdf = _kdf_choice(args)
    with open_vault(args, readonly=False) as vault, Phases() as phases:
        location = vault.location
        if vault.kdf is None:
            if not args.raw_key_file or not args.new_raw_key_file:
                raise UsageError(f"vault {location} is keyed by a raw key: rotate it with "
                                 "--raw-key-file OLD --new-raw-key-file NEW")
            if kdf is not None:
                raise UsageError("--kdf-profile does not apply to a raw-key vault")
            if args.passphrase_file:
                raise UsageError(f"vault {location} is keyed by a raw key: use "
                                 "--raw-key-file FILE instead of --passphrase-file")
            old_key = _unlock(vault, args, phases)
            assert isinstance(old_key, bytes)
            new_key = _raw_key(args.new_raw_key_file)
            # One transaction with --rekey, so that a failed re-encryption leaves the
            # old key in place (not the new key alone, after a reported failure).
            step = ("re-wrapping the vault key and re-encrypting every row" if args.rekey
                    else "re-wrapping the vault key")
            with phases.step(step):
                vault.change_key(old_key, new_key, rekey=args.rekey)
        else:
            if args.new_raw_key_file:
                raise UsageError(f"vault {location} is protected by a passphrase; "
                                 "--new-raw-key-file applies to raw-key vaults only")
            # Check the current passphrase before asking for the new one twice.
            old = _unlock(vault, args, phases)
            new = _new_secondary(args.new_passphrase_file, "New passphrase", "new passphrase",
                                 "--new-passphrase-file")
            step = ("re-wrapping the vault key and re-encrypting every row" if args.rekey
                    else "re-wrapping the vault key")
            with phases.step(step):
                vault.change_passphrase(old, new, kdf=kdf, rekey=args.rekey)
        report = PasswdReport(path=location, kdf=_kdf_info(vault.kdf),
                              needs_rehash=_weaker_than_default(vault.kdf), rekeyed=args.rekey,
                              key_generation=vault.stats().key_generation)
    _emit(args, report, passwd_lines(f"vault {location}", report))
    return ExitCode.OK


def cmd_rekey(args: argparse.Namespace) -> int:
    """``rekey`` a vault in PostgreSQL: new secrets, every row re-encrypted in one fenced
    transaction.  Takes the vault's writer lease."""
    from keystore.cli import RekeyReport

    with open_vault(args, readonly=False) as vault, Phases() as phases:
        _unlock(vault, args, phases)
        with phases.step("re-encrypting every row in one transaction"):
            vault.rekey()
        stats = vault.stats()
        location = vault.location
    report = RekeyReport(path=location, key_generation=stats.key_generation,
                         rows_reencrypted=stats.total_rows)
    _emit(args, report, [
        f"new data key for vault {location} (generation {report.key_generation}); "
        f"{plural(report.rows_reencrypted, 'row')} re-encrypted",
    ])
    return ExitCode.OK
