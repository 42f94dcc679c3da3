"""Build a NEW vault from a stream of rows: ``convert`` (plain <-> SQLCipher) and
``import --sqlcipher``.

The new vault is made under a temporary name beside the destination, filled in
batches, closed (which folds its write-ahead log in), fsync'd, and only then
linked into place -- a SQLCipher vault's header file first, as ``Vault.create``
does, so no database ever appears without the header that opens it.  ``os.link``
refuses a destination that appeared meanwhile.  On any failure (including
Ctrl-C) the temporary files are removed and the destination is as it was; the
source is only ever read.

The new vault gets a new store id and new keys (the row-key hashes therefore
change); the rows are copied exactly and counted on both sides.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from keystore.errors import IntegrityError, VaultIOError
from keystore.sidecar import sidecar_path_for
from keystore.vault import Change, Vault

__all__ = ["CopySummary", "build_vault", "vault_rows"]

_BATCH = 1000  # rows per transaction: bounded memory, few fsyncs


@dataclass(frozen=True, slots=True)
class CopySummary:
    """What went into the new vault."""

    rows: int
    categories: int
    plaintext_bytes: int
    store_id: bytes
    generation: int | None = None  # the new vault's, when it was raised


def vault_rows(
    vault: Vault,
    progress: Callable[[int, int], None] | None = None,
    on_generation: Callable[[int | None], None] | None = None,
) -> Iterable[tuple[str, bytes, bytes]]:
    """Every row of an unlocked vault, from one read snapshot, category by category.

    The snapshot checks the rows against the vault's state record after the last
    one (``RollbackDetected``), so a vault with rows put back or deleted behind its
    back is not laundered into a new vault with a fresh record.  ``on_generation``
    is called with the generation of the snapshot's rows before the first row, so
    that the copy can be given at least that generation.
    """
    total = vault.stats().total_rows
    done = 0
    with vault.read_snapshot() as snapshot:
        if on_generation is not None:
            on_generation(snapshot.generation)
        for category, key, value in snapshot:
            yield category, key, value
            done += 1
            if progress is not None and (done % _BATCH == 0 or done == total):
                progress(done, total)
    if progress is not None and total == 0:
        progress(0, 0)


def _leftovers(tmp: Path) -> tuple[Path, ...]:
    return tuple(
        Path(f"{tmp}{suffix}") for suffix in ("", "-wal", "-shm", ".lock", ".header")
    )


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_vault(
    dest: Path,
    rows: Iterable[tuple[str, bytes, bytes]],
    create: Callable[[Path], Vault],
    generation: Callable[[], int] | None = None,
) -> CopySummary:
    """Create a vault with ``create(temp_path)``, fill it with ``rows``, link it to ``dest``.

    ``generation``, when given, is called once every row is in, and the new vault's
    generation raised to what it returns (an import carrying its source's generation).

    Raises:
        FileExistsError: ``dest`` (or its header file) exists, before or at the end.
        IntegrityError: the same row came twice (the count does not match).
        VaultIOError: the folder cannot be written.
    """
    side = sidecar_path_for(dest)
    for existing in (dest, side):
        if existing.exists() or existing.is_symlink():
            raise FileExistsError(f"{existing} already exists; refusing to overwrite it")
    if not os.access(dest.parent, os.W_OK):
        raise VaultIOError(f"cannot create vault {dest}: the folder {dest.parent} is not writable")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{os.urandom(4).hex()}.converting")
    count = plain = 0
    categories: set[str] = set()
    side_linked = False
    try:
        with create(tmp) as vault:
            sqlcipher = vault.sqlcipher
            batch: list[Change] = []
            for category, key, value in rows:
                batch.append(Change(category, key, value))
                count += 1
                plain += len(key) + len(value)
                categories.add(category)
                if len(batch) >= _BATCH:
                    vault.apply(batch)
                    batch.clear()
            vault.apply(batch)
            if vault.stats().total_rows != count:
                raise IntegrityError("the source holds the same row twice; nothing was created")
            raised = None if generation is None else vault.raise_generation(generation())
            store_id = vault.store_id
        _fsync(tmp)
        if sqlcipher:
            os.link(sidecar_path_for(tmp), side)
            side_linked = True
        os.link(tmp, dest)
        _fsync(dest.parent, directory=True)
    except BaseException:
        if side_linked:
            with contextlib.suppress(FileNotFoundError):
                side.unlink()  # ours, just linked, and no database uses it
        raise
    finally:
        for leftover in _leftovers(tmp):
            if leftover.exists() or leftover.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
    return CopySummary(
        rows=count, categories=len(categories), plaintext_bytes=plain, store_id=store_id,
        generation=raised,
    )
