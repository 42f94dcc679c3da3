"""The built-in file anchor (keystore.anchor.FileAnchor)."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from keystore.anchor import FileAnchor, GenerationAnchor
from keystore.errors import IntegrityError, VaultIOError

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "digest.json").read_text()
)
STORE_ID = bytes(range(16))


def test_file_anchor_is_a_generation_anchor(tmp_path: Path) -> None:
    """FileAnchor satisfies the GenerationAnchor protocol the vault accepts."""
    assert isinstance(FileAnchor(tmp_path / "a"), GenerationAnchor)


def test_missing_file_loads_as_none(tmp_path: Path) -> None:
    """No file yet means no generation recorded (a vault's first open)."""
    assert FileAnchor(tmp_path / "a").load(STORE_ID) is None


@pytest.mark.parametrize("case", VECTORS["anchors"])
def test_file_bytes_known_answer(tmp_path: Path, case: dict[str, Any]) -> None:
    """The file holds exactly the documented 33 bytes, and they load back."""
    anchor = FileAnchor(tmp_path / "a")
    store_id = bytes.fromhex(case["store_id"])
    anchor.store(store_id, case["generation"])
    assert (tmp_path / "a").read_bytes().hex() == case["file"]
    assert anchor.load(store_id) == case["generation"]


def test_file_is_private_and_leaves_no_temporary(tmp_path: Path) -> None:
    """0600 from the first byte (O_EXCL temporary), renamed into place, nothing left over."""
    old = os.umask(0)
    try:
        FileAnchor(tmp_path / "a").store(STORE_ID, 3)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_store_never_lowers_the_generation(tmp_path: Path) -> None:
    """A late or replayed store of an older generation leaves the higher one."""
    anchor = FileAnchor(tmp_path / "a")
    anchor.store(STORE_ID, 9)
    anchor.store(STORE_ID, 4)
    assert anchor.load(STORE_ID) == 9
    anchor.store(STORE_ID, 10)
    assert anchor.load(STORE_ID) == 10


def test_anchor_of_another_vault_is_refused(tmp_path: Path) -> None:
    """A file written for one vault does not silently serve another."""
    anchor = FileAnchor(tmp_path / "a")
    anchor.store(STORE_ID, 1)
    with pytest.raises(IntegrityError, match="another vault"):
        anchor.load(bytes(16))
    with pytest.raises(IntegrityError):
        anchor.store(bytes(16), 5)


@pytest.mark.parametrize(
    "content", [b"", b"MLKSANCH", b"XXXXXXXX" + bytes(25), b"MLKSANCH\x02" + bytes(24),
                b"MLKSANCH\x01" + bytes(25)]
)
def test_damaged_file_is_refused(tmp_path: Path, content: bytes) -> None:
    """Short, long, foreign or future-format files are IntegrityError, never a generation."""
    (tmp_path / "a").write_bytes(content)
    with pytest.raises(IntegrityError):
        FileAnchor(tmp_path / "a").load(bytes(16))


def test_symlink_is_not_followed(tmp_path: Path) -> None:
    """A symlink planted at the anchor path is refused on read, not followed."""
    target = tmp_path / "target"
    FileAnchor(target).store(STORE_ID, 7)
    (tmp_path / "a").symlink_to(target)
    with pytest.raises(VaultIOError):
        FileAnchor(tmp_path / "a").load(STORE_ID)


def test_fifo_or_directory_is_refused_without_hanging(tmp_path: Path) -> None:
    """A FIFO or a directory planted at the anchor path is refused at once (no blocking open)."""
    fifo, folder = tmp_path / "fifo", tmp_path / "dir"
    os.mkfifo(fifo)
    folder.mkdir()
    outcome: list[BaseException | int | None] = []

    def load(path: Path) -> None:
        try:
            outcome.append(FileAnchor(path).load(STORE_ID))
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    for path in (fifo, folder):
        outcome.clear()
        worker = threading.Thread(target=load, args=(path,), daemon=True)
        worker.start()
        worker.join(10)
        if worker.is_alive():  # release the blocked open before failing
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            pytest.fail(f"loading an anchor at a {path.name} blocked")
        assert len(outcome) == 1 and isinstance(outcome[0], VaultIOError)


def test_unwritable_location_is_a_vault_io_error(tmp_path: Path) -> None:
    """A location that cannot be written (here: no such directory) raises VaultIOError."""
    with pytest.raises(VaultIOError):
        FileAnchor(tmp_path / "missing" / "a").store(STORE_ID, 1)


def test_misuse_raises_value_error(tmp_path: Path) -> None:
    """A store id of the wrong size or a negative generation is the caller's bug."""
    with pytest.raises(ValueError):
        FileAnchor(tmp_path / "a").store(b"short", 1)
    with pytest.raises(ValueError):
        FileAnchor(tmp_path / "a").store(STORE_ID, -1)
