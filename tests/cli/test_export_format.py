"""The export file format and the export/import flows, in-process."""

from __future__ import annotations

import hashlib
import io
import os
import resource
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keystore import (
    Change,
    IntegrityError,
    SchemaTooNew,
    Vault,
    VaultBusy,
    WrongPassphrase,
    profiles,
)
from keystore.export import (
    EXPORT_FORMAT,
    MIN_CHUNK_SIZE,
    export_vault,
    import_vault,
    read_export,
    write_export,
)

FAST = profiles.INSECURE_FOR_TESTS_ONLY
PW = "vault passphrase"
BACKUP_PW = "backup passphrase"
CHUNK = MIN_CHUNK_SIZE
HEADER_END = 42
TAG_END = 58
RECORDS = [
    ("key_packages", b"kp-1", b"one"),
    ("key_packages", b"", b""),
    ("groups/epoch", b"\x00\xff", bytes(range(256)) * 20),  # spans several chunks
    ("psks", "ключ".encode(), b"x" * CHUNK),
]


def _export_bytes(records: list[tuple[str, bytes, bytes]] = RECORDS) -> bytes:
    out = io.BytesIO()
    write_export(out, records, BACKUP_PW, FAST, chunk_size=CHUNK)
    return out.getvalue()


def _read(data: bytes, passphrase: str = BACKUP_PW) -> list[tuple[str, bytes, bytes]]:
    return list(read_export(io.BytesIO(data), passphrase))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A closed vault holding RECORDS."""
    path = tmp_path / "source.vault"
    with Vault.create(path, PW, kdf=FAST) as v:
        v.apply(Change(c, k, val) for c, k, val in RECORDS)
    return path


@pytest.fixture
def exported(source: Path, tmp_path: Path) -> Path:
    """An export file of ``source``."""
    out = tmp_path / "backup.mlksx"
    with Vault.open(source, readonly=True) as v:
        v.unlock(PW)
        export_vault(v, out, BACKUP_PW, FAST)
    return out


def test_round_trip_restores_every_row_exactly() -> None:
    """Every (category, key, value) read back equals what was written, in order."""
    assert _read(_export_bytes()) == RECORDS


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "groups/x", "k.p:1"]),
            st.binary(max_size=300),
            st.binary(max_size=3000),
        ),
        max_size=12,
    )
)
def test_round_trip_holds_for_any_records(records: list[tuple[str, bytes, bytes]]) -> None:
    """Any record list survives, whatever falls on chunk boundaries."""
    assert _read(_export_bytes(records)) == records


@pytest.mark.parametrize("size", range(CHUNK - 40, CHUNK - 10))
def test_stream_ending_on_a_chunk_boundary_round_trips(size: int) -> None:
    """A stream that fills whole chunks exactly still ends with an authenticated last chunk."""
    records = [("c", b"", b"v" * size)]
    assert _read(_export_bytes(records)) == records


def test_wrong_backup_passphrase_is_reported_as_such() -> None:
    """A wrong backup passphrase fails the header tag: WrongPassphrase, no record yielded."""
    with pytest.raises(WrongPassphrase, match="backup passphrase"):
        _read(_export_bytes(), "not it")


@pytest.mark.parametrize("offset", [9, 13, 25, 40, HEADER_END + 3])
def test_edited_header_fails_as_wrong_passphrase(offset: int) -> None:
    """Editing KDF parameters, salt, chunk size or header tag fails before any row is read."""
    data = bytearray(_export_bytes())
    data[offset] ^= 0x01
    with pytest.raises((WrongPassphrase, IntegrityError)):
        _read(bytes(data))


@pytest.mark.parametrize("where", [0, 1, 2, -1])
def test_flipped_byte_in_a_chunk_is_an_integrity_error(where: int) -> None:
    """One flipped ciphertext bit in any chunk, first to last, raises IntegrityError."""
    data = bytearray(_export_bytes())
    offset = len(data) - 5 if where == -1 else TAG_END + where * (CHUNK + 16) + 7
    data[offset] ^= 0x80
    with pytest.raises(IntegrityError, match="chunk"):
        _read(bytes(data))


def test_truncation_at_a_chunk_boundary_is_detected() -> None:
    """Dropping the last chunk (so the file ends on a full chunk) raises IntegrityError."""
    data = _export_bytes()
    full = CHUNK + 16
    n_full = (len(data) - TAG_END) // full
    with pytest.raises(IntegrityError):
        _read(data[: TAG_END + n_full * full])


def test_swapped_chunks_are_detected() -> None:
    """Chunks are bound to their position: swapping two raises IntegrityError."""
    data = _export_bytes()
    full = CHUNK + 16
    first, second = data[TAG_END : TAG_END + full], data[TAG_END + full : TAG_END + 2 * full]
    swapped = data[:TAG_END] + second + first + data[TAG_END + 2 * full :]
    with pytest.raises(IntegrityError):
        _read(swapped)


def test_appended_bytes_are_detected() -> None:
    """Bytes after the last chunk make it a non-final chunk that fails: IntegrityError."""
    with pytest.raises(IntegrityError):
        _read(_export_bytes() + b"\x00")


def test_newer_format_is_schema_too_new() -> None:
    """A format byte above ours raises SchemaTooNew before any key derivation."""
    data = bytearray(_export_bytes())
    data[8] = EXPORT_FORMAT + 1
    with pytest.raises(SchemaTooNew):
        _read(bytes(data))


def test_implausible_kdf_cost_is_refused_before_hashing() -> None:
    """A header asking for 4 TiB of Argon2 memory is refused, not attempted."""
    data = bytearray(_export_bytes())
    data[14:18] = b"\xff\xff\xff\xff"
    with pytest.raises(IntegrityError, match="implausibly"):
        _read(bytes(data))


@pytest.mark.parametrize("data", [b"", b"SQLite format 3\x00" + bytes(100), b"MLKSEXP\x00\x01"])
def test_non_export_input_is_an_integrity_error(data: bytes) -> None:
    """Empty, foreign or truncated-header input raises IntegrityError with a clear message."""
    with pytest.raises(IntegrityError, match="export file"):
        _read(data)


def test_import_makes_a_new_vault_with_new_store_id_and_keys(
    source: Path, exported: Path, tmp_path: Path
) -> None:
    """The imported vault holds every row under a new store id and new row-key hashes."""
    dest = tmp_path / "restored.vault"
    summary = import_vault(exported, dest, BACKUP_PW, "new passphrase", FAST)
    assert summary.rows == len(RECORDS)
    with Vault.open(dest) as v:
        v.unlock("new passphrase")
        assert sorted((c, k, val) for c in v.categories() for k, val in v.items(c)) == sorted(
            RECORDS
        )
        new_id = v.store_id
    with Vault.open(source, readonly=True) as old:
        assert old.store_id != new_id
    hashes = [
        {bytes(r[0]) for r in sqlite3.connect(p).execute("SELECT key_hash FROM keystore_rows")}
        for p in (source, dest)
    ]
    assert not hashes[0] & hashes[1]


def test_import_refuses_an_existing_vault(source: Path, exported: Path) -> None:
    """Without overwrite, import onto an existing vault raises and leaves it byte-identical."""
    before = _digest(source)
    with pytest.raises(FileExistsError):
        import_vault(exported, source, BACKUP_PW, PW, FAST)
    assert _digest(source) == before


def test_import_overwrite_replaces_the_vault(source: Path, exported: Path) -> None:
    """With overwrite, the old vault is replaced by the complete new one."""
    with Vault.open(source, readonly=True) as v:
        old_id = v.store_id
    import_vault(exported, source, BACKUP_PW, "replaced", FAST, overwrite=True)
    with Vault.open(source) as v:
        v.unlock("replaced")
        assert v.store_id != old_id
        assert v.get("psks", "ключ".encode()) == b"x" * CHUNK


def test_tampered_import_with_overwrite_keeps_the_old_vault(
    source: Path, exported: Path, tmp_path: Path
) -> None:
    """A damaged export fails before the rename: old vault unchanged, no temporary left."""
    data = bytearray(exported.read_bytes())
    data[-3] ^= 0x01
    exported.write_bytes(bytes(data))
    before = _digest(source)
    with pytest.raises(IntegrityError):
        import_vault(exported, source, BACKUP_PW, PW, FAST, overwrite=True)
    assert _digest(source) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_import_overwrite_of_an_open_vault_is_busy(source: Path, exported: Path) -> None:
    """A vault open for writing elsewhere is not replaced: VaultBusy."""
    with Vault.open(source), pytest.raises(VaultBusy):
        import_vault(exported, source, BACKUP_PW, PW, FAST, overwrite=True)


def test_export_refuses_an_existing_file(source: Path, exported: Path) -> None:
    """Export does not overwrite an existing output file unless asked."""
    before = _digest(exported)
    with Vault.open(source, readonly=True) as v:
        v.unlock(PW)
        with pytest.raises(FileExistsError):
            export_vault(v, exported, BACKUP_PW, FAST)
    assert _digest(exported) == before


def test_failed_export_leaves_no_file(source: Path, tmp_path: Path) -> None:
    """An export that fails half-way (a corrupt row) leaves neither OUT nor a temporary."""
    conn = sqlite3.connect(source)
    conn.execute("UPDATE keystore_rows SET value = X'00' WHERE category = 'psks'")
    conn.commit()
    conn.close()
    out = tmp_path / "partial.mlksx"
    with Vault.open(source, readonly=True) as v:
        v.unlock(PW)
        with pytest.raises(IntegrityError):
            export_vault(v, out, BACKUP_PW, FAST)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_writer_refuses_a_row_the_vault_could_not_hold() -> None:
    """write_export applies the vault's limits, so every export can be imported again."""
    with pytest.raises(ValueError, match="category"):
        write_export(io.BytesIO(), [("bad category!", b"k", b"v")], BACKUP_PW, FAST)


def _killed_past(limit: int, body: Callable[[], object]) -> None:
    """Run ``body`` in a child that the kernel kills (SIGXFSZ) once a write passes ``limit``."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            body()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXFSZ


@pytest.fixture
def big_source(tmp_path: Path) -> Path:
    """A vault of about 1 MiB of rows."""
    path = tmp_path / "big.vault"
    with Vault.create(path, PW, kdf=FAST) as v:
        v.apply(Change("bulk", i.to_bytes(4, "big"), os.urandom(1024)) for i in range(1000))
    return path


def test_export_killed_half_way_leaves_no_output(big_source: Path, tmp_path: Path) -> None:
    """An export killed in the middle of writing never leaves a file under OUT's name."""
    out = tmp_path / "out.mlksx"

    def export() -> None:
        with Vault.open(big_source, readonly=True) as v:
            v.unlock(PW)
            export_vault(v, out, BACKUP_PW, FAST)

    _killed_past(256 * 1024, export)
    assert not out.exists()


def test_import_killed_half_way_keeps_the_old_vault(
    big_source: Path, tmp_path: Path
) -> None:
    """import --force killed while building the new vault leaves the old one as it was."""
    backup = tmp_path / "big.mlksx"
    with Vault.open(big_source, readonly=True) as v:
        v.unlock(PW)
        export_vault(v, backup, BACKUP_PW, FAST)
    target = tmp_path / "target.vault"
    with Vault.create(target, PW, kdf=FAST) as v:
        v.put("keep", b"me", b"old data")
    before = _digest(target)
    _killed_past(
        256 * 1024,
        lambda: import_vault(backup, target, BACKUP_PW, PW, FAST, overwrite=True),
    )
    assert _digest(target) == before
    with Vault.open(target, readonly=True) as v:
        v.unlock(PW)
        assert v.get("keep", b"me") == b"old data"


def _record_durability(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Log fsync (by path) and link/replace (by destination) calls, in order."""
    events: list[tuple[str, str]] = []
    real_fsync, real_link, real_replace = os.fsync, os.link, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("link", str(dst)))
        real_link(src, dst)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("link", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _assert_synced_then_linked(events: list[tuple[str, str]], final: Path) -> None:
    put = events.index(("link", str(final)))
    before = [p for kind, p in events[:put] if kind == "fsync"]
    after = [p for kind, p in events[put:] if kind == "fsync"]
    assert any(Path(p).parent == final.parent and p.endswith(("exporting", "importing"))
               for p in before), events
    assert str(final.parent) in after, events


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_export_is_fsynced_before_and_after_it_is_put_in_place(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export's bytes reach the disk before its name does, and the name after."""
    events = _record_durability(monkeypatch)
    out = tmp_path / "durable.mlksx"
    with Vault.open(source, readonly=True) as v:
        v.unlock(PW)
        export_vault(v, out, BACKUP_PW, FAST)
    _assert_synced_then_linked(events, out)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_import_is_fsynced_before_and_after_it_is_put_in_place(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The imported vault's bytes reach the disk before its name does, and the name after."""
    events = _record_durability(monkeypatch)
    dest = tmp_path / "durable.vault"
    import_vault(exported, dest, BACKUP_PW, PW, FAST)
    _assert_synced_then_linked(events, dest)
