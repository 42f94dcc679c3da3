"""The vault header: the wrapped secrets and everything needed to unwrap them.

Byte layout (format 1, all integers big-endian; see ``docs/format.md``)::

    0   4  magic            b"MLKS"
    4   1  header_format    1
    5   1  flags            bit 0: the database file is SQLCipher-encrypted;
                             bit 1: the vault keeps a state record
    6  16  store_id         random, names this vault in every row's AAD
   22   1  kdf_id           1 = Argon2id(passphrase), 2 = HKDF-SHA256(raw 32-byte key)
   23   4  time_cost        Argon2 t (0 for kdf_id 2)
   27   4  memory_cost      Argon2 m in KiB (0 for kdf_id 2)
   31   4  parallelism      Argon2 p (0 for kdf_id 2)
   35   1  salt_len         16
   36  16  salt
   52   4  key_generation   incremented by every rekey
   56  12  wrap_nonce
   68   1  wrapped_len      80
   69  80  wrapped          AES-256-GCM(KEK, data_key || hash_key), AAD = bytes 0..55

Everything before ``wrap_nonce`` is the AAD of the wrap, so editing any field —
KDF parameters, salt, store id, flags — makes unwrapping fail.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from keystore.errors import IntegrityError
from keystore.profiles import KdfParameters

__all__ = ["FLAG_STATE_DIGEST", "HEADER_FORMAT", "KDF_ARGON2ID", "KDF_RAW_KEY", "MAGIC", "Header"]

MAGIC = b"MLKS"
HEADER_FORMAT = 1
KDF_ARGON2ID = 1
KDF_RAW_KEY = 2
FLAG_SQLCIPHER = 0x01
#: The vault keeps an authenticated state record (keystore.digest).  In the header,
#: hence authenticated: a file cannot be passed off as one from before the record
#: existed (which would make the next unlock adopt whatever rows it holds).
FLAG_STATE_DIGEST = 0x02
_KNOWN_FLAGS = FLAG_SQLCIPHER | FLAG_STATE_DIGEST

SALT_LEN = 16
STORE_ID_LEN = 16
NONCE_LEN = 12
WRAPPED_LEN = 32 + 32 + 16

_FIXED = struct.Struct(">4sBB16sBIIIB")  # magic .. salt_len
_GEN = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Header:
    """A parsed, not yet authenticated, vault header."""

    store_id: bytes
    kdf_id: int
    kdf: KdfParameters | None
    salt: bytes
    key_generation: int
    wrap_nonce: bytes
    wrapped: bytes
    flags: int = 0

    @property
    def sqlcipher(self) -> bool:
        """Whether the database file underneath is SQLCipher-encrypted."""
        return bool(self.flags & FLAG_SQLCIPHER)

    @property
    def state_digest(self) -> bool:
        """Whether the vault keeps an authenticated state record (rollback detection)."""
        return bool(self.flags & FLAG_STATE_DIGEST)

    def authenticated_part(self) -> bytes:
        """The bytes bound to the wrapped secrets as AES-GCM associated data."""
        if self.kdf is None:
            t = m = p = 0
        else:
            t, m, p = self.kdf.time_cost, self.kdf.memory_cost, self.kdf.parallelism
        return (
            _FIXED.pack(
                MAGIC, HEADER_FORMAT, self.flags, self.store_id, self.kdf_id,
                t, m, p, len(self.salt),
            )
            + self.salt
            + _GEN.pack(self.key_generation)
        )

    def to_bytes(self) -> bytes:
        """Serialize to the byte layout in the module docstring."""
        return (
            self.authenticated_part()
            + self.wrap_nonce
            + bytes([len(self.wrapped)])
            + self.wrapped
        )

    def with_wrap(self, wrap_nonce: bytes, wrapped: bytes) -> Header:
        """A copy carrying a new wrap of the secrets."""
        return replace(self, wrap_nonce=wrap_nonce, wrapped=wrapped)

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        """Parse a header, checking structure only (the wrap tag is checked on unlock).

        Raises:
            IntegrityError: the bytes are not a well-formed format-1 header.
        """
        def bad(why: str) -> IntegrityError:
            return IntegrityError(f"vault header is malformed: {why}")

        if len(data) < _FIXED.size:
            raise bad("too short")
        magic, fmt, flags, store_id, kdf_id, t, m, p, salt_len = _FIXED.unpack_from(data)
        if magic != MAGIC:
            raise bad("bad magic")
        if fmt != HEADER_FORMAT:
            raise bad(f"unknown header format {fmt}")
        if flags & ~_KNOWN_FLAGS:
            raise bad("unknown flags")
        if salt_len != SALT_LEN:
            raise bad("bad salt length")
        pos = _FIXED.size
        expected = pos + SALT_LEN + _GEN.size + NONCE_LEN + 1 + WRAPPED_LEN
        if len(data) != expected:
            raise bad("bad length")
        salt = data[pos : pos + SALT_LEN]
        pos += SALT_LEN
        (key_generation,) = _GEN.unpack_from(data, pos)
        pos += _GEN.size
        wrap_nonce = data[pos : pos + NONCE_LEN]
        pos += NONCE_LEN
        if data[pos] != WRAPPED_LEN:
            raise bad("bad wrapped-key length")
        wrapped = data[pos + 1 :]
        kdf: KdfParameters | None
        if kdf_id == KDF_ARGON2ID:
            try:
                kdf = KdfParameters(t, m, p, "stored")
            except ValueError as exc:
                raise bad(f"invalid KDF parameters ({exc})") from None
        elif kdf_id == KDF_RAW_KEY:
            if (t, m, p) != (0, 0, 0):
                raise bad("raw-key header carries KDF parameters")
            kdf = None
        else:
            raise bad(f"unknown KDF id {kdf_id}")
        return cls(store_id, kdf_id, kdf, salt, key_generation, wrap_nonce, wrapped, flags)
