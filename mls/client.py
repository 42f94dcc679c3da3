"""``MlsClient``: an MLS (RFC 9420) client whose every state change is durable before use.

One class, whatever engine runs underneath: our native RFC 9420 engine (the default) or
AWS mls-rs (extra ``[mls-rs]``), each behind :class:`mls.engine.MlsEngine`.  The client
owns, once, everything around the engine: the vault (passphrase, raw key or SQLCipher),
the rehydrate-then-start order, the write-behind drainer, the receipt log, the writer
lock and the durability barrier.  State flows one way: engine →
:class:`mls.storage.GranularStorage` → :class:`mls.drainer.WriteBehindDrainer` → vault.

The durability barrier: every call that returns bytes which will leave the process
(a ciphertext, commit, proposal, Welcome or key package) or that consumes a message
(:meth:`MlsClient.process`, :meth:`MlsClient.join`) runs the engine inside one storage
operation and flushes it to the vault (fsync'd) *before* it returns.  A crash at any
point leaves a vault that either predates the call (nothing was sent, the message can be
processed again) or includes it (no secret-tree generation is reused, no acknowledged
group is forgotten).  A call that fails rolls its storage operation back: the client is
as if it had not been made.  :meth:`MlsClient.encrypt_many` and
:meth:`MlsClient.process_many` share one flush among many messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from keystore import Vault, profiles
from keystore.errors import VaultClosed
from keystore.profiles import KdfParameters
from keystore.vault import MAX_KEY_LEN
from mls.categories import MAX_GROUP_ID_LEN
from mls.drainer import WriteBehindDrainer
from mls.engine import (
    ALL_CIPHER_SUITES,
    DEFAULT_CIPHER_SUITE,
    CommitChanges,
    EngineName,
    ExternalPsk,
    GroupContextExtension,
    GroupSettings,
    GroupState,
    LostKeyPackage,
    Member,
    MlsEngine,
    PendingCommit,
    PendingProposal,
    ReceivedKind,
    X509Credential,
)
from mls.engines.wire import MessageHeader, peek_header
from mls.errors import (
    EpochMismatch,
    InvalidMessage,
    MlsError,
    NotAnMlsVault,
    UnknownMember,
    Unsupported,
)
from mls.mlsrs import DEFAULT_EPOCH_RETENTION
from mls.receipts import DEFAULT_RECEIPT_RETENTION, ReceiptLog, Received
from mls.storage import GranularStorage

if TYPE_CHECKING:
    from keystore.postgres_vault import PostgresAddress, PostgresVault
    from mls.engines.mlsrs import MlsRsAdapter
    from mls.engines.native import NativeAdapter
    from mls.native.identity import CredentialValidator

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "AsyncMlsClient",
    "Engine",
    "LostKeyPackage",
    "MlsClient",
    "NativeClient",
    "Received",
    "ReceivedKind",
]

#: The engines :meth:`MlsClient.create` and :meth:`MlsClient.open` can run on.
Engine = EngineName

#: The largest message (or Welcome, GroupInfo, key package) the client accepts, and the
#: largest the native engine will produce: 2 MiB, the native engine's own default.  Chat
#: messages are a few KiB and attachments travel out of band; the biggest legitimate input
#: is a Welcome carrying the ratchet tree, about 300 bytes per member, so 2 MiB admits
#: groups of ~7000 members.  Larger input is refused before any parsing, so a hostile peer
#: cannot make the client parse (or store a receipt of) 64 MiB.
DEFAULT_MAX_MESSAGE_SIZE = 2 * 1024 * 1024

_MAX_IDENTITY_LEN = 0xFFFF
#: An external PSK's id is its row key in the vault.
MAX_PSK_ID_LEN = MAX_KEY_LEN
_T = TypeVar("_T")
_P = ParamSpec("_P")

#: Seconds an AsyncMlsClient call may run on its worker thread between two pauses:
#: measured on an ``encrypt_many`` of 200, pausing every 1 ms cost the batch ~20 % of
#: its time, every 2 ms ~10 %, for a worst loop lag of a few milliseconds either way.
_PACE_EVERY = 0.002
#: Events above which the durability barrier, on an AsyncMlsClient worker, flushes with
#: ``yield_gil``: the vault seals rows in slices of 256, so a smaller flush has no slice
#: boundary to pause at and would only pay the pause before its transaction.
_BARRIER_YIELD_EVENTS = 256
#: Seconds each pause asks for (0.15-0.2 ms in practice): long enough for an event
#: loop waiting for the GIL to be woken and take it.
_PACE_PAUSE = 0.0001


class _Pacer(threading.local):
    """Per thread: whether it runs an :class:`AsyncMlsClient` call, and when it last paused.

    Why a pause and not the interpreter's switch interval: the engines free the GIL for
    a few microseconds many times per message (``os.urandom``, SQLite).  Each release
    counts as a switch, so an event loop waiting for the GIL never asks for it, and the
    worker takes it back before the loop's thread is scheduled: the loop can then wait
    for a whole ``encrypt_many`` (tens of milliseconds), not one switch interval.  A
    pause of a tenth of a millisecond is long enough for the loop to get in.
    """

    active = False
    last = 0.0


_pacer = _Pacer()


def _pace() -> None:
    """In an AsyncMlsClient call, free the GIL for a moment once per ``_PACE_EVERY`` seconds."""
    pacer = _pacer
    if pacer.active:
        now = time.perf_counter()
        if now - pacer.last >= _PACE_EVERY:
            time.sleep(_PACE_PAUSE)
            pacer.last = time.perf_counter()


def _paced(fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run ``fn`` on this (worker) thread with :func:`_pace` pausing at its yield points."""
    pacer = _pacer
    pacer.active, pacer.last = True, time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        pacer.active = False


def _check_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    return bytes(value)


def _check_identity(identity: object) -> bytes:
    identity = _check_bytes(identity, "identity")
    if not 1 <= len(identity) <= _MAX_IDENTITY_LEN:
        raise ValueError("identity must be 1 to 65535 bytes")
    return identity


def _check_engine(engine: object, *, optional: bool) -> None:
    allowed: tuple[object, ...] = ("native", "mls-rs", None) if optional else ("native", "mls-rs")
    if engine not in allowed:
        raise ValueError('engine must be "native" or "mls-rs"' + (" or None" if optional else ""))


def _check_positive(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be an int >= 1")
    return value


# The adapters are imported on first use, so that ``import mls`` (for the storage layer
# alone, say) does not load the native engine's cipher suites.


def _engine_rows() -> dict[EngineName, tuple[str, bytes]]:
    from mls.engines import mlsrs, native

    return {native.NAME: native.IDENTITY_ROW, mlsrs.NAME: mlsrs.IDENTITY_ROW}


def _stored_engine(storage: GranularStorage) -> EngineName:
    """Which engine a client vault belongs to, from the identity row it holds."""
    for name, (category, key) in _engine_rows().items():
        if storage.read(category, key) is not None:
            return name
    raise NotAnMlsVault("this vault holds no MLS client identity of any engine")


def _adapter_class(engine: EngineName) -> type[NativeAdapter] | type[MlsRsAdapter]:
    if engine == "native":
        from mls.engines.native import NativeAdapter

        return NativeAdapter
    from mls.engines.mlsrs import MlsRsAdapter

    return MlsRsAdapter


def _receipt_category(engine: EngineName) -> str:
    if engine == "native":
        from mls.engines import native

        return native.RECEIPT_CATEGORY
    from mls.engines import mlsrs

    return mlsrs.RECEIPT_CATEGORY


def _changes(before: list[Member], after: list[Member], epoch: int) -> CommitChanges:
    """What a commit changed, by comparing the leaves before and after it."""
    old = {m.leaf_index: m for m in before}
    new = {m.leaf_index: m for m in after}
    added, removed, updated = [], [], []
    for leaf, member in old.items():
        now = new.get(leaf)
        if now is None or (now.identity, now.signature_key) != (
            member.identity,
            member.signature_key,
        ):
            removed.append(member.identity)
        elif now.encryption_key != member.encryption_key:
            updated.append(member.identity)
    for leaf, member in new.items():
        was = old.get(leaf)
        if was is None or (was.identity, was.signature_key) != (
            member.identity,
            member.signature_key,
        ):
            added.append(member.identity)
    return CommitChanges(epoch, tuple(added), tuple(removed), tuple(updated))


def _postgres_address(where: object, *, sqlcipher: bool) -> PostgresAddress:
    """``where`` (not a file path), checked to be the address of a PostgreSQL vault."""
    from keystore.postgres_vault import PostgresAddress

    if not isinstance(where, PostgresAddress):
        raise TypeError("give a vault path or a keystore.PostgresAddress")
    if sqlcipher:
        raise ValueError("sqlcipher=True encrypts a SQLite file; it has no meaning on PostgreSQL")
    return where


class MlsClient:
    """An MLS client persisted in an encrypted vault.  See the module docstring.

    Create one with :meth:`create` / :meth:`create_with_key` or open one with
    :meth:`open` / :meth:`open_with_key`; use it as a context manager or call
    :meth:`close`.  One instance per vault: a second open of the same vault, in this
    process or another, raises :class:`keystore.VaultBusy`.  Methods are serialized by an
    internal lock, so a client may be shared between threads.

    Errors: every MLS failure is one of :mod:`mls.errors`, the same on both engines; what
    an engine cannot do raises :class:`mls.errors.Unsupported`; misuse raises
    ``TypeError`` / ``ValueError``; vault failures keep :mod:`keystore.errors` types.
    """

    def __init__(
        self,
        vault: Vault | PostgresVault,
        storage: GranularStorage,
        *,
        engine: EngineName | None = None,
        epoch_retention: int = DEFAULT_EPOCH_RETENTION,
        receipt_retention: int = DEFAULT_RECEIPT_RETENTION,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        credential_validator: CredentialValidator | None = None,
        _adapter: MlsEngine | None = None,
    ) -> None:
        """Start a client on an unlocked, rehydrated vault (use :meth:`open` instead).

        Raises:
            NotAnMlsVault: the storage holds no identity of ``engine`` (the message names
                the engine it belongs to, if any).
        """
        self._max_message_size = _check_positive(max_message_size, "max_message_size")
        if _adapter is None:
            _check_engine(engine, optional=True)
            stored = _stored_engine(storage)
            if engine is not None and engine != stored:
                raise NotAnMlsVault(
                    f"this vault belongs to the {stored} engine, not {engine}; open it "
                    f'with engine="{stored}" (or engine=None to follow the vault)',
                    engine=stored,
                )
            _adapter = _adapter_class(stored)(
                storage,
                epoch_retention=epoch_retention,
                max_message_size=max_message_size,
                credential_validator=credential_validator,
            )
        self._vault = vault
        self._storage = storage
        self._engine: MlsEngine = _adapter
        self._drainer = WriteBehindDrainer(storage, vault)
        self._lock = threading.RLock()
        self._closed = False
        self._receipts = ReceiptLog(storage, _receipt_category(_adapter.name), receipt_retention)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(
        cls,
        vault_path: str | os.PathLike[str] | PostgresAddress,
        passphrase: str | bytes,
        *,
        identity: bytes,
        kdf: KdfParameters = profiles.RFC_9106_LOW_MEMORY,
        engine: EngineName = "native",
        epoch_retention: int = DEFAULT_EPOCH_RETENTION,
        receipt_retention: int = DEFAULT_RECEIPT_RETENTION,
        cipher_suite: int = DEFAULT_CIPHER_SUITE,
        sqlcipher: bool = False,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        credential_validator: CredentialValidator | None = None,
        credential: X509Credential | None = None,
    ) -> MlsClient:
        """Create a new passphrase vault holding a new signature key pair for ``identity``.

        Args:
            identity: the basic-credential identity other members will see (1-65535 bytes).
            kdf: Argon2id parameters for the passphrase.
            engine: ``"native"`` (the default: persists every secret granularly,
                key-package private keys included, so none is ever lost; all seven
                cipher suites) or ``"mls-rs"`` (whole-group snapshots, key packages die
                with the process, suite 1 only).
            epoch_retention: past epochs kept per group for late messages.
            receipt_retention: outcomes of the last processed messages kept (encrypted)
                so that processing one again after a crash returns it (0: keep none).
            cipher_suite: the suite of this client's first signature key, the default
                for its groups and key packages (1-7 natively; 1 on mls-rs).
            sqlcipher: also encrypt the whole file with SQLCipher (extra ``[sqlcipher]``).
            max_message_size: the largest input accepted (see
                :data:`DEFAULT_MAX_MESSAGE_SIZE`).
            credential_validator: the application's identity policy (native engine;
                :class:`mls.CredentialValidator`, e.g. :class:`mls.X509CredentialValidator`;
                default: basic credentials, one leaf per identity, identities never
                change).  It judges every member: joins, adds, updates, external commits.
                Pass it again to :meth:`open`: it is code, not stored.
            credential: an X.509 chain with the private key it certifies, to be this
                client's credential in ``cipher_suite`` from the start (native engine;
                ``credential_validator`` must accept it).  Without it the client has a
                basic credential naming ``identity``, which :meth:`set_credential` can
                replace later.

        ``vault_path`` may be a :class:`keystore.PostgresAddress` instead of a path: the
        vault is then made in PostgreSQL (under the address's name), and this client
        holds its writer lease until :meth:`close` (``sqlcipher`` has no meaning there).

        Raises:
            FileExistsError: something is already at ``vault_path`` (or the name is
                taken in PostgreSQL); it is left alone.
            MlsRsUnavailable: ``engine="mls-rs"`` without the extra; no file is made.
            Unsupported: the cipher suite is not offered by the engine; no file is made.
            InvalidCredential: ``credential`` is refused (wrong key type for the suite, or
                the validator refuses its chain); no file is made.
        """
        def make_vault() -> Vault | PostgresVault:
            if isinstance(vault_path, (str, os.PathLike)):
                return Vault.create(vault_path, passphrase, kdf=kdf, sqlcipher=sqlcipher)
            return _postgres_address(vault_path, sqlcipher=sqlcipher).create_vault(passphrase, kdf)

        return cls._create(
            make_vault,
            identity=identity,
            engine=engine,
            epoch_retention=epoch_retention,
            receipt_retention=receipt_retention,
            cipher_suite=cipher_suite,
            max_message_size=max_message_size,
            credential_validator=credential_validator,
            credential=credential,
        )

    @classmethod
    def create_with_key(
        cls,
        vault_path: str | os.PathLike[str] | PostgresAddress,
        key: bytes,
        *,
        identity: bytes,
        engine: EngineName = "native",
        epoch_retention: int = DEFAULT_EPOCH_RETENTION,
        receipt_retention: int = DEFAULT_RECEIPT_RETENTION,
        cipher_suite: int = DEFAULT_CIPHER_SUITE,
        sqlcipher: bool = False,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        credential_validator: CredentialValidator | None = None,
        credential: X509Credential | None = None,
    ) -> MlsClient:
        """As :meth:`create`, for a vault keyed by a caller-held 32-byte key (no Argon2id).

        For applications that already hold a strong secret, e.g. in the OS keychain.
        """
        def make_vault() -> Vault | PostgresVault:
            if isinstance(vault_path, (str, os.PathLike)):
                return Vault.create_with_key(vault_path, key, sqlcipher=sqlcipher)
            return _postgres_address(vault_path, sqlcipher=sqlcipher).create_vault_with_key(key)

        return cls._create(
            make_vault,
            identity=identity,
            engine=engine,
            epoch_retention=epoch_retention,
            receipt_retention=receipt_retention,
            cipher_suite=cipher_suite,
            max_message_size=max_message_size,
            credential_validator=credential_validator,
            credential=credential,
        )

    @classmethod
    def _create(
        cls,
        make_vault: Callable[[], Vault | PostgresVault],
        *,
        identity: bytes,
        engine: EngineName,
        epoch_retention: int,
        receipt_retention: int,
        cipher_suite: int,
        max_message_size: int,
        credential_validator: CredentialValidator | None,
        credential: X509Credential | None = None,
    ) -> MlsClient:
        # Every argument is checked before the vault file exists: a refused create leaves
        # nothing behind at the path (and so can simply be retried).
        identity = _check_identity(identity)
        _check_engine(engine, optional=False)
        _check_positive(epoch_retention, "epoch retention")
        _check_positive(max_message_size, "max_message_size")
        if isinstance(receipt_retention, bool) or not isinstance(receipt_retention, int):
            raise TypeError("receipt_retention must be an int")
        if receipt_retention < 0:
            raise ValueError("receipt_retention must be >= 0")
        if isinstance(cipher_suite, bool) or cipher_suite not in ALL_CIPHER_SUITES:
            raise ValueError(f"cipher_suite must be one of {ALL_CIPHER_SUITES}")
        adapter_class = _adapter_class(engine)
        if engine == "mls-rs":
            from mls.mlsrs import load_binding

            load_binding()  # fail before a file exists
            if cipher_suite != DEFAULT_CIPHER_SUITE:
                raise Unsupported("mls-rs", f"cipher suite {cipher_suite} (only suite 1)")
            if credential_validator is not None:
                raise Unsupported("mls-rs", "a custom credential validator")
            if credential is not None:
                raise Unsupported("mls-rs", "X.509 credentials")
        elif credential is not None:
            if not isinstance(credential, X509Credential):
                raise TypeError("credential must be an mls.X509Credential")
            from mls.engines.native import NativeAdapter

            NativeAdapter.check_credential(
                credential, cipher_suite=cipher_suite, credential_validator=credential_validator
            )
        vault = make_vault()
        try:
            storage = GranularStorage.load(vault)
            adapter = adapter_class.create(
                storage,
                identity,
                cipher_suite=cipher_suite,
                epoch_retention=epoch_retention,
                max_message_size=max_message_size,
                credential_validator=credential_validator,
                credential=credential,
            )
            client = cls(
                vault,
                storage,
                receipt_retention=receipt_retention,
                max_message_size=max_message_size,
                _adapter=adapter,
            )
            client._drainer.flush()
        except BaseException:
            vault.close()
            raise
        return client

    @classmethod
    def open(
        cls,
        vault_path: str | os.PathLike[str] | PostgresAddress,
        passphrase: str | bytes,
        *,
        timeout: float = 0.0,
        engine: EngineName | None = None,
        epoch_retention: int = DEFAULT_EPOCH_RETENTION,
        receipt_retention: int = DEFAULT_RECEIPT_RETENTION,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        credential_validator: CredentialValidator | None = None,
    ) -> MlsClient:
        """Open a client vault: unlock, rehydrate the storage, then start the engine.

        The order is fixed so the engine can never run on a storage that a later
        restore would overwrite.  A SQLCipher vault is recognised by its header file.
        ``engine=None`` (the default) runs the engine the vault was created with;
        naming an engine checks that it is that one.

        ``vault_path`` may be a :class:`keystore.PostgresAddress`: the client then takes
        the vault's writer lease (waiting up to ``timeout`` seconds for another worker's
        to be released or to expire) and holds it until :meth:`close`.  If another
        worker takes the lease over meanwhile, every call that would write raises
        :class:`keystore.LeaseLost` and writes nothing: drop this client.

        Raises:
            VaultBusy: the vault is open elsewhere (after ``timeout`` seconds).
            WrongPassphrase, NotAVault, MlsRsUnavailable.
            NotAnMlsVault: no identity of any engine, or of another engine than the one
                named (the message and ``.engine`` name the vault's engine).
        """
        return cls._open(
            vault_path,
            lambda v: v.unlock(passphrase),
            timeout=timeout,
            engine=engine,
            epoch_retention=epoch_retention,
            receipt_retention=receipt_retention,
            max_message_size=max_message_size,
            credential_validator=credential_validator,
        )

    @classmethod
    def open_with_key(
        cls,
        vault_path: str | os.PathLike[str] | PostgresAddress,
        key: bytes,
        *,
        timeout: float = 0.0,
        engine: EngineName | None = None,
        epoch_retention: int = DEFAULT_EPOCH_RETENTION,
        receipt_retention: int = DEFAULT_RECEIPT_RETENTION,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        credential_validator: CredentialValidator | None = None,
    ) -> MlsClient:
        """As :meth:`open`, for a vault made by :meth:`create_with_key`."""
        return cls._open(
            vault_path,
            lambda v: v.unlock_with_key(key),
            timeout=timeout,
            engine=engine,
            epoch_retention=epoch_retention,
            receipt_retention=receipt_retention,
            max_message_size=max_message_size,
            credential_validator=credential_validator,
        )

    @classmethod
    def _open(
        cls,
        vault_path: str | os.PathLike[str] | PostgresAddress,
        unlock: Callable[[Vault | PostgresVault], None],
        *,
        timeout: float,
        engine: EngineName | None,
        epoch_retention: int,
        receipt_retention: int,
        max_message_size: int,
        credential_validator: CredentialValidator | None,
    ) -> MlsClient:
        _check_engine(engine, optional=True)
        if engine == "mls-rs":
            from mls.mlsrs import load_binding

            load_binding()  # fail before the vault is touched
        vault: Vault | PostgresVault
        if isinstance(vault_path, (str, os.PathLike)):
            vault = Vault.open(Path(vault_path), timeout=timeout)
        else:
            vault = _postgres_address(vault_path, sqlcipher=False).open_vault(timeout=timeout)
        try:
            unlock(vault)
            storage = GranularStorage.load(vault)
            return cls(
                vault,
                storage,
                engine=engine,
                epoch_retention=epoch_retention,
                receipt_retention=receipt_retention,
                max_message_size=max_message_size,
                credential_validator=credential_validator,
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
        """Who this client is to other members.

        The identity of its basic credential, or, once its credential is an X.509 chain,
        what the credential validator says the leaf certificate names (with
        :class:`mls.X509CredentialValidator`'s default, its first subjectAltName).
        """
        return self._engine.identity

    @property
    def engine_name(self) -> EngineName:
        """``"native"`` or ``"mls-rs"``: the engine this vault belongs to."""
        return self._engine.name

    @property
    def cipher_suite(self) -> int:
        """The suite of this client's first signature key (the default for new groups)."""
        return self._engine.cipher_suite

    @property
    def max_message_size(self) -> int:
        """The largest message, Welcome or key package accepted, in bytes."""
        return self._max_message_size

    @property
    def vault(self) -> Vault | PostgresVault:
        """The underlying vault (for stats and verify; do not write to it directly)."""
        return self._vault

    @property
    def pending_events(self) -> int:
        """State changes not yet in the vault: 0 whenever a call that returned bytes is done."""
        return self._storage.pending_events()

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise VaultClosed("this MlsClient (and its vault) is closed")

    @contextlib.contextmanager
    def _durable(self) -> Iterator[None]:
        """One storage operation around the block, then a flush: the durability barrier.

        If anything fails the operation is rolled back, and the engine and the receipt
        log drop what they cached from it, so a failed call leaves the client as if it
        had not been made.
        """
        with self._lock:
            self._check_open()
            try:
                with self._storage.operation():
                    yield
                _pace()
                # On an AsyncMlsClient worker a big flush frees the GIL between its slices;
                # a small one is shorter than a pause is worth (each costs ~0.2 ms).
                if _pacer.active and self._storage.pending_events() > _BARRIER_YIELD_EVENTS:
                    self._drainer.flush(yield_gil=True)
                else:
                    self._drainer.flush()
            except BaseException:
                self._engine.rolled_back()
                self._receipts.reload()
                raise

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        with self._lock:
            self._check_open()
            yield

    def _input(self, data: object, what: str) -> bytes:
        """Bytes from outside: type and size are checked before anything parses them."""
        data = _check_bytes(data, what)
        if len(data) > self._max_message_size:
            raise InvalidMessage(
                f"the {what} is {len(data)} bytes; this client accepts at most "
                f"{self._max_message_size} (max_message_size)"
            )
        return data

    def _group_id(self, group_id: object) -> bytes:
        group_id = _check_bytes(group_id, "group id")
        if not group_id:
            raise ValueError("group id must not be empty")
        return group_id

    def _leaves_of(self, group_id: bytes, identities: Sequence[bytes]) -> list[int]:
        members = self._engine.members(group_id)
        leaves: list[int] = []
        for identity in identities:
            found = [m.leaf_index for m in members if m.identity == identity]
            if not found:
                raise UnknownMember("no member of this group has that identity")
            leaves.extend(found)
        return leaves

    # ------------------------------------------------------------------ key packages

    def generate_key_package(
        self,
        *,
        cipher_suite: int | None = None,
        lifetime: int | None = None,
        last_resort: bool = False,
    ) -> bytes:
        """A new key package (MLSMessage wire format), in the vault before return.

        Args:
            cipher_suite: any of RFC 9420's seven natively (default :attr:`cipher_suite`);
                the first use of a suite makes this client a signature key of it.
            lifetime: seconds it stays valid (default: the engine's, 90 days natively).
            last_resort: reusable: joining with it does not consume it (publish one
                for when every one-time key package is used up).

        Raises:
            Unsupported: mls-rs with a lifetime, last resort, or another suite.
        """
        if lifetime is not None:
            _check_positive(lifetime, "lifetime")
        suite = self.cipher_suite if cipher_suite is None else cipher_suite
        with self._durable():
            return self._engine.generate_key_package(
                cipher_suite=suite, lifetime=lifetime, last_resort=bool(last_resort)
            )

    def signature_key(self, cipher_suite: int | None = None) -> bytes:
        """This client's signature public key in ``cipher_suite`` (default :attr:`cipher_suite`).

        The key an X.509 leaf certificate must certify: have the application's
        certificate authority issue one for it, then :meth:`set_credential`.  The first use
        of a suite makes (and stores, durably) a key of that suite.  Encoded as MLS
        encodes signature keys: raw for EdDSA, an uncompressed point for ECDSA.

        Raises:
            Unsupported: mls-rs with another suite than 1.
        """
        suite = self.cipher_suite if cipher_suite is None else cipher_suite
        with self._durable():
            return self._engine.signature_key(suite)

    def set_credential(
        self, certificates: Sequence[bytes], *, cipher_suite: int | None = None
    ) -> None:
        """Make an X.509 certificate chain this client's credential in ``cipher_suite``.

        ``certificates`` is DER, leaf first, each certified by the next; the leaf must
        certify :meth:`signature_key` of that suite.  The client's credential validator
        (give :class:`mls.X509CredentialValidator` at :meth:`create` / :meth:`open`) must
        accept it.  Key packages and groups made from now on carry it; in groups we are
        already in, our leaf takes it at our next commit with a path (:meth:`update_keys`),
        which the other members accept when their validator calls it a valid successor of
        our old credential (same identity).  Durable on return; kept across restarts.

        Raises:
            InvalidCredential: the validator refuses the chain for our key.
            Unsupported: on mls-rs (basic credentials only).
        """
        if isinstance(certificates, bytes | bytearray):
            raise TypeError("certificates must be a sequence of DER certificates, leaf first")
        chain = [_check_bytes(c, "certificate") for c in certificates]
        suite = self.cipher_suite if cipher_suite is None else cipher_suite
        with self._durable():
            self._engine.set_credential(chain, cipher_suite=suite)

    def lost_key_packages(self) -> list[LostKeyPackage]:
        """Published key packages whose private keys were lost when their process ended.

        Always empty on the native engine.  On mls-rs, withdraw them from wherever they
        were published, then call :meth:`discard_lost_key_packages`.
        """
        with self._reading():
            return self._engine.lost_key_packages()

    def discard_lost_key_packages(self) -> int:
        """Forget the records of lost key packages; returns how many were dropped."""
        with self._durable():
            return self._engine.discard_lost_key_packages()

    def store_external_psk(self, psk_id: bytes, secret: bytes) -> None:
        """Store an external pre-shared key (durable on return) for PSK proposals/commits.

        Raises:
            Unsupported: on mls-rs.
        """
        psk_id, secret = _check_bytes(psk_id, "psk_id"), _check_bytes(secret, "secret")
        if not psk_id or not secret:
            raise ValueError("psk_id and secret must be non-empty")
        if len(psk_id) > MAX_PSK_ID_LEN:
            # The id is the PSK's row key in the vault; refuse it here, in terms of
            # the argument, rather than deep in storage in terms of row keys.
            raise ValueError(
                f"psk_id is {len(psk_id)} bytes; this client stores ids of at most "
                f"{MAX_PSK_ID_LEN} bytes"
            )
        with self._durable():
            self._engine.store_external_psk(psk_id, secret)

    # ------------------------------------------------------------------ inspection

    def group_ids(self) -> list[bytes]:
        """The groups this client is a member of, sorted."""
        with self._reading():
            return self._engine.group_ids()

    def members(self, group_id: bytes) -> list[bytes]:
        """The identities in the group's ratchet tree, in leaf order."""
        return [m.identity for m in self.roster(group_id)]

    def roster(self, group_id: bytes) -> list[Member]:
        """The members as records (leaf index, identity, credential, keys), in leaf order."""
        group_id = self._group_id(group_id)
        with self._reading():
            return self._engine.members(group_id)

    def group_state(self, group_id: bytes) -> GroupState:
        """One record of the group's current epoch: members, suite, settings, proposals."""
        group_id = self._group_id(group_id)
        with self._reading():
            return self._engine.state(group_id)

    def epoch(self, group_id: bytes) -> int:
        """The group's current epoch."""
        group_id = self._group_id(group_id)
        with self._reading():
            return self._engine.epoch(group_id)

    def epoch_authenticator(self, group_id: bytes) -> bytes:
        """The current epoch authenticator (RFC 9420 §8.7), equal on every member.

        Raises:
            Unsupported: on mls-rs.
        """
        value = self.group_state(group_id).epoch_authenticator
        if value is None:
            raise Unsupported(self.engine_name, "the epoch authenticator")
        return value

    def own_leaf_index(self, group_id: bytes) -> int:
        """Our leaf index in the group."""
        return self.group_state(group_id).own_leaf_index

    def pending_proposals(self, group_id: bytes) -> list[PendingProposal]:
        """Proposals received or sent in this epoch, waiting for a commit.

        Raises:
            Unsupported: on mls-rs.
        """
        value = self.group_state(group_id).pending_proposals
        if value is None:
            raise Unsupported(self.engine_name, "listing pending proposals")
        return list(value)

    # ------------------------------------------------------------------ groups

    def create_group(
        self,
        group_id: bytes | None = None,
        *,
        cipher_suite: int | None = None,
        settings: GroupSettings | None = None,
    ) -> bytes:
        """Create a group with only this client in it; returns its id (random if omitted).

        Args:
            cipher_suite: any of RFC 9420's seven natively (default :attr:`cipher_suite`).
            settings: handshake wire format and padding of this group (default: public
                handshakes, no padding).

        Raises:
            ValueError: this client already has a group with that id, or the id is longer
                than :data:`mls.categories.MAX_GROUP_ID_LEN`.
            Unsupported: settings or suite the engine cannot honour.
        """
        if group_id is not None:
            group_id = self._group_id(group_id)
            if len(group_id) > MAX_GROUP_ID_LEN:  # longer ids are only ever looked up
                raise ValueError(f"group id must be 1 to {MAX_GROUP_ID_LEN} bytes")
        suite = self.cipher_suite if cipher_suite is None else cipher_suite
        with self._durable():
            return self._engine.create_group(
                group_id, cipher_suite=suite, settings=settings or GroupSettings()
            )

    def join(
        self,
        welcome: bytes,
        *,
        settings: GroupSettings | None = None,
        ratchet_tree: bytes | None = None,
    ) -> bytes:
        """Join a group from a Welcome; returns the group id.  Durable before return.

        Args:
            settings: this member's settings for the group (handshake wire format, padding).
            ratchet_tree: the group's tree (:meth:`ratchet_tree` of a member), needed when
                the Welcome carries none.

        Raises:
            UnknownKeyPackage: it addresses none of our unused key packages (also: a
                Welcome used a second time).
            KeyPackageLost: (mls-rs) it is for a key package of an earlier process.
            InvalidMessage: it does not parse or verify.
        """
        welcome = self._input(welcome, "Welcome")
        tree = None if ratchet_tree is None else self._input(ratchet_tree, "ratchet tree")
        with self._durable():
            return self._engine.join(
                welcome, settings=settings or GroupSettings(), ratchet_tree=tree
            )

    def join_by_external_commit(
        self,
        group_info: bytes,
        *,
        ratchet_tree: bytes | None = None,
        resync: bool = False,
        settings: GroupSettings | None = None,
        aad: bytes = b"",
        pending: bool = False,
    ) -> tuple[bytes, bytes]:
        """Join the group of a GroupInfo by an external commit; returns ``(group id, commit)``.

        Send the commit to the group through the delivery service.  By default we are in
        the new epoch on return; with ``pending=True`` the join waits as a pending commit
        (:meth:`merge_pending_commit` once accepted, or its echo; :meth:`clear_pending_commit`
        once rejected).  Durable before return.

        Args:
            ratchet_tree: the group's tree when the GroupInfo carries none.
            resync: replace our own old leaf in the same commit (a member that lost its
                state comes back); local state of the group, if any, is replaced.

        Raises:
            InvalidMessage: not a valid GroupInfo, or already a member (without ``resync``).
            PendingCommitExists: a commit of ours is pending in that group.
            Unsupported: on mls-rs.
        """
        group_info = self._input(group_info, "GroupInfo")
        tree = None if ratchet_tree is None else self._input(ratchet_tree, "ratchet tree")
        with self._durable():
            return self._engine.join_by_external_commit(
                group_info,
                ratchet_tree=tree,
                resync=bool(resync),
                settings=settings or GroupSettings(),
                aad=_check_bytes(aad, "aad"),
                pending=bool(pending),
            )

    def group_info(self, group_id: bytes, *, with_ratchet_tree: bool = True) -> bytes:
        """A GroupInfo of the current epoch, signed by us, for external joins.

        Valid for one epoch: publish a new one after every commit.  Without the ratchet
        tree, joiners need :meth:`ratchet_tree` out of band.

        Raises:
            Unsupported: on mls-rs.
        """
        group_id = self._group_id(group_id)
        with self._durable():
            return self._engine.group_info(group_id, with_ratchet_tree=bool(with_ratchet_tree))

    def ratchet_tree(self, group_id: bytes) -> bytes:
        """The group's public ratchet tree (for joiners whose Welcome or GroupInfo lacks it)."""
        group_id = self._group_id(group_id)
        with self._reading():
            return self._engine.ratchet_tree(group_id)

    def drop_group(self, group_id: bytes) -> None:
        """Forget a group locally, durably (nothing is sent; members still count us in).

        Raises:
            UnknownGroup: we hold neither the group nor a pending external join of it.
        """
        group_id = self._group_id(group_id)
        with self._durable():
            self._engine.drop_group(group_id)

    # ------------------------------------------------------------------ pending commits

    def pending_commit(self, group_id: bytes) -> PendingCommit | None:
        """Our commit awaiting the delivery service's answer, or ``None``.

        After a restart this says what was sent (or about to be): resend exactly
        ``.commit`` (and ``.welcome``), never a new commit.  Always ``None`` on mls-rs.
        """
        group_id = self._group_id(group_id)
        with self._reading():
            return self._engine.pending_commit(group_id)

    def merge_pending_commit(self, group_id: bytes) -> int:
        """The delivery service accepted our pending commit: apply it; returns the new epoch.

        Raises:
            NoPendingCommit: there is none.
            EpochMismatch: the group moved on without it (it can only be cleared).
            Unsupported: on mls-rs.
        """
        group_id = self._group_id(group_id)
        with self._durable():
            return self._engine.merge_pending_commit(group_id)

    def clear_pending_commit(self, group_id: bytes) -> None:
        """The delivery service rejected our pending commit: forget it, stay in this epoch.

        Raises:
            NoPendingCommit: there is none.
            Unsupported: on mls-rs.
        """
        group_id = self._group_id(group_id)
        with self._durable():
            self._engine.clear_pending_commit(group_id)

    def commit(
        self,
        group_id: bytes,
        *,
        add: Sequence[bytes] = (),
        remove: Sequence[bytes] = (),
        psks: Sequence[bytes] = (),
        extensions: Sequence[GroupContextExtension] | None = None,
        force_path: bool = False,
        pending: bool = False,
    ) -> tuple[bytes, bytes | None]:
        """Commit the pending proposals plus inline ones; returns ``(commit, welcome)``.

        Applied here at once (this client moves to the new epoch before return), unless
        ``pending``: send the commit to the group and the Welcome (``None`` unless someone
        was added) to the new members.

        Args:
            add: key packages of members to add.
            remove: identities of members to remove.
            psks: ids of stored external PSKs to inject (:meth:`store_external_psk`).
            extensions: new GroupContext extensions (replacing the current ones).
            force_path: include an update path even when the proposals do not need one
                (rotates our leaf key).
            pending: keep the commit pending until the delivery service answers: the
                group stays in its epoch; :meth:`merge_pending_commit` (or processing the
                commit's echo) applies it, :meth:`clear_pending_commit` drops it.  Durable
                either way, so it can be resent byte for byte after a crash
                (:meth:`pending_commit`).

        Raises:
            PendingCommitExists: a commit of ours is already pending in this group.
        """
        group_id = self._group_id(group_id)
        kps = [self._input(k, "key package") for k in add]
        wanted = [_check_bytes(i, "identity") for i in remove]
        psk_ids = [ExternalPsk(_check_bytes(p, "psk id")) for p in psks]
        with self._durable():
            leaves = self._leaves_of(group_id, wanted) if wanted else []
            return self._engine.commit(
                group_id,
                add=kps,
                remove=leaves,
                psks=psk_ids,
                extensions=None if extensions is None else list(extensions),
                force_path=bool(force_path),
                pending=bool(pending),
            )

    def add_members(self, group_id: bytes, key_packages: Sequence[bytes]) -> tuple[bytes, bytes]:
        """Commit the addition of members; returns ``(commit, welcome)`` wire bytes."""
        if not key_packages:
            raise ValueError("add_members needs at least one key package")
        commit, welcome = self.commit(group_id, add=key_packages)
        if welcome is None:  # an engine makes one whenever members are added
            raise InvalidMessage("the engine produced no Welcome for the added members")
        return commit, welcome

    def remove_members(self, group_id: bytes, identities: Sequence[bytes]) -> bytes:
        """Commit the removal of every leaf holding one of ``identities``; returns the commit.

        Raises:
            UnknownMember: an identity is not in the group.
        """
        if not identities:
            raise ValueError("remove_members needs at least one identity")
        return self.commit(group_id, remove=identities)[0]

    def update_keys(self, group_id: bytes) -> bytes:
        """Commit a fresh path (key update) plus any proposals received; returns the commit."""
        group_id = self._group_id(group_id)
        with self._durable():
            commit, _ = self._engine.commit(
                group_id,
                add=(),
                remove=(),
                psks=(),
                extensions=None,
                force_path=True,
                pending=False,
            )
        return commit

    def leave(self, group_id: bytes) -> bytes:
        """A proposal to remove ourselves; another member commits it."""
        group_id = self._group_id(group_id)
        with self._durable():
            me = self._engine.state(group_id).own_leaf_index
            return self._engine.propose_remove(group_id, me)

    # ------------------------------------------------------------------ proposals

    def propose_add(self, group_id: bytes, key_package: bytes) -> bytes:
        """A proposal to add the owner of ``key_package`` (committed by :meth:`commit`)."""
        group_id = self._group_id(group_id)
        key_package = self._input(key_package, "key package")
        with self._durable():
            return self._engine.propose_add(group_id, key_package)

    def propose_remove(self, group_id: bytes, identity: bytes) -> bytes:
        """A proposal to remove the member with ``identity``.

        Raises:
            UnknownMember: nobody in the group has it.
        """
        group_id = self._group_id(group_id)
        identity = _check_bytes(identity, "identity")
        with self._durable():
            leaf = self._leaves_of(group_id, [identity])[0]
            return self._engine.propose_remove(group_id, leaf)

    def propose_update(self, group_id: bytes) -> bytes:
        """A proposal replacing our leaf's encryption key (its private key is stored first).

        Raises:
            Unsupported: on mls-rs (use :meth:`update_keys`).
        """
        group_id = self._group_id(group_id)
        with self._durable():
            return self._engine.propose_update(group_id)

    def propose_external_psk(self, group_id: bytes, psk_id: bytes) -> bytes:
        """A proposal injecting a stored external PSK into the next epoch.

        Raises:
            InvalidProposal: no PSK with that id is stored.
            Unsupported: on mls-rs.
        """
        group_id = self._group_id(group_id)
        psk_id = _check_bytes(psk_id, "psk id")
        with self._durable():
            return self._engine.propose_external_psk(group_id, psk_id)

    def propose_resumption_psk(self, group_id: bytes, epoch: int) -> bytes:
        """A proposal injecting the resumption PSK of one of the group's retained epochs.

        Raises:
            InvalidProposal: that epoch's resumption PSK is no longer kept.
            Unsupported: on mls-rs.
        """
        group_id = self._group_id(group_id)
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError("epoch must be an int >= 0")
        with self._durable():
            return self._engine.propose_resumption_psk(group_id, epoch)

    def propose_group_context_extensions(
        self, group_id: bytes, extensions: Sequence[GroupContextExtension]
    ) -> bytes:
        """A proposal replacing the group's GroupContext extensions.

        Raises:
            Unsupported: on mls-rs.
        """
        group_id = self._group_id(group_id)
        with self._durable():
            return self._engine.propose_group_context_extensions(group_id, list(extensions))

    # ------------------------------------------------------------------ messages

    def encrypt(self, group_id: bytes, plaintext: bytes, *, aad: bytes = b"") -> bytes:
        """Encrypt an application message; the advanced ratchet is durable before return.

        Args:
            aad: authenticated data sent in the clear with the message (e.g. a message
                id for the delivery service); receivers get it as
                :attr:`Received.authenticated_data`.

        Raises:
            Unsupported: non-empty ``aad`` on mls-rs.
        """
        return self._encrypt_all([(group_id, plaintext)], _check_bytes(aad, "aad"))[0]

    def encrypt_many(self, items: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
        """Encrypt for many groups with ONE vault commit (group commit); results in order.

        Raises:
            MlsError: with ``index`` set to the failing item; nothing was encrypted.
        """
        return self._encrypt_all(list(items), b"")

    def _encrypt_all(self, items: list[tuple[bytes, bytes]], aad: bytes) -> list[bytes]:
        pairs = [(self._group_id(g), _check_bytes(p, "plaintext")) for g, p in items]
        out: list[bytes] = []
        with self._durable():
            for index, (group_id, plaintext) in enumerate(pairs):
                _pace()
                try:
                    out.append(self._engine.encrypt(group_id, plaintext, aad=aad))
                except MlsError as exc:
                    exc.index = index
                    raise
        return out

    def process(self, group_id: bytes, message: bytes) -> Received:
        """Process one group message (MLSMessage wire format); durable before return.

        If this call is interrupted (crash) before it returns, the message can be
        processed again after :meth:`open` (its stored outcome comes back, marked
        ``replay``).

        Raises:
            InvalidMessage: malformed, too big, for another group, or fails to verify.
            EpochMismatch: for an epoch ahead of ours (``future``, ``retryable``) or one
                we no longer keep.
            UnknownGroup: we are not in that group.
        """
        return self._process_all([(group_id, message)])[0]

    def process_many(self, items: Iterable[tuple[bytes, bytes]]) -> list[Received]:
        """Process many messages with ONE vault commit; results in order.

        Raises:
            MlsError: with ``index`` set to the failing item; the whole batch was rolled
                back, so every message can be processed again.
        """
        return self._process_all(list(items))

    def _process_all(self, items: list[tuple[bytes, bytes]]) -> list[Received]:
        pairs = [(self._group_id(g), self._input(m, "message")) for g, m in items]
        out: list[Received] = []
        with self._durable():
            for index, (group_id, raw) in enumerate(pairs):
                _pace()
                try:
                    stored = self._receipts.lookup(group_id, raw)
                    if stored is None:
                        stored = self._process_one(group_id, raw)
                        self._receipts.remember(group_id, raw, stored)
                    out.append(stored)
                except MlsError as exc:
                    exc.index = index
                    raise
        return out

    def _process_one(self, group_id: bytes, raw: bytes) -> Received:
        header = peek_header(raw)
        ours = self._engine.pending_commit(group_id) if header.is_commit else None
        echo = ours is not None and ours.commit == raw
        if not echo:  # our own pending commit echoed: the engine merges it
            self._check_epoch(group_id, header)
        before: list[Member] | None = None
        if header.is_commit:
            before = (
                []
                if echo and ours is not None and ours.external
                else (self._engine.members(group_id))
            )
        got = self._engine.process(group_id, raw)
        assert header.epoch is not None
        changes = None
        if before is not None:
            if got.removed:  # the group is gone: the new tree cannot be seen any more
                changes = CommitChanges(header.epoch + 1, removed=(self.identity,))
            else:
                changes = _changes(before, self._engine.members(group_id), header.epoch + 1)
        return Received(
            got.kind,
            got.sender,
            got.data,
            got.removed,
            authenticated_data=header.authenticated_data,
            epoch=header.epoch,
            changes=changes,
            merged_pending_commit=got.merged_pending_commit,
            cleared_pending_commit=got.cleared_pending_commit,
            external_sender=got.external_sender,
        )

    def _check_epoch(self, group_id: bytes, header: MessageHeader) -> None:
        """Refuse, the same way on every engine, what is for another group or epoch."""
        if not header.is_group_message:
            raise InvalidMessage("not a group message (Welcome, GroupInfo or key package?)")
        current = self._engine.epoch(group_id)  # UnknownGroup first
        if header.group_id != group_id:
            raise InvalidMessage("the message belongs to another group")
        assert header.epoch is not None
        if header.epoch > current:
            raise EpochMismatch(
                f"message for epoch {header.epoch}, the group is at {current}: "
                "a commit is missing; process it first, then this message again",
                message_epoch=header.epoch,
                group_epoch=current,
            )
        if header.epoch < current and (
            not header.is_application or header.epoch not in self._engine.past_epochs(group_id)
        ):
            raise EpochMismatch(
                f"message for epoch {header.epoch}, the group is at {current}; "
                "that epoch is no longer accepted",
                message_epoch=header.epoch,
                group_epoch=current,
            )

    def export_secret(self, group_id: bytes, label: bytes, context: bytes, length: int) -> bytes:
        """The MLS exporter secret of the current epoch (equal on every member).

        Raises:
            ValueError: ``length`` outside 1..65535.
        """
        group_id = self._group_id(group_id)
        label, context = _check_bytes(label, "label"), _check_bytes(context, "context")
        if isinstance(length, bool) or not isinstance(length, int) or not 0 < length < 2**16:
            raise ValueError("length must be an int in [1, 65535]")
        with self._reading():
            return self._engine.export_secret(group_id, label, context, length)


class NativeClient(MlsClient):
    """Deprecated alias of :class:`MlsClient` (kept one release); use ``MlsClient``.

    ``NativeClient.create(...)`` makes a native-engine client, as it always did.
    """

    @classmethod
    def create(
        cls,
        vault_path: str | os.PathLike[str] | PostgresAddress,
        passphrase: str | bytes,
        **kwargs: Any,
    ) -> MlsClient:
        """``MlsClient.create(..., engine="native")``, with a deprecation warning."""
        warnings.warn(
            "NativeClient is deprecated; use MlsClient.create(..., engine='native')",
            DeprecationWarning,
            stacklevel=2,
        )
        kwargs.setdefault("engine", "native")
        return MlsClient.create(vault_path, passphrase, **kwargs)

    @classmethod
    def open(
        cls,
        vault_path: str | os.PathLike[str] | PostgresAddress,
        passphrase: str | bytes,
        **kwargs: Any,
    ) -> MlsClient:
        """``MlsClient.open(...)``, with a deprecation warning."""
        warnings.warn(
            "NativeClient is deprecated; use MlsClient.open(...)",
            DeprecationWarning,
            stacklevel=2,
        )
        return MlsClient.open(vault_path, passphrase, **kwargs)


class AsyncMlsClient:
    """The asyncio twin of :class:`MlsClient`: every method, run in a worker thread.

    The durable part (the fsync of the barrier) then never blocks the event loop.  The
    worker pauses for a moment once per 2 ms of a call (between the messages of a
    batch, before the barrier's flush), so the loop waiting for the GIL gets it: see
    docs/mls-client.md, "How long the event loop can wait for the client".  The
    client's lock still runs calls one at a time: await one before starting the next
    when their order matters (it always does for messages of the same group).
    """

    def __init__(self, client: MlsClient):
        self._client = client

    @classmethod
    async def create(
        cls,
        vault_path: str | os.PathLike[str] | PostgresAddress,
        passphrase: str | bytes,
        *,
        identity: bytes,
        kdf: KdfParameters = profiles.RFC_9106_LOW_MEMORY,
        engine: EngineName = "native",
        epoch_retention: int = DEFAULT_EPOCH_RETENTION,
        receipt_retention: int = DEFAULT_RECEIPT_RETENTION,
        cipher_suite: int = DEFAULT_CIPHER_SUITE,
        sqlcipher: bool = False,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        credential_validator: CredentialValidator | None = None,
        credential: X509Credential | None = None,
    ) -> AsyncMlsClient:
        """:meth:`MlsClient.create` off the event loop (Argon2id is slow on purpose)."""
        client = await asyncio.to_thread(
            MlsClient.create,
            vault_path,
            passphrase,
            identity=identity,
            kdf=kdf,
            engine=engine,
            epoch_retention=epoch_retention,
            receipt_retention=receipt_retention,
            cipher_suite=cipher_suite,
            sqlcipher=sqlcipher,
            max_message_size=max_message_size,
            credential_validator=credential_validator,
            credential=credential,
        )
        return cls(client)

    @classmethod
    async def create_with_key(
        cls,
        vault_path: str | os.PathLike[str] | PostgresAddress,
        key: bytes,
        *,
        identity: bytes,
        engine: EngineName = "native",
        epoch_retention: int = DEFAULT_EPOCH_RETENTION,
        receipt_retention: int = DEFAULT_RECEIPT_RETENTION,
        cipher_suite: int = DEFAULT_CIPHER_SUITE,
        sqlcipher: bool = False,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        credential_validator: CredentialValidator | None = None,
        credential: X509Credential | None = None,
    ) -> AsyncMlsClient:
        """:meth:`MlsClient.create_with_key` off the event loop."""
        client = await asyncio.to_thread(
            MlsClient.create_with_key,
            vault_path,
            key,
            identity=identity,
            engine=engine,
            epoch_retention=epoch_retention,
            receipt_retention=receipt_retention,
            cipher_suite=cipher_suite,
            sqlcipher=sqlcipher,
            max_message_size=max_message_size,
            credential_validator=credential_validator,
            credential=credential,
        )
        return cls(client)

    @classmethod
    async def open(
        cls,
        vault_path: str | os.PathLike[str] | PostgresAddress,
        passphrase: str | bytes,
        *,
        timeout: float = 0.0,
        engine: EngineName | None = None,
        epoch_retention: int = DEFAULT_EPOCH_RETENTION,
        receipt_retention: int = DEFAULT_RECEIPT_RETENTION,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        credential_validator: CredentialValidator | None = None,
    ) -> AsyncMlsClient:
        """:meth:`MlsClient.open` off the event loop."""
        client = await asyncio.to_thread(
            MlsClient.open,
            vault_path,
            passphrase,
            timeout=timeout,
            engine=engine,
            epoch_retention=epoch_retention,
            receipt_retention=receipt_retention,
            max_message_size=max_message_size,
            credential_validator=credential_validator,
        )
        return cls(client)

    @classmethod
    async def open_with_key(
        cls,
        vault_path: str | os.PathLike[str] | PostgresAddress,
        key: bytes,
        *,
        timeout: float = 0.0,
        engine: EngineName | None = None,
        epoch_retention: int = DEFAULT_EPOCH_RETENTION,
        receipt_retention: int = DEFAULT_RECEIPT_RETENTION,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        credential_validator: CredentialValidator | None = None,
    ) -> AsyncMlsClient:
        """:meth:`MlsClient.open_with_key` off the event loop."""
        client = await asyncio.to_thread(
            MlsClient.open_with_key,
            vault_path,
            key,
            timeout=timeout,
            engine=engine,
            epoch_retention=epoch_retention,
            receipt_retention=receipt_retention,
            max_message_size=max_message_size,
            credential_validator=credential_validator,
        )
        return cls(client)

    @property
    def sync(self) -> MlsClient:
        """The wrapped client."""
        return self._client

    @property
    def identity(self) -> bytes:
        """See :attr:`MlsClient.identity`."""
        return self._client.identity

    @property
    def engine_name(self) -> EngineName:
        """See :attr:`MlsClient.engine_name`."""
        return self._client.engine_name

    @property
    def vault(self) -> Vault | PostgresVault:
        """See :attr:`MlsClient.vault`."""
        return self._client.vault

    @property
    def cipher_suite(self) -> int:
        """See :attr:`MlsClient.cipher_suite`."""
        return self._client.cipher_suite

    @property
    def max_message_size(self) -> int:
        """See :attr:`MlsClient.max_message_size`."""
        return self._client.max_message_size

    @property
    def pending_events(self) -> int:
        """See :attr:`MlsClient.pending_events`."""
        return self._client.pending_events

    async def _run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        def call() -> _T:
            return _paced(fn, *args, **kwargs)

        return await asyncio.to_thread(call)

    async def generate_key_package(
        self,
        *,
        cipher_suite: int | None = None,
        lifetime: int | None = None,
        last_resort: bool = False,
    ) -> bytes:
        """See :meth:`MlsClient.generate_key_package`."""
        return await self._run(
            self._client.generate_key_package,
            cipher_suite=cipher_suite,
            lifetime=lifetime,
            last_resort=last_resort,
        )

    async def signature_key(self, cipher_suite: int | None = None) -> bytes:
        """See :meth:`MlsClient.signature_key`."""
        return await self._run(self._client.signature_key, cipher_suite)

    async def set_credential(
        self, certificates: Sequence[bytes], *, cipher_suite: int | None = None
    ) -> None:
        """See :meth:`MlsClient.set_credential`."""
        # A copy, so the caller may reuse its list while the worker thread runs; bytes are
        # passed as they are, for the same TypeError as the synchronous call.
        chain = certificates if isinstance(certificates, bytes | bytearray) else list(certificates)
        await self._run(self._client.set_credential, chain, cipher_suite=cipher_suite)

    async def lost_key_packages(self) -> list[LostKeyPackage]:
        """See :meth:`MlsClient.lost_key_packages`."""
        return await self._run(self._client.lost_key_packages)

    async def discard_lost_key_packages(self) -> int:
        """See :meth:`MlsClient.discard_lost_key_packages`."""
        return await self._run(self._client.discard_lost_key_packages)

    async def store_external_psk(self, psk_id: bytes, secret: bytes) -> None:
        """See :meth:`MlsClient.store_external_psk`."""
        await self._run(self._client.store_external_psk, psk_id, secret)

    async def group_ids(self) -> list[bytes]:
        """See :meth:`MlsClient.group_ids`."""
        return await self._run(self._client.group_ids)

    async def members(self, group_id: bytes) -> list[bytes]:
        """See :meth:`MlsClient.members`."""
        return await self._run(self._client.members, group_id)

    async def roster(self, group_id: bytes) -> list[Member]:
        """See :meth:`MlsClient.roster`."""
        return await self._run(self._client.roster, group_id)

    async def group_state(self, group_id: bytes) -> GroupState:
        """See :meth:`MlsClient.group_state`."""
        return await self._run(self._client.group_state, group_id)

    async def epoch(self, group_id: bytes) -> int:
        """See :meth:`MlsClient.epoch`."""
        return await self._run(self._client.epoch, group_id)

    async def epoch_authenticator(self, group_id: bytes) -> bytes:
        """See :meth:`MlsClient.epoch_authenticator`."""
        return await self._run(self._client.epoch_authenticator, group_id)

    async def own_leaf_index(self, group_id: bytes) -> int:
        """See :meth:`MlsClient.own_leaf_index`."""
        return await self._run(self._client.own_leaf_index, group_id)

    async def pending_proposals(self, group_id: bytes) -> list[PendingProposal]:
        """See :meth:`MlsClient.pending_proposals`."""
        return await self._run(self._client.pending_proposals, group_id)

    async def create_group(
        self,
        group_id: bytes | None = None,
        *,
        cipher_suite: int | None = None,
        settings: GroupSettings | None = None,
    ) -> bytes:
        """See :meth:`MlsClient.create_group`."""
        return await self._run(
            self._client.create_group, group_id, cipher_suite=cipher_suite, settings=settings
        )

    async def join(
        self,
        welcome: bytes,
        *,
        settings: GroupSettings | None = None,
        ratchet_tree: bytes | None = None,
    ) -> bytes:
        """See :meth:`MlsClient.join`."""
        return await self._run(
            self._client.join, welcome, settings=settings, ratchet_tree=ratchet_tree
        )

    async def join_by_external_commit(
        self,
        group_info: bytes,
        *,
        ratchet_tree: bytes | None = None,
        resync: bool = False,
        settings: GroupSettings | None = None,
        aad: bytes = b"",
        pending: bool = False,
    ) -> tuple[bytes, bytes]:
        """See :meth:`MlsClient.join_by_external_commit`."""
        return await self._run(
            self._client.join_by_external_commit,
            group_info,
            ratchet_tree=ratchet_tree,
            resync=resync,
            settings=settings,
            aad=aad,
            pending=pending,
        )

    async def group_info(self, group_id: bytes, *, with_ratchet_tree: bool = True) -> bytes:
        """See :meth:`MlsClient.group_info`."""
        return await self._run(
            self._client.group_info, group_id, with_ratchet_tree=with_ratchet_tree
        )

    async def ratchet_tree(self, group_id: bytes) -> bytes:
        """See :meth:`MlsClient.ratchet_tree`."""
        return await self._run(self._client.ratchet_tree, group_id)

    async def drop_group(self, group_id: bytes) -> None:
        """See :meth:`MlsClient.drop_group`."""
        await self._run(self._client.drop_group, group_id)

    async def pending_commit(self, group_id: bytes) -> PendingCommit | None:
        """See :meth:`MlsClient.pending_commit`."""
        return await self._run(self._client.pending_commit, group_id)

    async def merge_pending_commit(self, group_id: bytes) -> int:
        """See :meth:`MlsClient.merge_pending_commit`."""
        return await self._run(self._client.merge_pending_commit, group_id)

    async def clear_pending_commit(self, group_id: bytes) -> None:
        """See :meth:`MlsClient.clear_pending_commit`."""
        await self._run(self._client.clear_pending_commit, group_id)

    async def commit(
        self,
        group_id: bytes,
        *,
        add: Sequence[bytes] = (),
        remove: Sequence[bytes] = (),
        psks: Sequence[bytes] = (),
        extensions: Sequence[GroupContextExtension] | None = None,
        force_path: bool = False,
        pending: bool = False,
    ) -> tuple[bytes, bytes | None]:
        """See :meth:`MlsClient.commit`."""
        return await self._run(
            self._client.commit,
            group_id,
            add=list(add),
            remove=list(remove),
            psks=list(psks),
            extensions=None if extensions is None else list(extensions),
            force_path=force_path,
            pending=pending,
        )

    async def add_members(
        self, group_id: bytes, key_packages: Sequence[bytes]
    ) -> tuple[bytes, bytes]:
        """See :meth:`MlsClient.add_members`."""
        return await self._run(self._client.add_members, group_id, list(key_packages))

    async def remove_members(self, group_id: bytes, identities: Sequence[bytes]) -> bytes:
        """See :meth:`MlsClient.remove_members`."""
        return await self._run(self._client.remove_members, group_id, list(identities))

    async def update_keys(self, group_id: bytes) -> bytes:
        """See :meth:`MlsClient.update_keys`."""
        return await self._run(self._client.update_keys, group_id)

    async def leave(self, group_id: bytes) -> bytes:
        """See :meth:`MlsClient.leave`."""
        return await self._run(self._client.leave, group_id)

    async def propose_add(self, group_id: bytes, key_package: bytes) -> bytes:
        """See :meth:`MlsClient.propose_add`."""
        return await self._run(self._client.propose_add, group_id, key_package)

    async def propose_remove(self, group_id: bytes, identity: bytes) -> bytes:
        """See :meth:`MlsClient.propose_remove`."""
        return await self._run(self._client.propose_remove, group_id, identity)

    async def propose_update(self, group_id: bytes) -> bytes:
        """See :meth:`MlsClient.propose_update`."""
        return await self._run(self._client.propose_update, group_id)

    async def propose_external_psk(self, group_id: bytes, psk_id: bytes) -> bytes:
        """See :meth:`MlsClient.propose_external_psk`."""
        return await self._run(self._client.propose_external_psk, group_id, psk_id)

    async def propose_resumption_psk(self, group_id: bytes, epoch: int) -> bytes:
        """See :meth:`MlsClient.propose_resumption_psk`."""
        return await self._run(self._client.propose_resumption_psk, group_id, epoch)

    async def propose_group_context_extensions(
        self, group_id: bytes, extensions: Sequence[GroupContextExtension]
    ) -> bytes:
        """See :meth:`MlsClient.propose_group_context_extensions`."""
        return await self._run(
            self._client.propose_group_context_extensions, group_id, list(extensions)
        )

    async def encrypt(self, group_id: bytes, plaintext: bytes, *, aad: bytes = b"") -> bytes:
        """See :meth:`MlsClient.encrypt`."""
        return await self._run(self._client.encrypt, group_id, plaintext, aad=aad)

    async def encrypt_many(self, items: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
        """See :meth:`MlsClient.encrypt_many`."""
        return await self._run(self._client.encrypt_many, list(items))

    async def process(self, group_id: bytes, message: bytes) -> Received:
        """See :meth:`MlsClient.process`."""
        return await self._run(self._client.process, group_id, message)

    async def process_many(self, items: Iterable[tuple[bytes, bytes]]) -> list[Received]:
        """See :meth:`MlsClient.process_many`."""
        return await self._run(self._client.process_many, list(items))

    async def export_secret(
        self, group_id: bytes, label: bytes, context: bytes, length: int
    ) -> bytes:
        """See :meth:`MlsClient.export_secret`."""
        return await self._run(self._client.export_secret, group_id, label, context, length)

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
