"""Pending commits, external joins and out-of-band trees in groups mixing the native engine
with mls-rs (through its ``mls_rs_uniffi`` binding, suite 0x0001).

What the binding allows: an mls-rs member processes external commits and commits of its own,
and joins with an out-of-band tree.  It cannot *export* a GroupInfo (its ``CommitOutput``
leaves ``group_info`` empty and it has no external-commit call), so mls-rs is tested here as
a member receiving external joins, never as the joiner.
Skipped when the binding is not installed.
"""

from __future__ import annotations

from typing import Any

import pytest

b: Any = pytest.importorskip("mls_rs_uniffi")

from mls.native import GroupConfig, NativeEngine  # noqa: E402
from tests.native.engine_helpers import GID, member  # noqa: E402

LABEL = b"interop"


def rs_client(name: bytes, *, ratchet_tree_extension: bool = True) -> Any:
    """An in-memory mls-rs client."""
    config = b.client_config_default()
    config.use_ratchet_tree_extension = ratchet_tree_extension
    keypair = b.generate_signature_keypair(b.CipherSuite.CURVE25519_AES128)
    return b.Client(name, keypair, config)


def rs_process(group: Any, message: bytes) -> Any:
    """Hand one message to an mls-rs group."""
    return group.process_incoming_message(b.Message.from_bytes(message))


def mixed_group() -> tuple[NativeEngine, Any]:
    """A native creator with an mls-rs member."""
    alice = member("alice")
    alice.create_group(GID)
    rs = rs_client(b"rs")
    _, welcome = alice.commit(GID, add=[rs.generate_key_package_message().to_bytes()])
    assert welcome is not None
    return alice, rs.join_group(None, b.Message.from_bytes(welcome)).group


def same_epoch(natives: list[NativeEngine], rs_group: Any) -> bool:
    """Everyone exports the same secret."""
    secrets = {n.export_secret(GID, LABEL, b"", 32) for n in natives}
    secrets.add(bytes(rs_group.export_secret(LABEL, b"", 32)))
    return len(secrets) == 1


def test_native_joins_a_mixed_group_by_external_commit() -> None:
    """mls-rs accepts the external commit (same init secret via HPKE export) and talks."""
    alice, rs = mixed_group()
    carol = member("carol")
    _, commit = carol.join_by_external_commit(alice.group_info(GID))
    alice.process(GID, commit)
    received = rs_process(rs, commit)
    assert received.is_commit()
    assert same_epoch([alice, carol], rs)
    message = rs.encrypt_application_message(b"hello carol").to_bytes()
    assert carol.process(GID, message).data == b"hello carol"
    got = rs_process(rs, carol.encrypt(GID, b"hello rs"))
    assert got.is_application_message() and bytes(got.data) == b"hello rs"


def test_resync_after_state_loss_in_a_mixed_group() -> None:
    """A native member that lost its state rejoins; mls-rs drops the old leaf with it."""
    alice, rs = mixed_group()
    carol = member("carol")
    _, commit = carol.join_by_external_commit(alice.group_info(GID))
    alice.process(GID, commit)
    rs_process(rs, commit)
    reborn = member("carol")
    _, resync = reborn.join_by_external_commit(alice.group_info(GID), resync=True)
    alice.process(GID, resync)
    rs_process(rs, resync)
    assert same_epoch([alice, reborn], rs)
    update = rs.commit()
    rs_process(rs, update.commit_message.to_bytes())
    for n in (alice, reborn):
        n.process(GID, update.commit_message.to_bytes())
    assert same_epoch([alice, reborn], rs)
    assert [who for _, who in alice.members(GID)] == [b"alice", b"rs", b"carol"]


def test_native_pending_commit_loses_to_mls_rs_and_then_wins() -> None:
    """A race lost to mls-rs clears ours; the next one, accepted, is merged on its echo."""
    alice, rs = mixed_group()
    alice.commit(GID, force_path=True, pending=True)
    theirs = rs.commit().commit_message.to_bytes()
    rs_process(rs, theirs)  # the DS picked mls-rs's commit
    assert alice.process(GID, theirs).cleared_pending_commit
    assert same_epoch([alice], rs)
    ours, _ = alice.commit(GID, force_path=True, pending=True)
    rs_process(rs, ours)
    assert alice.process(GID, ours).merged_pending_commit
    assert same_epoch([alice], rs)


def test_join_an_mls_rs_group_with_an_out_of_band_tree() -> None:
    """mls-rs sends a Welcome without the tree; the native joiner gets the tree separately."""
    rs_creator = rs_client(b"rs", ratchet_tree_extension=False)
    rs = rs_creator.create_group(GID)
    alice = member("alice")
    output = rs.add_members([b.Message.from_bytes(alice.generate_key_package())])
    rs_process(rs, output.commit_message.to_bytes())
    welcome = output.welcome_message.to_bytes()
    assert alice.join(welcome, ratchet_tree=bytes(output.ratchet_tree.bytes)) == GID
    assert same_epoch([alice], rs)


def test_mls_rs_joins_a_native_group_with_an_out_of_band_tree() -> None:
    """The native creator omits the tree; mls-rs joins with ``NativeEngine.ratchet_tree``."""
    alice = member("alice")
    alice.create_group(GID, config=GroupConfig(ratchet_tree_extension=False))
    rs_joiner = rs_client(b"rs")
    _, welcome = alice.commit(GID, add=[rs_joiner.generate_key_package_message().to_bytes()])
    assert welcome is not None
    tree = b.RatchetTree(bytes=alice.ratchet_tree(GID))
    rs = rs_joiner.join_group(tree, b.Message.from_bytes(welcome)).group
    assert same_epoch([alice], rs)
