"""Rollback and deletion detection through the public API (docs/format.md §15).

Each attack uses a real earlier copy of the same vault, made by the package itself,
and checks that the vault refuses with RollbackDetected and that nothing on disk
changed because of the refusal.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from keystore import Change, IntegrityError, RollbackDetected, Vault, VaultIOError
from keystore.anchor import FileAnchor
from mls import GranularStorage
from tests.keystore.helpers import file_digest, raw_rows, write_raw
from tests.rollback.conftest import (
    copy_vault,
    make_vault,
    reopen,
    restore_vault,
    vault_files,
)

ROWS = {b"alice": b"ratchet 1", b"bob": b"ratchet 1", b"carol": b"ratchet 1"}
CAT = "openmls/v1/message_secrets"


def _digests(path: Path) -> dict[str, str]:
    return {f.name: file_digest(f) for f in vault_files(path)}


def _fill(path: Path, kind: str) -> None:
    with make_vault(path, kind) as v:
        v.apply([Change(CAT, k, val) for k, val in ROWS.items()])


def _key_hash(path: Path, key: bytes) -> bytes:
    with reopen(path) as v:
        return v._unlocked().key_hash(CAT, key)


def _assert_load_refused(path: Path, reason: str) -> RollbackDetected:
    """Unlock succeeds; rehydrating and verifying both refuse; the files are untouched."""
    before = _digests(path)
    with reopen(path) as v:
        with pytest.raises(RollbackDetected) as on_load:
            GranularStorage.load(v)
        with pytest.raises(RollbackDetected):
            v.open_rows()
        with pytest.raises(RollbackDetected):
            v.verify()
    assert on_load.value.reason == reason
    assert isinstance(on_load.value, IntegrityError)
    assert _digests(path) == before
    return on_load.value


def test_generation_counts_committed_writes(vault_path: Path, kind: str) -> None:
    """A new vault is at generation 0; each committed write adds one; an empty one does not."""
    with make_vault(vault_path, kind) as v:
        assert v.generation == 0
        v.put(CAT, b"k", b"v")
        assert v.generation == 1
        v.apply([Change(CAT, b"a", b"1"), Change(CAT, b"k", None)])
        assert v.generation == 2
        assert v.apply([]) == 0
        assert v.generation == 2
    with reopen(vault_path) as v:
        assert v.generation == 2
        assert v.open_rows() == {CAT: {b"a": b"1"}}
        assert v.verify().ok


def test_older_version_of_a_row_is_detected(vault_path: Path, kind: str, tmp_path: Path) -> None:
    """A row put back from an earlier copy of the same vault authenticates, but is caught."""
    _fill(vault_path, kind)
    old = raw_rows(vault_path)
    with reopen(vault_path) as v:
        v.put(CAT, b"alice", b"ratchet 2")
    kh = _key_hash(vault_path, b"alice")
    write_raw(
        vault_path, "UPDATE keystore_rows SET value = ? WHERE category = ? AND key_hash = ?",
        (old[(CAT, kh)], CAT, kh),
    )
    with reopen(vault_path) as v:
        assert v.get(CAT, b"alice") == b"ratchet 1"  # the row alone still authenticates
    err = _assert_load_refused(vault_path, "rows")
    assert err.rows_found == err.rows_expected == 3
    assert "older" in str(err)


def test_deleted_row_is_detected(vault_path: Path, kind: str) -> None:
    """A row removed behind the vault's back is caught, and the message says so."""
    _fill(vault_path, kind)
    kh = _key_hash(vault_path, b"bob")
    write_raw(vault_path, "DELETE FROM keystore_rows WHERE key_hash = ?", (kh,))
    err = _assert_load_refused(vault_path, "rows")
    assert (err.rows_found, err.rows_expected) == (2, 3)
    assert "deleted" in str(err)


def test_reinserted_row_is_detected(vault_path: Path, kind: str) -> None:
    """A row the application deleted, put back from an earlier copy, is caught."""
    _fill(vault_path, kind)
    old = raw_rows(vault_path)
    with reopen(vault_path) as v:
        v.delete(CAT, b"carol")
    kh = _key_hash(vault_path, b"carol")
    write_raw(
        vault_path, "INSERT INTO keystore_rows (category, key_hash, value) VALUES (?, ?, ?)",
        (CAT, kh, old[(CAT, kh)]),
    )
    err = _assert_load_refused(vault_path, "rows")
    assert (err.rows_found, err.rows_expected) == (3, 2)
    assert "re-inserted" in str(err)


def test_writes_after_a_put_back_row_do_not_hide_it(vault_path: Path, kind: str) -> None:
    """Writing other rows after the tampering keeps the mismatch: it is never 'healed'."""
    _fill(vault_path, kind)
    old = raw_rows(vault_path)
    with reopen(vault_path) as v:
        v.put(CAT, b"alice", b"ratchet 2")
    kh = _key_hash(vault_path, b"alice")
    write_raw(
        vault_path, "UPDATE keystore_rows SET value = ? WHERE category = ? AND key_hash = ?",
        (old[(CAT, kh)], CAT, kh),
    )
    with reopen(vault_path) as v:
        v.put(CAT, b"bob", b"ratchet 2")
        v.put(CAT, b"dave", b"ratchet 1")
    _assert_load_refused(vault_path, "rows")


def test_state_record_removed_or_edited_is_refused_at_unlock(vault_path: Path, kind: str) -> None:
    """No record, or a record with a flipped bit, fails the unlock; the vault stays locked."""
    _fill(vault_path, kind)
    write_raw(vault_path, "UPDATE keystore_state SET record = ?", (bytes(81),))
    with pytest.raises(IntegrityError):
        reopen(vault_path)
    write_raw(vault_path, "DELETE FROM keystore_state")
    before = _digests(vault_path)
    v = Vault.open(vault_path)
    try:
        with pytest.raises(RollbackDetected) as info:
            v.unlock("correct horse battery staple")
        assert info.value.reason == "record"
        assert v.locked
    finally:
        v.close()
    assert _digests(vault_path) == before


def test_older_state_record_is_caught_by_the_rows(vault_path: Path, kind: str) -> None:
    """An authentic record from an earlier copy vouches for the earlier rows, not these."""
    _fill(vault_path, kind)
    with reopen(vault_path) as v:
        old_record = v._connection().execute("SELECT record FROM keystore_state").fetchone()[0]
        v.put(CAT, b"alice", b"ratchet 2")
    write_raw(vault_path, "UPDATE keystore_state SET record = ?", (old_record,))
    _assert_load_refused(vault_path, "rows")


def test_whole_vault_swap_without_anchor_is_not_detected(
    vault_path: Path, kind: str, tmp_path: Path
) -> None:
    """The documented limit: an entire older copy is a consistent older vault."""
    _fill(vault_path, kind)
    copy_vault(vault_path, tmp_path / "old")
    with reopen(vault_path) as v:
        v.put(CAT, b"alice", b"ratchet 2")
    restore_vault(tmp_path / "old", vault_path)
    with reopen(vault_path) as v:
        assert v.generation == 1
        assert v.open_rows() == {CAT: ROWS}


def test_whole_vault_swap_with_anchor_is_refused(
    vault_path: Path, kind: str, tmp_path: Path, anchor: FileAnchor
) -> None:
    """With an anchor kept elsewhere, the same swap is refused and nothing is written."""
    with make_vault(vault_path, kind) as v:
        store_id = v.store_id
    with reopen(vault_path, anchor) as v:
        v.apply([Change(CAT, k, val) for k, val in ROWS.items()])
    copy_vault(vault_path, tmp_path / "old")
    with reopen(vault_path, anchor) as v:
        v.put(CAT, b"alice", b"ratchet 2")
        assert anchor.load(store_id) == v.generation == 2
    restore_vault(tmp_path / "old", vault_path)
    before = _digests(vault_path)
    with pytest.raises(RollbackDetected) as info:
        reopen(vault_path, anchor)
    assert info.value.reason == "anchor"
    assert (info.value.generation, info.value.expected_generation) == (1, 2)
    assert _digests(vault_path) == before
    assert anchor.load(store_id) == 2


def test_anchor_follows_every_commit(vault_path: Path, kind: str, anchor: FileAnchor) -> None:
    """The anchor is written after each commit, so it always holds the latest generation."""
    make_vault(vault_path, kind).close()
    with reopen(vault_path, anchor) as v:
        for i in range(3):
            v.put(CAT, b"k", bytes([i]))
            assert anchor.load(v.store_id) == v.generation == i + 1


def test_an_anchor_that_cannot_be_written_says_the_write_was_committed(
    vault_path: Path, kind: str, anchor: FileAnchor
) -> None:
    """The anchor is written after the commit: when it fails, the error says the write
    landed (so no caller takes it for a lost write), and the row is in the vault."""
    make_vault(vault_path, kind).close()
    with reopen(vault_path, anchor) as v:
        v.put(CAT, b"k", b"one")
        anchor.path.unlink()
        anchor.path.mkdir()  # the anchor can no longer be read or replaced
        with pytest.raises(VaultIOError, match="the write itself was committed"):
            v.put(CAT, b"k", b"two")
    with reopen(vault_path) as v:
        assert v.get(CAT, b"k") == b"two"


def test_vault_ahead_of_its_anchor_opens_and_the_anchor_catches_up(
    vault_path: Path, kind: str, anchor: FileAnchor
) -> None:
    """A crash between commit and anchor write leaves the anchor behind: accepted (>=)."""
    make_vault(vault_path, kind).close()
    with reopen(vault_path, anchor) as v:
        v.put(CAT, b"k", b"1")
    with reopen(vault_path) as v:  # a write the anchor never heard of
        v.put(CAT, b"k", b"2")
        store_id = v.store_id
    assert anchor.load(store_id) == 1
    with reopen(vault_path, anchor) as v:
        assert v.generation == 2
    assert anchor.load(store_id) == 2


def test_anchor_of_another_vault_is_refused(
    tmp_path: Path, kind: str, anchor: FileAnchor
) -> None:
    """An anchor file written for one vault does not vouch for another."""
    make_vault(tmp_path / "one.vault", kind).close()
    with reopen(tmp_path / "one.vault", anchor) as v:
        v.put(CAT, b"k", b"1")
    make_vault(tmp_path / "two.vault", kind).close()
    with pytest.raises(IntegrityError, match="another vault"):
        reopen(tmp_path / "two.vault", anchor)


def test_rekey_and_passphrase_change_keep_the_state_consistent(
    vault_path: Path, kind: str
) -> None:
    """rekey re-seals the record under the new keys; a passphrase change leaves it valid."""
    _fill(vault_path, kind)
    with reopen(vault_path) as v:
        v.rekey()
        assert v.generation == 2
        v.put(CAT, b"dave", b"ratchet 1")
        v.change_passphrase("correct horse battery staple", "another passphrase")
        v.change_passphrase("another passphrase", "correct horse battery staple")
        assert v.generation == 3
    with reopen(vault_path) as v:
        assert v.generation == 3
        assert len(v.open_rows()[CAT]) == 4
        assert v.verify().ok
    kh = _key_hash(vault_path, b"dave")
    write_raw(vault_path, "DELETE FROM keystore_rows WHERE key_hash = ?", (kh,))
    _assert_load_refused(vault_path, "rows")


def test_read_only_open_checks_and_writes_nothing(vault_path: Path, kind: str) -> None:
    """A read-only unlock checks the record and rows like a writable one."""
    _fill(vault_path, kind)
    with reopen(vault_path, readonly=True) as v:
        assert v.generation == 1
        assert v.open_rows() == {CAT: ROWS}
    kh = _key_hash(vault_path, b"bob")
    write_raw(vault_path, "DELETE FROM keystore_rows WHERE key_hash = ?", (kh,))
    with reopen(vault_path, readonly=True) as v, pytest.raises(RollbackDetected):
        v.open_rows()


def test_state_table_dropped_is_refused_at_unlock(vault_path: Path, kind: str) -> None:
    """Dropping the whole table is a missing record, not a crash or a fresh start."""
    _fill(vault_path, kind)
    write_raw(vault_path, "DROP TABLE keystore_state")
    v = Vault.open(vault_path)
    try:
        with pytest.raises(RollbackDetected) as info:
            v.unlock("correct horse battery staple")
        assert info.value.reason == "record" and v.locked
    finally:
        v.close()


class _DictAnchor:
    """An application's own anchor (a keyring, a server): any object with load/store."""

    def __init__(self) -> None:
        self.generations: dict[bytes, int] = {}
        self.fail = False

    def load(self, store_id: bytes) -> int | None:
        if self.fail:
            raise ConnectionError("the anchor service is down")
        return self.generations.get(store_id)

    def store(self, store_id: bytes, generation: int) -> None:
        if self.fail:
            raise ConnectionError("the anchor service is down")
        self.generations[store_id] = max(generation, self.generations.get(store_id, 0))


def test_an_application_anchor_works_and_its_failures_are_ours(
    vault_path: Path, kind: str, tmp_path: Path
) -> None:
    """Any GenerationAnchor works like FileAnchor; its own exceptions become VaultIOError."""
    anchor = _DictAnchor()
    _fill(vault_path, kind)
    copy_vault(vault_path, tmp_path / "old")
    with reopen(vault_path, anchor) as v:
        v.put(CAT, b"alice", b"ratchet 2")
        assert anchor.generations[v.store_id] == 2
        anchor.fail = True
        with pytest.raises(VaultIOError, match="committed"):
            v.put(CAT, b"bob", b"ratchet 2")
        anchor.fail = False
        assert v.get(CAT, b"bob") == b"ratchet 2"  # the write itself went through
    anchor.fail = True
    with pytest.raises(VaultIOError):
        reopen(vault_path, anchor)
    anchor.fail = False
    restore_vault(tmp_path / "old", vault_path)
    with pytest.raises(RollbackDetected):
        reopen(vault_path, anchor)


def test_passphrase_change_with_rekey_reseals_the_record(vault_path: Path, kind: str) -> None:
    """change_passphrase(..., rekey=True) re-seals the record under the new keys."""
    _fill(vault_path, kind)
    with reopen(vault_path) as v:
        v.change_passphrase("correct horse battery staple", "next passphrase", rekey=True)
        assert v.generation == 2
    with Vault.open(vault_path) as v:
        v.unlock("next passphrase")
        assert v.open_rows() == {CAT: ROWS}


def test_the_spec_reader_agrees(vault_path: Path, kind: str) -> None:
    """The reader written from docs/format.md alone accepts an intact vault and refuses
    a deleted row with the same named error as the package."""
    from tests.docs import spec_reader

    _fill(vault_path, kind)
    assert len(spec_reader.read_vault(vault_path, "correct horse battery staple").rows) == 3
    kh = _key_hash(vault_path, b"bob")
    write_raw(vault_path, "DELETE FROM keystore_rows WHERE key_hash = ?", (kh,))
    with pytest.raises(spec_reader.SpecError) as info:
        spec_reader.read_vault(vault_path, "correct horse battery staple")
    assert info.value.kind == "RollbackDetected"


@pytest.mark.parametrize("damage", ["'text, not a blob'", "12", "NULL"])
def test_a_write_over_a_value_that_is_not_a_blob_is_refused(
    vault_path: Path, kind: str, damage: str
) -> None:
    """A write reads back the tail of each value it replaces; one that is no longer a
    blob is an IntegrityError (never a bare TypeError), and nothing is written."""
    _fill(vault_path, kind)
    kh = _key_hash(vault_path, b"bob")
    if damage == "NULL":  # the column is NOT NULL: an empty blob, whose tail SQL gives as NULL
        damage = "x''"
    write_raw(vault_path, f"UPDATE keystore_rows SET value = {damage} WHERE key_hash = ?", (kh,))
    before = _digests(vault_path)
    with reopen(vault_path) as v:
        if damage == "x''":
            v.put(CAT, b"bob", b"ratchet 2")  # an empty blob is a blob: the write goes on
            assert v.generation == 2
        else:
            with pytest.raises(IntegrityError, match="not a blob"):
                v.put(CAT, b"bob", b"ratchet 2")
            assert v.generation == 1
    if damage != "x''":
        assert _digests(vault_path) == before
        return
    # The write subtracted what it found, not what the record counted: the next full
    # read still reports the damage.
    with reopen(vault_path) as v, pytest.raises(RollbackDetected):
        v.open_rows()
