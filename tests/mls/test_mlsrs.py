"""The mls-rs storage adapter and the wire-format reads in ``mls.mlsrs``."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mls.errors import InvalidMessage, MlsRsUnavailable
from mls.mlsrs import (
    CATEGORY_EPOCHS,
    CATEGORY_GROUPS,
    key_package_identity,
    key_package_ref,
    load_binding,
    new_group_state_storage,
    ratchet_tree_members,
    welcome_key_package_refs,
)
from mls.storage import GranularStorage

GID = b"group-1"


@dataclass
class Record:
    """Stands in for the binding's EpochRecord (``id``, ``data``)."""

    id: int
    data: bytes


class ExplodingRecord:
    """An epoch record whose data cannot be read: makes a write fail half-way."""

    id = 99

    @property
    def data(self) -> bytes:
        raise RuntimeError("boom")


def engine_client(name: bytes, storage: GranularStorage) -> Any:
    binding = load_binding()
    suite = binding.CipherSuite.CURVE25519_AES128
    config = binding.ClientConfig(
        group_state_storage=new_group_state_storage(storage), use_ratchet_tree_extension=True
    )
    return binding.Client(name, binding.generate_signature_keypair(suite), config)


def test_write_stores_snapshot_and_epochs() -> None:
    """A write is readable back through state(), epoch() and max_epoch_id()."""
    store = new_group_state_storage(GranularStorage())
    store.write(GID, b"snapshot", [Record(0, b"e0"), Record(1, b"e1")], [])
    assert store.state(GID) == b"snapshot"
    assert store.epoch(GID, 1) == b"e1"
    assert store.max_epoch_id(GID) == 1
    assert store.last_written == GID
    assert store.state(b"other") is None and store.max_epoch_id(b"other") is None


def test_write_is_one_storage_operation() -> None:
    """All rows of one write are drained together, as one batch."""
    storage = GranularStorage()
    store = new_group_state_storage(storage)
    store.write(GID, b"s", [Record(0, b"e0")], [])
    categories = sorted(e.category for e in storage.drain_storage_events())
    assert categories == [CATEGORY_EPOCHS, CATEGORY_GROUPS]


def test_failed_write_changes_nothing() -> None:
    """A write that fails half-way rolls back the snapshot it already wrote."""
    storage = GranularStorage()
    store = new_group_state_storage(storage)
    store.write(GID, b"old", [Record(0, b"e0")], [])
    storage.drain_storage_events()
    with pytest.raises(RuntimeError):
        store.write(GID, b"new", [Record(1, b"e1"), ExplodingRecord()], [])
    assert isinstance(store.callback_error, RuntimeError)
    assert store.state(GID) == b"old"
    assert store.epoch_ids(GID) == [0]
    assert storage.pending_events() == 0


def test_reindex_follows_a_rolled_back_enclosing_operation() -> None:
    """After an outer operation is rolled back, reindex() forgets the epochs it wrote."""
    storage = GranularStorage()
    store = new_group_state_storage(storage)
    store.write(GID, b"s0", [Record(0, b"e0")], [])
    with pytest.raises(RuntimeError), storage.operation():
        store.write(GID, b"s1", [Record(1, b"e1")], [])
        raise RuntimeError("the enclosing call failed")
    store.reindex()
    assert (store.state(GID), store.epoch_ids(GID), store.max_epoch_id(GID)) == (b"s0", [0], 0)


def test_old_epochs_are_pruned_to_the_retention() -> None:
    """Only the newest ``retention`` epochs stay, in memory and in the dirty log."""
    storage = GranularStorage()
    store = new_group_state_storage(storage, retention=2)
    for eid in range(5):
        store.write(GID, b"s", [Record(eid, bytes([eid]))], [])
    assert store.epoch_ids(GID) == [3, 4]
    assert store.epoch(GID, 2) is None
    assert len(storage.keys(CATEGORY_EPOCHS)) == 2


def test_epoch_updates_replace_in_place() -> None:
    """An epoch update overwrites the stored record without adding an epoch."""
    store = new_group_state_storage(GranularStorage())
    store.write(GID, b"s", [Record(0, b"v1")], [])
    store.write(GID, b"s", [], [Record(0, b"v2")])
    assert store.epoch(GID, 0) == b"v2" and store.epoch_ids(GID) == [0]


def test_epoch_index_is_rebuilt_from_storage() -> None:
    """A new adapter over the same storage knows the stored epochs (rehydration)."""
    storage = GranularStorage()
    new_group_state_storage(storage).write(GID, b"s", [Record(7, b"x"), Record(8, b"y")], [])
    again = new_group_state_storage(storage)
    assert again.max_epoch_id(GID) == 8 and again.group_ids() == [GID]


def test_forget_group_deletes_every_row() -> None:
    """forget_group removes the snapshot and all epochs of that group only."""
    storage = GranularStorage()
    store = new_group_state_storage(storage)
    store.write(GID, b"s", [Record(0, b"x")], [])
    store.write(b"keep", b"k", [Record(0, b"y")], [])
    store.forget_group(GID)
    assert store.group_ids() == [b"keep"]
    assert len(storage.keys(CATEGORY_EPOCHS)) == 1


def test_retention_must_be_positive() -> None:
    """A retention below one is refused."""
    with pytest.raises(ValueError):
        new_group_state_storage(GranularStorage(), retention=0)


def test_missing_engine_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without mls_rs_uniffi the error says which extra to install."""
    monkeypatch.setitem(sys.modules, "mls_rs_uniffi", None)
    with pytest.raises(MlsRsUnavailable, match=r"pip install -e '\.\[mls-rs\]'"):
        load_binding()


def test_engine_round_trip_through_the_adapter() -> None:
    """mls-rs writes through the adapter and loads the group back from it."""
    storage = GranularStorage()
    client = engine_client(b"alice", storage)
    group = client.create_group(GID)
    group.write_to_storage()
    group.commit()
    assert storage.read(CATEGORY_GROUPS, GID) is not None
    reloaded = engine_client(b"alice", storage).load_group(GID)
    assert reloaded.export_secret(b"l", b"", 16) == group.export_secret(b"l", b"", 16)


def test_key_package_ref_matches_the_welcome() -> None:
    """The ref we compute for a key package is the one the Welcome addresses."""
    alice = engine_client(b"alice", GranularStorage())
    bob = engine_client(b"bob", GranularStorage())
    kp = bob.generate_key_package_message().to_bytes()
    out = alice.create_group(GID).add_members([load_binding().Message.from_bytes(kp)])
    assert welcome_key_package_refs(out.welcome_message.to_bytes()) == [key_package_ref(kp)]
    assert key_package_identity(kp) == b"bob"


def test_ratchet_tree_members_lists_identities_in_leaf_order() -> None:
    """The exported tree yields every member with its leaf index."""
    alice = engine_client(b"alice", GranularStorage())
    group = alice.create_group(GID)
    kps = [
        engine_client(n, GranularStorage()).generate_key_package_message()
        for n in (b"bob", b"carol")
    ]
    out = group.add_members(kps)
    group.process_incoming_message(out.commit_message)
    members = ratchet_tree_members(group.export_tree().bytes)
    assert [(m.identity, m.leaf_index) for m in members] == [
        (b"alice", 0),
        (b"bob", 1),
        (b"carol", 2),
    ]
    assert all(len(m.signature_key) == 32 for m in members)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\x01", b"\x00\x02\x00\x03", b"\x00\x01\x00\x05", b"\x00\x01\x00\x03\x00\x01\x7f"],
)
def test_malformed_welcome_raises_invalid_message(data: bytes) -> None:
    """Truncated, wrong-version or wrong-type input raises InvalidMessage."""
    with pytest.raises(InvalidMessage):
        welcome_key_package_refs(data)


def test_non_minimal_varint_is_rejected() -> None:
    """A length encoded in more bytes than needed is refused (RFC 9420 §2.1.2)."""
    with pytest.raises(InvalidMessage, match="minimally"):
        welcome_key_package_refs(b"\x00\x01\x00\x03\x00\x01\x40\x00")


def test_key_package_ref_rejects_other_messages() -> None:
    """Only a key-package MLSMessage has a KeyPackageRef."""
    with pytest.raises(InvalidMessage):
        key_package_ref(b"\x00\x01\x00\x03whatever")
    with pytest.raises(TypeError):
        key_package_ref("not bytes")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parsers_raise_only_invalid_message_on_arbitrary_bytes(data: bytes) -> None:
    """Arbitrary input never escapes the parsers as anything but InvalidMessage."""
    for parse in (welcome_key_package_refs, ratchet_tree_members, key_package_identity):
        with contextlib.suppress(InvalidMessage):
            parse(data)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_truncated_real_messages_are_rejected(data: st.DataObject) -> None:
    """Every strict prefix of a real Welcome or tree is rejected as InvalidMessage."""
    alice = engine_client(b"alice", GranularStorage())
    group = alice.create_group(GID)
    kp = engine_client(b"bob", GranularStorage()).generate_key_package_message()
    out = group.add_members([kp])
    welcome = bytes(out.welcome_message.to_bytes())
    tree = bytes(group.export_tree().bytes)
    cut = data.draw(st.integers(0, len(welcome) - 1))
    with pytest.raises(InvalidMessage):
        welcome_key_package_refs(welcome[:cut])
    cut = data.draw(st.integers(0, len(tree) - 1))
    with pytest.raises(InvalidMessage):
        ratchet_tree_members(tree[:cut])
