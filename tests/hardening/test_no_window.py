"""Another local user never opens a byte of a vault, a backup, an import or an export.

Not while it is being created, migrated, imported or exported, and not after a
``kill -9`` at any step of those: every file is private from its first byte and
built where nobody else can look.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from keystore import Vault
from keystore import sqlcipher as sqlcipher_layer
from keystore.export import export_vault, import_vault
from tests.conftest import FAST_KDF, PASSPHRASE
from tests.fixtures.make_fixtures import VAULT_V1
from tests.hardening.conftest import (
    killed_at_each_step,
    loose_modes,
    nobody_poller,
    readable_by_nobody,
    requires_root,
)

BACKUP_PASSPHRASE = "backup passphrase for the hardening tests"


def _private_copy(src: Path, dest: Path) -> Path:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(src.read_bytes())
    return dest


def _made_vault(folder: Path, name: str = "src.vault") -> Path:
    path = folder / name
    with Vault.create(path, PASSPHRASE, kdf=FAST_KDF) as v:
        v.put("groups", b"g1", b"group state that must stay private")
    return path


def _export_of(folder: Path) -> Path:
    src = _made_vault(folder, "exported.vault")
    out = folder / "backup.mlksx"
    with Vault.open(src) as v:
        v.unlock(PASSPHRASE)
        export_vault(v, out, BACKUP_PASSPHRASE, kdf=FAST_KDF)
    return out


def _operations(folder: Path) -> dict[str, Callable[[], None]]:
    """Each operation that writes secrets to new files, ready to run in ``folder``."""

    def create() -> None:
        Vault.create(folder / "new.vault", PASSPHRASE, kdf=FAST_KDF).close()

    def create_sqlcipher() -> None:
        Vault.create(folder / "enc.vault", PASSPHRASE, kdf=FAST_KDF, sqlcipher=True).close()

    def migrate() -> None:
        Vault.open(folder / "old.vault", auto_migrate=True).close()

    def export() -> None:
        with Vault.open(folder / "src.vault") as v:
            v.unlock(PASSPHRASE)
            export_vault(v, folder / "out.mlksx", BACKUP_PASSPHRASE, kdf=FAST_KDF)

    def import_() -> None:
        import_vault(folder / "backup.mlksx", folder / "imported.vault", BACKUP_PASSPHRASE,
                     PASSPHRASE, kdf=FAST_KDF)

    ops = {"create": create, "migrate": migrate, "export": export, "import": import_}
    if sqlcipher_layer.available():
        ops["create-sqlcipher"] = create_sqlcipher
    return ops


def _prepare(folder: Path, op: str) -> None:
    """Inputs an operation needs, all private (as the package itself makes them)."""
    if op == "migrate":
        _private_copy(VAULT_V1, folder / "old.vault")
    elif op == "export":
        _made_vault(folder)
    elif op == "import":
        _export_of(folder)


@requires_root
def test_a_polling_user_never_opens_anything(shared_dir: Path) -> None:
    """An unprivileged user scanning the folder non-stop opens no file during create,
    migrate, export and import (the old code lost 291 of 292 creations)."""
    for op in ("migrate", "export", "import"):
        _prepare(shared_dir, op)
    ops = _operations(shared_dir)
    with nobody_poller(shared_dir) as opened:
        for i in range(15):
            Vault.create(shared_dir / f"v{i}.vault", PASSPHRASE, kdf=FAST_KDF).close()
        for name in ("migrate", "export", "import"):
            ops[name]()
    assert opened == []
    assert os.listdir(shared_dir)  # the poller had something to look at


@pytest.mark.parametrize("op", ["create", "create-sqlcipher", "migrate", "export", "import"])
def test_killed_at_each_step_leaves_nothing_readable(shared_dir: Path, op: str) -> None:
    """kill -9 at every step of each operation leaves no file another user can open
    (checked as nobody when root) and no file or folder with group/other bits."""
    ops = _operations(shared_dir)
    if op not in ops:
        pytest.skip("the [sqlcipher] extra is not installed")
    _prepare(shared_dir, op)
    inputs = set(os.listdir(shared_dir))

    def check(step: int) -> None:
        assert loose_modes(shared_dir) == [], f"after a kill at step {step}"
        if os.geteuid() == 0:
            assert readable_by_nobody(shared_dir) == [], f"after a kill at step {step}"
        for name in set(os.listdir(shared_dir)) - inputs:
            target = shared_dir / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()

    kills = killed_at_each_step(ops[op], check)
    assert kills >= 2  # the operation has steps to be killed at


def test_backup_is_private_under_a_permissive_umask(tmp_path: Path) -> None:
    """A migration backup is 0600 even under umask 000 (no chmod afterwards to miss)."""
    path = _private_copy(VAULT_V1, tmp_path / "old.vault")
    previous = os.umask(0)
    try:
        Vault.open(path, auto_migrate=True).close()
    finally:
        os.umask(previous)
    backups = [p for p in tmp_path.iterdir() if p.name.endswith(".bak")]
    assert len(backups) == 1
    assert loose_modes(tmp_path) == []
    conn = sqlite3.connect(f"file:{backups[0]}?mode=ro", uri=True)
    try:  # a complete copy of the version-1 vault
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM keystore_header").fetchone()[0] == 1
    finally:
        conn.close()


def test_a_file_planted_at_the_old_backup_temp_name_receives_nothing(tmp_path: Path) -> None:
    """The backup used to be written to the predictable ``.<vault>.v<N>.bak.<pid>.partial``
    without O_EXCL: an attacker's file there received the whole vault.  Now it stays empty."""
    path = _private_copy(VAULT_V1, tmp_path / "old.vault")
    planted = tmp_path / f".old.vault.v1.bak.{os.getpid()}.partial"
    planted.write_bytes(b"")
    planted.chmod(0o666)
    Vault.open(path, auto_migrate=True).close()
    assert planted.read_bytes() == b""
    assert (tmp_path / "old.vault.v1.bak").exists()
