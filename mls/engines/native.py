"""The native RFC 9420 engine behind :class:`mls.engine.MlsEngine`.

Everything the native engine knows lives in the storage, key-package private keys
included, so nothing is ever lost across a restart (its decode cache is keyed by the
stored bytes object, which a rollback replaces).  The adapter turns the client's records
into the engine's types and back, and makes sure every failure is one of
:mod:`mls.errors`.

Cipher suites: a :class:`~mls.native.NativeEngine` signs with one suite's key.  The
client's first identity (row ``native/v1/identity``/``self``) has the suite chosen at
creation; the first group or key package of another suite creates a signature key of
that suite under ``self/suite/<n>`` (same credential identity), and one engine per suite
runs on the same storage.  Each group call goes to the engine of the group's suite.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519

from mls import errors
from mls.engine import (
    ALL_CIPHER_SUITES,
    EngineName,
    EngineReceived,
    ExternalPsk,
    GroupContextExtension,
    GroupSettings,
    GroupState,
    Handshake,
    LostKeyPackage,
    Member,
    PendingCommit,
    PendingProposal,
    ReceivedKind,
    X509Credential,
)
from mls.native import errors as native_errors
from mls.native.codec import Writer
from mls.native.commit import new_psk_nonce
from mls.native.engine import NativeEngine, ProcessedKind
from mls.native.framing import WireFormat
from mls.native.identity import BasicCredentialValidator, CredentialValidator
from mls.native.leaf_node import Credential, CredentialType, Extension
from mls.native.proposals import PreSharedKeyID, ProposalType, PskType
from mls.native.rows import CATEGORY_IDENTITY, IDENTITY_KEY, GroupConfig, decode_epochs
from mls.native.suites import get_suite
from mls.storage import GranularStorage

__all__ = ["IDENTITY_ROW", "NAME", "RECEIPT_CATEGORY", "NativeAdapter"]

NAME: EngineName = "native"
#: Where a native client's identity lives: its presence says a vault belongs to this engine.
IDENTITY_ROW = (CATEGORY_IDENTITY, IDENTITY_KEY)
#: Outcomes of recently processed messages (key: SHA-256 of group id and message).
RECEIPT_CATEGORY = "native/v1/receipt"

_KINDS = {
    ProcessedKind.APPLICATION: ReceivedKind.APPLICATION,
    ProcessedKind.PROPOSAL: ReceivedKind.PROPOSAL,
    ProcessedKind.COMMIT: ReceivedKind.COMMIT,
}
_HANDSHAKE = {
    Handshake.PUBLIC: WireFormat.PUBLIC_MESSAGE,
    Handshake.PRIVATE: WireFormat.PRIVATE_MESSAGE,
}
_ENGINE_MIN_MESSAGE_SIZE = 1024
_PROPOSAL_NAMES = {
    ProposalType.ADD: "add",
    ProposalType.UPDATE: "update",
    ProposalType.REMOVE: "remove",
    ProposalType.PSK: "psk",
    ProposalType.REINIT: "reinit",
    ProposalType.EXTERNAL_INIT: "external_init",
    ProposalType.GROUP_CONTEXT_EXTENSIONS: "group_context_extensions",
}


@contextmanager
def _as_invalid_message(what: str) -> Iterator[None]:
    """Inside message handling, an engine failure of no more specific class is a bad message.

    (A replayed generation raises ``KeyNotFound``, a bad point ``CryptoError``: for the
    caller both mean "this message cannot be accepted".)
    """
    try:
        yield
    except (errors.InvalidMessage, errors.UnknownGroup, errors.UnknownKeyPackage):
        raise
    except native_errors.MlsError as exc:
        raise errors.InvalidMessage(f"{what}: {exc}") from exc


def _suite_identity_key(cipher_suite: int) -> bytes:
    return IDENTITY_KEY + b"/suite/" + str(cipher_suite).encode()


def _welcome_suite(welcome: bytes) -> int | None:
    """The cipher suite a Welcome (MLSMessage) names in the clear, if it is one."""
    if len(welcome) < 6 or welcome[2:4] != b"\x00\x03":
        return None
    return int.from_bytes(welcome[4:6], "big")


def _group_info_suite(group_info: bytes) -> int | None:
    """The cipher suite of a GroupInfo (MLSMessage): its GroupContext's, after the version."""
    if len(group_info) < 8 or group_info[2:4] != b"\x00\x04":
        return None
    return int.from_bytes(group_info[6:8], "big")


def _signature_private_bytes(credential: X509Credential, cipher_suite: int) -> bytes:
    """The credential's private key serialized as the suite's signature scheme stores it.

    Raises:
        InvalidCredential: the key is not of the suite's signature algorithm.
    """
    scheme = get_suite(cipher_suite).sig
    key = credential.private_key
    if scheme in ("ed25519", "ed448"):
        wanted = ed25519.Ed25519PrivateKey if scheme == "ed25519" else ed448.Ed448PrivateKey
        if not isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) or (
            not isinstance(key, wanted)
        ):
            raise errors.InvalidCredential(
                f"cipher suite {cipher_suite} signs with {scheme}; the key is another type"
            )
        return key.private_bytes_raw()
    curves = {"p256": "secp256r1", "p384": "secp384r1", "p521": "secp521r1"}
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != curves.get(scheme):
        raise errors.InvalidCredential(
            f"cipher suite {cipher_suite} signs with ECDSA {scheme}; the key is another type"
        )
    return key.private_numbers().private_value.to_bytes((key.curve.key_size + 7) // 8, "big")


def _x509(certificates: Sequence[bytes]) -> Credential:
    chain = tuple(certificates)
    if not chain or not all(isinstance(c, bytes) for c in chain):
        raise TypeError("certificates must be a non-empty sequence of DER bytes")
    return Credential(CredentialType.X509, certificates=chain)


def _check_suite(cipher_suite: int) -> int:
    if isinstance(cipher_suite, bool) or not isinstance(cipher_suite, int):
        raise TypeError("cipher_suite must be an int")
    if cipher_suite not in ALL_CIPHER_SUITES:
        raise ValueError(f"cipher suite {cipher_suite} is not one of RFC 9420's seven")
    return cipher_suite


class NativeAdapter:
    """:class:`mls.engine.MlsEngine` on :class:`mls.native.NativeEngine`.

    Args:
        storage: a storage holding a native identity (see :meth:`create`).
        epoch_retention: past epochs kept by groups created or joined from now on.
        max_message_size: the engine's own bound on what it reads and writes (at least
            1024 bytes; the client refuses larger input before it gets here).
        credential_validator: the application's identity policy (default: the engine's).
    """

    def __init__(
        self,
        storage: GranularStorage,
        *,
        epoch_retention: int,
        max_message_size: int,
        credential_validator: CredentialValidator | None,
    ) -> None:
        if (
            isinstance(epoch_retention, bool)
            or not isinstance(epoch_retention, int)
            or epoch_retention < 1
        ):
            raise ValueError("epoch retention must be an int >= 1")
        self._storage = storage
        # The engine's floor is 1 KiB; a smaller client bound is enforced by the client.
        self._engine_max = max(max_message_size, _ENGINE_MIN_MESSAGE_SIZE)
        self._validator = credential_validator
        self._engine = NativeEngine(
            storage, max_message_size=self._engine_max, credential_validator=credential_validator
        )
        self._retention = epoch_retention
        self._by_suite: dict[int, NativeEngine] = {self._engine.suite.suite_id: self._engine}

    @classmethod
    def create(
        cls,
        storage: GranularStorage,
        identity: bytes,
        *,
        cipher_suite: int,
        epoch_retention: int,
        max_message_size: int,
        credential_validator: CredentialValidator | None,
        credential: X509Credential | None = None,
    ) -> NativeAdapter:
        """Store a new identity (signature key of ``cipher_suite``) and start on it.

        With ``credential``, its key and chain instead of a fresh key and a basic
        credential (checked by ``credential_validator`` first).
        """
        suite = _check_suite(cipher_suite)
        if credential is None:
            NativeEngine.create(storage, identity, suite=suite)
        else:
            NativeEngine.create(
                storage,
                identity,
                suite=suite,
                signature_private_key=_signature_private_bytes(credential, suite),
                credential=_x509(credential.certificates),
                credential_validator=credential_validator,
            )
        return cls(
            storage,
            epoch_retention=epoch_retention,
            max_message_size=max_message_size,
            credential_validator=credential_validator,
        )

    @staticmethod
    def check_credential(
        credential: X509Credential,
        *,
        cipher_suite: int,
        credential_validator: CredentialValidator | None,
    ) -> None:
        """Refuse, before any file is made, a credential :meth:`create` would refuse.

        Raises:
            InvalidCredential: the key is not of the suite's algorithm, or the validator
                (the default accepts basic credentials only) refuses the chain for it.
        """
        suite = _check_suite(cipher_suite)
        private = _signature_private_bytes(credential, suite)
        with _as_invalid_message("the credential cannot be used"):
            public = get_suite(suite).signature_public_key(private)
        validator = BasicCredentialValidator() if credential_validator is None else (
            credential_validator
        )
        validator.validate(_x509(credential.certificates), public)

    @property
    def name(self) -> EngineName:
        """``"native"``."""
        return NAME

    @property
    def identity(self) -> bytes:
        """Our identity (basic bytes, or what the validator says our X.509 chain names)."""
        return self._engine.identity

    @property
    def cipher_suite(self) -> int:
        """The suite of our signature key, and so of every group and key package."""
        return self._engine.suite.suite_id

    @property
    def engine(self) -> NativeEngine:
        """The engine itself (tests and benchmarks; its calls bypass the client's barrier)."""
        return self._engine

    def rolled_back(self) -> None:
        """Forget engines whose identity row the rollback took away (a new suite's)."""
        for suite in list(self._by_suite):
            engine = self._by_suite[suite]
            if (
                engine is not self._engine
                and self._storage.read(CATEGORY_IDENTITY, _suite_identity_key(suite)) is None
            ):
                del self._by_suite[suite]

    def _for_suite(self, cipher_suite: int) -> NativeEngine:
        """The engine signing with ``cipher_suite``, its key made (and stored) on first use."""
        suite = _check_suite(cipher_suite)
        engine = self._by_suite.get(suite)
        if engine is None:
            key = _suite_identity_key(suite)
            if self._storage.read(CATEGORY_IDENTITY, key) is None:
                engine = NativeEngine.create(
                    self._storage,
                    self.identity,
                    suite=suite,
                    identity_key=key,
                    max_message_size=self._engine_max,
                    credential_validator=self._validator,
                )
            else:
                engine = NativeEngine(
                    self._storage,
                    identity_key=key,
                    max_message_size=self._engine_max,
                    credential_validator=self._validator,
                )
            self._by_suite[suite] = engine
        return engine

    def _for_group(self, group_id: bytes) -> NativeEngine:
        """The engine of the group's suite (UnknownGroup if we are not in it)."""
        suite = self._engine.cipher_suite(group_id)
        if suite == self._engine.suite.suite_id:
            return self._engine
        return self._for_suite(suite)

    # ------------------------------------------------------------------ key packages

    def generate_key_package(
        self, *, cipher_suite: int, lifetime: int | None, last_resort: bool
    ) -> bytes:
        """A key package whose private keys are in storage (never lost)."""
        engine = self._for_suite(cipher_suite)
        if lifetime is None:
            return engine.generate_key_package(last_resort=last_resort)
        return engine.generate_key_package(lifetime=lifetime, last_resort=last_resort)

    def signature_key(self, cipher_suite: int) -> bytes:
        """Our signature public key of ``cipher_suite`` (made and stored on first use)."""
        return self._for_suite(cipher_suite).signature_key

    def set_credential(self, certificates: Sequence[bytes], *, cipher_suite: int) -> None:
        """Make an X.509 chain the credential of our ``cipher_suite`` key (validated first)."""
        self._for_suite(cipher_suite).set_credential(_x509(certificates))

    def lost_key_packages(self) -> list[LostKeyPackage]:
        """Always empty: the native engine persists key-package private keys."""
        return []

    def discard_lost_key_packages(self) -> int:
        """Nothing to discard."""
        return 0

    def store_external_psk(self, psk_id: bytes, secret: bytes) -> None:
        """Store an external PSK."""
        self._engine.store_external_psk(psk_id, secret)

    # ------------------------------------------------------------------ groups

    def group_ids(self) -> list[bytes]:
        """The groups we are in, sorted."""
        return self._engine.group_ids()

    def _config(self, settings: GroupSettings) -> GroupConfig:
        return GroupConfig(
            handshake=_HANDSHAKE[settings.handshake],
            padding=settings.padding,
            max_past_epochs=self._retention,
        )

    def create_group(
        self, group_id: bytes | None, *, cipher_suite: int, settings: GroupSettings
    ) -> bytes:
        """A new group of one, with ``settings`` stored as its config."""
        engine = self._for_suite(cipher_suite)
        return engine.create_group(group_id, config=self._config(settings))

    def join(self, welcome: bytes, *, settings: GroupSettings, ratchet_tree: bytes | None) -> bytes:
        """Join from a Welcome, with the engine of the suite it names."""
        suite = _welcome_suite(welcome)
        engine = self._engine
        if suite is not None and suite in ALL_CIPHER_SUITES and suite in self._suites():
            engine = self._for_suite(suite)
        with _as_invalid_message("the Welcome cannot be accepted"):
            return engine.join(welcome, config=self._config(settings), ratchet_tree=ratchet_tree)

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
        """Join by an external commit, signing with a key of the GroupInfo's suite."""
        suite = _group_info_suite(group_info)
        engine = self._engine
        if suite is not None and suite in ALL_CIPHER_SUITES:
            engine = self._for_suite(suite)
        with _as_invalid_message("the GroupInfo cannot be accepted"):
            return engine.join_by_external_commit(
                group_info,
                ratchet_tree=ratchet_tree,
                resync=resync,
                config=self._config(settings),
                aad=aad,
                pending=pending,
            )

    def group_info(self, group_id: bytes, *, with_ratchet_tree: bool) -> bytes:
        """A signed GroupInfo of the current epoch."""
        return self._for_group(group_id).group_info(group_id, with_ratchet_tree=with_ratchet_tree)

    def ratchet_tree(self, group_id: bytes) -> bytes:
        """The group's public ratchet tree."""
        return self._engine.ratchet_tree(group_id)

    def drop_group(self, group_id: bytes) -> None:
        """Forget the group (or our pending external join of it) locally."""
        self._engine.drop_group(group_id)

    def pending_commit(self, group_id: bytes) -> PendingCommit | None:
        """Our commit awaiting the delivery service, if any."""
        got = self._engine.pending_commit(group_id)
        if got is None:
            return None
        return PendingCommit(got.commit, got.welcome, got.epoch, got.external)

    def _for_pending(self, group_id: bytes) -> NativeEngine:
        """The engine to merge with: the group's, or any for a pending external join."""
        if group_id in self._engine.group_ids():
            return self._for_group(group_id)
        return self._engine

    def merge_pending_commit(self, group_id: bytes) -> int:
        """Apply our pending commit."""
        return self._for_pending(group_id).merge_pending_commit(group_id)

    def clear_pending_commit(self, group_id: bytes) -> None:
        """Forget our pending commit."""
        self._engine.clear_pending_commit(group_id)

    def _suites(self) -> set[int]:
        """The suites we hold a signature key for."""
        held = {self._engine.suite.suite_id}
        for suite in ALL_CIPHER_SUITES:
            if self._storage.read(CATEGORY_IDENTITY, _suite_identity_key(suite)) is not None:
                held.add(suite)
        return held

    def members(self, group_id: bytes) -> list[Member]:
        """Members as records, in leaf order."""
        out = []
        for index, leaf in self._engine.leaf_nodes(group_id):
            w = Writer()
            leaf.credential.encode(w)
            out.append(
                Member(
                    index,
                    self._engine.identity_of(leaf.credential),
                    w.getvalue(),
                    leaf.signature_key,
                    leaf.encryption_key,
                )
            )
        return out

    def epoch(self, group_id: bytes) -> int:
        """The current epoch."""
        return self._engine.epoch(group_id)

    def state(self, group_id: bytes) -> GroupState:
        """Everything about the current epoch, in one record."""
        config = self._engine.group_config(group_id)
        pending = tuple(
            PendingProposal(
                _PROPOSAL_NAMES.get(p.proposal.proposal_type, str(int(p.proposal.proposal_type))),
                p.sender,
                p.ref,
            )
            for p in self._engine.pending_proposals(group_id)
        )
        handshake = (
            Handshake.PRIVATE
            if config.handshake == WireFormat.PRIVATE_MESSAGE
            else Handshake.PUBLIC
        )
        return GroupState(
            group_id=group_id,
            epoch=self._engine.epoch(group_id),
            cipher_suite=self._engine.cipher_suite(group_id),
            own_leaf_index=self._engine.own_leaf_index(group_id),
            members=tuple(self.members(group_id)),
            epoch_authenticator=self._engine.epoch_authenticator(group_id),
            pending_proposals=pending,
            settings=GroupSettings(handshake, config.padding),
            pending_commit=self.pending_commit(group_id),
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
        """Commit the queue plus inline proposals; PSKs get a fresh nonce each."""
        engine = self._for_group(group_id)
        ids = [
            PreSharedKeyID(PskType.EXTERNAL, new_psk_nonce(engine.suite), psk_id=p.psk_id)
            for p in psks
        ]
        return engine.commit(
            group_id,
            add=add,
            remove=remove,
            psks=ids,
            extensions=None if extensions is None else _extensions(extensions),
            force_path=force_path,
            pending=pending,
        )

    def propose_add(self, group_id: bytes, key_package: bytes) -> bytes:
        """An Add proposal."""
        return self._for_group(group_id).propose_add(group_id, key_package)

    def propose_remove(self, group_id: bytes, leaf_index: int) -> bytes:
        """A Remove proposal."""
        return self._for_group(group_id).propose_remove(group_id, leaf_index)

    def propose_update(self, group_id: bytes) -> bytes:
        """An Update proposal with a fresh leaf key (stored first)."""
        return self._for_group(group_id).propose_update(group_id)

    def propose_external_psk(self, group_id: bytes, psk_id: bytes) -> bytes:
        """A PreSharedKey proposal for a stored external PSK."""
        try:
            return self._for_group(group_id).propose_external_psk(group_id, psk_id)
        except native_errors.KeyNotFound as exc:
            raise errors.InvalidProposal("no external PSK with that id is stored") from exc

    def propose_resumption_psk(self, group_id: bytes, epoch: int) -> bytes:
        """A PreSharedKey proposal for the resumption PSK of a retained epoch."""
        try:
            return self._for_group(group_id).propose_resumption_psk(group_id, epoch)
        except native_errors.KeyNotFound as exc:
            raise errors.InvalidProposal("the resumption PSK of that epoch is not kept") from exc

    def propose_group_context_extensions(
        self, group_id: bytes, extensions: Sequence[GroupContextExtension]
    ) -> bytes:
        """A GroupContextExtensions proposal."""
        engine = self._for_group(group_id)
        return engine.propose_group_context_extensions(group_id, _extensions(extensions))

    # ------------------------------------------------------------------ messages

    def encrypt(self, group_id: bytes, plaintext: bytes, *, aad: bytes) -> bytes:
        """An application PrivateMessage."""
        return self._for_group(group_id).encrypt(group_id, plaintext, aad=aad)

    def process(self, group_id: bytes, message: bytes) -> EngineReceived:
        """Verify and apply one message."""
        with _as_invalid_message("the message cannot be accepted"):
            got = self._for_pending(group_id).process(group_id, message)
        return EngineReceived(
            _KINDS[got.kind],
            got.identity,
            got.data,
            got.removed,
            merged_pending_commit=got.merged_pending_commit,
            cleared_pending_commit=got.cleared_pending_commit,
            external_sender=got.external_sender,
        )

    def past_epochs(self, group_id: bytes) -> list[int]:
        """The retained epochs before the current one (from the engine's epoch index)."""
        current = self._engine.epoch(group_id)
        row = self._engine.storage.message_secrets(group_id)
        return [e for e in (decode_epochs(row) if row is not None else []) if e != current]

    def export_secret(self, group_id: bytes, label: bytes, context: bytes, length: int) -> bytes:
        """MLS-Exporter of the current epoch."""
        return self._for_group(group_id).export_secret(group_id, label, context, length)


def _extensions(extensions: Sequence[GroupContextExtension]) -> list[Extension]:
    out = []
    for e in extensions:
        if not isinstance(e, GroupContextExtension):
            raise TypeError("extensions must be mls.GroupContextExtension records")
        out.append(Extension(e.extension_type, e.data))
    return out
