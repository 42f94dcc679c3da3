"""``NativeClient``: :class:`mls.client.MlsClient`'s API on the native engine.

Same vault, same durability barrier, same results: every call that returns bytes which will
leave the process, or that consumes a message, runs as one storage operation and is
flushed (fsync'd) to the vault before it returns.  The difference is what reaches the vault:
:class:`mls.native.engine.NativeEngine` keeps *all* of its state in
:class:`mls.storage.GranularStorage`, including the private keys of published key packages,
so :meth:`NativeClient.lost_key_packages` is always empty and a key package published before
a restart can still be joined with; and an application message writes only the ratchet it
advanced instead of a whole-group snapshot.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from keystore import Vault, profiles
from keystore.errors import VaultClosed
from keystore.profiles import KdfParameters
from mls.client import LostKeyPackage
from mls.drainer import WriteBehindDrainer
from mls.errors import MlsEngineError, NotAnMlsVault, UnknownMember
from mls.mlsrs import DEFAULT_EPOCH_RETENTION
from mls.receipts import DEFAULT_RECEIPT_RETENTION, ReceiptLog, Received, ReceivedKind
from mls.storage import GranularStorage

from .engine import NativeEngine, ProcessedKind
from .rows import CATEGORY_IDENTITY, IDENTITY_KEY, GroupConfig

__all__ = ["CATEGORY_RECEIPTS", "NativeClient"]

#: Outcomes of recently processed messages (key: SHA-256 of group id and message).
CATEGORY_RECEIPTS = "native/v1/receipt"
_MAX_IDENTITY_LEN = 0xFFFF
_KINDS = {
    ProcessedKind.APPLICATION: ReceivedKind.APPLICATION,
    ProcessedKind.PROPOSAL: ReceivedKind.PROPOSAL,
    ProcessedKind.COMMIT: ReceivedKind.COMMIT,
}
def _check_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    return bytes(value)


class NativeClient:
    """An MLS client on the native engine, persisted in an encrypted vault.

    Create one with :meth:`create` or :meth:`open` (or ``MlsClient.create(...,
    engine="native")``); use it as a context manager or call :meth:`close`.  One instance
    per vault (a second open raises :class:`keystore.VaultBusy`); methods are serialized by
    an internal lock.
    """

    def __init__(
        self,
        vault: Vault,
        storage: GranularStorage,
        *,
        retention: int,
        receipt_retention: int = DEFAULT_RECEIPT_RETENTION,
    ) -> None:
        if isinstance(retention, bool) or not isinstance(retention, int) or retention < 1:
            raise ValueError("epoch retention must be an int >= 1")
        if storage.read(CATEGORY_IDENTITY, IDENTITY_KEY) is None:
            raise NotAnMlsVault(
                "this vault holds no native MLS identity; create it with "
                "NativeClient.create() (or open it with the engine that created it)"
            )
        self._vault = vault
        self._storage = storage
        self._drainer = WriteBehindDrainer(storage, vault)
        self._engine = NativeEngine(storage)
        self._config = GroupConfig(max_past_epochs=retention)
        self._lock = threading.RLock()
        self._closed = False
        self._receipts = ReceiptLog(storage, CATEGORY_RECEIPTS, receipt_retention)

    # ------------------------------------------------------------------ lifecycle

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
    ) -> NativeClient:
        """Create a new vault holding a new signature key pair for ``identity``.

        Args:
            identity: the basic-credential identity other members will see (1-65535 bytes).
            kdf: Argon2id parameters for the passphrase.
            epoch_retention: past epochs kept for late application messages, stored with each
                group created or joined (a group keeps the value it started with).
            receipt_retention: outcomes of the last processed messages kept (encrypted)
                so that processing one again after a crash returns it (0: keep none).

        Raises:
            FileExistsError: something is already at ``vault_path``; it is left alone.
        """
        identity = _check_bytes(identity, "identity")
        if not 1 <= len(identity) <= _MAX_IDENTITY_LEN:
            raise ValueError("identity must be 1 to 65535 bytes")
        vault = Vault.create(vault_path, passphrase, kdf=kdf)
        try:
            storage = GranularStorage.load(vault)
            NativeEngine.create(storage, identity)
            client = cls(
                vault,
                storage,
                retention=epoch_retention,
                receipt_retention=receipt_retention,
            )
            client._drainer.flush()
        except BaseException:
            vault.close()
            raise
        return client

    @classmethod
    def open(
        cls,
        vault_path: str | os.PathLike[str],
        passphrase: str | bytes,
        *,
        timeout: float = 0.0,
        epoch_retention: int = DEFAULT_EPOCH_RETENTION,
        receipt_retention: int = DEFAULT_RECEIPT_RETENTION,
    ) -> NativeClient:
        """Open a client vault: unlock, rehydrate the storage, then start the engine.

        Raises:
            VaultBusy, WrongPassphrase, NotAVault, NotAnMlsVault.
        """
        vault = Vault.open(Path(vault_path), timeout=timeout)
        try:
            vault.unlock(passphrase)
            storage = GranularStorage.load(vault)
            return cls(
                vault,
                storage,
                retention=epoch_retention,
                receipt_retention=receipt_retention,
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
            try:
                self._drainer.close()
            finally:
                self._vault.close()

    def __enter__(self) -> NativeClient:
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
        return self._engine.identity

    @property
    def vault(self) -> Vault:
        """The underlying vault (for stats and verify; do not write to it directly)."""
        return self._vault

    @property
    def engine(self) -> NativeEngine:
        """The engine underneath, for what the common API does not cover (PSKs, proposals)."""
        return self._engine

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise VaultClosed("this NativeClient (and its vault) is closed")

    @contextmanager
    def _durable(self) -> Iterator[None]:
        """One storage operation around the block, then a flush: the durability barrier.

        A failed call rolls the storage back; the receipt order is rebuilt from it.
        """
        with self._lock:
            self._check_open()
            try:
                with self._storage.operation():
                    yield
                self._drainer.flush()
            except BaseException:
                self._receipts.reload()
                raise

    # ------------------------------------------------------------------ key packages

    def generate_key_package(self) -> bytes:
        """A new key package (MLSMessage); it and its private keys are in the vault on return."""
        with self._durable():
            return self._engine.generate_key_package()

    def lost_key_packages(self) -> list[LostKeyPackage]:
        """Always empty: the native engine persists key-package private keys."""
        with self._lock:
            self._check_open()
            return []

    def discard_lost_key_packages(self) -> int:
        """Nothing to discard (see :meth:`lost_key_packages`); returns 0."""
        with self._lock:
            self._check_open()
            return 0

    # ------------------------------------------------------------------ groups

    def group_ids(self) -> list[bytes]:
        """The groups this client is a member of, sorted."""
        with self._lock:
            self._check_open()
            return self._engine.group_ids()

    def members(self, group_id: bytes) -> list[bytes]:
        """The identities in the group's ratchet tree, in leaf order."""
        with self._lock:
            self._check_open()
            return [identity for _, identity in self._engine.members(group_id)]

    def create_group(self, group_id: bytes | None = None) -> bytes:
        """Create a group with only this client in it; returns its id (random if omitted).

        Raises:
            ValueError: this client already has a group with that id.
        """
        if group_id is not None:
            group_id = _check_bytes(group_id, "group id")
        with self._durable():
            return self._engine.create_group(group_id, config=self._config)

    def add_members(self, group_id: bytes, key_packages: Sequence[bytes]) -> tuple[bytes, bytes]:
        """Commit the addition of members; returns ``(commit, welcome)`` wire bytes.

        The commit is applied here at once: send it to the group and the Welcome to the
        new members.
        """
        kps = [_check_bytes(k, "key package") for k in key_packages]
        if not kps:
            raise ValueError("add_members needs at least one key package")
        with self._durable():
            commit, welcome = self._engine.commit(group_id, add=kps)
            if welcome is None:  # the engine makes one whenever members are added
                raise MlsEngineError("the engine produced no Welcome for the added members")
        return commit, welcome

    def remove_members(self, group_id: bytes, identities: Sequence[bytes]) -> bytes:
        """Commit the removal of every leaf holding one of ``identities``; returns the commit.

        Raises:
            UnknownMember: an identity is not in the group.
        """
        wanted = [_check_bytes(i, "identity") for i in identities]
        if not wanted:
            raise ValueError("remove_members needs at least one identity")
        with self._durable():
            members = self._engine.members(group_id)
            leaves: list[int] = []
            for identity in wanted:
                found = [leaf for leaf, who in members if who == identity]
                if not found:
                    raise UnknownMember("no member of this group has that identity")
                leaves.extend(found)
            commit, _ = self._engine.commit(group_id, remove=leaves)
        return commit

    def update_keys(self, group_id: bytes) -> bytes:
        """Commit a fresh path (key update) plus any proposals received; returns the commit."""
        with self._durable():
            commit, _ = self._engine.commit(group_id, force_path=True)
        return commit

    def leave(self, group_id: bytes) -> bytes:
        """A proposal to remove ourselves; another member commits it (:meth:`update_keys`)."""
        with self._durable():
            return self._engine.propose_remove(group_id, self._engine.own_leaf_index(group_id))

    def encrypt(self, group_id: bytes, plaintext: bytes) -> bytes:
        """Encrypt an application message; the advanced ratchet is durable before return."""
        return self.encrypt_many([(group_id, plaintext)])[0]

    def encrypt_many(self, items: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
        """Encrypt for many groups with ONE vault commit; results in order."""
        pairs = [(g, _check_bytes(p, "plaintext")) for g, p in items]
        with self._durable():
            return [self._engine.encrypt(g, p) for g, p in pairs]

    def process(self, group_id: bytes, message: bytes) -> Received:
        """Process one group message (MLSMessage wire format); durable before return."""
        return self.process_many([(group_id, message)])[0]

    def process_many(self, items: Iterable[tuple[bytes, bytes]]) -> list[Received]:
        """Process many messages with ONE vault commit; results in order."""
        pairs = [(_check_bytes(g, "group id"), _check_bytes(m, "message")) for g, m in items]
        out: list[Received] = []
        with self._durable():
            for group_id, message in pairs:
                stored = self._receipts.lookup(group_id, message)
                if stored is not None:
                    out.append(stored)
                    continue
                got = self._engine.process(group_id, message)
                received = Received(_KINDS[got.kind], got.identity, got.data, got.removed)
                self._receipts.remember(group_id, message, received)
                out.append(received)
        return out

    def join(self, welcome: bytes) -> bytes:
        """Join a group from a Welcome; returns the group id.  Durable before return.

        Works for any key package this client published and has not used yet, including
        ones published before a restart.
        """
        welcome = _check_bytes(welcome, "Welcome")
        with self._durable():
            return self._engine.join(welcome, config=self._config)

    def export_secret(self, group_id: bytes, label: bytes, context: bytes, length: int) -> bytes:
        """The MLS exporter secret of the current epoch (equal on every member)."""
        with self._lock:
            self._check_open()
            return self._engine.export_secret(group_id, label, context, length)
