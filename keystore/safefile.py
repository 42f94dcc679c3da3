"""Files the package creates or trusts, handled so that no other user gets a byte in.

A vault often lives in a folder other users can list, and sometimes in one they can
write.  Three rules follow, and every file the package makes goes through here:

* **Created private.** ``O_CREAT | O_EXCL | O_NOFOLLOW``, mode ``0600`` from the
  first byte (then ``fchmod`` to exactly ``0600``, whatever the umask), under a
  random name, and checked with ``fstat`` (a regular file, ours, the inode the
  name points to) before a byte of secret goes in.
* **SQLite builds inside a private folder.** SQLite opens its ``-wal``,
  ``-shm`` and ``-journal`` files by name, without ``O_EXCL``: in a shared folder
  another user who sees the temporary name could plant them first.  So a new
  database (a vault, a backup, an import) is built in a fresh ``0700`` directory
  beside its final name, where nobody else can create anything, and linked into
  place when complete.
* **Companions are checked before use.** Before SQLite is pointed at a vault its
  ``-wal``, ``-shm``, ``.lock`` and ``.header`` files must be regular files,
  single-linked, owned by the vault's owner (or by us, or root) and not writable
  by group or others, or the open is refused with :class:`UnsafeFile` naming the
  file.

:func:`read_secret_file` applies the same care to passphrase and key files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from keystore.errors import InsecurePermissionsWarning, UnsafeFile, VaultIOError

__all__ = [
    "MAX_SECRET_FILE_BYTES",
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "check_companions",
    "check_folder",
    "create_private_file",
    "private_directory",
    "read_regular_file",
    "read_secret_file",
    "remove_private_directory",
    "remove_stale_temporaries",
    "temporary_name",
    "verify_same_file",
]

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
#: A passphrase or key file is a line of text; anything bigger is not one.
MAX_SECRET_FILE_BYTES = 64 * 1024
#: The suffixes of the package's temporaries (see :func:`temporary_name`).
TEMPORARY_KINDS = ("creating", "partial", "importing", "exporting", "tmp")
_TEMP_RE = re.compile(
    r"\.(?P<base>.+)\.(?P<pid>[0-9]+)\.[0-9a-f]{16}\.(?P<kind>" + "|".join(TEMPORARY_KINDS) + r")"
)
#: Test seam for the kill -9 campaign: called with the name of each step of a file
#: creation ("file-created", "dir-created", "linked", ...).  ``None`` in production.
_step_hook: Callable[[str], None] | None = None


def step(name: str) -> None:
    """Mark a point where a crash must leave nothing readable by others (test seam)."""
    if _step_hook is not None:
        _step_hook(name)


def temporary_name(final: Path, kind: str) -> Path:
    """A fresh, unguessable temporary name beside ``final``: ``.<name>.<pid>.<64 bits>.<kind>``.

    The pid lets :func:`remove_stale_temporaries` tell a crashed creator's leftovers
    from a live one's.
    """
    if kind not in TEMPORARY_KINDS:
        raise ValueError(f"unknown temporary kind {kind!r}")
    return final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(8)}.{kind}")


def _unsafe(path: Path, why: str) -> UnsafeFile:
    return UnsafeFile(f"refusing to use {path}: {why}", path=str(path))


def _trusted_owners(owner: int | None) -> set[int]:
    # Root can read everything anyway; our own files are not someone else's plant.
    uids = {os.geteuid(), 0}
    if owner is not None:
        uids.add(owner)
    return uids


def create_private_file(path: Path) -> tuple[int, os.stat_result]:
    """Create ``path`` new, ``0600``, and return its open descriptor and ``fstat``.

    Raises:
        FileExistsError: something (a file, a symlink, anything) is already there.
        UnsafeFile: the descriptor is not a regular file of ours (cannot happen on a
            sane kernel; checked because a secret is about to go in).
    """
    fd = os.open(
        path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        PRIVATE_FILE_MODE,
    )
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # exactly 0600, even under umask 0o277
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise _unsafe(path, "the file just created is not a regular file of ours")
        if stat.S_IMODE(st.st_mode) != PRIVATE_FILE_MODE:
            raise _unsafe(path, "the file just created is not owner-only")
        lst = os.lstat(path)
        if (lst.st_dev, lst.st_ino) != (st.st_dev, st.st_ino):
            raise _unsafe(path, "the name no longer points to the file just created")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def verify_same_file(path: Path, expected: os.stat_result) -> None:
    """Check that ``path`` (not followed) is still the regular file ``expected`` describes.

    Raises:
        UnsafeFile: it is gone, a symlink, or another file.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise _unsafe(path, "the file created here has disappeared") from None
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (
        expected.st_dev, expected.st_ino
    ):
        raise _unsafe(path, "it is not the file that was created there")


def private_directory(final: Path, kind: str) -> Path:
    """Create a fresh ``0700`` directory beside ``final`` to build it in; return its path.

    Raises:
        UnsafeFile: the directory created is not ours and private (checked through
            a descriptor, so a swap after ``mkdir`` is caught).
        OSError: the folder is not writable, or the disk is full.
    """
    path = temporary_name(final, kind)
    os.mkdir(path, PRIVATE_DIR_MODE)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, PRIVATE_DIR_MODE)
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise _unsafe(path, "the directory just created is not ours")
    finally:
        os.close(fd)
    step("dir-created")
    return path


def remove_private_directory(path: Path) -> None:
    """Remove a directory made by :func:`private_directory` and the files in it.

    Entries are unlinked through a descriptor of the directory, never by a path
    that could be redirected, and symlinks are removed, never followed.  Missing
    is fine; a sub-directory (which the package never makes there) is left alone.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError:
        return  # not a directory we can open safely: not ours to delete
    try:
        for name in os.listdir(fd):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Remove the temporaries a crashed creator left beside ``final``; return them.

    Only names of the package's own pattern for ``final``, owned by us, whose
    creating process is gone; files are unlinked (a symlink is removed, not
    followed), private directories emptied and removed.  Never touches the vault
    itself or anything that is not ours.
    """
    removed: list[Path] = []
    try:
        names = os.listdir(final.parent)
    except OSError:
        return removed
    euid = os.geteuid()
    for name in names:
        match = _TEMP_RE.fullmatch(name)
        # The vault's own temporaries, and those of the files named after it
        # (``<vault>.<label>.bak``, ``<vault>.header``).
        if match is None or not (
            match["base"] == final.name or match["base"].startswith(final.name + ".")
        ):
            continue
        if _alive(int(match["pid"])):
            continue
        path = final.parent / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if st.st_uid != euid:
            continue
        if stat.S_ISDIR(st.st_mode):
            remove_private_directory(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        removed.append(path)
    return removed


def check_companions(paths: Iterable[Path], owner: int | None) -> None:
    """Refuse companion files that another user could have planted or can write.

    Each of ``paths`` must be absent, or a regular file with one link, owned by
    ``owner`` (the vault's owner), by us or by root, and not writable by group or
    others.  Checked with ``lstat``: a symlink is refused, never followed.

    Raises:
        UnsafeFile: naming the first offending file and why.
    """
    trusted = _trusted_owners(owner)
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise _unsafe(path, f"it cannot be examined ({exc.strerror})") from None
        _check_stat(path, st, trusted)


def _check_stat(path: Path, st: os.stat_result, trusted: set[int]) -> None:
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        raise _unsafe(path, "it is a symbolic link")
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else (
            "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        )
        raise _unsafe(path, f"it is {kind}")
    if st.st_uid not in trusted:
        raise _unsafe(path, f"it is owned by another user (uid {st.st_uid})")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise _unsafe(path, "it is writable by group or others")
    if st.st_nlink != 1:
        raise _unsafe(path, "it has other hard links (it may be another file in disguise)")


def check_fd(fd: int, path: Path, owner: int | None) -> os.stat_result:
    """:func:`check_companions` for a file already opened (``fstat``); returns its stat."""
    st = os.fstat(fd)
    _check_stat(path, st, _trusted_owners(owner))
    return st


def check_folder(folder: Path) -> None:
    """Warn (:class:`InsecurePermissionsWarning`) when ``folder`` is writable by others.

    Another user who can write the folder can plant companion files (refused at
    open) or hold the lock file name; they cannot read the vault.
    """
    try:
        st = os.stat(folder)
    except OSError:
        return
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "others" if st.st_mode & stat.S_IWOTH else "its group"
        warnings.warn(
            f"the vault folder {folder} is writable by {who}: they cannot read the vault, "
            "but they can plant files beside it (refused when the vault is opened) or "
            "block it; keep vaults in a folder only you can write",
            InsecurePermissionsWarning,
            stacklevel=_caller_stacklevel(),
        )


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that attributes a warning to the first frame outside this
    package, so that it points at the caller's line (and filters by module work)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(1)
    level = 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) \
            == package:
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def _open_no_block(path: Path, *, follow: bool) -> int:
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    return os.open(path, flags)


def read_regular_file(path: Path, max_bytes: int) -> bytes | None:
    """Read a small file that must be regular, without following a symlink or
    blocking on a FIFO; ``None`` when absent.

    Raises:
        UnsafeFile: a symlink, FIFO, device or directory is there.
        VaultIOError: it cannot be read.
    """
    try:
        fd = _open_no_block(path, follow=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _unsafe(path, "it is a symbolic link") from None
        raise VaultIOError(f"cannot read {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _unsafe(path, "it is not a regular file")
        return _read_at_most(fd, max_bytes + 1)
    finally:
        os.close(fd)


def _read_at_most(fd: int, limit: int) -> bytes:
    parts: list[bytes] = []
    left = limit
    while left > 0:
        part = os.read(fd, min(left, 65536))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def read_secret_file(path: str | os.PathLike[str], what: str = "passphrase") -> bytes:
    """Read a passphrase or key file; warn when someone else can read it.

    The bytes are returned as stored (a trailing newline is the caller's to strip).
    A symlink is followed (keeping secrets in one place is common), but the file
    itself must be regular: a FIFO or device is refused rather than blocked on.

    Warns:
        InsecurePermissionsWarning: the file is readable by group or others, or is
            owned by another user — the secret should be considered exposed.

    Raises:
        UnsafeFile: not a regular file, or larger than :data:`MAX_SECRET_FILE_BYTES`.
        VaultIOError: it cannot be read (missing, no permission).
    """
    p = Path(path)
    try:
        fd = _open_no_block(p, follow=True)
    except OSError as exc:
        raise VaultIOError(f"cannot read the {what} file {p}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _unsafe(p, f"the {what} file is not a regular file")
        if st.st_mode & (stat.S_IRGRP | stat.S_IROTH) or st.st_uid not in _trusted_owners(None):
            warnings.warn(
                f"the {what} file {p} can be read by other users "
                f"(mode {stat.S_IMODE(st.st_mode):04o}, uid {st.st_uid}): treat the secret "
                f"as exposed, and make the file owner-only (chmod 600)",
                InsecurePermissionsWarning,
                stacklevel=2,
            )
        data = _read_at_most(fd, MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise VaultIOError(f"cannot read the {what} file {p}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise _unsafe(p, f"the {what} file is larger than {MAX_SECRET_FILE_BYTES} bytes")
    return data


def fsync_path(path: Path) -> None:
    """``fsync`` a file or directory by name (not following a symlink)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
