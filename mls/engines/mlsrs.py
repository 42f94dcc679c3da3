"""AWS mls-rs (binding ``mls_rs_uniffi``, extra ``[mls-rs]``) behind :class:`mls.engine.MlsEngine`.

State flows one way: engine → :class:`mls.mlsrs.VaultGroupStateStorage` →
:class:`mls.storage.GranularStorage`; the client above flushes it to the vault.

What the binding cannot do is refused with :class:`mls.errors.Unsupported`: cipher suites
other than 1, key-package lifetime and last-resort key packages, Update / PSK /
GroupContextExtensions proposals, PSKs and extensions in commits, adds and removes in the
same commit, pending commits, external joins and GroupInfo, joining with an out-of-band
ratchet tree, PrivateMessage handshakes, padding, authenticated data on send, and the epoch
authenticator and pending proposals in group inspection.

Known limit of the binding: key-package private keys live only in the engine's memory.
Each published key package's reference is recorded in the storage with the id of the
process session that made it, so after a restart :meth:`MlsRsAdapter.lost_key_packages`
names the ones that can no longer be joined with, and a Welcome for one of them raises
:class:`mls.errors.KeyPackageLost`.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Iterator, Sequence
from typing import Any

from keystore.errors import KeystoreError
from mls import errors
from mls.engine import (
    DEFAULT_CIPHER_SUITE,
    EngineName,
    EngineReceived,
    ExternalPsk,
    GroupContextExtension,
    GroupSettings,
    GroupState,
    LostKeyPackage,
    Member,
    PendingCommit,
    ReceivedKind,
)
from mls.engines.wire import Reader, encode_varint
from mls.mlsrs import (
    CATEGORY_GROUPS,
    TreeMember,
    VaultGroupStateStorage,
    key_package_ref,
    load_binding,
    new_group_state_storage,
    ratchet_tree_members,
    welcome_key_package_refs,
)
from mls.storage import GranularStorage

__all__ = ["CATEGORY_IDENTITY", "IDENTITY_ROW", "NAME", "RECEIPT_CATEGORY", "MlsRsAdapter"]

NAME: EngineName = "mls-rs"
CATEGORY_IDENTITY = "mlsrs/v1/identity"
CATEGORY_KEY_PACKAGES = "mlsrs/v1/key_package"
#: Outcomes of recently processed messages (key: SHA-256 of group id and message).
RECEIPT_CATEGORY = "mlsrs/v1/receipt"
_IDENTITY_KEY = b"signature"
#: Where an mls-rs client's identity lives: its presence says a vault belongs to this engine.
IDENTITY_ROW = (CATEGORY_IDENTITY, _IDENTITY_KEY)
_RECORD_FORMAT = 1
_SESSION_LEN = 16
_KP_RECORD = struct.Struct(">B16sQ")  # format, session id, created (unix seconds)
_BASIC_CREDENTIAL = 1


def _encode_identity_record(identity: bytes, public: bytes, secret: bytes) -> bytes:
    parts = b"".join(len(p).to_bytes(2, "big") + p for p in (identity, public, secret))
    return bytes((_RECORD_FORMAT,)) + parts


def _decode_identity_record(row: bytes) -> tuple[bytes, bytes, bytes]:
    if not row or row[0] != _RECORD_FORMAT:
        raise errors.NotAnMlsVault("the vault's MLS identity record has an unknown format")
    out: list[bytes] = []
    pos = 1
    for _ in range(3):
        if pos + 2 > len(row):
            raise errors.NotAnMlsVault("the vault's MLS identity record is truncated")
        n = int.from_bytes(row[pos : pos + 2], "big")
        out.append(row[pos + 2 : pos + 2 + n])
        pos += 2 + n
    if pos != len(row) or any(len(p) == 0 for p in out):
        raise errors.NotAnMlsVault("the vault's MLS identity record is malformed")
    return out[0], out[1], out[2]


def _snapshot_epoch(snapshot: bytes, group_id: bytes) -> tuple[int, int]:
    """``(epoch, cipher suite)`` from the head of an mls-rs group snapshot.

    The snapshot starts with its own u16 version, then the GroupContext as RFC 9420
    encodes it (version, suite, group id, epoch); the group id is checked so a layout
    change in mls-rs is detected rather than misread.
    """
    r = Reader(snapshot)
    r.uint(2)  # snapshot version
    r.uint(2)  # protocol version
    suite = r.uint(2)
    if r.opaque() != group_id:
        raise errors.MlsEngineError("mls-rs group snapshot has an unexpected layout")
    return r.uint(8), suite


def _basic_credential(identity: bytes) -> bytes:
    """A basic credential as RFC 9420 encodes it (the tree parser keeps only the identity)."""
    return _BASIC_CREDENTIAL.to_bytes(2, "big") + encode_varint(len(identity)) + identity


class MlsRsAdapter:
    """:class:`mls.engine.MlsEngine` on mls-rs.  See the module docstring.

    Args:
        storage: a storage holding an mls-rs identity (see :meth:`create`).
        epoch_retention: past epochs kept per group for late messages.
        max_message_size: unused (the binding has no bound; the client enforces it).
        credential_validator: must be ``None``: the binding's identity policy is fixed.

    Raises:
        MlsRsUnavailable: the binding is not installed.
        NotAnMlsVault: the storage holds no (readable) mls-rs identity.
        Unsupported: a credential validator was given.
    """

    def __init__(
        self,
        storage: GranularStorage,
        *,
        epoch_retention: int,
        max_message_size: int,
        credential_validator: object | None,
    ) -> None:
        if credential_validator is not None:
            raise errors.Unsupported(NAME, "a custom credential validator")
        binding = load_binding()
        row = storage.read(CATEGORY_IDENTITY, _IDENTITY_KEY)
        if row is None:
            raise errors.NotAnMlsVault("this vault holds no mls-rs MLS identity")
        self._binding = binding
        self._storage = storage
        self._session = os.urandom(_SESSION_LEN)
        self._identity, public, secret = _decode_identity_record(row)
        self._public = public
        self._suite = binding.CipherSuite.CURVE25519_AES128
        keypair = binding.SignatureKeypair(
            cipher_suite=self._suite,
            public_key=binding.SignaturePublicKey(bytes=public),
            secret_key=binding.SignatureSecretKey(bytes=secret),
        )
        self._store: VaultGroupStateStorage = new_group_state_storage(
            storage, retention=epoch_retention
        )
        config = binding.ClientConfig(
            group_state_storage=self._store, use_ratchet_tree_extension=True
        )
        with self._engine("start the engine"):
            self._client: Any = binding.Client(self._identity, keypair, config)
        self._groups: dict[bytes, Any] = {}
        self._members: dict[bytes, list[TreeMember]] = {}
        self._signing_identities: dict[tuple[bytes, bytes], Any] = {}

    @classmethod
    def create(
        cls,
        storage: GranularStorage,
        identity: bytes,
        *,
        cipher_suite: int,
        epoch_retention: int,
        max_message_size: int,
        credential_validator: object | None,
        credential: object | None = None,
    ) -> MlsRsAdapter:
        """Generate a signature key pair, store it as the identity row, start on it."""
        if credential is not None:
            raise errors.Unsupported(NAME, "X.509 credentials")
        if cipher_suite != DEFAULT_CIPHER_SUITE:
            raise errors.Unsupported(NAME, f"cipher suite {cipher_suite} (only suite 1)")
        binding = load_binding()
        keypair = binding.generate_signature_keypair(binding.CipherSuite.CURVE25519_AES128)
        record = _encode_identity_record(
            identity, bytes(keypair.public_key.bytes), bytes(keypair.secret_key.bytes)
        )
        with storage.operation():
            storage.write(CATEGORY_IDENTITY, _IDENTITY_KEY, record)
        return cls(
            storage,
            epoch_retention=epoch_retention,
            max_message_size=max_message_size,
            credential_validator=credential_validator,
        )

    @property
    def name(self) -> EngineName:
        """``"mls-rs"``."""
        return NAME

    @property
    def identity(self) -> bytes:
        """Our basic-credential identity."""
        return self._identity

    @property
    def cipher_suite(self) -> int:
        """Always suite 1, the only one the binding offers."""
        return DEFAULT_CIPHER_SUITE

    # ------------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _engine(self, what: str, *, invalid: bool = False) -> Iterator[None]:
        """Translate binding failures into :mod:`mls.errors`.

        A failure inside a storage callback comes back from the binding as an opaque
        error; the original (e.g. a vault error) is re-raised instead.  ``invalid``: the
        input was a message from outside, so a refusal is :class:`InvalidMessage`.
        """
        binding = self._binding
        store: VaultGroupStateStorage | None = getattr(self, "_store", None)
        if store is not None:
            store.callback_error = None
        try:
            yield
        except (errors.MlsError, KeystoreError, TypeError, ValueError):
            raise
        except (binding.Error, binding.InternalError) as exc:
            cause = store.callback_error if store is not None else None
            if isinstance(cause, errors.MlsError | KeystoreError):
                raise cause from exc
            kind = errors.InvalidMessage if invalid else errors.MlsEngineError
            raise kind(f"mls-rs could not {what}: {exc}") from exc

    def rolled_back(self) -> None:
        """Cached groups may be ahead of the rolled-back storage: reload them on next use."""
        self._groups.clear()
        self._members.clear()
        self._store.reindex()

    def _group(self, group_id: bytes) -> Any:
        group = self._groups.get(group_id)
        if group is None:
            if self._storage.read(CATEGORY_GROUPS, group_id) is None:
                raise errors.UnknownGroup("this client is not a member of that group")
            with self._engine("load the group"):
                group = self._client.load_group(group_id)
            self._groups[group_id] = group
        return group

    def _save(self, group: Any) -> bytes:
        """``write_to_storage`` and return the group id the adapter saw."""
        self._store.last_written = None
        with self._engine("save the group"):
            group.write_to_storage()
        group_id = self._store.last_written
        if group_id is None:
            raise errors.MlsEngineError("mls-rs did not write the group state")
        return group_id

    def _message(self, data: bytes, what: str) -> Any:
        """Parse strictly: the binding ignores trailing bytes, the native engine does not."""
        with self._engine(f"parse the {what}", invalid=True):
            message = self._binding.Message.from_bytes(data)
            if bytes(message.to_bytes()) != data:
                raise errors.InvalidMessage(f"the {what} has trailing bytes")
        return message

    def _commit_and_apply(self, group_id: bytes, output: Any) -> bytes:
        """Apply our own commit at once and save: the caller then sends it."""
        group = self._groups[group_id]
        with self._engine("apply our commit"):
            group.process_incoming_message(output.commit_message)
        self._save(group)
        self._members.pop(group_id, None)
        return bytes(output.commit_message.to_bytes())

    def _signing_identity(self, member: TreeMember) -> Any:
        """An engine ``SigningIdentity`` equal to ``member``'s (cached; ~1 ms to make).

        The binding offers no constructor, so it takes one from a throw-away client
        built on the member's public key (the secret half is never used).
        """
        cache_key = (member.identity, member.signature_key)
        found = self._signing_identities.get(cache_key)
        if found is None:
            b = self._binding
            keypair = b.SignatureKeypair(
                cipher_suite=self._suite,
                public_key=b.SignaturePublicKey(bytes=member.signature_key),
                secret_key=b.SignatureSecretKey(bytes=bytes(64)),
            )
            with self._engine("describe a member"):
                client = b.Client(member.identity, keypair, b.client_config_default())
                found = self._signing_identities[cache_key] = client.signing_identity()
        return found

    def _tree_members(self, group_id: bytes) -> list[TreeMember]:
        """The members of the current epoch, parsed from the exported ratchet tree."""
        table = self._members.get(group_id)
        if table is None:
            group = self._group(group_id)
            with self._engine("export the ratchet tree"):
                tree = bytes(group.export_tree().bytes)
            table = self._members[group_id] = ratchet_tree_members(tree)
        return table

    def _identity_of(self, group_id: bytes, signing_identity: Any) -> bytes | None:
        for member in self._tree_members(group_id):
            if self._signing_identity(member) == signing_identity:
                return member.identity
        return None

    def _default_settings(self, settings: GroupSettings) -> None:
        if settings.handshake != GroupSettings().handshake:
            raise errors.Unsupported(NAME, "PrivateMessage handshakes")
        if settings.padding:
            raise errors.Unsupported(NAME, "padding")

    # ------------------------------------------------------------------ key packages

    def generate_key_package(
        self, *, cipher_suite: int, lifetime: int | None, last_resort: bool
    ) -> bytes:
        """A key package whose private keys live in this process only (recorded as such)."""
        if cipher_suite != DEFAULT_CIPHER_SUITE:
            raise errors.Unsupported(NAME, f"cipher suite {cipher_suite} (only suite 1)")
        if lifetime is not None:
            raise errors.Unsupported(NAME, "a chosen key-package lifetime")
        if last_resort:
            raise errors.Unsupported(NAME, "last-resort key packages")
        with self._engine("generate a key package"):
            kp = bytes(self._client.generate_key_package_message().to_bytes())
        record = _KP_RECORD.pack(_RECORD_FORMAT, self._session, int(time.time()))
        self._storage.write(CATEGORY_KEY_PACKAGES, key_package_ref(kp), record)
        return kp

    def _key_package_records(self) -> dict[bytes, tuple[bytes, int]]:
        out: dict[bytes, tuple[bytes, int]] = {}
        for ref, row in self._storage.items(CATEGORY_KEY_PACKAGES):
            if len(row) != _KP_RECORD.size or row[0] != _RECORD_FORMAT:
                raise errors.InvalidMessage("stored key-package record has an unknown format")
            _, session, created = _KP_RECORD.unpack(row)
            out[ref] = (session, created)
        return out

    def signature_key(self, cipher_suite: int) -> bytes:
        """Our (only) signature public key, of suite 1."""
        if cipher_suite != DEFAULT_CIPHER_SUITE:
            raise errors.Unsupported(NAME, f"cipher suite {cipher_suite} (only suite 1)")
        return self._public

    def set_credential(self, certificates: Sequence[bytes], *, cipher_suite: int) -> None:
        """Refused: the binding's members carry basic credentials only."""
        raise errors.Unsupported(NAME, "X.509 credentials")

    def lost_key_packages(self) -> list[LostKeyPackage]:
        """Key packages published by an earlier process (their private keys are gone)."""
        return sorted(
            (
                LostKeyPackage(ref, created)
                for ref, (session, created) in self._key_package_records().items()
                if session != self._session
            ),
            key=lambda k: (k.created_at, k.ref),
        )

    def discard_lost_key_packages(self) -> int:
        """Forget the records of lost key packages."""
        lost = [k.ref for k in self.lost_key_packages()]
        for ref in lost:
            self._storage.delete(CATEGORY_KEY_PACKAGES, ref)
        return len(lost)

    def store_external_psk(self, psk_id: bytes, secret: bytes) -> None:
        """Refused: the binding has no PSK store."""
        raise errors.Unsupported(NAME, "external PSKs")

    # ------------------------------------------------------------------ groups

    def group_ids(self) -> list[bytes]:
        """The groups with a stored snapshot, sorted."""
        return self._store.group_ids()

    def create_group(
        self, group_id: bytes | None, *, cipher_suite: int, settings: GroupSettings
    ) -> bytes:
        """A new group of one."""
        if cipher_suite != DEFAULT_CIPHER_SUITE:
            raise errors.Unsupported(NAME, f"cipher suite {cipher_suite} (only suite 1)")
        self._default_settings(settings)
        if group_id is not None and self._storage.read(CATEGORY_GROUPS, group_id) is not None:
            raise ValueError("this client already has a group with that id")
        with self._engine("create a group"):
            group = self._client.create_group(group_id)
        gid = self._save(group)
        self._groups[gid] = group
        return gid

    def join(self, welcome: bytes, *, settings: GroupSettings, ratchet_tree: bytes | None) -> bytes:
        """Join from a Welcome for one of this process's key packages."""
        self._default_settings(settings)
        if ratchet_tree is not None:
            raise errors.Unsupported(NAME, "joining with an out-of-band ratchet tree")
        refs = welcome_key_package_refs(welcome)
        message = self._message(welcome, "Welcome")
        records = self._key_package_records()
        ours = [r for r in refs if r in records]
        live = [r for r in ours if records[r][0] == self._session]
        if not live:
            if ours:
                raise errors.KeyPackageLost(
                    "this Welcome is for a key package published by an earlier run of "
                    "this client; its private key was not persisted (mls-rs keeps it in "
                    "memory only). Ask the adder to remove the dead leaf and re-add a "
                    "fresh key package.",
                    ref=ours[0],
                )
            raise errors.UnknownKeyPackage(
                "this Welcome addresses none of this client's unused key packages"
            )
        held = set(self._store.group_ids())
        with self._engine("join the group", invalid=True):
            group = self._client.join_group(None, message).group
        group_id = self._save(group)
        if group_id in held:
            # The group id is only known once mls-rs has saved the new state over ours;
            # raising rolls the caller's storage operation back, so our group is intact.
            # (Anyone holding one of our key packages can make a group of any id.)
            raise errors.InvalidMessage("this client is already a member of that group")
        for ref in live:
            self._storage.delete(CATEGORY_KEY_PACKAGES, ref)
        self._groups[group_id] = group
        self._members.pop(group_id, None)
        return group_id

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
        """Refused: the binding has no external commit."""
        raise errors.Unsupported(NAME, "joining by external commit")

    def group_info(self, group_id: bytes, *, with_ratchet_tree: bool) -> bytes:
        """Refused: the binding exports no GroupInfo."""
        raise errors.Unsupported(NAME, "exporting a GroupInfo")

    def ratchet_tree(self, group_id: bytes) -> bytes:
        """The group's ratchet tree, as the binding exports it."""
        group = self._group(group_id)
        with self._engine("export the ratchet tree"):
            return bytes(group.export_tree().bytes)

    def drop_group(self, group_id: bytes) -> None:
        """Forget the group locally: its snapshot and epoch records."""
        self._group(group_id)  # UnknownGroup if we are not in it
        self._groups.pop(group_id, None)
        self._members.pop(group_id, None)
        self._store.forget_group(group_id)

    def pending_commit(self, group_id: bytes) -> PendingCommit | None:
        """Always ``None``: this engine applies its commits at once (it has no pending ones)."""
        self._group(group_id)
        return None

    def merge_pending_commit(self, group_id: bytes) -> int:
        """Refused: the binding has no pending commits."""
        raise errors.Unsupported(NAME, "pending commits")

    def clear_pending_commit(self, group_id: bytes) -> None:
        """Refused: the binding has no pending commits."""
        raise errors.Unsupported(NAME, "pending commits")

    def members(self, group_id: bytes) -> list[Member]:
        """Members as records, parsed from the exported ratchet tree."""
        return [
            Member(
                m.leaf_index,
                m.identity,
                _basic_credential(m.identity),
                m.signature_key,
                m.encryption_key,
            )
            for m in self._tree_members(group_id)
        ]

    def _snapshot(self, group_id: bytes) -> tuple[int, int]:
        self._group(group_id)
        snapshot = self._storage.read(CATEGORY_GROUPS, group_id)
        if snapshot is None:
            raise errors.UnknownGroup("this client is not a member of that group")
        return _snapshot_epoch(snapshot, group_id)

    def epoch(self, group_id: bytes) -> int:
        """The current epoch, from the stored snapshot (the binding has no getter)."""
        return self._snapshot(group_id)[0]

    def state(self, group_id: bytes) -> GroupState:
        """What the binding lets us see: no epoch authenticator, no pending proposals."""
        epoch, suite = self._snapshot(group_id)
        members = tuple(self.members(group_id))
        own = next((m.leaf_index for m in members if m.signature_key == self._public), None)
        if own is None:
            raise errors.MlsEngineError("our own leaf is not in the group's ratchet tree")
        return GroupState(
            group_id=group_id,
            epoch=epoch,
            cipher_suite=suite,
            own_leaf_index=own,
            members=members,
            epoch_authenticator=None,
            pending_proposals=None,
            settings=GroupSettings(),
        )

    # ------------------------------------------------------------------ handshakes

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
        """One of the binding's three commits: add, remove, or pending proposals plus a path."""
        if pending:
            raise errors.Unsupported(NAME, "pending commits")
        if psks:
            raise errors.Unsupported(NAME, "PSKs in a commit")
        if extensions is not None:
            raise errors.Unsupported(NAME, "GroupContext extensions in a commit")
        if add and remove:
            raise errors.Unsupported(NAME, "adds and removes in the same commit")
        if force_path and (add or remove):
            raise errors.Unsupported(NAME, "a forced path in an add or remove commit")
        group = self._group(group_id)
        if add:
            messages = [self._message(kp, "key package") for kp in add]
            with self._engine("add members", invalid=True):
                output = group.add_members(messages)
            if output.welcome_message is None:
                raise errors.MlsEngineError("mls-rs produced no Welcome for the added members")
            welcome = bytes(output.welcome_message.to_bytes())
            return self._commit_and_apply(group_id, output), welcome
        if remove:
            table = {m.leaf_index: m for m in self._tree_members(group_id)}
            targets = []
            for leaf in remove:
                if leaf not in table:
                    raise errors.InvalidProposal("no member at that leaf index")
                if table[leaf].signature_key == self._public:  # as the native engine says
                    raise errors.InvalidProposal("the committer cannot remove itself")
                targets.append(self._signing_identity(table[leaf]))
            with self._engine("remove members"):
                output = group.remove_members(targets)
            return self._commit_and_apply(group_id, output), None
        with self._engine("commit"):
            output = group.commit()
        welcome_message = output.welcome_message
        joiners = None if welcome_message is None else bytes(welcome_message.to_bytes())
        return self._commit_and_apply(group_id, output), joiners

    def propose_add(self, group_id: bytes, key_package: bytes) -> bytes:
        """An Add proposal."""
        group = self._group(group_id)
        message = self._message(key_package, "key package")
        with self._engine("propose an add", invalid=True):
            proposals = group.propose_add_members([message])
        self._save(group)
        return bytes(proposals[0].to_bytes())

    def propose_remove(self, group_id: bytes, leaf_index: int) -> bytes:
        """A Remove proposal."""
        group = self._group(group_id)
        table = {m.leaf_index: m for m in self._tree_members(group_id)}
        if leaf_index not in table:
            raise errors.InvalidProposal("no member at that leaf index")
        with self._engine("propose a removal"):
            proposals = group.propose_remove_members([self._signing_identity(table[leaf_index])])
        self._save(group)
        return bytes(proposals[0].to_bytes())

    def propose_update(self, group_id: bytes) -> bytes:
        """Refused: the binding has no Update proposal."""
        raise errors.Unsupported(NAME, "Update proposals")

    def propose_external_psk(self, group_id: bytes, psk_id: bytes) -> bytes:
        """Refused: the binding has no PSK proposal."""
        raise errors.Unsupported(NAME, "PSK proposals")

    def propose_resumption_psk(self, group_id: bytes, epoch: int) -> bytes:
        """Refused: the binding has no PSK proposal."""
        raise errors.Unsupported(NAME, "PSK proposals")

    def propose_group_context_extensions(
        self, group_id: bytes, extensions: Sequence[GroupContextExtension]
    ) -> bytes:
        """Refused: the binding has no GroupContextExtensions proposal."""
        raise errors.Unsupported(NAME, "GroupContextExtensions proposals")

    # ------------------------------------------------------------------ messages

    def encrypt(self, group_id: bytes, plaintext: bytes, *, aad: bytes) -> bytes:
        """An application message (the binding takes no authenticated data)."""
        if aad:
            raise errors.Unsupported(NAME, "authenticated data on application messages")
        group = self._group(group_id)
        with self._engine("encrypt"):
            message = bytes(group.encrypt_application_message(plaintext).to_bytes())
        self._save(group)
        return message

    def process(self, group_id: bytes, message: bytes) -> EngineReceived:
        """Verify and apply one message; a commit that removed us forgets the group."""
        group = self._group(group_id)
        parsed = self._message(message, "message")
        with self._engine("process the message", invalid=True):
            got = group.process_incoming_message(parsed)
        if got.is_application_message():
            sender = self._identity_of(group_id, got.sender)
            self._save(group)
            return EngineReceived(ReceivedKind.APPLICATION, sender, bytes(got.data))
        if got.is_received_proposal():
            sender = self._identity_of(group_id, got.sender)
            self._save(group)
            return EngineReceived(ReceivedKind.PROPOSAL, sender)
        if got.is_commit():
            committer = self._identity_of(group_id, got.committer)
            if got.effect.is_removed():
                self._groups.pop(group_id, None)
                self._members.pop(group_id, None)
                self._store.forget_group(group_id)
                return EngineReceived(ReceivedKind.COMMIT, committer, removed=True)
            self._members.pop(group_id, None)
            self._save(group)
            return EngineReceived(ReceivedKind.COMMIT, committer)
        raise errors.InvalidMessage("not a group message (Welcome, GroupInfo or key package?)")

    def past_epochs(self, group_id: bytes) -> list[int]:
        """The past epochs whose secrets mls-rs still holds for late messages."""
        return self._store.epoch_ids(group_id)

    def export_secret(self, group_id: bytes, label: bytes, context: bytes, length: int) -> bytes:
        """MLS-Exporter of the current epoch."""
        group = self._group(group_id)
        with self._engine("export a secret"):
            return bytes(group.export_secret(label, context, length))
