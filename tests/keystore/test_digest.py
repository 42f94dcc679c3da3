"""The state digest (keystore.digest) against its known answers and its promises."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keystore.digest import (
    STATE_LEN,
    DigestKeys,
    RowSetDigest,
    VaultState,
    check_anchor,
    check_rows,
)
from keystore.errors import IntegrityError, RollbackDetected

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "digest.json").read_text()
)
SECRETS = bytes.fromhex(VECTORS["keys"]["secrets"])
STORE_ID = bytes.fromhex(VECTORS["keys"]["store_id"])
Row = tuple[str, bytes, bytes]


def _keys() -> DigestKeys:
    return DigestKeys(bytearray(SECRETS), STORE_ID)


def _row(case: dict[str, str]) -> Row:
    return case["category"], bytes.fromhex(case["key_hash"]), bytes.fromhex(case["value"])


def _names(cases: list[dict[str, Any]]) -> list[str]:
    return [str(c.get("name", i)) for i, c in enumerate(cases)]


def test_keys_match_the_recorded_hkdf_output() -> None:
    """The three digest keys are the documented HKDF output cut in three."""
    keys = _keys()
    assert bytes(keys._row_key).hex() == VECTORS["keys"]["row_key"]
    assert bytes(keys._mac_key).hex() == VECTORS["keys"]["mac_key"]
    assert bytes(keys._pad_key).hex() == VECTORS["keys"]["pad_key"]


@pytest.mark.parametrize("case", VECTORS["contributions"])
def test_row_contribution_known_answer(case: dict[str, str]) -> None:
    """Each row contributes the recorded keyed BLAKE2b value."""
    expected = int(case["contribution"], 16)
    assert _keys().contribution(*_row(case)) == expected


@pytest.mark.parametrize("case", VECTORS["sets"], ids=_names(VECTORS["sets"]))
def test_set_digest_known_answer(case: dict[str, Any]) -> None:
    """A set of rows sums to the recorded digest, added in any order."""
    rows = [_row(r) for r in case["rows"]]
    forward, backward = RowSetDigest(_keys()), RowSetDigest(_keys())
    forward.add(rows)
    for row in reversed(rows):
        backward.add([row])
    assert forward.value == backward.value == int(case["digest"], 16)
    assert forward.count == len(rows)


@pytest.mark.parametrize("case", VECTORS["records"], ids=_names(VECTORS["records"]))
def test_record_seals_to_the_recorded_bytes(case: dict[str, Any]) -> None:
    """Sealing is deterministic and gives the documented 81 bytes; opening gives it back."""
    state = VaultState(case["generation"], case["row_count"], int(case["digest"], 16))
    record = _keys().seal(state)
    assert len(record) == STATE_LEN
    assert record.hex() == case["record"]
    assert _keys().open(record) == state


@pytest.mark.parametrize("case", VECTORS["invalid_records"], ids=_names(VECTORS["invalid_records"]))
def test_invalid_record_is_refused_with_the_recorded_error(case: dict[str, Any]) -> None:
    """Malformed records are IntegrityError; authentic-looking but edited ones RollbackDetected."""
    with pytest.raises(IntegrityError) as info:
        _keys().open(bytes.fromhex(case["record"]))
    assert type(info.value).__name__ == case["error"]
    if case["error"] == "RollbackDetected":
        assert isinstance(info.value, RollbackDetected)
        assert info.value.reason == "record"


def test_the_record_hides_the_digest() -> None:
    """Two records of the same digest at consecutive generations share no sealed bytes."""
    keys = _keys()
    a = keys.seal(VaultState(1, 3, 12345))
    b = keys.seal(VaultState(2, 3, 12345))
    assert a[17:49] != b[17:49]
    assert (12345).to_bytes(32, "big") not in a + b


def test_repr_of_a_state_never_shows_the_digest() -> None:
    """The digest is secret: a logged state shows generation and row count only."""
    state = VaultState(4, 2, 0xDEADBEEF)
    assert "deadbeef" not in repr(state).lower()
    assert str(0xDEADBEEF) not in repr(state)


def _digest_of(rows: list[Row]) -> RowSetDigest:
    d = RowSetDigest(_keys())
    d.add(rows)
    return d


def _rows() -> list[Row]:
    return [_row(r) for r in VECTORS["sets"][2]["rows"]]


def test_matching_rows_pass() -> None:
    """The rows a record was sealed over pass the check and return its state."""
    keys, rows = _keys(), _rows()
    digest = _digest_of(rows)
    record = keys.seal(digest.state(5))
    assert check_rows(keys, record, _digest_of(list(reversed(rows)))) == digest.state(5)


def test_older_version_of_a_row_is_detected() -> None:
    """Same rows, one holding another (older) ciphertext: RollbackDetected, same count."""
    keys, rows = _keys(), _rows()
    record = keys.seal(_digest_of(rows).state(5))
    older = _row(VECTORS["sets"][3]["rows"][0])
    with pytest.raises(RollbackDetected) as info:
        check_rows(keys, record, _digest_of([older, *rows[1:]]))
    assert info.value.reason == "rows"
    assert info.value.rows_found == info.value.rows_expected == 3
    assert "older" in str(info.value)


def test_deleted_row_is_detected() -> None:
    """A missing row: RollbackDetected naming the deletion."""
    keys, rows = _keys(), _rows()
    record = keys.seal(_digest_of(rows).state(5))
    with pytest.raises(RollbackDetected, match="deleted") as info:
        check_rows(keys, record, _digest_of(rows[:2]))
    assert (info.value.rows_found, info.value.rows_expected, info.value.generation) == (2, 3, 5)


def test_reinserted_row_is_detected() -> None:
    """A row deleted by a write and put back afterwards: RollbackDetected naming it."""
    keys, rows = _keys(), _rows()
    live = _digest_of(rows)
    live.remove(rows[:1])
    record = keys.seal(live.state(6))
    with pytest.raises(RollbackDetected, match="re-inserted"):
        check_rows(keys, record, _digest_of(rows))


def test_missing_record_is_detected() -> None:
    """A vault whose state record was removed: RollbackDetected(reason='record')."""
    with pytest.raises(RollbackDetected) as info:
        check_rows(_keys(), None, _digest_of(_rows()))
    assert info.value.reason == "record"


def test_duplicated_row_does_not_cancel_out() -> None:
    """A row present twice (a unique index dropped) changes the digest: sums do not cancel."""
    keys, rows = _keys(), _rows()
    record = keys.seal(_digest_of(rows).state(1))
    doubled = _digest_of([*rows, rows[0], rows[0]])
    doubled.count = 3  # even an attacker who also fixed the count
    with pytest.raises(RollbackDetected):
        check_rows(keys, record, doubled)


def test_record_of_another_vault_fails() -> None:
    """The keys depend on the store id: a record moved between vaults fails its tag."""
    record = _keys().seal(VaultState(1, 0, 0))
    with pytest.raises(RollbackDetected):
        DigestKeys(bytearray(SECRETS), os.urandom(16)).open(record)


def test_anchor_check_accepts_equal_and_newer_and_refuses_older() -> None:
    """check_anchor is >=: a vault ahead of its anchor (crash window) opens; behind it, not."""
    check_anchor(5, None)
    check_anchor(5, 5)
    check_anchor(6, 5)
    with pytest.raises(RollbackDetected) as info:
        check_anchor(4, 5)
    assert (info.value.reason, info.value.generation, info.value.expected_generation) == (
        "anchor", 4, 5
    )


def test_wiped_keys_refuse_work() -> None:
    """After wipe() the keys are zeros and no contribution can be computed."""
    keys = _keys()
    keys.wipe()
    assert bytes(keys._mac_key) == bytes(32)
    with pytest.raises(RuntimeError):
        keys.contribution("c", bytes(32), b"")


def test_misuse_raises_value_error() -> None:
    """Wrong secret length or out-of-range state values are the caller's bug: ValueError."""
    with pytest.raises(ValueError):
        DigestKeys(bytearray(32), STORE_ID)
    with pytest.raises(ValueError):
        _keys().seal(VaultState(-1, 0, 0))
    with pytest.raises(ValueError):
        _keys().seal(VaultState(0, 0, 1 << 256))


_row_strategy = st.tuples(
    st.sampled_from(["a", "openmls/v1/x", "native/v1/identity"]),
    st.binary(min_size=32, max_size=32),
    st.binary(max_size=80),
)


@settings(max_examples=60, deadline=None)
@given(
    initial=st.lists(_row_strategy, max_size=12, unique_by=lambda r: (r[0], r[1])),
    batches=st.lists(st.lists(st.tuples(st.integers(0, 20), st.booleans(),
                                        st.binary(max_size=40)), max_size=6), max_size=6),
)
def test_incremental_updates_equal_a_full_recount(
    initial: list[Row], batches: list[list[tuple[int, bool, bytes]]]
) -> None:
    """Any sequence of inserts, replacements and deletes, applied incrementally, gives the
    digest a full scan of the final rows gives."""
    keys = _keys()
    live: dict[tuple[str, bytes], bytes] = {(c, k): v for c, k, v in initial}
    running = RowSetDigest(keys)
    running.add(initial)
    for batch in batches:
        slots = sorted(live) or [("a", bytes(32))]
        removed: list[Row] = []
        added: list[Row] = []
        for index, delete, value in batch:
            slot = slots[index % len(slots)] if index < 15 else ("a", bytes([index]) * 32)
            if slot in live:
                removed.append((*slot, live.pop(slot)))
            if not delete:
                live[slot] = value
                added.append((*slot, value))
        running.remove(removed)
        running.add(added)
    full = _digest_of([(c, k, v) for (c, k), v in live.items()])
    assert (running.value, running.count) == (full.value, full.count)
