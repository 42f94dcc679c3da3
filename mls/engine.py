"""The engine interface under :class:`mls.MlsClient`, and the records it speaks in.

An engine runs the RFC 9420 state machine and keeps every bit of its state in a
:class:`mls.storage.GranularStorage`; it never touches the vault, the drainer, the receipt
log or the writer lock.  :class:`mls.MlsClient` owns all of those once and wraps every
engine call in one storage operation followed by a flush (the durability barrier), so an
engine only has to be *correct*, never durable.  Two adapters implement the interface:
:mod:`mls.engines.native` (our own RFC 9420 engine) and :mod:`mls.engines.mlsrs` (AWS
mls-rs through its Python binding).  Whatever an engine cannot do, it refuses with
:class:`mls.errors.Unsupported` naming itself and the feature; every failure is one of
:mod:`mls.errors`, raised the same way by both.

The records here (``Member``, ``GroupState``, ``PendingProposal``, ``CommitChanges``,
``GroupSettings``, ``EngineReceived``) are what the client hands to its users.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519

#: The private keys an MLS signature can use (which one depends on the cipher suite).
SignaturePrivateKey = (
    ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey | ec.EllipticCurvePrivateKey
)

__all__ = [
    "ALL_CIPHER_SUITES",
    "DEFAULT_CIPHER_SUITE",
    "CommitChanges",
    "EngineName",
    "EngineReceived",
    "ExternalPsk",
    "GroupContextExtension",
    "GroupSettings",
    "GroupState",
    "Handshake",
    "LostKeyPackage",
    "Member",
    "MlsEngine",
    "PendingCommit",
    "PendingProposal",
    "ReceivedKind",
    "X509Credential",
]

#: The engines a client can run on.
EngineName = Literal["native", "mls-rs"]

#: MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, the suite every MLS implementation has.
DEFAULT_CIPHER_SUITE = 1
#: The seven cipher suites RFC 9420 registers (§17.1).
ALL_CIPHER_SUITES = (1, 2, 3, 4, 5, 6, 7)


class Handshake(enum.StrEnum):
    """How a group's proposals and commits travel (a group setting).

    ``PUBLIC``: PublicMessage, signed and readable by the delivery service, which can then
    track membership (the default, as in mls-rs and OpenMLS).  ``PRIVATE``: PrivateMessage,
    encrypted like application messages, hiding membership changes from the server.
    """

    PUBLIC = "public"
    PRIVATE = "private"


class ReceivedKind(enum.StrEnum):
    """What processing a message found in it."""

    APPLICATION = "application"
    COMMIT = "commit"
    PROPOSAL = "proposal"


@dataclass(frozen=True, slots=True)
class GroupSettings:
    """Per-group settings chosen when a group is created or joined.

    Attributes:
        handshake: wire format of our own proposals and commits.
        padding: zero bytes appended inside every PrivateMessage we send, hiding the
            exact length of short messages (0 to 65535).
    """

    handshake: Handshake = Handshake.PUBLIC
    padding: int = 0

    def __post_init__(self) -> None:
        """Reject settings no engine can honour."""
        if not isinstance(self.handshake, Handshake):
            object.__setattr__(self, "handshake", Handshake(self.handshake))
        if isinstance(self.padding, bool) or not isinstance(self.padding, int):
            raise TypeError("padding must be an int")
        if not 0 <= self.padding < 2**16:
            raise ValueError("padding must be in [0, 65535]")


@dataclass(frozen=True, slots=True)
class GroupContextExtension:
    """One GroupContext extension: its registered type and opaque data."""

    extension_type: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ExternalPsk:
    """An external pre-shared key to inject in a commit, named by the id it was stored under."""

    psk_id: bytes


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a group, as its leaf in the ratchet tree shows it.

    Attributes:
        leaf_index: where the member sits in the tree (stable until it is removed).
        identity: who the member is: a basic credential's identity, or what the client's
            credential validator says an X.509 credential names (its certificate's
            subjectAltName with :class:`mls.X509CredentialValidator`'s default).
        credential: the credential as RFC 9420 encodes it (type then content).
        signature_key: the key its messages are signed with.
        encryption_key: its leaf's current HPKE public key (changes on every update).
    """

    leaf_index: int
    identity: bytes
    credential: bytes
    signature_key: bytes
    encryption_key: bytes


@dataclass(frozen=True, slots=True)
class PendingProposal:
    """A proposal received or sent in the current epoch, waiting for a commit.

    Attributes:
        kind: ``"add"``, ``"remove"``, ``"update"``, ``"psk"``,
            ``"group_context_extensions"`` or another RFC 9420 proposal name.
        sender: the proposer's leaf index.
        ref: the proposal's reference (RFC 9420 §5.2).
    """

    kind: str
    sender: int
    ref: bytes


@dataclass(frozen=True, slots=True)
class PendingCommit:
    """A commit of ours awaiting the delivery service's answer (see ``commit(pending=True)``).

    Attributes:
        commit: the commit MLSMessage, byte-identical to what the commit call returned:
            after a restart, resend exactly these bytes, never a new commit.
        welcome: the Welcome for the members it adds, or ``None``.
        epoch: the epoch it was made in; merging moves the group to ``epoch + 1``.
        external: a join by external commit (the group exists locally once merged).
    """

    commit: bytes
    welcome: bytes | None
    epoch: int
    external: bool = False


@dataclass(frozen=True, slots=True)
class GroupState:
    """A read-only view of one group at its current epoch.

    Attributes:
        epoch_authenticator: equal on every member of the epoch (compare it out of band
            to detect a split view); ``None`` on mls-rs, which does not expose it.
        pending_proposals: proposals waiting for the next commit; ``None`` on mls-rs.
        pending_commit: our commit awaiting the delivery service's answer, if any.
    """

    group_id: bytes
    epoch: int
    cipher_suite: int
    own_leaf_index: int
    members: tuple[Member, ...]
    epoch_authenticator: bytes | None
    pending_proposals: tuple[PendingProposal, ...] | None
    settings: GroupSettings
    pending_commit: PendingCommit | None = None


@dataclass(frozen=True, slots=True)
class CommitChanges:
    """What a commit changed, from the members before and after it.

    Attributes:
        epoch: the epoch the commit started.
        added / removed: identities that got or lost a leaf.
        updated: identities whose leaf got a fresh encryption key (an Update proposal,
            or the committer's own path).

    When the commit removed us, the group is forgotten with it and only our own
    identity is reported, in ``removed``.
    """

    epoch: int
    added: tuple[bytes, ...] = ()
    removed: tuple[bytes, ...] = ()
    updated: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class EngineReceived:
    """What an engine found in one processed message (before the client adds its own view).

    ``merged_pending_commit``: the message was our own pending commit, echoed by the
    delivery service, and is now merged.  ``cleared_pending_commit``: another member's
    commit took the epoch, and our pending commit was dropped.  ``external_sender``: a
    proposal from a sender of the group's ``external_senders`` extension.
    """

    kind: ReceivedKind
    sender: bytes | None
    data: bytes | None = field(default=None, repr=False)  # a plaintext: never in logs
    removed: bool = False
    merged_pending_commit: bool = False
    cleared_pending_commit: bool = False
    external_sender: bool = False


@dataclass(frozen=True, slots=True, repr=False)
class X509Credential:
    """An X.509 credential (RFC 9420 §5.3) with the signature key its leaf certificate names.

    For :meth:`mls.MlsClient.create` when the application already holds a key pair its
    certificate authority certified (as OpenMLS users bring a ``CredentialWithKey``).
    When the client should make the key itself, use :meth:`mls.MlsClient.signature_key`
    and :meth:`mls.MlsClient.set_credential` instead (core-crypto's enrollment order).

    Attributes:
        certificates: the chain as DER, leaf first, each certified by the next (the trust
            anchor may end it or be left out).
        private_key: the leaf certificate's private key, of the cipher suite's signature
            algorithm (Ed25519 for suites 1 and 3, P-256 for 2, Ed448 for 4 and 6, P-521
            for 5, P-384 for 7).  It is stored in the vault, encrypted, like every key.
    """

    certificates: tuple[bytes, ...]
    private_key: SignaturePrivateKey

    def __post_init__(self) -> None:
        """Keep a tuple of bytes, whatever sequence was given."""
        chain = tuple(self.certificates)
        if not chain or not all(isinstance(c, bytes | bytearray) for c in chain):
            raise TypeError("certificates must be a non-empty sequence of DER bytes")
        object.__setattr__(self, "certificates", tuple(bytes(c) for c in chain))
        if not isinstance(
            self.private_key,
            ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey | ec.EllipticCurvePrivateKey,
        ):
            raise TypeError("private_key must be a cryptography Ed25519, Ed448 or EC private key")

    def __repr__(self) -> str:
        """Never print the private key."""
        return f"X509Credential(certificates=<{len(self.certificates)} DER>)"


@dataclass(frozen=True, slots=True)
class LostKeyPackage:
    """A published key package whose private key died with an earlier process."""

    ref: bytes
    created_at: int


class MlsEngine(Protocol):
    """What :class:`mls.MlsClient` needs from an MLS engine.

    Every call runs inside the client's storage operation and lock; a call that fails
    must leave no change the storage's rollback does not undo (the client calls
    :meth:`rolled_back` after a rollback so in-memory caches can be dropped).  Errors are
    those of :mod:`mls.errors`.
    """

    @property
    def name(self) -> EngineName:
        """``"native"`` or ``"mls-rs"``, as errors and docs name the engine."""
        ...

    @property
    def identity(self) -> bytes:
        """Our basic-credential identity."""
        ...

    @property
    def cipher_suite(self) -> int:
        """The cipher suite of our signature key (the default for groups and key packages)."""
        ...

    def rolled_back(self) -> None:
        """The storage operation around the last call was rolled back: drop caches."""
        ...

    def generate_key_package(
        self, *, cipher_suite: int, lifetime: int | None, last_resort: bool
    ) -> bytes:
        """A new key package (MLSMessage), recorded in storage."""
        ...

    def signature_key(self, cipher_suite: int) -> bytes:
        """Our signature public key of ``cipher_suite`` (made and stored on first use)."""
        ...

    def set_credential(self, certificates: Sequence[bytes], *, cipher_suite: int) -> None:
        """Make an X.509 chain the credential of our ``cipher_suite`` signature key."""
        ...

    def lost_key_packages(self) -> list[LostKeyPackage]:
        """Published key packages that can no longer be joined with."""
        ...

    def discard_lost_key_packages(self) -> int:
        """Forget :meth:`lost_key_packages`; returns how many."""
        ...

    def store_external_psk(self, psk_id: bytes, secret: bytes) -> None:
        """Store an external PSK (it must be stored by every member who will use it)."""
        ...

    def group_ids(self) -> list[bytes]:
        """The groups we are a member of, sorted."""
        ...

    def create_group(
        self, group_id: bytes | None, *, cipher_suite: int, settings: GroupSettings
    ) -> bytes:
        """A group with only us in it; returns its id."""
        ...

    def join(self, welcome: bytes, *, settings: GroupSettings, ratchet_tree: bytes | None) -> bytes:
        """Join from a Welcome; returns the group id."""
        ...

    def join_by_external_commit(
        self,
        group_info: bytes,
        *,
        ratchet_tree: bytes | None,
        resync: bool,
        settings: GroupSettings,
        aad: bytes,
        pending: bool,
    ) -> tuple[bytes, bytes]:
        """Join by an external commit; returns ``(group id, commit)``."""
        ...

    def group_info(self, group_id: bytes, *, with_ratchet_tree: bool) -> bytes:
        """A signed GroupInfo of the current epoch, for external joins."""
        ...

    def ratchet_tree(self, group_id: bytes) -> bytes:
        """The group's public ratchet tree."""
        ...

    def drop_group(self, group_id: bytes) -> None:
        """Forget a group locally (nothing is sent)."""
        ...

    def pending_commit(self, group_id: bytes) -> PendingCommit | None:
        """Our commit awaiting the delivery service's answer, if any."""
        ...

    def merge_pending_commit(self, group_id: bytes) -> int:
        """Apply our pending commit; returns the new epoch."""
        ...

    def clear_pending_commit(self, group_id: bytes) -> None:
        """Forget our pending commit; the group stays in its epoch."""
        ...

    def state(self, group_id: bytes) -> GroupState:
        """The group's current epoch, members and settings."""
        ...

    def members(self, group_id: bytes) -> list[Member]:
        """The members of the current epoch, in leaf order."""
        ...

    def epoch(self, group_id: bytes) -> int:
        """The group's current epoch number."""
        ...

    def commit(
        self,
        group_id: bytes,
        *,
        add: Sequence[bytes],
        remove: Sequence[int],
        psks: Sequence[ExternalPsk],
        extensions: Sequence[GroupContextExtension] | None,
        force_path: bool,
        pending: bool,
    ) -> tuple[bytes, bytes | None]:
        """Commit pending proposals plus the inline ones; applied at once unless ``pending``.

        Returns ``(commit, welcome)``; ``welcome`` is ``None`` when nobody was added.
        """
        ...

    def propose_add(self, group_id: bytes, key_package: bytes) -> bytes:
        """A proposal to add the owner of ``key_package``."""
        ...

    def propose_remove(self, group_id: bytes, leaf_index: int) -> bytes:
        """A proposal to remove the member at ``leaf_index``."""
        ...

    def propose_update(self, group_id: bytes) -> bytes:
        """A proposal replacing our leaf's encryption key."""
        ...

    def propose_external_psk(self, group_id: bytes, psk_id: bytes) -> bytes:
        """A proposal injecting a stored external PSK."""
        ...

    def propose_resumption_psk(self, group_id: bytes, epoch: int) -> bytes:
        """A proposal injecting the resumption PSK of a retained epoch of the group."""
        ...

    def propose_group_context_extensions(
        self, group_id: bytes, extensions: Sequence[GroupContextExtension]
    ) -> bytes:
        """A proposal replacing the GroupContext extensions."""
        ...

    def encrypt(self, group_id: bytes, plaintext: bytes, *, aad: bytes) -> bytes:
        """An application message carrying ``aad`` in the clear (authenticated)."""
        ...

    def process(self, group_id: bytes, message: bytes) -> EngineReceived:
        """Verify and apply one group message."""
        ...

    def past_epochs(self, group_id: bytes) -> list[int]:
        """The past epochs whose secrets are still kept for late application messages."""
        ...

    def export_secret(self, group_id: bytes, label: bytes, context: bytes, length: int) -> bytes:
        """MLS-Exporter of the current epoch."""
        ...
