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
    STATE_FORMAT,
    STATE_LEN,
    DigestKeys,
    RowSetDigest,
    VaultState,
    check_anchor,
    check_rows,
    reseal,
)
from keystore.errors import IntegrityError, RollbackDetected

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "digest.json").read_text()
)
FORMAT1: dict[str, Any] = VECTORS["format1"]
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
    """The four digest keys are the documented HKDF output cut in four."""
    keys = _keys()
    assert bytes(keys._row_key).hex() == VECTORS["keys"]["row_key"]
    assert bytes(keys._mac_key).hex() == VECTORS["keys"]["mac_key"]
    assert bytes(keys._pad_key).hex() == VECTORS["keys"]["pad_key"]
    assert bytes(keys._block_key).hex() == VECTORS["keys"]["block_key"]


@pytest.mark.parametrize("case", VECTORS["contributions"])
def test_row_contribution_known_answer(case: dict[str, str]) -> None:
    """Each row contributes the recorded AES-256 encryption of its last 16 bytes."""
    expected = int(case["contribution"], 16)
    assert _keys().contribution(*_row(case)) == expected
    # The batch form agrees with the single-row form, for short values too.
    assert _keys().sum_rows([_row(case)]) == (expected % (2**128 - 1), 1)


@pytest.mark.parametrize("case", FORMAT1["contributions"])
def test_format1_row_contribution_known_answer(case: dict[str, str]) -> None:
    """State format 1 (still read): each row contributes the recorded keyed BLAKE2b value."""
    expected = int(case["contribution"], 16)
    assert _keys().contribution(*_row(case), state_format=1) == expected


def test_a_batch_is_the_sum_of_its_rows() -> None:
    """Summing a batch in one call equals the rows' contributions summed one by one,
    including a batch mixing full-length and short (zero-padded) values."""
    keys = _keys()
    rows = [_row(c) for c in VECTORS["contributions"]] * 3
    total = sum(keys.contribution(*r) for r in rows) % (2**128 - 1)
    assert keys.sum_rows(rows) == (total, len(rows))
    assert keys.sum_rows(iter(rows)) == (total, len(rows))


def test_only_the_tag_enters_a_contribution() -> None:
    """A write's read of the values it replaces fetches their last 16 bytes only: the
    contribution of those bytes is the contribution of the whole value."""
    keys = _keys()
    for case in VECTORS["contributions"]:
        category, key_hash, value = _row(case)
        assert keys.contribution(category, key_hash, value[-16:]) == keys.contribution(
            category, key_hash, value
        )


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


@pytest.mark.parametrize("case", FORMAT1["sets"], ids=_names(FORMAT1["sets"]))
def test_format1_set_digest_known_answer(case: dict[str, Any]) -> None:
    """State format 1: a set of rows sums to the recorded digest, in a format-1 digest
    and alongside format 2 in a scan whose keys have not yet read a record."""
    rows = [_row(r) for r in case["rows"]]
    only1, scan = RowSetDigest(_keys(), state_format=1), RowSetDigest(_keys())
    only1.add(rows)
    scan.add(rows)
    assert only1.value == scan.value_in(1) == int(case["digest"], 16)


@pytest.mark.parametrize("case", VECTORS["records"], ids=_names(VECTORS["records"]))
def test_record_seals_to_the_recorded_bytes(case: dict[str, Any]) -> None:
    """Sealing is deterministic and gives the documented 81 bytes; opening gives it back."""
    state = VaultState(case["generation"], case["row_count"], int(case["digest"], 16))
    record = _keys().seal(state)
    assert len(record) == STATE_LEN
    assert record[0] == STATE_FORMAT == 2
    assert record.hex() == case["record"]
    assert _keys().open(record) == state


@pytest.mark.parametrize("case", FORMAT1["records"], ids=_names(FORMAT1["records"]))
def test_format1_record_opens_to_its_state(case: dict[str, Any]) -> None:
    """A format-1 record (what earlier versions wrote) still opens, as a format-1 state."""
    state = VaultState(case["generation"], case["row_count"], int(case["digest"], 16), 1)
    assert _keys().open(bytes.fromhex(case["record"])) == state
    assert _keys().seal(state).hex() == case["record"]


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
        _keys().seal(VaultState(0, 0, 1 << 256, 1))
    with pytest.raises(ValueError):
        _keys().seal(VaultState(0, 0, (1 << 128) - 1))
    with pytest.raises(ValueError):
        _keys().seal(VaultState(0, 0, 0, 3))


def _format1_record(keys: DigestKeys, rows: list[Row], generation: int) -> bytes:
    """The record an earlier version wrote over ``rows``."""
    old = RowSetDigest(keys, state_format=1)
    old.add(rows)
    return keys.seal(old.state(generation))


def test_format1_record_is_checked_then_resealed_in_format2() -> None:
    """reseal checks the rows against a format-1 record with the format-1 function and
    vouches for the same rows in format 2 at the next generation."""
    keys, rows = _keys(), _rows()
    record = _format1_record(keys, rows, 4)
    assert keys.open(record).state_format == 1
    state, new_record = reseal(keys, record, _digest_of(rows))
    assert (state.generation, state.row_count, state.state_format) == (5, 3, 2)
    assert new_record[0] == 2
    assert check_rows(keys, new_record, _digest_of(rows)) == state
    # From now on full scans sum in format 2 only ...
    assert RowSetDigest(keys).value_in(1) is None
    # ... but a retry of the same transaction (the old record still there, its first
    # attempt rolled back) can still compare and reseal.
    retry = RowSetDigest.both_formats(keys)
    retry.add(rows)
    assert reseal(keys, record, retry)[0] == state


def test_reseal_refuses_rows_that_do_not_match_the_format1_record() -> None:
    """An older row version under a format-1 record is caught before anything is resealed."""
    keys, rows = _keys(), _rows()
    record = _format1_record(keys, rows, 4)
    older = _row(VECTORS["sets"][3]["rows"][0])
    with pytest.raises(RollbackDetected) as info:
        reseal(keys, record, _digest_of([older, *rows[1:]]))
    assert info.value.reason == "rows"


def test_a_format1_record_after_a_format2_one_is_a_rollback() -> None:
    """Once keys have read a format-2 record, a format-1 record can only be an older
    copy put back: a full check and a write both refuse it."""
    keys, rows = _keys(), _rows()
    old_record = _format1_record(keys, rows, 4)
    keys.open(keys.seal(_digest_of(rows).state(5)))
    scan = RowSetDigest(keys)
    scan.add(rows)
    with pytest.raises(RollbackDetected) as info:
        check_rows(keys, old_record, scan)
    assert info.value.reason == "record"
    with pytest.raises(RollbackDetected):
        RowSetDigest.of_state(keys, keys.open(old_record))


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


@settings(max_examples=200, deadline=None)
@given(blocks=st.integers(0, 3000), seed=st.binary(min_size=16, max_size=16))
def test_folding_reduction_equals_the_remainder(blocks: int, seed: bytes) -> None:
    """The linear-time fold used for a batch gives exactly Python's ``x % (2^128 - 1)``,
    including all-ones blocks that sum to the modulus itself."""
    from keystore.digest import _reduce

    for x in (
        int.from_bytes(seed * blocks, "big"),
        int.from_bytes(b"\xff" * 16 * blocks, "big"),
        (1 << (128 * blocks)) - 1,
    ):
        assert _reduce(x) == x % (2**128 - 1)


def test_keys_that_just_sealed_a_record_still_refuse_an_edited_copy() -> None:
    """Opening the record these keys last sealed skips nothing that matters: the same
    bytes give the same state, and any other bytes are authenticated in full."""
    keys = _keys()
    state = VaultState(9, 3, 12345)
    record = keys.seal(state)
    assert keys.open(record) == state
    for offset in (0, 8, 16, 17, 80):
        edited = record[:offset] + bytes([record[offset] ^ 1]) + record[offset + 1 :]
        with pytest.raises(IntegrityError):
            keys.open(edited)
    assert keys.open(record) == state
