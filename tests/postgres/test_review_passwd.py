"""``passwd --rekey`` of a raw-key vault in PostgreSQL is one fenced transaction: when
the re-encryption fails, the old key still opens the vault."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keystore import Change, IntegrityError, PostgresDatabase, PostgresVault, WrongPassphrase
from keystore.cli import PASSPHRASE_ENV, main


def _run(monkeypatch: pytest.MonkeyPatch, *args: str | Path) -> int:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    try:
        return main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)


def test_failed_rekey_leaves_the_old_key_in_place(
    monkeypatch: pytest.MonkeyPatch, pg_dsn: str, pg_schema: str, pg_db: PostgresDatabase,
    tmp_path: Path,
) -> None:
    """A damaged row fails the re-encryption: the command fails, the vault still opens
    with the old key and not with the new one."""
    import psycopg

    old, new = os.urandom(32), os.urandom(32)
    old_file, new_file = tmp_path / "old.key", tmp_path / "new.key"
    old_file.write_text(old.hex() + "\n")
    new_file.write_text(new.hex() + "\n")
    old_file.chmod(0o600)
    new_file.chmod(0o600)
    with PostgresVault.create_with_key(pg_db, old, name="raw") as v:
        v.apply([Change("c", b"k%d" % i, b"value %d" % i) for i in range(3)])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            f"UPDATE {pg_schema}.rows SET value = overlay(value placing '\\x00000000'::bytea"
            " from 20) WHERE key_hash = (SELECT key_hash FROM "
            f"{pg_schema}.rows ORDER BY key_hash LIMIT 1)"
        )
    code = _run(monkeypatch, "passwd", "raw", "--dsn", pg_dsn, "--schema", pg_schema,
                "--raw-key-file", old_file, "--new-raw-key-file", new_file, "--rekey")
    assert code != 0
    with PostgresVault.open(pg_db, name="raw", readonly=True) as v:
        with pytest.raises(WrongPassphrase):
            v.unlock_with_key(new)
        v.unlock_with_key(old)
        with pytest.raises(IntegrityError):
            v.open_rows()
