"""Helpers for the hardening tests: another local user, a shared folder, kills at each step.

The cross-user tests run as root (as in CI) and switch a forked child to the
unprivileged uid 65534 (``nobody``) with ``os.setuid``: that child plays the other
user sharing the folder.  Without root they skip with a reason.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keystore import safefile

NOBODY = 65534

requires_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="acting as another user (os.setuid to nobody) needs root"
)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder every user can list and traverse (0755), as a home or project folder."""
    path = Path(tempfile.mkdtemp(prefix="mlks-shared-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def writable_shared_dir() -> Iterator[Path]:
    """A folder every user can write (sticky, like /tmp): the planting attacker's ground."""
    path = Path(tempfile.mkdtemp(prefix="mlks-open-", dir="/tmp"))
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _become_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def run_as_nobody(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child switched to uid/gid 65534; return its (pickled) result."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            _become_nobody()
            data = pickle.dumps(("ok", fn()))
        except BaseException as exc:  # reported to the parent
            data = pickle.dumps(("error", repr(exc)))
        with os.fdopen(write_end, "wb") as out:
            out.write(data)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as inp:
        data = inp.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    assert kind == "ok", value
    return value


def scan_opens(folder: Path) -> list[str]:
    """Every file under ``folder`` the calling user can open for reading (names)."""
    opened: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return opened
    for entry in entries:
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                opened += scan_opens(path)
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            continue
        # An open descriptor is enough to lose: it follows the file wherever it goes.
        os.close(fd)
        opened.append(str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path))
    return opened


def readable_by_nobody(folder: Path) -> list[str]:
    """The files under ``folder`` that another user (nobody) can open."""
    return list(run_as_nobody(lambda: scan_opens(folder)))


def loose_modes(folder: Path) -> list[str]:
    """Files or directories under ``folder`` with any group/other permission bit."""
    found = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                continue
            if stat.S_IMODE(st.st_mode) & 0o077:
                found.append(f"{p.relative_to(folder)} {stat.S_IMODE(st.st_mode):04o}")
    return found


@contextlib.contextmanager
def nobody_poller(folder: Path) -> Iterator[list[str]]:
    """Another user polling ``folder`` as fast as it can while the block runs.

    Yields a list that, after the block, holds every file the poller managed to open
    (each name once) — the 291-of-292 attack of an unprivileged local user.
    """
    stop_r, stop_w = os.pipe()
    out_r, out_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(stop_w)
        os.close(out_r)
        os.close(ready_r)
        seen: set[str] = set()
        scans = 0
        try:
            _become_nobody()
            os.set_blocking(stop_r, False)
            os.write(ready_w, b"r")
            while True:
                seen.update(scan_opens(folder))
                scans += 1
                try:
                    os.read(stop_r, 1)  # EOF once the parent closes its end
                except BlockingIOError:
                    continue
                break
        finally:
            with os.fdopen(out_w, "wb") as out:
                out.write(pickle.dumps((sorted(seen), scans)))
            os._exit(0)
    os.close(stop_r)
    os.close(out_w)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"r"
    os.close(ready_r)
    result: list[str] = []
    try:
        yield result
    finally:
        os.close(stop_w)
        with os.fdopen(out_r, "rb") as inp:
            seen_names, scans = pickle.loads(inp.read())
        os.waitpid(pid, 0)
        assert scans > 0
        result.extend(seen_names)


def killed_at_each_step(op: Callable[[], None], check: Callable[[int], None],
                        *, limit: int = 40) -> int:
    """Run ``op`` in a child killed (SIGKILL) at its k-th file-creation step, for k = 0, 1, …

    After each kill, ``check(k)`` inspects what was left.  Stops when ``op`` runs to
    its end without reaching step k; returns how many kills were made.
    """
    for k in range(limit):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 0
            try:
                count = 0

                def hook(_name: str, k: int = k) -> None:
                    nonlocal count
                    if count == k:
                        os.kill(os.getpid(), signal.SIGKILL)
                    count += 1

                safefile._step_hook = hook
                op()
            except BaseException:  # reported by the exit code
                code = 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            assert os.WTERMSIG(status) == signal.SIGKILL
            check(k)
            continue
        assert os.WEXITSTATUS(status) == 0, f"the operation failed in the child (step {k})"
        check(k)
        return k
    raise AssertionError(f"the operation still had steps after {limit} kills")
