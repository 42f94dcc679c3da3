"""The writer lock and a Vault across fork.

``flock`` belongs to the open file description, which a forked child shares: before
the fix a child that closed its inherited Vault released the parent's lock (so a
second writer got in), and a killed writer's child kept the vault locked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from keystore import Vault, VaultBusy, VaultClosed
from keystore.lockfile import WriterLock
from tests.conftest import FAST_KDF, PASSPHRASE

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def made(vault_path: Path) -> Path:
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        v.put("groups", b"g", b"x")
    return vault_path


def _in_child(fn: object) -> int:
    """Run ``fn()`` in a forked child; return its exit code (0: no exception)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            fn()  # type: ignore[operator]
        except BaseException:  # reported by the exit code
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status)


def _try_open_in_other_process(path: Path) -> str:
    script = textwrap.dedent("""
        import sys
        from keystore import Vault, VaultBusy
        try:
            Vault.open(sys.argv[1]).close()
            print("opened")
        except VaultBusy as exc:
            print("busy", exc.holder_pid)
    """)
    out = subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def test_a_child_closing_its_inherited_vault_keeps_the_parents_lock(made: Path) -> None:
    """After a forked child closes (and drops) its copy, a second writer is still refused."""
    with Vault.open(made) as v:
        v.unlock(PASSPHRASE)

        def child() -> None:
            v.close()

        assert _in_child(child) == 0
        assert _try_open_in_other_process(made) == f"busy {os.getpid()}"
        v.put("groups", b"after-fork", b"parent still writes")  # and the parent still works


def test_a_child_exiting_keeps_the_parents_lock(made: Path) -> None:
    """A child that simply exits (descriptors closed by the kernel) changes nothing."""
    with Vault.open(made):
        assert _in_child(lambda: None) == 0
        with pytest.raises(VaultBusy):
            Vault.open(made)


def test_a_vault_used_in_a_forked_child_raises_a_clear_error(made: Path) -> None:
    """Using an inherited Vault in a child raises VaultClosed saying why (fork)."""
    read_end, write_end = os.pipe()
    with Vault.open(made) as v:
        v.unlock(PASSPHRASE)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read_end)
            try:
                v.get("groups", b"g")
                msg = b"no error"
            except VaultClosed as exc:
                msg = str(exc).encode()
            except BaseException as exc:  # any other error: reported
                msg = repr(exc).encode()
            os.write(write_end, msg)
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as inp:
            message = inp.read().decode()
        os.waitpid(pid, 0)
        assert "fork" in message and str(os.getpid()) in message
        assert v.get("groups", b"g") == b"x"


def test_a_killed_writers_child_does_not_keep_the_lock(made: Path) -> None:
    """Writer forks a long-lived child, then is killed: the vault opens (the old code
    said VaultBusy naming the dead writer)."""
    script = textwrap.dedent("""
        import os, sys, time
        from keystore import Vault
        v = Vault.open(sys.argv[1])
        child = os.fork()
        if child == 0:
            time.sleep(120)
            os._exit(0)
        print(child, flush=True)
        time.sleep(120)
    """)
    writer = subprocess.Popen([sys.executable, "-c", script, str(made)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    grandchild = int(writer.stdout.readline())
    try:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        os.kill(grandchild, 0)  # the child is alive, holding its inherited descriptors
        deadline = time.monotonic() + 10
        while True:
            try:
                Vault.open(made).close()
                break
            except VaultBusy:
                assert time.monotonic() < deadline, "the forked child kept the lock"
                time.sleep(0.05)
    finally:
        os.kill(grandchild, signal.SIGKILL)


def test_release_in_a_child_does_not_unlock_the_parent(made: Path) -> None:
    """WriterLock.release() in a forked child never unlocks the parent's lock."""
    lock = WriterLock.acquire(made)
    try:
        assert _in_child(lock.release) == 0
        with pytest.raises(VaultBusy):
            WriterLock.acquire(made)
        assert lock.held
    finally:
        lock.release()
    WriterLock.acquire(made).release()
