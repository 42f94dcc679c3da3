"""Vaults whose state record is in format 1 (made by an earlier release) keep opening.

The fixtures under ``tests/fixtures`` were written by the package before state
format 2 (``tests/fixtures/make_state_format1.py`` says how).  A writable unlock
checks the rows against the format-1 record with the format-1 function, then seals
the same rows in format 2 at the next generation; a read-only unlock checks and
writes nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from keystore import Change, RollbackDetected, Vault
from keystore.anchor import FileAnchor
from keystore.sidecar import sidecar_path_for
from mls import GranularStorage
from tests.fixtures.make_state_format1 import PASSPHRASE, PLAIN, ROWS_AFTER, SQLCIPHER
from tests.keystore.helpers import file_digest, write_raw


@pytest.fixture(params=["plain", "sqlcipher"])
def old_vault(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A copy of a vault an earlier release left at generation 3, state format 1."""
    source = PLAIN
    if request.param == "sqlcipher":
        pytest.importorskip("sqlcipher3", reason="the [sqlcipher] extra is not installed")
        source = SQLCIPHER
    path = tmp_path / "old.vault"
    shutil.copyfile(source, path)
    if sidecar_path_for(source).exists():
        shutil.copyfile(sidecar_path_for(source), sidecar_path_for(path))
    return path


def _files(path: Path) -> dict[str, str]:
    return {p.name: file_digest(p) for p in (path, sidecar_path_for(path)) if p.exists()}


def _record(path: Path) -> bytes:
    from tests.keystore.helpers import _raw_connection

    conn = _raw_connection(path, PASSPHRASE)
    try:
        (record,) = conn.execute("SELECT record FROM keystore_state").fetchone()
        return bytes(record)
    finally:
        conn.close()


def _unlocked(path: Path, readonly: bool = False, anchor: FileAnchor | None = None) -> Vault:
    vault = Vault.open(path, readonly=readonly, anchor=anchor)
    try:
        vault.unlock(PASSPHRASE)
    except BaseException:
        vault.close()
        raise
    return vault


def _rows(vault: Vault) -> dict[tuple[str, bytes], bytes]:
    return {(c, k): v for c, rows in vault.open_rows().items() for k, v in rows.items()}


def test_the_fixture_is_in_format_1(old_vault: Path) -> None:
    """The files hold a format-1 record, as the earlier release wrote it."""
    assert _record(old_vault)[0] == 1


def test_first_writable_unlock_reseals_in_format_2(old_vault: Path) -> None:
    """The rows are checked and kept; the record is format 2 at generation 3 + 1."""
    with _unlocked(old_vault) as vault:
        assert vault.generation == 4
        assert _rows(vault) == ROWS_AFTER
        GranularStorage.load(vault)
        vault.apply([Change("native/v1/identity", b"bob", b"bob's key")])
        assert vault.generation == 5
    assert _record(old_vault)[0] == 2
    with _unlocked(old_vault) as vault:
        assert vault.generation == 5
        assert vault.verify().ok
        assert _rows(vault)[("native/v1/identity", b"bob")] == b"bob's key"


def test_read_only_unlock_checks_format_1_and_writes_nothing(old_vault: Path) -> None:
    """Read-only, the rows are checked against the format-1 record and nothing changes."""
    before = _files(old_vault)
    with _unlocked(old_vault, readonly=True) as vault:
        assert vault.generation == 3
        assert _rows(vault) == ROWS_AFTER
        assert vault.verify().ok
    assert _files(old_vault) == before
    assert _record(old_vault)[0] == 1


def test_a_deleted_row_under_a_format_1_record_is_refused(old_vault: Path) -> None:
    """A row removed from an old vault is caught by the format-1 check: read-only at
    load, writable at unlock, before anything is resealed; the files are untouched."""
    write_raw(old_vault, "DELETE FROM keystore_rows WHERE category = 'native/v1/identity'",
              passphrase=PASSPHRASE)
    before = _files(old_vault)
    with _unlocked(old_vault, readonly=True) as vault, pytest.raises(RollbackDetected) as info:
        vault.open_rows()
    assert info.value.reason == "rows"
    with pytest.raises(RollbackDetected) as info:
        _unlocked(old_vault)
    assert (info.value.reason, info.value.rows_found, info.value.rows_expected) == ("rows", 2, 3)
    assert _files(old_vault) == before


def test_the_anchor_moves_past_the_format_1_copy(old_vault: Path, tmp_path: Path) -> None:
    """Resealing is a committed write: the anchor holds generation 4, so the untouched
    format-1 copy (generation 3) is refused as a whole-vault rollback afterwards."""
    saved = tmp_path / "saved"
    saved.mkdir()
    for p in (old_vault, sidecar_path_for(old_vault)):
        if p.exists():
            shutil.copy2(p, saved / p.name)
    (tmp_path / "anchors").mkdir()
    anchor = FileAnchor(tmp_path / "anchors" / "a")
    with _unlocked(old_vault, anchor=anchor) as vault:
        assert vault.generation == 4
    for leftover in (Path(f"{old_vault}-wal"), Path(f"{old_vault}-shm")):
        leftover.unlink(missing_ok=True)
    for p in saved.iterdir():
        shutil.copy2(p, old_vault.parent / p.name)
    with pytest.raises(RollbackDetected) as info:
        _unlocked(old_vault, anchor=anchor)
    assert (info.value.reason, info.value.generation, info.value.expected_generation) == (
        "anchor", 3, 4
    )


def test_a_format_1_record_put_back_under_an_unlocked_vault_is_refused(old_vault: Path) -> None:
    """After the reseal, nothing writes format 1 again: the old record put back while
    the vault is unlocked is refused by a write and by a full read, and the write
    changes nothing."""
    old_record = _record(old_vault)
    with _unlocked(old_vault) as vault:
        write_raw(old_vault, "UPDATE keystore_state SET record = ?", (old_record,),
                  passphrase=PASSPHRASE)
        with pytest.raises(RollbackDetected) as info:
            vault.apply([Change("native/v1/identity", b"bob", b"bob's key")])
        assert info.value.reason == "record"
        with pytest.raises(RollbackDetected) as info:
            vault.open_rows()
        assert info.value.reason == "record"
    assert _record(old_vault) == old_record


def test_the_spec_reader_reads_both_formats(old_vault: Path) -> None:
    """The reader written from docs/format.md alone accepts the format-1 vault, and the
    same vault once resealed in format 2, with the same rows."""
    from tests.docs import spec_reader

    before = spec_reader.read_vault(old_vault, PASSPHRASE).rows
    with _unlocked(old_vault):
        pass
    assert _record(old_vault)[0] == 2
    assert spec_reader.read_vault(old_vault, PASSPHRASE).rows == before == ROWS_AFTER
