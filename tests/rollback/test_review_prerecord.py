"""An anchored vault replaced by a copy from before the state record (a whole-vault
downgrade): the anchor must refuse it, and refuse it before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from keystore import Change, RollbackDetected
from keystore.anchor import FileAnchor
from tests.conftest import PASSPHRASE
from tests.keystore.helpers import _raw_connection, write_raw
from tests.rollback.conftest import make_vault, reopen
from tests.rollback.test_adoption import _flagged, _strip_flag

CAT = "openmls/v1/group_state"


def raw_scalar(path: Path, sql: str) -> object:
    """One value read from the file behind the vault's back."""
    conn = _raw_connection(path, PASSPHRASE)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def _downgraded(path: Path, kind: str, anchor: FileAnchor) -> None:
    """An anchored vault at generation 3, then its files made to look as if written
    before the state record (flag cleared, record removed): an older copy put back."""
    with make_vault(path, kind) as v:
        v.close()
    with reopen(path, anchor) as v:
        for i in range(3):
            v.apply([Change(CAT, b"g%d" % i, b"state")])
        assert v.generation == 3
    assert anchor.load(v.store_id) == 3
    _strip_flag(path)
    write_raw(path, "DELETE FROM keystore_state")


def test_read_only_unlock_of_a_pre_record_copy_is_refused_by_the_anchor(
    tmp_path: Path, kind: str, anchor: FileAnchor
) -> None:
    """The anchor holds generation 3; a copy with no state record at all is older."""
    path = tmp_path / "v.vault"
    _downgraded(path, kind, anchor)
    with pytest.raises(RollbackDetected) as info:
        reopen(path, anchor, readonly=True).close()
    assert info.value.reason == "anchor"


def test_writable_unlock_of_a_pre_record_copy_is_refused_and_writes_nothing(
    tmp_path: Path, kind: str, anchor: FileAnchor
) -> None:
    """The refusal comes before the adoption: no record and no header flag appear."""
    path = tmp_path / "v.vault"
    _downgraded(path, kind, anchor)
    with pytest.raises(RollbackDetected) as info:
        reopen(path, anchor).close()
    assert info.value.reason == "anchor"
    assert not _flagged(path)
    assert raw_scalar(path, "SELECT count(*) FROM keystore_state") == 0
