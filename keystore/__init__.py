"""mls-keystore: the encrypted vault that keeps an MLS client's state at rest.

Public API::

    from keystore import Vault, profiles
    v = Vault.create(path, passphrase, kdf=profiles.RFC_9106_LOW_MEMORY)
    v.put("key_packages", ref, blob); v.get(...); v.apply([...]); v.lock(); v.close()

See ``docs/format.md`` for the bytes on disk and ``docs/threat-model.md`` for what
it protects against.
"""

from keystore import profiles
from keystore.errors import (
    IntegrityError,
    KeystoreError,
    MigrationError,
    MigrationRequired,
    NotAVault,
    SchemaTooNew,
    VaultBusy,
    VaultClosed,
    VaultIOError,
    VaultLocked,
    WrongPassphrase,
)
from keystore.profiles import KdfParameters
from keystore.reports import CategoryStats, RowFailure, StatsReport, VerifyReport
from keystore.sqlcipher import SQLCipherUnavailable
from keystore.vault import Change, ChangeLike, Vault

__version__ = "0.1.0"

__all__ = [
    "CategoryStats",
    "Change",
    "ChangeLike",
    "IntegrityError",
    "KdfParameters",
    "KeystoreError",
    "MigrationError",
    "MigrationRequired",
    "NotAVault",
    "RowFailure",
    "SQLCipherUnavailable",
    "SchemaTooNew",
    "StatsReport",
    "Vault",
    "VaultBusy",
    "VaultClosed",
    "VaultIOError",
    "VaultLocked",
    "VerifyReport",
    "WrongPassphrase",
    "__version__",
    "profiles",
]
