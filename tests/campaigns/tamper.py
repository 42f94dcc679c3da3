"""Tampering campaign: edit the files behind the vault's back, at every position we can.

Goes further than ``tests/keystore/test_tamper.py`` (one flip per field): here every byte
(quick) or every bit (full) of a stored value and of the header is flipped, every
truncation length is tried, values are moved between keys, categories and vaults, the
WAL is edited both naively and with its checksums recomputed, and a SQLCipher vault's
pages and header file are edited too.  Each *detected* kind must raise the documented
keystore error, and no error message (nor ``repr``) may contain a plaintext row key or
value.  Each *undetectable* kind (a deleted row, an old copy of a row or of the whole
file, a reset counter, a torn-off WAL tail) is asserted to behave exactly as
``docs/reliability.md`` says, so the table there stays honest.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from keystore import (
    IntegrityError,
    KeystoreError,
    MigrationError,
    MigrationRequired,
    RollbackDetected,
    SchemaTooNew,
    Vault,
    WrongPassphrase,
)
from keystore.profiles import MAX_MEMORY_KIB, KdfParameters
from tests.campaigns.common import FAST_KDF, PASSPHRASE, CampaignReport

__all__ = ["CASES", "Outcome", "run"]

CATEGORY = "openmls/v1/group_epoch_secrets"
#: Header flips that leave Argon2 memory between this and the cap are skipped: they are
#: accepted by design and only make the (still failing) unlock slow and memory-hungry.
_COSTLY_KIB = 64 * 1024
OTHER_CATEGORY = "openmls/v1/message_secrets"


@dataclass(slots=True)
class Outcome:
    """What one tampering kind did: attempts, problems, and the error types seen."""

    tried: int = 0
    problems: list[str] = field(default_factory=list)
    errors: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Plain:
    """The plaintexts of a victim vault, to look for in error messages."""

    keys: tuple[bytes, ...]
    values: tuple[bytes, ...]

    def leaks_into(self, text: str) -> bool:
        """Whether any plaintext key or value appears in ``text``."""
        return any(p.decode() in text for p in (*self.keys, *self.values))


def _victim(path: Path, rows: int = 6, *, sqlcipher: bool = False) -> Plain:
    """A closed vault with distinctive rows in two categories."""
    keys = tuple(b"ROWKEY-%d-" % i + os.urandom(6).hex().encode() for i in range(rows))
    values = tuple(b"PLAINTEXT-%d-" % i + os.urandom(24).hex().encode() for i in range(rows))
    with Vault.create(path, PASSPHRASE, kdf=FAST_KDF, sqlcipher=sqlcipher) as vault:
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            vault.put(CATEGORY if i % 2 == 0 else OTHER_CATEGORY, k, v)
    return Plain(keys, values)


def _raw(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Run one statement on the file directly, as an attacker with write access would."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _row(path: Path, category: str = CATEGORY) -> tuple[bytes, bytes]:
    """``(key_hash, stored value)`` of the first row of a category."""
    rows = _raw(
        path, "SELECT key_hash, value FROM keystore_rows WHERE category = ? ORDER BY key_hash",
        (category,),
    )
    kh, blob = rows[0]
    assert isinstance(kh, bytes) and isinstance(blob, bytes)
    return kh, blob


def _set_value(path: Path, key_hash: bytes, blob: bytes) -> None:
    _raw(path, "UPDATE keystore_rows SET value = ? WHERE key_hash = ?", (blob, key_hash))


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def _positions(length: int, full: bool, stride: int = 1) -> Iterator[tuple[int, int]]:
    """Every bit (full) or one bit of every ``stride``-th byte (quick)."""
    for index in range(0, length, 1 if full else stride):
        for bit in range(8) if full else (index % 8,):
            yield index, bit


def _expect(
    outcome: Outcome,
    plain: Plain,
    action: Callable[[], object],
    allowed: tuple[type[KeystoreError], ...],
    what: str,
) -> None:
    """Run ``action``; it must raise one of ``allowed`` with no plaintext in the message."""
    outcome.tried += 1
    try:
        action()
    except allowed as exc:
        outcome.errors.add(type(exc).__name__)
        if plain.leaks_into(str(exc)) or plain.leaks_into(repr(exc)):
            outcome.problems.append(f"{what}: the error message holds plaintext")
    except Exception as exc:
        outcome.problems.append(f"{what}: {type(exc).__name__} instead of {allowed}: {exc}")
    else:
        outcome.problems.append(f"{what}: not detected")


def _get_first(path: Path, plain: Plain) -> Callable[[], object]:
    """Open, unlock and read the row whose stored value was edited."""

    def action() -> object:
        with Vault.open(path, readonly=True) as vault:
            vault.unlock(PASSPHRASE)
            for k in plain.keys:
                vault.get(CATEGORY, k)
                vault.get(OTHER_CATEGORY, k)
            return None

    return action


def _reader(path: Path) -> Vault:
    vault = Vault.open(path, readonly=True)
    vault.unlock(PASSPHRASE)
    return vault


def _get_all(vault: Vault, plain: Plain) -> Callable[[], object]:
    """Read every row through an already unlocked vault."""

    def action() -> object:
        for k in plain.keys:
            vault.get(CATEGORY, k)
            vault.get(OTHER_CATEGORY, k)
        return None

    return action


def _verify_fails(path: Path) -> Callable[[], object]:
    def action() -> object:
        with Vault.open(path, readonly=True) as vault:
            vault.unlock(PASSPHRASE)
            report = vault.verify()
            if not report.ok:
                raise IntegrityError(f"verify found {len(report.failures)} bad rows")
            return report

    return action


def _read_everything(path: Path, plain: Plain) -> Callable[[], object]:
    """Unlock, verify every row, look every key up (through the index), read the stats."""

    def action() -> object:
        with Vault.open(path, readonly=True) as vault:
            vault.unlock(PASSPHRASE)
            if not vault.verify().ok:
                raise IntegrityError("verify reported bad rows")
            for k in plain.keys:
                vault.get(CATEGORY, k)
                vault.get(OTHER_CATEGORY, k)
            return vault.stats()

    return action


def _unlock(path: Path) -> Callable[[], object]:
    def action() -> object:
        with Vault.open(path) as vault:
            vault.unlock(PASSPHRASE)
            return vault.verify()

    return action


# ---------------------------------------------------------------- detected kinds


def value_bit_flips(d: Path, full: bool) -> Outcome:
    """Every byte (quick) / every bit (full) of a stored value flipped: IntegrityError."""
    out, path = Outcome(), d / "v"
    plain = _victim(path)
    kh, blob = _row(path)
    with _reader(path) as vault:  # one open vault; each edit lands through another connection
        for index, bit in _positions(len(blob), full):
            _set_value(path, kh, _flip(blob, index, bit))
            _expect(out, plain, _get_all(vault, plain), (IntegrityError,), f"flip {index}.{bit}")
    return out


def value_truncated_or_extended(d: Path, full: bool) -> Outcome:
    """A stored value cut to every shorter length, or with bytes appended: IntegrityError."""
    out, path = Outcome(), d / "v"
    plain = _victim(path)
    kh, blob = _row(path)
    with _reader(path) as vault:
        for cut in range(len(blob)):
            _set_value(path, kh, blob[:cut])
            _expect(out, plain, _get_all(vault, plain), (IntegrityError,), f"cut {cut}")
        for extra in (b"\0", os.urandom(16)):
            _set_value(path, kh, blob + extra)
            _expect(out, plain, _get_all(vault, plain), (IntegrityError,), "extended")
    return out


def value_moved_to_another_key(d: Path, full: bool) -> Outcome:
    """Every value of a category copied over every other key of it: IntegrityError."""
    out, path = Outcome(), d / "v"
    plain = _victim(path)
    rows = _raw(path, "SELECT key_hash, value FROM keystore_rows WHERE category = ?", (CATEGORY,))
    for src_kh, src in rows:
        for dst_kh, dst in rows:
            if src_kh == dst_kh:
                continue
            assert isinstance(dst_kh, bytes) and isinstance(dst, bytes)
            _raw(path, "UPDATE keystore_rows SET value = ? WHERE key_hash = ?", (src, dst_kh))
            _expect(out, plain, _get_first(path, plain), (IntegrityError,), "moved value")
            _set_value(path, dst_kh, dst)
    return out


def row_moved_to_another_category(d: Path, full: bool) -> Outcome:
    """A whole row (hash and value) relabelled with another category: verify reports it."""
    out, path = Outcome(), d / "v"
    plain = _victim(path)
    kh, _ = _row(path)
    _raw(path, "UPDATE keystore_rows SET category = ? WHERE key_hash = ?", (OTHER_CATEGORY, kh))
    _expect(out, plain, _verify_fails(path), (IntegrityError,), "relabelled row")
    return out


def row_duplicated_under_new_hash(d: Path, full: bool) -> Outcome:
    """A row copied under a made-up key hash: verify reports it."""
    out, path = Outcome(), d / "v"
    plain = _victim(path)
    _, blob = _row(path)
    _raw(
        path, "INSERT INTO keystore_rows (category, key_hash, value) VALUES (?, ?, ?)",
        (CATEGORY, os.urandom(32), blob),
    )
    _expect(out, plain, _verify_fails(path), (IntegrityError,), "duplicated row")
    return out


def value_moved_to_another_vault(d: Path, full: bool) -> Outcome:
    """The same row key in two vaults (same passphrase): swapping values is detected."""
    out = Outcome()
    a, b = d / "a", d / "b"
    with Vault.create(a, PASSPHRASE, kdf=FAST_KDF) as va:
        va.put(CATEGORY, b"ROWKEY-shared", b"PLAINTEXT-from-a")
    with Vault.create(b, PASSPHRASE, kdf=FAST_KDF) as vb:
        vb.put(CATEGORY, b"ROWKEY-shared", b"PLAINTEXT-from-b")
    _, blob_a = _row(a)
    _raw(b, "UPDATE keystore_rows SET value = ?", (blob_a,))
    plain = Plain((b"ROWKEY-shared",), (b"PLAINTEXT-from-a", b"PLAINTEXT-from-b"))
    _expect(out, plain, _verify_fails(b), (IntegrityError,), "value from another vault")
    return out


def _header(path: Path) -> bytes:
    ((blob,),) = _raw(path, "SELECT header FROM keystore_header")
    assert isinstance(blob, bytes)
    return blob


def header_bit_flips(d: Path, full: bool) -> Outcome:
    """Every byte (quick) / bit (full) of the header flipped: WrongPassphrase or IntegrityError.

    This covers each field: magic, format, flags, store id, KDF id and parameters, salt,
    key generation, wrap nonce and wrapped key.
    """
    out, path = Outcome(), d / "v"
    plain = _victim(path, rows=2)
    header = _header(path)
    for index, bit in _positions(len(header), full):
        edited = _flip(header, index, bit)
        (memory_kib,) = struct.unpack_from(">I", edited, 27)
        if _COSTLY_KIB < memory_kib <= MAX_MEMORY_KIB:
            continue  # accepted, and only makes the failing unlock cost up to 2 GiB: see docs
        _raw(path, "UPDATE keystore_header SET header = ?", (edited,))
        _expect(
            out, plain, _unlock(path), (WrongPassphrase, IntegrityError), f"header {index}.{bit}"
        )
    return out


def header_kdf_cost_inflated(d: Path, full: bool) -> Outcome:
    """KDF time or memory raised towards 2**32 (unlock would run for days): IntegrityError."""
    out, path = Outcome(), d / "v"
    plain = _victim(path, rows=2)
    header = _header(path)
    for t, m in ((0x80000001, 8), (1, 0x80000008), (0xFFFFFFFF, 0xFFFFFFFF), (17, 8)):
        edited = bytearray(header)
        edited[23:31] = struct.pack(">II", t, m)
        _raw(path, "UPDATE keystore_header SET header = ?", (bytes(edited),))
        _expect(out, plain, _unlock(path), (IntegrityError,), f"t={t} m={m}")
    return out


def header_kdf_downgrade(d: Path, full: bool) -> Outcome:
    """KDF parameters lowered to the cheapest (a brute-force helper): WrongPassphrase."""
    out, path = Outcome(), d / "v"
    with Vault.create(path, PASSPHRASE, kdf=KdfParameters(2, 16, 1)) as vault:
        vault.put(CATEGORY, b"ROWKEY-x", b"PLAINTEXT-x")
    header = bytearray(_header(path))
    header[23:35] = struct.pack(">III", 1, 8, 1)
    _raw(path, "UPDATE keystore_header SET header = ?", (bytes(header),))
    plain = Plain((b"ROWKEY-x",), (b"PLAINTEXT-x",))
    _expect(out, plain, _unlock(path), (WrongPassphrase,), "KDF downgrade")
    return out


def header_swapped_from_another_vault(d: Path, full: bool) -> Outcome:
    """Another vault's header under our rows (same passphrase): no row authenticates."""
    out = Outcome()
    plain = _victim(d / "a")
    Vault.create(d / "b", PASSPHRASE, kdf=FAST_KDF).close()
    _raw(d / "a", "UPDATE keystore_header SET header = ?", (_header(d / "b"),))
    _expect(out, plain, _verify_fails(d / "a"), (IntegrityError,), "foreign header")
    return out


def schema_version_edited(d: Path, full: bool) -> Outcome:
    """``user_version`` raised / lowered, and a migration record's checksum edited."""
    out, path = Outcome(), d / "v"
    plain = _victim(path, rows=2)
    ((version,),) = _raw(path, "PRAGMA user_version")
    assert isinstance(version, int)
    _raw(path, f"PRAGMA user_version = {version + 1}")
    _expect(out, plain, _unlock(path), (SchemaTooNew,), "user_version raised")
    _raw(path, f"PRAGMA user_version = {version - 1}")
    # MigrationRequired, or MigrationError when the records disagree with the version.
    _expect(out, plain, _unlock(path), (MigrationRequired, MigrationError), "user_version lowered")
    _raw(path, f"PRAGMA user_version = {version}")
    _raw(path, "UPDATE keystore_migrations SET checksum = 'edited' WHERE version = 1")
    _expect(out, plain, _unlock(path), (MigrationError,), "migration record edited")
    return out


# -- the WAL

_WAL_HEADER = 32
_FRAME_HEADER = 24


def _wal_checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    """SQLite's WAL checksum (a Fibonacci-weighted sum over 32-bit words)."""
    words = struct.unpack(("<" if not big_endian else ">") + f"{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _reseal_wal(wal: bytearray) -> None:
    """Recompute every frame checksum, as an attacker who knows the format would."""
    magic, _, page_size = struct.unpack_from(">III", wal, 0)
    big = bool(magic & 1)
    s0, s1 = struct.unpack_from(">II", wal, 24)
    pos = _WAL_HEADER
    while pos + _FRAME_HEADER + page_size <= len(wal):
        s0, s1 = _wal_checksum(bytes(wal[pos : pos + 8]), s0, s1, big)
        body = bytes(wal[pos + _FRAME_HEADER : pos + _FRAME_HEADER + page_size])
        s0, s1 = _wal_checksum(body, s0, s1, big)
        struct.pack_into(">II", wal, pos + 16, s0, s1)
        pos += _FRAME_HEADER + page_size


def _snapshot_with_wal(d: Path) -> tuple[Path, Plain, bytes]:
    """A copy of a vault taken while open, so its last writes are only in the WAL.

    Returns the copy, its plaintexts, and the stored value of the last row written.
    """
    path = d / "live"
    keys = tuple(b"ROWKEY-wal-%d" % i for i in range(3))
    values = tuple(b"PLAINTEXT-wal-%d-" % i + os.urandom(40).hex().encode() for i in range(3))
    with Vault.create(path, PASSPHRASE, kdf=FAST_KDF) as vault:
        for k, v in zip(keys, values, strict=True):
            vault.put(CATEGORY, k, v)
        copy = d / "copy"
        shutil.copyfile(path, copy)
        shutil.copyfile(f"{path}-wal", f"{copy}-wal")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        last = conn.execute(
            "SELECT value FROM keystore_rows WHERE key_hash = (SELECT key_hash FROM"
            " keystore_rows ORDER BY rowid DESC LIMIT 1)"
        ).fetchone()[0]
        conn.close()
    return copy, Plain(keys, values), bytes(last)


def wal_edited_with_checksums(d: Path, full: bool) -> Outcome:
    """A value edited inside the WAL, frame checksums recomputed: the row fails its tag."""
    out = Outcome()
    copy, plain, last = _snapshot_with_wal(d)
    wal = bytearray(Path(f"{copy}-wal").read_bytes())
    at = wal.rfind(last)
    if at < 0:
        out.problems.append("the last value is not in the WAL; the scenario did not run")
        return out
    wal[at + len(last) // 2] ^= 0x01
    _reseal_wal(wal)
    Path(f"{copy}-wal").write_bytes(bytes(wal))
    _expect(out, plain, _get_first(copy, plain), (IntegrityError,), "WAL edit, resealed")
    return out


# -- SQLCipher


def sqlcipher_page_flips(d: Path, full: bool) -> Outcome:
    """A SQLCipher vault with one byte flipped in a page: IntegrityError (page HMAC)."""
    out, path = Outcome(), d / "v"
    plain = _victim(path, rows=40, sqlcipher=True)
    pristine = path.read_bytes()
    page = 4096
    step = 97 if full else 1201
    for offset in range(page + 16, len(pristine), step):  # pages after the first
        path.write_bytes(_flip(pristine, offset))
        problems = len(out.problems)
        _expect(out, plain, _read_everything(path, plain), (IntegrityError,), f"byte {offset}")
        if len(out.problems) > problems and _cipher_integrity_check_fails(path):
            # The vault never reads that page (the keystore_header table stays empty in
            # a SQLCipher vault); SQLCipher's own check shows the page is authenticated.
            out.problems.pop()
            out.errors.add("unread page, caught by PRAGMA cipher_integrity_check")
    return out


def _cipher_integrity_check_fails(path: Path) -> bool:
    with Vault.open(path, readonly=True) as vault:
        vault.unlock(PASSPHRASE)
        conn = vault._conn  # the keyed connection: the only way to ask SQLCipher itself
        assert conn is not None
        return bool(conn.execute("PRAGMA cipher_integrity_check").fetchall())


def sqlcipher_header_file_flips(d: Path, full: bool) -> Outcome:
    """Every byte of a SQLCipher vault's header file flipped: the vault does not unlock."""
    out, path = Outcome(), d / "v"
    plain = _victim(path, rows=2, sqlcipher=True)
    side = Path(f"{path}.header")
    pristine = side.read_bytes()
    for index, bit in _positions(len(pristine), full, stride=5):
        if 9 <= index < 13:
            continue  # the schema-version mirror: unauthenticated by design, see the docs
        side.write_bytes(_flip(pristine, index, bit))
        _expect(
            out, plain, _unlock(path), (WrongPassphrase, IntegrityError, KeystoreError),
            f"header file {index}.{bit}",
        )
    side.write_bytes(pristine)
    return out


def sqlcipher_swapped_for_plain(d: Path, full: bool) -> Outcome:
    """A SQLCipher vault's database replaced by a plain vault: refused on open."""
    out, path = Outcome(), d / "v"
    plain = _victim(path, rows=2, sqlcipher=True)
    Vault.create(d / "plain", PASSPHRASE, kdf=FAST_KDF).close()
    os.replace(d / "plain", path)
    _expect(out, plain, _unlock(path), (IntegrityError,), "plain database swapped in")
    return out


# ---------------------------------------------------------------- undetectable kinds


def _read_back(path: Path, plain: Plain) -> tuple[dict[bytes, bytes | None], bool]:
    with Vault.open(path) as vault:
        vault.unlock(PASSPHRASE)
        got = {k: vault.get(CATEGORY, k) or vault.get(OTHER_CATEGORY, k) for k in plain.keys}
        return got, vault.verify().ok


def _verify(path: Path) -> Callable[[], object]:
    """Open, unlock and verify (a full read, which checks the state record)."""

    def action() -> object:
        with Vault.open(path, readonly=True) as vault:
            vault.unlock(PASSPHRASE)
            return vault.verify()

    return action


def row_deleted(d: Path, full: bool) -> Outcome:
    """A deleted row: absent for get(), refused by any full read (state record)."""
    out, path = Outcome(), d / "v"
    plain = _victim(path)
    kh, _ = _row(path)
    _raw(path, "DELETE FROM keystore_rows WHERE key_hash = ?", (kh,))
    _expect(out, plain, _verify(path), (RollbackDetected,), "deleted row")
    return out


def old_row_restored(d: Path, full: bool) -> Outcome:
    """Older ciphertexts of the same rows put back: each authenticates alone, but a
    full read refuses the set (state record)."""
    out, path = Outcome(), d / "v"
    plain = _victim(path)
    old = _raw(path, "SELECT key_hash, value FROM keystore_rows")
    with Vault.open(path) as vault:
        vault.unlock(PASSPHRASE)
        for i, key in enumerate(plain.keys):
            vault.put(CATEGORY if i % 2 == 0 else OTHER_CATEGORY, key, b"PLAINTEXT-newer")
    for kh, blob in old:
        assert isinstance(kh, bytes) and isinstance(blob, bytes)
        _set_value(path, kh, blob)
    _expect(out, plain, _verify(path), (RollbackDetected,), "old rows put back")
    return out


def whole_file_rollback_is_not_detected(d: Path, full: bool) -> Outcome:
    """Known limit: an old copy of the whole vault file opens and verifies."""
    out, path = Outcome(tried=1), d / "v"
    plain = _victim(path)
    old = path.read_bytes()
    with Vault.open(path) as vault:
        vault.unlock(PASSPHRASE)
        vault.put(CATEGORY, plain.keys[0], b"PLAINTEXT-newer")
    path.write_bytes(old)
    got, ok = _read_back(path, plain)
    if got[plain.keys[0]] != plain.values[0] or not ok:
        out.problems.append("a rolled-back file did not behave as documented")
    return out


def counter_reset_is_not_detected(d: Path, full: bool) -> Outcome:
    """Known limit: the nonce-budget counter can be reset; rows are unaffected."""
    out, path = Outcome(tried=1), d / "v"
    _victim(path)
    _raw(path, "UPDATE keystore_counters SET value = 0 WHERE name = 'encryptions'")
    with Vault.open(path) as vault:
        vault.unlock(PASSPHRASE)
        if vault.stats().encryptions != 0 or not vault.verify().ok:
            out.problems.append("a reset counter did not behave as documented")
    return out


def wal_tail_torn_is_not_detected(d: Path, full: bool) -> Outcome:
    """Known limit: a naive edit of the WAL's last frame drops the last transaction.

    SQLite stops replaying the WAL at the first frame whose checksum fails, so the
    vault opens, verifies, and simply lacks the last write: a silent rollback.
    """
    out = Outcome(tried=1)
    copy, plain, last = _snapshot_with_wal(d)
    wal = bytearray(Path(f"{copy}-wal").read_bytes())
    at = wal.rfind(last)
    wal[at] ^= 0x01
    Path(f"{copy}-wal").write_bytes(bytes(wal))
    got, ok = _read_back(copy, plain)
    if got[plain.keys[-1]] is not None or not ok:
        out.problems.append("a torn WAL tail did not behave as documented (last write absent)")
    return out


#: name -> (function, detected?)
CASES: dict[str, tuple[Callable[[Path, bool], Outcome], bool]] = {
    "value-bit-flip": (value_bit_flips, True),
    "value-truncated-or-extended": (value_truncated_or_extended, True),
    "value-moved-to-another-key": (value_moved_to_another_key, True),
    "row-moved-to-another-category": (row_moved_to_another_category, True),
    "row-duplicated-under-new-hash": (row_duplicated_under_new_hash, True),
    "value-moved-to-another-vault": (value_moved_to_another_vault, True),
    "header-bit-flip": (header_bit_flips, True),
    "header-kdf-cost-inflated": (header_kdf_cost_inflated, True),
    "header-kdf-downgrade": (header_kdf_downgrade, True),
    "header-from-another-vault": (header_swapped_from_another_vault, True),
    "schema-version-edited": (schema_version_edited, True),
    "wal-edited-checksums-recomputed": (wal_edited_with_checksums, True),
    "sqlcipher-page-flip": (sqlcipher_page_flips, True),
    "sqlcipher-header-file-flip": (sqlcipher_header_file_flips, True),
    "sqlcipher-swapped-for-plain": (sqlcipher_swapped_for_plain, True),
    "row-deleted": (row_deleted, True),
    "old-row-restored": (old_row_restored, True),
    "whole-file-rollback": (whole_file_rollback_is_not_detected, False),
    "counter-reset": (counter_reset_is_not_detected, False),
    "wal-tail-torn": (wal_tail_torn_is_not_detected, False),
}


def run(full: bool, seed: int = 0, directory: Path | None = None) -> CampaignReport:
    """Run every case of the matrix; ``full`` flips every bit instead of every byte."""
    report = CampaignReport("tampering")
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        for name, (case, detected) in CASES.items():
            where = Path(tmp) / name
            where.mkdir()
            outcome = case(where, full)
            report.trials += outcome.tried
            report.count(f"{name} ({'detected' if detected else 'known limit'})", outcome.tried)
            report.findings += [f"[{name}] {p}" for p in outcome.problems]
    return report
