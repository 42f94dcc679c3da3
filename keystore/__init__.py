"""mls-keystore: the encrypted vault that keeps an MLS client's state at rest.

Public API::

    from keystore import Vault, profiles
    v = Vault.create(path, passphrase, kdf=profiles.RFC_9106_LOW_MEMORY)
    v.put("key_packages", ref, blob); v.get(...); v.apply([...]); v.lock(); v.close()
    with v.read_snapshot() as snap: ...            # every row, one consistent state
    v.change_passphrase(old, new, rekey=True)      # also revokes the old secrets
    read_secret_file(path)                         # warns if others can read it

Files planted beside a vault raise :class:`UnsafeFile`; a vault folder others can
write gives an :class:`InsecurePermissionsWarning`.

See ``docs/format.md`` for the bytes on disk and ``docs/threat-model.md`` for what
it protects against.
"""

from typing import TYPE_CHECKING

from keystore import profiles
from keystore.errors import (
    InsecurePermissionsWarning,
    IntegrityError,
    KeystoreError,
    MigrationError,
    MigrationRequired,
    NotAVault,
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
    from keystore.reports import CategoryStats, RowFailure, StatsReport, VerifyReport

__version__ = "0.1.0"

# The report models need pydantic, whose import costs ~0.5 s: they load on first use,
# so a process that only opens a vault and reads rows starts fast.
_LAZY_REPORTS = ("CategoryStats", "RowFailure", "StatsReport", "VerifyReport")


def __getattr__(name: str) -> object:
    if name in _LAZY_REPORTS:
        from keystore import reports

        return getattr(reports, name)
    raise AttributeError(f"module 'keystore' has no attribute {name!r}")

__all__ = [
    "CategoryStats",
    "Change",
    "ChangeLike",
    "InsecurePermissionsWarning",
    "IntegrityError",
    "KdfParameters",
    "KeystoreError",
    "MigrationError",
    "MigrationRequired",
    "NotAVault",
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
