"""The authenticated state digest: which rows, at which generation, the vault vouches for.

Every row authenticates on its own (AES-GCM, bound to vault, category and key hash),
but that cannot tell an *older* ciphertext of the same row from the current one, nor
notice a row that was deleted or put back.  This module closes that gap:

* each stored row contributes a keyed pseudo-random 256-bit number computed over its
  category, its key hash and the stored value's length, nonce and AES-GCM tag (so an
  older version of a row, with its own random nonce and tag, contributes something
  unrelated; for a value that authenticates, the tag pins down its exact ciphertext,
  which is therefore not hashed a second time -- see docs/format.md §15.2);
* the *set digest* is the sum of the contributions of the live rows modulo 2^256, so
  a write updates it in O(rows changed): add the new ciphertexts, subtract the ones
  they replace or delete;
* the *state record* binds ``(generation, row count, digest)`` under an HMAC and hides
  the digest itself (SIV-style: the digest is XORed with a pad derived from the tag),
  so someone who reads every old and new copy of the file learns nothing about the
  contributions.  Why that matters, and the byte layout, are in ``docs/format.md``
  ("The state record").

All three keys come from the vault's two secrets by HKDF-SHA256 with their own label,
so nothing new has to be stored or wrapped, and a rekey (a new data key) gives new
digest keys together with the new ciphertexts.

Whole-vault rollback cannot be seen from inside the file; :mod:`keystore.anchor` holds
the generation somewhere else.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keystore.errors import IntegrityError, RollbackDetected

__all__ = [
    "DIGEST_INFO",
    "STATE_FORMAT",
    "STATE_LEN",
    "DigestKeys",
    "RowSetDigest",
    "VaultState",
    "check_anchor",
    "check_rows",
]

#: HKDF label of the three digest keys (ASCII, no terminator).
DIGEST_INFO = b"mls-keystore v1 state digest"
#: Version byte of the state record; checked before any MAC is computed.
STATE_FORMAT = 1
#: format (1) || generation (8) || row_count (8) || sealed digest (32) || tag (32).
STATE_LEN = 81
_KEY_LEN = 32
_ROW_PERSON = b"mlks-state-row"
_MODULUS = 1 << 256
_MASK = _MODULUS - 1
_U32 = struct.Struct(">I")
#: The stored value's bytes that enter a contribution: the format byte and nonce at
#: the front, the AES-GCM tag at the back (docs/format.md §15.2).
_HEAD = 13
_TAIL = 16
_KH32 = _U32.pack(32)
_PREFIX = struct.Struct(">BQQ")
_U64_MAX = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class VaultState:
    """What the state record vouches for.

    Attributes:
        generation: incremented by every committed write; never goes down.
        row_count: the number of live rows.
        digest: the set digest of the live rows (an integer below 2^256; secret).
    """

    generation: int
    row_count: int
    digest: int

    def __repr__(self) -> str:
        # The digest is kept secret (see the module docstring): never print it.
        return f"VaultState(generation={self.generation}, row_count={self.row_count})"


class DigestKeys:
    """The three digest keys of one vault, derived from its secrets.

    ``row_key`` keys the per-row contributions, ``mac_key`` the record's tag and
    ``pad_key`` the pad that hides the digest.  Independent keys (one HKDF output
    cut in three) keep the three uses from ever sharing an input space.
    """

    __slots__ = ("_mac_key", "_pad_key", "_row_base", "_row_key", "_row_states")

    def __init__(self, secrets: bytes | bytearray, store_id: bytes):
        """Derive the keys from ``data_key || hash_key`` (64 bytes) and the store id."""
        if len(secrets) != 2 * _KEY_LEN:
            raise ValueError("digest keys need the 64 bytes of the vault's secrets")
        okm = bytearray(
            HKDF(
                algorithm=hashes.SHA256(), length=3 * _KEY_LEN, salt=store_id, info=DIGEST_INFO
            ).derive(bytes(secrets))
        )
        self._row_key = okm[:_KEY_LEN]
        self._mac_key = okm[_KEY_LEN : 2 * _KEY_LEN]
        self._pad_key = okm[2 * _KEY_LEN :]
        okm[:] = bytes(len(okm))
        self._row_base: Any = hashlib.blake2b(
            key=bytes(self._row_key), digest_size=32, person=_ROW_PERSON
        )
        self._row_states: dict[str, Any] = {}

    def wipe(self) -> None:
        """Overwrite our copies of the keys and drop the keyed hash states."""
        for buf in (self._row_key, self._mac_key, self._pad_key):
            buf[:] = bytes(len(buf))
        self._row_base = None
        self._row_states.clear()

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

    def contribution(self, category: str, key_hash: bytes, stored_value: bytes) -> int:
        """One row's contribution to the set digest, as an integer below 2^256."""
        return self.sum_rows(((category, key_hash, stored_value),))[0]

    def sum_rows(self, rows: Iterable[tuple[str, bytes, bytes]]) -> tuple[int, int]:
        """``(sum of contributions mod 2^256, number of rows)`` of ``(category, key_hash,
        stored_value)`` rows: the batch form used by writes and full scans."""
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
        return total & _MASK, count

    def _tag(self, prefix: bytes, digest: bytes) -> bytes:
        return hmac.digest(bytes(self._mac_key), prefix + digest, "sha256")

    def _pad(self, tag: bytes) -> bytes:
        return hmac.digest(bytes(self._pad_key), tag, "sha256")

    def seal(self, state: VaultState) -> bytes:
        """The 81-byte state record of ``state``."""
        if not 0 <= state.generation <= _U64_MAX or not 0 <= state.row_count <= _U64_MAX:
            raise ValueError("generation and row count must fit in 64 bits")
        if not 0 <= state.digest < _MODULUS:
            raise ValueError("digest must be below 2^256")
        prefix = _PREFIX.pack(STATE_FORMAT, state.generation, state.row_count)
        digest = state.digest.to_bytes(32, "big")
        tag = self._tag(prefix, digest)
        sealed = bytes(a ^ b for a, b in zip(digest, self._pad(tag), strict=True))
        return prefix + sealed + tag

    def open(self, record: bytes) -> VaultState:
        """Authenticate a state record and return what it vouches for.

        Raises:
            IntegrityError: the record is not 81 bytes or has an unknown format byte.
            RollbackDetected: the tag fails (``reason="record"``): the record was
                edited, or comes from another vault or another key generation.
        """
        if not isinstance(record, bytes) or len(record) != STATE_LEN:
            raise IntegrityError("vault state record is malformed (wrong length)")
        if record[0] != STATE_FORMAT:
            raise IntegrityError(f"vault state record has unknown format {record[0]}")
        _fmt, generation, row_count = _PREFIX.unpack_from(record)
        prefix, sealed, tag = record[:17], record[17:49], record[49:]
        digest = bytes(a ^ b for a, b in zip(sealed, self._pad(tag), strict=True))
        if not hmac.compare_digest(self._tag(prefix, digest), tag):
            raise RollbackDetected(
                f"vault state record (generation {generation}) fails authentication: it "
                "was edited, or taken from another vault or key generation",
                reason="record",
                generation=generation,
            )
        return VaultState(generation, row_count, int.from_bytes(digest, "big"))


class RowSetDigest:
    """A running set digest: add and remove rows in any order, O(1) each.

    Adding and removing are modular addition and subtraction, so the order of
    operations does not matter and a row removed with the exact bytes it was added
    with cancels out.  Removing bytes that were never added (an older version of a
    row put back in the file) leaves a digest that matches no record.
    """

    __slots__ = ("_keys", "count", "value")

    def __init__(self, keys: DigestKeys, value: int = 0, count: int = 0):
        self._keys = keys
        self.value = value
        self.count = count

    @classmethod
    def of_state(cls, keys: DigestKeys, state: VaultState) -> RowSetDigest:
        """Start from what a record vouches for (for an incremental update)."""
        return cls(keys, state.digest, state.row_count)

    def add(self, rows: Iterable[tuple[str, bytes, bytes]]) -> None:
        """Account for ``(category, key_hash, stored_value)`` rows now present."""
        total, n = self._keys.sum_rows(rows)
        self.value = (self.value + total) & _MASK
        self.count += n

    def remove(self, rows: Iterable[tuple[str, bytes, bytes]]) -> None:
        """Account for rows no longer present (deleted, or replaced by a new value)."""
        total, n = self._keys.sum_rows(rows)
        self.value = (self.value - total) & _MASK
        self.count -= n

    def state(self, generation: int) -> VaultState:
        """This digest as the state of ``generation``."""
        if self.count < 0:
            raise IntegrityError("vault state digest went below zero rows")
        return VaultState(generation, self.count, self.value)


def check_rows(keys: DigestKeys, record: bytes | None, rows: RowSetDigest) -> VaultState:
    """Compare the rows that were read with what the state record vouches for.

    ``rows`` must hold every live row of the vault.  Returns the record's state.

    Raises:
        RollbackDetected: no record (``reason="record"``), a record that fails
            authentication (``"record"``), or rows that are not the vouched set
            (``"rows"``; the message says whether rows are missing, extra, or the
            same number but not the same rows).
        IntegrityError: a malformed record.
    """
    if record is None:
        raise RollbackDetected(
            "vault state record is missing: it was removed, or the vault was restored "
            "from a file of an older format",
            reason="record",
        )
    state = keys.open(record)
    if rows.count != state.row_count or rows.value != state.digest:
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
