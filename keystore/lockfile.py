"""One writer per vault: an exclusive ``flock`` on a sidecar ``<vault>.lock`` file.

``flock`` locks belong to an open file description, so a second ``Vault`` object in
the same process conflicts just like another process does, and the kernel releases
the lock when the holder dies, even by ``kill -9``.  The lock file is kept once a vault
exists: deleting a lock file while another process waits on it is a classic race,
closed here only for the one case that needs it (:meth:`WriterLock.discard`, where
every waiter re-checks the name after it gets the lock).

The lock file may sit in a folder others can write, so it is opened
``O_NOFOLLOW`` (a symlink there is refused, never followed), created ``O_EXCL``
``0600`` when absent, and otherwise used only if it is a regular, single-linked
file of the vault's owner (or ours), not writable by others, holding nothing but a
pid: a file we did not create is never cut or overwritten unless it is a lock file.

Fork: a forked child inherits the descriptor and with it the lock (``flock``
belongs to the open file description).  So every child closes — never unlocks —
the descriptors of the locks its parent held, as soon as it starts
(``os.register_at_fork``): the parent keeps its lock, the child holds none, and a
killed parent's children cannot keep the vault locked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import time
import weakref
from pathlib import Path

from keystore.errors import UnsafeFile, VaultBusy, VaultIOError
from keystore.safefile import check_fd

__all__ = ["WriterLock", "lock_path_for"]

#: A lock file holds a pid and a newline; anything else there is not ours to cut.
_MAX_LOCK_BYTES = 32
_PID_RE = re.compile(rb"[0-9]*\n?")


def lock_path_for(vault_path: Path) -> Path:
    """The lock file that guards ``vault_path``."""
    return vault_path.with_name(vault_path.name + ".lock")


class WriterLock:
    """An acquired writer lock; :meth:`release` (or process exit) frees it."""

    __slots__ = ("__weakref__", "_fd", "_pid", "created", "path")

    def __init__(self, path: Path, fd: int):
        self.path = path
        #: Whether this acquisition created the lock file (it did not exist).
        self.created = False
        self._fd: int | None = fd
        self._pid = os.getpid()
        _HELD.add(self)

    @classmethod
    def acquire(
        cls, vault_path: Path, timeout: float = 0.0, *, owner: int | None = None
    ) -> WriterLock:
        """Take the lock, waiting up to ``timeout`` seconds.

        Args:
            owner: the uid owning the vault; a lock file of that user (or ours, or
                root's) is trusted.  Default: the vault file's owner, if it exists.

        Raises:
            VaultBusy: another writer holds it (its pid is in the message when known).
            UnsafeFile: the lock file is a symlink, FIFO or other non-regular file,
                another user's, writable by others, or not a lock file; nothing was
                written to it.
            VaultIOError: the lock file cannot be opened (read-only directory, a
                directory in its place); nothing was written.
        """
        path = lock_path_for(vault_path)
        if owner is None:
            with contextlib.suppress(OSError):
                owner = os.stat(vault_path).st_uid
        deadline = time.monotonic() + max(0.0, timeout)
        delay = 0.005
        fd, created = _open_lock_file(path, owner)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if not _still_linked(fd, path):
                    # Its holder removed it (:meth:`discard`) while we waited: this
                    # inode guards nothing any more; start again on the current name.
                    os.close(fd)
                    fd = -1  # closed: the handler below must not close it again
                    fd, created = _open_lock_file(path, owner)
                    continue
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    pid = _read_pid(fd)
                    os.close(fd)
                    holder = f" (held by pid {pid})" if pid else ""
                    raise VaultBusy(
                        f"vault {vault_path} is open for writing elsewhere{holder}",
                        holder_pid=pid,
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
            except BaseException:
                if fd >= 0:
                    os.close(fd)
                raise
        try:
            if not created:
                # Checked again under the lock: the content is a pid, nothing else.
                _check_is_lock_file(fd, path)
            # Write, then cut to length: truncating to 0 first costs milliseconds under
            # load (measured by bench), and a reader sees either the old pid or ours.
            record = f"{os.getpid()}\n".encode()
            os.pwrite(fd, record, 0)
            os.ftruncate(fd, len(record))
        except BaseException:
            os.close(fd)  # closing releases the flock: nobody else holds this description
            raise
        lock = cls(path, fd)
        lock.created = created
        return lock

    def discard(self) -> None:
        """Remove the lock file, then release it: for a lock taken on a path where,
        in the end, no vault was made (a failed import), so nothing is left behind.

        Safe against waiters: :meth:`acquire` checks, once it holds the ``flock``,
        that the name still leads to the inode it locked, and starts again if not.
        Only removes the file this lock holds (checked by inode).
        """
        if self._fd is not None and self._pid == os.getpid() and _still_linked(self._fd, self.path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.release()

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock (false after release or in a forked child)."""
        return self._fd is not None

    def release(self) -> None:
        """Release the lock (idempotent).  In a forked child this does nothing."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            _HELD.discard(self)
            if self._pid == os.getpid():
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _forget_in_child(self) -> None:
        """After ``fork``: close the inherited descriptor, leaving the parent's lock held."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


#: Every lock this process holds, for the fork handler (weak: a dropped lock object
#: must still be garbage-collected).
_HELD: weakref.WeakSet[WriterLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for lock in list(_HELD):
        lock._forget_in_child()
    _HELD.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _open_lock_file(path: Path, owner: int | None) -> tuple[int, bool]:
    """Open (or create, ``0600``) the lock file without following a symlink."""
    base = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    created = False
    try:
        try:
            fd = os.open(path, base | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:
            # O_NONBLOCK: a FIFO planted here must not hang the open.
            fd = os.open(path, base | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(
                f"refusing to use the writer lock file {path}: it is a symbolic link",
                path=str(path),
            ) from None
        if exc.errno in (errno.ENXIO, errno.EISDIR) or isinstance(exc, IsADirectoryError):
            raise UnsafeFile(
                f"refusing to use the writer lock file {path}: it is not a regular file",
                path=str(path),
            ) from None
        raise VaultIOError(
            f"cannot open the writer lock file {path}: {exc.strerror}"
        ) from None
    try:
        if created:
            os.fchmod(fd, 0o600)
        try:
            st = check_fd(fd, path, owner)
        except UnsafeFile as exc:
            raise UnsafeFile(f"writer lock file: {exc}", path=str(path)) from None
        lst = os.lstat(path)
        if (lst.st_dev, lst.st_ino) != (st.st_dev, st.st_ino):
            raise UnsafeFile(
                f"the writer lock file {path} was replaced while being opened", path=str(path)
            )
        if not created:
            _check_is_lock_file(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd, created


def _still_linked(fd: int, path: Path) -> bool:
    """Whether ``path`` (not followed) is still the file open as ``fd``."""
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        return False
    st = os.fstat(fd)
    return (lst.st_dev, lst.st_ino) == (st.st_dev, st.st_ino)


def _check_is_lock_file(fd: int, path: Path) -> None:
    """Refuse to write into a file whose content is not a lock file's (a pid or nothing)."""
    size = os.fstat(fd).st_size
    content = os.pread(fd, _MAX_LOCK_BYTES + 1, 0) if size <= _MAX_LOCK_BYTES else b"x"
    if size > _MAX_LOCK_BYTES or not _PID_RE.fullmatch(content):
        raise UnsafeFile(
            f"refusing to use the writer lock file {path}: it holds something other than "
            "a process id, so it is not a lock file; nothing was written to it",
            path=str(path),
        )


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
