"""The OpenMLS ``StorageProvider`` (version 1) interface, in Python.

Mirrors ``openmls_traits::storage::StorageProvider<1>`` method for method: 17 writes,
18 reads, 18 deletes.  Keys and values are ``bytes`` because the engine serializes its
types before they reach storage; the one integer parameter is the epoch key pairs'
``leaf_index`` (a ``u32``).  Absent values read as ``None``, absent lists as ``[]``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["StorageProvider"]


@runtime_checkable
class StorageProvider(Protocol):
    """What an OpenMLS engine needs from storage (``StorageProvider<1>``)."""

    # ---- writes (17) --------------------------------------------------------------

    def write_mls_join_config(self, group_id: bytes, config: bytes) -> None:
        """Store the group's ``MlsGroupJoinConfig``."""
        ...

    def append_own_leaf_node(self, group_id: bytes, leaf_node: bytes) -> None:
        """Append one of our own leaf nodes to the group's list."""
        ...

    def queue_proposal(self, group_id: bytes, proposal_ref: bytes, proposal: bytes) -> None:
        """Store a proposal by reference and append the reference to the group's queue."""
        ...

    def write_tree(self, group_id: bytes, tree: bytes) -> None:
        """Store the group's ``TreeSync``."""
        ...

    def write_interim_transcript_hash(
        self, group_id: bytes, interim_transcript_hash: bytes
    ) -> None:
        """Store the group's interim transcript hash."""
        ...

    def write_context(self, group_id: bytes, group_context: bytes) -> None:
        """Store the group's ``GroupContext``."""
        ...

    def write_confirmation_tag(self, group_id: bytes, confirmation_tag: bytes) -> None:
        """Store the group's confirmation tag."""
        ...

    def write_group_state(self, group_id: bytes, group_state: bytes) -> None:
        """Store the group's ``MlsGroupState``."""
        ...

    def write_message_secrets(self, group_id: bytes, message_secrets: bytes) -> None:
        """Store the group's ``MessageSecretsStore``."""
        ...

    def write_resumption_psk_store(self, group_id: bytes, resumption_psk_store: bytes) -> None:
        """Store the group's ``ResumptionPskStore``."""
        ...

    def write_own_leaf_index(self, group_id: bytes, own_leaf_index: bytes) -> None:
        """Store our leaf index in the group."""
        ...

    def write_group_epoch_secrets(self, group_id: bytes, group_epoch_secrets: bytes) -> None:
        """Store the group's ``GroupEpochSecrets``."""
        ...

    def write_signature_key_pair(self, public_key: bytes, signature_key_pair: bytes) -> None:
        """Store a signature key pair under its public key."""
        ...

    def write_encryption_key_pair(self, public_key: bytes, key_pair: bytes) -> None:
        """Store an HPKE key pair (update leaf nodes) under its public key."""
        ...

    def write_encryption_epoch_key_pairs(
        self, group_id: bytes, epoch: bytes, leaf_index: int, key_pairs: list[bytes]
    ) -> None:
        """Replace the HPKE key pairs of one (group, epoch, leaf index)."""
        ...

    def write_key_package(self, hash_ref: bytes, key_package: bytes) -> None:
        """Store a key package (with its private init key) under its hash reference."""
        ...

    def write_psk(self, psk_id: bytes, psk_bundle: bytes) -> None:
        """Store a PSK bundle under its id."""
        ...

    # ---- reads (18) ---------------------------------------------------------------

    def mls_group_join_config(self, group_id: bytes) -> bytes | None:
        """The group's ``MlsGroupJoinConfig``, or ``None``."""
        ...

    def own_leaf_nodes(self, group_id: bytes) -> list[bytes]:
        """Our own leaf nodes in the group, in append order (``[]`` if none)."""
        ...

    def queued_proposal_refs(self, group_id: bytes) -> list[bytes]:
        """The references in the group's proposal queue, in queue order."""
        ...

    def queued_proposals(self, group_id: bytes) -> list[tuple[bytes, bytes]]:
        """``(reference, proposal)`` for every queued proposal, in queue order."""
        ...

    def tree(self, group_id: bytes) -> bytes | None:
        """The group's ``TreeSync``, or ``None``."""
        ...

    def group_context(self, group_id: bytes) -> bytes | None:
        """The group's ``GroupContext``, or ``None``."""
        ...

    def interim_transcript_hash(self, group_id: bytes) -> bytes | None:
        """The group's interim transcript hash, or ``None``."""
        ...

    def confirmation_tag(self, group_id: bytes) -> bytes | None:
        """The group's confirmation tag, or ``None``."""
        ...

    def group_state(self, group_id: bytes) -> bytes | None:
        """The group's ``MlsGroupState``, or ``None``."""
        ...

    def message_secrets(self, group_id: bytes) -> bytes | None:
        """The group's ``MessageSecretsStore``, or ``None``."""
        ...

    def resumption_psk_store(self, group_id: bytes) -> bytes | None:
        """The group's ``ResumptionPskStore``, or ``None``."""
        ...

    def own_leaf_index(self, group_id: bytes) -> bytes | None:
        """Our leaf index in the group, or ``None``."""
        ...

    def group_epoch_secrets(self, group_id: bytes) -> bytes | None:
        """The group's ``GroupEpochSecrets``, or ``None``."""
        ...

    def signature_key_pair(self, public_key: bytes) -> bytes | None:
        """The signature key pair of a public key, or ``None``."""
        ...

    def encryption_key_pair(self, public_key: bytes) -> bytes | None:
        """The HPKE key pair of a public key, or ``None``."""
        ...

    def encryption_epoch_key_pairs(
        self, group_id: bytes, epoch: bytes, leaf_index: int
    ) -> list[bytes]:
        """The HPKE key pairs of one (group, epoch, leaf index), or ``[]``."""
        ...

    def key_package(self, hash_ref: bytes) -> bytes | None:
        """The key package with this hash reference, or ``None``."""
        ...

    def psk(self, psk_id: bytes) -> bytes | None:
        """The PSK bundle with this id, or ``None``."""
        ...

    # ---- deletes (18) -------------------------------------------------------------

    def remove_proposal(self, group_id: bytes, proposal_ref: bytes) -> None:
        """Remove one proposal from the group's queue."""
        ...

    def delete_own_leaf_nodes(self, group_id: bytes) -> None:
        """Delete all of our own leaf nodes in the group."""
        ...

    def delete_group_config(self, group_id: bytes) -> None:
        """Delete the group's ``MlsGroupJoinConfig``."""
        ...

    def delete_tree(self, group_id: bytes) -> None:
        """Delete the group's tree."""
        ...

    def delete_confirmation_tag(self, group_id: bytes) -> None:
        """Delete the group's confirmation tag."""
        ...

    def delete_group_state(self, group_id: bytes) -> None:
        """Delete the group's ``MlsGroupState``."""
        ...

    def delete_context(self, group_id: bytes) -> None:
        """Delete the group's ``GroupContext``."""
        ...

    def delete_interim_transcript_hash(self, group_id: bytes) -> None:
        """Delete the group's interim transcript hash."""
        ...

    def delete_message_secrets(self, group_id: bytes) -> None:
        """Delete the group's ``MessageSecretsStore``."""
        ...

    def delete_all_resumption_psk_secrets(self, group_id: bytes) -> None:
        """Delete the group's ``ResumptionPskStore``."""
        ...

    def delete_own_leaf_index(self, group_id: bytes) -> None:
        """Delete our leaf index in the group."""
        ...

    def delete_group_epoch_secrets(self, group_id: bytes) -> None:
        """Delete the group's ``GroupEpochSecrets``."""
        ...

    def clear_proposal_queue(self, group_id: bytes) -> None:
        """Remove every proposal from the group's queue."""
        ...

    def delete_signature_key_pair(self, public_key: bytes) -> None:
        """Delete the signature key pair of a public key."""
        ...

    def delete_encryption_key_pair(self, public_key: bytes) -> None:
        """Delete the HPKE key pair of a public key."""
        ...

    def delete_encryption_epoch_key_pairs(
        self, group_id: bytes, epoch: bytes, leaf_index: int
    ) -> None:
        """Delete the HPKE key pairs of one (group, epoch, leaf index)."""
        ...

    def delete_key_package(self, hash_ref: bytes) -> None:
        """Delete a key package (not its encryption key pair)."""
        ...

    def delete_psk(self, psk_id: bytes) -> None:
        """Delete a PSK bundle."""
        ...
