"""The Vault's public API: round trips, lock/unlock, passphrase change, rekey, reports."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from keystore import (
    Change,
    IntegrityError,
    Vault,
    VaultBusy,
    VaultClosed,
    VaultIOError,
    VaultLocked,
    WrongPassphrase,
    profiles,
)
from keystore.sidecar import sidecar_path_for
from tests.conftest import FAST_KDF, PASSPHRASE
from tests.keystore.helpers import raw_rows, write_raw

RAW_KEY = bytes(range(32))


def test_put_get_roundtrip(vault: Vault) -> None:
    """A written row reads back exactly."""
    vault.put("key_packages", b"ref-1", b"\x00secret\xff")
    assert vault.get("key_packages", b"ref-1") == b"\x00secret\xff"


def test_get_absent_is_none(vault: Vault) -> None:
    """Reading a row that was never written gives None."""
    assert vault.get("key_packages", b"nope") is None


def test_put_overwrites(vault: Vault) -> None:
    """A second put to the same row replaces the value."""
    vault.put("c", b"k", b"one")
    vault.put("c", b"k", b"two")
    assert vault.get("c", b"k") == b"two"
    assert list(vault.items("c")) == [(b"k", b"two")]


def test_delete_removes_row(vault: Vault) -> None:
    """A deleted row reads as None and is gone from items()."""
    vault.put("c", b"k", b"v")
    vault.delete("c", b"k")
    assert vault.get("c", b"k") is None
    assert list(vault.items("c")) == []


def test_delete_absent_is_noop(vault: Vault) -> None:
    """Deleting a row that does not exist is not an error."""
    vault.delete("c", b"never")


def test_empty_key_and_value_roundtrip(vault: Vault) -> None:
    """Empty keys and values are legal rows."""
    vault.put("c", b"", b"")
    assert vault.get("c", b"") == b""


def test_items_lists_keys_and_values(vault: Vault) -> None:
    """items() returns every (key, value) of one category only."""
    rows = {f"k{i}".encode(): os.urandom(i) for i in range(20)}
    vault.apply([Change("a", k, v) for k, v in rows.items()])
    vault.put("b", b"other", b"x")
    assert dict(vault.items("a")) == rows


def test_categories_lists_nonempty(vault: Vault) -> None:
    """categories() names each category that holds rows, sorted."""
    vault.put("zeta", b"k", b"v")
    vault.put("alpha", b"k", b"v")
    vault.put("gone", b"k", b"v")
    vault.delete("gone", b"k")
    assert vault.categories() == ["alpha", "zeta"]


def test_apply_writes_and_deletes(vault: Vault) -> None:
    """apply() performs puts and deletes together and counts distinct rows."""
    vault.put("c", b"old", b"x")
    n = vault.apply([Change("c", b"new", b"1"), Change("c", b"old", None)])
    assert n == 2
    assert vault.get("c", b"new") == b"1"
    assert vault.get("c", b"old") is None


def test_apply_coalesces_last_wins(vault: Vault) -> None:
    """Repeated changes to one row in a batch: the last one wins."""
    n = vault.apply(
        [
            Change("c", b"k", b"1"),
            Change("c", b"k", b"2"),
            Change("c", b"k", None),
            Change("c", b"k", b"3"),
        ]
    )
    assert n == 1
    assert vault.get("c", b"k") == b"3"


def test_apply_accepts_any_change_like(vault: Vault) -> None:
    """apply() takes any object with category/key/value (e.g. a storage event)."""

    class Event:
        def __init__(self, category: str, key: bytes, value: bytes | None) -> None:
            self.category, self.key, self.value = category, key, value

    vault.apply([Event("c", b"k", b"v")])
    assert vault.get("c", b"k") == b"v"


def test_apply_is_atomic_on_storage_failure(vault: Vault, vault_path: Path) -> None:
    """A failure inside the transaction leaves none of the batch behind."""
    vault.put("keep", b"k", b"before")
    write_raw(
        vault_path,
        "CREATE TRIGGER boom BEFORE INSERT ON keystore_rows WHEN NEW.category = 'boom'"
        " BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    )
    before = raw_rows(vault_path)
    with pytest.raises(VaultIOError):
        vault.apply(
            [Change("keep", b"k", b"after"), Change("a", b"1", b"x"), Change("boom", b"2", b"y")]
        )
    assert raw_rows(vault_path) == before
    assert vault.get("keep", b"k") == b"before"
    assert vault.get("a", b"1") is None


def test_apply_validates_before_writing(vault: Vault, vault_path: Path) -> None:
    """An invalid change anywhere in a batch rejects the whole batch up front."""
    before = raw_rows(vault_path)
    with pytest.raises(TypeError):
        vault.apply([Change("c", b"ok", b"v"), Change("c", "not-bytes", b"v")])  # type: ignore[arg-type]
    assert raw_rows(vault_path) == before


def test_apply_empty_batch(vault: Vault) -> None:
    """An empty batch is a no-op returning 0."""
    assert vault.apply([]) == 0


def test_unlock_with_passphrase_after_reopen(vault_path: Path) -> None:
    """A closed vault reopens locked and unlocks with its passphrase."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        v.put("c", b"k", b"v")
    with Vault.open(vault_path) as v:
        assert v.locked
        v.unlock(PASSPHRASE)
        assert v.get("c", b"k") == b"v"


def test_wrong_passphrase_raises(vault_path: Path) -> None:
    """A wrong passphrase raises WrongPassphrase and leaves the vault locked."""
    Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF).close()
    with Vault.open(vault_path) as v:
        with pytest.raises(WrongPassphrase):
            v.unlock("wrong")
        assert v.locked


def test_passphrase_is_nfc_normalized(vault_path: Path) -> None:
    """The same passphrase in composed and decomposed Unicode unlocks the same vault."""
    Vault.create(vault_path, "caf\u00e9", kdf=FAST_KDF).close()
    with Vault.open(vault_path) as v:
        v.unlock("cafe\u0301")
        assert not v.locked


def test_raw_key_roundtrip(vault_path: Path) -> None:
    """A raw-key vault unlocks with its 32-byte key."""
    with Vault.create_with_key(vault_path, RAW_KEY) as v:
        v.put("c", b"k", b"v")
    with Vault.open(vault_path) as v:
        v.unlock_with_key(RAW_KEY)
        assert v.get("c", b"k") == b"v"


def test_wrong_raw_key_raises(vault_path: Path) -> None:
    """A wrong raw key raises WrongPassphrase."""
    Vault.create_with_key(vault_path, RAW_KEY).close()
    with Vault.open(vault_path) as v, pytest.raises(WrongPassphrase):
        v.unlock_with_key(bytes(32))


def test_unlock_method_must_match_vault_kind(vault_path: Path) -> None:
    """A passphrase vault refuses a raw key and vice versa, with a clear ValueError."""
    Vault.create_with_key(vault_path, RAW_KEY).close()
    with Vault.open(vault_path) as v, pytest.raises(ValueError, match="raw key"):
        v.unlock(PASSPHRASE)


@pytest.mark.parametrize(
    "call",
    [
        lambda v: v.get("c", b"k"),
        lambda v: v.put("c", b"k", b"v"),
        lambda v: v.delete("c", b"k"),
        lambda v: list(v.items("c")),
        lambda v: v.categories(),
        lambda v: v.apply([Change("c", b"k", b"v")]),
        lambda v: v.rekey(),
        lambda v: v.verify(),
    ],
    ids=["get", "put", "delete", "items", "categories", "apply", "rekey", "verify"],
)
def test_locked_vault_refuses_data_access(vault: Vault, call: object) -> None:
    """After lock(), every data method raises VaultLocked."""
    vault.put("c", b"k", b"v")
    vault.lock()
    assert vault.locked
    with pytest.raises(VaultLocked):
        call(vault)  # type: ignore[operator]


def test_lock_then_unlock_again(vault: Vault) -> None:
    """A locked vault unlocks again in the same object."""
    vault.put("c", b"k", b"v")
    vault.lock()
    vault.unlock(PASSPHRASE)
    assert vault.get("c", b"k") == b"v"


def test_items_iterator_stops_after_lock(vault: Vault) -> None:
    """An items() iterator cannot keep decrypting once the vault is locked."""
    vault.apply([Change("c", bytes([i]), b"v") for i in range(3)])
    it = vault.items("c")
    next(it)
    vault.lock()
    with pytest.raises(VaultLocked):
        next(it)


def test_closed_vault_raises(vault: Vault) -> None:
    """Using a closed vault raises VaultClosed."""
    vault.close()
    with pytest.raises(VaultClosed):
        vault.get("c", b"k")
    vault.close()  # idempotent


def test_context_manager_closes_and_releases_lock(vault_path: Path) -> None:
    """Leaving the with-block closes the vault, so it can be opened for writing again."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v, pytest.raises(VaultBusy):
        Vault.open(vault_path)
    assert v.locked
    Vault.open(vault_path).close()


def test_readonly_refuses_writes(vault_path: Path) -> None:
    """A read-only vault reads but refuses to write."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        v.put("c", b"k", b"v")
    with Vault.open(vault_path, readonly=True) as r:
        r.unlock(PASSPHRASE)
        assert r.get("c", b"k") == b"v"
        with pytest.raises(VaultIOError, match="read-only"):
            r.put("c", b"k", b"w")


def test_create_refuses_existing_file(tmp_path: Path) -> None:
    """create() never overwrites: an existing file is left byte-for-byte alone."""
    target = tmp_path / "precious"
    target.write_bytes(b"my data")
    with pytest.raises(FileExistsError):
        Vault.create(target, PASSPHRASE, kdf=FAST_KDF)
    assert target.read_bytes() == b"my data"


def test_create_leaves_no_temporary_files(tmp_path: Path) -> None:
    """create() builds the file aside and links it in: only the vault and its lock remain."""
    Vault.create(tmp_path / "v", PASSPHRASE, kdf=FAST_KDF).close()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("v", "v.lock")]
    assert leftovers == []


def test_change_passphrase(vault_path: Path) -> None:
    """After a passphrase change the old one fails, the new one works, rows are untouched."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        v.apply([Change("c", bytes([i]), os.urandom(50)) for i in range(10)])
        before = raw_rows(vault_path)
        v.change_passphrase(PASSPHRASE, "new passphrase")
        assert raw_rows(vault_path) == before
        assert v.get("c", b"\x01") is not None  # still unlocked, keys unchanged
    with Vault.open(vault_path) as v:
        with pytest.raises(WrongPassphrase):
            v.unlock(PASSPHRASE)
        v.unlock("new passphrase")
        assert len(list(v.items("c"))) == 10


def test_change_passphrase_with_wrong_old_changes_nothing(vault: Vault, vault_path: Path) -> None:
    """A wrong old passphrase is refused and the header stays as it was."""
    before = write_header_snapshot(vault_path)
    with pytest.raises(WrongPassphrase):
        vault.change_passphrase("wrong", "new")
    assert write_header_snapshot(vault_path) == before


def test_change_passphrase_works_while_locked(vault: Vault) -> None:
    """The passphrase can be changed without unlocking first."""
    vault.lock()
    vault.change_passphrase(PASSPHRASE, "other")
    vault.unlock("other")


def test_change_passphrase_can_upgrade_kdf(vault: Vault) -> None:
    """Changing the passphrase can move to new KDF parameters, clearing needs_rehash."""
    target = profiles.KdfParameters(1, 16, 1)
    assert vault.needs_rehash(target)
    vault.change_passphrase(PASSPHRASE, PASSPHRASE, kdf=target)
    assert not vault.needs_rehash(target)
    assert vault.kdf is not None and vault.kdf.same_cost(target)


def test_change_key_for_raw_key_vault(vault_path: Path) -> None:
    """A raw-key vault's key can be replaced; the old key stops working."""
    new_key = os.urandom(32)
    with Vault.create_with_key(vault_path, RAW_KEY) as v:
        v.put("c", b"k", b"v")
        v.change_key(RAW_KEY, new_key)
    with Vault.open(vault_path) as v:
        with pytest.raises(WrongPassphrase):
            v.unlock_with_key(RAW_KEY)
        v.unlock_with_key(new_key)
        assert v.get("c", b"k") == b"v"


def write_header_snapshot(path: Path) -> bytes:
    """The stored header bytes (the header file of a SQLCipher vault, else the header row)."""
    side = sidecar_path_for(path)
    if side.exists():
        return side.read_bytes()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return bytes(conn.execute("SELECT header FROM keystore_header").fetchone()[0])
    finally:
        conn.close()


def test_rekey_reencrypts_every_row(vault: Vault, vault_path: Path) -> None:
    """rekey() changes every stored ciphertext and key hash while the contents stay equal."""
    rows = {(f"c{i % 3}", f"k{i}".encode()): os.urandom(100) for i in range(30)}
    vault.apply([Change(c, k, v) for (c, k), v in rows.items()])
    before = raw_rows(vault_path)
    seen: list[tuple[int, int]] = []
    vault.rekey(progress=lambda done, total: seen.append((done, total)))
    after = raw_rows(vault_path)
    # The hash key rotates too: every stored key hash changes, per category.
    assert len(after) == len(before)
    assert not before.keys() & after.keys()
    assert sorted(c for c, _ in before) == sorted(c for c, _ in after)
    assert not set(before.values()) & set(after.values())
    assert seen[-1] == (30, 30)
    for (c, k), v in rows.items():
        assert vault.get(c, k) == v


def test_rekey_survives_reopen(vault_path: Path) -> None:
    """After a rekey the vault reopens with the same passphrase and reads the rows."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        v.put("c", b"k", b"v")
        v.rekey()
        assert v.stats().key_generation == 2
    with Vault.open(vault_path) as v:
        v.unlock(PASSPHRASE)
        assert v.get("c", b"k") == b"v"


def test_old_ciphertext_fails_after_rekey(vault: Vault, vault_path: Path) -> None:
    """A row copied from before a rekey no longer authenticates (old key is gone)."""
    vault.put("c", b"k", b"v")
    (old_blob,) = raw_rows(vault_path).values()
    vault.rekey()
    write_raw(vault_path, "UPDATE keystore_rows SET value = ?", (old_blob,))
    with pytest.raises(IntegrityError):
        vault.get("c", b"k")


def test_rekey_aborts_on_corrupt_row_without_writing(vault: Vault, vault_path: Path) -> None:
    """A corrupt row stops rekey before anything is written."""
    vault.apply([Change("c", bytes([i]), b"value") for i in range(5)])
    rows = raw_rows(vault_path)
    victim_cat, victim_hash = next(iter(rows))
    blob = bytearray(rows[(victim_cat, victim_hash)])
    blob[-1] ^= 1
    write_raw(
        vault_path,
        "UPDATE keystore_rows SET value = ? WHERE key_hash = ?",
        (bytes(blob), victim_hash),
    )
    before = raw_rows(vault_path)
    with pytest.raises(IntegrityError):
        vault.rekey()
    assert raw_rows(vault_path) == before
    report = vault.verify()  # the old key is still in use: only the victim fails
    assert report.rows_checked == 5 and len(report.failures) == 1


def test_stats_counts_rows_bytes_and_encryptions(vault: Vault) -> None:
    """stats() reports rows and bytes per category and the encryptions made."""
    vault.apply([Change("a", bytes([i]), b"x" * 10) for i in range(4)])
    vault.put("b", b"k", b"y")
    vault.put("b", b"k", b"z")
    s = vault.stats()
    assert s.categories["a"].rows == 4 and s.categories["b"].rows == 1
    assert s.total_rows == 5
    assert s.categories["a"].bytes > 4 * 10  # ciphertext overhead included
    assert s.encryptions == 6
    assert not s.rekey_recommended
    assert s.kdf.kind == "argon2id" and s.kdf.memory_cost_kib == FAST_KDF.memory_cost


def test_stats_locked(vault: Vault) -> None:
    """A locked plain vault reports stats without a key; a SQLCipher one needs the key."""
    vault.put("a", b"k", b"v")
    vault.lock()
    if vault.sqlcipher:  # the whole file is encrypted: even row counts need the key
        with pytest.raises(VaultLocked):
            vault.stats()
    else:
        assert vault.stats().total_rows == 1


def test_encryption_counter_persists_and_resets_on_rekey(vault_path: Path) -> None:
    """The nonce-budget counter survives reopen and restarts at the row count on rekey."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        for i in range(7):
            v.put("c", b"k", bytes([i]))
    with Vault.open(vault_path) as v:
        assert v.stats().encryptions == 7
        v.unlock(PASSPHRASE)
        v.rekey()
        assert v.stats().encryptions == 1


def test_verify_ok_and_reports_failures_without_plaintext(vault: Vault, vault_path: Path) -> None:
    """verify() passes a clean vault and lists a tampered row by category and hash only."""
    vault.apply([Change("c", f"key-{i}".encode(), b"secret-value") for i in range(3)])
    assert vault.verify().ok
    (cat, kh), blob = next(iter(raw_rows(vault_path).items()))
    bad = bytearray(blob)
    bad[20] ^= 0x80
    write_raw(vault_path, "UPDATE keystore_rows SET value = ? WHERE key_hash = ?", (bytes(bad), kh))
    report = vault.verify()
    assert not report.ok and report.rows_checked == 3
    assert [(f.category, f.key_hash) for f in report.failures] == [(cat, kh.hex())]
    dumped = report.model_dump_json()
    assert "secret-value" not in dumped and "key-" not in dumped


def test_needs_rehash_compares_parameters(vault: Vault) -> None:
    """needs_rehash() is true when the stored KDF parameters differ from the profile."""
    assert vault.needs_rehash(profiles.RFC_9106_LOW_MEMORY)
    assert not vault.needs_rehash(FAST_KDF)


def test_threads_share_one_vault(vault: Vault) -> None:
    """Concurrent writers on one Vault object lose nothing."""

    def worker(n: int) -> None:
        for i in range(25):
            vault.put(f"t{n}", str(i).encode(), f"{n}:{i}".encode())

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in range(4):
        assert len(list(vault.items(f"t{n}"))) == 25


def test_reopen_in_new_process_reads_everything(vault_path: Path) -> None:
    """Rows written by one process are read back by a fresh one, and vice versa."""
    rows = {(f"c{i % 4}", f"key{i}".encode()): os.urandom(64) for i in range(40)}
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        v.apply([Change(c, k, val) for (c, k), val in rows.items()])
    script = textwrap.dedent(
        """
        import sys
        from keystore import Vault, Change
        path, pw = sys.argv[1], sys.argv[2]
        with Vault.open(path) as v:
            v.unlock(pw)
            for cat in v.categories():
                for key, value in v.items(cat):
                    print(cat, key.hex(), value.hex())
            v.put("from-child", b"child-key", b"child-value")
        """
    )
    # The passphrase goes to the child on argv only because this is a test harness.
    out = subprocess.run(
        [sys.executable, "-c", script, str(vault_path), PASSPHRASE],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
    ).stdout
    seen = {}
    for line in out.splitlines():
        cat, key, value = line.split()
        seen[(cat, bytes.fromhex(key))] = bytes.fromhex(value)
    assert seen == rows
    with Vault.open(vault_path) as v:
        v.unlock(PASSPHRASE)
        assert v.get("from-child", b"child-key") == b"child-value"


def test_writable_connection_overwrites_deleted_content(vault: Vault) -> None:
    """secure_delete is on for every kind of vault, not left to how SQLite was built."""
    conn = vault._connection()  # white-box: a per-connection pragma has no public face
    assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1


def test_deleted_ciphertext_leaves_the_file(vault_path: Path) -> None:
    """After a delete and a checkpoint, the old ciphertext bytes are gone from the file."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        v.put("c", b"k", os.urandom(3000))
        (blob,) = raw_rows(vault_path).values()
        v.delete("c", b"k")
    assert blob[20:80] not in vault_path.read_bytes()


def test_a_change_and_a_storage_event_never_show_their_value_in_a_repr() -> None:
    """Row values are secrets: reprs (logs, tracebacks) name the row but never its value."""
    from keystore import Change
    from mls.storage import StorageEvent

    secret = b"SECRET-KEY-MATERIAL"
    for obj in (Change("c", b"k", secret), StorageEvent(1, "c", b"k", secret)):
        assert b"SECRET".decode() not in repr(obj)
        assert "'c'" in repr(obj)
    assert "value=None" in repr(StorageEvent(2, "c", b"k", None))
