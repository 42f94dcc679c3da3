"""The header file of a SQLCipher vault, ``<vault>.header``.

A SQLCipher database cannot be read before it is keyed, and its key derives from
the secrets wrapped in the vault header, so that header has to live outside the
database: in this small file beside it.  It is replaced atomically (temporary
file, fsync, rename, fsync of the directory), never edited in place.

Byte layout (sidecar format 1, integers big-endian; see ``docs/sqlcipher.md``)::

    0   8  magic           b"MLKSSQLC"
    8   1  sidecar_format  1
    9   4  schema_version  mirror of the database's PRAGMA user_version
   13   1  header_count    1, or 2 while a rekey is in progress
   14      header_count times:
            2  header_len
            n  a vault header (keystore.header), FLAG_SQLCIPHER set

The first header is *current*; the second, when present, is *pending*: the next
key generation, written before a rekey touches the database and folded into
current once the database is fully under the new key.  Both headers are
authenticated by their own wrap (flags included, so a downgrade to "plain"
fails); the schema version is a plain mirror so that ``status`` can show it
without a passphrase, and is rewritten from the database on every writable unlock.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from keystore.errors import IntegrityError, NotAVault, SchemaTooNew, VaultIOError
from keystore.header import Header
from keystore.safefile import create_private_file, read_regular_file, temporary_name

__all__ = ["SIDECAR_FORMAT", "SIDECAR_MAGIC", "Sidecar", "sidecar_path_for"]

SIDECAR_MAGIC = b"MLKSSQLC"
SIDECAR_FORMAT = 1
_FIXED = struct.Struct(">8sBIB")
_LEN = struct.Struct(">H")
_MAX_BYTES = 4096  # a sidecar is ~300 bytes; refuse to slurp a huge stray file


def sidecar_path_for(vault_path: Path) -> Path:
    """The header file that belongs to the SQLCipher vault at ``vault_path``."""
    return vault_path.with_name(vault_path.name + ".header")


@dataclass(frozen=True, slots=True)
class Sidecar:
    """The parsed header file: current header, optional pending one, schema mirror."""

    current: Header
    pending: Header | None
    schema_version: int

    def __post_init__(self) -> None:
        for header in (self.current, self.pending):
            if header is not None and not header.sqlcipher:
                # Only a SQLCipher vault has a header file; a header without the
                # flag here means someone is trying to pass it off as plain.
                raise IntegrityError("vault header file holds a header without the SQLCipher flag")
        pending = self.pending
        if pending is not None and (
            pending.store_id != self.current.store_id
            or pending.kdf_id != self.current.kdf_id
            or pending.kdf != self.current.kdf
            or pending.salt != self.current.salt
            or pending.key_generation != self.current.key_generation + 1
        ):
            raise IntegrityError("vault header file: the pending header does not follow current")

    def headers(self) -> tuple[Header, ...]:
        """Current, then pending if a rekey is in progress."""
        return (self.current,) if self.pending is None else (self.current, self.pending)

    def to_bytes(self) -> bytes:
        """Serialize to the layout in the module docstring."""
        parts = [_FIXED.pack(SIDECAR_MAGIC, SIDECAR_FORMAT, self.schema_version,
                             len(self.headers()))]
        for header in self.headers():
            data = header.to_bytes()
            parts.append(_LEN.pack(len(data)) + data)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> Sidecar:
        """Parse a header file.

        Raises:
            NotAVault: the bytes do not start with the sidecar magic.
            SchemaTooNew: a newer sidecar format.
            IntegrityError: right magic, but malformed.
        """
        if len(data) < _FIXED.size or not data.startswith(SIDECAR_MAGIC):
            raise NotAVault("not an mls-keystore SQLCipher header file (bad magic)")
        _, fmt, schema_version, count = _FIXED.unpack_from(data)
        if fmt > SIDECAR_FORMAT:
            raise SchemaTooNew(
                f"vault header file has format {fmt}; this code reads up to {SIDECAR_FORMAT}"
            )
        if fmt != SIDECAR_FORMAT or count not in (1, 2):
            raise IntegrityError("vault header file is malformed")
        pos = _FIXED.size
        headers: list[Header] = []
        for _ in range(count):
            if pos + _LEN.size > len(data):
                raise IntegrityError("vault header file is truncated")
            (length,) = _LEN.unpack_from(data, pos)
            pos += _LEN.size
            if pos + length > len(data):
                raise IntegrityError("vault header file is truncated")
            headers.append(Header.from_bytes(data[pos : pos + length]))
            pos += length
        if pos != len(data):
            raise IntegrityError("vault header file has trailing bytes")
        return cls(headers[0], headers[1] if count == 2 else None, schema_version)

    def with_schema_version(self, version: int) -> Sidecar:
        """A copy mirroring another schema version."""
        return Sidecar(self.current, self.pending, version)

    # ------------------------------------------------------------------ files

    @classmethod
    def read(cls, vault_path: Path) -> Sidecar | None:
        """Read the header file beside ``vault_path``; ``None`` when there is none.

        Raises:
            NotAVault, SchemaTooNew, IntegrityError: see :meth:`from_bytes`.
            UnsafeFile: a symlink, FIFO or device is where the header file belongs
                (read without following or blocking).
        """
        path = sidecar_path_for(vault_path)
        try:
            data = read_regular_file(path, _MAX_BYTES)
        except VaultIOError as exc:
            raise NotAVault(str(exc)) from None
        if data is None:
            return None
        if len(data) > _MAX_BYTES:
            raise NotAVault(f"{path} is too large to be a vault header file")
        try:
            return cls.from_bytes(data)
        except NotAVault:
            raise NotAVault(
                f"{path} is not an mls-keystore SQLCipher header file (bad magic)"
            ) from None

    def write(self, vault_path: Path, *, create: bool = False) -> None:
        """Replace the header file atomically and durably.

        With ``create=True`` the file must not exist yet (``FileExistsError``
        otherwise): a new vault never overwrites someone else's header.

        Raises:
            VaultIOError: the write failed; the previous header file is intact.
        """
        final = sidecar_path_for(vault_path)
        tmp = temporary_name(final, "tmp")
        try:
            fd, _ = create_private_file(tmp)
            try:
                view = memoryview(self.to_bytes())
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if create:
                os.link(tmp, final)  # refuses to replace, unlike rename
            else:
                os.replace(tmp, final)
            fsync_dir(final.parent)
        except FileExistsError:
            raise
        except OSError as exc:
            raise VaultIOError(f"cannot write vault header file {final}: {exc.strerror}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def fsync_dir(directory: Path) -> None:
    """Make a rename or link in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
