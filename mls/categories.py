"""Where OpenMLS state lands in the vault: category names and the byte layouts of keys and lists.

Every kind of state OpenMLS's ``StorageProvider<1>`` keeps gets its own vault category,
named ``openmls/v<LAYOUT_VERSION>/<kind>``.  The version in the name covers the meaning of
the row key and value of every category below: a future layout gets new category names,
so old and new rows never mix and a migration can read one and write the other.

Row keys are the engine's serialized keys (group id, public key, hash reference, PSK id)
used as they are; the two composite keys and the list values use the length-prefixed
encodings of this module, documented byte by byte in ``docs/storage.md``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from keystore.vault import MAX_KEY_LEN

__all__ = [
    "CONFIRMATION_TAG",
    "ENCRYPTION_EPOCH_KEY_PAIRS",
    "ENCRYPTION_KEY_PAIR",
    "GROUP_CONTEXT",
    "GROUP_EPOCH_SECRETS",
    "GROUP_STATE",
    "INTERIM_TRANSCRIPT_HASH",
    "KEY_PACKAGE",
    "LAYOUT_VERSION",
    "LIST_FORMAT",
    "MAX_GROUP_ID_LEN",
    "MESSAGE_SECRETS",
    "MLS_JOIN_CONFIG",
    "OPENMLS_CATEGORIES",
    "OWN_LEAF_INDEX",
    "OWN_LEAF_NODES",
    "PROPOSAL_QUEUE",
    "PSK",
    "QUEUED_PROPOSAL",
    "RESUMPTION_PSK_STORE",
    "SIGNATURE_KEY_PAIR",
    "TREE",
    "decode_list",
    "encode_list",
    "epoch_key_pairs_key",
    "queued_proposal_key",
]

#: The longest group id this package stores: every row key holding a group id (the id plus
#: at most a length, an epoch or node number and a 64-byte hash reference) must fit the
#: vault's row-key limit.  RFC 9420 sets no bound, so a group made elsewhere can have a
#: longer id; its Welcome or GroupInfo is refused as :class:`mls.errors.InvalidMessage`.
MAX_GROUP_ID_LEN = MAX_KEY_LEN - 256

#: Bumped (with new category names) whenever a key or value layout below changes.
LAYOUT_VERSION = 1
#: First byte of every encoded list value.
LIST_FORMAT = 0x01

_PREFIX = f"openmls/v{LAYOUT_VERSION}/"

# Group-keyed single values (row key: the serialized group id).
MLS_JOIN_CONFIG = _PREFIX + "mls_join_config"
TREE = _PREFIX + "tree"
INTERIM_TRANSCRIPT_HASH = _PREFIX + "interim_transcript_hash"
GROUP_CONTEXT = _PREFIX + "group_context"
CONFIRMATION_TAG = _PREFIX + "confirmation_tag"
GROUP_STATE = _PREFIX + "group_state"
MESSAGE_SECRETS = _PREFIX + "message_secrets"
RESUMPTION_PSK_STORE = _PREFIX + "resumption_psk_store"
OWN_LEAF_INDEX = _PREFIX + "own_leaf_index"
GROUP_EPOCH_SECRETS = _PREFIX + "group_epoch_secrets"
# Group-keyed lists (value: encode_list).
OWN_LEAF_NODES = _PREFIX + "own_leaf_nodes"
PROPOSAL_QUEUE = _PREFIX + "proposal_queue"
# One row per queued proposal (row key: queued_proposal_key).
QUEUED_PROPOSAL = _PREFIX + "queued_proposal"
# One list per (group, epoch, leaf index) (row key: epoch_key_pairs_key).
ENCRYPTION_EPOCH_KEY_PAIRS = _PREFIX + "encryption_epoch_key_pairs"
# Crypto objects keyed by their own identifier.
SIGNATURE_KEY_PAIR = _PREFIX + "signature_key_pair"
ENCRYPTION_KEY_PAIR = _PREFIX + "encryption_key_pair"
KEY_PACKAGE = _PREFIX + "key_package"
PSK = _PREFIX + "psk"

OPENMLS_CATEGORIES: tuple[str, ...] = (
    MLS_JOIN_CONFIG,
    TREE,
    INTERIM_TRANSCRIPT_HASH,
    GROUP_CONTEXT,
    CONFIRMATION_TAG,
    GROUP_STATE,
    MESSAGE_SECRETS,
    RESUMPTION_PSK_STORE,
    OWN_LEAF_INDEX,
    GROUP_EPOCH_SECRETS,
    OWN_LEAF_NODES,
    PROPOSAL_QUEUE,
    QUEUED_PROPOSAL,
    ENCRYPTION_EPOCH_KEY_PAIRS,
    SIGNATURE_KEY_PAIR,
    ENCRYPTION_KEY_PAIR,
    KEY_PACKAGE,
    PSK,
)

_U32 = struct.Struct(">I")
_U32_MAX = 0xFFFFFFFF


def _len_prefixed(data: bytes) -> bytes:
    if not isinstance(data, bytes):
        raise TypeError(f"key parts must be bytes, not {type(data).__name__}")
    if len(data) > _U32_MAX:
        raise ValueError("element longer than 2**32-1 bytes")
    return _U32.pack(len(data)) + data


def encode_list(items: Sequence[bytes]) -> bytes:
    """``LIST_FORMAT || u32 count || (u32 length || bytes)*`` (big-endian)."""
    for item in items:
        if not isinstance(item, bytes):
            raise TypeError(f"list elements must be bytes, not {type(item).__name__}")
    return b"".join([bytes((LIST_FORMAT,)), _U32.pack(len(items)), *map(_len_prefixed, items)])


def decode_list(blob: bytes | None) -> list[bytes]:
    """Inverse of :func:`encode_list`; ``None`` (no row) is the empty list.

    Raises:
        ValueError: unknown format byte, truncated or trailing bytes.
    """
    if blob is None:
        return []
    if len(blob) < 5 or blob[0] != LIST_FORMAT:
        raise ValueError("not an encoded list (unknown format byte or truncated)")
    (count,) = _U32.unpack_from(blob, 1)
    out: list[bytes] = []
    pos = 5
    for _ in range(count):
        if pos + 4 > len(blob):
            raise ValueError("encoded list is truncated")
        (size,) = _U32.unpack_from(blob, pos)
        pos += 4
        if pos + size > len(blob):
            raise ValueError("encoded list is truncated")
        out.append(blob[pos : pos + size])
        pos += size
    if pos != len(blob):
        raise ValueError("encoded list has trailing bytes")
    return out


def queued_proposal_key(group_id: bytes, proposal_ref: bytes) -> bytes:
    """``u32 len(group_id) || group_id || proposal_ref``: unambiguous for any lengths."""
    return _len_prefixed(group_id) + proposal_ref


def epoch_key_pairs_key(group_id: bytes, epoch: bytes, leaf_index: int) -> bytes:
    """``u32 len || group_id || u32 len || epoch || u32 leaf_index``."""
    if isinstance(leaf_index, bool) or not isinstance(leaf_index, int):
        raise TypeError("leaf_index must be an int")
    if not 0 <= leaf_index <= _U32_MAX:
        raise ValueError("leaf_index must fit in a u32")
    return _len_prefixed(group_id) + _len_prefixed(epoch) + _U32.pack(leaf_index)
