"""``MlsClient``: an MLS (RFC 9420) client whose every state change is durable before use.

The engine is AWS mls-rs through the ``mls_rs_uniffi`` binding (the ``[mls-rs]`` extra).
State flows one way: engine → :class:`mls.mlsrs.VaultGroupStateStorage` →
:class:`mls.storage.GranularStorage` → :class:`mls.drainer.WriteBehindDrainer` → vault.

The durability barrier: every call that returns bytes which will leave the process
(a ciphertext, commit, proposal, Welcome or key package) or that consumes a message
(:meth:`MlsClient.process`, :meth:`MlsClient.join`) writes the resulting state in one
storage operation and flushes it to the vault (fsync'd) *before* it returns.  So a
crash at any point leaves a vault that either predates the call (nothing was sent, the
message can be processed again) or includes it (no secret-tree generation is reused,
no acknowledged group is forgotten).  :meth:`MlsClient.encrypt_many` and
:meth:`MlsClient.process_many` share one flush among many groups.

Known limit of the binding: key-package private keys live only in the engine's memory.
Each published key package's reference is recorded in the vault, so after a restart
:meth:`MlsClient.lost_key_packages` names the ones that can no longer be joined with,
and :meth:`MlsClient.join` raises :class:`mls.errors.KeyPackageLost` for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from keystore import Vault, profiles
from keystore.errors import KeystoreError, VaultClosed
from keystore.profiles import KdfParameters
from mls.drainer import WriteBehindDrainer
from mls.errors import (
    InvalidMessage,
    KeyPackageLost,
    MlsEngineError,
    MlsError,
    NotAnMlsVault,
    UnknownGroup,
    UnknownMember,
)
from mls.mlsrs import (
    DEFAULT_EPOCH_RETENTION,
    TreeMember,
    VaultGroupStateStorage,
    key_package_ref,
    load_binding,
    new_group_state_storage,
    ratchet_tree_members,
    welcome_key_package_refs,
)
from mls.receipts import (
    DEFAULT_RECEIPT_RETENTION,
    ReceiptLog,
    Received,
    ReceivedKind,
)
from mls.storage import GranularStorage

if TYPE_CHECKING:
    from mls.native.client import NativeClient

__all__ = ["AsyncMlsClient", "Engine", "LostKeyPackage", "MlsClient", "Received", "ReceivedKind"]

#: The engines :meth:`MlsClient.create` and :meth:`MlsClient.open` can run on: mls-rs, or
#: the native one (:class:`mls.native.NativeClient`, same API, key packages persisted too).
Engine = Literal["mls-rs", "native"]

CATEGORY_IDENTITY = "mlsrs/v1/identity"
CATEGORY_KEY_PACKAGES = "mlsrs/v1/key_package"
CATEGORY_RECEIPTS = "mlsrs/v1/receipt"
_IDENTITY_KEY = b"signature"
_RECORD_FORMAT = 1
_SESSION_LEN = 16
_KP_RECORD = struct.Struct(">B16sQ")  # format, session id, created (unix seconds)

_MAX_IDENTITY_LEN = 0xFFFF
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class LostKeyPackage:
    """A published key package whose private key died with an earlier process."""

    ref: bytes
    created_at: int


def _encode_identity_record(identity: bytes, public: bytes, secret: bytes) -> bytes:
    parts = b"".join(len(p).to_bytes(2, "big") + p for p in (identity, public, secret))
    return bytes((_RECORD_FORMAT,)) + parts


def _decode_identity_record(row: bytes) -> tuple[bytes, bytes, bytes]:
    if not row or row[0] != _RECORD_FORMAT:
        raise NotAnMlsVault("the vault's MLS identity record has an unknown format")
    out: list[bytes] = []
    pos = 1
    for _ in range(3):
        if pos + 2 > len(row):
            raise NotAnMlsVault("the vault's MLS identity record is truncated")
        n = int.from_bytes(row[pos : pos + 2], "big")
        out.append(row[pos + 2 : pos + 2 + n])
        pos += 2 + n
    if pos != len(row) or any(len(p) == 0 for p in out):
        raise NotAnMlsVault("the vault's MLS identity record is malformed")
    return out[0], out[1], out[2]


def _check_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    return bytes(value)


def _stored_engine(storage: GranularStorage) -> Engine:
    """Which engine a client vault belongs to, from the identity row it holds."""
    from mls.native import rows as native_rows

    if storage.read(native_rows.CATEGORY_IDENTITY, native_rows.IDENTITY_KEY) is not None:
        return "native"
    if storage.read(CATEGORY_IDENTITY, _IDENTITY_KEY) is not None:
        return "mls-rs"
    raise NotAnMlsVault("this vault holds no MLS client identity of any engine")


class MlsClient:
    """An MLS client persisted in an encrypted vault.  See the module docstring.

    Create one with :meth:`create` or :meth:`open`; use it as a context manager or call
    :meth:`close`.  One instance per vault: a second :meth:`open` of the same vault,
    in this process or another, raises :class:`keystore.VaultBusy`.  Methods are
    serialized by an internal lock, so a client may be shared between threads.
    """

    def __init__(
        self,
        vault: Vault,
        storage: GranularStorage,
        *,
        retention: int,
        receipt_retention: int = DEFAULT_RECEIPT_RETENTION,
        _binding: ModuleType,
    ):
        self._vault = vault
        self._storage = storage
        self._drainer = WriteBehindDrainer(storage, vault)
        self._binding = _binding
        self._lock = threading.RLock()
        self._session = os.urandom(_SESSION_LEN)
        self._closed = False
        row = storage.read(CATEGORY_IDENTITY, _IDENTITY_KEY)
        if row is None:
            raise NotAnMlsVault(
                "this vault holds no MLS identity; create it with MlsClient.create()"
            )
        self._identity, public, secret = _decode_identity_record(row)
        self._suite = _binding.CipherSuite.CURVE25519_AES128
        keypair = _binding.SignatureKeypair(
            cipher_suite=self._suite,
            public_key=_binding.SignaturePublicKey(bytes=public),
            secret_key=_binding.SignatureSecretKey(bytes=secret),
        )
        self._store: VaultGroupStateStorage = new_group_state_storage(storage, retention=retention)
        config = _binding.ClientConfig(
            group_state_storage=self._store, use_ratchet_tree_extension=True
        )
        with self._engine("start the engine"):
            self._client: Any = _binding.Client(self._identity, keypair, config)
        self._groups: dict[bytes, Any] = {}
        self._members: dict[bytes, list[TreeMember]] = {}
        self._signing_identities: dict[tuple[bytes, bytes], Any] = {}
        self._receipts = ReceiptLog(storage, CATEGORY_RECEIPTS, receipt_retention)

    # ------------------------------------------------------------------ lifecycle

    @overload
    @classmethod
    def create(
        cls,
        vault_path: str | os.PathLike[str],
        passphrase: str | bytes,
        *,
        identity: bytes,
        kdf: KdfParameters = ...,
        epoch_retention: int = ...,
        receipt_retention: int = ...,
        engine: Literal["mls-rs"],
    ) -> MlsClient: ...

    @overload
    @classmethod
    def create(
        cls,
        vault_path: str | os.PathLike[str],
        passphrase: str | bytes,
        *,
        identity: bytes,
        kdf: KdfParameters = ...,
        epoch_retention: int = ...,
        receipt_retention: int = ...,
        engine: Literal["native"] = ...,
    ) -> NativeClient: ...

    @classmethod
    def create(
        cls,
        vault_path: str | os.PathLike[str],
        passphrase: str | bytes,
        *,
        identity: bytes,
        kdf: KdfParameters = profiles.RFC_9106_LOW_MEMORY,
        epoch_retention: int = DEFAULT_EPOCH_RETENTION,
        receipt_retention: int = DEFAULT_RECEIPT_RETENTION,
        engine: Engine = "native",
    ) -> MlsClient | NativeClient:
        """Create a new vault holding a new signature key pair for ``identity``.

        Args:
            identity: the basic-credential identity other members will see (1-65535 bytes).
            kdf: Argon2id parameters for the passphrase.
            epoch_retention: past epochs kept per group for late messages.
            receipt_retention: outcomes of the last processed messages kept (encrypted)
                so that processing one again after a crash returns it (0: keep none).
            engine: ``"native"`` (the default: a :class:`mls.native.NativeClient`, same API,
                which persists every secret granularly, key-package private keys included,
                so none is ever lost), or ``"mls-rs"`` (the binding; whole-group snapshots,
                key packages die with the process).

        Raises:
            FileExistsError: something is already at ``vault_path``; it is left alone.
            MlsRsUnavailable: the engine (extra ``[mls-rs]``) is not installed.
        """
        if engine == "native":
            from mls.native.client import NativeClient

            return NativeClient.create(
                vault_path,
                passphrase,
                identity=identity,
                kdf=kdf,
                epoch_retention=epoch_retention,
                receipt_retention=receipt_retention,
            )
        if engine != "mls-rs":
            raise ValueError('engine must be "mls-rs" or "native"')
        identity = _check_bytes(identity, "identity")
        if not 1 <= len(identity) <= _MAX_IDENTITY_LEN:
            raise ValueError("identity must be 1 to 65535 bytes")
        binding = load_binding()
        keypair = binding.generate_signature_keypair(binding.CipherSuite.CURVE25519_AES128)
        vault = Vault.create(vault_path, passphrase, kdf=kdf)
        try:
            storage = GranularStorage.load(vault)
            record = _encode_identity_record(
                identity, bytes(keypair.public_key.bytes), bytes(keypair.secret_key.bytes)
            )
            with storage.operation():
                storage.write(CATEGORY_IDENTITY, _IDENTITY_KEY, record)
            client = cls(
                vault,
                storage,
                retention=epoch_retention,
                receipt_retention=receipt_retention,
                _binding=binding,
            )
            client._flush()
        except BaseException:
            vault.close()
            raise
        return client

    @overload
    @classmethod
    def open(
        cls,
        vault_path: str | os.PathLike[str],
        passphrase: str | bytes,
        *,
        timeout: float = ...,
        epoch_retention: int = ...,
        receipt_retention: int = ...,
        engine: Literal["mls-rs"],
    ) -> MlsClient: ...

    @overload
    @classmethod
    def open(
        cls,
        vault_path: str | os.PathLike[str],
        passphrase: str | bytes,
        *,
        timeout: float = ...,
        epoch_retention: int = ...,
        receipt_retention: int = ...,
        engine: Literal["native"],
    ) -> NativeClient: ...

    @overload
    @classmethod
    def open(
        cls,
        vault_path: str | os.PathLike[str],
        passphrase: str | bytes,
        *,
        timeout: float = ...,
        epoch_retention: int = ...,
        receipt_retention: int = ...,
        engine: None = ...,
    ) -> MlsClient | NativeClient: ...

    @classmethod
    def open(
        cls,
        vault_path: str | os.PathLike[str],
        passphrase: str | bytes,
        *,
        timeout: float = 0.0,
        epoch_retention: int = DEFAULT_EPOCH_RETENTION,
        receipt_retention: int = DEFAULT_RECEIPT_RETENTION,
        engine: Engine | None = None,
    ) -> MlsClient | NativeClient:
        """Open a client vault: unlock, rehydrate the storage, then start the engine.

        The order is fixed so the engine can never run on a storage that a later
        restore would overwrite (the "restore before drain" race).

        ``engine=None`` (the default) runs the engine the vault was created with,
        recognised by the identity row it holds; naming an engine checks that it is
        that one.

        Raises:
            VaultBusy: the vault is open elsewhere (after ``timeout`` seconds).
            WrongPassphrase, NotAVault, NotAnMlsVault (no identity of the named or
            any engine), MlsRsUnavailable.
        """
        if engine not in (None, "mls-rs", "native"):
            raise ValueError('engine must be "mls-rs", "native" or None')
        binding = load_binding() if engine == "mls-rs" else None  # fail before the vault
        vault = Vault.open(Path(vault_path), timeout=timeout)
        try:
            vault.unlock(passphrase)
            storage = GranularStorage.load(vault)
            if engine is None:
                engine = _stored_engine(storage)
            if engine == "native":
                from mls.native.client import NativeClient

                return NativeClient(
                    vault, storage, retention=epoch_retention, receipt_retention=receipt_retention
                )
            return cls(
                vault,
                storage,
                retention=epoch_retention,
                receipt_retention=receipt_retention,
                _binding=binding if binding is not None else load_binding(),
            )
        except BaseException:
            vault.close()
            raise

    def close(self) -> None:
        """Flush anything pending, then close the vault (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._groups.clear()
            self._members.clear()
            try:
                self._drainer.close()
            finally:
                self._vault.close()

    def __enter__(self) -> MlsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def identity(self) -> bytes:
        """This client's basic-credential identity."""
        return self._identity

    @property
    def vault(self) -> Vault:
        """The underlying vault (for stats and verify; do not write to it directly)."""
        return self._vault

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise VaultClosed("this MlsClient (and its vault) is closed")

    @contextlib.contextmanager
    def _engine(self, what: str) -> Iterator[None]:
        """Translate binding failures into :class:`MlsEngineError`.

        A failure inside a storage callback comes back from the binding as an opaque
        error; the original (e.g. a vault error) is re-raised instead.
        """
        binding = self._binding
        store: VaultGroupStateStorage | None = getattr(self, "_store", None)
        if store is not None:
            store.callback_error = None
        try:
            yield
        except (MlsError, KeystoreError, TypeError, ValueError):
            raise
        except (binding.Error, binding.InternalError) as exc:
            cause = store.callback_error if store is not None else None
            if isinstance(cause, MlsError | KeystoreError):
                raise cause from exc
            raise MlsEngineError(f"mls-rs could not {what}: {exc}") from exc

    def _flush(self) -> None:
        self._drainer.flush()

    @contextlib.contextmanager
    def _durable(self, what: str) -> Iterator[None]:
        """One storage operation around the block, then a flush: the barrier.

        If anything fails, the cached engine groups are dropped: they may be ahead of
        the storage (whose operation was rolled back), and are reloaded from it on next
        use, so a failed call leaves the client as if it had not been made.  The
        adapter's epoch index is rebuilt for the same reason.
        """
        with self._lock:
            self._check_open()
            try:
                with self._engine(what), self._storage.operation():
                    yield
                self._flush()
            except BaseException:
                self._groups.clear()
                self._members.clear()
                self._store.reindex()
                self._receipts.reload()
                raise

    def _group(self, group_id: bytes) -> Any:
        group_id = _check_bytes(group_id, "group id")
        group = self._groups.get(group_id)
        if group is None:
            if group_id not in self._store.group_ids():
                raise UnknownGroup("this client is not a member of that group")
            with self._engine("load the group"):
                group = self._client.load_group(group_id)
            self._groups[group_id] = group
        return group

    def _save(self, group: Any) -> bytes:
        """``write_to_storage`` and return the group id the adapter saw."""
        self._store.last_written = None
        group.write_to_storage()
        group_id = self._store.last_written
        if group_id is None:
            raise MlsEngineError("mls-rs did not write the group state")
        return group_id

    def _message(self, data: bytes, what: str) -> Any:
        data = _check_bytes(data, what)
        with self._engine(f"parse the {what}"):
            return self._binding.Message.from_bytes(data)

    def _commit_and_apply(self, group_id: bytes, output: Any) -> bytes:
        """Apply our own commit at once and save: the caller then sends it."""
        group = self._groups[group_id]
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

    def _member_table(self, group_id: bytes) -> list[TreeMember]:
        """The members of the current epoch, parsed from the exported ratchet tree."""
        table = self._members.get(group_id)
        if table is None:
            group = self._group(group_id)
            with self._engine("export the ratchet tree"):
                tree = bytes(group.export_tree().bytes)
            table = self._members[group_id] = ratchet_tree_members(tree)
        return table

    def _identity_of(self, group_id: bytes, signing_identity: Any) -> bytes | None:
        for member in self._member_table(group_id):
            if self._signing_identity(member) == signing_identity:
                return member.identity
        return None

    # ------------------------------------------------------------------ key packages

    def generate_key_package(self) -> bytes:
        """A new key package (MLSMessage wire format), recorded in the vault before return.

        Its private keys live only in this process: publish it, and join with it
        before the client is closed (see :meth:`lost_key_packages`).
        """
        with self._durable("generate a key package"):
            kp = bytes(self._client.generate_key_package_message().to_bytes())
            record = _KP_RECORD.pack(_RECORD_FORMAT, self._session, int(time.time()))
            self._storage.write(CATEGORY_KEY_PACKAGES, key_package_ref(kp), record)
        return kp

    def _key_package_records(self) -> dict[bytes, tuple[bytes, int]]:
        out: dict[bytes, tuple[bytes, int]] = {}
        for ref, row in self._storage.items(CATEGORY_KEY_PACKAGES):
            if len(row) != _KP_RECORD.size or row[0] != _RECORD_FORMAT:
                raise InvalidMessage("stored key-package record has an unknown format")
            _, session, created = _KP_RECORD.unpack(row)
            out[ref] = (session, created)
        return out

    def lost_key_packages(self) -> list[LostKeyPackage]:
        """Published key packages whose private keys were lost when their process ended.

        Withdraw them from wherever they were published, then call
        :meth:`discard_lost_key_packages`.
        """
        with self._lock:
            self._check_open()
            return sorted(
                (
                    LostKeyPackage(ref, created)
                    for ref, (session, created) in self._key_package_records().items()
                    if session != self._session
                ),
                key=lambda k: (k.created_at, k.ref),
            )

    def discard_lost_key_packages(self) -> int:
        """Forget the records of lost key packages; returns how many were dropped."""
        with self._lock:
            self._check_open()
            lost = [k.ref for k in self.lost_key_packages()]
            if lost:
                with self._storage.operation():
                    for ref in lost:
                        self._storage.delete(CATEGORY_KEY_PACKAGES, ref)
                self._flush()
            return len(lost)

    # ------------------------------------------------------------------ groups

    def group_ids(self) -> list[bytes]:
        """The groups this client is a member of, sorted."""
        with self._lock:
            self._check_open()
            return self._store.group_ids()

    def members(self, group_id: bytes) -> list[bytes]:
        """The identities in the group's ratchet tree, in leaf order."""
        with self._lock:
            self._check_open()
            return [m.identity for m in self._member_table(group_id)]

    def create_group(self, group_id: bytes | None = None) -> bytes:
        """Create a group with only this client in it; returns its id (random if omitted).

        Raises:
            ValueError: this client already has a group with that id.
        """
        if group_id is not None:
            group_id = _check_bytes(group_id, "group id")
            if not group_id:
                raise ValueError("group id must not be empty")
        with self._durable("create a group"):
            if group_id is not None and group_id in self._store.group_ids():
                raise ValueError("this client already has a group with that id")
            group = self._client.create_group(group_id)
            gid = self._save(group)
            self._groups[gid] = group
        return gid

    def add_members(self, group_id: bytes, key_packages: Sequence[bytes]) -> tuple[bytes, bytes]:
        """Commit the addition of members; returns ``(commit, welcome)`` wire bytes.

        The commit is applied here at once (this client moves to the new epoch before
        return): send the commit to the group and the Welcome to the new members.
        """
        if not key_packages:
            raise ValueError("add_members needs at least one key package")
        messages = [self._message(kp, "key package") for kp in key_packages]
        with self._durable("add members"):
            group = self._group(group_id)
            output = group.add_members(messages)
            if output.welcome_message is None:
                raise MlsEngineError("mls-rs produced no Welcome for the added members")
            welcome = bytes(output.welcome_message.to_bytes())
            commit = self._commit_and_apply(group_id, output)
        return commit, welcome

    def remove_members(self, group_id: bytes, identities: Sequence[bytes]) -> bytes:
        """Commit the removal of every leaf holding one of ``identities``; returns the commit.

        Raises:
            UnknownMember: an identity is not in the group.
        """
        wanted = [_check_bytes(i, "identity") for i in identities]
        if not wanted:
            raise ValueError("remove_members needs at least one identity")
        with self._durable("remove members"):
            table = self._member_table(group_id)
            targets = []
            for identity in wanted:
                found = [self._signing_identity(m) for m in table if m.identity == identity]
                if not found:
                    raise UnknownMember("no member of this group has that identity")
                targets.extend(found)
            output = self._groups[group_id].remove_members(targets)
            commit = self._commit_and_apply(group_id, output)
        return commit

    def update_keys(self, group_id: bytes) -> bytes:
        """Commit a fresh path (key update) plus any proposals received; returns the commit."""
        with self._durable("commit"):
            output = self._group(group_id).commit()
            commit = self._commit_and_apply(group_id, output)
        return commit

    def leave(self, group_id: bytes) -> bytes:
        """A proposal to remove ourselves; another member commits it (:meth:`update_keys`)."""
        with self._durable("propose to leave"):
            group = self._group(group_id)
            proposals = group.propose_remove_members([self._client.signing_identity()])
            self._save(group)
        return bytes(proposals[0].to_bytes())

    def encrypt(self, group_id: bytes, plaintext: bytes) -> bytes:
        """Encrypt an application message; the advanced ratchet is durable before return."""
        return self.encrypt_many([(group_id, plaintext)])[0]

    def encrypt_many(self, items: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
        """Encrypt for many groups with ONE vault commit (group commit); results in order.

        Each group's snapshot is written once, however many of the messages are for it.
        """
        pairs = [(g, _check_bytes(p, "plaintext")) for g, p in items]
        out: list[bytes] = []
        with self._durable("encrypt"):
            touched: dict[bytes, Any] = {}
            for group_id, plaintext in pairs:
                group = touched[group_id] = self._group(group_id)
                out.append(bytes(group.encrypt_application_message(plaintext).to_bytes()))
            for group in touched.values():
                self._save(group)
        return out

    def process(self, group_id: bytes, message: bytes) -> Received:
        """Process one group message (MLSMessage wire format); durable before return.

        If this call is interrupted (crash) before it returns, the message can be
        processed again after :meth:`open`.
        """
        return self.process_many([(group_id, message)])[0]

    def process_many(self, items: Iterable[tuple[bytes, bytes]]) -> list[Received]:
        """Process many messages with ONE vault commit; results in order."""
        pairs = [
            (_check_bytes(g, "group id"), _check_bytes(m, "message")) for g, m in items
        ]
        out: list[Received] = []
        with self._durable("process a message"):
            for group_id, raw in pairs:
                stored = self._receipts.lookup(group_id, raw)
                if stored is not None:
                    out.append(stored)
                    continue
                got = self._process_one(group_id, self._message(raw, "message"))
                self._receipts.remember(group_id, raw, got)
                out.append(got)
        return out

    def _process_one(self, group_id: bytes, message: Any) -> Received:
        group = self._group(group_id)
        got = group.process_incoming_message(message)
        if got.is_application_message():
            sender = self._identity_of(group_id, got.sender)
            self._save(group)
            return Received(ReceivedKind.APPLICATION, sender, bytes(got.data))
        if got.is_received_proposal():
            sender = self._identity_of(group_id, got.sender)
            self._save(group)
            return Received(ReceivedKind.PROPOSAL, sender)
        if got.is_commit():
            if got.effect.is_removed():
                committer = self._identity_of(group_id, got.committer)
                self._groups.pop(group_id, None)
                self._members.pop(group_id, None)
                self._store.forget_group(group_id)
                return Received(ReceivedKind.COMMIT, committer, removed=True)
            self._members.pop(group_id, None)
            self._save(group)
            return Received(ReceivedKind.COMMIT, self._identity_of(group_id, got.committer))
        raise InvalidMessage("not a group message (Welcome, GroupInfo or key package?)")

    def join(self, welcome: bytes) -> bytes:
        """Join a group from a Welcome; returns the group id.  Durable before return.

        Raises:
            KeyPackageLost: the Welcome is for a key package of an earlier process.
            MlsEngineError: it addresses none of our key packages, or fails to verify.
        """
        refs = welcome_key_package_refs(welcome)
        message = self._message(welcome, "Welcome")
        with self._lock:
            self._check_open()
            records = self._key_package_records()
            ours = [r for r in refs if r in records]
            live = [r for r in ours if records[r][0] == self._session]
            if not live:
                if ours:
                    raise KeyPackageLost(
                        "this Welcome is for a key package published by an earlier run of "
                        "this client; its private key was not persisted (mls-rs keeps it in "
                        "memory only). Ask the adder to remove the dead leaf and re-add a "
                        "fresh key package.",
                        ref=ours[0],
                    )
                raise MlsEngineError("this Welcome addresses none of this client's key packages")
            with self._durable("join the group"):
                group = self._client.join_group(None, message).group
                group_id = self._save(group)
                for ref in live:
                    self._storage.delete(CATEGORY_KEY_PACKAGES, ref)
                self._groups[group_id] = group
                self._members.pop(group_id, None)
        return group_id

    def export_secret(self, group_id: bytes, label: bytes, context: bytes, length: int) -> bytes:
        """The MLS exporter secret of the current epoch (equal on every member)."""
        with self._lock:
            self._check_open()
            group = self._group(group_id)
            with self._engine("export a secret"):
                return bytes(group.export_secret(label, context, length))


class AsyncMlsClient:
    """The asyncio flavour: each call runs :class:`MlsClient` in a worker thread.

    The fsync of the durability barrier then never blocks the event loop.  The
    client's lock still runs calls one at a time: await one before starting the next
    when their order matters (it always does for messages of the same group).
    """

    def __init__(self, client: MlsClient):
        self._client = client

    @classmethod
    async def create(cls, *args: Any, **kwargs: Any) -> AsyncMlsClient:
        """:meth:`MlsClient.create` off the event loop (Argon2id is slow on purpose)."""
        return cls(await asyncio.to_thread(MlsClient.create, *args, **kwargs))

    @classmethod
    async def open(cls, *args: Any, **kwargs: Any) -> AsyncMlsClient:
        """:meth:`MlsClient.open` off the event loop."""
        return cls(await asyncio.to_thread(MlsClient.open, *args, **kwargs))

    @property
    def sync(self) -> MlsClient:
        """The wrapped client, for the calls that never block (group_ids, members, ...)."""
        return self._client

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.to_thread(fn, *args)

    async def generate_key_package(self) -> bytes:
        """See :meth:`MlsClient.generate_key_package`."""
        return await self._run(self._client.generate_key_package)

    async def create_group(self, group_id: bytes | None = None) -> bytes:
        """See :meth:`MlsClient.create_group`."""
        return await self._run(self._client.create_group, group_id)

    async def add_members(
        self, group_id: bytes, key_packages: Sequence[bytes]
    ) -> tuple[bytes, bytes]:
        """See :meth:`MlsClient.add_members`."""
        return await self._run(self._client.add_members, group_id, key_packages)

    async def join(self, welcome: bytes) -> bytes:
        """See :meth:`MlsClient.join`."""
        return await self._run(self._client.join, welcome)

    async def encrypt(self, group_id: bytes, plaintext: bytes) -> bytes:
        """See :meth:`MlsClient.encrypt`."""
        return await self._run(self._client.encrypt, group_id, plaintext)

    async def process(self, group_id: bytes, message: bytes) -> Received:
        """See :meth:`MlsClient.process`."""
        return await self._run(self._client.process, group_id, message)

    async def encrypt_many(self, items: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
        """See :meth:`MlsClient.encrypt_many`."""
        return await self._run(self._client.encrypt_many, list(items))

    async def process_many(self, items: Iterable[tuple[bytes, bytes]]) -> list[Received]:
        """See :meth:`MlsClient.process_many`."""
        return await self._run(self._client.process_many, list(items))

    async def update_keys(self, group_id: bytes) -> bytes:
        """See :meth:`MlsClient.update_keys`."""
        return await self._run(self._client.update_keys, group_id)

    async def remove_members(self, group_id: bytes, identities: Sequence[bytes]) -> bytes:
        """See :meth:`MlsClient.remove_members`."""
        return await self._run(self._client.remove_members, group_id, identities)

    async def leave(self, group_id: bytes) -> bytes:
        """See :meth:`MlsClient.leave`."""
        return await self._run(self._client.leave, group_id)

    async def close(self) -> None:
        """See :meth:`MlsClient.close`."""
        await self._run(self._client.close)

    async def __aenter__(self) -> AsyncMlsClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
