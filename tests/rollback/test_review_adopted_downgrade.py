"""A vault that got its state record at its first writable unlock (made by a release
before the record) keeps its secrets, so its old header -- without the flag that makes
the record mandatory -- still unwraps them.  Put back with an older row and without
the record, it must not be adopted afresh as if it had never had one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from keystore import Change, RollbackDetected
from tests.rollback.conftest import reopen
from tests.rollback.test_adoption import CAT, _make_old


def _header(path: Path) -> bytes:
    conn = sqlite3.connect(path)
    try:
        (raw,) = conn.execute("SELECT header FROM keystore_header").fetchone()
        return bytes(raw)
    finally:
        conn.close()


def _row(path: Path, key_hash: bytes) -> bytes:
    conn = sqlite3.connect(path)
    try:
        (raw,) = conn.execute("SELECT value FROM keystore_rows WHERE key_hash = ?",
                              (key_hash,)).fetchone()
        return bytes(raw)
    finally:
        conn.close()


@pytest.mark.xfail(
    strict=True,
    reason="adoption (VaultCore._adopt_state) keeps the vault's secrets: the header "
    "from before the flag still unwraps them, so the header put back with an older row "
    "and no record is adopted again, older row included",
)
def test_old_header_and_an_older_row_put_back_are_not_adopted(tmp_path: Path) -> None:
    """No anchor: the put-back row must still be caught, as for any vault with a record."""
    path = tmp_path / "v.vault"
    _make_old(path, "plain", keep_record=False)
    old_header = _header(path)
    with reopen(path) as v:  # the first writable unlock adopts: flag set, record written
        key_hash = v._unlocked().key_hash(CAT, b"g0")
        old_value = _row(path, key_hash)
        v.apply([Change(CAT, b"g0", b"a newer ratchet state")])
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("UPDATE keystore_header SET header = ?", (old_header,))
        conn.execute("UPDATE keystore_rows SET value = ? WHERE key_hash = ?",
                     (old_value, key_hash))
        conn.execute("DELETE FROM keystore_state")
    finally:
        conn.close()
    with pytest.raises(RollbackDetected), reopen(path) as v:
        v.open_rows()
