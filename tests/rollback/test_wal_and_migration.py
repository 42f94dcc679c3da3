"""A dropped WAL tail, vaults from before the state record, export and import."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from keystore import Change, RollbackDetected, Vault
from keystore.anchor import FileAnchor
from keystore.export import export_vault, import_vault
from tests.conftest import FAST_KDF, PASSPHRASE
from tests.fixtures.make_fixtures import PASSPHRASE as V1_PASSPHRASE
from tests.fixtures.make_fixtures import ROWS as V1_ROWS
from tests.fixtures.make_fixtures import VAULT_V1
from tests.keystore.helpers import write_raw
from tests.rollback.conftest import make_vault, reopen

CAT = "openmls/v1/message_secrets"


def _wal_snapshot(path: Path, to: Path, keep: int) -> Path:
    """Copy a vault that is open for writing, keeping only ``keep`` bytes of its WAL."""
    to.mkdir()
    for f in path.parent.iterdir():
        if f.name == path.name or f.name.startswith(path.name + ".header"):
            shutil.copy2(f, to / f.name)
    wal = Path(f"{path}-wal").read_bytes()
    (to / f"{path.name}-wal").write_bytes(wal[:keep])
    return to / path.name


@pytest.mark.parametrize("cut", ["at-commit", "mid-transaction"])
def test_dropped_wal_tail_is_refused_with_an_anchor(
    vault_path: Path, kind: str, tmp_path: Path, anchor: FileAnchor, cut: str
) -> None:
    """Losing the WAL's last transactions rolls the whole vault back: the anchor sees it.

    Without an anchor the result is an older, consistent vault (the rows match their
    record): it opens, and no row-level check can fire.
    """
    make_vault(vault_path, kind).close()
    with reopen(vault_path, anchor) as v:
        for i in range(3):
            v.put(CAT, b"k%d" % i, b"epoch 1")
        wal_at_commit = Path(f"{vault_path}-wal").stat().st_size
        v.put(CAT, b"k0", b"epoch 2")
        v.delete(CAT, b"k1")
        wal_now = Path(f"{vault_path}-wal").stat().st_size
        assert wal_now > wal_at_commit, "the test needs the later commits still in the WAL"
        keep = wal_at_commit if cut == "at-commit" else (wal_at_commit + wal_now) // 2
        torn = _wal_snapshot(vault_path, tmp_path / "torn", keep)
        assert v.generation == 5
    with pytest.raises(RollbackDetected) as info:
        reopen(torn, anchor)
    assert info.value.reason == "anchor"
    assert info.value.expected_generation == 5
    with reopen(torn) as v:  # no anchor: an older but consistent vault, no false alarm
        assert v.generation in (3, 4)
        rows = v.open_rows()[CAT]
        assert rows[b"k0"] == (b"epoch 1" if v.generation == 3 else b"epoch 2")


def _v1_copy(tmp_path: Path) -> Path:
    path = tmp_path / "old.vault"
    shutil.copyfile(VAULT_V1, path)
    return path


def test_a_migrated_vault_gets_its_record_at_the_first_writable_unlock(tmp_path: Path) -> None:
    """Schema 4 adds the table; the first writable unlock computes the digest once."""
    path = _v1_copy(tmp_path)
    with Vault.open(path, auto_migrate=True) as v:
        v.unlock(V1_PASSPHRASE)
        assert v.generation == 0
        assert sum(len(m) for m in v.open_rows().values()) == len(V1_ROWS)
        assert v.verify().ok
        v.put(CAT, b"new", b"row")
        assert v.generation == 1
    conn = sqlite3.connect(path)
    victim = conn.execute("SELECT key_hash FROM keystore_rows LIMIT 1").fetchone()[0]
    conn.execute("DELETE FROM keystore_rows WHERE key_hash = ?", (victim,))
    conn.commit()
    conn.close()
    with Vault.open(path) as v:
        v.unlock(V1_PASSPHRASE)
        with pytest.raises(RollbackDetected):
            v.open_rows()


def test_read_only_unlock_before_the_first_writable_one_checks_nothing(tmp_path: Path) -> None:
    """Until a writable unlock adopts it, a migrated vault has no record to check."""
    path = _v1_copy(tmp_path)
    Vault.open(path, auto_migrate=True).close()
    with Vault.open(path, readonly=True) as v:
        v.unlock(V1_PASSPHRASE)
        assert v.generation is None
        assert sum(len(m) for m in v.open_rows().values()) == len(V1_ROWS)


def test_pretending_to_predate_the_record_is_refused(tmp_path: Path) -> None:
    """Dropping the record and the schema step is caught: the header flag says it existed."""
    path = _v1_copy(tmp_path)
    with Vault.open(path, auto_migrate=True) as v:
        v.unlock(V1_PASSPHRASE)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TABLE keystore_state")
    conn.execute("DELETE FROM keystore_migrations WHERE version = 4")
    conn.execute("PRAGMA user_version = 3")
    conn.close()
    with Vault.open(path, auto_migrate=True) as v, pytest.raises(RollbackDetected) as info:
        v.unlock(V1_PASSPHRASE)
    assert info.value.reason == "record"


def test_export_refuses_a_rolled_back_vault_and_import_starts_a_fresh_record(
    vault_path: Path, kind: str, tmp_path: Path
) -> None:
    """export checks the state like a load; the imported vault keeps a record of its own."""
    with make_vault(vault_path, kind) as v:
        v.apply([Change(CAT, b"k%d" % i, b"v") for i in range(4)])
        export_vault(v, tmp_path / "good.mlks", "backup passphrase", kdf=FAST_KDF)
        key_hash = v._unlocked().key_hash(CAT, b"k2")
    imported = tmp_path / "imported.vault"
    import_vault(tmp_path / "good.mlks", imported, "backup passphrase", PASSPHRASE,
                 kdf=FAST_KDF)
    with reopen(imported) as v:
        assert v.generation is not None
        assert len(v.open_rows()[CAT]) == 4
    write_raw(vault_path, "DELETE FROM keystore_rows WHERE key_hash = ?", (key_hash,))
    with reopen(vault_path) as v, pytest.raises(RollbackDetected):
        export_vault(v, tmp_path / "bad.mlks", "backup passphrase", kdf=FAST_KDF)
    assert not (tmp_path / "bad.mlks").exists()


def test_convert_refuses_a_rolled_back_vault(vault_path: Path, tmp_path: Path) -> None:
    """`convert` reads through a checked snapshot: a vault with a deleted row is not
    copied into a new vault with a fresh record (which would hide the deletion)."""
    import os

    from keystore.cli import main
    from keystore.cli_common import ExitCode

    with make_vault(vault_path, "plain") as v:
        v.apply([Change(CAT, b"k%d" % i, b"v") for i in range(3)])
        key_hash = v._unlocked().key_hash(CAT, b"k1")
    write_raw(vault_path, "DELETE FROM keystore_rows WHERE key_hash = ?", (key_hash,))
    pwfile = tmp_path / "pw.txt"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, PASSPHRASE.encode() + b"\n")
    os.close(fd)
    dest = tmp_path / "converted.vault"
    code = main(["convert", str(vault_path), str(dest), "--passphrase-file", str(pwfile)])
    assert code == ExitCode.FAILURE
    assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if ".converting" in p.name]
