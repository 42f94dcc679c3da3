"""Conformance of GranularStorage to OpenMLS's StorageProvider<1>, in memory and rehydrated.

Every test takes the ``reopen`` fixture: it runs once against the storage itself and once
against a storage drained to a vault and loaded back, which proves the vault keeps all of it.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from mls import GranularStorage, StorageProvider
from tests.mls.conftest import Reopen

GROUP = b"group-1"
OTHER_GROUP = b"group-2"

# (write, read, delete) of every single-valued entity, keyed by one id.
SINGLE_VALUED: list[tuple[str, str, str]] = [
    ("write_mls_join_config", "mls_group_join_config", "delete_group_config"),
    ("write_tree", "tree", "delete_tree"),
    ("write_interim_transcript_hash", "interim_transcript_hash", "delete_interim_transcript_hash"),
    ("write_context", "group_context", "delete_context"),
    ("write_confirmation_tag", "confirmation_tag", "delete_confirmation_tag"),
    ("write_group_state", "group_state", "delete_group_state"),
    ("write_message_secrets", "message_secrets", "delete_message_secrets"),
    ("write_resumption_psk_store", "resumption_psk_store", "delete_all_resumption_psk_secrets"),
    ("write_own_leaf_index", "own_leaf_index", "delete_own_leaf_index"),
    ("write_group_epoch_secrets", "group_epoch_secrets", "delete_group_epoch_secrets"),
    ("write_signature_key_pair", "signature_key_pair", "delete_signature_key_pair"),
    ("write_encryption_key_pair", "encryption_key_pair", "delete_encryption_key_pair"),
    ("write_key_package", "key_package", "delete_key_package"),
    ("write_psk", "psk", "delete_psk"),
]
LIST_METHODS = {
    "append_own_leaf_node", "own_leaf_nodes", "delete_own_leaf_nodes",
    "queue_proposal", "queued_proposal_refs", "queued_proposals", "remove_proposal",
    "clear_proposal_queue",
    "write_encryption_epoch_key_pairs", "encryption_epoch_key_pairs",
    "delete_encryption_epoch_key_pairs",
}


single_valued = pytest.mark.parametrize(
    ("write", "read", "delete"), SINGLE_VALUED, ids=[t[0] for t in SINGLE_VALUED]
)


def protocol_methods() -> dict[str, Any]:
    """The methods StorageProvider declares, by name."""
    return {
        name: member
        for name, member in vars(StorageProvider).items()
        if inspect.isfunction(member) and not name.startswith("_")
    }


def call(storage: GranularStorage, name: str, *args: Any) -> Any:
    return getattr(storage, name)(*args)


def test_protocol_has_the_53_methods_of_storage_provider_v1() -> None:
    """17 writes, 18 reads and 18 deletes, exactly."""
    names = set(protocol_methods())
    writes = {n for n in names if n.startswith(("write_", "append_", "queue_"))}
    deletes = {n for n in names if n.startswith(("delete_", "remove_", "clear_"))}
    reads = names - writes - deletes
    assert (len(writes), len(reads), len(deletes), len(names)) == (17, 18, 18, 53)


def test_granular_storage_implements_every_method_with_the_protocol_signature() -> None:
    """Same names and the same parameters as the Protocol, and a runtime isinstance."""
    for name, proto in protocol_methods().items():
        impl = getattr(GranularStorage, name)
        assert list(inspect.signature(impl).parameters) == list(
            inspect.signature(proto).parameters
        ), name
    assert isinstance(GranularStorage(), StorageProvider)


def test_this_suite_exercises_all_53_methods() -> None:
    """The tables below cover every method of the Protocol, none left untested."""
    covered = {m for triple in SINGLE_VALUED for m in triple} | LIST_METHODS
    assert covered == set(protocol_methods())


@single_valued
def test_single_value_round_trip(
    storage: GranularStorage, reopen: Reopen, write: str, read: str, delete: str
) -> None:
    """A written value reads back; another key is unaffected."""
    call(storage, write, GROUP, b"value-1")
    call(storage, write, OTHER_GROUP, b"value-2")
    view = reopen(storage)
    assert call(view, read, GROUP) == b"value-1"
    assert call(view, read, OTHER_GROUP) == b"value-2"


@single_valued
def test_single_value_overwrite_keeps_the_last(
    storage: GranularStorage, reopen: Reopen, write: str, read: str, delete: str
) -> None:
    """A second write replaces the first."""
    call(storage, write, GROUP, b"old")
    call(storage, write, GROUP, b"new")
    assert call(reopen(storage), read, GROUP) == b"new"


@single_valued
def test_single_value_absent_reads_none(
    storage: GranularStorage, reopen: Reopen, write: str, read: str, delete: str
) -> None:
    """Nothing stored reads as None."""
    call(storage, write, OTHER_GROUP, b"elsewhere")
    assert call(reopen(storage), read, GROUP) is None


@single_valued
def test_single_value_delete(
    storage: GranularStorage, reopen: Reopen, write: str, read: str, delete: str
) -> None:
    """Deleting removes one key only, persists, and deleting again is harmless."""
    call(storage, write, GROUP, b"value-1")
    call(storage, write, OTHER_GROUP, b"value-2")
    view = reopen(storage)
    call(view, delete, GROUP)
    call(view, delete, GROUP)
    view = reopen(view)
    assert call(view, read, GROUP) is None
    assert call(view, read, OTHER_GROUP) == b"value-2"


def test_own_leaf_nodes_append_in_order(storage: GranularStorage, reopen: Reopen) -> None:
    """Appended leaf nodes read back as a list, in append order, per group."""
    for node in (b"leaf-a", b"leaf-b", b"leaf-c"):
        storage.append_own_leaf_node(GROUP, node)
    storage.append_own_leaf_node(OTHER_GROUP, b"leaf-x")
    view = reopen(storage)
    assert view.own_leaf_nodes(GROUP) == [b"leaf-a", b"leaf-b", b"leaf-c"]
    assert view.own_leaf_nodes(OTHER_GROUP) == [b"leaf-x"]


def test_own_leaf_nodes_absent_is_empty_and_delete_clears(
    storage: GranularStorage, reopen: Reopen
) -> None:
    """No leaf nodes read as []; delete_own_leaf_nodes empties the list."""
    assert storage.own_leaf_nodes(GROUP) == []
    storage.append_own_leaf_node(GROUP, b"leaf-a")
    storage.append_own_leaf_node(OTHER_GROUP, b"leaf-x")
    view = reopen(storage)
    view.delete_own_leaf_nodes(GROUP)
    view = reopen(view)
    assert view.own_leaf_nodes(GROUP) == []
    assert view.own_leaf_nodes(OTHER_GROUP) == [b"leaf-x"]


def test_proposal_queue_keeps_queue_order(storage: GranularStorage, reopen: Reopen) -> None:
    """Refs and (ref, proposal) pairs come back in the order they were queued."""
    for i in (3, 1, 2):
        storage.queue_proposal(GROUP, b"ref-%d" % i, b"proposal-%d" % i)
    view = reopen(storage)
    assert view.queued_proposal_refs(GROUP) == [b"ref-3", b"ref-1", b"ref-2"]
    assert view.queued_proposals(GROUP) == [
        (b"ref-3", b"proposal-3"),
        (b"ref-1", b"proposal-1"),
        (b"ref-2", b"proposal-2"),
    ]


def test_proposal_queue_absent_is_empty(storage: GranularStorage, reopen: Reopen) -> None:
    """A group without proposals has empty refs and proposals lists."""
    storage.queue_proposal(OTHER_GROUP, b"ref", b"proposal")
    view = reopen(storage)
    assert view.queued_proposal_refs(GROUP) == []
    assert view.queued_proposals(GROUP) == []


def test_queueing_a_queued_ref_replaces_its_proposal_in_place(
    storage: GranularStorage, reopen: Reopen
) -> None:
    """The same ref queued twice stays once, at its first place, with the new proposal."""
    storage.queue_proposal(GROUP, b"ref-1", b"old")
    storage.queue_proposal(GROUP, b"ref-2", b"two")
    storage.queue_proposal(GROUP, b"ref-1", b"new")
    assert reopen(storage).queued_proposals(GROUP) == [(b"ref-1", b"new"), (b"ref-2", b"two")]


def test_remove_proposal_removes_one(storage: GranularStorage, reopen: Reopen) -> None:
    """remove_proposal drops exactly that ref and its proposal; unknown refs are ignored."""
    for i in (1, 2, 3):
        storage.queue_proposal(GROUP, b"ref-%d" % i, b"proposal-%d" % i)
    view = reopen(storage)
    view.remove_proposal(GROUP, b"ref-2")
    view.remove_proposal(GROUP, b"ref-unknown")
    view = reopen(view)
    assert view.queued_proposals(GROUP) == [(b"ref-1", b"proposal-1"), (b"ref-3", b"proposal-3")]


def test_removing_the_last_proposal_leaves_no_rows(
    storage: GranularStorage, reopen: Reopen
) -> None:
    """An emptied queue leaves nothing behind in any category."""
    storage.queue_proposal(GROUP, b"ref-1", b"proposal-1")
    view = reopen(storage)
    view.remove_proposal(GROUP, b"ref-1")
    assert reopen(view).categories() == []


def test_clear_proposal_queue_removes_all(storage: GranularStorage, reopen: Reopen) -> None:
    """clear_proposal_queue empties one group's queue and deletes its proposals."""
    for i in (1, 2):
        storage.queue_proposal(GROUP, b"ref-%d" % i, b"proposal-%d" % i)
    storage.queue_proposal(OTHER_GROUP, b"ref-9", b"proposal-9")
    view = reopen(storage)
    view.clear_proposal_queue(GROUP)
    view = reopen(view)
    assert view.queued_proposals(GROUP) == []
    assert view.queued_proposals(OTHER_GROUP) == [(b"ref-9", b"proposal-9")]
    assert len(view.keys("openmls/v1/queued_proposal")) == 1


def test_epoch_key_pairs_round_trip_per_epoch_and_leaf(
    storage: GranularStorage, reopen: Reopen
) -> None:
    """Key pair lists are kept apart by group, epoch and leaf index; absent is []."""
    storage.write_encryption_epoch_key_pairs(GROUP, b"epoch-1", 0, [b"kp-a", b"kp-b"])
    storage.write_encryption_epoch_key_pairs(GROUP, b"epoch-1", 1, [b"kp-c"])
    storage.write_encryption_epoch_key_pairs(GROUP, b"epoch-2", 0, [])
    view = reopen(storage)
    assert view.encryption_epoch_key_pairs(GROUP, b"epoch-1", 0) == [b"kp-a", b"kp-b"]
    assert view.encryption_epoch_key_pairs(GROUP, b"epoch-1", 1) == [b"kp-c"]
    assert view.encryption_epoch_key_pairs(GROUP, b"epoch-2", 0) == []
    assert view.encryption_epoch_key_pairs(OTHER_GROUP, b"epoch-1", 0) == []


def test_epoch_key_pairs_write_replaces_and_delete_removes(
    storage: GranularStorage, reopen: Reopen
) -> None:
    """Writing a list replaces the previous one; deleting leaves the other leaves."""
    storage.write_encryption_epoch_key_pairs(GROUP, b"epoch-1", 0, [b"kp-a", b"kp-b"])
    storage.write_encryption_epoch_key_pairs(GROUP, b"epoch-1", 0, [b"kp-z"])
    storage.write_encryption_epoch_key_pairs(GROUP, b"epoch-1", 1, [b"kp-c"])
    view = reopen(storage)
    assert view.encryption_epoch_key_pairs(GROUP, b"epoch-1", 0) == [b"kp-z"]
    view.delete_encryption_epoch_key_pairs(GROUP, b"epoch-1", 0)
    view = reopen(view)
    assert view.encryption_epoch_key_pairs(GROUP, b"epoch-1", 0) == []
    assert view.encryption_epoch_key_pairs(GROUP, b"epoch-1", 1) == [b"kp-c"]


def test_composite_keys_do_not_collide(storage: GranularStorage, reopen: Reopen) -> None:
    """Group ids and epochs of different lengths that concatenate alike stay distinct."""
    storage.write_encryption_epoch_key_pairs(b"ab", b"c", 0, [b"first"])
    storage.write_encryption_epoch_key_pairs(b"a", b"bc", 0, [b"second"])
    storage.queue_proposal(b"ab", b"c", b"p-first")
    storage.queue_proposal(b"a", b"bc", b"p-second")
    view = reopen(storage)
    assert view.encryption_epoch_key_pairs(b"ab", b"c", 0) == [b"first"]
    assert view.encryption_epoch_key_pairs(b"a", b"bc", 0) == [b"second"]
    assert view.queued_proposals(b"ab") == [(b"c", b"p-first")]
    assert view.queued_proposals(b"a") == [(b"bc", b"p-second")]


@pytest.mark.parametrize(
    "bad_call",
    [
        lambda s: s.write_tree("group", b"tree"),
        lambda s: s.write_tree(b"group", bytearray(b"tree")),
        lambda s: s.append_own_leaf_node(b"group", "leaf"),
        lambda s: s.queue_proposal(b"group", b"ref", None),
        lambda s: s.write_encryption_epoch_key_pairs(b"g", b"e", 0, [b"ok", "bad"]),
        lambda s: s.write_encryption_epoch_key_pairs(b"g", b"e", -1, [b"ok"]),
        lambda s: s.write_encryption_epoch_key_pairs(b"g", b"e", 2**32, [b"ok"]),
        lambda s: s.encryption_epoch_key_pairs(b"g", b"e", True),
    ],
    ids=["str-key", "bytearray-value", "str-leaf", "none-proposal", "str-key-pair",
         "negative-leaf", "leaf-over-u32", "bool-leaf"],
)
def test_bad_arguments_raise_and_change_nothing(bad_call: Any) -> None:
    """Wrong types or out-of-range leaf indexes raise TypeError/ValueError; nothing logged."""
    storage = GranularStorage()
    with pytest.raises((TypeError, ValueError)):
        bad_call(storage)
    assert storage.pending_events() == 0
    assert storage.categories() == []


def test_categories_use_versioned_names_the_vault_accepts(storage: GranularStorage) -> None:
    """Every OpenMLS row lands in an ``openmls/v1/`` category."""
    storage.write_tree(GROUP, b"t")
    storage.append_own_leaf_node(GROUP, b"l")
    storage.queue_proposal(GROUP, b"r", b"p")
    storage.write_encryption_epoch_key_pairs(GROUP, b"e", 0, [b"k"])
    assert all(c.startswith("openmls/v1/") for c in storage.categories())
    assert len(storage.categories()) == 5
