"""The MLS layer's exception tree, raised the same way by every engine.

Everything the MLS layer detects raises a subclass of :class:`MlsError`, which is never
raised itself.  Both engines (native and mls-rs) raise these classes for the same cases;
an engine's own, more specific errors (``mls.native.errors``) are subclasses of them, so
code written against this module never needs to know which engine runs.  Errors of the
vault underneath keep their own types (:mod:`keystore.errors`); misuse of the API raises
``TypeError`` / ``ValueError``.  No message carries plaintext, key material or a group id.

::

    MlsError
    ├── MlsEngineError            the engine refused or failed an operation
    │   ├── InvalidMessage        malformed, unparseable or unauthenticated input
    │   │   ├── EpochMismatch     for an epoch this member cannot process (future or past)
    │   │   └── InvalidProposal   a proposal (or a commit's proposals) breaks RFC 9420's rules
    │   ├── UnknownGroup          not a member of that group
    │   ├── UnknownMember         no member has that identity
    │   ├── PendingCommitExists   a commit of ours awaits the delivery service's answer
    │   ├── NoPendingCommit       there is no pending commit to merge or clear
    │   └── UnknownKeyPackage     a Welcome addresses none of our key packages
    │       └── KeyPackageLost    ... because its private key died with an earlier process
    ├── Unsupported               this engine cannot do that (names engine and feature)
    ├── NotAnMlsVault             the vault holds no identity (or another engine's)
    └── MlsRsUnavailable          the optional mls-rs engine is not installed
"""

from __future__ import annotations

__all__ = [
    "EpochMismatch",
    "InvalidCredential",
    "InvalidMessage",
    "InvalidProposal",
    "KeyPackageLost",
    "MlsEngineError",
    "MlsError",
    "MlsRsUnavailable",
    "NoPendingCommit",
    "NotAnMlsVault",
    "PendingCommitExists",
    "UnknownGroup",
    "UnknownKeyPackage",
    "UnknownMember",
    "Unsupported",
]


class MlsError(Exception):
    """Base class of every MLS-layer error; never raised itself.

    Attributes:
        index: for the ``*_many`` batch calls, the position of the item that failed
            (``None`` otherwise); the whole batch was rolled back.
    """

    index: int | None = None


class MlsEngineError(MlsError):
    """The MLS engine refused or failed an operation (its own error is the ``__cause__``)."""


class MlsRsUnavailable(MlsError, ImportError):
    """The optional mls-rs engine is missing: from a checkout, ``pip install -e '.[mls-rs]'``."""


class InvalidMessage(MlsEngineError, ValueError):
    """Input that should be an MLS message is malformed, unparseable or fails to verify.

    Raised for truncated or garbage bytes, a wrong wire format, a bad signature or tag,
    a message from a non-member, a message too big for the client's ``max_message_size``,
    and a stored MLS row that does not parse.  Nothing was changed.
    """


class EpochMismatch(InvalidMessage):
    """The message is for an epoch this member cannot process now.

    Attributes:
        message_epoch: the epoch the message names (``None`` if the engine does not say).
        group_epoch: our current epoch of the group (``None`` if unknown).
        future: the message is ahead of us (a commit we have not processed yet is
            missing); ``False`` means it is older than what we keep.
        retryable: processing it again later may succeed (true for a future epoch:
            deliver the missing commit first).
    """

    def __init__(
        self,
        message: str,
        *,
        message_epoch: int | None = None,
        group_epoch: int | None = None,
        future: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message_epoch = message_epoch
        self.group_epoch = group_epoch
        if future is None and message_epoch is not None and group_epoch is not None:
            future = message_epoch > group_epoch
        self.future = bool(future)

    @property
    def retryable(self) -> bool:
        """Whether the same message may be processed once the missing commits are in."""
        return self.future


class InvalidProposal(InvalidMessage):
    """A proposal, or a commit's list of proposals, breaks the rules of RFC 9420 §12."""


class InvalidCredential(InvalidMessage):
    """A credential the application's credential validator refuses (RFC 9420 §5.3.1).

    Raised for a member's credential in a message (an untrusted X.509 chain, a certificate
    for another key, an identity change the validator does not allow) and for our own
    credential when it is set.  It is an :class:`InvalidMessage`, so code that drops bad
    messages drops these too.
    """


class UnknownGroup(MlsEngineError, KeyError):
    """This client is not a member of the group named."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownMember(MlsEngineError, KeyError):
    """No member of the group has the identity named."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PendingCommitExists(MlsEngineError):
    """A commit of ours in this group awaits the delivery service's answer.

    Merge it once the delivery service accepted it, or clear it once it was rejected,
    before making another commit or proposal in the group.
    """


class NoPendingCommit(MlsEngineError):
    """There is no pending commit of ours in this group to merge or clear."""


class UnknownKeyPackage(MlsEngineError):
    """A Welcome addresses none of this client's unused key packages.

    Also what a second use of the same Welcome raises: its key package was consumed by
    the first join (unless it was a last-resort key package).
    """


class KeyPackageLost(UnknownKeyPackage):
    """A Welcome is for a key package whose private key died with an earlier process.

    Only the mls-rs engine loses key packages (it keeps their private keys in memory).

    Attributes:
        ref: the ``KeyPackageRef`` of the lost key package.
    """

    def __init__(self, message: str, *, ref: bytes):
        super().__init__(message)
        self.ref = ref


class Unsupported(MlsError):
    """The engine this client runs cannot do what was asked.

    Attributes:
        engine: ``"native"`` or ``"mls-rs"``.
        feature: what was asked, in words (e.g. ``"PSK proposals"``).
    """

    def __init__(self, engine: str, feature: str) -> None:
        super().__init__(f"the {engine} engine does not support {feature}")
        self.engine = engine
        self.feature = feature


class NotAnMlsVault(MlsError):
    """The vault opened fine but holds no usable MLS client identity for this engine.

    Attributes:
        engine: the engine the vault belongs to, when it holds another engine's identity.
    """

    def __init__(self, message: str, *, engine: str | None = None) -> None:
        super().__init__(message)
        self.engine = engine
