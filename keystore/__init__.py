"""mls-keystore: the encrypted vault that keeps an MLS client's state at rest.

Public API::

    from keystore import Vault, profiles
    v = Vault.create(path, passphrase, kdf=profiles.RFC_9106_LOW_MEMORY)
    v.put("key_packages", ref, blob); v.get(...); v.apply([...]); v.lock(); v.close()
    with v.read_snapshot() as snap: ...            # every row, one consistent state
    v.change_passphrase(old, new, rekey=True)      # also revokes the old secrets
    read_secret_file(path)                         # warns if others can read it
    Vault.open(path, anchor=FileAnchor(elsewhere)) # refuses an older copy of the vault
    v.generation                                   # committed writes (state record)

Rows put back from an older copy, deleted or re-inserted behind the vault's back
raise :class:`RollbackDetected` at every full read (``open_rows``, ``verify``, an
export); an anchor kept elsewhere also catches a whole older copy.

Files planted beside a vault raise :class:`UnsafeFile`; a vault folder others can
write gives an :class:`InsecurePermissionsWarning`.

See ``docs/format.md`` for the bytes on disk and ``docs/threat-model.md`` for what
it protects against.
"""

from typing import TYPE_CHECKING

from keystore import profiles
from keystore.anchor import FileAnchor, GenerationAnchor
from keystore.errors import (
    InsecurePermissionsWarning,
    IntegrityError,
    KeystoreError,
    LeaseLost,
    MigrationError,
    MigrationRequired,
    NotAVault,
    RollbackDetected,
    SchemaTooNew,
    UnsafeFile,
    VaultBusy,
    VaultClosed,
    VaultIOError,
    VaultLocked,
    WrongPassphrase,
)
from keystore.profiles import KdfParameters
from keystore.safefile import read_secret_file
from keystore.sqlcipher import SQLCipherUnavailable
from keystore.vault import Change, ChangeLike, Snapshot, Vault

if TYPE_CHECKING:
    from keystore.backends.postgres import LeaseManager, PostgresDatabase, PostgresUnavailable
    from keystore.postgres_vault import PostgresAddress, PostgresVault
    from keystore.reports import CategoryStats, RowFailure, StatsReport, VerifyReport

def _version() -> str:
    """The installed distribution's version: one source of truth, pyproject.toml."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mls-keystore")
    except PackageNotFoundError:  # imported from a checkout that was never installed
        return "0+unknown"


if TYPE_CHECKING:
    __version__: str

# The report models need pydantic, whose import costs ~0.5 s: they load on first use,
# so a process that only opens a vault and reads rows starts fast.
_LAZY_REPORTS = ("CategoryStats", "RowFailure", "StatsReport", "VerifyReport")
# The PostgreSQL vault is an optional extra: its names load on first use (psycopg
# itself only when a connection is made), so a SQLite-only install pays nothing.
_LAZY_POSTGRES = {
    "LeaseManager": "keystore.backends.postgres",
    "PostgresDatabase": "keystore.backends.postgres",
    "PostgresUnavailable": "keystore.backends.postgres",
    "PostgresVault": "keystore.postgres_vault",
    "PostgresAddress": "keystore.postgres_vault",
}


def __getattr__(name: str) -> object:
    # __version__ is looked up on first use too: importlib.metadata is a fifth of the
    # package's import time, and only --version and bug reports need it.
    if name == "__version__":
        global __version__
        __version__ = _version()
        return __version__
    if name in _LAZY_REPORTS:
        from keystore import reports

        return getattr(reports, name)
    if name in _LAZY_POSTGRES:
        import importlib

        return getattr(importlib.import_module(_LAZY_POSTGRES[name]), name)
    raise AttributeError(f"module 'keystore' has no attribute {name!r}")

__all__ = [
    "CategoryStats",
    "Change",
    "ChangeLike",
    "FileAnchor",
    "GenerationAnchor",
    "InsecurePermissionsWarning",
    "IntegrityError",
    "KdfParameters",
    "KeystoreError",
    "LeaseLost",
    "LeaseManager",
    "MigrationError",
    "MigrationRequired",
    "NotAVault",
    "PostgresAddress",
    "PostgresDatabase",
    "PostgresUnavailable",
    "PostgresVault",
    "RollbackDetected",
    "RowFailure",
    "SQLCipherUnavailable",
    "SchemaTooNew",
    "Snapshot",
    "StatsReport",
    "UnsafeFile",
    "Vault",
    "VaultBusy",
    "VaultClosed",
    "VaultIOError",
    "VaultLocked",
    "VerifyReport",
    "WrongPassphrase",
    "__version__",
    "profiles",
    "read_secret_file",
]
