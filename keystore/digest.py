"""The authenticated state digest: which rows, at which generation, the vault vouches for.

Every row authenticates on its own (AES-GCM, bound to vault, category and key hash),
but that cannot tell an *older* ciphertext of the same row from the current one, nor
notice a row that was deleted or put back.  This module closes that gap:

* each stored row contributes one AES-256 block encryption, under a key derived from
  the vault's secrets, of the stored value's AES-GCM tag (its last 16 bytes).  For a
  value that authenticates, that tag is a MAC of its exact nonce, ciphertext, store
  id, category and key hash, so an older version of a row, or a row moved elsewhere,
  contributes something unrelated (docs/format.md §15.2 gives the whole argument);
* the *set digest* is the sum of the contributions of the live rows modulo
  2^128 - 1.  Because 2^128 is 1 modulo that number, the sum of a whole batch is the
  batch's encrypted tags, joined, read as one big integer and reduced once: one call
  into OpenSSL and one big-integer remainder, with no per-row Python beyond slicing
  the tag off each value.  A write updates the digest in O(rows changed);
* the *state record* binds ``(generation, row count, digest)`` under an HMAC and hides
  the digest itself (SIV-style: the digest is XORed with a pad derived from the tag),
  so someone who reads every old and new copy of the file learns nothing about the
  contributions.  Why that matters, and the byte layout, are in ``docs/format.md``
  ("The state record").

State format 1 (a keyed BLAKE2b per row, summed modulo 2^256, computed by a Python
loop) is still read: a vault whose record is in format 1 is checked with it once and
re-sealed in format 2 at its first writable unlock (:func:`reseal`).

All keys come from the vault's two secrets by HKDF-SHA256 with their own label, so
nothing new has to be stored or wrapped, and a rekey (a new data key) gives new
digest keys together with the new ciphertexts.

Whole-vault rollback cannot be seen from inside the file; :mod:`keystore.anchor` holds
the generation somewhere else.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keystore.errors import IntegrityError, RollbackDetected, VaultIOError

__all__ = [
    "DIGEST_INFO",
    "STATE_FORMAT",
    "STATE_FORMATS",
    "STATE_LEN",
    "DigestKeys",
    "RowSetDigest",
    "VaultState",
    "check_anchor",
    "check_rows",
    "reseal",
    "value_tails",
]

#: HKDF label of the digest keys (ASCII, no terminator).
DIGEST_INFO = b"mls-keystore v1 state digest"
#: Version byte of the state records this code writes; checked before any MAC.
STATE_FORMAT = 2
#: Every version byte this code reads (format 1 only to carry it over to format 2).
STATE_FORMATS = (1, 2)
#: format (1) || generation (8) || row count (8) || sealed digest (32) || tag (32),
#: in both formats.
STATE_LEN = 81
_KEY_LEN = 32
_BLOCK = 16
#: Format 2 sums modulo 2^128 - 1, where 2^128 is 1: a batch's concatenated blocks,
#: read as one integer, reduce to the sum of the blocks.
_MODULUS_2 = (1 << 128) - 1
#: Format 1 sums modulo 2^256.
_MODULUS_1 = 1 << 256
_MASK_1 = _MODULUS_1 - 1
_ROW_PERSON = b"mlks-state-row"
_U32 = struct.Struct(">I")
#: Format 1 covers the stored value's format byte and nonce at the front and its
#: AES-GCM tag at the back (docs/format.md §15.6).
_HEAD = 13
_TAIL = 16
_KH32 = _U32.pack(32)
_PREFIX = struct.Struct(">BQQ")
_U64_MAX = (1 << 64) - 1
_KEY_HASH = itemgetter(1)
_STORED_VALUE = itemgetter(2)
_LAST_BLOCK = itemgetter(slice(-_BLOCK, None))


@dataclass(frozen=True, slots=True)
class VaultState:
    """What the state record vouches for.

    Attributes:
        generation: incremented by every committed write; never goes down.
        row_count: the number of live rows.
        digest: the set digest of the live rows (secret): below 2^128 - 1 in state
            format 2, below 2^256 in format 1.
        state_format: the record format the digest belongs to (the two formats
            compute different digests of the same rows).
    """

    generation: int
    row_count: int
    digest: int
    state_format: int = STATE_FORMAT

    def __repr__(self) -> str:
        # The digest is kept secret (see the module docstring): never print it.
        return (
            f"VaultState(generation={self.generation}, row_count={self.row_count}, "
            f"state_format={self.state_format})"
        )


def _block_input(tails: list[bytes]) -> bytes:
    """The batch's 16-byte blocks, joined: each value's last 16 bytes (its AES-GCM
    tag), a value shorter than that zero-padded on the left (it cannot authenticate,
    but a write may still subtract it)."""
    joined = b"".join(tails)
    if len(joined) != _BLOCK * len(tails):
        joined = b"".join(t.rjust(_BLOCK, b"\x00") for t in tails)
    return joined


def _reduce(x: int) -> int:
    """``x mod 2^128 - 1`` for a large ``x``, by folding: since 2^(128k) is 1 modulo
    2^128 - 1, ``x`` is congruent to its high part (above bit 128k) plus its low part.
    Each fold halves ``x``, so this is linear-time; Python's ``%`` by a multi-digit
    divisor is not (about 8x slower for a 10 000-row batch)."""
    while x.bit_length() > 256:
        shift = 128 * (x.bit_length() // 256)
        x = (x >> shift) + (x & ((1 << shift) - 1))
    return x % _MODULUS_2


class DigestKeys:
    """The digest keys of one vault, derived from its secrets.

    ``block_key`` keys the format-2 row contributions (AES-256), ``row_key`` the
    format-1 ones (keyed BLAKE2b), ``mac_key`` the record's tag and ``pad_key`` the
    pad that hides the digest.  Independent keys (one HKDF output cut in four) keep
    the uses from ever sharing a key.
    """

    __slots__ = (
        "_block_cipher",
        "_block_encryptor",
        "_block_key",
        "_block_lock",
        "_last",
        "_mac_key",
        "_pad_key",
        "_read_format1",
        "_row_base",
        "_row_key",
        "_row_states",
    )

    def __init__(self, secrets: bytes | bytearray, store_id: bytes):
        """Derive the keys from ``data_key || hash_key`` (64 bytes) and the store id."""
        if len(secrets) != 2 * _KEY_LEN:
            raise ValueError("digest keys need the 64 bytes of the vault's secrets")
        # The secrets (and below, the keys) are handed over as the caller's wipeable
        # buffers, never as a bytes copy: such a copy of the vault's secrets could not
        # be overwritten at lock.  cryptography and hashlib copy keys into their own
        # contexts (docs/threat-model.md names those copies).
        okm = bytearray(
            HKDF(
                algorithm=hashes.SHA256(), length=4 * _KEY_LEN, salt=store_id, info=DIGEST_INFO
            ).derive(secrets)
        )
        self._row_key = okm[:_KEY_LEN]
        self._mac_key = okm[_KEY_LEN : 2 * _KEY_LEN]
        self._pad_key = okm[2 * _KEY_LEN : 3 * _KEY_LEN]
        self._block_key = okm[3 * _KEY_LEN :]
        okm[:] = bytes(len(okm))
        self._block_cipher: Cipher[Any] | None = Cipher(
            algorithms.AES256(self._block_key), modes.ECB()
        )
        # ECB holds no state between blocks, so one encryption context serves every
        # batch (creating one costs more than encrypting a write's tags); the lock
        # keeps two threads from feeding it at once.
        self._block_encryptor: Any = self._block_cipher.encryptor()
        self._block_lock = threading.Lock()
        self._row_base: Any = hashlib.blake2b(
            key=self._row_key, digest_size=32, person=_ROW_PERSON
        )
        self._row_states: dict[str, Any] = {}
        # Whether full scans must also sum in format 1: until a record has been
        # read, its format is unknown; a format-2 record settles it (no writer
        # goes back from format 2, see RowSetDigest).
        self._read_format1 = True
        # The last record sealed or authenticated with these keys and its state: a
        # write reads back the record the previous write sealed, and the same bytes
        # authenticate to the same state, so that check need not be redone.
        self._last: tuple[bytes, VaultState] | None = None

    def wipe(self) -> None:
        """Overwrite our copies of the keys and drop the keyed states built from them."""
        for buf in (self._row_key, self._mac_key, self._pad_key, self._block_key):
            buf[:] = bytes(len(buf))
        self._block_cipher = None
        self._block_encryptor = None
        self._last = None
        self._row_base = None
        self._row_states.clear()

    # ---------------------------------------------------------------- format 2

    def _encrypt_blocks(self, data: bytes) -> bytes:
        """AES-256-ECB of whole blocks under ``block_key``: one call for a batch."""
        encryptor = self._block_encryptor
        if encryptor is None:
            raise RuntimeError("digest keys were wiped")
        with self._block_lock:
            out: bytes = encryptor.update(data)
        if len(out) != len(data):  # ECB of whole blocks returns every block at once
            raise RuntimeError("the block cipher held back part of a batch")
        return out

    def _sum_blocks(self, tails: list[bytes]) -> int:
        """Σ AES-256(block_key, block) mod 2^128 - 1 over the batch: one ECB call."""
        if not tails:
            if self._block_encryptor is None:
                raise RuntimeError("digest keys were wiped")
            return 0
        return _reduce(int.from_bytes(self._encrypt_blocks(_block_input(tails)), "big"))

    def sum_rows(self, rows: Iterable[tuple[str, bytes, bytes]]) -> tuple[int, int]:
        """``(sum of format-2 contributions mod 2^128 - 1, number of rows)`` of
        ``(category, key_hash, stored_value)`` rows: the batch form used by writes
        and full scans.  Only each value's last 16 bytes are read, so ``stored_value``
        may be just those (as a write's read of the values it replaces is)."""
        # map + itemgetter: the slicing runs without a bytecode loop per row.
        tails = list(map(_LAST_BLOCK, map(_STORED_VALUE, rows)))
        return self._sum_blocks(tails), len(tails)

    # ---------------------------------------------------------------- format 1

    def _category_state(self, category: str) -> Any:
        """A keyed BLAKE2b state that has already absorbed the category prefix."""
        state = self._row_states.get(category)
        if state is None:
            if self._row_base is None:
                raise RuntimeError("digest keys were wiped")
            cat = category.encode("utf-8")
            state = self._row_base.copy()
            state.update(_U32.pack(len(cat)) + cat)
            self._row_states[category] = state
        return state

    def sum_rows_format1(self, rows: Iterable[tuple[str, bytes, bytes]]) -> tuple[int, int]:
        """Like :meth:`sum_rows`, in state format 1 (mod 2^256; needs whole values)."""
        state_for = self._category_state
        pack = _U32.pack
        from_bytes = int.from_bytes
        total = 0
        count = 0
        for category, key_hash, stored_value in rows:
            h = state_for(category).copy()
            h.update(
                (_KH32 + key_hash if len(key_hash) == 32 else pack(len(key_hash)) + key_hash)
                + pack(len(stored_value))
                + stored_value[:_HEAD]
                + stored_value[-_TAIL:]
            )
            total += from_bytes(h.digest(), "big")
            count += 1
        return total & _MASK_1, count

    def contribution(
        self,
        category: str,
        key_hash: bytes,
        stored_value: bytes,
        state_format: int = STATE_FORMAT,
    ) -> int:
        """One row's contribution to the set digest of ``state_format``, as an integer."""
        row = ((category, key_hash, stored_value),)
        if state_format == 1:
            return self.sum_rows_format1(row)[0]
        block = self._encrypt_blocks(_block_input([stored_value[-_BLOCK:]]))
        return int.from_bytes(block, "big")

    # ---------------------------------------------------------------- the record

    def _tag(self, prefix: bytes, digest: bytes) -> bytes:
        return hmac.digest(self._mac_key, prefix + digest, "sha256")

    def _pad(self, tag: bytes) -> bytes:
        return hmac.digest(self._pad_key, tag, "sha256")

    def seal(self, state: VaultState) -> bytes:
        """The 81-byte state record of ``state``, in ``state.state_format``."""
        if not 0 <= state.generation <= _U64_MAX or not 0 <= state.row_count <= _U64_MAX:
            raise ValueError("generation and row count must fit in 64 bits")
        if state.state_format not in STATE_FORMATS:
            raise ValueError(f"unknown state format {state.state_format}")
        modulus = _MODULUS_2 if state.state_format == 2 else _MODULUS_1
        if not 0 <= state.digest < modulus:
            raise ValueError(f"a format-{state.state_format} digest must be below {modulus}")
        prefix = _PREFIX.pack(state.state_format, state.generation, state.row_count)
        tag = self._tag(prefix, state.digest.to_bytes(32, "big"))
        pad = int.from_bytes(self._pad(tag), "big")
        record = prefix + (state.digest ^ pad).to_bytes(32, "big") + tag
        self._last = (record, state)
        return record

    def open(self, record: bytes) -> VaultState:
        """Authenticate a state record and return what it vouches for.

        Raises:
            IntegrityError: the record is not 81 bytes, has an unknown format byte, or
                (authentic, yet) holds a format-2 digest out of range.
            RollbackDetected: the tag fails (``reason="record"``): the record was
                edited, or comes from another vault or another key generation.
        """
        if not isinstance(record, bytes) or len(record) != STATE_LEN:
            raise IntegrityError("vault state record is malformed (wrong length)")
        last = self._last
        if last is not None and last[0] == record:
            if last[1].state_format == 2:
                self._read_format1 = False
            return last[1]
        if record[0] not in STATE_FORMATS:
            raise IntegrityError(f"vault state record has unknown format {record[0]}")
        state_format, generation, row_count = _PREFIX.unpack_from(record)
        prefix, tag = record[:17], record[49:]
        value = int.from_bytes(record[17:49], "big") ^ int.from_bytes(self._pad(tag), "big")
        if not hmac.compare_digest(self._tag(prefix, value.to_bytes(32, "big")), tag):
            raise RollbackDetected(
                f"vault state record (generation {generation}) fails authentication: it "
                "was edited, or taken from another vault or key generation",
                reason="record",
                generation=generation,
            )
        if state_format == 2:
            if value >= _MODULUS_2:
                raise IntegrityError("vault state record is malformed (digest out of range)")
            self._read_format1 = False
        state = VaultState(generation, row_count, value, state_format)
        self._last = (record, state)
        return state


class RowSetDigest:
    """A running set digest: add and remove rows in any order, O(1) each.

    Adding and removing are modular addition and subtraction, so the order of
    operations does not matter and a row removed with the exact bytes it was added
    with cancels out.  Removing bytes that were never added (an older version of a
    row put back in the file) leaves a digest that matches no record.

    A digest started empty (a full scan) sums in the current format, and also in
    format 1 while the vault's record may still be in format 1 (until its keys
    have read a format-2 record), so that :func:`check_rows` can compare with
    either.  A digest started from a record (:meth:`of_state`) continues in that
    record's format, which must be the current one.
    """

    __slots__ = ("_keys", "_value1", "count", "state_format", "value")

    def __init__(
        self,
        keys: DigestKeys,
        value: int = 0,
        count: int = 0,
        state_format: int | None = None,
    ):
        """A digest over ``count`` rows summing to ``value`` in ``state_format``
        (``None``: a new scan, see the class docstring)."""
        self._keys = keys
        self.value = value
        self.count = count
        self._value1: int | None = None
        if state_format is None:
            state_format = STATE_FORMAT
            if keys._read_format1:
                self._value1 = 0
        elif state_format not in STATE_FORMATS:
            raise ValueError(f"unknown state format {state_format}")
        self.state_format = state_format

    @classmethod
    def both_formats(cls, keys: DigestKeys) -> RowSetDigest:
        """An empty scan that sums in the current format and in format 1 whatever the
        keys have read so far: the rows :func:`reseal` checks against a format-1
        record and seals in the current one."""
        digest = cls(keys)
        digest._value1 = 0
        return digest

    @classmethod
    def of_state(cls, keys: DigestKeys, state: VaultState) -> RowSetDigest:
        """Start from what a record vouches for (for an incremental update).

        Raises:
            RollbackDetected: ``state`` is in format 1 (``reason="record"``).  A
                writable unlock carries a format-1 record over to format 2 before
                anything can be written, and nothing writes format 1 afterwards, so
                a write that meets one is looking at an older copy of the vault put
                back underneath it.
        """
        if state.state_format != STATE_FORMAT:
            raise RollbackDetected(
                f"vault state record (generation {state.generation}) is in format "
                f"{state.state_format}, which this vault had left when it was unlocked: "
                "an older copy was put back; nothing was written",
                reason="record",
                generation=state.generation,
            )
        return cls(keys, state.digest, state.row_count, state.state_format)

    def _sums(self, rows: Iterable[tuple[str, bytes, bytes]]) -> tuple[int, int | None, int]:
        if self.state_format == 1:
            total, n = self._keys.sum_rows_format1(rows)
            return total, None, n
        if self._value1 is None:
            total, n = self._keys.sum_rows(rows)
            return total, None, n
        batch: Sequence[tuple[str, bytes, bytes]] = (
            rows if isinstance(rows, (list, tuple)) else list(rows)
        )
        total, n = self._keys.sum_rows(batch)
        return total, self._keys.sum_rows_format1(batch)[0], n

    def _modulus(self) -> int:
        return _MODULUS_2 if self.state_format == 2 else _MODULUS_1

    def add(self, rows: Iterable[tuple[str, bytes, bytes]]) -> None:
        """Account for ``(category, key_hash, stored_value)`` rows now present."""
        total, total1, n = self._sums(rows)
        self.value = (self.value + total) % self._modulus()
        if total1 is not None and self._value1 is not None:
            self._value1 = (self._value1 + total1) & _MASK_1
        self.count += n

    def add_keeping_tails(self, rows: list[tuple[str, bytes, bytes]]) -> list[bytes]:
        """:meth:`add`, returning the values' last 16 bytes it summed (in row order):
        a full scan that goes on to keep them (see :func:`value_tails`) slices each
        value once, not twice."""
        tails = list(map(_LAST_BLOCK, map(_STORED_VALUE, rows)))
        if self.state_format != STATE_FORMAT:
            self.add(rows)
            return tails
        self.value = (self.value + self._keys._sum_blocks(tails)) % _MODULUS_2
        if self._value1 is not None:
            self._value1 = (self._value1 + self._keys.sum_rows_format1(rows)[0]) & _MASK_1
        self.count += len(tails)
        return tails

    def remove(self, rows: Iterable[tuple[str, bytes, bytes]]) -> None:
        """Account for rows no longer present (deleted, or replaced by a new value)."""
        total, total1, n = self._sums(rows)
        self.value = (self.value - total) % self._modulus()
        if total1 is not None and self._value1 is not None:
            self._value1 = (self._value1 - total1) & _MASK_1
        self.count -= n

    def remove_tails(self, tails: list[bytes]) -> None:
        """:meth:`remove` for rows given by their values' last 16 bytes alone (what
        :func:`value_tails` keeps): a write whose replaced values are known in memory.

        Only for a digest continuing a current-format record (:meth:`of_state`),
        the one thing such a write updates.
        """
        if self.state_format != STATE_FORMAT or self._value1 is not None:
            raise ValueError("tails alone update only a digest in the current format")
        self.value = (self.value - self._keys._sum_blocks(tails)) % _MODULUS_2
        self.count -= len(tails)

    def value_in(self, state_format: int) -> int | None:
        """The digest in ``state_format``, or ``None`` if this digest did not sum in it."""
        if state_format == self.state_format:
            return self.value
        return self._value1 if state_format == 1 else None

    def state(self, generation: int) -> VaultState:
        """This digest as the state of ``generation``.

        Raises:
            IntegrityError: the rows counted went below zero.
            VaultIOError: ``generation`` is past 2^64 - 1, the last one a record can
                hold: the vault can take no more writes (the caller writes nothing).
        """
        if self.count < 0:
            raise IntegrityError("vault state digest went below zero rows")
        return VaultState(_next_ok(generation), self.count, self.value, self.state_format)


def _next_ok(generation: int) -> int:
    """``generation`` if a record can hold it; a package error (not the ValueError of
    :meth:`DigestKeys.seal`, which is for misuse) once every generation is used."""
    if generation > _U64_MAX:
        raise VaultIOError(
            "vault has used its last generation (2^64 - 1) and can take no more writes; "
            "nothing was written (export it and import it into a new vault)"
        )
    return generation


def value_tails(rows: Iterable[tuple[str, bytes, bytes]]) -> dict[bytes, bytes]:
    """``{key_hash: last 16 bytes of the stored value}`` of ``(category, key_hash,
    stored_value)`` rows: everything a row's format-2 contribution depends on, keyed
    by what addresses the row (a key hash binds its category: docs/format.md §15).

    Built by ``dict``/``zip``/``map`` over the rows, with no bytecode per row.
    """
    batch = rows if isinstance(rows, (list, tuple)) else list(rows)
    return dict(zip(map(_KEY_HASH, batch), map(_LAST_BLOCK, map(_STORED_VALUE, batch)),
                    strict=True))


def check_rows(keys: DigestKeys, record: bytes | None, rows: RowSetDigest) -> VaultState:
    """Compare the rows that were read with what the state record vouches for.

    ``rows`` must hold every live row of the vault.  Returns the record's state.

    Raises:
        RollbackDetected: no record (``reason="record"``), a record that fails
            authentication (``"record"``), a format-1 record where these keys had
            already read a format-2 one (``"record"``: an older copy was put back),
            or rows that are not the vouched set (``"rows"``; the message says
            whether rows are missing, extra, or the same number but not the same
            rows).
        IntegrityError: a malformed record.
    """
    if record is None:
        raise RollbackDetected(
            "vault state record is missing: it was removed, or the vault was restored "
            "from a file of an older format",
            reason="record",
        )
    state = keys.open(record)
    value = rows.value_in(state.state_format)
    if value is None:
        if state.state_format != 1:
            raise ValueError("rows were summed in state format 1 only; the record is newer")
        raise RollbackDetected(
            f"vault state record (generation {state.generation}) is in format 1, which "
            "this vault had already left: an older copy was put back",
            reason="record",
            generation=state.generation,
        )
    if rows.count != state.row_count or value != state.digest:
        if rows.count < state.row_count:
            what = f"{state.row_count - rows.count} row(s) were deleted"
        elif rows.count > state.row_count:
            what = f"{rows.count - state.row_count} row(s) were added or re-inserted"
        else:
            what = "a row holds an older or foreign value, or rows were swapped"
        raise RollbackDetected(
            f"vault rows are not the ones its state record vouches for: the vault holds "
            f"{rows.count} rows where generation {state.generation} recorded "
            f"{state.row_count}; {what}",
            reason="rows",
            generation=state.generation,
            rows_found=rows.count,
            rows_expected=state.row_count,
        )
    return state


def reseal(
    keys: DigestKeys, record: bytes | None, rows: RowSetDigest
) -> tuple[VaultState, bytes]:
    """Carry a record over to the current format: ``(new state, new record)``.

    ``rows`` must hold every live row (authenticated, read in the transaction that
    will store the new record), summed in both formats
    (:meth:`RowSetDigest.both_formats`).  They are first checked against
    ``record`` exactly as :func:`check_rows` does; the new record vouches for the
    same rows at the next generation, so an anchor moves past every copy of the
    vault that still holds the old record.

    Raises:
        RollbackDetected, IntegrityError: as :func:`check_rows`.
    """
    if rows.state_format != STATE_FORMAT:
        raise ValueError(f"rows must be summed in state format {STATE_FORMAT} to reseal")
    old = check_rows(keys, record, rows)
    new = VaultState(_next_ok(old.generation + 1), rows.count, rows.value)
    sealed = keys.seal(new)
    # From here on a format-1 record can only be an older copy put back (full scans
    # stop summing format 1).  A retry of a failed reseal still can compare: its
    # rows come from RowSetDigest.both_formats.
    keys._read_format1 = False
    return new, sealed


def check_anchor(generation: int, anchored: int | None) -> None:
    """Refuse a vault older than the generation its anchor holds.

    The anchor is written after each commit, so a vault *ahead* of it (a crash
    between the two) is accepted; only ``generation < anchored`` is a rollback.

    Raises:
        RollbackDetected: ``reason="anchor"``.
    """
    if anchored is not None and generation < anchored:
        raise RollbackDetected(
            f"vault is at generation {generation} but its anchor holds generation "
            f"{anchored}: an older copy of the whole vault was restored",
            reason="anchor",
            generation=generation,
            expected_generation=anchored,
        )
