"""Glue between the mls-rs engine (``mls_rs_uniffi``) and :class:`mls.storage.GranularStorage`.

mls-rs has exactly one storage seam, ``GroupStateStorage``: it hands over a whole group
snapshot plus the epoch records that changed, and only when ``Group.write_to_storage()``
is called.  :class:`VaultGroupStateStorage` implements that seam on top of
``GranularStorage`` with two categories:

* ``mlsrs/v1/group_state`` — one row per group: the engine's snapshot (key: group id);
* ``mlsrs/v1/epoch`` — one row per (group, epoch): the engine's epoch record
  (key: ``group_id || epoch id as u64 big-endian``).

Values are the engine's own serialization, stored as they are; the ``v1`` in the
names covers the key layout and is bumped (with new names) if it ever changes.

Each ``write`` is one storage operation, so a snapshot never lands without its epoch
records.  Old epochs beyond the retention are deleted in the same operation.

The module also holds the few RFC 9420 wire-format reads the binding does not expose
(key-package references, the key packages a Welcome addresses, the members of a
ratchet tree), and :func:`load_binding`, which imports the optional engine lazily.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

from mls.categories import MAX_GROUP_ID_LEN
from mls.engines.wire import Reader as _Reader
from mls.engines.wire import encode_varint as _encode_varint
from mls.errors import InvalidMessage, MlsRsUnavailable
from mls.storage import GranularStorage

__all__ = [
    "CATEGORY_EPOCHS",
    "CATEGORY_GROUPS",
    "DEFAULT_EPOCH_RETENTION",
    "TreeMember",
    "VaultGroupStateStorage",
    "key_package_identity",
    "key_package_ref",
    "load_binding",
    "new_group_state_storage",
    "ratchet_tree_members",
    "welcome_key_package_refs",
]

CATEGORY_GROUPS = "mlsrs/v1/group_state"
CATEGORY_EPOCHS = "mlsrs/v1/epoch"
#: mls-rs's own default: keep the three most recent past epochs for late messages.
DEFAULT_EPOCH_RETENTION = 3
_EPOCH_ID_LEN = 8
_T = TypeVar("_T")


def load_binding() -> ModuleType:
    """Import ``mls_rs_uniffi`` on first use.

    Raises:
        MlsRsUnavailable: the optional engine is not installed (names the extra).
    """
    try:
        return importlib.import_module("mls_rs_uniffi")
    except ImportError as exc:
        raise MlsRsUnavailable(
            "the mls-rs engine is not installed: from a checkout, pip install -e '.[mls-rs]' "
            f"(import of mls_rs_uniffi failed: {exc})"
        ) from exc


def _epoch_key(group_id: bytes, epoch_id: int) -> bytes:
    return group_id + epoch_id.to_bytes(_EPOCH_ID_LEN, "big")


class VaultGroupStateStorage:
    """mls-rs ``GroupStateStorage`` methods over ``GranularStorage`` (see the module doc).

    Construct it through :func:`new_group_state_storage`, which mixes in the binding's
    base class (the binding checks ``isinstance``).  Reads come from the in-memory
    storage; nothing here touches the vault directly, the drainer does.

    Exceptions raised inside a callback are kept in :attr:`callback_error`, because
    the binding replaces them with its own opaque error on the way back out.
    """

    def __init__(self, storage: GranularStorage, *, retention: int = DEFAULT_EPOCH_RETENTION):
        if not isinstance(retention, int) or retention < 1:
            raise ValueError("epoch retention must be an int >= 1")
        self._storage = storage
        self._retention = retention
        self._epochs: dict[bytes, list[int]] = {}
        self.reindex()
        self.last_written: bytes | None = None
        self.callback_error: BaseException | None = None

    def reindex(self) -> None:
        """Rebuild the epoch index from the storage.

        Needed after an enclosing storage operation was rolled back: the index follows
        each ``write`` that succeeded, and cannot see a rollback that happens later.
        """
        epochs: dict[bytes, list[int]] = {}
        for key in self._storage.keys(CATEGORY_EPOCHS):
            gid, eid = key[:-_EPOCH_ID_LEN], int.from_bytes(key[-_EPOCH_ID_LEN:], "big")
            bisect.insort(epochs.setdefault(gid, []), eid)
        self._epochs = epochs

    @property
    def retention(self) -> int:
        """How many past epochs are kept per group."""
        return self._retention

    def _guard(self, call: Callable[[], _T]) -> _T:
        try:
            return call()
        except BaseException as exc:
            self.callback_error = exc
            raise

    # -- the GroupStateStorage interface (called by mls-rs) -------------------------

    def state(self, group_id: bytes) -> bytes | None:
        """The latest snapshot of ``group_id``, or ``None``."""
        return self._guard(lambda: self._storage.read(CATEGORY_GROUPS, group_id))

    def epoch(self, group_id: bytes, epoch_id: int) -> bytes | None:
        """One stored past-epoch record, or ``None``."""
        return self._guard(
            lambda: self._storage.read(CATEGORY_EPOCHS, _epoch_key(group_id, epoch_id))
        )

    def max_epoch_id(self, group_id: bytes) -> int | None:
        """The newest stored epoch id of ``group_id``, or ``None``."""
        ids = self._epochs.get(group_id)
        return ids[-1] if ids else None

    def write(
        self,
        group_id: bytes,
        group_state: bytes,
        epoch_inserts: list[Any],
        epoch_updates: list[Any],
    ) -> None:
        """Store a snapshot and its epoch records as ONE storage operation; prune."""
        self._guard(lambda: self._write(group_id, group_state, epoch_inserts, epoch_updates))

    def _write(
        self,
        group_id: bytes,
        group_state: bytes,
        epoch_inserts: list[Any],
        epoch_updates: list[Any],
    ) -> None:
        if not 0 < len(group_id) <= MAX_GROUP_ID_LEN:  # a Welcome can name any id
            raise InvalidMessage(
                f"the group id is {len(group_id)} bytes; this client keeps groups of 1 to "
                f"{MAX_GROUP_ID_LEN}"
            )
        ids = list(self._epochs.get(group_id, ()))
        with self._storage.operation():
            self._storage.write(CATEGORY_GROUPS, group_id, bytes(group_state))
            for record in (*epoch_inserts, *epoch_updates):
                eid = int(record.id)
                self._storage.write(CATEGORY_EPOCHS, _epoch_key(group_id, eid), bytes(record.data))
                if eid not in ids:
                    bisect.insort(ids, eid)
            while len(ids) > self._retention:
                self._storage.delete(CATEGORY_EPOCHS, _epoch_key(group_id, ids.pop(0)))
        # Only after the operation succeeded: a rolled-back write leaves the index as it was.
        self._epochs[group_id] = ids
        self.last_written = group_id

    # -- our own bookkeeping --------------------------------------------------------

    def group_ids(self) -> list[bytes]:
        """The groups with a stored snapshot, sorted."""
        return sorted(self._storage.keys(CATEGORY_GROUPS))

    def epoch_ids(self, group_id: bytes) -> list[int]:
        """The stored past-epoch ids of ``group_id``, oldest first."""
        return list(self._epochs.get(group_id, ()))

    def forget_group(self, group_id: bytes) -> None:
        """Delete a group's snapshot and epochs (we were removed); one storage operation."""
        ids = self._epochs.get(group_id, [])
        with self._storage.operation():
            self._storage.delete(CATEGORY_GROUPS, group_id)
            for eid in ids:
                self._storage.delete(CATEGORY_EPOCHS, _epoch_key(group_id, eid))
        self._epochs.pop(group_id, None)


@functools.cache
def _bridge_class() -> type[VaultGroupStateStorage]:
    binding = load_binding()
    bridge: type[VaultGroupStateStorage] = type(
        "MlsRsVaultGroupStateStorage", (VaultGroupStateStorage, binding.GroupStateStorage), {}
    )
    return bridge


def new_group_state_storage(
    storage: GranularStorage, *, retention: int = DEFAULT_EPOCH_RETENTION
) -> VaultGroupStateStorage:
    """A :class:`VaultGroupStateStorage` the binding accepts in ``ClientConfig``.

    Raises:
        MlsRsUnavailable: the engine is not installed.
    """
    return _bridge_class()(storage, retention=retention)


# ---------------------------------------------------------------------------- wire format
#
# Just enough of RFC 9420's TLS presentation language to read what the binding keeps
# opaque.  Every read is bounds-checked; malformed input raises InvalidMessage.

_MLS10 = 1
_WIRE_WELCOME = 3
_WIRE_KEY_PACKAGE = 5
_CREDENTIAL_BASIC = 1
_LEAF_SOURCE_KEY_PACKAGE = 1
_LEAF_SOURCE_COMMIT = 3
_NODE_LEAF = 1
_NODE_PARENT = 2


def _mls_message(data: bytes, wire_format: int, what: str) -> _Reader:
    if not isinstance(data, bytes | bytearray):
        raise TypeError(f"{what} must be bytes, not {type(data).__name__}")
    r = _Reader(bytes(data))
    if r.uint(2) != _MLS10 or r.uint(2) != wire_format:
        raise InvalidMessage(f"not an MLS 1.0 {what}")
    return r


def key_package_ref(key_package: bytes) -> bytes:
    """``KeyPackageRef`` of a key package in MLSMessage wire format (RFC 9420 §5.2).

    RefHash with SHA-256, the hash of the only suite the binding offers.
    """
    _mls_message(key_package, _WIRE_KEY_PACKAGE, "key package")
    body = bytes(key_package[4:])
    label = b"MLS 1.0 KeyPackage Reference"
    return hashlib.sha256(
        _encode_varint(len(label)) + label + _encode_varint(len(body)) + body
    ).digest()


def welcome_key_package_refs(welcome: bytes) -> list[bytes]:
    """The ``KeyPackageRef`` of every new member a Welcome (MLSMessage) addresses."""
    r = _mls_message(welcome, _WIRE_WELCOME, "Welcome")
    r.uint(2)  # cipher suite

    def new_member(s: _Reader) -> bytes:
        ref = s.opaque()
        s.opaque()  # kem_output
        s.opaque()  # ciphertext
        return ref

    refs = list(r.vector().items(new_member))
    r.opaque()  # encrypted_group_info
    r.finish()
    return refs


@dataclass(frozen=True, slots=True)
class TreeMember:
    """A member as the ratchet tree shows it: who, with which keys, where."""

    identity: bytes
    signature_key: bytes
    leaf_index: int
    encryption_key: bytes = b""


def _read_leaf_node(r: _Reader) -> tuple[bytes, bytes, bytes]:
    """Read a LeafNode; return (basic-credential identity, signature key, encryption key)."""
    encryption_key = r.opaque()
    signature_key = r.opaque()
    credential_type = r.uint(2)
    if credential_type != _CREDENTIAL_BASIC:
        raise InvalidMessage(f"credential type {credential_type} is not supported")
    identity = r.opaque()
    for _ in range(5):  # capabilities: versions, suites, extensions, proposals, credentials
        r.opaque()
    source = r.uint(1)
    if source == _LEAF_SOURCE_KEY_PACKAGE:
        r.take(16)  # lifetime
    elif source == _LEAF_SOURCE_COMMIT:
        r.opaque()  # parent_hash
    r.opaque()  # extensions
    r.opaque()  # signature
    return identity, signature_key, encryption_key


def key_package_identity(key_package: bytes) -> bytes:
    """The basic-credential identity inside a key package (MLSMessage wire format)."""
    r = _mls_message(key_package, _WIRE_KEY_PACKAGE, "key package")
    r.uint(2)  # protocol version
    r.uint(2)  # cipher suite
    r.opaque()  # init_key
    identity, _, _ = _read_leaf_node(r)
    r.opaque()  # extensions
    r.opaque()  # signature
    r.finish()
    return identity


def ratchet_tree_members(tree: bytes) -> list[TreeMember]:
    """The occupied leaves of a serialized ratchet tree (``optional<Node> tree<V>``)."""
    outer = _Reader(bytes(tree))
    nodes = outer.vector()
    outer.finish()
    members: list[TreeMember] = []
    index = 0
    while not nodes.at_end():
        if nodes.uint(1):
            node_type = nodes.uint(1)
            if node_type == _NODE_LEAF:
                if index % 2:
                    raise InvalidMessage("leaf node at a parent position")
                identity, key, enc = _read_leaf_node(nodes)
                members.append(TreeMember(identity, key, index // 2, enc))
            elif node_type == _NODE_PARENT:
                nodes.opaque()  # encryption_key
                nodes.opaque()  # parent_hash
                nodes.opaque()  # unmerged_leaves
            else:
                raise InvalidMessage(f"unknown node type {node_type}")
        index += 1
    return members
