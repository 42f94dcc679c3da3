"""A read-only view of an MLS client vault, for operators (``mls-keystore mls ...``).

:class:`MlsInspector` answers the questions one asks while debugging a client — which
groups, at which epoch, with whom, which key packages are published, which commit or
proposals are waiting — without being able to change anything: it opens the vault
read-only (a file: no writer lock, SQLite ``mode=ro``; a vault in PostgreSQL: no writer
lease), so it also works while the application holds the vault, and it never flushes.
It runs the same engine as :class:`mls.MlsClient` (one client, built on the read-only
vault) and reports through the client's own records (:class:`mls.engine.GroupState`,
:class:`mls.engine.Member`, ...).

Key packages are not part of the engine interface (an engine only makes and consumes
them), so :meth:`MlsInspector.key_packages` reads their public halves from the rows each
engine keeps; no private key is ever decoded.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from keystore import Vault
from keystore.errors import VaultClosed
from mls import categories as cat
from mls.client import MlsClient
from mls.engine import EngineName, GroupState
from mls.errors import MlsError
from mls.storage import GranularStorage

if TYPE_CHECKING:
    from keystore.postgres_vault import PostgresAddress, PostgresVault

__all__ = ["KeyPackageInfo", "MlsInspector"]

# The key-package rows are read, never written, here; their writers define them:
# native: NativeEngine.generate_key_package (format byte, opaque KeyPackage, then the two
# private keys, which are skipped); mls-rs: MlsRsAdapter.generate_key_package (format
# byte, 16-byte session id, u64 creation time; the key package itself stays in mls-rs).
_MLSRS_RECORD = struct.Struct(">B16sQ")


@dataclass(frozen=True, slots=True)
class KeyPackageInfo:
    """The public facts of one key package this client published and can still join with.

    Attributes:
        ref: its KeyPackageRef (RFC 9420 §5.2), the id a Welcome names it by.
        cipher_suite: its suite (native engine; ``None`` on mls-rs, which keeps only the
            reference).
        not_before, not_after: its lifetime in Unix seconds (native engine; else ``None``).
        last_resort: reusable for many joins (native engine; ``False`` on mls-rs).
        created_at: Unix seconds it was made (mls-rs only; ``None`` natively).
    """

    ref: bytes
    cipher_suite: int | None
    not_before: int | None
    not_after: int | None
    last_resort: bool
    created_at: int | None


def _native_key_package(ref: bytes, row: bytes) -> KeyPackageInfo:
    # Imported here: only a native vault needs the native codec.
    from mls.native.codec import Reader, decode_exact
    from mls.native.engine import LAST_RESORT_EXTENSION
    from mls.native.errors import DecodeError
    from mls.native.key_package import KeyPackage
    from mls.native.rows import FORMAT

    def public_half(r: Reader) -> bytes:
        if r.u8() != FORMAT:
            raise DecodeError("stored key package has an unknown format")
        kp = r.opaque()
        r.opaque()  # the init private key: skipped, never decoded
        r.opaque()  # the leaf private key: likewise
        return kp

    try:
        kp = decode_exact(decode_exact(row, public_half), KeyPackage.decode)
    except DecodeError as exc:
        raise MlsError("a stored key package cannot be decoded") from exc
    lifetime = kp.leaf_node.lifetime
    return KeyPackageInfo(
        ref=ref,
        cipher_suite=kp.cipher_suite,
        not_before=None if lifetime is None else lifetime.not_before,
        not_after=None if lifetime is None else lifetime.not_after,
        last_resort=any(e.extension_type == LAST_RESORT_EXTENSION for e in kp.extensions),
        created_at=None,
    )


def _mlsrs_key_package(ref: bytes, row: bytes) -> KeyPackageInfo:
    if len(row) != _MLSRS_RECORD.size or row[0] != 1:
        raise MlsError("a stored key-package record has an unknown format")
    _, _, created = _MLSRS_RECORD.unpack(row)
    return KeyPackageInfo(ref, None, None, None, False, created)


class MlsInspector:
    """Read-only inspection of an MLS client vault: groups, members, key packages, pending.

    Open one with :meth:`open` / :meth:`open_with_key` (a path, or a
    :class:`keystore.PostgresAddress`), or hand an unlocked read-only
    :class:`keystore.Vault` or :class:`keystore.PostgresVault` to the constructor; use it
    as a context manager.  It takes no writer lock or lease, so it may run while the
    application has the vault open; it then sees the state as of the application's last
    durable call.

    Raises (from every method): :class:`keystore.errors.VaultClosed` once closed;
    :class:`mls.errors.UnknownGroup` for a group this client is not in.
    """

    def __init__(self, vault: Vault | PostgresVault) -> None:
        """Inspect an unlocked vault opened with ``Vault.open(path, readonly=True)`` (or
        ``PostgresVault.open(..., readonly=True)``).

        Raises:
            ValueError: the vault is writable (inspection must not be able to write).
            NotAnMlsVault, MlsRsUnavailable: as :meth:`mls.MlsClient.open`.
        """
        if not vault.readonly:
            raise ValueError("MlsInspector needs a vault opened with readonly=True")
        self._vault = vault
        self._storage = GranularStorage.load(vault)
        self._client = MlsClient(vault, self._storage)
        self._closed = False

    @classmethod
    def open(
        cls, path: str | os.PathLike[str] | PostgresAddress, passphrase: str | bytes
    ) -> MlsInspector:
        """Open a passphrase vault read-only and unlock it.

        ``path`` may be a :class:`keystore.PostgresAddress`: the vault is then opened
        read-only in its database, without its writer lease.

        Raises:
            WrongPassphrase, NotAVault, MigrationRequired, NotAnMlsVault, MlsRsUnavailable.
        """
        return cls._open(path, lambda v: v.unlock(passphrase))

    @classmethod
    def open_with_key(
        cls, path: str | os.PathLike[str] | PostgresAddress, key: bytes
    ) -> MlsInspector:
        """As :meth:`open`, for a vault keyed by a raw 32-byte key."""
        return cls._open(path, lambda v: v.unlock_with_key(key))

    @classmethod
    def _open(
        cls,
        path: str | os.PathLike[str] | PostgresAddress,
        unlock: Callable[[Vault | PostgresVault], None],
    ) -> MlsInspector:
        vault: Vault | PostgresVault
        if isinstance(path, (str, os.PathLike)):
            vault = Vault.open(Path(path), readonly=True)
        else:
            from keystore.postgres_vault import PostgresAddress

            if not isinstance(path, PostgresAddress):
                raise TypeError("give a vault path or a keystore.PostgresAddress")
            vault = path.open_vault(readonly=True)
        try:
            unlock(vault)
            return cls(vault)
        except BaseException:
            vault.close()
            raise

    def close(self) -> None:
        """Close the vault (idempotent).  Nothing is flushed: nothing may be written."""
        if not self._closed:
            self._closed = True
            self._vault.close()

    def __enter__(self) -> MlsInspector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise VaultClosed("this MlsInspector (and its vault) is closed")

    @property
    def engine_name(self) -> EngineName:
        """The engine the vault belongs to."""
        return self._client.engine_name

    @property
    def identity(self) -> bytes:
        """The client's basic-credential identity."""
        return self._client.identity

    @property
    def cipher_suite(self) -> int:
        """The client's default cipher suite."""
        return self._client.cipher_suite

    def group_ids(self) -> list[bytes]:
        """The groups the client is a member of, sorted."""
        self._check_open()
        return self._client.group_ids()

    def group_state(self, group_id: bytes) -> GroupState:
        """The group's current epoch: suite, members, settings, pending commit and proposals.

        ``pending_proposals`` and ``epoch_authenticator`` are ``None`` on mls-rs, and its
        ``pending_commit`` is always ``None`` (mls-rs keeps no pending commits).
        """
        self._check_open()
        return self._client.group_state(group_id)

    def key_packages(self) -> list[KeyPackageInfo]:
        """Key packages published and not yet used for a join, sorted by reference.

        On mls-rs a key package can only be joined with by the process that made it: one
        made by a process that has since ended is lost (``MlsClient.lost_key_packages``).
        """
        self._check_open()
        if self.engine_name == "native":
            rows = self._storage.items(cat.KEY_PACKAGE)
            infos = [_native_key_package(ref, row) for ref, row in rows]
        else:
            from mls.engines.mlsrs import CATEGORY_KEY_PACKAGES

            rows = self._storage.items(CATEGORY_KEY_PACKAGES)
            infos = [_mlsrs_key_package(ref, row) for ref, row in rows]
        return sorted(infos, key=lambda info: info.ref)
