"""Writes that do not read back what they replace (docs/format.md §15, docs/storage.md).

After a full read checked against the state record, a writable vault keeps the last
16 bytes of every live row's value in memory, and ``apply`` subtracts the replaced
rows' digest contributions from there instead of reading them back in its
transaction.  These tests prove the record it writes is the one a full scan gives,
that every failure falls back to reading back, and that an edit made behind the
vault's back is still caught.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keystore import Change, RollbackDetected, Vault, VaultIOError, vault_core
from keystore.backends import sqlite as sqlite_backend
from keystore.digest import RowSetDigest, value_tails
from mls import GranularStorage
from tests.conftest import PASSPHRASE
from tests.keystore.helpers import raw_rows, write_raw
from tests.rollback.conftest import make_vault, reopen

CATS = ("openmls/v1/group_state", "openmls/v1/message_secrets")
KEYS = [b"k%d" % i for i in range(6)]


def expected_record(vault: Vault) -> bytes:
    """The record a full scan of the stored rows gives at the vault's generation:
    what the read-back path would have stored."""
    rows, _ = vault._backend.scan_with_state()
    keys = vault._digest
    assert keys is not None and vault.generation is not None
    digest = RowSetDigest(keys)
    digest.add(rows)
    return keys.seal(digest.state(vault.generation))


def stored_record(vault: Vault) -> bytes:
    record = vault._backend.read_state()
    assert record is not None
    return record


@pytest.fixture
def read_backs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the SQLite backend's reads of the values a write replaces."""
    calls: list[int] = []
    real = sqlite_backend._old_values

    def counting(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(sqlite_backend, "_old_values", counting)
    yield calls


def _fill(path: Path, kind: str, n: int = 4) -> None:
    with make_vault(path, kind) as v:
        v.apply([Change(CATS[0], KEYS[i], b"value %d" % i) for i in range(n)])


changes = st.lists(
    st.tuples(
        st.sampled_from(CATS),
        st.sampled_from(KEYS),
        st.one_of(st.none(), st.binary(min_size=0, max_size=40)),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(changes, min_size=1, max_size=6))
def test_records_from_memory_are_byte_identical_to_a_full_scan(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[tuple[str, bytes, Any]]]
) -> None:
    """Over random batches of upserts, replacements and deletes (some of rows that do
    not exist), each record written from the tails in memory equals, byte for byte,
    the record a full scan of the stored rows gives; the tails equal the stored ones."""
    path = tmp_path_factory.mktemp("hyp") / "v.db"
    _fill(path, "plain")
    with reopen(path) as v:
        GranularStorage.load(v)
        for batch in batches:
            v.apply([Change(c, k, val) for c, k, val in batch])
            assert stored_record(v) == expected_record(v)
            assert v._tails_now() == value_tails(v._backend.scan_all())


def test_a_write_after_a_load_does_not_read_back(
    vault_path: Path, kind: str, read_backs: list[int]
) -> None:
    """Once loaded, replacing and deleting rows reads nothing back; before any full
    read (a reopened vault with rows), the write reads the replaced values back."""
    _fill(vault_path, kind)
    with reopen(vault_path) as v:
        v.put(CATS[0], KEYS[0], b"before the load")
        assert len(read_backs) == 1
        GranularStorage.load(v)
        v.apply([Change(CATS[0], KEYS[1], b"new"), Change(CATS[0], KEYS[2], None)])
        v.put(CATS[1], b"fresh", b"x")
        assert len(read_backs) == 1
        assert stored_record(v) == expected_record(v)
    with reopen(vault_path) as v:
        assert v.open_rows()[CATS[0]][KEYS[1]] == b"new"
        assert v.verify().ok


def test_a_new_vault_writes_from_memory_from_the_start(
    vault_path: Path, kind: str, read_backs: list[int]
) -> None:
    """A vault whose record vouches for no rows knows every tail (none) at unlock."""
    with make_vault(vault_path, kind) as v:
        v.apply([Change(CATS[0], k, b"v") for k in KEYS])
        v.apply([Change(CATS[0], k, b"w") for k in KEYS[:3]])
        assert read_backs == []
        assert stored_record(v) == expected_record(v)


@pytest.mark.parametrize("when", ["before commit", "after commit"])
def test_a_failed_write_drops_the_tails_and_the_next_write_is_still_right(
    vault_path: Path, kind: str, when: str, read_backs: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The backend raises with the batch rolled back, or after it committed (a commit
    whose outcome the caller cannot know): the tails are dropped, the next write
    reads back, and its record matches the rows, so a later load accepts them."""
    _fill(vault_path, kind)
    with reopen(vault_path) as v:
        GranularStorage.load(v)
        real_apply = v._backend.apply

        def failing(*args: Any, **kwargs: Any) -> None:
            if when == "after commit":
                real_apply(*args, **kwargs)
            raise VaultIOError("simulated storage failure")

        monkeypatch.setattr(v._backend, "apply", failing)
        with pytest.raises(VaultIOError):
            v.apply([Change(CATS[0], KEYS[0], b"lost?"), Change(CATS[0], KEYS[1], None)])
        monkeypatch.setattr(v._backend, "apply", real_apply)
        assert v._tails_now() is None
        # The same rows again: stale tails would subtract the wrong contributions.
        v.apply([Change(CATS[0], KEYS[0], b"again"), Change(CATS[0], KEYS[1], b"back")])
        assert len(read_backs) == 1
        assert stored_record(v) == expected_record(v)
    with reopen(vault_path) as v:
        rows = v.open_rows()[CATS[0]]
        assert (rows[KEYS[0]], rows[KEYS[1]]) == (b"again", b"back")


def test_a_write_failing_inside_its_transaction_drops_the_tails(
    vault_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement of the write fails after the record was computed: nothing lands,
    the tails are dropped, and the vault goes on with the rows as they were."""
    _fill(vault_path, kind)
    with reopen(vault_path) as v:
        GranularStorage.load(v)

        def broken(*args: Any) -> None:
            raise VaultIOError("simulated failure of a write statement")

        monkeypatch.setattr(sqlite_backend.SqliteBackend, "write_rows", staticmethod(broken))
        with pytest.raises(VaultIOError):
            v.put(CATS[0], KEYS[0], b"never")
        monkeypatch.undo()
        assert v._tails_now() is None
        v.put(CATS[0], KEYS[0], b"landed")
        assert stored_record(v) == expected_record(v)
    with reopen(vault_path) as v:
        assert v.open_rows()[CATS[0]][KEYS[0]] == b"landed"


def test_an_edit_behind_the_open_vaults_back_is_detected_at_the_next_full_read(
    vault_path: Path, kind: str
) -> None:
    """Someone puts an older version of a row back while the vault is open and
    loaded; the vault then replaces that very row from memory.  The record follows
    what the vault wrote, not the edit, and the next load refuses the rows."""
    _fill(vault_path, kind)
    old = raw_rows(vault_path)
    with reopen(vault_path) as v:
        GranularStorage.load(v)
        v.apply([Change(CATS[0], KEYS[0], b"newer"), Change(CATS[0], KEYS[1], b"newer")])
        (target,) = [ref for ref in old if ref[1] == v._unlocked().key_hash(CATS[0], KEYS[1])]
        write_raw(
            vault_path, "UPDATE keystore_rows SET value = ? WHERE category = ? AND key_hash = ?",
            (old[target], *target),
        )
        v.put(CATS[0], KEYS[0], b"newest")  # a row the edit did not touch
        with pytest.raises(RollbackDetected):
            v.open_rows()
    with reopen(vault_path) as v, pytest.raises(RollbackDetected):
        GranularStorage.load(v)


def test_an_edited_row_the_vault_overwrites_leaves_only_the_vaults_own_rows(
    vault_path: Path, kind: str
) -> None:
    """An older version put back under a row the vault then replaces is gone again:
    the record subtracted the tail the vault had written and the row on disk is the
    vault's newest, so the load accepts exactly what the vault wrote."""
    _fill(vault_path, kind)
    old = raw_rows(vault_path)
    with reopen(vault_path) as v:
        GranularStorage.load(v)
        v.put(CATS[0], KEYS[0], b"newer")
        kh = v._unlocked().key_hash(CATS[0], KEYS[0])
        write_raw(
            vault_path, "UPDATE keystore_rows SET value = ? WHERE category = ? AND key_hash = ?",
            (old[(CATS[0], kh)], CATS[0], kh),
        )
        v.put(CATS[0], KEYS[0], b"newest")
    with reopen(vault_path) as v:
        assert v.open_rows()[CATS[0]][KEYS[0]] == b"newest"
        assert v.verify().ok


def test_lock_drops_the_tails_and_a_rekey_rebuilds_them(
    vault_path: Path, kind: str, read_backs: list[int]
) -> None:
    """Lock forgets the tails (the next unlock reads back until a load); a rekey
    rewrites every row and keeps the tails of what it wrote."""
    _fill(vault_path, kind)
    with reopen(vault_path) as v:
        GranularStorage.load(v)
        v.lock()
        v.unlock(PASSPHRASE)
        v.put(CATS[0], KEYS[0], b"read back")
        assert len(read_backs) == 1
        v.rekey()
        v.apply([Change(CATS[0], KEYS[1], b"after rekey"), Change(CATS[0], KEYS[2], None)])
        assert len(read_backs) == 1
        assert stored_record(v) == expected_record(v)
    with reopen(vault_path) as v:
        assert v.open_rows()[CATS[0]][KEYS[1]] == b"after rekey"


def test_a_vault_above_the_cap_reads_back(
    vault_path: Path, kind: str, read_backs: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the row cap no tails are kept (memory stays bounded) and writes read
    back; a write that grows a vault past it drops them."""
    monkeypatch.setattr(vault_core, "_TAIL_CACHE_MAX_ROWS", 3)
    _fill(vault_path, kind, n=4)
    with reopen(vault_path) as v:
        GranularStorage.load(v)
        assert v._tails_now() is None
        v.put(CATS[0], KEYS[0], b"x")
        assert len(read_backs) == 1
    monkeypatch.setattr(vault_core, "_TAIL_CACHE_MAX_ROWS", 5)
    with reopen(vault_path) as v:
        GranularStorage.load(v)
        v.put(CATS[1], b"fifth", b"x")
        assert v._tails_now() is not None
        v.put(CATS[1], b"sixth", b"x")
        assert v._tails_now() is None
        v.put(CATS[1], b"fifth", b"y")
        assert len(read_backs) == 2
        assert stored_record(v) == expected_record(v)


def test_a_read_only_vault_keeps_no_tails(vault_path: Path, kind: str) -> None:
    """Only a writer uses them, so a read-only load does not spend the memory."""
    _fill(vault_path, kind)
    with reopen(vault_path, readonly=True) as v:
        GranularStorage.load(v)
        assert v._tails_now() is None


def test_verify_keeps_the_tails_it_checked(
    vault_path: Path, kind: str, read_backs: list[int]
) -> None:
    """A verify that passes is a full read checked against the record: the writes
    after it need not read back."""
    _fill(vault_path, kind)
    with reopen(vault_path) as v:
        assert v.verify().ok
        v.apply([Change(CATS[0], KEYS[0], b"after verify"), Change(CATS[0], KEYS[1], None)])
        assert read_backs == []
        assert stored_record(v) == expected_record(v)


@pytest.mark.parametrize("keep_record", [False, True])
def test_adoption_keeps_the_tails_of_the_rows_it_adopted(
    vault_path: Path, kind: str, keep_record: bool, read_backs: list[int]
) -> None:
    """A vault from before the state record gets one at its first writable unlock,
    from every row authenticated in that transaction: its writes start from memory."""
    from tests.rollback.test_adoption import _make_old

    _make_old(vault_path, kind, keep_record=keep_record)
    with reopen(vault_path) as v:
        v.apply([Change("openmls/v1/group_state", b"g0", b"replaced"),
                 Change("openmls/v1/group_state", b"g1", None)])
        assert read_backs == []
        assert stored_record(v) == expected_record(v)
    with reopen(vault_path) as v:
        assert v.verify().ok


def test_a_reseal_keeps_the_tails_of_the_rows_it_checked(
    tmp_path: Path, read_backs: list[int]
) -> None:
    """A format-1 record carried over to format 2 at the first writable unlock checks
    every row: the writes after it start from memory."""
    import shutil

    from tests.fixtures.make_state_format1 import PASSPHRASE as OLD_PASSPHRASE
    from tests.fixtures.make_state_format1 import PLAIN, ROWS_AFTER

    path = tmp_path / "old.vault"
    shutil.copyfile(PLAIN, path)
    (category, key), *_ = ROWS_AFTER
    with Vault.open(path) as v:
        v.unlock(OLD_PASSPHRASE)
        v.put(category, key, b"replaced after the reseal")
        assert read_backs == []
        assert stored_record(v) == expected_record(v)
    with Vault.open(path) as v:
        v.unlock(OLD_PASSPHRASE)
        assert v.open_rows()[category][key] == b"replaced after the reseal"
