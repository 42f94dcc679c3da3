"""Generation anchors: where the latest vault generation is kept outside the vault.

A copy of a whole vault taken earlier is, byte for byte, a vault that once was
current: its rows match its own authenticated state record.  Only something that
lives elsewhere, and that whoever restores the old copy cannot also roll back, can
tell it is old.  An *anchor* is that something: a pair of callbacks that store and
return the last generation of a vault (the OS keyring, a server, a TPM monotonic
counter, or :class:`FileAnchor` in a separate directory).

The vault writes the anchor **after** each commit and checks it as ``vault
generation >= anchored generation``, so a crash between the commit and the anchor
write leaves the anchor one write behind, never ahead: the vault still opens, and
the next write or unlock brings the anchor up to date.  The price is that, in that
window, a copy exactly one generation older would also be accepted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import struct
from pathlib import Path
from typing import Protocol, runtime_checkable

from keystore.errors import IntegrityError, VaultIOError

__all__ = ["ANCHOR_FORMAT", "ANCHOR_LEN", "ANCHOR_MAGIC", "FileAnchor", "GenerationAnchor"]

ANCHOR_MAGIC = b"MLKSANCH"
ANCHOR_FORMAT = 1
#: magic (8) || format (1) || store_id (16) || u64 generation (8).
ANCHOR_LEN = 33
_BODY = struct.Struct(">B16sQ")
_U64_MAX = (1 << 64) - 1


@runtime_checkable
class GenerationAnchor(Protocol):
    """Stores and returns the last generation of a vault, outside the vault.

    ``store_id`` names the vault (16 bytes, from its header), so one anchor may
    serve several vaults.  Implementations must make :meth:`store` durable before
    returning, and should never lower a stored generation.
    """

    def load(self, store_id: bytes) -> int | None:
        """The last generation stored for ``store_id``, or ``None`` if none yet."""
        ...

    def store(self, store_id: bytes, generation: int) -> None:
        """Record ``generation`` for ``store_id`` (durably; never lowering it)."""
        ...


class FileAnchor:
    """A built-in anchor: one small file holding one vault's generation.

    Put the file somewhere the vault's copies do not go: another directory that
    backup restores and sync clients leave alone, another disk, a path only this
    application writes.  It protects exactly as well as that location is out of
    an attacker's reach (someone who can put back both the vault and this file can
    roll back both).  The file is created ``0600`` from its first byte, never
    follows a symlink, and is replaced atomically (temporary file, ``fsync``,
    rename, ``fsync`` of the directory).

    Raises (from :meth:`load` and :meth:`store`):
        IntegrityError: the file is malformed or belongs to another vault.
        VaultIOError: it cannot be read or written.
    """

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FileAnchor({str(self.path)!r})"

    def load(self, store_id: bytes) -> int | None:
        """The generation in the file, or ``None`` when the file does not exist."""
        # O_NONBLOCK: a FIFO planted here must not hang the open of the vault.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise VaultIOError(f"cannot read anchor {self.path}: {exc.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise VaultIOError(f"cannot read anchor {self.path}: not a regular file")
            data = os.read(fd, ANCHOR_LEN + 1)
        except OSError as exc:
            raise VaultIOError(f"cannot read anchor {self.path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        if len(data) != ANCHOR_LEN or not data.startswith(ANCHOR_MAGIC):
            raise IntegrityError(f"anchor {self.path} is not an anchor file or is damaged")
        fmt, stored_id, generation = _BODY.unpack_from(data, len(ANCHOR_MAGIC))
        if fmt != ANCHOR_FORMAT:
            raise IntegrityError(f"anchor {self.path} has unknown format {fmt}")
        if stored_id != store_id:
            raise IntegrityError(
                f"anchor {self.path} belongs to another vault (store id "
                f"{stored_id.hex()}, not {store_id.hex()})"
            )
        return int(generation)

    def store(self, store_id: bytes, generation: int) -> None:
        """Write ``generation`` unless the file already holds a higher one."""
        if len(store_id) != 16:
            raise ValueError("store_id must be 16 bytes")
        if not 0 <= generation <= _U64_MAX:
            raise ValueError("generation must fit in 64 bits")
        current = self.load(store_id)
        if current is not None and current >= generation:
            return
        data = ANCHOR_MAGIC + _BODY.pack(ANCHOR_FORMAT, store_id, generation)
        directory = self.path.parent
        tmp = directory / f".{self.path.name}.{secrets.token_hex(8)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600)
        except OSError as exc:
            raise VaultIOError(f"cannot write anchor {self.path}: {exc.strerror}") from None
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise VaultIOError(f"cannot write anchor {self.path}: {exc.strerror}") from None
