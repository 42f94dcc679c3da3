"""The MLS layer's exception tree.

Everything the MLS layer detects raises a subclass of :class:`MlsError`, which is never
raised itself.  Errors of the vault underneath keep their own types
(:mod:`keystore.errors`); misuse of the API raises ``TypeError`` / ``ValueError``.
No message carries plaintext, key material or a group id.
"""

from __future__ import annotations

__all__ = [
    "InvalidMessage",
    "KeyPackageLost",
    "MlsEngineError",
    "MlsError",
    "MlsRsUnavailable",
    "NotAnMlsVault",
    "UnknownGroup",
    "UnknownMember",
]


class MlsError(Exception):
    """Base class of every MLS-layer error; never raised itself."""


class MlsEngineError(MlsError):
    """The MLS engine refused or failed an operation (its own error is the ``__cause__``)."""


class MlsRsUnavailable(MlsError, ImportError):
    """The optional mls-rs engine is missing: ``pip install 'mls-keystore[mls-rs]'``."""


class InvalidMessage(MlsError, ValueError):
    """Bytes that should be an MLS message (or a stored MLS row) do not parse."""


class KeyPackageLost(MlsError):
    """A Welcome is for a key package whose private key died with an earlier process.

    Attributes:
        ref: the ``KeyPackageRef`` of the lost key package.
    """

    def __init__(self, message: str, *, ref: bytes):
        super().__init__(message)
        self.ref = ref


class NotAnMlsVault(MlsError):
    """The vault opened fine but holds no (or an unreadable) MLS client identity."""


class UnknownGroup(MlsError, KeyError):
    """This client is not a member of the group named."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownMember(MlsError, KeyError):
    """No member of the group has the identity named."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
