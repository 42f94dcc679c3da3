"""The copy made before migrating: complete under its final name, or absent."""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
from pathlib import Path

from keystore import Vault, migrations
from keystore.cli import main
from tests.fixtures.make_fixtures import PASSPHRASE, ROWS, make_vault_v1
from tests.migrations.conftest import connect, digest, row_blobs


def _big_v1_vault(path: Path) -> None:
    # Big enough that the backup takes many page writes.
    extra = [("bulk", i.to_bytes(4, "big"), os.urandom(200)) for i in range(4000)]
    make_vault_v1(path, (*ROWS, *extra))


def _migrate_with_file_size_limit(vault: Path, *, die: bool) -> int:
    """Run ``migrate`` in a child whose writes fail past half the vault's size.

    With ``die`` the child is killed by SIGXFSZ at that write (as by kill -9 in the
    middle of the copy); without, the write fails with EFBIG, as on a full disk.
    Returns the wait status.
    """
    limit = vault.stat().st_size // 2
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL if die else signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            code = main(["migrate", str(vault)])
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]


def _assert_untouched_then_migrates(vault: Path, before: str) -> None:
    assert not list(vault.parent.glob("*.bak"))
    assert digest(vault) == before
    # A new attempt makes a complete copy under the first name and migrates.
    assert main(["migrate", str(vault)]) == 0
    conn = connect(vault.parent / f"{vault.name}.v1.bak")
    assert migrations.schema_version(conn) == 1
    assert len(row_blobs(conn)) == len(ROWS) + 4000
    conn.close()
    with Vault.open(vault) as v:
        v.unlock(PASSPHRASE)
        assert v.verify().ok


def test_backup_killed_half_way_leaves_no_file_named_as_a_backup(tmp_path: Path) -> None:
    """migrate killed in the middle of the copy: no *.bak, vault as it was, a re-run works."""
    vault = tmp_path / "big.vault"
    _big_v1_vault(vault)
    before = digest(vault)
    status = _migrate_with_file_size_limit(vault, die=True)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXFSZ
    _assert_untouched_then_migrates(vault, before)


def test_backup_failing_half_way_is_an_io_error_and_leaves_nothing(tmp_path: Path) -> None:
    """A copy that cannot be completed (disk full) stops migrate with exit 8 before any step."""
    vault = tmp_path / "big.vault"
    _big_v1_vault(vault)
    before = digest(vault)
    status = _migrate_with_file_size_limit(vault, die=False)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 8
    _assert_untouched_then_migrates(vault, before)


def test_backup_is_a_consistent_copy(tmp_path: Path) -> None:
    """The backup holds exactly the rows of the old version, byte for byte."""
    vault = tmp_path / "v1.vault"
    make_vault_v1(vault)
    original = row_blobs(connect(vault))
    assert main(["migrate", str(vault)]) == 0
    conn = sqlite3.connect(tmp_path / "v1.vault.v1.bak")
    assert migrations.schema_version(conn) == 1
    assert row_blobs(conn) == original
