"""Where ts-mls departs from RFC 9420, pinned on the bytes it produces.

ts-mls 1.6.4 writes the GroupInfo ``external_pub`` extension (RFC 9420 §12.4.3.2) as the bare
HPKE public key; the RFC defines its data as the ``ExternalPub`` struct, i.e. the key with a
variable-length prefix, and that is what core-crypto (OpenMLS) writes and our engine reads.
GroupInfos therefore do not cross between ts-mls and other implementations, which is why the
external-join scenarios with ts-mls are marked as failing in ``test_peers.py``.  If a later
ts-mls fixes this, the first test here fails: update the pin and lift those marks.
"""

from __future__ import annotations

from mls.native.codec import Reader, decode_exact
from mls.native.framing import MLSMessage
from mls.native.leaf_node import ExtensionType
from mls.native.welcome import GroupInfo
from tests.interop.peer import NodePeer
from tests.interop.room import wire_client_id

X25519_KEY_LEN = 32


def external_pub_data(group_info: bytes) -> bytes:
    """The raw extension_data of a GroupInfo's external_pub extension."""
    message = decode_exact(group_info, MLSMessage.decode)
    assert isinstance(message.body, GroupInfo)
    (ext,) = [e for e in message.body.extensions if e.extension_type == ExtensionType.EXTERNAL_PUB]
    return ext.extension_data


def test_ts_mls_external_pub_is_a_bare_key(ts_mls: NodePeer) -> None:
    """ts-mls: 32 bytes of X25519 key, with no ExternalPub length prefix."""
    ts_mls.call("create_group", who="t", identity=wire_client_id("t"), group_id=b"g")
    data = external_pub_data(ts_mls.call("group_info", who="t")["group_info"])
    assert len(data) == X25519_KEY_LEN


def test_core_crypto_external_pub_is_the_rfc_struct(core_crypto: NodePeer) -> None:
    """core-crypto: the ExternalPub struct, a length-prefixed 32-byte key."""
    core_crypto.call("create_group", who="c", identity=wire_client_id("c"), group_id=b"g")
    core_crypto.call("commit", who="c")
    data = external_pub_data(core_crypto.call("group_info", who="c")["group_info"])
    key = decode_exact(data, Reader.opaque)
    assert len(key) == X25519_KEY_LEN
