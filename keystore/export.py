"""The export file: every row of a vault, encrypted under its own backup passphrase.

An export is for moving a vault or keeping a copy off the machine, so it depends
on nothing of the vault it came from: its own Argon2id salt and parameters, its
own key, no store id.  It does carry the vault's *generation* (format 2): a vault
restored from it must not look older than the vault it came from, or that vault's
anchor would refuse it (docs/format.md §11, §15).  Byte layout (integers
big-endian; the byte-by-byte table is in ``docs/format.md``)::

     0   8  magic          b"MLKSEXP\\x00"
     8   1  format         2 (1: written before the generation was carried)
     9   1  kdf_id         1 = Argon2id(backup passphrase)
    10   4  time_cost
    14   4  memory_cost    KiB
    18   4  parallelism
    22  16  salt
    38   4  chunk_size     plaintext bytes per chunk
    42  16  header_tag     AES-256-GCM(key, nonce = 12 x 0xFF, b"", AAD = bytes 0..41)
    58   …  chunks         AES-256-GCM(key, nonce = index(11) || last(1), piece, AAD = bytes 0..41)

The plaintext is one stream of records cut into ``chunk_size`` pieces; every chunk
but the last is exactly ``chunk_size + 16`` bytes, the last is shorter (an empty
last piece when the stream is a whole number of chunks).  Chunked, not one blob,
so that the file is streamed, never held whole in memory (the exporter reads
one snapshot of the vault in batches), and a damaged file is caught at the chunk that
fails; the index in the nonce stops reordering, the
``last`` flag stops truncation at a chunk boundary.  The key is fresh for every
file (fresh salt), so counter nonces never repeat under a key.

Records: in format 2 first ``0x02 || u64 generation`` (exactly once, first: inside
the encryption, so it is authenticated and not shown to whoever holds the file),
then per row ``0x01 || u16 len || category || u32 len || key || u32 len || value``,
ended by ``0x00 || u64 record_count`` (rows only); nothing may follow.  Format 1 is
the same without the generation record; it is still read.

Failures: a wrong passphrase or an edited header fails the header tag
(:class:`WrongPassphrase`); any later damage is an :class:`IntegrityError`; a newer
format is :class:`SchemaTooNew`; all are found before the importer renames its
new vault into place, so nothing is written.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import struct
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keystore import safefile
from keystore.cipher import normalize_passphrase
from keystore.digest import STATE_FORMATS, STATE_LEN
from keystore.errors import IntegrityError, SchemaTooNew, VaultBusy, WrongPassphrase
from keystore.lockfile import WriterLock
from keystore.profiles import RFC_9106_HIGH_MEMORY, RFC_9106_LOW_MEMORY, KdfParameters
from keystore.sidecar import sidecar_path_for
from keystore.vault import (
    MAX_KEY_LEN,
    MAX_VALUE_LEN,
    Change,
    Vault,
    check_category,
    check_companion_files,
    check_key,
    check_value,
)

if TYPE_CHECKING:
    from keystore.postgres_vault import PostgresVault

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "EXPORT_FORMAT",
    "EXPORT_MAGIC",
    "ExportHeader",
    "ExportStream",
    "ExportSummary",
    "export_vault",
    "import_vault",
    "read_export",
    "read_header",
    "record_generation",
    "replaced_generation",
    "write_export",
]

EXPORT_MAGIC = b"MLKSEXP\x00"
#: The format this code writes when the vault's generation is known; it reads 1 and 2.
EXPORT_FORMAT = 2
#: The format without the generation record (written for a vault that has none).
EXPORT_FORMAT_NO_GENERATION = 1
KDF_ARGON2ID = 1
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 1 << 10
MAX_CHUNK_SIZE = 1 << 24
#: Refuse to run Argon2 with parameters above these: the header is read before it
#: can be authenticated, and a doctored one must not make us allocate 4 TiB.
MAX_TIME_COST = 16
MAX_MEMORY_KIB = RFC_9106_HIGH_MEMORY.memory_cost
MAX_PARALLELISM = 64

_HEADER = struct.Struct(">8sBBIII16sI")
_TAG_LEN = 16
_HEADER_NONCE = b"\xff" * 12
_SALT_LEN = 16
_REC_ROW, _REC_END, _REC_GENERATION = 1, 0, 2
_U64_MAX = (1 << 64) - 1
_U16, _U32, _U64 = struct.Struct(">H"), struct.Struct(">I"), struct.Struct(">Q")
_IMPORT_BATCH = 1000

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class ExportHeader:
    """The unencrypted first 42 bytes of an export (authenticated by the tag after them)."""

    kdf: KdfParameters
    salt: bytes
    chunk_size: int
    #: 2: the stream starts with the vault's generation; 1: it does not.
    format: int = EXPORT_FORMAT

    def to_bytes(self) -> bytes:
        """The header bytes, which are also the AAD of every chunk."""
        k = self.kdf
        return _HEADER.pack(
            EXPORT_MAGIC, self.format, KDF_ARGON2ID,
            k.time_cost, k.memory_cost, k.parallelism, self.salt, self.chunk_size,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ExportHeader:
        """Parse and bound-check a header; the format byte is checked before anything else.

        Raises:
            IntegrityError: not an export file, or malformed.
            SchemaTooNew: written by a newer version of this package.
        """
        if len(data) < len(EXPORT_MAGIC) or data[: len(EXPORT_MAGIC)] != EXPORT_MAGIC:
            raise IntegrityError("not an mls-keystore export file (bad magic)")
        if len(data) < _HEADER.size:
            raise IntegrityError("export file is truncated (incomplete header)")
        _, fmt, kdf_id, t, m, p, salt, chunk_size = _HEADER.unpack_from(data)
        if fmt > EXPORT_FORMAT:
            raise SchemaTooNew(
                f"export format {fmt} is newer than this code reads ({EXPORT_FORMAT}); "
                "upgrade mls-keystore"
            )
        if fmt not in (EXPORT_FORMAT_NO_GENERATION, EXPORT_FORMAT):
            raise IntegrityError(f"unknown export format {fmt}")
        if kdf_id != KDF_ARGON2ID:
            raise IntegrityError(f"unknown export KDF id {kdf_id}")
        if not (t <= MAX_TIME_COST and m <= MAX_MEMORY_KIB and p <= MAX_PARALLELISM):
            raise IntegrityError("export header asks for implausibly expensive KDF parameters")
        try:
            kdf = KdfParameters(t, m, p, "stored")
        except ValueError as exc:
            raise IntegrityError(f"export header has invalid KDF parameters ({exc})") from None
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise IntegrityError(f"export header has an invalid chunk size {chunk_size}")
        return cls(kdf, bytes(salt), chunk_size, fmt)


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What an export or import moved."""

    rows: int
    categories: int
    plaintext_bytes: int
    store_id: bytes | None = None  # of the new vault, after an import
    #: Export: the generation the file carries (``None``: none, format 1).  Import:
    #: the new vault's generation, at least the carried one.
    generation: int | None = None


def _derive(header: ExportHeader, passphrase: str | bytes) -> AESGCM:
    key = hash_secret_raw(
        normalize_passphrase(passphrase),
        header.salt,
        time_cost=header.kdf.time_cost,
        memory_cost=header.kdf.memory_cost,
        parallelism=header.kdf.parallelism,
        hash_len=32,
        type=Type.ID,
    )
    return AESGCM(key)


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _encode_record(category: str, key: bytes, value: bytes) -> bytes:
    # The vault's own limits: whatever is written can be imported again.
    category, key, value = check_category(category), check_key(key), check_value(value)
    cat = category.encode("utf-8")
    return b"".join(
        (bytes([_REC_ROW]), _U16.pack(len(cat)), cat, _U32.pack(len(key)), key,
         _U32.pack(len(value)), value)
    )


def write_export(
    out: BinaryIO,
    records: Iterable[tuple[str, bytes, bytes]],
    passphrase: str | bytes,
    kdf: KdfParameters = RFC_9106_LOW_MEMORY,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    generation: int | None = None,
) -> ExportSummary:
    """Write ``records`` ``(category, key, value)`` to ``out`` as an export file.

    Args:
        generation: the vault's generation, carried in the file (format 2) so that an
            import can give the new vault at least this generation.  ``None`` (a vault
            without a state record) writes format 1, which carries none.

    Raises:
        ValueError/TypeError: empty passphrase, chunk size or generation out of range.
    """
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}")
    if generation is not None and (
        not isinstance(generation, int) or not 0 <= generation <= _U64_MAX
    ):
        raise ValueError("generation must be between 0 and 2**64 - 1")
    fmt = EXPORT_FORMAT_NO_GENERATION if generation is None else EXPORT_FORMAT
    header = ExportHeader(kdf, os.urandom(_SALT_LEN), chunk_size, fmt)
    aad = header.to_bytes()
    aead = _derive(header, passphrase)
    out.write(aad + aead.encrypt(_HEADER_NONCE, b"", aad))
    buffer = bytearray()
    if generation is not None:
        buffer += bytes([_REC_GENERATION]) + _U64.pack(generation)
    index = rows = plain = 0
    categories: set[str] = set()
    for category, key, value in records:
        buffer += _encode_record(category, key, value)
        rows += 1
        plain += len(key) + len(value)
        categories.add(category)
        while len(buffer) >= chunk_size:
            out.write(aead.encrypt(_nonce(index, False), bytes(buffer[:chunk_size]), aad))
            del buffer[:chunk_size]
            index += 1
    buffer += bytes([_REC_END]) + _U64.pack(rows)
    while len(buffer) >= chunk_size:
        out.write(aead.encrypt(_nonce(index, False), bytes(buffer[:chunk_size]), aad))
        del buffer[:chunk_size]
        index += 1
    out.write(aead.encrypt(_nonce(index, True), bytes(buffer), aad))
    return ExportSummary(rows=rows, categories=len(categories), plaintext_bytes=plain,
                         generation=generation)


def read_header(fh: BinaryIO) -> ExportHeader:
    """Read and parse the header (no passphrase needed); leaves ``fh`` after it."""
    return ExportHeader.from_bytes(fh.read(_HEADER.size))


def _read_exactly(fh: BinaryIO, n: int) -> bytes:
    parts = []
    while n > 0:
        part = fh.read(n)
        if not part:
            break
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def read_export(
    fh: BinaryIO, passphrase: str | bytes
) -> Iterator[tuple[str, bytes, bytes]]:
    """Yield the records of an export file, authenticating chunk by chunk.

    A damaged, truncated or extended file raises before the generator finishes:
    whoever consumes it must commit nothing until it is exhausted.  To learn the
    generation the file carries as well, iterate an :class:`ExportStream` instead.

    Raises:
        WrongPassphrase: wrong backup passphrase, or the header was edited.
        IntegrityError: not an export file, or any damage after the header.
        SchemaTooNew: a newer export format.
    """
    yield from ExportStream(fh, passphrase)


class ExportStream:
    """The rows of an export file, and the vault generation it carries.

    Iterate it once, as :func:`read_export`: every record is authenticated before it
    is yielded, and nothing may be trusted until the iteration ends without an error.
    :attr:`generation` is known from the first record of a format-2 file on
    (before the first row is yielded); it stays ``None`` for a format-1 file.
    """

    __slots__ = ("_fh", "_passphrase", "format", "generation")

    def __init__(self, fh: BinaryIO, passphrase: str | bytes) -> None:
        self._fh = fh
        self._passphrase = passphrase
        #: The file's format (1 or 2), once its header has been read.
        self.format: int | None = None
        #: The generation the file carries (format 2), once read; else ``None``.
        self.generation: int | None = None

    def __iter__(self) -> Iterator[tuple[str, bytes, bytes]]:
        """Yield ``(category, key, value)`` per row; raise on any damage (see read_export)."""
        fh = self._fh
        header = read_header(fh)
        self.format = header.format
        aad = header.to_bytes()
        aead = _derive(header, self._passphrase)
        try:
            aead.decrypt(_HEADER_NONCE, _read_exactly(fh, _TAG_LEN), aad)
        except InvalidTag:
            raise WrongPassphrase(
                "wrong backup passphrase (or the export file's header was modified)"
            ) from None
        parser = _RecordParser(with_generation=header.format >= EXPORT_FORMAT)
        full = header.chunk_size + _TAG_LEN
        index = 0
        while True:
            blob = _read_exactly(fh, full)
            last = len(blob) < full
            if len(blob) < _TAG_LEN:
                raise IntegrityError("export file is truncated (final chunk missing)")
            try:
                piece = aead.decrypt(_nonce(index, last), blob, aad)
            except InvalidTag:
                raise IntegrityError(
                    f"export file is damaged or was modified (chunk {index} failed "
                    "authentication)"
                ) from None
            for row in parser.feed(piece):
                self.generation = parser.generation
                yield row
            self.generation = parser.generation
            index += 1
            if last:
                break
        parser.finish()


class _RecordParser:
    """Cuts the decrypted stream back into records, whatever the chunk boundaries."""

    __slots__ = ("_buf", "_count", "_ended", "_with_generation", "generation")

    def __init__(self, *, with_generation: bool = False) -> None:
        self._buf = bytearray()
        self._count = 0
        self._ended = False
        # Format 2: the first record must be the generation, and only the first.
        self._with_generation = with_generation
        self.generation: int | None = None

    def feed(self, data: bytes) -> Iterator[tuple[str, bytes, bytes]]:
        if self._ended and data:
            raise IntegrityError("export file has data after its end record")
        self._buf += data
        pos = 0
        buf = self._buf
        while not self._ended and pos < len(buf):
            if self._with_generation and self.generation is None:
                if buf[pos] != _REC_GENERATION:
                    raise IntegrityError("export file lacks its generation record")
                if len(buf) - pos < 1 + _U64.size:
                    break
                (self.generation,) = _U64.unpack_from(buf, pos + 1)
                pos += 1 + _U64.size
                continue
            if buf[pos] == _REC_END:
                if len(buf) - pos < 1 + _U64.size:
                    break
                (expected,) = _U64.unpack_from(buf, pos + 1)
                if expected != self._count:
                    raise IntegrityError("export file's record count does not match")
                pos += 1 + _U64.size
                self._ended = True
                break
            if buf[pos] != _REC_ROW:
                raise IntegrityError(f"export file has an unknown record type {buf[pos]}")
            record = self._row_at(pos)
            if record is None:
                break
            pos, row = record
            self._count += 1
            yield row
        del buf[:pos]
        if self._ended and buf:
            raise IntegrityError("export file has data after its end record")

    def _row_at(self, pos: int) -> tuple[int, tuple[str, bytes, bytes]] | None:
        buf = self._buf
        p = pos + 1
        if len(buf) < p + _U16.size:
            return None
        (cat_len,) = _U16.unpack_from(buf, p)
        p += _U16.size
        if len(buf) < p + cat_len + _U32.size:
            return None
        category = bytes(buf[p : p + cat_len])
        p += cat_len
        (key_len,) = _U32.unpack_from(buf, p)
        if key_len > MAX_KEY_LEN:
            raise IntegrityError("export file holds a row key over the size limit")
        p += _U32.size
        if len(buf) < p + key_len + _U32.size:
            return None
        key = bytes(buf[p : p + key_len])
        p += key_len
        (value_len,) = _U32.unpack_from(buf, p)
        if value_len > MAX_VALUE_LEN:
            raise IntegrityError("export file holds a value over the size limit")
        p += _U32.size
        if len(buf) < p + value_len:
            return None
        value = bytes(buf[p : p + value_len])
        try:
            # An authenticated file can still come from a buggy or hostile exporter: a
            # bad name must fail here as damage, not later as a ValueError from apply().
            name = check_category(category.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError included
            raise IntegrityError("export file holds an invalid category name") from None
        return p + value_len, (name, key, value)

    def finish(self) -> None:
        if not self._ended:
            raise IntegrityError("export file is truncated (no end record)")


#: Test seam: called with the name of each step of an import ("locked", "checked",
#: "built", "replaced"), so a test can race a writer or kill the process between
#: the check of the target and its replacement.  ``None`` in production.
_import_step_hook: Callable[[str], None] | None = None


def _import_step(name: str) -> None:
    if _import_step_hook is not None:
        _import_step_hook(name)


def export_vault(
    vault: Vault | PostgresVault,
    out_path: str | os.PathLike[str],
    backup_passphrase: str | bytes,
    kdf: KdfParameters = RFC_9106_LOW_MEMORY,
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> ExportSummary:
    """Export every row of an unlocked vault to ``out_path``, as of one moment.

    The rows are read in one read transaction (:meth:`Vault.read_snapshot`): a
    batch a writer commits meanwhile is in the export entirely or not at all.
    The file carries the generation of the rows it holds (:attr:`Snapshot.generation`:
    the one the state record of that same read vouches for, even when another
    process wrote since ``vault`` was unlocked), so that an import can give the new
    vault at least that generation.
    The file is created owner-only (``0600``, ``O_EXCL``, never through a symlink)
    under a random temporary name beside ``out_path``, fsync'd, then put in place:
    a crash never leaves half an export under the real name, nor a readable one.

    With ``overwrite``, only an earlier export file at ``out_path`` is replaced, never
    a vault or any other file (:func:`check_replaceable_export`).

    Raises:
        FileExistsError: ``out_path`` exists and ``overwrite`` is false, or it is not
            an export file.
        VaultLocked, IntegrityError: from reading the vault.
    """
    out = Path(out_path)
    if not overwrite and (out.exists() or out.is_symlink()):
        raise FileExistsError(f"{out} already exists; refusing to overwrite it")
    if overwrite:
        check_replaceable_export(out)
    normalize_passphrase(backup_passphrase)
    safefile.remove_stale_temporaries(out)
    tmp = safefile.temporary_name(out, "exporting")
    try:
        fd, created = safefile.create_private_file(tmp)
        safefile.step("export-created")
        with os.fdopen(fd, "wb") as fh, vault.read_snapshot() as snapshot:
            summary = write_export(
                fh, _counted(snapshot, progress, snapshot.rows), backup_passphrase, kdf,
                generation=snapshot.generation,
            )
            fh.flush()
            os.fsync(fh.fileno())
        safefile.step("export-written")
        safefile.verify_same_file(tmp, created)
        if overwrite:
            os.replace(tmp, out)
        else:
            os.link(tmp, out)  # refuses a file that appeared meanwhile
        _fsync_dir(out.parent)
        safefile.step("export-linked")
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return summary


def check_replaceable_export(out: str | os.PathLike[str]) -> None:
    """With ``overwrite``, refuse to replace anything at ``out`` but an earlier export.

    ``overwrite`` is for refreshing a backup; a slip of the path (the vault itself,
    another vault, any other file) must not replace that file with an export.  A file
    is taken for an export when it starts with the export magic; a symlink, a
    non-regular file or an unreadable one is refused too.  Nothing at ``out`` is fine.

    Raises:
        FileExistsError: ``out`` exists and is not an export file.
    """
    path = Path(out)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise FileExistsError(
            f"{path} exists and is not a readable regular file ({exc.strerror}); "
            "not replacing it"
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileExistsError(f"{path} exists and is not a regular file; not replacing it")
        head = os.read(fd, len(EXPORT_MAGIC))
    finally:
        os.close(fd)
    if head != EXPORT_MAGIC:
        raise FileExistsError(
            f"{path} exists and is not an export file (a vault, or another file); "
            "overwriting replaces only an earlier export: choose another name"
        )


def _counted(
    records: Iterable[tuple[str, bytes, bytes]], progress: ProgressCallback | None, total: int
) -> Iterator[tuple[str, bytes, bytes]]:
    for done, record in enumerate(records, 1):
        yield record
        if progress is not None:
            progress(done, total)


def import_vault(
    in_path: str | os.PathLike[str],
    vault_path: str | os.PathLike[str],
    backup_passphrase: str | bytes,
    vault_passphrase: str | bytes,
    kdf: KdfParameters = RFC_9106_LOW_MEMORY,
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> ExportSummary:
    """Restore an export into a NEW vault at ``vault_path`` (new store id, new keys).

    The new vault is built completely in a private directory beside
    ``vault_path`` and renamed into place only after the whole export
    authenticated.  The target's writer lock is taken first and held from the
    check of what is at ``vault_path`` until the rename: no vault can be created
    or opened for writing there in between.  With ``overwrite``, an existing vault
    is replaced only by that final rename; it is never deleted or truncated before.

    The new vault's generation is at least the one the export carries, and above the
    generation of the vault it replaces, so an anchor that tracked either accepts it
    (docs/format.md §11).

    Args:
        progress: called as ``progress(bytes_read, file_size)``.

    Raises:
        FileExistsError: ``vault_path`` exists and ``overwrite`` is false.
        VaultBusy: the existing vault (or the path) is open for writing, or a
            reader still has the existing vault open.
        UnsafeFile: a file planted beside ``vault_path`` (``-wal``, ``-shm``,
            ``.lock``) is not safe to use.
        WrongPassphrase, IntegrityError, SchemaTooNew: the export is unusable;
            nothing was written at ``vault_path``.
    """
    src, dest = Path(in_path), Path(vault_path)
    normalize_passphrase(backup_passphrase)
    normalize_passphrase(vault_passphrase)
    if not dest.parent.is_dir():
        raise FileNotFoundError(f"directory {dest.parent} does not exist")
    safefile.check_folder(dest.parent)
    check_companion_files(dest)
    # Taken whether or not a vault is there yet: a vault created at dest while the
    # export is read would otherwise be replaced under its writer.
    lock = WriterLock.acquire(dest, owner=os.geteuid())
    imported = False
    replaced: int | None = None
    try:
        _import_step("locked")
        if dest.exists() or dest.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{dest} already exists; refusing to overwrite it")
            if dest.is_symlink() or not dest.is_file():
                raise FileExistsError(
                    f"{dest} exists and is not a regular file; not replacing it"
                )
            if sidecar_path_for(dest).exists():
                # Two files cannot be replaced in one atomic step; refuse rather than
                # leave a SQLCipher header file beside a plain vault.
                raise FileExistsError(
                    f"{dest} is a SQLCipher vault (it has {sidecar_path_for(dest).name}); "
                    "import to a new path instead of replacing it"
                )
            # Read before the in-use check: a read-only open can leave -wal/-shm behind,
            # which that check folds in and removes.
            replaced = replaced_generation(dest)
            _check_not_in_use(dest)
        elif any(p.exists() or p.is_symlink() for p in _wal_files(dest)):
            raise FileExistsError(
                f"SQLite files of an earlier vault are left beside {dest} "
                f"({', '.join(p.name for p in _wal_files(dest))}): they would be read as "
                "the new vault's own; remove them or import to another path"
            )
        _import_step("checked")
        size = src.stat().st_size
        with src.open("rb") as fh:
            read_header(fh)  # fail on a non-export before building anything
            fh.seek(0)
            safefile.remove_stale_temporaries(dest)
            workdir = safefile.private_directory(dest, "importing")
            try:
                tmp = workdir / "vault"
                summary, built = _build(
                    tmp, fh, size, backup_passphrase, vault_passphrase, kdf, progress,
                    replaced,
                )
                _import_step("built")
                # Still under our lock: nothing can have appeared at dest unless the
                # lock was bypassed; the WAL check above is repeated for that case.
                if not overwrite and (dest.exists() or dest.is_symlink()):
                    raise FileExistsError(f"{dest} appeared during the import; not replacing it")
                if any(p.exists() or p.is_symlink() for p in _wal_files(dest)):
                    raise VaultBusy(
                        f"{dest} was opened during the import (its -wal/-shm appeared); "
                        "nothing was replaced"
                    )
                safefile.verify_same_file(tmp, built)
                if overwrite:
                    os.replace(tmp, dest)
                else:
                    os.link(tmp, dest)
                _fsync_dir(dest.parent)
                _import_step("replaced")
            finally:
                safefile.remove_private_directory(workdir)
        imported = True
    finally:
        if not imported and lock.created and not (dest.exists() or dest.is_symlink()):
            lock.discard()  # nothing was made at dest: leave no lock file of ours there
        else:
            lock.release()
    return summary


def _build(
    tmp: Path,
    fh: BinaryIO,
    size: int,
    backup_passphrase: str | bytes,
    vault_passphrase: str | bytes,
    kdf: KdfParameters,
    progress: ProgressCallback | None,
    replaced: int | None,
) -> tuple[ExportSummary, os.stat_result]:
    rows = plain = 0
    categories: set[str] = set()
    stream = ExportStream(fh, backup_passphrase)
    with Vault.create(tmp, vault_passphrase, kdf=kdf) as vault:
        batch: list[Change] = []
        for category, key, value in stream:
            batch.append(Change(category, key, value))
            rows += 1
            plain += len(key) + len(value)
            categories.add(category)
            if len(batch) >= _IMPORT_BATCH:
                vault.apply(batch)
                batch.clear()
                if progress is not None:
                    progress(fh.tell(), size)
        vault.apply(batch)
        if vault.stats().total_rows != rows:
            raise IntegrityError("export file holds the same row twice")
        generation = vault.raise_generation(generation_floor(stream.generation, replaced))
        store_id = vault.store_id
    if progress is not None:
        progress(size, size)
    if Path(f"{tmp}-wal").exists():
        raise VaultBusy(f"could not checkpoint the new vault {tmp}; nothing was replaced")
    fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
        built = os.fstat(fd)
    finally:
        os.close(fd)
    summary = ExportSummary(
        rows=rows, categories=len(categories), plaintext_bytes=plain, store_id=store_id,
        generation=generation,
    )
    return summary, built


#: A replaced vault's generation is read without its keys (it is not authenticated
#: then), and an export's comes from whoever had the backup passphrase: a doctored
#: huge one must not leave the new vault unable to count on (2^63 writes remain).
_MAX_INHERITED_GENERATION = 1 << 63


def generation_floor(exported: int | None, replaced: int | None = None) -> int:
    """The least generation a vault restored from an export may have.

    At least the generation the export carries (``None`` for a format-1 file: 0), and
    above the generation of the vault the import replaces, if any; never above 2^63.
    """
    floor = exported or 0
    if replaced is not None:
        floor = max(floor, replaced + 1)
    return min(floor, _MAX_INHERITED_GENERATION)


def replaced_generation(path: str | os.PathLike[str]) -> int | None:
    """The generation of the plain vault at ``path``, read from its state record.

    Read without the vault's keys, so not authenticated: good for choosing a higher
    generation for a vault that replaces it, for nothing else.  ``None`` when the file
    has no readable record (not a vault, a vault from before the record, SQLCipher).
    """
    uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        try:
            row = conn.execute("SELECT record FROM keystore_state WHERE id = 1").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return record_generation(row[0] if row is not None else None)


def record_generation(record: object) -> int | None:
    """The generation a stored state record names, read without the vault's keys.

    Not authenticated: good for choosing a higher generation for a vault that replaces
    the one it came from, for nothing else.  ``None`` for anything that is not a state
    record of a format this code reads (a vault whose record is still in state format 1
    has a generation to stay above too).
    """
    if not isinstance(record, bytes) or len(record) != STATE_LEN or record[0] not in STATE_FORMATS:
        return None
    return int(_U64.unpack_from(record, 1)[0])


def _wal_files(path: Path) -> tuple[Path, ...]:
    return (Path(f"{path}-wal"), Path(f"{path}-shm"))


def _check_not_in_use(dest: Path) -> None:
    """Refuse to replace a vault that a reader has open; fold in its write-ahead log.

    A ``-wal`` or ``-shm`` file left beside the new vault would be read as its own.
    Read-only connections leave both behind, so with the writer lock held we open
    and close the old vault once: as the last connection, SQLite checkpoints and
    removes them.  If they survive, someone still has the vault open.
    """
    sidecars = (Path(f"{dest}-wal"), Path(f"{dest}-shm"))
    if not any(s.exists() for s in sidecars):
        return
    uri = f"file:{urllib.parse.quote(str(dest))}?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise VaultBusy(f"{dest} is in use or damaged ({exc}); not replacing it") from None
    for sidecar in sidecars:
        if sidecar.exists():
            raise VaultBusy(
                f"{dest} is open in another program ({sidecar.name} is in use); "
                "close it, then retry"
            )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
