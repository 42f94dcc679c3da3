"""A vault from before the state record (header flag bit 1 clear) gets one, once.

The older vaults are made from new ones by clearing the flag with the passphrase
(a re-wrap, as the package itself would have written them) and, where the test
says so, removing the record.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from keystore import Change, RollbackDetected
from keystore.cipher import derive_wrapping_key, normalize_passphrase, unwrap_secrets, wrap_secrets
from keystore.header import FLAG_STATE_DIGEST, Header
from keystore.sidecar import Sidecar
from tests.conftest import PASSPHRASE
from tests.keystore.helpers import write_raw
from tests.rollback.conftest import make_vault, reopen

CAT = "openmls/v1/group_state"


def _without_flag(header: Header) -> Header:
    kek = derive_wrapping_key(header, normalize_passphrase(PASSPHRASE))
    secrets = unwrap_secrets(kek, header)
    return wrap_secrets(kek, replace(header, flags=header.flags & ~FLAG_STATE_DIGEST), secrets)


def _make_old(path: Path, kind: str, *, keep_record: bool) -> None:
    """A closed vault of ``kind`` with three rows, as if written before the record."""
    with make_vault(path, kind) as v:
        v.apply([Change(CAT, b"g%d" % i, b"state") for i in range(3)])
    _strip_flag(path)
    if not keep_record:
        write_raw(path, "DELETE FROM keystore_state")


def _strip_flag(path: Path) -> None:
    side = Sidecar.read(path)
    if side is None:
        conn = sqlite3.connect(path, isolation_level=None)
        (raw,) = conn.execute("SELECT header FROM keystore_header").fetchone()
        conn.execute("UPDATE keystore_header SET header = ?",
                     (_without_flag(Header.from_bytes(raw)).to_bytes(),))
        conn.close()
    else:
        Sidecar(_without_flag(side.current), None, side.schema_version).write(path)


def _flagged(path: Path) -> bool:
    side = Sidecar.read(path)
    if side is not None:
        return side.current.state_digest
    conn = sqlite3.connect(path)
    try:
        (raw,) = conn.execute("SELECT header FROM keystore_header").fetchone()
    finally:
        conn.close()
    return Header.from_bytes(raw).state_digest


def test_first_writable_unlock_adopts_and_sets_the_flag(vault_path: Path, kind: str) -> None:
    """The record is computed over the rows as they are; from then on it is mandatory."""
    _make_old(vault_path, kind, keep_record=False)
    assert not _flagged(vault_path)
    with reopen(vault_path, readonly=True) as v:
        assert v.generation is None  # read-only: nothing is written, nothing checked
    assert not _flagged(vault_path)
    with reopen(vault_path) as v:
        assert v.generation == 0
        assert len(v.open_rows()[CAT]) == 3
    assert _flagged(vault_path)
    write_raw(vault_path, "DELETE FROM keystore_state")
    with pytest.raises(RollbackDetected):
        reopen(vault_path)


def test_a_record_left_without_its_flag_is_checked_not_replaced(
    vault_path: Path, kind: str, tmp_path: Path
) -> None:
    """A record without the flag (a crash between the two, for SQLCipher) must match the
    rows: kept with its generation when it does; a row deleted meanwhile is caught at
    the unlock instead of being adopted."""
    _make_old(vault_path, kind, keep_record=True)
    with reopen(vault_path) as v:
        assert v.generation == 1
    assert _flagged(vault_path)
    second = tmp_path / "second.vault"
    with make_vault(second, kind) as v:
        v.apply([Change(CAT, b"g%d" % i, b"state") for i in range(3)])
        victim = v._unlocked().key_hash(CAT, b"g0")
    _strip_flag(second)
    write_raw(second, "DELETE FROM keystore_rows WHERE key_hash = ?", (victim,))
    with pytest.raises(RollbackDetected) as info:
        reopen(second)
    assert info.value.reason == "rows"
    assert not _flagged(second)  # nothing was written
