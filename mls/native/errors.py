"""Exception tree of the native MLS engine.

Every public function of :mod:`mls.native` raises only subclasses of :class:`MlsError`, so
callers can handle engine failures without knowing which library sits underneath.  Each
class is also a subclass of the engine-independent class of :mod:`mls.errors` for the same
case (a parse failure is an :class:`mls.errors.InvalidMessage`, a stale message an
:class:`mls.errors.EpochMismatch`...), so code written against :mod:`mls.errors` catches
native failures unchanged.
"""

from __future__ import annotations

from mls import errors as _mls


class MlsError(_mls.MlsEngineError):
    """Base class of every error raised by the native engine.

    It is an :class:`mls.errors.MlsEngineError`, so code written against
    :mod:`mls.errors` handles native engine failures unchanged.
    """


class DecodeError(MlsError, _mls.InvalidMessage):
    """Malformed TLS-encoded input (truncation, trailing bytes, bad varint, bad value)."""


class EncodeError(MlsError):
    """A value cannot be encoded (out of range for its wire type)."""


class UnsupportedCipherSuite(MlsError, ValueError):
    """The cipher suite identifier is unknown or not implemented."""


class CryptoError(MlsError):
    """A cryptographic operation failed (bad key material, invalid point...)."""


class InvalidSignature(CryptoError, _mls.InvalidMessage):
    """A signature did not verify."""


class AuthenticationError(CryptoError, _mls.InvalidMessage):
    """An AEAD tag, MAC, membership tag or confirmation tag did not verify."""


InvalidTag = AuthenticationError


class InvalidTree(MlsError, _mls.InvalidMessage):
    """A ratchet tree is structurally or cryptographically invalid."""


class InvalidMessage(MlsError, _mls.InvalidMessage):
    """A message is well formed but semantically unacceptable."""


class KeyNotFound(MlsError):
    """A ratchet key is unavailable (already used, deleted, or outside the window)."""


class InvalidProposal(InvalidMessage, _mls.InvalidProposal):
    """A proposal, or a commit's list of proposals, breaks the rules of RFC 9420 §12.1-§12.2."""


class InvalidLeafNode(InvalidMessage):
    """A LeafNode or KeyPackage fails validation (§7.3, §10.1): capabilities, lifetime, keys."""


class EpochMismatch(InvalidMessage, _mls.EpochMismatch):
    """A message is for an epoch this member cannot process (stale, future, or aged out)."""


class UnknownGroup(MlsError, _mls.UnknownGroup):
    """The engine holds no group with this id (never joined, or removed and forgotten)."""


class UnknownKeyPackage(MlsError, _mls.UnknownKeyPackage):
    """A Welcome addresses none of the key packages this engine holds."""


class NoIdentity(MlsError):
    """The storage holds no native MLS identity (create one with ``NativeEngine.create``)."""


class PendingCommitExists(MlsError, _mls.PendingCommitExists):
    """The group has a commit of ours waiting for the delivery service's answer.

    Merge it (:meth:`NativeEngine.merge_pending_commit`) once the delivery service accepted
    it, or clear it (:meth:`NativeEngine.clear_pending_commit`) once it was rejected, before
    making another commit or proposal.
    """


class NoPendingCommit(MlsError, _mls.NoPendingCommit):
    """There is no pending commit of ours for this group to merge, clear or resend."""


class InvalidCredential(InvalidLeafNode, _mls.InvalidCredential):
    """A credential the application's credential validator refuses (§5.3.1): not a valid
    member, not a valid successor of the credential it replaces, or a second leaf claiming
    an identity the group already has."""


class MessageTooLarge(InvalidMessage):
    """A message exceeds the engine's ``max_message_size``; it was refused before decoding."""
