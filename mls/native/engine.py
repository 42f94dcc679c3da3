"""``NativeEngine``: the RFC 9420 group state machine, with every secret kept in GranularStorage.

The engine holds no state of its own: each call reads the rows it needs from a
:class:`mls.storage.GranularStorage`, computes, and writes back only the rows that changed,
inside one ``storage.operation()`` (so a failure half-way leaves memory and the dirty log as
they were, and the drainer lands the whole operation in one vault transaction).  A process
restarted from the vault (``GranularStorage.load(vault)``) therefore continues every group,
and can join through every key package it published before.  Decoded rows are cached by the
identity of the stored bytes, so the cache can never disagree with storage (a rolled-back
write restores the old bytes object, which misses the cache).

Where each piece of state lives, and its byte format, is in :mod:`mls.native.rows`.
"""

from __future__ import annotations

import enum
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from mls import categories as cat
from mls.storage import GranularStorage

from .codec import Writer, decode_exact
from .commit import (
    create_commit,
    new_psk_nonce,
    resolve_proposals,
)
from .commit import process_commit as apply_commit
from .errors import (
    EpochMismatch,
    InvalidMessage,
    InvalidProposal,
    KeyNotFound,
    MessageTooLarge,
    MlsError,
    NoIdentity,
    NoPendingCommit,
    PendingCommitExists,
    UnknownGroup,
    UnknownKeyPackage,
)
from .external import (
    check_external_sender_proposal,
    create_external_commit,
    decode_external_senders,
    process_external_commit,
    sign_group_info,
    verify_group_info,
)
from .framing import (
    AuthenticatedContent,
    ContentType,
    FramedContent,
    MessageHeader,
    MLSMessage,
    PrivateMessage,
    PublicMessage,
    Sender,
    SenderType,
    WireFormat,
    peek_header,
)
from .group_context import GroupContext
from .identity import BasicCredentialValidator, CredentialValidator
from .join import GroupEpoch, join_from_welcome
from .key_package import KeyPackage
from .key_schedule import EpochSecrets, next_epoch
from .leaf_node import (
    PROTOCOL_VERSION_MLS10,
    Capabilities,
    Credential,
    CredentialType,
    Extension,
    LeafNode,
    LeafNodeSource,
    Lifetime,
)
from .pending import PendingCommit, PendingCommitRow
from .proposals import (
    Add,
    Commit,
    GroupContextExtensions,
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    ProposalBody,
    PskType,
    Remove,
    ResumptionPskUsage,
    Update,
)
from .protection import (
    decrypt_sender_data,
    protect_private,
    protect_public,
    sign_content,
    unprotect_private,
    unprotect_public,
)
from .rows import (
    CATEGORY_EPOCH,
    CATEGORY_IDENTITY,
    CATEGORY_MEMBERS,
    CATEGORY_PENDING_COMMIT,
    CATEGORY_RATCHET,
    IDENTITY_KEY,
    OPERATIONAL,
    EpochRow,
    GroupConfig,
    MemberKey,
    MembersRow,
    decode_epochs,
    decode_pairs,
    decode_ratchet,
    decode_secret,
    encode_epochs,
    encode_node_key,
    encode_pairs,
    encode_secret,
    epoch_row_key,
    ratchet_row_key,
    read_versioned,
    secret_tree_root,
    stored_secrets,
    u64,
    versioned,
)
from .secret_tree import HashRatchet, RatchetType, SecretTree
from .suites import SUITES, CipherSuite, get_suite
from .tree import RatchetTree
from .tree_rows import TreeRows
from .treekem import TreePrivate
from .validation import (
    DEFAULT_EXTENSION_TYPES,
    PendingProposal,
    select_committable,
    validate_group_context_extensions,
    validate_key_package,
    validate_received_proposal,
    validate_tree_leaves,
)
from .welcome import GroupInfo, Welcome

__all__ = [
    "DEFAULT_KEY_PACKAGE_LIFETIME",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "LAST_RESORT_EXTENSION",
    "NativeEngine",
    "PendingCommit",
    "Processed",
    "ProcessedKind",
]

#: Validity of a new key package: 90 days, starting an hour early to absorb clock skew.
DEFAULT_KEY_PACKAGE_LIFETIME = 90 * 24 * 3600
#: The ``last_resort`` KeyPackage extension (IANA MLS Extension Types, 0x000A): a key
#: package that may be used by more than one Welcome, kept after a join.
LAST_RESORT_EXTENSION = 0x000A
#: Leaf public keys of our last-resort key packages (value ``0x01``): their private keys
#: are shared by every group joined with the key package, so never deleted with one.
CATEGORY_SHARED_LEAF_KEYS = "native/v1/last_resort_leaf_key"
#: Largest MLSMessage the engine accepts (process, join, key packages) or produces
#: (encrypt): 2 MiB.  That fits a Welcome carrying the ratchet tree of a group of several
#: thousand members, and text, reactions and attachment keys by orders of magnitude; media
#: belongs in attachments that the messages point to.
DEFAULT_MAX_MESSAGE_SIZE = 2 * 1024 * 1024
_SKEW = 3600
_T = TypeVar("_T")
#: Credential types our leaves advertise: groups made by other clients (OpenMLS in Wire's
#: core-crypto) require X.509 in required_capabilities and refuse key packages without it.
_CREDENTIAL_TYPES = (CredentialType.BASIC, CredentialType.X509)


class ProcessedKind(enum.StrEnum):
    """What :meth:`NativeEngine.process` found in a message."""

    APPLICATION = "application"
    PROPOSAL = "proposal"
    COMMIT = "commit"


@dataclass(frozen=True, slots=True)
class Processed:
    """The outcome of one processed group message.

    Attributes:
        sender: the sender's (committer's) leaf index; ``identity`` its credential identity.
        data: the plaintext of an application message.
        removed: the commit removed us; the group has been forgotten.
        epoch: the epoch the message belonged to.
        cleared_pending_commit: another commit of this epoch won; our pending commit was
            dropped (the group continues in the winner's epoch; redo our changes if needed).
        merged_pending_commit: the message was our own pending commit, echoed by the
            delivery service; it has been merged.
        external_sender: a proposal from a sender of the ``external_senders`` extension
            (``sender`` is its index there, ``identity`` its credential identity).
    """

    kind: ProcessedKind
    sender: int
    identity: bytes
    epoch: int
    data: bytes | None = field(default=None, repr=False)  # a plaintext: never in logs
    removed: bool = False
    cleared_pending_commit: bool = False
    merged_pending_commit: bool = False
    external_sender: bool = False


@dataclass(frozen=True, slots=True)
class _Identity:
    suite_id: int
    credential: Credential
    signature_key: bytes


def _outside_group_id(group_id: bytes) -> bytes:
    """A group id from a Welcome or GroupInfo, refused unless the client can address it.

    Empty (every group-id argument must be non-empty) or too long to key a vault row.
    """
    if not 0 < len(group_id) <= cat.MAX_GROUP_ID_LEN:
        raise InvalidMessage(
            f"the group id is {len(group_id)} bytes; this client keeps groups of 1 to "
            f"{cat.MAX_GROUP_ID_LEN}"
        )
    return group_id


class NativeEngine:
    """An MLS client whose entire state lives in a :class:`GranularStorage`.

    Construct with :meth:`create` (new identity) or directly on a storage that holds one.
    Thread-safe: calls are serialized by an internal lock.

    Args:
        storage: the storage holding this client's state.
        clock: Unix time source for key-package lifetimes (tests inject it).
        identity_key: the row of the identity to act as.  One engine signs with one
            suite's key; a client of several suites runs one engine per suite, each on
            its own identity row, all on the same storage.
        credential_validator: the application's identity policy (who may be a member, may a
            member change credential, may two leaves share an identity); default
            :class:`~mls.native.identity.BasicCredentialValidator`.
        max_message_size: largest message accepted or produced, in bytes (default
            :data:`DEFAULT_MAX_MESSAGE_SIZE`); larger ones raise
            :class:`~mls.native.errors.MessageTooLarge` before any decoding.
    """

    def __init__(
        self,
        storage: GranularStorage,
        *,
        clock: Callable[[], float] = time.time,
        identity_key: bytes = IDENTITY_KEY,
        credential_validator: CredentialValidator | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        if isinstance(max_message_size, bool) or not isinstance(max_message_size, int) or (
            max_message_size < 1024
        ):
            raise ValueError("max_message_size must be an int of at least 1024 bytes")
        self._validator: CredentialValidator = (
            BasicCredentialValidator() if credential_validator is None else credential_validator
        )
        self._max_message_size = max_message_size
        self._storage = storage
        self._clock = clock
        self._lock = threading.RLock()
        self._cache: dict[tuple[str, bytes], tuple[bytes, object]] = {}
        self._tree_rows = TreeRows()  # trees are stored node by node (mls.native.tree_rows)
        self._identity_key = identity_key
        row = storage.read(CATEGORY_IDENTITY, identity_key)
        if row is None:
            raise NoIdentity("this storage holds no native MLS identity")
        self._identity = read_versioned(
            row, lambda r: _Identity(r.u16(), Credential.decode(r), r.opaque())
        )
        self._cs = get_suite(self._identity.suite_id)
        pair = storage.signature_key_pair(self._identity.signature_key)
        if pair is None:
            raise KeyNotFound("the identity's signature key pair is missing from storage")
        self._sig_priv = read_versioned(pair, lambda r: (r.u16(), r.opaque(), r.opaque()))[1]

    @classmethod
    def create(
        cls,
        storage: GranularStorage,
        identity: bytes,
        *,
        suite: int = 1,
        clock: Callable[[], float] = time.time,
        identity_key: bytes = IDENTITY_KEY,
        credential_validator: CredentialValidator | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        signature_private_key: bytes | None = None,
        credential: Credential | None = None,
    ) -> NativeEngine:
        """Store a signature key pair and the credential of our leaves; one operation.

        By default a fresh key pair and a basic credential naming ``identity``.  An
        application whose certificate authority already certified a key of its own passes
        that key (``signature_private_key``, serialized as :class:`CipherSuite` does) and
        the ``credential`` (an X.509 chain for it), which must pass ``credential_validator``.

        Raises:
            ValueError: the storage already holds an identity, or ``identity`` is empty.
            InvalidCredential: the validator refuses ``credential`` for the key.
        """
        if not isinstance(identity, bytes) or not identity:
            raise ValueError("identity must be non-empty bytes")
        if storage.read(CATEGORY_IDENTITY, identity_key) is not None:
            raise ValueError("this storage already holds a native MLS identity")
        cs = get_suite(suite)
        if signature_private_key is None:
            priv, pub = cs.generate_signature_key_pair()
        else:
            priv, pub = signature_private_key, cs.signature_public_key(signature_private_key)
        if credential is None:
            credential = Credential(CredentialType.BASIC, identity=identity)
        else:
            validator = (
                BasicCredentialValidator() if credential_validator is None else credential_validator
            )
            validator.validate(credential, pub)

        def identity_row(w: Writer) -> None:
            w.u16(suite)
            credential.encode(w)
            w.opaque(pub)

        def key_row(w: Writer) -> None:
            w.u16(suite)
            w.opaque(priv)
            w.opaque(pub)

        with storage.operation():
            storage.write_signature_key_pair(pub, versioned(key_row))
            storage.write(CATEGORY_IDENTITY, identity_key, versioned(identity_row))
        return cls(
            storage,
            clock=clock,
            identity_key=identity_key,
            credential_validator=credential_validator,
            max_message_size=max_message_size,
        )

    # ------------------------------------------------------------------ properties

    @property
    def identity(self) -> bytes:
        """Our identity, as the credential validator names our credential.

        For a basic credential these are its identity bytes; for an X.509 credential
        whatever the validator's ``identity()`` says the certificate names.
        """
        return self.identity_of(self._identity.credential)

    @property
    def credential(self) -> Credential:
        """The credential our leaves carry (basic, or an X.509 chain once set)."""
        return self._identity.credential

    @property
    def signature_key(self) -> bytes:
        """Our signature public key (what an X.509 leaf certificate must certify)."""
        return self._identity.signature_key

    def identity_of(self, credential: Credential) -> bytes:
        """The application identity of a credential, as the validator names it.

        Every leaf in a tree was accepted by the validator, so asking it again cannot fail
        for them; should the application have swapped validators between runs, a
        credential the new one cannot name falls back to its basic identity bytes (empty
        for X.509) rather than making the group unreadable.
        """
        try:
            return self._validator.identity(credential)
        except MlsError:
            return credential.identity

    def set_credential(self, credential: Credential) -> None:
        """Replace the credential of our signature key (e.g. by an X.509 chain); one operation.

        The credential must pass our validator for our own signature key (an X.509 leaf
        certificate must certify exactly that key).  Key packages, groups and commit paths
        made from now on carry it; our leaves in existing groups change at our next commit
        with a path, which other members accept when their validator calls the new
        credential a valid successor of the old one.

        Raises:
            InvalidCredential: the validator refuses it for our key.
        """
        if not isinstance(credential, Credential):
            raise TypeError("credential must be an mls.native.leaf_node.Credential")
        self._validator.validate(credential, self._identity.signature_key)
        suite, key = self._identity.suite_id, self._identity.signature_key

        def identity_row(w: Writer) -> None:
            w.u16(suite)
            credential.encode(w)
            w.opaque(key)

        with self._lock, self._storage.operation():
            self._storage.write(CATEGORY_IDENTITY, self._identity_key, versioned(identity_row))
            self._identity = _Identity(suite, credential, key)

    @property
    def suite(self) -> CipherSuite:
        """The cipher suite of our identity, key packages and groups."""
        return self._cs

    @property
    def storage(self) -> GranularStorage:
        """The storage holding our state."""
        return self._storage

    def _now(self) -> int:
        return int(self._clock())

    # ------------------------------------------------------------------ decoding cache

    def _decoded(self, category: str, key: bytes, decode: Callable[[bytes], _T]) -> _T | None:
        raw = self._storage.read(category, key)
        if raw is None:
            return None
        hit = self._cache.get((category, key))
        if hit is not None and hit[0] is raw:
            return hit[1]  # type: ignore[return-value]
        value = decode(raw)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[(category, key)] = (raw, value)
        return value

    def _write_cached(self, category: str, key: bytes, raw: bytes, value: object) -> None:
        """Write a row and remember its decoded form (storage keeps this very bytes object)."""
        self._storage.write(category, key, raw)
        self._cache[(category, key)] = (raw, value)

    def _need(self, category: str, key: bytes, decode: Callable[[bytes], _T]) -> _T:
        value = self._decoded(category, key, decode)
        if value is None:
            raise UnknownGroup("this engine holds no such group (or its state is incomplete)")
        return value

    # ------------------------------------------------------------------ key packages

    def generate_key_package(
        self,
        *,
        lifetime: int = DEFAULT_KEY_PACKAGE_LIFETIME,
        extensions: Sequence[Extension] = (),
        leaf_extensions: Sequence[Extension] = (),
        last_resort: bool = False,
    ) -> bytes:
        """A new KeyPackage (MLSMessage); its private keys are stored before it is returned.

        Args:
            lifetime: seconds the key package stays valid from now.
            extensions: KeyPackage extensions; ``leaf_extensions`` go in its LeafNode (their
                non-default types are advertised in the leaf's capabilities).
            last_resort: mark it ``last_resort``: it stays usable after a join, for when
                every one-time key package has been consumed.
        """
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime <= 0:
            raise ValueError("lifetime must be a positive number of seconds")
        if last_resort:
            extensions = (*extensions, Extension(LAST_RESORT_EXTENSION, b""))
        cs = self._cs
        now = self._now()
        init_priv, init_pub = cs.hpke.generate_key_pair()
        enc_priv, enc_pub = cs.hpke.generate_key_pair()
        leaf = LeafNode(
            enc_pub,
            self._identity.signature_key,
            self._identity.credential,
            self._capabilities(leaf_extensions, extensions),
            LeafNodeSource.KEY_PACKAGE,
            Lifetime(max(0, now - _SKEW), now + lifetime),
            b"",
            tuple(leaf_extensions),
            b"",
        ).signed(cs, self._sig_priv, None, None)
        kp = KeyPackage(PROTOCOL_VERSION_MLS10, cs.suite_id, init_pub, leaf, tuple(extensions), b"")
        kp = replace(kp, signature=cs.sign_with_label(self._sig_priv, "KeyPackageTBS", kp.tbs()))
        kp.verify(cs)

        def bundle(w: Writer) -> None:
            w.opaque(kp.to_bytes())
            w.opaque(init_priv)
            w.opaque(enc_priv)

        with self._lock, self._storage.operation():
            self._storage.write_key_package(kp.ref(cs), versioned(bundle))
            if last_resort:  # every group joined with it shares this leaf key
                self._storage.write(CATEGORY_SHARED_LEAF_KEYS, enc_pub, b"\x01")
        return MLSMessage(kp).to_bytes()

    def _capabilities(
        self, leaf_extensions: Sequence[Extension], extensions: Sequence[Extension] = ()
    ) -> Capabilities:
        types = {e.extension_type for e in (*leaf_extensions, *extensions)}
        custom = tuple(sorted(types - DEFAULT_EXTENSION_TYPES))
        return Capabilities(
            (PROTOCOL_VERSION_MLS10,), tuple(sorted(SUITES)), custom, (), _CREDENTIAL_TYPES
        )

    def key_package_refs(self) -> list[bytes]:
        """References of the key packages we published and have not joined with yet."""
        return self._storage.keys(cat.KEY_PACKAGE)

    def store_external_psk(self, psk_id: bytes, secret: bytes) -> None:
        """Store an external PSK under its id (write_psk)."""
        if not psk_id or not secret:
            raise ValueError("psk_id and secret must be non-empty bytes")
        with self._lock, self._storage.operation():
            self._storage.write_psk(psk_id, encode_secret(secret))

    # ------------------------------------------------------------------ group state

    def group_ids(self) -> list[bytes]:
        """The groups we are a member of, sorted."""
        return sorted(self._storage.keys(cat.GROUP_STATE))

    def _config(self, gid: bytes) -> GroupConfig:
        return self._need(cat.MLS_JOIN_CONFIG, gid, lambda b: decode_exact(b, GroupConfig.decode))

    def _context(self, gid: bytes) -> GroupContext:
        return self._need(cat.GROUP_CONTEXT, gid, lambda b: decode_exact(b, GroupContext.decode))

    def _tree(self, gid: bytes) -> RatchetTree:
        tree = self._tree_rows.load(self._storage, gid)
        if tree is None:
            raise UnknownGroup("this engine holds no such group (or its state is incomplete)")
        return tree

    def _own_leaf(self, gid: bytes) -> int:
        return self._need(cat.OWN_LEAF_INDEX, gid, lambda b: int.from_bytes(b, "big"))

    def _secrets(self, gid: bytes) -> EpochSecrets:
        return self._need(cat.GROUP_EPOCH_SECRETS, gid, EpochSecrets.from_bytes)

    def _check_group(self, gid: bytes) -> None:
        if not isinstance(gid, bytes):
            raise TypeError(f"group id must be bytes, not {type(gid).__name__}")
        if self._storage.read(cat.GROUP_STATE, gid) is None:
            raise UnknownGroup("this engine is not a member of that group")

    def _private(self, gid: bytes, tree: RatchetTree, me: int, epoch: int) -> TreePrivate:
        leaf = tree.leaf(me)
        assert leaf is not None
        leaf_priv = self._leaf_key(leaf.encryption_key)
        if leaf_priv is None:
            raise KeyNotFound("our leaf's private key is missing from storage")
        rows = self._storage.encryption_epoch_key_pairs(gid, u64(epoch), me)
        nodes = {}
        for row in rows:
            node, priv = read_versioned(row, lambda r: (r.u32(), r.opaque()))
            nodes[node] = priv
        return TreePrivate(me, leaf_priv, nodes)

    def _leaf_key(self, public: bytes) -> bytes | None:
        row = self._storage.encryption_key_pair(public)
        return None if row is None else decode_secret(row)

    def _group(self, gid: bytes) -> GroupEpoch:
        """The current epoch as a :class:`GroupEpoch` (its secret tree is not loaded)."""
        self._check_group(gid)
        context, tree, me = self._context(gid), self._tree(gid), self._own_leaf(gid)
        interim = self._storage.interim_transcript_hash(gid)
        if interim is None:
            raise UnknownGroup("the group's interim transcript hash is missing")
        return GroupEpoch(
            context,
            tree,
            self._private(gid, tree, me, context.epoch),
            self._secrets(gid),
            SecretTree(context.cipher_suite, tree.n_leaves, {}, {}),
            interim,
        )

    def epoch(self, group_id: bytes) -> int:
        """The group's current epoch number."""
        with self._lock:
            self._check_group(group_id)
            return self._context(group_id).epoch

    def epoch_authenticator(self, group_id: bytes) -> bytes:
        """The current epoch authenticator (equal on every member; RFC 9420 §8.7)."""
        with self._lock:
            self._check_group(group_id)
            return self._secrets(group_id).epoch_authenticator

    def own_leaf_index(self, group_id: bytes) -> int:
        """Our leaf index in the group."""
        with self._lock:
            self._check_group(group_id)
            return self._own_leaf(group_id)

    def members(self, group_id: bytes) -> list[tuple[int, bytes]]:
        """``(leaf index, identity)`` of every member, in leaf order."""
        with self._lock:
            leaves = self.leaf_nodes(group_id)
            return [(i, self.identity_of(leaf.credential)) for i, leaf in leaves]

    def leaf_nodes(self, group_id: bytes) -> list[tuple[int, LeafNode]]:
        """``(leaf index, LeafNode)`` of every member, in leaf order (for inspection)."""
        with self._lock:
            self._check_group(group_id)
            tree = self._tree(group_id)
            out = []
            for i in tree.member_leaves():
                leaf = tree.leaf(i)
                assert leaf is not None
                out.append((i, leaf))
            return out

    def pending_proposals(self, group_id: bytes) -> list[PendingProposal]:
        """The proposals queued for the next commit (received and our own), by reference."""
        with self._lock:
            self._check_group(group_id)
            return list(self._queued(group_id).values())

    def group_config(self, group_id: bytes) -> GroupConfig:
        """The settings the group was created or joined with."""
        with self._lock:
            self._check_group(group_id)
            return self._config(group_id)

    def cipher_suite(self, group_id: bytes) -> int:
        """The group's cipher suite."""
        with self._lock:
            self._check_group(group_id)
            return self._context(group_id).cipher_suite

    def export_secret(self, group_id: bytes, label: bytes, context: bytes, length: int) -> bytes:
        """MLS-Exporter(label, context, length) of the current epoch (§8.5)."""
        if not isinstance(label, bytes) or not isinstance(context, bytes):
            raise TypeError("label and context must be bytes")
        if isinstance(length, bool) or not isinstance(length, int) or not 0 < length < 2**16:
            raise ValueError("length must be an int in [1, 65535]")
        with self._lock:
            self._check_group(group_id)
            cs, secret = self._cs, self._secrets(group_id).exporter_secret
            derived = _expand_raw_label(cs, secret, label, b"", cs.hash_size)
            return _expand_raw_label(cs, derived, b"exported", cs.hash(context), length)

    # ------------------------------------------------------------------ secret trees

    def _epoch_row(self, gid: bytes, epoch: int) -> EpochRow | None:
        return self._decoded(CATEGORY_EPOCH, epoch_row_key(gid, epoch), EpochRow.from_bytes)

    def _secret_tree(self, gid: bytes, epoch: int, leaf: int) -> tuple[EpochRow, SecretTree]:
        """The epoch's secret tree with only ``leaf``'s ratchets loaded."""
        row = self._epoch_row(gid, epoch)
        if row is None:
            raise EpochMismatch("the secrets of that epoch are no longer kept")
        ratchets: dict[tuple[int, RatchetType], HashRatchet] = {}
        if leaf in row.leaves:
            for rtype in RatchetType:
                key = ratchet_row_key(gid, epoch, leaf, rtype)
                ratchet = self._decoded(CATEGORY_RATCHET, key, decode_ratchet)
                if ratchet is None:
                    raise KeyNotFound("a hash ratchet is missing from storage")
                ratchets[(leaf, rtype)] = ratchet
        tree = SecretTree(
            row.suite_id, row.n_leaves, row.node_secrets, ratchets, row.max_forward, row.window
        )
        return row, tree

    def _save_secret_tree(
        self, gid: bytes, epoch: int, row: EpochRow, before: SecretTree, after: SecretTree
    ) -> None:
        """Write only what changed: the touched ratchets, and node secrets if consumed."""
        for (leaf, rtype), ratchet in after.ratchets.items():
            if before.ratchets.get((leaf, rtype)) is not ratchet:
                key = ratchet_row_key(gid, epoch, leaf, rtype)
                self._write_cached(CATEGORY_RATCHET, key, ratchet.to_bytes(), ratchet)
        if after.node_secrets is not before.node_secrets:
            leaves = row.leaves | {leaf for leaf, _ in after.ratchets}
            new_row = replace(row, node_secrets=after.node_secrets, leaves=frozenset(leaves))
            key = epoch_row_key(gid, epoch)
            self._write_cached(CATEGORY_EPOCH, key, new_row.to_bytes(), new_row)

    def _drop_epoch(self, gid: bytes, epoch: int) -> None:
        row = self._epoch_row(gid, epoch)
        if row is not None:
            for leaf in row.leaves:
                for rtype in RatchetType:
                    key = ratchet_row_key(gid, epoch, leaf, rtype)
                    self._storage.delete(CATEGORY_RATCHET, key)
        self._storage.delete(CATEGORY_EPOCH, epoch_row_key(gid, epoch))
        self._storage.delete(CATEGORY_MEMBERS, epoch_row_key(gid, epoch))

    def _epoch_member(
        self, gid: bytes, epoch: int, leaf: int
    ) -> tuple[GroupContext, MemberKey | None]:
        """The context of ``epoch`` (current or retained) and who sat at ``leaf`` then.

        Past epochs keep only what the following commits changed (:class:`MembersRow`),
        so the answer is in the first of their rows that lists the leaf, else in the tree.
        """
        current = self._context(gid)
        context = current if epoch == current.epoch else None
        for past in range(epoch, current.epoch):
            key = epoch_row_key(gid, past)
            row = self._decoded(CATEGORY_MEMBERS, key, MembersRow.from_bytes)
            if row is None:
                raise EpochMismatch("the members of that epoch are no longer kept")
            context = row.context if context is None else context
            if leaf in row.members or row.complete:
                return context, row.members.get(leaf)
        assert context is not None
        node = self._tree_rows.leaf(self._storage, gid, leaf)  # one row, not the whole tree
        if node is None:
            return context, None
        return context, (node.signature_key, self.identity_of(node.credential))

    # ------------------------------------------------------------------ epoch persistence

    def _write_epoch(
        self,
        gid: bytes,
        group: GroupEpoch,
        confirmation_tag: bytes,
        config: GroupConfig,
        previous: GroupEpoch | None,
    ) -> None:
        """Persist a new current epoch; age out old epochs, proposals and pending leaves."""
        s = self._storage
        ctx, cs = group.context, get_suite(group.context.cipher_suite)
        epoch = ctx.epoch
        me = group.private.leaf_index
        if previous is not None:  # who was who in the epoch we leave, for its late messages
            row_key = epoch_row_key(gid, previous.context.epoch)
            left = MembersRow.between(
                previous.context, self._tree(gid), group.tree, self.identity_of
            )
            s.write(CATEGORY_MEMBERS, row_key, left.to_bytes())
        self._tree_rows.save(s, gid, group.tree)
        s.write_context(gid, ctx.to_bytes())
        s.write_interim_transcript_hash(gid, group.interim_transcript_hash)
        s.write_confirmation_tag(gid, confirmation_tag)
        s.write_group_epoch_secrets(gid, stored_secrets(group.secrets).to_bytes())
        s.write_own_leaf_index(gid, me.to_bytes(4, "big"))
        s.write_group_state(gid, OPERATIONAL)
        s.write_encryption_epoch_key_pairs(
            gid,
            u64(epoch),
            me,
            [encode_node_key(n, k) for n, k in sorted(group.private.node_privs.items())],
        )
        leaf = group.tree.leaf(me)
        assert leaf is not None
        s.write_encryption_key_pair(
            leaf.encryption_key, encode_secret(group.private.encryption_priv)
        )
        row = EpochRow(
            cs.suite_id,
            group.tree.n_leaves,
            config.max_forward,
            config.window,
            group.secrets.sender_data_secret,
            {secret_tree_root(group.tree.n_leaves): group.secrets.encryption_secret},
            frozenset(),
        )
        s.write(CATEGORY_EPOCH, epoch_row_key(gid, epoch), row.to_bytes())
        index = s.message_secrets(gid)
        epochs = [*(decode_epochs(index) if index is not None else []), epoch]
        keep = epochs[-(config.max_past_epochs + 1) :]
        for old in epochs[: -len(keep)]:
            self._drop_epoch(gid, old)
        s.write_message_secrets(gid, encode_epochs(keep))
        psk_row = s.resumption_psk_store(gid)
        psks = [
            *(decode_pairs(psk_row) if psk_row is not None else []),
            (epoch, group.secrets.resumption_psk),
        ]
        s.write_resumption_psk_store(gid, encode_pairs(psks[-(config.max_past_epochs + 1) :]))
        if previous is not None:
            old_epoch = previous.context.epoch
            s.delete_encryption_epoch_key_pairs(gid, u64(old_epoch), previous.private.leaf_index)
            old_leaf = previous.tree.leaf(previous.private.leaf_index)
            assert old_leaf is not None
            if old_leaf.encryption_key != leaf.encryption_key:
                self._drop_leaf_key(old_leaf.encryption_key)
        for raw in s.own_leaf_nodes(gid):
            pending = decode_exact(raw, LeafNode.decode)
            if pending.encryption_key != leaf.encryption_key:
                self._drop_leaf_key(pending.encryption_key)
        s.delete_own_leaf_nodes(gid)
        s.clear_proposal_queue(gid)

    def _drop_leaf_key(self, public: bytes) -> None:
        """Delete a leaf's private key, unless a last-resort key package shares it.

        Every group joined with one last-resort key package starts with the same leaf key;
        leaving or updating in one group must not take it from the others.
        """
        if self._storage.read(CATEGORY_SHARED_LEAF_KEYS, public) is None:
            self._storage.delete_encryption_key_pair(public)

    def _forget(self, gid: bytes) -> None:
        """Delete every row of a group we left (removed by a commit)."""
        s = self._storage
        context, tree, me = self._context(gid), self._tree(gid), self._own_leaf(gid)
        index = s.message_secrets(gid)
        for epoch in decode_epochs(index) if index is not None else []:
            self._drop_epoch(gid, epoch)
        s.delete_encryption_epoch_key_pairs(gid, u64(context.epoch), me)
        leaf = tree.leaf(me)
        if leaf is not None:
            self._drop_leaf_key(leaf.encryption_key)
        for raw in s.own_leaf_nodes(gid):
            self._drop_leaf_key(decode_exact(raw, LeafNode.decode).encryption_key)
        s.delete(CATEGORY_PENDING_COMMIT, gid)
        self._tree_rows.delete(s, gid)
        for delete in (
            s.delete_own_leaf_nodes,
            s.clear_proposal_queue,
            s.delete_context,
            s.delete_interim_transcript_hash,
            s.delete_confirmation_tag,
            s.delete_group_epoch_secrets,
            s.delete_own_leaf_index,
            s.delete_message_secrets,
            s.delete_all_resumption_psk_secrets,
            s.delete_group_config,
            s.delete_group_state,
        ):
            delete(gid)

    # ------------------------------------------------------------------ create / join

    def create_group(
        self,
        group_id: bytes | None = None,
        *,
        config: GroupConfig | None = None,
        extensions: Sequence[Extension] = (),
    ) -> bytes:
        """Create a group with only us in it (epoch 0); returns its id (random if omitted)."""
        gid = os.urandom(16) if group_id is None else group_id
        if not isinstance(gid, bytes) or not 0 < len(gid) <= cat.MAX_GROUP_ID_LEN:
            raise ValueError(f"group id must be 1 to {cat.MAX_GROUP_ID_LEN} bytes")
        config = GroupConfig() if config is None else config
        cs = self._cs
        with self._lock:
            if self._storage.read(cat.GROUP_STATE, gid) is not None:
                raise ValueError("this engine already has a group with that id")
            enc_priv, enc_pub = cs.hpke.generate_key_pair()
            now = self._now()
            leaf = LeafNode(
                enc_pub,
                self._identity.signature_key,
                self._identity.credential,
                self._capabilities(()),
                LeafNodeSource.KEY_PACKAGE,
                Lifetime(max(0, now - _SKEW), now + DEFAULT_KEY_PACKAGE_LIFETIME * 4),
                b"",
                (),
                b"",
            ).signed(cs, self._sig_priv, None, None)
            tree = RatchetTree((leaf,))
            context = GroupContext(cs.suite_id, gid, 0, tree.tree_hash(cs), b"", tuple(extensions))
            secrets = next_epoch(cs, os.urandom(cs.hash_size), None, None, context.to_bytes())
            tag = secrets.confirmation_tag(b"")
            group = GroupEpoch.begin(cs, context, tree, TreePrivate(0, enc_priv, {}), secrets, tag)
            with self._storage.operation():
                self._storage.write_mls_join_config(gid, config.to_bytes())
                self._write_epoch(gid, group, tag, config, None)
        return gid

    def join(
        self,
        welcome: bytes,
        *,
        config: GroupConfig | None = None,
        ratchet_tree: bytes | None = None,
    ) -> bytes:
        """Join a group from a Welcome (MLSMessage); returns the group id.

        ``ratchet_tree`` is the group's tree (``NativeEngine.ratchet_tree`` of a member),
        needed when the Welcome's GroupInfo has no ``ratchet_tree`` extension.

        Raises:
            UnknownKeyPackage: the Welcome addresses none of our key packages.
            InvalidMessage/InvalidTree/CryptoError: it does not verify.
        """
        if peek_header(self._bounded(welcome)).wire_format != WireFormat.WELCOME:
            raise InvalidMessage("not a Welcome")
        msg = _parse(welcome)
        if not isinstance(msg.body, Welcome):
            raise InvalidMessage("not a Welcome")
        body = msg.body
        config = GroupConfig() if config is None else config
        with self._lock:
            entry = next(
                (
                    (e.new_member, row)
                    for e in body.secrets
                    if (row := self._storage.key_package(e.new_member)) is not None
                ),
                None,
            )
            if entry is None:
                raise UnknownKeyPackage("this Welcome addresses none of our key packages")
            ref, row = entry
            kp_bytes, init_priv, enc_priv = read_versioned(
                row, lambda r: (r.opaque(), r.opaque(), r.opaque())
            )
            kp = decode_exact(kp_bytes, KeyPackage.decode)
            tree = None if ratchet_tree is None else RatchetTree.from_bytes(ratchet_tree)
            group = join_from_welcome(body, kp, init_priv, enc_priv, self._external_psks(), tree)
            cs = get_suite(group.context.cipher_suite)
            validate_tree_leaves(cs, group.tree, group.context, self._validator)
            gid = _outside_group_id(group.context.group_id)
            if self._storage.read(cat.GROUP_STATE, gid) is not None:
                raise InvalidMessage("this engine is already a member of that group")
            self._refuse_if_pending(gid)  # an external join of ours awaits its answer
            info_tag = group.secrets.confirmation_tag(group.context.confirmed_transcript_hash)
            with self._storage.operation():
                self._storage.write_mls_join_config(gid, config.to_bytes())
                self._write_epoch(gid, group, info_tag, config, None)
                if not any(e.extension_type == LAST_RESORT_EXTENSION for e in kp.extensions):
                    self._storage.delete_key_package(ref)
        return gid

    def _external_psks(self) -> dict[bytes, bytes]:
        return {k: decode_secret(v) for k, v in self._storage.items(cat.PSK)}

    def _psk_lookup(self, gid: bytes) -> Callable[[PreSharedKeyID], bytes]:
        def lookup(psk: PreSharedKeyID) -> bytes:
            if psk.psktype == PskType.EXTERNAL:
                row = self._storage.psk(psk.psk_id)
                if row is not None:
                    return decode_secret(row)
            elif psk.psk_group_id == gid:
                row = self._storage.resumption_psk_store(gid)
                for epoch, value in decode_pairs(row) if row is not None else []:
                    if epoch == psk.psk_epoch:
                        return value
            raise InvalidProposal("a PSK named by the commit is not available")

        return lookup

    # ------------------------------------------------------------------ sending

    def _protect(self, gid: bytes, auth: AuthenticatedContent, config: GroupConfig) -> bytes:
        """Frame signed content as the config says; a PrivateMessage advances our ratchet."""
        cs = self._cs
        if auth.wire_format == WireFormat.PUBLIC_MESSAGE:
            msg = protect_public(cs, auth, self._secrets(gid).membership_key, self._context(gid))
            return MLSMessage(msg).to_bytes()
        epoch, me = auth.content.epoch, auth.content.sender.index
        row, before = self._secret_tree(gid, epoch, me)
        private, after = protect_private(cs, auth, before, row.sender_data_secret, config.padding)
        self._save_secret_tree(gid, epoch, row, before, after)
        return MLSMessage(private).to_bytes()

    def encrypt(self, group_id: bytes, plaintext: bytes, *, aad: bytes = b"") -> bytes:
        """An application PrivateMessage; the advanced ratchet is stored in the same operation."""
        if not isinstance(plaintext, bytes) or not isinstance(aad, bytes):
            raise TypeError("plaintext and aad must be bytes")
        if len(plaintext) + len(aad) > self._max_message_size:
            raise MessageTooLarge(
                f"the message would exceed the {self._max_message_size}-byte limit"
            )
        with self._lock:
            self._check_group(group_id)
            context, me = self._context(group_id), self._own_leaf(group_id)
            content = FramedContent(
                group_id, context.epoch, Sender(SenderType.MEMBER, me), aad, plaintext
            )
            auth = sign_content(
                self._cs, WireFormat.PRIVATE_MESSAGE, content, self._sig_priv, context
            )
            with self._storage.operation():
                message = self._protect(group_id, auth, self._config(group_id))
                if len(message) > self._max_message_size:  # rolls the ratchet back
                    raise MessageTooLarge(
                        f"the message would exceed the {self._max_message_size}-byte limit"
                    )
                return message

    def _propose(self, gid: bytes, body: ProposalBody) -> bytes:
        """Sign, queue (by reference) and frame one of our own proposals."""
        self._check_group(gid)
        self._refuse_if_pending(gid)
        context, me, config = self._context(gid), self._own_leaf(gid), self._config(gid)
        content = FramedContent(
            gid, context.epoch, Sender(SenderType.MEMBER, me), b"", Proposal(body)
        )
        auth = sign_content(self._cs, config.handshake, content, self._sig_priv, context)
        ref = self._cs.make_proposal_ref(auth.to_bytes())
        self._storage.queue_proposal(gid, ref, auth.to_bytes())
        message = self._protect(gid, auth, config)
        if len(message) > self._max_message_size:  # the caller's operation rolls back
            raise MessageTooLarge(
                f"the proposal exceeds the {self._max_message_size}-byte limit"
            )
        return message

    def propose_add(self, group_id: bytes, key_package: bytes) -> bytes:
        """A proposal (by reference) to add the member of ``key_package``."""
        kp = _key_package(self._bounded(key_package))
        with self._lock, self._storage.operation():
            self._check_group(group_id)
            validate_key_package(
                self._cs,
                kp,
                self._tree(group_id),
                self._context(group_id),
                now=self._now(),
                validator=self._validator,
            )
            return self._propose(group_id, Add(kp))

    def propose_remove(self, group_id: bytes, leaf_index: int) -> bytes:
        """A proposal to remove the member at ``leaf_index`` (our own to leave)."""
        with self._lock, self._storage.operation():
            self._check_group(group_id)
            tree = self._tree(group_id)
            if not 0 <= leaf_index < tree.n_leaves or tree.leaf(leaf_index) is None:
                raise InvalidProposal("no member at that leaf index")
            return self._propose(group_id, Remove(leaf_index))

    def propose_update(self, group_id: bytes) -> bytes:
        """A proposal replacing our leaf with a fresh HPKE key; the key is stored first."""
        with self._lock, self._storage.operation():
            self._check_group(group_id)
            tree, me = self._tree(group_id), self._own_leaf(group_id)
            old = tree.leaf(me)
            assert old is not None
            enc_priv, enc_pub = self._cs.hpke.generate_key_pair()
            leaf = replace(
                old,
                encryption_key=enc_pub,
                leaf_node_source=LeafNodeSource.UPDATE,
                lifetime=None,
                parent_hash=b"",
            ).signed(self._cs, self._sig_priv, group_id, me)
            self._storage.write_encryption_key_pair(enc_pub, encode_secret(enc_priv))
            self._storage.append_own_leaf_node(group_id, leaf.to_bytes())
            return self._propose(group_id, Update(leaf))

    def propose_external_psk(self, group_id: bytes, psk_id: bytes) -> bytes:
        """A proposal injecting a stored external PSK into the next epoch."""
        with self._lock, self._storage.operation():
            if self._storage.psk(psk_id) is None:
                raise KeyNotFound("no external PSK with that id is stored")
            psk = PreSharedKeyID(PskType.EXTERNAL, new_psk_nonce(self._cs), psk_id=psk_id)
            return self._propose(group_id, PreSharedKey(psk))

    def propose_resumption_psk(self, group_id: bytes, epoch: int) -> bytes:
        """A proposal injecting the resumption PSK of one of the group's retained epochs."""
        with self._lock, self._storage.operation():
            self._check_group(group_id)
            row = self._storage.resumption_psk_store(group_id)
            kept = {e for e, _ in decode_pairs(row)} if row is not None else set()
            if epoch not in kept:
                raise KeyNotFound("the resumption PSK of that epoch is not kept")
            psk = PreSharedKeyID(
                PskType.RESUMPTION,
                new_psk_nonce(self._cs),
                usage=ResumptionPskUsage.APPLICATION,
                psk_group_id=group_id,
                psk_epoch=epoch,
            )
            return self._propose(group_id, PreSharedKey(psk))

    def propose_group_context_extensions(
        self, group_id: bytes, extensions: Sequence[Extension]
    ) -> bytes:
        """A proposal replacing the GroupContext extensions.

        Raises:
            InvalidProposal: some member could not accept them (receivers would refuse it).
        """
        with self._lock, self._storage.operation():
            self._check_group(group_id)
            validate_group_context_extensions(tuple(extensions), self._tree(group_id))
            return self._propose(group_id, GroupContextExtensions(tuple(extensions)))

    def _queued(self, gid: bytes) -> dict[bytes, PendingProposal]:
        out = {}
        for ref, raw in self._storage.queued_proposals(gid):
            auth = decode_exact(raw, AuthenticatedContent.decode)
            body = auth.content.content
            assert isinstance(body, Proposal)
            out[ref] = PendingProposal(auth.content.sender.index, body, ref)
        return out

    def clear_pending_proposals(self, group_id: bytes) -> None:
        """Forget every proposal received or sent in the current epoch and not committed yet.

        A way out when a peer queued proposals the application no longer wants committed;
        ordinary use never needs it (invalid proposals are refused on receipt, and a commit
        leaves out queued ones that became invalid).  A later commit by another member that
        references a forgotten proposal is then refused by us.
        """
        with self._lock, self._storage.operation():
            self._check_group(group_id)
            self._storage.clear_proposal_queue(group_id)

    def commit(
        self,
        group_id: bytes,
        *,
        add: Sequence[bytes] = (),
        remove: Sequence[int] = (),
        psks: Sequence[PreSharedKeyID] = (),
        extensions: Sequence[Extension] | None = None,
        force_path: bool = False,
        aad: bytes = b"",
        pending: bool = False,
    ) -> tuple[bytes, bytes | None]:
        """Commit the queued proposals plus ``add``/``remove``/``psks``/``extensions`` inline.

        By default the commit is applied to our state at once (we move to the next epoch
        before return).  With ``pending=True`` it is stored as our pending commit instead
        (durable, not applied): send it, then :meth:`merge_pending_commit` when the delivery
        service accepts it or :meth:`clear_pending_commit` when it rejects it.

        Returns:
            ``(commit, welcome)`` as MLSMessage bytes; ``welcome`` is ``None`` without adds.

        Raises:
            PendingCommitExists: a commit of ours is still pending in this group.
        """
        kps = [_key_package(self._bounded(k)) for k in add]
        with self._lock:
            self._refuse_if_pending(group_id)
            group = self._group(group_id)
            me = group.private.leaf_index
            config = self._config(group_id)
            inline = [PendingProposal(me, Proposal(Remove(i))) for i in remove]
            inline += [PendingProposal(me, Proposal(Add(kp))) for kp in kps]
            inline += [PendingProposal(me, Proposal(PreSharedKey(p))) for p in psks]
            if extensions is not None:
                gce = GroupContextExtensions(tuple(extensions))
                inline.append(PendingProposal(me, Proposal(gce)))
            proposals = select_committable(
                self._cs,
                group.tree,
                group.context,
                list(self._queued(group_id).values()),
                me,
                inline=inline,
                now=self._now(),
                validator=self._validator,
                psk_lookup=self._psk_lookup(group_id),
            )
            proposals += inline
            output = create_commit(
                group,
                self._sig_priv,
                proposals,
                self._psk_lookup(group_id),
                wire_format=config.handshake,
                force_path=force_path,
                ratchet_tree_extension=config.ratchet_tree_extension,
                authenticated_data=aad,
                now=self._now(),
                validator=self._validator,
                credential=self._identity.credential,
            )
            with self._storage.operation():
                commit = self._protect(group_id, output.auth, config)
                welcome = None if output.welcome is None else MLSMessage(output.welcome).to_bytes()
                if max(len(commit), len(welcome or b"")) > self._max_message_size:
                    raise MessageTooLarge(  # nothing is kept: receivers would refuse it
                        f"the commit or its Welcome exceeds the {self._max_message_size}-byte limit"
                    )
                tag = output.auth.auth.confirmation_tag
                assert tag is not None
                if pending:
                    record = PendingCommit(commit, welcome, group.context.epoch)
                    row = PendingCommitRow(record, config, tag, output.group)
                    self._storage.write(CATEGORY_PENDING_COMMIT, group_id, row.to_bytes())
                else:
                    self._write_epoch(group_id, output.group, tag, config, group)
        return commit, welcome

    # ------------------------------------------------------------------ pending commits

    def _pending_row(self, gid: bytes) -> PendingCommitRow | None:
        if not isinstance(gid, bytes):
            raise TypeError(f"group id must be bytes, not {type(gid).__name__}")
        return self._decoded(CATEGORY_PENDING_COMMIT, gid, PendingCommitRow.from_bytes)

    def _refuse_if_pending(self, gid: bytes) -> None:
        if self._pending_row(gid) is not None:
            raise PendingCommitExists(
                "a commit of ours is pending in this group: merge or clear it first"
            )

    def _drop_pending(self, gid: bytes) -> bool:
        """Delete our pending commit, if any (another commit took its epoch)."""
        if self._storage.read(CATEGORY_PENDING_COMMIT, gid) is None:
            return False
        self._storage.delete(CATEGORY_PENDING_COMMIT, gid)
        return True

    def _merge(self, gid: bytes, row: PendingCommitRow) -> int:
        """Enter the epoch a pending commit leads to; the caller holds an operation."""
        s = self._storage
        if row.pending.external:
            if s.read(cat.GROUP_STATE, gid) is not None:
                self._forget(gid)  # a resync replaces whatever local state we still had
            s.write_mls_join_config(gid, row.config.to_bytes())
            self._write_epoch(gid, row.next_epoch, row.confirmation_tag, row.config, None)
        else:
            self._check_group(gid)
            current = self._context(gid).epoch
            if current != row.pending.epoch:
                raise EpochMismatch(
                    f"the pending commit is for epoch {row.pending.epoch}, the group is at "
                    f"{current}"
                )
            previous = self._group(gid)
            config = self._config(gid)
            self._write_epoch(gid, row.next_epoch, row.confirmation_tag, config, previous)
        s.delete(CATEGORY_PENDING_COMMIT, gid)
        return row.next_epoch.context.epoch

    def pending_commit(self, group_id: bytes) -> PendingCommit | None:
        """Our commit awaiting the delivery service, byte-identical for a resend; or ``None``.

        After a restart this is how the application finds out what it had sent (or was
        about to send) when it went down: resend exactly these bytes, never a new commit.
        """
        with self._lock:
            row = self._pending_row(group_id)
            return None if row is None else row.pending

    def merge_pending_commit(self, group_id: bytes) -> int:
        """The delivery service accepted our pending commit: apply it; returns the new epoch.

        One storage operation: the new epoch, the erasure of the old epoch's keys and the
        deletion of the pending row land together.

        Raises:
            NoPendingCommit: there is none (never made, already merged or cleared).
            EpochMismatch: the group moved on without it (it can only be cleared).
        """
        with self._lock:
            row = self._pending_row(group_id)
            if row is None:
                raise NoPendingCommit("no pending commit of ours in that group")
            with self._storage.operation():
                return self._merge(group_id, row)

    def clear_pending_commit(self, group_id: bytes) -> None:
        """The delivery service rejected our pending commit: forget it, stay in this epoch.

        The proposals it committed stay queued; inline changes (adds, removes, key
        updates) are lost and have to be made again in a new commit.

        Raises:
            NoPendingCommit: there is none.
        """
        with self._lock:
            if self._pending_row(group_id) is None:
                raise NoPendingCommit("no pending commit of ours in that group")
            with self._storage.operation():
                self._storage.delete(CATEGORY_PENDING_COMMIT, group_id)

    # ------------------------------------------------------------------ leaving, external joins

    def drop_group(self, group_id: bytes) -> None:
        """Forget a group locally: every row of it is deleted, in one storage operation.

        Nothing is sent; the other members still count us in until one of them removes
        us.  Afterwards we can join the same group id again (Welcome or external commit).

        Raises:
            UnknownGroup: we hold neither the group nor a pending external join of it.
        """
        with self._lock:
            has_pending = self._pending_row(group_id) is not None
            with self._storage.operation():
                if self._storage.read(cat.GROUP_STATE, group_id) is not None:
                    self._forget(group_id)
                elif has_pending:
                    self._storage.delete(CATEGORY_PENDING_COMMIT, group_id)
                else:
                    raise UnknownGroup("this engine is not a member of that group")

    def ratchet_tree(self, group_id: bytes) -> bytes:
        """The group's public ratchet tree, for joiners of a Welcome or GroupInfo without one."""
        with self._lock:
            self._check_group(group_id)
            return self._tree(group_id).to_bytes()

    def group_info(self, group_id: bytes, *, with_ratchet_tree: bool = True) -> bytes:
        """A GroupInfo (MLSMessage) of the current epoch, signed by us, for external joins.

        It carries the ``external_pub`` extension, and the ``ratchet_tree`` extension when
        ``with_ratchet_tree`` (otherwise joiners need :meth:`ratchet_tree` out of band).  It
        is valid for one epoch: publish a new one after every commit.
        """
        with self._lock:
            self._check_group(group_id)
            tag = self._storage.confirmation_tag(group_id)
            if tag is None:
                raise UnknownGroup("the group's confirmation tag is missing")
            info = sign_group_info(
                self._cs,
                self._context(group_id),
                self._tree(group_id),
                self._secrets(group_id),
                tag,
                self._own_leaf(group_id),
                self._sig_priv,
                with_ratchet_tree=with_ratchet_tree,
            )
            return MLSMessage(info).to_bytes()

    def join_by_external_commit(
        self,
        group_info: bytes,
        *,
        ratchet_tree: bytes | None = None,
        resync: bool = False,
        config: GroupConfig | None = None,
        aad: bytes = b"",
        pending: bool = False,
    ) -> tuple[bytes, bytes]:
        """Join the group of a GroupInfo by an external commit; returns (group id, commit).

        The commit (a PublicMessage) must reach the group through the delivery service.  By
        default we enter the new epoch at once; with ``pending=True`` the join is kept as a
        pending commit until :meth:`merge_pending_commit` (or the echo of the commit) and
        :meth:`clear_pending_commit` discards it.

        Args:
            ratchet_tree: the group's tree, when the GroupInfo has no ``ratchet_tree``
                extension.
            resync: remove our own old leaf (the one holding our credential) in the same
                commit: how a member that lost its state comes back.  Local state of the
                group, if any, is replaced.

        Raises:
            InvalidMessage: not a GroupInfo, no ``external_pub``, we are already a member
                (without ``resync``), or no old leaf of ours to resync.
            InvalidTree/CryptoError/InvalidLeafNode: the GroupInfo or tree does not verify.
            PendingCommitExists: a commit of ours is pending in that group.
        """
        msg = _parse(group_info)
        if not isinstance(msg.body, GroupInfo):
            raise InvalidMessage("not a GroupInfo")
        info = msg.body
        if info.group_context.cipher_suite != self._cs.suite_id:
            raise InvalidMessage("the group uses another cipher suite than our identity")
        config = GroupConfig() if config is None else config
        tree = verify_group_info(
            info,
            None if ratchet_tree is None else RatchetTree.from_bytes(ratchet_tree),
            validator=self._validator,
        )
        gid = _outside_group_id(info.group_context.group_id)
        with self._lock:
            self._refuse_if_pending(gid)
            member = self._storage.read(cat.GROUP_STATE, gid) is not None
            if member and not resync:
                raise InvalidMessage("this engine is already a member of that group")
            old_leaf = None
            if resync:
                old_leaf = next(
                    (
                        i
                        for i in tree.member_leaves()
                        if (leaf := tree.leaf(i)) is not None
                        and self._validator.valid_successor(
                            leaf.credential, self._identity.credential
                        )
                    ),
                    None,
                )
                if old_leaf is None:
                    raise InvalidMessage("resync: no leaf of ours in the group to replace")
            output = create_external_commit(
                info,
                tree,
                sig_priv=self._sig_priv,
                signature_key=self._identity.signature_key,
                credential=self._identity.credential,
                capabilities=self._capabilities(()),
                resync_leaf=old_leaf,
                authenticated_data=aad,
                validator=self._validator,
            )
            commit = output.message()
            tag = output.auth.auth.confirmation_tag
            assert tag is not None
            row = PendingCommitRow(
                PendingCommit(commit, None, info.group_context.epoch, external=True),
                config,
                tag,
                output.group,
            )
            with self._storage.operation():
                if pending:
                    self._storage.write(CATEGORY_PENDING_COMMIT, gid, row.to_bytes())
                else:
                    self._merge(gid, row)
        return gid, commit

    # ------------------------------------------------------------------ receiving

    def process(self, group_id: bytes, message: bytes) -> Processed:
        """Verify and apply one group message (MLSMessage); one storage operation.

        Application messages of the ``max_past_epochs`` previous epochs are still accepted;
        handshake messages only in the current epoch.

        Raises:
            EpochMismatch, InvalidMessage, InvalidProposal, InvalidLeafNode, CryptoError,
            KeyNotFound (replayed or too-distant generation): nothing is changed.
        """
        header = peek_header(self._bounded(message))
        with self._lock:
            row = self._pending_row(group_id)
            if row is not None and message == row.pending.commit:
                # The delivery service echoed our own pending commit: it was accepted.
                with self._storage.operation():
                    self._merge(group_id, row)
                me = self._own_leaf(group_id)
                return Processed(
                    ProcessedKind.COMMIT,
                    me,
                    self.identity,
                    row.pending.epoch,
                    merged_pending_commit=True,
                )
            self._check_group(group_id)
            self._precheck(group_id, header)
            msg = _parse(message)
            body = msg.body
            if not isinstance(body, PublicMessage | PrivateMessage):
                raise InvalidMessage("not a group message (Welcome, GroupInfo or key package?)")
            msg_gid = body.content.group_id if isinstance(body, PublicMessage) else body.group_id
            if msg_gid != group_id:
                raise InvalidMessage("the message belongs to another group")
            with self._storage.operation():
                if isinstance(body, PrivateMessage):
                    return self._process_private(group_id, body)
                return self._process_public(group_id, body, message)

    def _bounded(self, message: bytes) -> bytes:
        """Refuse a message over the size limit before a single byte of it is parsed."""
        if not isinstance(message, bytes):
            raise TypeError(f"message must be bytes, not {type(message).__name__}")
        if len(message) > self._max_message_size:
            raise MessageTooLarge(
                f"message of {len(message)} bytes exceeds the {self._max_message_size}-byte limit"
            )
        return message

    def _precheck(self, gid: bytes, header: MessageHeader) -> None:
        """The cheap checks, from the header alone, before the body is decoded at all.

        Group, epoch, content type and (for a PublicMessage) the sender: a stranger's or a
        stale message is refused for the price of a few bytes of parsing.
        """
        if header.wire_format not in (WireFormat.PUBLIC_MESSAGE, WireFormat.PRIVATE_MESSAGE):
            raise InvalidMessage("not a group message (Welcome, GroupInfo or key package?)")
        if header.group_id != gid:
            raise InvalidMessage("the message belongs to another group")
        current = self._context(gid).epoch
        if header.wire_format == WireFormat.PRIVATE_MESSAGE:
            if header.epoch != current and not (
                header.content_type == ContentType.APPLICATION
                and header.epoch is not None
                and header.epoch < current
            ):
                raise EpochMismatch(f"message for epoch {header.epoch}, the group is at {current}")
            return
        if header.epoch != current:
            raise EpochMismatch(f"handshake for epoch {header.epoch}, the group is at {current}")
        if header.content_type == ContentType.APPLICATION:
            raise InvalidMessage("application data must not be sent as a PublicMessage")
        sender = header.sender
        if sender is not None and sender.sender_type == SenderType.MEMBER:
            if sender.index == self._own_leaf(gid):
                raise InvalidMessage("a message from ourselves")
            if self._epoch_member(gid, current, sender.index)[1] is None:
                raise InvalidMessage("the sender is not a member")

    def _process_private(self, gid: bytes, msg: PrivateMessage) -> Processed:
        cs = self._cs
        current = self._context(gid).epoch
        if msg.epoch != current and not (
            msg.content_type == ContentType.APPLICATION and msg.epoch < current
        ):
            raise EpochMismatch(f"message for epoch {msg.epoch}, the group is at {current}")
        row = self._epoch_row(gid, msg.epoch)
        if row is None:
            raise EpochMismatch("the secrets of that epoch are no longer kept")
        sender_data = decrypt_sender_data(cs, msg, row.sender_data_secret)
        sender = sender_data.leaf_index
        if sender == self._own_leaf(gid):
            raise InvalidMessage("a message from ourselves")
        context, member = self._epoch_member(gid, msg.epoch, sender)
        if member is None:
            raise InvalidMessage("the sender is not a member in that epoch")
        row, before = self._secret_tree(gid, msg.epoch, sender)
        key, identity = member
        auth, after = unprotect_private(
            cs, msg, before, row.sender_data_secret, context, {sender: key}, sender_data
        )
        self._save_secret_tree(gid, msg.epoch, row, before, after)
        return self._handle(gid, auth, identity)

    def _process_public(self, gid: bytes, msg: PublicMessage, received: bytes) -> Processed:
        context = self._context(gid)
        sender = msg.content.sender
        if msg.content.epoch != context.epoch:
            raise EpochMismatch(
                f"handshake for epoch {msg.content.epoch}, the group is at {context.epoch}"
            )
        if sender.sender_type == SenderType.NEW_MEMBER_COMMIT:
            return self._process_external_commit(gid, msg)
        if sender.sender_type == SenderType.EXTERNAL:
            return self._process_external_proposal(gid, msg)
        if sender.sender_type != SenderType.MEMBER:
            raise InvalidMessage("new-member proposals are not supported")
        if sender.index == self._own_leaf(gid):
            raise InvalidMessage("a message from ourselves")
        _, member = self._epoch_member(gid, context.epoch, sender.index)
        if member is None:
            raise InvalidMessage("the sender is not a member")
        key, identity = member
        auth = unprotect_public(
            self._cs, msg, self._secrets(gid).membership_key, context, key, received=received
        )
        return self._handle(gid, auth, identity)

    def _handle(self, gid: bytes, auth: AuthenticatedContent, identity: bytes) -> Processed:
        content = auth.content
        sender, epoch = content.sender.index, content.epoch
        body = content.content
        if isinstance(body, bytes):
            return Processed(ProcessedKind.APPLICATION, sender, identity, epoch, body)
        if isinstance(body, Proposal):
            self._check_proposal(gid, sender, body)
            ref = self._cs.make_proposal_ref(auth.to_bytes())
            self._storage.queue_proposal(gid, ref, auth.to_bytes())
            return Processed(ProcessedKind.PROPOSAL, sender, identity, epoch)
        group = self._group(gid)
        proposals = resolve_proposals(body, sender, self._queued(gid))
        new = apply_commit(
            group,
            auth,
            proposals,
            self._psk_lookup(gid),
            leaf_key=self._leaf_key,
            now=self._now(),
            validator=self._validator,
        )
        return self._adopt_commit(gid, group, new, auth, sender, identity, epoch)

    def _adopt_commit(
        self,
        gid: bytes,
        old: GroupEpoch,
        new: GroupEpoch | None,
        auth: AuthenticatedContent,
        sender: int,
        identity: bytes,
        epoch: int,
    ) -> Processed:
        """Move to the epoch a verified commit made (or forget a group that removed us).

        Shared by member and external commits, so both drop our pending commit and write
        the new epoch the same way.
        """
        if new is None:
            self._forget(gid)
            return Processed(ProcessedKind.COMMIT, sender, identity, epoch, removed=True)
        tag = auth.auth.confirmation_tag
        if tag is None:  # decoding requires it on a commit; never trust that alone
            raise InvalidMessage("a commit without a confirmation tag")
        cleared = self._drop_pending(gid)
        self._write_epoch(gid, new, tag, self._config(gid), old)
        return Processed(
            ProcessedKind.COMMIT, sender, identity, epoch, cleared_pending_commit=cleared
        )

    def _process_external_commit(self, gid: bytes, msg: PublicMessage) -> Processed:
        """A commit from a joiner outside the group (§12.4.3.2)."""
        body = msg.content.content
        if not isinstance(body, Commit) or body.path is None:
            raise InvalidMessage("a new member may only send a commit with an UpdatePath")
        context = self._context(gid)
        leaf = body.path.leaf_node
        auth = unprotect_public(self._cs, msg, b"", context, leaf.signature_key)
        group = self._group(gid)
        new, joiner = process_external_commit(
            group, auth, self._psk_lookup(gid), validator=self._validator
        )
        identity, epoch = self.identity_of(leaf.credential), context.epoch
        return self._adopt_commit(gid, group, new, auth, joiner, identity, epoch)

    def _process_external_proposal(self, gid: bytes, msg: PublicMessage) -> Processed:
        """A proposal from a sender of the ``external_senders`` extension (§12.1.8.1)."""
        context = self._context(gid)
        senders = decode_external_senders(context.extensions)
        index = msg.content.sender.index
        if index >= len(senders):
            raise InvalidMessage("the group has no external sender with that index")
        body = msg.content.content
        if not isinstance(body, Proposal):
            raise InvalidMessage("an external sender may only send proposals")
        check_external_sender_proposal(body)
        sender = senders[index]
        auth = unprotect_public(self._cs, msg, b"", context, sender.signature_key)
        self._check_proposal(gid, index, body)
        ref = self._cs.make_proposal_ref(auth.to_bytes())
        self._storage.queue_proposal(gid, ref, auth.to_bytes())
        return Processed(
            ProcessedKind.PROPOSAL,
            index,
            self.identity_of(sender.credential),
            context.epoch,
            external_sender=True,
        )

    def _check_proposal(self, gid: bytes, sender: int, proposal: Proposal) -> None:
        """§12.1 checks a receiver can make before the proposal is committed."""
        validate_received_proposal(
            self._cs,
            self._tree(gid),
            self._context(gid),
            proposal,
            sender,
            now=self._now(),
            validator=self._validator,
            psk_lookup=self._psk_lookup(gid),
        )


def _expand_raw_label(
    cs: CipherSuite, secret: bytes, label: bytes, context: bytes, length: int
) -> bytes:
    """ExpandWithLabel with a byte-string label (the exporter takes arbitrary labels)."""
    w = Writer()
    w.u16(length)
    w.opaque(b"MLS 1.0 " + label)
    w.opaque(context)
    return cs.expand(secret, w.getvalue(), length)


def _parse(data: bytes) -> MLSMessage:
    if not isinstance(data, bytes):
        raise TypeError(f"message must be bytes, not {type(data).__name__}")
    return decode_exact(data, MLSMessage.decode)


def _key_package(data: bytes) -> KeyPackage:
    msg = _parse(data)
    if not isinstance(msg.body, KeyPackage):
        raise InvalidMessage("not a key package")
    return msg.body
