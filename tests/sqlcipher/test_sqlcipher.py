"""What the SQLCipher layer adds: an opaque file, a header file, and their checks."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from keystore import (
    IntegrityError,
    NotAVault,
    Vault,
    VaultBusy,
    VaultLocked,
    WrongPassphrase,
    migrations,
)
from keystore.header import FLAG_SQLCIPHER
from keystore.sidecar import SIDECAR_MAGIC, Sidecar, sidecar_path_for
from tests.conftest import FAST_KDF, PASSPHRASE
from tests.sqlcipher.helpers import open_raw, page_key_of, vault_files

REPO = Path(__file__).resolve().parents[2]
CATEGORIES = ("group_epoch_secrets", "key_package_private", "psk_store_entries")


def _create(path: Path) -> Vault:
    return Vault.create(path, PASSPHRASE, kdf=FAST_KDF, sqlcipher=True)


def _digest(paths: list[Path]) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )


def test_file_is_opaque(vault_path: Path) -> None:
    """Neither the database, its WAL nor the header file shows SQLite magic or a category name."""
    v = _create(vault_path)
    try:
        for category in CATEGORIES:
            v.put(category, b"k", b"v" * 100)
        files = vault_files(vault_path)
        assert Path(f"{vault_path}-wal") in files  # checked while the WAL holds the rows
        assert not vault_path.read_bytes().startswith(b"SQLite format 3")
        for f in files:
            data = f.read_bytes()
            for name in (*CATEGORIES, "keystore_rows", "keystore_header"):
                assert name.encode() not in data, (f.name, name)
    finally:
        v.close()
    data = vault_path.read_bytes()  # after the final checkpoint too
    assert not any(name.encode() in data for name in CATEGORIES)


def test_header_file_has_magic(vault_path: Path) -> None:
    """The header file starts with its magic and mirrors the schema version."""
    _create(vault_path).close()
    side = sidecar_path_for(vault_path)
    assert side.read_bytes().startswith(SIDECAR_MAGIC)
    parsed = Sidecar.read(vault_path)
    assert parsed is not None and parsed.schema_version == migrations.LATEST_VERSION
    assert parsed.pending is None and parsed.current.sqlcipher


def test_random_file_is_not_a_vault(tmp_path: Path) -> None:
    """A random file with no header file beside it raises NotAVault."""
    path = tmp_path / "random.bin"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(NotAVault, match="header file"):
        Vault.open(path)


def test_missing_header_file(vault_path: Path) -> None:
    """A SQLCipher database whose header file is gone raises NotAVault naming it."""
    _create(vault_path).close()
    sidecar_path_for(vault_path).unlink()
    with pytest.raises(NotAVault, match=r"test\.vault\.header"):
        Vault.open(vault_path)


def test_plain_database_beside_header_file_refused(tmp_path: Path) -> None:
    """Swapping the encrypted database for a plain vault is detected (downgrade)."""
    enc, plain = tmp_path / "enc.vault", tmp_path / "plain.vault"
    _create(enc).close()
    Vault.create(plain, PASSPHRASE, kdf=FAST_KDF).close()
    os.replace(plain, enc)
    with pytest.raises(IntegrityError, match="replaced"):
        Vault.open(enc)


def test_header_file_without_flag_refused(vault_path: Path) -> None:
    """A header file whose header lost the SQLCipher flag is refused (downgrade)."""
    _create(vault_path).close()
    side = sidecar_path_for(vault_path)
    data = bytearray(side.read_bytes())
    flags_at = 8 + 1 + 4 + 1 + 2 + 5  # fixed part, header length, then header byte 5
    assert data[flags_at] & FLAG_SQLCIPHER
    data[flags_at] &= ~FLAG_SQLCIPHER
    side.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="flag"):
        Vault.open(vault_path)


def test_plain_header_claiming_sqlcipher_refused(vault_path: Path) -> None:
    """A plain vault whose header row claims SQLCipher is refused."""
    Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF).close()
    conn = sqlite3.connect(vault_path, isolation_level=None)
    try:
        (blob,) = conn.execute("SELECT header FROM keystore_header").fetchone()
        edited = bytearray(blob)
        edited[5] |= FLAG_SQLCIPHER
        conn.execute("UPDATE keystore_header SET header = ?", (bytes(edited),))
    finally:
        conn.close()
    with pytest.raises(IntegrityError):
        Vault.open(vault_path)


def test_header_from_another_vault_refused(tmp_path: Path) -> None:
    """Another vault's header file (same passphrase) does not open this database."""
    a, b = tmp_path / "a.vault", tmp_path / "b.vault"
    _create(a).close()
    _create(b).close()
    os.replace(sidecar_path_for(b), sidecar_path_for(a))
    with Vault.open(a) as v, pytest.raises(IntegrityError, match="opens the database"):
        v.unlock(PASSPHRASE)


def test_locked_vault_shows_status_not_contents(vault_path: Path) -> None:
    """Locked: kind and schema version are known from the header file; stats need unlock."""
    with _create(vault_path) as v:
        v.put("groups", b"g", b"x")
    with Vault.open(vault_path, readonly=True) as v:
        assert v.sqlcipher and v.schema_version == migrations.LATEST_VERSION
        with pytest.raises(VaultLocked):
            v.stats()
        v.unlock(PASSPHRASE)
        assert v.stats().total_rows == 1


def test_change_passphrase_touches_only_header_file(vault_path: Path) -> None:
    """passwd rewrites the header file alone: the database bytes are unchanged."""
    v = _create(vault_path)
    try:
        v.put("groups", b"g", b"x")
        before = _digest([vault_path, Path(f"{vault_path}-wal")])
        side_before = sidecar_path_for(vault_path).read_bytes()
        v.change_passphrase(PASSPHRASE, "another one")
        assert _digest([vault_path, Path(f"{vault_path}-wal")]) == before
        assert sidecar_path_for(vault_path).read_bytes() != side_before
    finally:
        v.close()


def test_change_passphrase_while_locked(vault_path: Path) -> None:
    """passwd works on a locked SQLCipher vault, without connecting to the database."""
    _create(vault_path).close()
    with Vault.open(vault_path) as v:
        v.change_passphrase(PASSPHRASE, "another one")
        with pytest.raises(WrongPassphrase):
            v.unlock(PASSPHRASE)
        v.unlock("another one")


def test_rekey_replaces_page_key(vault_path: Path) -> None:
    """After rekey the old page key no longer opens the database; the new one does."""
    with _create(vault_path) as v:
        v.put("groups", b"g", b"x")
        old_key = page_key_of(vault_path, PASSPHRASE)
        v.rekey()
    conn = open_raw(vault_path, old_key)
    try:
        with pytest.raises(Exception, match="not a database"):
            conn.execute("SELECT count(*) FROM keystore_rows").fetchone()
    finally:
        conn.close()
    conn = open_raw(vault_path, page_key_of(vault_path, PASSPHRASE))
    try:
        assert conn.execute("SELECT count(*) FROM keystore_rows").fetchone() == (1,)
    finally:
        conn.close()


def test_create_refuses_existing_header_file(vault_path: Path) -> None:
    """create does not overwrite a header file already at <vault>.header."""
    side = sidecar_path_for(vault_path)
    side.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        _create(vault_path)
    assert side.read_bytes() == b"someone else's"
    assert not vault_path.exists()


def test_without_extra_import_works_and_errors_name_it(vault_path: Path) -> None:
    """Without sqlcipher3: keystore imports, status works, create/unlock name the extra."""
    Vault.create(vault_path.with_name("enc.vault"), PASSPHRASE, kdf=FAST_KDF,
                 sqlcipher=True).close()
    result = _run(f"""
        import sys
        sys.modules["sqlcipher3"] = None  # as if the extra were not installed
        from pathlib import Path
        from keystore import Vault, profiles
        from keystore.sqlcipher import SQLCipherUnavailable
        target = Path({str(vault_path)!r})
        try:
            Vault.create(target, "pw", kdf=profiles.INSECURE_FOR_TESTS_ONLY, sqlcipher=True)
        except SQLCipherUnavailable as exc:
            print("create:", exc)
        print("created:", target.exists(), Path(str(target) + ".header").exists())
        with Vault.open(target.with_name("enc.vault")) as v:
            print("status:", v.sqlcipher, v.schema_version)
            try:
                v.unlock({PASSPHRASE!r})
            except SQLCipherUnavailable as exc:
                print("unlock:", exc)
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("create:") and "pip install -e '.[sqlcipher]'" in lines[0]
    assert lines[1] == "created: False False"
    assert lines[2] == f"status: True {migrations.LATEST_VERSION}"
    assert lines[3].startswith("unlock:") and "pip install -e '.[sqlcipher]'" in lines[3]


def test_reader_across_writer_rekey(vault_path: Path) -> None:
    """A reader keyed before the writer's rekey is told to unlock again, and then reads."""
    with _create(vault_path) as writer:
        writer.put("groups", b"g", b"old")
        with Vault.open(vault_path, readonly=True) as reader:
            reader.unlock(PASSPHRASE)
            assert reader.get("groups", b"g") == b"old"
            writer.rekey()
            writer.put("groups", b"g", b"new")
            with pytest.raises(IntegrityError, match="unlock again"):
                reader.get("groups", b"g")
            reader.lock()
            reader.unlock(PASSPHRASE)
            assert reader.get("groups", b"g") == b"new"


def test_blocked_rekey_withdraws_pending_header(vault_path: Path) -> None:
    """A rekey whose transaction cannot run (VaultBusy) leaves no pending header behind."""
    _create(vault_path).close()
    with Vault.open(vault_path, busy_timeout=0.05) as v:
        v.unlock(PASSPHRASE)
        v.put("groups", b"g", b"x")
        foreign = open_raw(vault_path, page_key_of(vault_path, PASSPHRASE))
        try:
            foreign.execute("BEGIN IMMEDIATE")
            with pytest.raises(VaultBusy):
                v.rekey()
        finally:
            foreign.close()
        side = Sidecar.read(vault_path)
        assert side is not None and side.pending is None and side.current.key_generation == 1
        assert v.get("groups", b"g") == b"x"
        v.rekey()
        assert v.get("groups", b"g") == b"x"


def test_unrelated_header_file_beside_plain_vault(vault_path: Path) -> None:
    """A plain vault opens even if some unrelated file is named like a header file."""
    Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF).close()
    sidecar_path_for(vault_path).write_bytes(b"notes of another program")
    with Vault.open(vault_path) as v:
        v.unlock(PASSPHRASE)
        assert not v.sqlcipher


def test_random_header_file_named_in_error(tmp_path: Path) -> None:
    """The NotAVault for a foreign header file names that file."""
    path = tmp_path / "random.bin"
    path.write_bytes(os.urandom(4096))
    sidecar_path_for(path).write_bytes(os.urandom(300))
    with pytest.raises(NotAVault, match=r"random\.bin\.header"):
        Vault.open(path)
