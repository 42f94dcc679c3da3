"""The vault's cipher and state layer, written once over the backend interface.

Everything a vault does above the stored bytes lives here, in :class:`VaultCore`:
unwrapping the header (``unlock``/``unlock_with_key``), holding and dropping the
keys (``lock``), the state record that detects rollback (adopted, checked against
the rows and an anchor, advanced by every write: docs/format.md §15), ``apply``
(validate, coalesce, seal, then one backend transaction with the state record and
the nonce counter), the reads (``get``, ``items``, ``categories``, ``open_rows``,
``read_snapshot``), ``change_passphrase``/``change_key``, the logical ``rekey`` and
``verify``/``stats``.  It is typed only against
:class:`keystore.backend.VaultBackend`: it never sees SQL.

The classes users open are thin subclasses that add what is particular to where the
bytes live: :class:`keystore.Vault` (a SQLite file: creating and opening it safely,
the writer lock file, WAL companions, SQLCipher page keys, compact, backup,
migrations of the file) and :class:`keystore.postgres_vault.PostgresVault`
(addressing a vault in a database, the writer lease and its epoch, schema checks).
Subclasses change behaviour only through the small hooks named ``_ready``,
``_read_stored_header``, ``_headers_for_rewrap``, ``_store_rewrapped``,
``_commit_rekey``, ``_after_rekey``, ``_header_adopted``, ``_drop_keys``,
``_release`` and ``_stored_bytes``; every public method is defined here once.
"""

from __future__ import annotations

import contextlib
import hmac
import operator
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from itertools import chain, repeat
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

from keystore.anchor import GenerationAnchor
from keystore.backend import RowRef, RowSnapshot, SealedRow, VaultBackend
from keystore.cipher import (
    StoreCipher,
    check_raw_key,
    derive_wrapping_key,
    normalize_passphrase,
    unwrap_secrets,
    wrap_secrets,
)
from keystore.digest import (
    STATE_FORMAT,
    DigestKeys,
    RowSetDigest,
    VaultState,
    check_anchor,
    check_rows,
    reseal,
    value_tails,
)
from keystore.errors import (
    IntegrityError,
    KeystoreError,
    RollbackDetected,
    VaultClosed,
    VaultIOError,
    VaultLocked,
)
from keystore.header import (
    FLAG_STATE_DIGEST,
    HEADER_FORMAT,
    KDF_ARGON2ID,
    KDF_RAW_KEY,
    NONCE_LEN,
    SALT_LEN,
    STORE_ID_LEN,
    WRAPPED_LEN,
    Header,
)
from keystore.profiles import RFC_9106_LOW_MEMORY, KdfParameters

if TYPE_CHECKING:
    # pydantic costs ~0.5 s of import time; the reports load only when a report is made.
    from keystore.reports import KdfInfo, StatsReport, VerifyReport

__all__ = [
    "MAX_KEY_LEN",
    "MAX_VALUE_LEN",
    "Change",
    "ChangeLike",
    "ProgressCallback",
    "RowVault",
    "Snapshot",
    "VaultCore",
    "check_category",
    "check_key",
    "check_value",
    "new_header",
    "open_header",
    "seal_batch",
]

MAX_KEY_LEN = 64 * 1024
MAX_VALUE_LEN = 64 * 1024 * 1024
_CATEGORY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")
ProgressCallback = Callable[[int, int], None]
#: Benchmark seam (bench/rollback_bench.py's same-run baseline): ``False`` makes
#: ``apply`` skip the state record and loads skip the row-set check.  Always ``True``
#: in production; a write made with it off leaves a record the next load refuses.
_state_digest_enabled = True
#: Above this many live rows the vault keeps no tails in memory (see
#: ``VaultCore._remember_tails``): about 170 bytes a row, so at most ~22 MB; a larger
#: vault's writes read the replaced values back instead (a few µs a row).
_TAIL_CACHE_MAX_ROWS = 1 << 17


class ChangeLike(Protocol):
    """Anything with ``category``, ``key`` and ``value`` (``None`` deletes the row)."""

    @property
    def category(self) -> str: ...
    @property
    def key(self) -> bytes: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Change:
    """One row to write (``value`` set) or delete (``value=None``) in :meth:`Vault.apply`."""

    category: str
    key: bytes
    value: bytes | None = field(repr=False)  # row values are secrets: never in a repr


@runtime_checkable
class RowVault(Protocol):
    """An unlocked vault as the layers above it use it, whatever stores it.

    ``GranularStorage.load`` reads every row with :meth:`open_rows`, the drainer
    writes batches with :meth:`apply`; :class:`Vault` (SQLite) and
    :class:`keystore.postgres_vault.PostgresVault` both provide them, so the MLS
    layer is written once for both backends.
    """

    def apply(self, changes: Iterable[ChangeLike], *, yield_gil: bool = False) -> int:
        """Land a batch in one transaction (all or nothing); the distinct rows written."""
        ...

    def open_rows(self) -> dict[str, dict[bytes, bytes]]:
        """Every row, authenticated: ``{category: {key: value}}``."""
        ...

    def close(self) -> None:
        """Lock and release the vault (idempotent)."""
        ...


def check_category(category: object) -> str:
    """Validate a category name: 1-128 chars of ``[A-Za-z0-9_.:/-]``, starting alphanumeric."""
    if not isinstance(category, str):
        raise TypeError(f"category must be str, not {type(category).__name__}")
    if not _CATEGORY_RE.fullmatch(category):
        raise ValueError(
            "category must be 1-128 characters of A-Z a-z 0-9 _ . : / - "
            "starting with a letter or digit"
        )
    return category


def check_key(key: object) -> bytes:
    """Validate a row key: bytes, at most 64 KiB."""
    if not isinstance(key, bytes | bytearray):
        raise TypeError(f"row key must be bytes, not {type(key).__name__}")
    if len(key) > MAX_KEY_LEN:
        raise ValueError(f"row key is {len(key)} bytes; the limit is {MAX_KEY_LEN}")
    return bytes(key)


def check_value(value: object) -> bytes:
    """Validate a row value: bytes, at most 64 MiB."""
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"value must be bytes, not {type(value).__name__}")
    if len(value) > MAX_VALUE_LEN:
        raise ValueError(f"value is {len(value)} bytes; the limit is {MAX_VALUE_LEN}")
    return bytes(value)


_CHANGE_FIELDS = operator.attrgetter("category", "key", "value")
_VALUE_TYPES = {bytes, type(None)}
_FIRST, _SECOND, _THIRD, _FOURTH = (operator.itemgetter(i) for i in range(4))
#: A stored value's last 16 bytes: all its state-digest contribution depends on.
_LAST_BLOCK = operator.itemgetter(slice(-16, None))
_COALESCE_SLICE = 4096
#: Seconds ``apply(yield_gil=True)`` sleeps between two slices of rows it encrypts.
_YIELD_PAUSE = 0.0001


def _coalesce(
    rows: list[tuple[object, object, object]],
) -> dict[tuple[str, bytes], bytes | None]:
    """Validate ``(category, key, value)`` rows; the last change of each row wins.

    The common case — exact ``str``/``bytes`` within the limits — is checked slice
    by slice with ``map`` and ``set`` (no bytecode per row); anything else
    goes through the per-row checks, which normalize bytes-like input and raise
    the precise error.
    """
    latest: dict[tuple[str, bytes], bytes | None] = {}
    # Slices, so that no single C-level step holds the GIL for long (see
    # StoreCipher.seal_changes); an unusual slice sends the whole batch the slow way.
    for lo in range(0, len(rows), _COALESCE_SLICE):
        part = rows[lo : lo + _COALESCE_SLICE]
        # Columns by itemgetter: zip(*part) would make one iterator object per row.
        categories = list(map(_FIRST, part))
        keys = list(map(_SECOND, part))
        values = list(map(_THIRD, part))
        try:
            fast = (
                set(map(type, categories)) == {str}
                and set(map(type, keys)) == {bytes}
                and set(map(type, values)) <= _VALUE_TYPES
                and max(map(len, keys)) <= MAX_KEY_LEN
                and max(map(len, filter(None, values)), default=0) <= MAX_VALUE_LEN
            )
        except TypeError:
            fast = False
        if not fast:
            break
        for category in set(categories):
            check_category(category)
        latest.update(zip(zip(categories, keys, strict=True), values, strict=True))
    else:
        return latest
    latest.clear()
    for category, key, value in rows:
        row = (check_category(category), check_key(key))
        latest[row] = None if value is None else check_value(value)
    return latest



def _wipe(*buffers: bytearray | None) -> None:
    for buf in buffers:
        if buf is not None:
            buf[:] = bytes(len(buf))


def new_header(
    kdf_id: int, kdf: KdfParameters | None, secret: bytes, *, flags: int = FLAG_STATE_DIGEST
) -> tuple[Header, StoreCipher, bytearray]:
    """A fresh vault: random store id and secrets, wrapped under a KEK from ``secret``.

    New vaults carry the state-record flag: their record is mandatory from the start.
    Returns ``(header, cipher, kek)``; the caller owns (and wipes) cipher and kek.
    """
    store_id = os.urandom(STORE_ID_LEN)
    header = Header(
        store_id=store_id, kdf_id=kdf_id, kdf=kdf, salt=os.urandom(SALT_LEN),
        key_generation=1, wrap_nonce=bytes(NONCE_LEN), wrapped=bytes(WRAPPED_LEN),
        flags=flags,
    )
    kek = derive_wrapping_key(header, secret)
    cipher = StoreCipher.generate(store_id)
    secrets = cipher.secrets()
    try:
        header = wrap_secrets(kek, header, secrets)
    except BaseException:
        cipher.wipe()
        _wipe(kek)
        raise
    finally:
        _wipe(secrets)
    return header, cipher, kek


def _check_kdf_kind(header: Header, kdf_id: int) -> None:
    """A passphrase for a raw-key vault (or the reverse) is misuse, not a wrong secret."""
    if header.kdf_id != kdf_id:
        if header.kdf_id == KDF_RAW_KEY:
            raise ValueError("this vault is keyed by a raw key: use unlock_with_key()")
        raise ValueError("this vault is keyed by a passphrase: use unlock()")


def open_header(header: Header, kdf_id: int, secret: bytes) -> tuple[StoreCipher, bytearray]:
    """Unwrap a header's secrets: ``(cipher, kek)``; the caller owns (and wipes) both.

    Raises:
        WrongPassphrase: wrong secret or an edited header.
        ValueError: a passphrase for a raw-key vault or the reverse.
    """
    _check_kdf_kind(header, kdf_id)
    kek = derive_wrapping_key(header, secret)
    try:
        secrets = unwrap_secrets(kek, header)
    except BaseException:
        _wipe(kek)
        raise
    try:
        return StoreCipher(secrets, header.store_id), kek
    finally:
        _wipe(secrets)


def seal_batch(
    cipher: StoreCipher, changes: Iterable[ChangeLike], *, pause: float = 0.0
) -> tuple[int, list[SealedRow], list[RowRef]]:
    """Validate, coalesce (last change to a row wins) and seal a batch.

    What :meth:`VaultCore.apply` does before it touches storage, for tests and tools
    that build sealed rows themselves.  Returns ``(distinct rows, upserts, deletes)``.
    """
    latest = _coalesce(list(map(_CHANGE_FIELDS, changes)))
    if not latest:
        return 0, [], []
    upserts, deletes = cipher.seal_changes(latest.items(), len(latest), pause=pause)
    return len(latest), upserts, deletes


def _digest_keys(cipher: StoreCipher) -> DigestKeys:
    secrets = cipher.secrets()
    try:
        return DigestKeys(secrets, cipher.store_id)
    finally:
        _wipe(secrets)


def _kdf_info(header: Header) -> KdfInfo:
    from keystore.reports import KdfInfo

    if header.kdf is None:
        return KdfInfo(kind="raw-key")
    return KdfInfo(
        kind="argon2id",
        time_cost=header.kdf.time_cost,
        memory_cost_kib=header.kdf.memory_cost,
        parallelism=header.kdf.parallelism,
    )


def _load_anchor(anchor: GenerationAnchor, store_id: bytes, where: str) -> int | None:
    """``anchor.load``, with an application anchor's own failure turned into ours."""
    try:
        return anchor.load(store_id)
    except KeystoreError:
        raise
    except Exception as exc:
        raise VaultIOError(
            f"the anchor of vault {where} could not be read ({type(exc).__name__}); "
            "nothing was opened"
        ) from exc


class VaultCore:
    """One vault's keys, state record and rows, over any :class:`VaultBackend`.

    Not opened directly: :class:`keystore.Vault` and
    :class:`keystore.postgres_vault.PostgresVault` build it over their backend.
    Thread-safe: one re-entrant lock serializes every operation on the object.
    """

    def __init__(
        self,
        backend: VaultBackend,
        header: Header,
        *,
        readonly: bool,
        anchor: GenerationAnchor | None = None,
    ) -> None:
        self._backend = backend
        self._header = header
        self._readonly = readonly
        self._anchor = anchor
        self._closed = False
        self._mutex = threading.RLock()
        self._cipher: StoreCipher | None = None
        self._kek: bytearray | None = None
        # The state digest's keys and the state last authenticated or written
        # (docs/format.md §15); None while locked or before the record exists.
        self._digest: DigestKeys | None = None
        self._state: VaultState | None = None
        # {key_hash: last 16 bytes of its stored value} of every live row, while
        # known exactly; None when not (see _remember_tails).  A full read leaves
        # them as two columns, made a dict by the first write (_tails_now).
        self._tails: dict[bytes, bytes] | None = None
        self._tail_columns: tuple[list[bytes], list[bytes]] | None = None

    # ------------------------------------------------------------------ hooks

    def _ready(self) -> None:
        """Raise unless the stored rows can be reached now (closed, or not connected)."""
        self._check_open()

    def _read_stored_header(self) -> Header:
        """The header as stored now (another process may have changed it)."""
        return Header.from_bytes(self._backend.read_header())

    def _header_for_unlock(self) -> Header:
        """The header an unlock unwraps: by default, the stored one read again."""
        return self._read_stored_header()

    def _headers_for_rewrap(self) -> tuple[Header, ...]:
        """The stored headers a passphrase change rewraps (current first)."""
        self._ready()
        return (self._read_stored_header(),)

    def _unwrap_for_rewrap(
        self, kek: bytearray, headers: tuple[Header, ...]
    ) -> list[tuple[Header, bytearray]]:
        """Unwrap the secrets of ``headers`` under the old KEK (WrongPassphrase if not)."""
        return [(headers[0], unwrap_secrets(kek, headers[0]))]

    def _store_rewrapped(self, headers: list[Header]) -> None:
        """Store rewrapped headers atomically (one header: one backend write)."""
        self._backend.write_header(headers[0].to_bytes())

    def _rewrap_and_rekey_together(self) -> bool:
        """Whether a passphrase change with ``rekey`` is one transaction (header in the store)."""
        return True

    def _header_adopted(self, header: Header) -> None:
        """Called after the state record was adopted and ``header`` (flagged) committed."""

    def _commit_rekey(
        self,
        rows: list[tuple[str, bytes, bytes, bytes]],
        header: Header,
        record: bytes | None,
        expected_record: bytes | None,
    ) -> None:
        """A rekey's one transaction: rows, header, counter and record together."""
        self._backend.rehash(rows, header.to_bytes(), len(rows), record, expected_record)

    def _after_rekey(self, header: Header) -> None:
        """Called once a rekey committed and the new keys are installed."""

    def _before_write(self) -> None:
        """Called under the lock before every write is sent to the backend."""

    def _release(self) -> None:
        """Release what the backend holds (connection, writer lock or lease)."""
        self._backend.close()

    def _category_rows(self, category: str) -> list[tuple[bytes, bytes]]:
        """The stored ``(key_hash, value)`` rows of one category, for :meth:`items`."""
        return self._backend.scan(category)

    def _describe(self) -> str:
        """Which vault, for ``repr`` (never a password)."""
        return self.location

    def _stored_bytes(self, row_bytes: int) -> int:
        """What the vault occupies in storage, for ``stats`` (default: its row bytes)."""
        return row_bytes

    def _closed_error(self) -> VaultClosed:
        return VaultClosed(f"vault {self.location} is closed")

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Lock, and release the connection and the writer lock or lease (idempotent)."""
        with self._mutex:
            self._closed = True
            self._drop_keys()
            self._release()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("locked" if self.locked else "unlocked")
        return f"<{type(self).__name__} {self._describe()} {state}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ properties

    @property
    def location(self) -> str:
        """Where the vault lives, for messages and reports (never a password)."""
        return self._backend.location

    @property
    def locked(self) -> bool:
        """Whether the keys are absent (after ``open``, :meth:`lock` or :meth:`close`)."""
        return self._cipher is None

    @property
    def readonly(self) -> bool:
        """Whether this object was opened read-only (no writer lock or lease)."""
        return self._readonly

    @property
    def store_id(self) -> bytes:
        """The random per-vault id bound into every row's AAD."""
        return self._header.store_id

    @property
    def kdf(self) -> KdfParameters | None:
        """The Argon2id parameters in the header, or ``None`` for a raw-key vault."""
        return self._header.kdf

    @property
    def schema_version(self) -> int:
        """The schema version of the storage holding this vault."""
        with self._mutex:
            self._ready()
            return self._backend.schema_version()

    def needs_rehash(self, profile: KdfParameters = RFC_9106_LOW_MEMORY) -> bool:
        """Whether the stored KDF parameters differ from ``profile`` (change passphrase to fix)."""
        kdf = self._header.kdf
        return kdf is not None and not kdf.same_cost(profile)

    @property
    def generation(self) -> int | None:
        """The vault's generation: committed writes since its state record began.

        As authenticated at unlock and advanced by this object's own writes;
        ``None`` while locked, and for a vault from before the state record until
        its first writable unlock (docs/format.md §15).
        """
        with self._mutex:
            return None if self._cipher is None or self._state is None else self._state.generation

    def _stored_state(self, keys: DigestKeys, record: bytes | None) -> VaultState:
        """The state record a write reads in its transaction, authenticated.

        A writable vault carried its record over to the current format at unlock,
        so a missing record, or one of an older format, was removed or put back
        underneath it: refused, and the write writes nothing.
        """
        if record is None:
            raise RollbackDetected(
                f"vault {self.location} has lost its state record; nothing was written",
                reason="record",
            )
        state = keys.open(record)
        if state.state_format != STATE_FORMAT:
            raise RollbackDetected(
                f"vault {self.location} holds a state record of an older format than the "
                "one it was unlocked with: it was put back; nothing was written",
                reason="record",
                generation=state.generation,
            )
        return state

    def raise_generation(self, floor: int) -> int:
        """Lift the vault's generation to at least ``floor``; return the generation now.

        For a restore: a vault rebuilt from an export must not look older than the
        vault it was exported from (or replaces), or that vault's anchor would refuse
        it and a later rollback below the old generation would go unseen.  No row is
        touched; the state record is sealed again in one write transaction (fenced by
        the lease on a shared server).  Generations never go down: a floor at or
        below the current generation leaves the record as it was.

        Raises:
            VaultLocked, VaultIOError: the vault is locked or read-only.
            LeaseLost: another worker holds the vault (shared server).
            RollbackDetected: the state record is missing or fails authentication.
            ValueError: ``floor`` is negative or does not fit in 64 bits.
        """
        if not isinstance(floor, int) or not 0 <= floor < 1 << 64:
            raise ValueError("floor must be a generation between 0 and 2**64 - 1")
        with self._mutex:
            self._writable()
            keys = self._digest
            if keys is None or not self._header.state_digest:
                raise VaultIOError(f"vault {self.location} has no state record to raise")
            raised: list[VaultState] = []

            def lift(record: bytes | None, _old: list[SealedRow] | None) -> bytes:
                state = self._stored_state(keys, record)
                if state.generation < floor:
                    state = replace(state, generation=floor)
                raised.append(state)
                return keys.seal(state)

            self._backend.apply([], [], lift)
            self._state = raised[-1]
            self._update_anchor(self._state.generation)
            return self._state.generation

    # ------------------------------------------------------------------ lock / unlock

    def unlock(self, passphrase: str | bytes) -> None:
        """Unlock with the passphrase.

        Raises:
            WrongPassphrase: wrong passphrase, or the header was edited.
            ValueError: the vault is keyed by a raw key.
            RollbackDetected: the state record is missing or older than the anchor.
        """
        self._unlock(KDF_ARGON2ID, normalize_passphrase(passphrase))

    def unlock_with_key(self, key: bytes) -> None:
        """Unlock a vault created with ``create_with_key``."""
        self._unlock(KDF_RAW_KEY, check_raw_key(key))

    def _unlock(self, kdf_id: int, secret: bytes) -> None:
        with self._mutex:
            self._ready()
            header = self._header_for_unlock()
            if header.store_id != self._header.store_id:
                raise IntegrityError(
                    f"the header of vault {self.location} was replaced by another vault's "
                    "since it was opened; nothing was unlocked"
                )
            cipher, kek = open_header(header, kdf_id, secret)
            self._header = header
            self._install_keys(cipher, kek)

    @staticmethod
    def _check_kdf_kind(header: Header, kdf_id: int) -> None:
        _check_kdf_kind(header, kdf_id)

    def _install_keys(self, cipher: StoreCipher, kek: bytearray) -> None:
        with self._mutex:
            self._drop_keys()
            self._cipher = cipher
            self._kek = kek
            self._open_state()

    def _open_state(self) -> None:
        """At unlock: authenticate the state record and hold it against the anchor.

        A vault from before the record (no header flag) gets one now if writable
        (:meth:`_adopt_state`); read-only, it is left without one.  On any failure
        the keys are dropped again: the vault stays locked and nothing was written.
        """
        cipher = self._cipher
        assert cipher is not None
        try:
            self._digest = _digest_keys(cipher)
            record = self._backend.read_state()
            if self._header.state_digest:
                if record is None:
                    raise RollbackDetected(
                        f"vault {self.location} has lost its state record: it was removed, "
                        "or the vault was made to look older than it is",
                        reason="record",
                    )
                state = self._digest.open(record)
            elif self._readonly:
                # No record to vouch for the rows, but the anchor still dates the
                # vault: a copy from before the record is older than any anchored
                # generation (an unflagged record left by an interrupted adoption
                # counts if it authenticates).
                if self._anchor is not None:
                    check_anchor(self._unflagged_generation(record), self._load_anchor())
                self._state = None
                return
            else:
                state = self._adopt_state(self._digest)
            if self._anchor is not None:
                check_anchor(state.generation, self._load_anchor())
            if state.state_format != STATE_FORMAT and not self._readonly:
                state = self._reseal_state(self._digest)
            self._state = state
            if state.row_count == 0 and self._tails_now() is None:
                # An authenticated record of no rows vouches for the empty set: the
                # tails of every live row the record counts are known (none).
                self._remember_tails([], [])
            if not self._readonly:
                self._update_anchor(state.generation)
        except BaseException:
            self._drop_keys()
            raise

    def _adopt_state(self, keys: DigestKeys) -> VaultState:
        """Give a vault from before the state record its record, once (format.md §7.2).

        One write transaction authenticates every row (so the record vouches only
        for rows this vault wrote), stores the record at generation 0 and the header
        with the flag that makes the record mandatory.  A record already there (a
        crash between a SQLCipher vault's commit and its header file's update) is
        checked against the rows and kept.
        """
        cipher = self._unlocked()
        assert self._kek is not None
        flagged = replace(self._header, flags=self._header.flags | FLAG_STATE_DIGEST)
        secrets = cipher.secrets()
        try:
            new_header = wrap_secrets(self._kek, flagged, secrets)
        finally:
            _wipe(secrets)
        adopted: list[VaultState] = []
        checked: list[list[SealedRow]] = []
        # Read before the transaction, checked inside it: a copy older than the
        # anchor is refused before its record and header flag are written.
        anchored = None if self._anchor is None else self._load_anchor()

        def build(rows: list[SealedRow], record: bytes | None) -> tuple[bytes, bytes]:
            cipher.open_rows(rows, self._stored_category, self._stored_blob)
            checked.append(rows)
            digest = RowSetDigest(keys)
            digest.add(rows)
            if record is not None:
                state = check_rows(keys, record, digest)
            else:
                state = digest.state(0)
                record = keys.seal(state)
            check_anchor(state.generation, anchored)
            adopted.append(state)
            return record, new_header.to_bytes()

        self._backend.adopt_state(build)
        self._header_adopted(new_header)
        self._header = new_header
        self._remember_rows(checked[-1])
        return adopted[-1]

    def _unflagged_generation(self, record: bytes | None) -> int:
        """The generation a vault without the record flag can claim: that of a record
        left by an interrupted adoption if it authenticates, else 0."""
        assert self._digest is not None
        if record is None:
            return 0
        try:
            return self._digest.open(record).generation
        except IntegrityError:
            return 0

    def _reseal_state(self, keys: DigestKeys) -> VaultState:
        """Carry a state record of an older format over to the current one, once, at
        the first writable unlock (docs/format.md §15.6): one write transaction
        authenticates every row, checks them against the old record and stores the
        next generation's record in the current format (the header is left as is)."""
        cipher = self._unlocked()
        resealed: list[VaultState] = []
        checked: list[list[SealedRow]] = []

        def build(rows: list[SealedRow], record: bytes | None) -> tuple[bytes, None]:
            cipher.open_rows(rows, self._stored_category, self._stored_blob)
            checked.append(rows)
            digest = RowSetDigest.both_formats(keys)
            digest.add(rows)
            state, new_record = reseal(keys, record, digest)
            resealed.append(state)
            return new_record, None

        self._backend.adopt_state(build)
        self._remember_rows(checked[-1])
        return resealed[-1]

    def _load_anchor(self) -> int | None:
        assert self._anchor is not None
        return _load_anchor(self._anchor, self._header.store_id, self.location)

    def _update_anchor(self, generation: int) -> None:
        """Tell the anchor about a committed generation (after the commit, never before)."""
        if self._anchor is None:
            return
        try:
            self._anchor.store(self._header.store_id, generation)
        except KeystoreError as exc:
            # Our own anchors' errors name the anchor, not the vault: say that the
            # write landed, so a caller does not take it for a failed write.
            raise VaultIOError(
                f"vault {self.location} is at generation {generation}, but its anchor could "
                f"not be updated ({exc}); the write itself was committed"
            ) from exc
        except Exception as exc:
            raise VaultIOError(
                f"vault {self.location} is at generation {generation}, but its anchor could "
                f"not be updated ({type(exc).__name__}); the write itself was committed"
            ) from exc

    def _check_state(self, rows: list[SealedRow], record: bytes | None) -> list[bytes] | None:
        """Raise RollbackDetected unless ``rows`` (every live row, already authenticated)
        are the set the state record vouches for, no older than the anchor.  Returns
        the rows' value tails once checked (``None`` when the vault has no record to
        check them with)."""
        digest = self._scan_digest()
        if digest is None:
            return None
        tails = digest.add_keeping_tails(rows)
        self._check_digest(digest, record)
        return tails

    def _remember_rows(self, rows: list[SealedRow]) -> None:
        """:meth:`_remember_tails` of rows (authenticated and checked) in hand."""
        self._remember_tails(list(map(_SECOND, rows)), list(map(_LAST_BLOCK, map(_THIRD, rows))))

    def _tails_now(self) -> dict[bytes, bytes] | None:
        """The tails kept, as a dict (built on first use after a full read: the load
        that read them does not pay for the hash table), or ``None``."""
        columns = self._tail_columns
        if columns is not None:
            self._tail_columns = None
            self._tails = dict(zip(*columns, strict=True))
        return self._tails

    def _forget_tails(self) -> None:
        self._tails = self._tail_columns = None

    def _remember_tails(self, key_hashes: list[bytes], tails: list[bytes]) -> None:
        """Keep, from a full read just checked against the state record, the last 16
        bytes of every live row's value (``tails``, in the order of ``key_hashes``):
        what ``apply`` subtracts from the digest for the rows it replaces or deletes,
        so it need not read them back.  Keyed by key hash alone: a key hash is a
        keyed hash of category and key, so two live rows never share one.

        Only a writable vault keeps them (only writes use them), only up to
        ``_TAIL_CACHE_MAX_ROWS`` rows, and only from rows that were all authenticated
        and matched the record: the cache then holds exactly the set the record
        vouches for.  From then on it changes only after a write committed (the new
        tails of its upserts, its deletes removed); any exception from a write,
        whether or not it committed, drops it, as do lock, close and a failed rekey
        (a rekey that commits rebuilds it from the rows it wrote).  Without it, or
        once dropped, ``apply`` reads the replaced values back in its transaction as
        before, until the next full read.

        It cannot go stale behind the vault's back, because nothing but this object
        writes the rows while it holds the writer lease:

        * SQLite: the writer lock file is an exclusive ``flock`` held from open to
          close; a second writable ``Vault`` (in this process or another) is refused,
          and a forked child cannot use this object.
        * PostgreSQL: every write is fenced by the lease epoch in its own
          transaction, and a ``PostgresVault`` never acquires a lease again after
          open.  A writer that took the lease over has a higher epoch, so every
          later write of this object raises ``LeaseLost`` (which drops the cache)
          before it writes anything.  A write retried after a lost connection reads
          the replaced values back (the backend's ``old_known`` covers one attempt).

        Someone who edits the storage directly while the vault is open (an attacker
        with write access) is not seen by the cache: the vault subtracts the tail it
        wrote, not the one the attacker put there, so the record vouches for the
        rows the vault wrote and disagrees with the rows on disk.  The next full read
        (unlock + load, ``open_rows``, ``verify``, a rekey) raises ``RollbackDetected``
        — the same outcome as when the replaced values are read back.
        """
        self._forget_tails()
        if not self._readonly and _state_digest_enabled and len(tails) <= _TAIL_CACHE_MAX_ROWS:
            self._tail_columns = (key_hashes, tails)

    def _scan_digest(self) -> RowSetDigest | None:
        """An empty digest to accumulate a full scan into, or ``None`` if not checked."""
        if not _state_digest_enabled or self._digest is None or not self._header.state_digest:
            return None
        return RowSetDigest(self._digest)

    def _check_digest(self, digest: RowSetDigest, record: bytes | None) -> None:
        assert self._digest is not None
        state = check_rows(self._digest, record, digest)
        if self._anchor is not None:
            check_anchor(state.generation, self._load_anchor())

    def _drop_keys(self) -> None:
        self._forget_tails()
        if self._digest is not None:
            self._digest.wipe()
            self._digest = None
        self._state = None
        if self._cipher is not None:
            self._cipher.wipe()
            self._cipher = None
        _wipe(self._kek)
        self._kek = None

    def lock(self) -> None:
        """Drop (overwrite) every key held in memory; the writer lock or lease is kept."""
        with self._mutex:
            self._drop_keys()

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    def _unlocked(self) -> StoreCipher:
        self._ready()
        if self._cipher is None:
            raise VaultLocked(f"vault {self.location} is locked; unlock it first")
        return self._cipher

    def _writable(self) -> StoreCipher:
        cipher = self._unlocked()
        if self._readonly:
            raise VaultIOError(f"vault {self.location} was opened read-only")
        return cipher

    # ------------------------------------------------------------------ rows

    def put(self, category: str, key: bytes, value: bytes) -> None:
        """Write one row (one transaction)."""
        self.apply((Change(category, key, value),))

    def delete(self, category: str, key: bytes) -> None:
        """Delete one row if present (one transaction)."""
        self.apply((Change(category, key, None),))

    def get(self, category: str, key: bytes) -> bytes | None:
        """Read and authenticate one row; ``None`` when absent.

        Raises:
            IntegrityError: the stored row fails authentication.
        """
        category, key = check_category(category), check_key(key)
        with self._mutex:
            cipher = self._unlocked()
            key_hash = cipher.key_hash(category, key)
            blob = self._backend.get(category, key_hash)
            if blob is None:
                return None
            _, value = cipher.decrypt_row(category, key_hash, blob)
            return value

    def items(self, category: str) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key, value)`` of a category, authenticated, in key-hash order."""
        category = check_category(category)
        with self._mutex:
            self._unlocked()
            rows = self._category_rows(category)
        for key_hash, blob in rows:
            with self._mutex:
                cipher = self._unlocked()
                yield cipher.decrypt_row(category, key_hash, blob)

    def categories(self) -> list[str]:
        """The categories that hold at least one row, sorted."""
        with self._mutex:
            self._unlocked()
            names = self._backend.categories()
        for name in names:
            self._stored_category(name)  # the vault never writes another name: damage
        return names

    def open_rows(self) -> dict[str, dict[bytes, bytes]]:
        """Every row of the vault, authenticated: ``{category: {key: value}}``.

        What loading a whole vault into memory needs (``GranularStorage.load``): one
        scan, in one snapshot with the state record, read and decrypted a batch at a
        time with the per-category state looked up once per category.  All or
        nothing: a row that fails authentication raises and nothing is returned.

        Raises:
            VaultLocked, VaultClosed: the vault cannot be read now.
            IntegrityError: a row fails authentication or the storage is damaged.
            RollbackDetected: every row authenticates, but they are not the rows the
                state record vouches for (a row put back, deleted or re-inserted),
                or the vault is older than its anchor.
        """
        with self._mutex:
            cipher = self._unlocked()
            opened: dict[str, dict[bytes, bytes]] = {}
            key_hashes: list[bytes] = []
            tails: list[bytes] = []
            # A batch at a time, in one read snapshot: the sealed values of the whole
            # vault are never all in memory at once (holding them cost more than the
            # decryption saved by one big call), and decrypting under the lock means
            # a concurrent lock() waits instead of wiping the keys mid-scan.
            with self._backend.read_snapshot(ordered=False) as snap:
                digest = self._scan_digest()
                for batch in snap.batches():
                    part = cipher.open_rows(batch, self._stored_category, self._stored_blob)
                    for name, rows_of in part.items():
                        into = opened.get(name)
                        if into is None:
                            opened[name] = rows_of
                        else:
                            into.update(rows_of)
                    if digest is not None:  # the batch authenticated: well-typed rows
                        tails += digest.add_keeping_tails(batch)
                        key_hashes += map(_SECOND, batch)
                if digest is not None:
                    self._check_digest(digest, snap.state_record())
            if digest is not None:
                self._remember_tails(key_hashes, tails)
            return opened

    def _stored_category(self, name: object) -> str:
        """A category name read back from storage; anything the vault never writes is damage."""
        try:
            return check_category(name)
        except (TypeError, ValueError):
            raise IntegrityError(
                f"vault {self.location} is corrupt: a row has an invalid category name"
            ) from None

    def _stored_blob(self, value: object) -> bytes:
        """A key hash or sealed value read back from storage; a non-blob is damage."""
        if isinstance(value, bytes):
            return value
        raise IntegrityError(
            f"vault {self.location} is corrupt: a stored key hash or value is not a blob"
        )

    def apply(self, changes: Iterable[ChangeLike], *, yield_gil: bool = False) -> int:
        """Write and delete many rows in ONE transaction: all applied or none.

        Repeated changes to the same row are coalesced (the last wins), so a batch
        from a dirty log writes each row once.  Every change is validated and
        encrypted before the transaction begins: bad input changes nothing.  The
        state record is advanced in the same transaction, from the values the
        batch replaces, so the record and the rows never disagree.

        Args:
            changes: the rows to write (``value`` set) or delete (``value=None``).
            yield_gil: pause for a tenth of a millisecond after every 256 rows
                encrypted, so that an event loop running in another thread of this
                process gets the GIL within about a millisecond instead of after
                the interpreter's switch interval (5 ms by default).  For callers
                on a worker thread beside an event loop; ``AsyncDrainer`` sets it.

        Returns:
            The number of distinct rows written or deleted.

        Raises:
            VaultLocked, VaultClosed, VaultIOError (read-only or storage failure),
            VaultBusy (another writer; ``LeaseLost`` on a shared server),
            RollbackDetected (the state record is gone): nothing was written.
        """
        latest = _coalesce(list(map(_CHANGE_FIELDS, changes)))
        if not latest:
            return 0
        with self._mutex:
            cipher = self._writable()
            upserts, deletes = cipher.seal_changes(
                latest.items(), len(latest), pause=_YIELD_PAUSE if yield_gil else 0.0
            )
            self._before_write()
            keys = self._digest
            if not _state_digest_enabled or keys is None:
                self._forget_tails()  # a write the digest does not follow
                self._backend.apply(upserts, deletes)
                return len(latest)
            advanced: list[VaultState] = []
            tails = self._tails_now()
            # The tails this batch replaces or deletes, from memory (new rows have none;
            # a kept tail is never empty: it comes from a value that authenticated).
            known = None if tails is None else list(filter(None, map(
                tails.get, chain(map(_SECOND, upserts), map(_SECOND, deletes))
            )))

            def advance(record: bytes | None, old: list[SealedRow] | None) -> bytes:
                # O(rows changed): subtract what the batch overwrites, add what it writes.
                current = self._stored_state(keys, record)
                digest = RowSetDigest.of_state(keys, current)
                if old is not None:
                    digest.remove(old)
                else:
                    assert known is not None  # the backend skips the read only if asked
                    digest.remove_tails(known)
                digest.add(upserts)
                state = digest.state(current.generation + 1)
                advanced.append(state)
                return keys.seal(state)

            try:
                self._backend.apply(upserts, deletes, advance, old_known=known is not None)
            except BaseException:
                self._forget_tails()  # committed or not: the rows are no longer known
                raise
            if tails is not None:
                deque(map(tails.pop, map(_SECOND, deletes), repeat(None)), maxlen=0)
                tails.update(value_tails(upserts))
                if len(tails) > _TAIL_CACHE_MAX_ROWS:
                    self._tails = None
            self._state = advanced[-1]
            self._update_anchor(self._state.generation)
        return len(latest)

    # ------------------------------------------------------------------ keys

    def change_passphrase(
        self,
        old: str | bytes,
        new: str | bytes,
        *,
        kdf: KdfParameters | None = None,
        rekey: bool = False,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Rewrap the two secrets under a new passphrase: O(1), atomic, no row touched.

        Works locked or unlocked.  ``kdf`` optionally moves to new Argon2id
        parameters at the same time (see :meth:`needs_rehash`).

        A rewrap alone does not revoke the old passphrase: whoever holds an earlier
        copy of the header (an old backup, a synced copy) and learns the old
        passphrase still unwraps the same secrets, which read every later row.
        ``rekey=True`` closes that: the secrets themselves are replaced too (new
        data key and hash key, every row re-encrypted and re-hashed, as
        :meth:`rekey`), so an old header opens nothing written from now on.  It
        needs the vault unlocked and writable.  The new header and the rewritten
        rows are one transaction, except on a SQLCipher vault, which takes two
        atomic steps (the rewrap, then its rekey): a crash between them leaves the
        new passphrase in force and the old secrets in use, and the rekey can
        simply be run again.

        Args:
            progress: with ``rekey``, called as ``progress(done, total)``.

        Raises:
            WrongPassphrase: ``old`` is wrong.
            IntegrityError: the stored header does not belong to this vault's keys
                (another vault's header was put in); nothing was written.
            VaultLocked: ``rekey=True`` on a locked vault.
            LeaseLost: (shared server) another worker holds the vault.
        """
        old_secret, new_secret = normalize_passphrase(old), normalize_passphrase(new)
        if kdf is not None and not isinstance(kdf, KdfParameters):
            raise TypeError("kdf must be a keystore.profiles.KdfParameters")
        self._rewrap(KDF_ARGON2ID, old_secret, new_secret, kdf, rekey=rekey, progress=progress)

    def change_key(self, old: bytes, new: bytes, *, rekey: bool = False) -> None:
        """Rewrap the secrets of a raw-key vault under a new 32-byte key (O(1), atomic).

        ``rekey`` is as in :meth:`change_passphrase`.
        """
        self._rewrap(KDF_RAW_KEY, check_raw_key(old), check_raw_key(new), None, rekey=rekey)

    def _rewrap(
        self, kdf_id: int, old: bytes, new: bytes, kdf: KdfParameters | None,
        *, rekey: bool = False, progress: ProgressCallback | None = None,
    ) -> None:
        """Rewrap the secrets under a new KEK and store the header(s) atomically.

        Every stored header (a SQLCipher vault's header file may also hold a pending
        one) is rewrapped under one new salt.  With ``rekey`` the secrets are
        replaced as well (see :meth:`change_passphrase`).
        """
        with self._mutex:
            if rekey:
                self._writable()  # before any KDF runs: a locked vault cannot rekey
            self._check_open()
            if self._readonly:
                raise VaultIOError(f"vault {self.location} was opened read-only")
            headers = self._headers_for_rewrap()
            self._check_kdf_kind(headers[0], kdf_id)
            old_kek = derive_wrapping_key(headers[0], old)
            try:
                keyed = self._unwrap_for_rewrap(old_kek, headers)
            finally:
                _wipe(old_kek)
            salt = os.urandom(SALT_LEN)
            new_kek: bytearray | None = None
            try:
                self._check_header_is_ours(keyed)
                rewrapped: list[Header] = []
                for header, secrets in keyed:
                    fresh = replace(header, kdf=kdf if kdf is not None else header.kdf, salt=salt)
                    if new_kek is None:  # every header shares salt and KDF: one derivation
                        new_kek = derive_wrapping_key(fresh, new)
                    rewrapped.append(wrap_secrets(new_kek, fresh, secrets))
            except BaseException:
                _wipe(new_kek)
                raise
            finally:
                _wipe(*(s for _, s in keyed))
            assert new_kek is not None
            if rekey and self._rewrap_and_rekey_together():
                # New secrets, rows and the header under the new passphrase in one
                # transaction.  Takes over new_kek.
                self._rekey(progress, new_kek=new_kek, template=rewrapped[0])
                return
            try:
                self._store_rewrapped(rewrapped)
            except BaseException:
                _wipe(new_kek)
                raise
            in_use = self._header.key_generation
            self._header = next(
                (h for h in rewrapped if h.key_generation == in_use), rewrapped[0]
            )
            if self._kek is not None:
                _wipe(self._kek)
                self._kek = new_kek
            else:
                _wipe(new_kek)
            if rekey:
                self._rekey(progress)

    def _check_header_is_ours(self, keyed: list[tuple[Header, bytearray]]) -> None:
        """Refuse a header that the old passphrase opens but that is not this vault's.

        Someone who can write the storage may put in the header of another vault
        that shares the passphrase; rewrapping it would silently re-key this vault
        to secrets that decrypt none of its rows (reads would then find nothing).
        The store id must match, and when this object holds the keys, the secrets
        unwrapped must be the ones it holds (compared in constant time).
        """
        for header, _ in keyed:
            if header.store_id != self._header.store_id:
                raise IntegrityError(
                    f"the header in vault {self.location} belongs to another vault (its "
                    "store id differs from the one opened): it was replaced; nothing was "
                    "written"
                )
        if self._cipher is None:
            return
        held = self._cipher.secrets()
        try:
            same = [
                hmac.compare_digest(bytes(secrets), bytes(held))
                for header, secrets in keyed
                if header.key_generation == self._header.key_generation
            ]
        finally:
            _wipe(held)
        if not any(same):
            raise IntegrityError(
                f"the header in vault {self.location} does not wrap the keys this vault "
                "holds (its key check failed): it was replaced; nothing was written"
            )

    def rekey(self, progress: ProgressCallback | None = None) -> None:
        """Replace both secrets and re-encrypt and re-hash every row, in one transaction.

        A new random data key encrypts every row, and a new hash key re-hashes every
        row key, so an old copy of the header (with its passphrase) neither decrypts
        nor recognizes anything written from now on.  Every row is authenticated
        under the old keys, and the set of rows checked against the state record,
        first: a corrupt or rolled-back row aborts the rekey and nothing is written.
        The record is sealed afresh under the new keys one generation on, and the
        nonce-budget counter restarts.

        A SQLCipher vault's page key derives from the secrets, so it changes too:
        see ``docs/sqlcipher.md`` for its four crash-safe steps.

        Args:
            progress: called as ``progress(done, total)`` while rows are re-encrypted.

        Raises:
            IntegrityError: a row fails authentication; nothing is written.
            RollbackDetected: the rows are not the ones the record vouches for, or
                they changed underneath; nothing is written.
        """
        with self._mutex:
            self._rekey(progress)

    def _rekey(
        self,
        progress: ProgressCallback | None,
        *,
        new_kek: bytearray | None = None,
        template: Header | None = None,
    ) -> None:
        """:meth:`rekey`; with ``new_kek`` and ``template`` the new header is wrapped
        under ``new_kek`` with ``template``'s salt and KDF, in the same transaction:
        a passphrase change and rekey in one atomic step.  ``new_kek`` is taken over
        (installed, or wiped on failure).
        """
        try:
            old = self._writable()
            assert self._kek is not None
            kek = self._kek if new_kek is None else new_kek
            base = self._header if template is None else template
            rows, record = self._backend.scan_with_state()
        except BaseException:
            _wipe(new_kek)
            raise
        total = len(rows)
        # Both secrets are new: the hash key rotates with the data key, so stored
        # key hashes change too and an old header cannot even confirm a row key.
        new = StoreCipher.generate(old.store_id)
        new_digest: DigestKeys | None = None
        try:
            rehashed: list[tuple[str, bytes, bytes, bytes]] = []
            step = max(1, total // 100)
            for i, (category, key_hash, blob) in enumerate(rows):
                name = self._stored_category(category)
                kh = self._stored_blob(key_hash)
                key, value = old.decrypt_row(name, kh, self._stored_blob(blob))
                new_hash = new.key_hash(name, key)
                rehashed.append((name, kh, new_hash, new.encrypt_row(name, new_hash, key, value)))
                if progress is not None and (i % step == 0):
                    progress(i, total)
            # The new keys give new digest keys: the record is sealed afresh over
            # the new ciphertexts, one generation on, in the rows' transaction --
            # after checking the old rows against the old record, or a row put back
            # before the rekey would be vouched for from then on.
            new_state = VaultState(0, 0, 0)
            new_record: bytes | None = None
            if self._digest is not None and self._header.state_digest:
                self._check_state(rows, record)
                previous = self._digest.open(record).generation if record is not None else 0
                new_digest = _digest_keys(new)
                running = RowSetDigest(new_digest)
                running.add((c, nk, v) for c, _, nk, v in rehashed)
                new_state = running.state(previous + 1)
                new_record = new_digest.seal(new_state)
            secrets = new.secrets()
            try:
                next_header = wrap_secrets(
                    kek,
                    Header(
                        store_id=base.store_id,
                        kdf_id=base.kdf_id,
                        kdf=base.kdf,
                        salt=base.salt,
                        key_generation=self._header.key_generation + 1,
                        wrap_nonce=base.wrap_nonce,
                        wrapped=base.wrapped,
                        flags=base.flags,
                    ),
                    secrets,
                )
            finally:
                _wipe(secrets)
            self._before_write()
            self._forget_tails()  # until the rekey committed: the rows are in flux
            self._commit_rekey(rehashed, next_header, new_record, record)
        except BaseException:
            new.wipe()
            if new_digest is not None:
                new_digest.wipe()
            _wipe(new_kek)
            raise
        # The rows are committed under the new secrets: from here on they are the
        # keys in use, whatever happens to any later step.
        self._header = next_header
        old.wipe()
        self._cipher = new
        if new_kek is not None:
            _wipe(self._kek)
            self._kek = new_kek
        if new_digest is not None:
            if self._digest is not None:
                self._digest.wipe()
            self._digest, self._state = new_digest, new_state
            # The rows just committed, checked against the old record before: the
            # new record vouches for exactly these.
            self._remember_tails(
                list(map(_THIRD, rehashed)), list(map(_LAST_BLOCK, map(_FOURTH, rehashed)))
            )
            self._update_anchor(new_state.generation)
        self._after_rekey(next_header)
        if progress is not None:
            progress(total, total)

    # ------------------------------------------------------------------ reports

    def stats(self) -> StatsReport:
        """Rows and bytes per category and the nonce budget.

        Needs no key (a SQLCipher vault hides exactly these figures until it is
        unlocked: :class:`VaultLocked` before).
        """
        with self._mutex:
            self._ready()
            per_cat = self._backend.category_counts()
            encryptions = self._backend.encryptions()
            version = self._backend.schema_version()
            header = self._header
            row_bytes = sum(b for _, _, b in per_cat)
            stored = self._stored_bytes(row_bytes)
        from keystore.reports import REKEY_RECOMMENDED_AT, CategoryStats, StatsReport

        cats = {c: CategoryStats(rows=n, bytes=b) for c, n, b in per_cat}
        return StatsReport(
            path=self.location,
            store_id=header.store_id.hex(),
            schema_version=version,
            header_format=HEADER_FORMAT,
            sqlcipher=header.sqlcipher,
            kdf=_kdf_info(header),
            key_generation=header.key_generation,
            categories=cats,
            total_rows=sum(c.rows for c in cats.values()),
            total_bytes=row_bytes,
            file_bytes=stored,
            encryptions=encryptions,
            budget_used=encryptions / float(2**32),
            rekey_recommended=encryptions >= REKEY_RECOMMENDED_AT,
        )

    @contextlib.contextmanager
    def read_snapshot(self) -> Iterator[Snapshot]:
        """Read every row from ONE consistent state of the vault.

        Inside the ``with`` block, a batch another writer commits meanwhile is seen
        entirely or not at all, never half.  This object's other threads wait until
        the block ends (it holds this vault's lock), so keep it short-lived.

        ::

            with vault.read_snapshot() as snap:
                for category, key, value in snap:
                    ...

        The snapshot's :attr:`Snapshot.generation` is the generation of the rows it
        holds (read from the state record of the same moment), which may be ahead of
        :attr:`generation` when another process wrote since this object's unlock.

        Raises:
            VaultLocked: the vault is locked.
            IntegrityError: a row fails authentication.
            RollbackDetected: the state record of the snapshot is missing or fails
                authentication (on entry), or the rows are not the set it vouches
                for (on entry when the backend fetched them whole, else after the
                last row is yielded).
        """
        with self._mutex:
            cipher = self._unlocked()
            with self._backend.read_snapshot() as snap:
                generation = self._snapshot_generation(snap.state_record())
                if snap.in_memory:
                    # Already fetched whole: check everything before the caller acts
                    # on any row.
                    rows = [row for batch in snap.batches() for row in batch]
                    cipher.open_rows(rows, self._stored_category, self._stored_blob)
                    self._check_state(rows, snap.state_record())
                yield Snapshot(
                    self, snap, cipher, checked=snap.in_memory, generation=generation
                )

    def _snapshot_generation(self, record: bytes | None) -> int | None:
        """The generation a snapshot's state record vouches for, its tag checked.

        ``None`` for a vault without a state record (one from before the record,
        opened read-only).  The record's tag is checked here, so the number is this
        vault's own; that the rows are the ones it vouches for is checked by the
        snapshot itself (on entry or after its last row).
        """
        if self._digest is None or not self._header.state_digest:
            return None
        if record is None:
            raise RollbackDetected(
                f"vault {self.location} has lost its state record: it was removed, "
                "or the vault was made to look older than it is",
                reason="record",
            )
        return self._digest.open(record).generation

    def verify(self) -> VerifyReport:
        """Decrypt and authenticate every row, in one read snapshot; list the failures.

        Failures are reported by category and key hash only, never plaintext.
        When every row authenticates, the set of rows is checked against the
        vault's state record too (docs/format.md §15).

        Raises:
            RollbackDetected: every row authenticates, but they are not the rows
                the state record vouches for (a row put back, deleted or re-inserted).
        """
        from keystore.reports import RowFailure, VerifyReport

        with self._mutex:
            cipher = self._unlocked()
            rows, record = self._backend.scan_with_state()
            failures = []
            for category, key_hash, blob in rows:
                try:
                    cipher.decrypt_row(
                        str(category), self._stored_blob(key_hash), self._stored_blob(blob)
                    )
                except IntegrityError as exc:
                    failures.append(
                        RowFailure(
                            category=str(category),
                            key_hash=key_hash.hex() if isinstance(key_hash, bytes) else "",
                            reason=str(exc).split(" in category")[0],
                        )
                    )
            tails = None if failures else self._check_state(rows, record)
            if tails is not None:
                self._remember_tails(list(map(_SECOND, rows)), tails)
        return VerifyReport(ok=not failures, rows_checked=len(rows), failures=failures)


class Snapshot:
    """The rows of a vault as of one moment; made by :meth:`VaultCore.read_snapshot`.

    Iterating yields ``(category, key, value)``, authenticated, in category and
    key-hash order, a batch at a time (a SQLite vault never holds the whole vault
    in memory for it).
    """

    __slots__ = ("_checked", "_cipher", "_snap", "_vault", "generation", "rows")

    def __init__(
        self,
        vault: VaultCore,
        snap: RowSnapshot,
        cipher: StoreCipher,
        *,
        checked: bool,
        generation: int | None = None,
    ) -> None:
        self._vault = vault
        self._snap = snap
        self._cipher = cipher
        self._checked = checked
        #: How many rows the snapshot holds.
        self.rows = snap.count
        #: The generation of exactly these rows: the one the state record read in the
        #: same snapshot vouches for (its tag checked on entry), not the generation
        #: this vault object saw at unlock -- another process may have written since.
        #: What an export must carry.  Like the rows, trust it only once the
        #: iteration ended without an error (that is when the rows were checked
        #: against it, unless the backend fetched them whole and they were checked
        #: on entry).  ``None`` for a vault without a state record.
        self.generation = generation

    def __iter__(self) -> Iterator[tuple[str, bytes, bytes]]:
        """Yield every row; after the last one, check them against the state record.

        Raises:
            IntegrityError: a row fails authentication.
            RollbackDetected: (after the last row) they are not the rows the state
                record vouches for; a consumer must not trust what it read before.
        """
        vault = self._vault
        digest = None if self._checked else vault._scan_digest()
        for batch in self._snap.batches():
            for category, key_hash, blob in batch:
                if vault.locked:
                    raise VaultLocked(f"vault {vault.location} was locked during the read")
                name = vault._stored_category(category)
                key, value = self._cipher.decrypt_row(
                    name, vault._stored_blob(key_hash), vault._stored_blob(blob)
                )
                yield name, key, value
            if digest is not None:  # every row of the batch authenticated: well-typed
                digest.add(batch)
        if digest is not None:
            vault._check_digest(digest, self._snap.state_record())
