"""``import --force`` holds the target's lock from check to rename; ``Vault.create``
checks what it re-opened; export reads one snapshot.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from keystore import Change, IntegrityError, Vault, VaultBusy, export, safefile
from keystore.export import export_vault, import_vault, read_export
from tests.conftest import FAST_KDF, PASSPHRASE

BACKUP = "backup passphrase"


@pytest.fixture
def export_file(tmp_path: Path) -> Path:
    """An export of a vault holding two rows."""
    src = tmp_path / "src.vault"
    out = tmp_path / "backup.mlksx"
    with Vault.create(src, PASSPHRASE, kdf=FAST_KDF) as v:
        v.put("groups", b"g1", b"imported state")
        v.put("keys", b"k1", b"imported key")
        export_vault(v, out, BACKUP, kdf=FAST_KDF)
    return out


@pytest.fixture
def hook() -> Iterator[list[object]]:
    """Install an import step hook; the test appends callables keyed by step name."""
    calls: list[object] = []
    yield calls
    export._import_step_hook = None


def _rows(path: Path) -> dict[tuple[str, bytes], bytes]:
    with Vault.open(path, readonly=True) as v:
        v.unlock(PASSPHRASE)
        return {(c, k): val for c in v.categories() for k, val in v.items(c)}


def test_a_vault_created_during_an_import_is_refused_not_replaced(
    tmp_path: Path, export_file: Path, hook: list[object]
) -> None:
    """Between the check and the rename of ``import --force`` nobody can create a vault
    at the target: the creator gets VaultBusy (the old code replaced it under its writer)."""
    dest = tmp_path / "target.vault"
    outcome: list[str] = []

    def race(step: str) -> None:
        if step == "checked":
            try:
                Vault.create(dest, PASSPHRASE, kdf=FAST_KDF).close()
                outcome.append("created")
            except VaultBusy:
                outcome.append("busy")

    export._import_step_hook = race
    import_vault(export_file, dest, BACKUP, PASSPHRASE, kdf=FAST_KDF, overwrite=True)
    assert outcome == ["busy"]
    assert _rows(dest) == {("groups", b"g1"): b"imported state", ("keys", b"k1"): b"imported key"}


def test_a_writer_cannot_open_the_target_during_an_import(
    tmp_path: Path, export_file: Path, hook: list[object]
) -> None:
    """With an existing target, the import's lock keeps writers out until the rename."""
    dest = tmp_path / "target.vault"
    Vault.create(dest, PASSPHRASE, kdf=FAST_KDF).close()
    seen: list[str] = []

    def race(step: str) -> None:
        if step in ("checked", "built"):
            try:
                Vault.open(dest).close()
                seen.append("opened")
            except VaultBusy:
                seen.append("busy")

    export._import_step_hook = race
    import_vault(export_file, dest, BACKUP, PASSPHRASE, kdf=FAST_KDF, overwrite=True)
    assert seen == ["busy", "busy"]
    assert _rows(dest)[("groups", b"g1")] == b"imported state"


def test_import_refuses_leftover_wal_beside_a_missing_target(
    tmp_path: Path, export_file: Path
) -> None:
    """A -wal left at the target name would be replayed into the new vault: refused."""
    dest = tmp_path / "target.vault"
    wal = Path(f"{dest}-wal")
    wal.write_bytes(b"stale frames")
    with pytest.raises(FileExistsError, match="-wal"):
        import_vault(export_file, dest, BACKUP, PASSPHRASE, kdf=FAST_KDF, overwrite=True)
    assert not dest.exists()
    assert wal.read_bytes() == b"stale frames"
    assert not Path(f"{dest}.lock").exists()  # a failed import leaves no lock file


def test_create_refuses_a_file_swapped_in_after_the_link(tmp_path: Path) -> None:
    """If the new vault's name points to another file by the time it is re-opened,
    create raises IntegrityError and writes nothing into that file."""
    other = tmp_path / "other.vault"
    with Vault.create(other, PASSPHRASE, kdf=FAST_KDF) as v:
        v.put("groups", b"g", b"someone else's")
    before = other.read_bytes()
    path = tmp_path / "new.vault"

    def swap(step: str) -> None:
        if step == "linked":
            os.replace(other, path)  # the attacker's (or a racer's) vault takes the name

    safefile._step_hook = swap
    try:
        with pytest.raises(IntegrityError, match="not the one just created"):
            Vault.create(path, PASSPHRASE, kdf=FAST_KDF)
    finally:
        safefile._step_hook = None
    assert path.read_bytes() == before


def test_export_is_one_snapshot_beside_a_writer(tmp_path: Path) -> None:
    """A batch committed while an export runs is in the export entirely or not at all
    (the old exporter read each category in its own transaction and split it)."""
    path = tmp_path / "v.vault"
    writer = Vault.create(path, PASSPHRASE, kdf=FAST_KDF)
    writer.apply([Change(c, b"row", b"old") for c in ("a", "b", "c")])
    reader = Vault.open(path, readonly=True)
    reader.unlock(PASSPHRASE)
    committed: list[bool] = []

    def progress(done: int, _total: int) -> None:
        if done == 1 and not committed:  # mid-export: one atomic batch over every category
            writer.apply([Change(c, b"row", b"new") for c in ("a", "b", "c")])
            committed.append(True)

    out = tmp_path / "x.mlksx"
    try:
        export_vault(reader, out, BACKUP, kdf=FAST_KDF, progress=progress)
    finally:
        reader.close()
        writer.close()
    assert committed == [True]
    with out.open("rb") as fh:
        values = {value for _, _, value in read_export(fh, BACKUP)}
    assert values == {b"old"}


def test_read_snapshot_counts_and_yields_one_state(vault: Vault) -> None:
    """read_snapshot() yields every row of one moment, with its count."""
    expected = {("c" if i % 2 else "d", i.to_bytes(2, "big")): b"v%d" % i for i in range(600)}
    vault.apply([Change(c, k, v) for (c, k), v in expected.items()])
    with vault.read_snapshot() as snap:
        rows = list(snap)
    assert snap.rows == 600 == len(rows)
    assert {(c, k): v for c, k, v in rows} == expected
    assert [c for c, _, _ in rows] == sorted(c for c, _, _ in rows)  # category order


def test_verify_runs_in_one_read_transaction(vault: Vault) -> None:
    """verify() leaves no transaction open and sees every row."""
    vault.apply([Change("c", bytes([i]), b"v") for i in range(10)])
    report = vault.verify()
    assert report.ok and report.rows_checked == 10
    vault.put("c", b"after", b"v")  # the connection is usable for writes again


def test_stale_temporaries_of_a_dead_creator_are_removed(tmp_path: Path) -> None:
    """A private build folder left by a killed creator is removed when the vault opens."""
    path = tmp_path / "v.vault"
    Vault.create(path, PASSPHRASE, kdf=FAST_KDF).close()
    dead = _dead_pid()
    leftover = tmp_path / f".{path.name}.{dead}.{'ab' * 8}.creating"
    leftover.mkdir(mode=0o700)
    (leftover / "vault").write_bytes(b"half a vault")
    foreign = tmp_path / f".{path.name}.{dead}.{'cd' * 8}.txt"  # not our pattern
    foreign.write_bytes(b"keep me")
    Vault.open(path).close()
    assert not leftover.exists()
    assert foreign.read_bytes() == b"keep me"


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_temporaries_of_a_live_creator_are_kept(tmp_path: Path) -> None:
    """A build folder whose creator is alive (our own pid here) is left alone."""
    path = tmp_path / "v.vault"
    Vault.create(path, PASSPHRASE, kdf=FAST_KDF).close()
    live = tmp_path / f".{path.name}.{os.getpid()}.{'ef' * 8}.creating"
    live.mkdir(mode=0o700)
    Vault.open(path).close()
    assert live.is_dir()
    shutil.rmtree(live)
