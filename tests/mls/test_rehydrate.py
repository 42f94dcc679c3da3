"""Rehydrating a storage from the vault, and the restore race it must make impossible."""

from __future__ import annotations

import pytest

from keystore import Vault, VaultLocked
from mls import BackpressureError, GranularStorage, StorageNotEmpty
from tests.mls.conftest import storage_rows, vault_rows


def join_group(storage: GranularStorage, group_id: bytes) -> None:
    """What processing a Welcome writes: one operation with the whole group state."""
    with storage.operation():
        storage.write_mls_join_config(group_id, b"join-config")
        storage.write_tree(group_id, b"tree")
        storage.write_context(group_id, b"context")
        storage.write_interim_transcript_hash(group_id, b"interim")
        storage.write_confirmation_tag(group_id, b"tag")
        storage.write_group_state(group_id, b"operational")
        storage.write_message_secrets(group_id, b"message-secrets")
        storage.write_resumption_psk_store(group_id, b"resumption")
        storage.write_own_leaf_index(group_id, b"\x00\x00\x00\x01")
        storage.write_group_epoch_secrets(group_id, b"epoch-secrets")


def test_restore_before_the_drain_cannot_erase_a_just_joined_group(vault: Vault) -> None:
    """The reference race (join, then restore before the save): the restore is refused."""
    storage = GranularStorage.load(vault)  # app start: the vault holds 0 groups
    join_group(storage, b"new-group")  # the Welcome is processed; not yet drained
    with pytest.raises(StorageNotEmpty):
        storage.rehydrate(vault)  # the restore that used to overwrite memory
    assert storage.group_state(b"new-group") == b"operational"
    vault.apply(storage.drain_storage_events())
    assert GranularStorage.load(vault).group_state(b"new-group") == b"operational"


def test_rehydrate_is_refused_even_after_everything_was_drained(vault: Vault) -> None:
    """Drained or not, a storage that holds state is never overwritten by a load."""
    storage = GranularStorage()
    join_group(storage, b"g")
    vault.apply(storage.drain_storage_events())
    storage.delete_tree(b"g")
    vault.apply(storage.drain_storage_events())
    with pytest.raises(StorageNotEmpty):
        storage.rehydrate(vault)


def test_rehydrate_is_refused_during_an_open_operation(vault: Vault) -> None:
    """An operation that has not written yet still owns the storage."""
    storage = GranularStorage()
    with storage.operation(), pytest.raises(StorageNotEmpty):
        storage.rehydrate(vault)


def test_a_loaded_storage_cannot_be_loaded_again(vault: Vault) -> None:
    """Loading twice would silently merge two pasts."""
    storage = GranularStorage.load(vault)
    with pytest.raises(StorageNotEmpty):
        storage.rehydrate(vault)


def test_load_brings_back_every_category_including_foreign_ones(vault: Vault) -> None:
    """Rows of other engines' categories are loaded too: memory mirrors the vault."""
    source = GranularStorage()
    join_group(source, b"g")
    source.write("mlsrs.groups", b"g", b"snapshot")
    vault.apply(source.drain_storage_events())
    loaded = GranularStorage.load(vault)
    assert storage_rows(loaded) == storage_rows(source) == vault_rows(vault)
    assert loaded.pending_events() == 0


def test_load_from_a_locked_vault_raises(vault: Vault) -> None:
    """No keys, no rows: VaultLocked, and no storage comes out half-filled."""
    vault.lock()
    with pytest.raises(VaultLocked):
        GranularStorage.load(vault)


def test_load_passes_the_backpressure_options_through(vault: Vault) -> None:
    """A loaded storage honours its bounds like a new one."""
    storage = GranularStorage.load(vault, max_pending_events=1, backpressure="raise")
    storage.write("c", b"a", b"v")
    with pytest.raises(BackpressureError):
        storage.write("c", b"b", b"v")
