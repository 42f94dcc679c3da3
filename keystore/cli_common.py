"""What every part of the ``mls-keystore`` command shares: exit codes and usage errors.

Kept apart from :mod:`keystore.cli` so that the passphrase, progress and conversion
helpers (and the MLS demo, one layer up) can raise the command's own errors without
importing the whole command.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitCode", "MissingExtra", "UsageError"]


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
    MISSING_EXTRA = 9  # an optional dependency (SQLCipher, mls-rs) is not installed
    INTERRUPTED = 130


class UsageError(Exception):
    """Input the user can correct (missing passphrase, file exists, bad option)."""


class MissingExtra(Exception):
    """An optional extra the command needs is not installed; nothing was changed."""
