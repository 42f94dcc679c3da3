"""The store cipher: row encryption, row-key hashing, and wrapping of the vault secrets.

Key hierarchy (StoreCipher-style, see ``docs/format.md``)::

    passphrase --Argon2id(salt, t, m, p)--> KEK ---+
    raw key    --HKDF-SHA256(salt)--------> KEK ---+--AES-256-GCM wrap--> data_key || hash_key
                                                   (AAD = header)
    data_key: AES-256-GCM over every row value
    hash_key: BLAKE2b-256 keyed hash of row keys, one derived key per category

The two secrets are random and independent of the passphrase, so changing the
passphrase rewraps 64 bytes and touches no row.

Python cannot promise that secrets leave memory: ``bytes`` objects are immutable
and may be copied by the interpreter, and OpenSSL keeps its own copy inside an
``AESGCM`` object.  We keep our copies in ``bytearray`` objects that :meth:`wipe`
overwrites, and drop every reference to derived objects, which is the best a pure
Python library can do.  See ``docs/threat-model.md``.
"""

from __future__ import annotations

import hashlib
import operator
import os
import struct
import time
import unicodedata
from collections.abc import Callable, Iterable
from itertools import compress, repeat
from typing import Any

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keystore.errors import IntegrityError, WrongPassphrase
from keystore.header import (
    KDF_ARGON2ID,
    NONCE_LEN,
    WRAPPED_LEN,
    Header,
)

__all__ = [
    "KEY_LEN",
    "VALUE_FORMAT",
    "StoreCipher",
    "derive_wrapping_key",
    "normalize_passphrase",
    "unwrap_secrets",
    "wrap_secrets",
]

KEY_LEN = 32
VALUE_FORMAT = 1
_VALUE_PREFIX = bytes([VALUE_FORMAT])
_MIN_VALUE_LEN = 1 + NONCE_LEN + 4 + 16
_NONCE_END = 1 + NONCE_LEN
_RAW_KEY_INFO = b"mls-keystore v1 raw-key wrap"
_CATEGORY_PERSON = b"mlks-category"
_ROW_PERSON = b"mlks-row-key"
_LEN = struct.Struct(">I")
_U16 = struct.Struct(">H")


def normalize_passphrase(passphrase: str | bytes) -> bytes:
    """Turn a passphrase into the exact bytes fed to Argon2id.

    ``str`` passphrases are NFC-normalized before UTF-8 encoding, so the same
    passphrase typed on systems that compose accents differently still unlocks.

    Raises:
        TypeError: not ``str`` or ``bytes``.
        ValueError: empty.
    """
    if isinstance(passphrase, str):
        data = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    elif isinstance(passphrase, bytes | bytearray):
        data = bytes(passphrase)
    else:
        raise TypeError("passphrase must be str or bytes")
    if not data:
        raise ValueError("passphrase must not be empty")
    return data


def check_raw_key(key: bytes) -> bytes:
    """Validate a caller-supplied raw key (32 bytes)."""
    if not isinstance(key, bytes | bytearray):
        raise TypeError("raw key must be bytes")
    if len(key) != KEY_LEN:
        raise ValueError(f"raw key must be exactly {KEY_LEN} bytes, got {len(key)}")
    return bytes(key)


def derive_wrapping_key(header: Header, secret: bytes) -> bytearray:
    """Derive the key-encryption key (KEK) that wraps the vault's two secrets.

    ``secret`` is the normalized passphrase for Argon2id headers and the 32-byte raw
    key for raw-key headers.
    """
    if header.kdf_id == KDF_ARGON2ID:
        assert header.kdf is not None
        return bytearray(
            hash_secret_raw(
                secret,
                header.salt,
                time_cost=header.kdf.time_cost,
                memory_cost=header.kdf.memory_cost,
                parallelism=header.kdf.parallelism,
                hash_len=KEY_LEN,
                type=Type.ID,
            )
        )
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=header.salt, info=_RAW_KEY_INFO)
    return bytearray(hkdf.derive(secret))


def wrap_secrets(kek: bytearray, header: Header, secrets: bytearray) -> Header:
    """Return ``header`` carrying ``secrets`` (data key || hash key) wrapped under ``kek``."""
    nonce = os.urandom(NONCE_LEN)
    wrapped = AESGCM(bytes(kek)).encrypt(nonce, bytes(secrets), header.authenticated_part())
    return header.with_wrap(nonce, wrapped)


def unwrap_secrets(kek: bytearray, header: Header) -> bytearray:
    """Unwrap data key || hash key.

    Raises:
        WrongPassphrase: the KEK is wrong or any header field was edited.
    """
    try:
        secrets = AESGCM(bytes(kek)).decrypt(
            header.wrap_nonce, header.wrapped, header.authenticated_part()
        )
    except InvalidTag:
        raise WrongPassphrase(
            "wrong passphrase or key (or the vault header was modified)"
        ) from None
    if len(secrets) != WRAPPED_LEN - 16:
        raise IntegrityError("vault header holds secrets of the wrong length")
    return bytearray(secrets)


def _encrypt_from_parts(
    aead: AESGCM, aad: bytes, key: bytes, value: bytes, nonce: bytes
) -> bytes:
    """Encrypt one row with a given nonce (the seam known-answer tests use)."""
    return _VALUE_PREFIX + nonce + aead.encrypt(nonce, _LEN.pack(len(key)) + key + value, aad)


def row_aad(store_id: bytes, category: str, key_hash: bytes) -> bytes:
    """The associated data binding a row's ciphertext to its vault, category and key."""
    cat = category.encode("utf-8")
    return _VALUE_PREFIX + store_id + _U16.pack(len(cat)) + cat + key_hash


_join = b"".join
#: Rows sealed per uninterrupted C-level step (about a millisecond for 1 KiB values).
_SEAL_SLICE = 256
_first = operator.itemgetter(0)
_second = operator.itemgetter(1)
#: A pause that returns this much later than asked waited for the GIL behind another
#: busy thread: pausing again would hand the GIL to that thread, not to an event loop.
_CONTENDED = 0.001


class _GilPauses:
    """Short sleeps between slices of a batch, for an event loop in another thread.

    Sleeping frees the GIL, so a loop that wants it takes it at once instead of
    after the switch interval.  When a pause comes back late, another thread was
    holding the GIL for whole switch intervals (a pure-Python CPU-bound neighbour):
    each further pause would give that thread the GIL again and the loop nothing
    but a longer queue, so the rest of the batch runs without pauses.
    """

    __slots__ = ("pause",)

    def __init__(self, pause: float) -> None:
        self.pause = pause

    def __call__(self) -> None:
        if self.pause:
            t0 = time.perf_counter()
            time.sleep(self.pause)
            if time.perf_counter() - t0 > self.pause + _CONTENDED:
                self.pause = 0.0


class StoreCipher:
    """The two secrets of an unlocked vault, and what is done with them."""

    __slots__ = ("_aad_prefix", "_aead", "_category_keys", "_data_key", "_hash_key", "store_id")

    def __init__(self, secrets: bytearray, store_id: bytes):
        if len(secrets) != 2 * KEY_LEN:
            raise ValueError("store cipher needs 64 bytes of secrets")
        self._data_key = bytearray(secrets[:KEY_LEN])
        self._hash_key = bytearray(secrets[KEY_LEN:])
        self.store_id = store_id
        self._aead: AESGCM | None = AESGCM(bytes(self._data_key))
        self._category_keys: dict[str, Any] = {}
        self._aad_prefix: dict[str, bytes] = {}

    @classmethod
    def generate(cls, store_id: bytes) -> StoreCipher:
        """Fresh random data and hash keys."""
        return cls(bytearray(os.urandom(2 * KEY_LEN)), store_id)

    def secrets(self) -> bytearray:
        """A copy of data key || hash key, for wrapping (wipe it after use)."""
        return self._data_key + self._hash_key

    def with_new_data_key(self) -> StoreCipher:
        """A cipher with a fresh data key and the same hash key (row identities unchanged)."""
        return StoreCipher(bytearray(os.urandom(KEY_LEN)) + self._hash_key, self.store_id)

    def wipe(self) -> None:
        """Overwrite our copies of the secrets and drop derived state."""
        for buf in (self._data_key, self._hash_key):
            buf[:] = bytes(len(buf))
        self._aead = None
        self._category_keys.clear()
        self._aad_prefix.clear()

    def _aead_or_fail(self) -> AESGCM:
        if self._aead is None:
            raise RuntimeError("store cipher was wiped")
        return self._aead

    def _row_hasher(self, category: str) -> Any:
        """A BLAKE2b state already keyed for ``category``; copying it skips re-keying."""
        hasher = self._category_keys.get(category)
        if hasher is None:
            category_key = hashlib.blake2b(
                category.encode("utf-8"),
                key=bytes(self._hash_key),
                digest_size=32,
                person=_CATEGORY_PERSON,
            ).digest()
            hasher = hashlib.blake2b(key=category_key, digest_size=32, person=_ROW_PERSON)
            self._category_keys[category] = hasher
        return hasher

    def key_hash(self, category: str, key: bytes) -> bytes:
        """The keyed hash under which a row key is stored (32 bytes)."""
        h = self._row_hasher(category).copy()
        h.update(key)
        digest: bytes = h.digest()
        return digest

    def _aad(self, category: str, key_hash: bytes) -> bytes:
        prefix = self._aad_prefix.get(category)
        if prefix is None:
            cat = category.encode("utf-8")
            prefix = _VALUE_PREFIX + self.store_id + _U16.pack(len(cat)) + cat
            self._aad_prefix[category] = prefix
        return prefix + key_hash

    def encrypt_row(self, category: str, key_hash: bytes, key: bytes, value: bytes) -> bytes:
        """Encrypt one row: ``format || nonce || AES-GCM(len(key) || key || value)``."""
        return _encrypt_from_parts(
            self._aead_or_fail(), self._aad(category, key_hash), key, value, os.urandom(NONCE_LEN)
        )

    def seal_changes(
        self,
        changes: Iterable[tuple[tuple[str, bytes], bytes | None]],
        count: int,
        *,
        pause: float = 0.0,
    ) -> tuple[list[tuple[str, bytes, bytes]], list[tuple[str, bytes]]]:
        """Hash and encrypt a batch of ``((category, key), value | None)`` changes.

        Returns ``(upserts, deletes)``: ``(category, key_hash, stored_value)`` rows
        sorted by ``(category, key_hash)`` — the order of the table's unique index,
        so a batch walks the index instead of hopping across it — and
        ``(category, key_hash)`` pairs to delete.  Nonces come from one ``os.urandom``
        call sliced in 12-byte pieces: the same CSPRNG output as one call per row,
        without a system call per row.

        This is the vault's hot path.  Framing and encryption run as ``map``/``zip``
        chains over slices of the batch, so the per-row work is C calls with no
        bytecode between them, while the slices keep each uninterrupted stretch
        short (another thread gets the GIL between two).  Per-category state
        (keyed hasher, AAD prefix) is looked up once per category.

        ``pause`` > 0 sleeps that long before each slice (of the hashing and of the
        sealing): the GIL is then free for a moment, and a thread waiting for it (an
        event loop) takes it at once instead of after the interpreter's switch
        interval.  Once a pause comes back late (another thread holds the GIL for
        whole switch intervals) the batch stops pausing: see :class:`_GilPauses`.
        """
        encrypt = self._aead_or_fail().encrypt
        batch = list(changes)
        if len(batch) > count:
            raise ValueError("more changes than announced")
        if not batch:
            return [], []
        # Columns by itemgetter, not zip(*batch): that transposition makes one
        # iterator object per row, thousands of short-lived objects the garbage
        # collector must track, which end up triggering full collections (a
        # pause for every thread, event loops included).
        rows = list(map(_first, batch))
        values = list(map(_second, batch))
        categories = list(map(_first, rows))
        keys = list(map(_second, rows))
        names = set(categories)
        hasher_of = {name: self._row_hasher(name) for name in names}
        prefix_of = {name: self._aad(name, b"") for name in names}
        # Hashing stays a loop: a map chain would hold one BLAKE2b state per row at
        # once, and measured slower than reusing each state while it is in cache.
        # With ``pause``, the loop runs in slices too, each after a pause: the GIL is
        # then free at least every slice, and the stretch of Python before the first
        # pause (the caller's draining and validation) ends here, not after all rows.
        pause_now = _GilPauses(pause)
        key_hashes: list[bytes] = []
        keep = key_hashes.append
        step = _SEAL_SLICE if pause else len(rows)
        for lo in range(0, len(rows), step):
            pause_now()
            for category, key in rows[lo : lo + step]:
                h = hasher_of[category].copy()
                h.update(key)
                keep(h.digest())
        deletes: list[tuple[str, bytes]] = []
        if None in values:
            wanted = list(map(operator.is_not, values, repeat(None)))
            dropped = list(map(operator.not_, wanted))
            deletes = list(
                zip(compress(categories, dropped), compress(key_hashes, dropped), strict=True)
            )
            categories = list(compress(categories, wanted))
            keys = list(compress(keys, wanted))
            key_hashes = list(compress(key_hashes, wanted))
            values = list(compress(values, wanted))
        n = len(values)
        pool = os.urandom(NONCE_LEN * n)
        nonces = [pool[i : i + NONCE_LEN] for i in range(0, NONCE_LEN * n, NONCE_LEN)]
        upserts: list[tuple[str, bytes, bytes]] = []
        # A map chain never runs bytecode, so the interpreter cannot hand the GIL to
        # another thread (an event loop) until it ends: run it in short slices.
        for lo in range(0, n, _SEAL_SLICE):
            pause_now()
            hi = lo + _SEAL_SLICE
            cats, slice_keys, slice_nonces = categories[lo:hi], keys[lo:hi], nonces[lo:hi]
            plaintexts = map(
                _join,
                zip(map(_LEN.pack, map(len, slice_keys)), slice_keys, values[lo:hi], strict=True),
            )
            hashes = key_hashes[lo:hi]
            aads = map(operator.add, map(prefix_of.__getitem__, cats), hashes)
            sealed = map(encrypt, slice_nonces, plaintexts, aads)
            prefixes = repeat(_VALUE_PREFIX, len(cats))
            stored = map(_join, zip(prefixes, slice_nonces, sealed, strict=True))
            upserts.extend(zip(cats, hashes, stored, strict=True))
        # Index order, (category, key_hash), in two stable passes keyed by one field
        # each: half the cost of comparing (category, key_hash, value) tuples.
        upserts.sort(key=_second)
        if len(names) > 1:
            upserts.sort(key=_first)
        return upserts, deletes

    def open_rows(
        self,
        rows: Iterable[tuple[Any, Any, Any]],
        check_category: Callable[[object], str],
        check_blob: Callable[[object], bytes],
    ) -> dict[str, dict[bytes, bytes]]:
        """Decrypt and authenticate many ``(category, key_hash, stored_value)`` rows.

        Returns ``{category: {key: value}}``.  The same checks as :meth:`decrypt_row`,
        with everything that depends only on the category (its AAD prefix, its keyed
        hasher, its output map, the check of its name) looked up once per category
        rather than once per row.  A row that fails anything is handed to the slow
        checks (``check_category``, ``check_blob``, :meth:`decrypt_row`), which raise
        the precise error.

        Raises:
            IntegrityError: any row fails a check; nothing is returned.
        """
        decrypt = self._aead_or_fail().decrypt
        unpack = _LEN.unpack_from
        out: dict[str, dict[bytes, bytes]] = {}
        per_category: dict[object, tuple[dict[bytes, bytes], bytes, Any]] = {}
        for category, key_hash, blob in rows:
            state = per_category.get(category)
            if state is None:
                name = check_category(category)
                state = per_category[category] = (
                    out.setdefault(name, {}), self._aad(name, b""), self._row_hasher(name)
                )
            opened, prefix, hasher = state
            try:
                if len(blob) < _MIN_VALUE_LEN or blob[0] != VALUE_FORMAT:
                    raise ValueError
                plain = decrypt(blob[1:_NONCE_END], blob[_NONCE_END:], prefix + key_hash)
                (key_len,) = unpack(plain)
                key = plain[4 : 4 + key_len]
                h = hasher.copy()
                h.update(key)
                if key_len > len(plain) - 4 or h.digest() != key_hash:
                    raise ValueError
            except Exception:
                # The slow checks raise the precise IntegrityError for this row.
                name = check_category(category)
                self.decrypt_row(name, check_blob(key_hash), check_blob(blob))
                raise IntegrityError(  # unreachable unless the two paths disagree
                    f"row failed authentication in category {name!r}", category=name
                ) from None
            opened[key] = plain[4 + key_len :]
        return out

    def decrypt_row(self, category: str, key_hash: bytes, blob: bytes) -> tuple[bytes, bytes]:
        """Decrypt one row and return ``(key, value)``.

        Raises:
            IntegrityError: unknown format, truncated, tampered, or moved from elsewhere.
        """
        def fail(why: str) -> IntegrityError:
            return IntegrityError(
                f"row failed authentication ({why}) in category {category!r}, "
                f"key hash {key_hash.hex()}",
                category=category,
                key_hash=key_hash.hex(),
            )

        if len(blob) < _MIN_VALUE_LEN:
            raise fail("truncated")
        if blob[0] != VALUE_FORMAT:
            raise fail(f"unknown value format {blob[0]}")
        try:
            plain = self._aead_or_fail().decrypt(
                blob[1 : 1 + NONCE_LEN], blob[1 + NONCE_LEN :], self._aad(category, key_hash)
            )
        except InvalidTag:
            raise fail("bad tag") from None
        (key_len,) = _LEN.unpack_from(plain)
        if key_len > len(plain) - 4:
            raise fail("bad key length")
        key = plain[4 : 4 + key_len]
        if self.key_hash(category, key) != key_hash:
            raise fail("row key does not match its hash")
        return key, plain[4 + key_len :]
