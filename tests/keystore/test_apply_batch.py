"""Vault.apply on large batches: the batched checks and sealing keep every guarantee."""

from __future__ import annotations

from pathlib import Path

import pytest

from keystore import Change, Vault
from keystore.vault import MAX_KEY_LEN
from tests.keystore.helpers import file_digest, raw_rows

# Larger than the slices apply and the sealing loop work in, so a bad row can sit
# in a later slice than the first.
MANY = 9000


def test_large_batch_with_deletes_round_trips(vault: Vault) -> None:
    """Writes and deletes over several categories land exactly, each row readable."""
    vault.apply(Change(f"c{i % 3}", b"k%d" % i, b"v%d" % i) for i in range(MANY))
    changes = [
        Change(f"c{i % 3}", b"k%d" % i, None if i % 7 == 0 else b"new %d" % i)
        for i in range(MANY)
    ]
    assert vault.apply(changes) == MANY
    expected: dict[str, dict[bytes, bytes]] = {}
    for ch in changes:
        if ch.value is not None:
            expected.setdefault(ch.category, {})[ch.key] = ch.value
    assert vault.open_rows() == expected
    assert vault.get("c0", b"k0") is None and vault.get("c1", b"k1") == b"new 1"


def test_last_change_to_a_row_wins_across_slices(vault: Vault) -> None:
    """A row changed at the start and at the end of one batch keeps the last value."""
    changes = [Change("c", b"k%d" % i, b"x") for i in range(MANY)]
    changes.append(Change("c", b"k0", b"last"))
    changes.append(Change("c", b"k1", None))
    assert vault.apply(changes) == MANY
    assert vault.get("c", b"k0") == b"last" and vault.get("c", b"k1") is None


def test_bytes_like_input_in_a_later_slice_is_normalized(vault: Vault) -> None:
    """bytearray keys and values anywhere in a batch are stored as their bytes."""
    changes: list[Change] = [Change("c", b"k%d" % i, b"v") for i in range(MANY)]
    changes.append(Change("c", bytearray(b"ba-key"), bytearray(b"ba-value")))  # type: ignore[arg-type]
    vault.apply(changes)
    assert vault.get("c", b"ba-key") == b"ba-value"


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (Change("-bad", b"k", b"v"), ValueError),
        (Change("c", "text key", b"v"), TypeError),  # type: ignore[arg-type]
        (Change("c", b"k" * (MAX_KEY_LEN + 1), b"v"), ValueError),
        (Change("c", b"k", 42), TypeError),  # type: ignore[arg-type]
    ],
    ids=["category", "key-type", "key-length", "value-type"],
)
def test_a_bad_row_late_in_a_batch_changes_nothing(
    vault: Vault, vault_path: Path, bad: Change, error: type[Exception]
) -> None:
    """One invalid change after thousands of valid ones raises before any write."""
    vault.put("c", b"existing", b"kept")
    before = file_digest(vault_path)
    rows_before = raw_rows(vault_path)
    changes = [Change("c", b"k%d" % i, b"v") for i in range(MANY)]
    changes.append(bad)
    with pytest.raises(error):
        vault.apply(changes)
    assert raw_rows(vault_path) == rows_before
    assert file_digest(vault_path) == before


def test_yield_gil_writes_the_same_rows(vault: Vault) -> None:
    """apply(yield_gil=True) only pauses between slices: the rows land the same."""
    changes = [Change(f"c{i % 2}", b"k%d" % i, b"v%d" % i) for i in range(1000)]
    assert vault.apply(changes, yield_gil=True) == 1000
    assert vault.open_rows() == {
        f"c{j}": {ch.key: ch.value for ch in changes[j::2]} for j in range(2)
    }
