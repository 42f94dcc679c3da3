"""Removing a lock file (after a failed import) never lets two writers in."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from keystore import VaultBusy
from keystore.lockfile import WriterLock, lock_path_for


def test_a_waiter_on_a_discarded_lock_file_starts_again_on_the_new_one(tmp_path: Path) -> None:
    """A waiter that opened the lock file before its holder removed it re-opens the
    current name once it gets the flock: afterwards a third writer is still refused."""
    target = tmp_path / "new.vault"
    first = WriterLock.acquire(target)
    assert first.created
    got: list[WriterLock] = []
    waiter = threading.Thread(target=lambda: got.append(WriterLock.acquire(target, timeout=10)))
    waiter.start()
    try:
        while _descriptors_on(lock_path_for(target)) < 2:
            pass  # until the waiter has the same (soon removed) file open too
        first.discard()
        waiter.join(timeout=15)
        assert got, "the waiter never got the lock"
        second = got[0]
        assert lock_path_for(target).exists()
        with pytest.raises(VaultBusy):
            WriterLock.acquire(target)  # the name and the held lock are the same file
        second.release()
    finally:
        for lock in got:
            lock.release()
        waiter.join(timeout=15)


def _descriptors_on(path: Path) -> int:
    """How many descriptors of this process point at ``path`` (Linux ``/proc``)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:
            continue
    return count
