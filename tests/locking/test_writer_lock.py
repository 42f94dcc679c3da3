"""One writer per vault, across processes and within one; readers never wait on it.

A second writer gets VaultBusy at once (or after ``timeout=``); the lock goes away
with ``close()`` or with the process, even on ``kill -9``; and SQLite's own
"database is locked" never reaches the caller raw.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keystore import UnsafeFile, Vault, VaultBusy
from tests.conftest import FAST_KDF, PASSPHRASE
from tests.sqlcipher.helpers import open_raw, page_key_of

REPO = Path(__file__).resolve().parents[2]
HOLDER = textwrap.dedent("""
    import sys
    from keystore import Vault
    v = Vault.open(sys.argv[1])
    v.unlock(sys.argv[2])
    v.put("groups", b"from-child", b"written by the holder")
    print("held", flush=True)
    sys.stdin.readline()  # hold until killed
""")


@pytest.fixture(params=["plain", "sqlcipher"])
def made(request: pytest.FixtureRequest, vault_path: Path) -> Path:
    """A closed vault of each kind, holding one row."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF,
                      sqlcipher=request.param == "sqlcipher") as v:
        v.put("groups", b"g", b"x")
    return vault_path


@pytest.fixture
def holder(made: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that has the vault open for writing."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(made), PASSPHRASE],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "held"
    try:
        yield child
    finally:
        child.kill()
        child.communicate(timeout=30)


def test_second_process_gets_busy_with_pid(made: Path, holder: subprocess.Popen[str]) -> None:
    """While another process writes, opening for writing raises VaultBusy naming its pid."""
    with pytest.raises(VaultBusy) as info:
        Vault.open(made)
    assert info.value.holder_pid == holder.pid
    assert str(holder.pid) in str(info.value)


def test_kill_9_releases_the_lock(made: Path, holder: subprocess.Popen[str]) -> None:
    """After the holder is killed with SIGKILL, the next writer opens and sees its commit."""
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=30)
    with Vault.open(made) as v:
        v.unlock(PASSPHRASE)
        assert v.get("groups", b"from-child") == b"written by the holder"
        v.put("groups", b"after", b"ok")


def test_readonly_opens_beside_another_process(
    made: Path, holder: subprocess.Popen[str]
) -> None:
    """A read-only open succeeds while another process holds the writer lock."""
    with Vault.open(made, readonly=True) as reader:
        reader.unlock(PASSPHRASE)
        assert reader.get("groups", b"from-child") == b"written by the holder"


def test_second_vault_object_in_same_process(made: Path) -> None:
    """A second Vault object in the same process is a second writer: VaultBusy."""
    with Vault.open(made):
        with pytest.raises(VaultBusy) as info:
            Vault.open(made)
        assert info.value.holder_pid == os.getpid()


def test_close_releases(made: Path) -> None:
    """After close() the next writer opens at once."""
    Vault.open(made).close()
    Vault.open(made).close()


def test_lock_keeps_writer_lock(made: Path) -> None:
    """lock() drops the keys but not the writer lock."""
    with Vault.open(made) as v:
        v.unlock(PASSPHRASE)
        v.lock()
        with pytest.raises(VaultBusy):
            Vault.open(made)


def test_timeout_waits_for_release(made: Path) -> None:
    """With timeout=, a second writer waits and gets the vault once the first closes."""
    first = Vault.open(made)
    releaser = threading.Timer(0.2, first.close)
    releaser.start()
    try:
        with Vault.open(made, timeout=10.0) as second:
            assert first.locked and not second.readonly
    finally:
        releaser.join()


def test_timeout_expires(made: Path) -> None:
    """With timeout=, a writer still held elsewhere raises VaultBusy after waiting."""
    with Vault.open(made):
        start = time.monotonic()
        with pytest.raises(VaultBusy):
            Vault.open(made, timeout=0.2)
        assert time.monotonic() - start >= 0.2


def test_readonly_does_not_block_writer(made: Path) -> None:
    """A read-only vault opened first neither blocks a writer nor misses its commits."""
    with Vault.open(made, readonly=True) as reader:
        reader.unlock(PASSPHRASE)
        assert reader.get("groups", b"g") == b"x"
        with Vault.open(made) as writer:
            writer.unlock(PASSPHRASE)
            writer.put("groups", b"g", b"y")
        assert reader.get("groups", b"g") == b"y"


def _foreign(path: Path, kind_is_sqlcipher: bool) -> sqlite3.Connection:
    if kind_is_sqlcipher:
        return open_raw(path, page_key_of(path, PASSPHRASE))
    return sqlite3.connect(path, isolation_level=None)


def test_foreign_write_lock_becomes_vault_busy(made: Path) -> None:
    """A foreign connection's write lock turns into VaultBusy, and nothing is written."""
    with Vault.open(made, busy_timeout=0.05) as v:
        v.unlock(PASSPHRASE)
        foreign = _foreign(made, v.sqlcipher)
        try:
            foreign.execute("BEGIN IMMEDIATE")
            with pytest.raises(VaultBusy, match="busy"):
                v.put("groups", b"g", b"blocked")
            foreign.execute("ROLLBACK")
        finally:
            foreign.close()
        assert v.get("groups", b"g") == b"x"
        v.put("groups", b"g", b"now")
        assert v.get("groups", b"g") == b"now"


def test_foreign_exclusive_lock_is_busy(made: Path) -> None:
    """Reading past a foreign exclusive lock is VaultBusy, never NotAVault or a raw error."""
    foreign = _foreign(made, made.with_name(made.name + ".header").exists())
    try:
        foreign.execute("PRAGMA locking_mode = EXCLUSIVE")
        foreign.execute("BEGIN EXCLUSIVE")
        with contextlib.ExitStack() as stack, pytest.raises(VaultBusy):
            # A plain vault reads its schema on open; a SQLCipher one on unlock.
            v = stack.enter_context(Vault.open(made, readonly=True, busy_timeout=0.05))
            v.unlock(PASSPHRASE)
    finally:
        foreign.close()


def test_lock_path_unusable_is_refused_by_name(made: Path) -> None:
    """A directory where the lock file belongs raises UnsafeFile naming it, not a raw OSError."""
    lock = made.with_name(made.name + ".lock")
    lock.unlink(missing_ok=True)
    lock.mkdir()
    with pytest.raises(UnsafeFile, match=r"\.lock.*directory") as info:
        Vault.open(made)
    assert info.value.path == str(lock)
