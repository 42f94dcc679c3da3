"""``export --force`` of a vault in PostgreSQL replaces only an earlier export file, not
a vault file that happens to be at OUT."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from keystore import Change, PostgresDatabase, PostgresVault, Vault
from keystore.cli import PASSPHRASE_ENV, ExitCode, main
from tests.postgres.conftest import FAST_KDF, PASSPHRASE


def _run(monkeypatch: pytest.MonkeyPatch, *args: str | Path) -> int:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    try:
        return main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)


def test_export_force_does_not_replace_a_vault_file(
    monkeypatch: pytest.MonkeyPatch, pg_dsn: str, pg_schema: str, pg_db: PostgresDatabase,
    tmp_path: Path,
) -> None:
    """OUT is a vault file: refused (exit 2) and left byte for byte; an earlier export
    at OUT is replaced."""
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="alice") as v:
        v.apply([Change("c", b"k", b"v")])
    other = tmp_path / "other.vault"
    Vault.create(other, PASSPHRASE, kdf=FAST_KDF).close()
    before = hashlib.sha256(other.read_bytes()).hexdigest()
    pw = tmp_path / "pw"
    pw.write_text(PASSPHRASE + "\n")
    pw.chmod(0o600)
    common = ("--dsn", pg_dsn, "--schema", pg_schema, "--passphrase-file", pw,
              "--backup-passphrase-file", pw, "--kdf-profile", "INSECURE_FOR_TESTS_ONLY",
              "--force")
    assert _run(monkeypatch, "export", "alice", other, *common) == ExitCode.USAGE
    assert hashlib.sha256(other.read_bytes()).hexdigest() == before
    out = tmp_path / "alice.export"
    assert _run(monkeypatch, "export", "alice", out, *common) == ExitCode.OK
    assert _run(monkeypatch, "export", "alice", out, *common) == ExitCode.OK
