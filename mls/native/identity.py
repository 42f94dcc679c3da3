"""Who may be a member: the application's credential policy (RFC 9420 §5.3.1).

The engine never judges identities itself.  It asks a :class:`CredentialValidator`, injected
into :class:`~mls.native.engine.NativeEngine`, four questions: which application identity a
credential names, whether a credential may be a member at all, whether a member may replace
its credential by another one (an Update proposal or the new leaf of a commit's UpdatePath),
and whether two leaves of one group may name the same identity.

:class:`BasicCredentialValidator` is the default: it accepts basic credentials only, lets a
member change keys but never its identity, and refuses a second leaf with an identity the
group already has — the same rules mls-rs applies by default, so native and mls-rs members of
one group accept and reject the same messages.  Another validator (X.509 chains, say) only
needs to provide the four methods; it does not subclass anything.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .errors import InvalidCredential
from .leaf_node import Credential, CredentialType

__all__ = ["BasicCredentialValidator", "CredentialValidator"]


@runtime_checkable
class CredentialValidator(Protocol):
    """The application's identity policy, asked by the engine for every leaf it accepts."""

    def identity(self, credential: Credential) -> bytes:
        """The application identity the credential names (basic: its identity bytes)."""
        ...

    def validate(self, credential: Credential, signature_key: bytes) -> None:
        """Raise :class:`~mls.native.errors.InvalidCredential` if this credential may not be
        a member."""
        ...

    def valid_successor(self, old: Credential, new: Credential) -> bool:
        """May a member holding ``old`` replace it by ``new`` (Update / UpdatePath / resync)?"""
        ...

    def allow_duplicate_identities(self) -> bool:
        """May two leaves of one group name the same :meth:`identity`?  Default: False."""
        ...


class BasicCredentialValidator:
    """The default policy: basic credentials, identities fixed for life, one leaf per identity.

    Args:
        allow_duplicates: let one identity hold several leaves (several devices sharing one
            identity, for instance).  Every member of a group must agree on this, or the
            members that refuse a duplicate split from those that accept it.
    """

    __slots__ = ("_allow_duplicates",)

    def __init__(self, *, allow_duplicates: bool = False) -> None:
        self._allow_duplicates = allow_duplicates

    def identity(self, credential: Credential) -> bytes:
        """The basic credential's identity bytes."""
        return credential.identity

    def validate(self, credential: Credential, signature_key: bytes) -> None:
        """Only non-empty basic credentials; X.509 needs a validator that checks chains."""
        if credential.credential_type != CredentialType.BASIC:
            raise InvalidCredential(
                f"credential type {credential.credential_type} is not accepted "
                "(this engine's credential validator accepts basic credentials only)"
            )
        if not credential.identity:
            raise InvalidCredential("a basic credential must name a non-empty identity")
        if not signature_key:
            raise InvalidCredential("a member needs a signature key")

    def valid_successor(self, old: Credential, new: Credential) -> bool:
        """The same credential type and identity: keys may change, the identity may not."""
        return (
            old.credential_type == new.credential_type
            and self.identity(old) == self.identity(new)
        )

    def allow_duplicate_identities(self) -> bool:
        """As configured; ``False`` by default."""
        return self._allow_duplicates
