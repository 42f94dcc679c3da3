"""Message receipts: stored outcomes, their bounded retention and their strict decoding."""

from __future__ import annotations

import pytest

from keystore.vault import MAX_VALUE_LEN
from mls.engine import CommitChanges
from mls.errors import InvalidMessage
from mls.receipts import ReceiptLog, Received, ReceivedKind, decode_receipt, encode_receipt
from mls.storage import GranularStorage

CATEGORY = "test/v1/receipt"


def test_receipt_round_trip_marks_replay() -> None:
    """A stored outcome decodes equal to the original, flagged as a replay."""
    got = Received(ReceivedKind.APPLICATION, b"alice", b"hello", removed=False)
    seq, back = decode_receipt(encode_receipt(7, got))
    assert seq == 7 and back.replay
    assert (back.kind, back.sender, back.data, back.removed) == (
        got.kind,
        b"alice",
        b"hello",
        False,
    )


@pytest.mark.parametrize("cut", [0, 5, 11, 13])
def test_truncated_receipt_is_rejected(cut: int) -> None:
    """A damaged receipt row is InvalidMessage, never an IndexError or a wrong outcome."""
    row = encode_receipt(1, Received(ReceivedKind.COMMIT, b"bob"))
    with pytest.raises(InvalidMessage):
        decode_receipt(row[:cut])
    with pytest.raises(InvalidMessage):
        decode_receipt(row + b"\x00")


def test_log_keeps_the_last_n_and_survives_reload() -> None:
    """Beyond the retention the oldest receipts are deleted; a reload keeps the order."""
    storage = GranularStorage()
    log = ReceiptLog(storage, CATEGORY, retention=2)
    for i in range(3):
        log.remember(b"g", bytes([i]), Received(ReceivedKind.COMMIT, None))
    assert log.lookup(b"g", b"\x00") is None
    assert log.lookup(b"g", b"\x02") is not None
    again = ReceiptLog(storage, CATEGORY, retention=2)
    again.remember(b"g", b"\x03", Received(ReceivedKind.COMMIT, None))
    assert again.lookup(b"g", b"\x01") is None and len(storage.keys(CATEGORY)) == 2


def test_retention_zero_stores_nothing() -> None:
    """receipt_retention=0 keeps no plaintext at all."""
    storage = GranularStorage()
    ReceiptLog(storage, CATEGORY, retention=0).remember(
        b"g", b"m", Received(ReceivedKind.APPLICATION, b"a", b"secret")
    )
    assert storage.keys(CATEGORY) == []


def test_retention_must_be_a_non_negative_int() -> None:
    """Nonsense retention values are refused."""
    with pytest.raises(ValueError):
        ReceiptLog(GranularStorage(), CATEGORY, retention=-1)
    with pytest.raises(TypeError):
        ReceiptLog(GranularStorage(), CATEGORY, retention=True)


def test_receipt_keeps_authenticated_data_epoch_and_changes() -> None:
    """Format 2 stores what a replay must give back: AAD, epoch and a commit's changes."""
    changes = CommitChanges(5, added=(b"dave",), removed=(b"bob", b"eve"), updated=(b"a",))
    got = Received(
        ReceivedKind.COMMIT, b"alice", authenticated_data=b"id 9", epoch=4, changes=changes
    )
    _, back = decode_receipt(encode_receipt(3, got))
    assert (back.authenticated_data, back.epoch, back.changes) == (b"id 9", 4, changes)


def test_format_1_receipts_still_decode() -> None:
    """A receipt written before format 2 (no AAD, epoch or changes) still replays."""
    row = bytes((1,)) + (9).to_bytes(8, "big") + b"\x00\x00" + b"\x01\x00\x00\x00\x01a" + b"\x00"
    seq, back = decode_receipt(row)
    assert (seq, back.kind, back.sender, back.data, back.epoch) == (
        9,
        ReceivedKind.APPLICATION,
        b"a",
        None,
        None,
    )


def test_receipt_too_big_for_a_row_is_skipped_not_an_error() -> None:
    """An outcome bigger than a vault row is not kept, and remembering it raises nothing."""
    storage = GranularStorage()
    log = ReceiptLog(storage, CATEGORY, retention=4)
    huge = Received(ReceivedKind.APPLICATION, b"alice", bytes(MAX_VALUE_LEN))
    with storage.operation():
        log.remember(b"g", b"big message", huge)
        log.remember(b"g", b"small message", Received(ReceivedKind.APPLICATION, b"a", b"x"))
    assert log.lookup(b"g", b"big message") is None
    assert log.lookup(b"g", b"small message") is not None


def test_receipt_keeps_the_pending_commit_flags() -> None:
    """Merged, cleared and external-sender flags come back with a replay."""
    got = Received(
        ReceivedKind.COMMIT,
        b"a",
        removed=True,
        merged_pending_commit=True,
        cleared_pending_commit=True,
        external_sender=True,
    )
    _, back = decode_receipt(encode_receipt(1, got))
    assert (back.removed, back.merged_pending_commit, back.cleared_pending_commit) == (
        True,
        True,
        True,
    )
    assert back.external_sender


def test_format_1_receipt_with_unknown_flags_is_rejected() -> None:
    """Format 1 knew only removed (0 or 1): any other flag there is a damaged row."""
    row = bytes((1,)) + (9).to_bytes(8, "big") + b"\x00\x02" + b"\x00\x00"
    with pytest.raises(InvalidMessage):
        decode_receipt(row)
