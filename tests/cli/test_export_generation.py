"""An export carries the vault's generation, and an import never makes a vault look older.

Without it a vault restored from an export starts again near generation 0: an anchor
that tracked the exported vault refuses it, and a later rollback of the restored vault
to below the old generation goes unseen.  These tests use the library on SQLite files;
the PostgreSQL side is in ``test_postgres_commands.py``.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from keystore import Change, IntegrityError, RollbackDetected, Vault, WrongPassphrase, profiles
from keystore.export import (
    EXPORT_FORMAT,
    ExportStream,
    export_vault,
    generation_floor,
    import_vault,
    replaced_generation,
    write_export,
)
from tests.cli.conftest import PASSPHRASE, Runner, secret_file
from tests.docs import spec_reader

FAST = profiles.INSECURE_FOR_TESTS_ONLY
BACKUP = "a backup passphrase"


class AccountAnchor:
    """An application's anchor kept per account (say, in the OS keyring under the
    account's name), so it follows the account's vault across a restore whatever the
    vault's store id: the case an import has to satisfy."""

    def __init__(self) -> None:
        self.generation: int | None = None

    def load(self, store_id: bytes) -> int | None:
        return self.generation

    def store(self, store_id: bytes, generation: int) -> None:
        if self.generation is None or generation > self.generation:
            self.generation = generation


def _vault_with_writes(path: Path, writes: int, anchor: AccountAnchor | None = None) -> int:
    """A vault at ``path`` after ``writes`` one-row writes; its generation."""
    Vault.create(path, PASSPHRASE, kdf=FAST).close()
    with Vault.open(path, anchor=anchor) as v:
        v.unlock(PASSPHRASE)
        for i in range(writes):
            v.put("groups", b"g%d" % i, b"epoch secret %d" % i)
        generation = v.generation
    assert generation is not None
    return generation


def _generation(path: Path, anchor: AccountAnchor | None = None) -> int:
    with Vault.open(path, readonly=True, anchor=anchor) as v:
        v.unlock(PASSPHRASE)
        generation = v.generation
    assert generation is not None
    return generation


def _export(source: Path, out: Path) -> int | None:
    with Vault.open(source, readonly=True) as v:
        v.unlock(PASSPHRASE)
        return export_vault(v, out, BACKUP, FAST).generation


def test_export_records_the_generation_and_import_restores_at_least_it(tmp_path: Path) -> None:
    """Round trip: the file carries the source's generation; the new vault is not below it."""
    source = tmp_path / "a.vault"
    generation = _vault_with_writes(source, 7)
    assert _export(source, tmp_path / "a.export") == generation
    with (tmp_path / "a.export").open("rb") as fh:
        stream = ExportStream(fh, BACKUP)
        rows = list(stream)
    assert stream.format == EXPORT_FORMAT and stream.generation == generation
    assert len(rows) == 7
    summary = import_vault(tmp_path / "a.export", tmp_path / "b.vault", BACKUP, PASSPHRASE, FAST)
    assert summary.generation is not None and summary.generation >= generation
    assert _generation(tmp_path / "b.vault") == summary.generation


def test_the_anchor_of_the_exported_vault_accepts_the_imported_one(tmp_path: Path) -> None:
    """An anchor that tracked the source opens the restored vault, and still catches a
    rollback of the restored vault to an older copy of itself."""
    anchor = AccountAnchor()
    source = tmp_path / "a.vault"
    _vault_with_writes(source, 5, anchor)
    _export(source, tmp_path / "a.export")
    restored = tmp_path / "restored.vault"
    import_vault(tmp_path / "a.export", restored, BACKUP, PASSPHRASE, FAST)
    assert _generation(restored, anchor) >= 5  # accepted: not older than the anchor
    old_copy = restored.read_bytes()
    with Vault.open(restored, anchor=anchor) as v:
        v.unlock(PASSPHRASE)
        v.put("groups", b"later", b"a later epoch")
    restored.write_bytes(old_copy)
    with pytest.raises(RollbackDetected) as caught:
        _generation(restored, anchor)
    assert caught.value.reason == "anchor"


def test_the_export_carries_the_generation_of_its_rows_not_of_the_unlock(
    tmp_path: Path,
) -> None:
    """Another writer advances the vault between the exporter's unlock and its export: the
    file carries the generation of the rows it holds, and the source's anchor accepts the
    vault restored from it (with the unlock's generation it would refuse it)."""
    anchor = AccountAnchor()
    source = tmp_path / "a.vault"
    _vault_with_writes(source, 3, anchor)
    with Vault.open(source, readonly=True) as exporter:
        exporter.unlock(PASSPHRASE)
        seen = exporter.generation
        with Vault.open(source, anchor=anchor) as writer:
            writer.unlock(PASSPHRASE)
            for i in range(4):
                writer.put("groups", b"later%d" % i, b"later epoch %d" % i)
            rows_generation = writer.generation
        assert seen is not None and rows_generation is not None and rows_generation > seen
        assert exporter.generation == seen  # this object has not seen those writes
        with exporter.read_snapshot() as snap:
            assert snap.generation == rows_generation
            assert len(list(snap)) == 7
        summary = export_vault(exporter, tmp_path / "a.export", BACKUP, FAST)
    assert summary.generation == rows_generation and summary.rows == 7
    with (tmp_path / "a.export").open("rb") as fh:
        stream = ExportStream(fh, BACKUP)
        assert len(list(stream)) == 7
    assert stream.generation == rows_generation
    restored = tmp_path / "restored.vault"
    import_vault(tmp_path / "a.export", restored, BACKUP, PASSPHRASE, FAST)
    assert _generation(restored, anchor) == rows_generation  # the anchor accepts it


def test_a_snapshot_refuses_a_state_record_that_is_not_this_vaults(tmp_path: Path) -> None:
    """The snapshot's generation is authenticated: another vault's record put in its place
    fails on entry, before any row or generation is handed out."""
    import sqlite3

    a, b = tmp_path / "a.vault", tmp_path / "b.vault"
    _vault_with_writes(a, 2)
    _vault_with_writes(b, 9)
    with contextlib.closing(sqlite3.connect(b)) as conn:
        (foreign,) = conn.execute("SELECT record FROM keystore_state WHERE id = 1").fetchone()
    with Vault.open(a, readonly=True) as v:
        v.unlock(PASSPHRASE)
        with contextlib.closing(sqlite3.connect(a)) as conn, conn:
            conn.execute("UPDATE keystore_state SET record = ? WHERE id = 1", (foreign,))
        with pytest.raises(RollbackDetected), v.read_snapshot():
            pass


class _Crash(BaseException):
    """Stands for the process dying at that point (not an Exception: nothing catches it)."""


def _crash(*_args: object, **_kwargs: object) -> int:
    raise _Crash


def test_an_import_that_dies_before_its_generation_is_raised_leaves_no_vault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows are in but the generation is not yet raised: nothing is at the target yet
    (the vault is built privately and renamed in after both), and a vault it was to
    replace is untouched."""
    source = tmp_path / "a.vault"
    _vault_with_writes(source, 5)
    _export(source, tmp_path / "a.export")
    target = tmp_path / "b.vault"
    _vault_with_writes(target, 2)
    before = target.read_bytes()
    monkeypatch.setattr(Vault, "raise_generation", _crash)
    with pytest.raises(_Crash):
        import_vault(tmp_path / "a.export", tmp_path / "new.vault", BACKUP, PASSPHRASE, FAST)
    with pytest.raises(_Crash):
        import_vault(tmp_path / "a.export", target, BACKUP, PASSPHRASE, FAST, overwrite=True)
    assert not (tmp_path / "new.vault").exists()
    assert target.read_bytes() == before
    left = sorted(p.name for p in tmp_path.iterdir())
    assert not [n for n in left if n.startswith(("new.vault", "."))], left  # no temporaries


def test_import_sqlcipher_that_dies_before_its_generation_is_raised_leaves_no_vault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for the path of ``import --sqlcipher`` and ``convert``
    (:func:`keystore.cli_convert.build_vault`): linked into place only after the raise."""
    from keystore.cli_convert import build_vault

    dest = tmp_path / "c.vault"
    monkeypatch.setattr(Vault, "raise_generation", _crash)
    with pytest.raises(_Crash):
        build_vault(dest, [("groups", b"k", b"v")],
                    lambda p: Vault.create(p, PASSPHRASE, kdf=FAST), generation=lambda: 9)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    summary = build_vault(dest, [("groups", b"k", b"v")],
                          lambda p: Vault.create(p, PASSPHRASE, kdf=FAST), generation=lambda: 9)
    assert summary.generation == 9 == _generation(dest)


def test_an_export_without_the_generation_is_refused_by_that_anchor(tmp_path: Path) -> None:
    """The failure the generation prevents: the same rows in a format-1 export restore at
    a low generation, and the anchor refuses the restored vault."""
    anchor = AccountAnchor()
    source = tmp_path / "a.vault"
    _vault_with_writes(source, 5, anchor)
    with Vault.open(source, readonly=True) as v:
        v.unlock(PASSPHRASE)
        rows = [(c, k, val) for c, kv in v.open_rows().items() for k, val in kv.items()]
    old = tmp_path / "old.export"
    with old.open("wb") as fh:
        write_export(fh, rows, BACKUP, FAST)  # no generation: format 1
    assert old.read_bytes()[8] == 1
    summary = import_vault(old, tmp_path / "b.vault", BACKUP, PASSPHRASE, FAST)
    assert summary.rows == 5  # an old export still imports
    with pytest.raises(RollbackDetected):
        _generation(tmp_path / "b.vault", anchor)


def test_import_force_over_a_newer_vault_lands_above_it(tmp_path: Path) -> None:
    """Replacing a vault that went on after the export gives a generation above its own."""
    anchor = AccountAnchor()
    target = tmp_path / "a.vault"
    _vault_with_writes(target, 3, anchor)
    _export(target, tmp_path / "a.export")
    with Vault.open(target, anchor=anchor) as v:
        v.unlock(PASSPHRASE)
        for i in range(10):
            v.put("groups", b"more%d" % i, b"x")
        newer = v.generation
    assert newer is not None and newer > 3
    assert replaced_generation(target) == newer
    summary = import_vault(tmp_path / "a.export", target, BACKUP, PASSPHRASE, FAST,
                           overwrite=True)
    assert summary.generation is not None and summary.generation > newer
    assert _generation(target, anchor) == summary.generation


def test_cli_export_and_import_report_and_keep_the_generation(
    cli: Runner, tmp_path: Path
) -> None:
    """``export``/``import --force`` through the command: the JSON reports carry it."""
    source = tmp_path / "a.vault"
    generation = _vault_with_writes(source, 4)
    pw = secret_file(tmp_path / "pw", PASSPHRASE)
    backup = secret_file(tmp_path / "backup", BACKUP)
    fast = ("--kdf-profile", "INSECURE_FOR_TESTS_ONLY")
    r = cli("export", source, tmp_path / "a.export", "--passphrase-file", pw,
            "--backup-passphrase-file", backup, *fast, "--json")
    assert r.code == 0, r.err
    assert r.json()["generation"] == generation
    with Vault.open(source) as v:
        v.unlock(PASSPHRASE)
        v.apply(Change("groups", b"n%d" % i, b"x") for i in range(3))
        v.put("groups", b"last", b"y")
        newer = v.generation
    assert newer is not None
    r = cli("import", tmp_path / "a.export", source, "--force", "--passphrase-file", pw,
            "--backup-passphrase-file", backup, *fast, "--json")
    assert r.code == 0, r.err
    assert r.json()["generation"] == _generation(source) > newer


def test_cli_import_into_sqlcipher_keeps_the_generation(cli: Runner, tmp_path: Path) -> None:
    """``import --sqlcipher`` (a different code path) carries the generation too."""
    pytest.importorskip("sqlcipher3")
    source = tmp_path / "a.vault"
    generation = _vault_with_writes(source, 6)
    _export(source, tmp_path / "a.export")
    pw = secret_file(tmp_path / "pw", PASSPHRASE)
    backup = secret_file(tmp_path / "backup", BACKUP)
    r = cli("import", tmp_path / "a.export", tmp_path / "c.vault", "--sqlcipher",
            "--passphrase-file", pw, "--backup-passphrase-file", backup,
            "--kdf-profile", "INSECURE_FOR_TESTS_ONLY", "--json")
    assert r.code == 0, r.err
    assert r.json()["generation"] >= generation
    assert _generation(tmp_path / "c.vault") >= generation


def test_the_generation_is_authenticated(tmp_path: Path) -> None:
    """The generation sits in the first encrypted chunk: editing it fails that chunk, and
    relabelling the file as format 1 fails the header tag."""
    out = io.BytesIO()
    write_export(out, [("groups", b"k", b"v")], BACKUP, FAST, chunk_size=1024, generation=9)
    data = out.getvalue()
    assert data[8] == EXPORT_FORMAT
    edited = bytearray(data)
    edited[58 + 3] ^= 1  # inside the generation record's ciphertext
    with pytest.raises(IntegrityError):
        list(ExportStream(io.BytesIO(bytes(edited)), BACKUP))
    relabelled = bytearray(data)
    relabelled[8] = 1
    with pytest.raises(WrongPassphrase):
        list(ExportStream(io.BytesIO(bytes(relabelled)), BACKUP))


def test_a_format_2_export_reads_with_the_spec(tmp_path: Path) -> None:
    """docs/format.md §11's reader (written from the document) reads what the package writes."""
    rows = [("groups", b"k%d" % i, b"v" * i) for i in range(50)]
    out = io.BytesIO()
    write_export(out, rows, BACKUP, FAST, chunk_size=1024, generation=12345)
    assert spec_reader.read_export_file(out.getvalue(), BACKUP) == rows


def test_raise_generation_never_lowers_and_needs_a_writable_vault(tmp_path: Path) -> None:
    """The import hook: a floor below the current generation writes nothing; read-only fails."""
    path = tmp_path / "a.vault"
    generation = _vault_with_writes(path, 3)
    with Vault.open(path) as v:
        v.unlock(PASSPHRASE)
        assert v.raise_generation(1) == generation
        assert v.raise_generation(40) == 40
        v.put("groups", b"after", b"z")
        assert v.generation == 41
    with Vault.open(path, readonly=True) as v:
        v.unlock(PASSPHRASE)
        assert v.verify().ok
        with pytest.raises(Exception, match="read-only"):
            v.raise_generation(50)


def test_generation_floor_rules() -> None:
    """At least the exported generation, above a replaced vault's, capped for a doctored one."""
    assert generation_floor(None) == 0
    assert generation_floor(7) == 7
    assert generation_floor(7, 3) == 7
    assert generation_floor(7, 20) == 21
    assert generation_floor(None, (1 << 64) - 1) == 1 << 63
    assert generation_floor((1 << 64) - 1) == 1 << 63


def _sealed(stream: bytes, fmt: int = EXPORT_FORMAT) -> bytes:
    """An export file holding ``stream`` as its plaintext, sealed by docs/format.md §11 (what
    a buggy or hostile exporter that knows the backup passphrase can write)."""
    import os

    from argon2.low_level import Type, hash_secret_raw
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from keystore.export import MIN_CHUNK_SIZE, ExportHeader

    header = ExportHeader(FAST, os.urandom(16), MIN_CHUNK_SIZE, fmt)
    aad = header.to_bytes()
    k = FAST
    aead = AESGCM(hash_secret_raw(BACKUP.encode(), header.salt, k.time_cost, k.memory_cost,
                                  k.parallelism, 32, Type.ID))
    out = [aad, aead.encrypt(b"\xff" * 12, b"", aad)]
    pieces = [stream[i:i + MIN_CHUNK_SIZE] for i in range(0, len(stream), MIN_CHUNK_SIZE)]
    if not pieces or len(pieces[-1]) == MIN_CHUNK_SIZE:
        pieces.append(b"")
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        out.append(aead.encrypt(i.to_bytes(11, "big") + bytes([last]), piece, aad))
    return b"".join(out)


_ROW = b"\x01\x00\x01c\x00\x00\x00\x01k\x00\x00\x00\x01v"
_GEN = b"\x02" + (5).to_bytes(8, "big")
_END1 = b"\x00" + (1).to_bytes(8, "big")


@pytest.mark.parametrize(
    ("stream", "fmt", "ok"),
    [
        (_GEN + _ROW + _END1, 2, True),
        (_ROW + _END1, 2, False),  # format 2 without its generation record
        (_GEN + _GEN + _ROW + _END1, 2, False),  # a second one
        (_GEN + _ROW + _END1, 1, False),  # format 1 knows no generation record
        (_ROW + _END1, 1, True),
        (_GEN[:5], 2, False),  # cut inside the generation record
    ],
    ids=["valid", "missing", "twice", "in-format-1", "format-1", "cut"],
)
def test_the_generation_record_is_where_the_format_says(
    stream: bytes, fmt: int, ok: bool
) -> None:
    """Only format 2, only first, exactly once: anything else is an IntegrityError."""
    reader = ExportStream(io.BytesIO(_sealed(stream, fmt)), BACKUP)
    if ok:
        assert list(reader) == [("c", b"k", b"v")]
        assert reader.generation == (5 if fmt == 2 else None)
    else:
        with pytest.raises(IntegrityError):
            list(reader)


def test_any_authenticated_stream_raises_only_the_package_errors() -> None:
    """Arbitrary plaintext in an authenticated format-2 file: rows or an IntegrityError,
    never a library error (the sealing is done once per example: cheap KDF)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from keystore import KeystoreError

    @settings(max_examples=150, deadline=None)
    @given(st.binary(max_size=64).map(lambda b: _GEN + b) | st.binary(max_size=64))
    def check(stream: bytes) -> None:
        with contextlib.suppress(KeystoreError):
            list(ExportStream(io.BytesIO(_sealed(stream)), BACKUP))

    check()
