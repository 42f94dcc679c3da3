"""Files planted beside a vault are refused, by name, and nothing outside the vault changes.

In a folder another user can write, they can create ``<vault>-wal``, ``-shm``,
``.lock`` or ``.header`` before the owner opens the vault: a planted WAL would
receive every page written (and could inject frames), a symlinked lock file used
to be truncated, a FIFO header file used to hang the open.
"""

from __future__ import annotations

import hashlib
import os
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from keystore import InsecurePermissionsWarning, UnsafeFile, Vault, VaultBusy
from keystore import sqlcipher as sqlcipher_layer
from keystore.lockfile import WriterLock, lock_path_for
from tests.conftest import FAST_KDF, PASSPHRASE
from tests.hardening.conftest import NOBODY, requires_root

COMPANIONS = ("-wal", "-shm", ".lock", ".header")


@pytest.fixture(autouse=True)
def _no_hang() -> Iterator[None]:
    """A test that blocks (on a FIFO, say) fails after 20 s instead of hanging the suite."""

    def timeout(_signum: int, _frame: object) -> None:
        raise TimeoutError("the operation blocked")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(params=["plain", "sqlcipher"])
def closed_vault(request: pytest.FixtureRequest, writable_shared_dir: Path) -> Path:
    """A closed vault of each kind, with one row, in a folder everyone can write."""
    if request.param == "sqlcipher" and not sqlcipher_layer.available():
        pytest.skip("the [sqlcipher] extra is not installed")
    path = writable_shared_dir / "victim.vault"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePermissionsWarning)
        with Vault.create(path, PASSPHRASE, kdf=FAST_KDF,
                          sqlcipher=request.param == "sqlcipher") as v:
            v.put("groups", b"g", b"secret group state")
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _companion(path: Path, suffix: str) -> Path:
    return Path(f"{path}{suffix}")


def _open(path: Path) -> Vault:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePermissionsWarning)
        v = Vault.open(path)
    v.unlock(PASSPHRASE)
    return v


def _replace(target: Path) -> None:
    """Remove what the owner left at ``target``, so that the attacker's plant wins."""
    if target.exists() or target.is_symlink():
        target.unlink()


@pytest.mark.parametrize("suffix", COMPANIONS)
def test_symlink_planted_beside_the_vault_is_refused(closed_vault: Path, suffix: str,
                                                      tmp_path: Path) -> None:
    """A symlink at -wal/-shm/.lock/.header is refused by name; its target is untouched."""
    target = tmp_path / "someone-elses-file"
    target.write_bytes(b"an important 0600 file of the owner" * 10)
    target.chmod(0o600)
    before = _digest(target), _digest(closed_vault)
    planted = _companion(closed_vault, suffix)
    _replace(planted)
    planted.symlink_to(target)
    with pytest.raises(UnsafeFile, match="symbolic link") as info:
        _open(closed_vault)
    assert info.value.path == str(planted)
    assert (_digest(target), _digest(closed_vault)) == before


@pytest.mark.parametrize("suffix", COMPANIONS)
def test_fifo_planted_beside_the_vault_is_refused_without_hanging(
    closed_vault: Path, suffix: str
) -> None:
    """A FIFO at any companion name is refused at once (a FIFO header used to hang open)."""
    planted = _companion(closed_vault, suffix)
    _replace(planted)
    os.mkfifo(planted, 0o600)
    with pytest.raises(UnsafeFile, match="FIFO") as info:
        _open(closed_vault)
    assert info.value.path == str(planted)


@pytest.mark.parametrize("suffix", ["-wal", "-shm", ".lock"])
def test_group_writable_companion_is_refused(closed_vault: Path, suffix: str) -> None:
    """A companion others can write is refused: whoever can write it can inject pages."""
    planted = _companion(closed_vault, suffix)
    _replace(planted)
    planted.write_bytes(b"")
    planted.chmod(0o666)
    with pytest.raises(UnsafeFile, match="writable by group or others"):
        _open(closed_vault)


@requires_root
@pytest.mark.parametrize("suffix", ["-wal", "-shm", ".lock", ".header"])
def test_companion_owned_by_another_user_is_refused(closed_vault: Path, suffix: str) -> None:
    """A -wal planted by another user (0600, theirs) would get every page: refused."""
    planted = _companion(closed_vault, suffix)
    content = planted.read_bytes() if planted.exists() else b""
    _replace(planted)
    planted.write_bytes(content)
    planted.chmod(0o600)
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(UnsafeFile, match="owned by another user") as info:
        _open(closed_vault)
    assert info.value.path == str(planted)
    assert planted.read_bytes() == content  # not written to


def test_hard_link_planted_as_wal_is_refused(closed_vault: Path, tmp_path: Path) -> None:
    """A second name for another file (a hard link) at -wal is refused."""
    other = closed_vault.with_name("other-file")
    other.write_bytes(b"x" * 100)
    other.chmod(0o600)
    planted = _companion(closed_vault, "-wal")
    _replace(planted)
    os.link(other, planted)
    with pytest.raises(UnsafeFile, match="hard links"):
        _open(closed_vault)
    assert other.read_bytes() == b"x" * 100


def test_lock_symlink_to_the_vault_never_truncates_it(closed_vault: Path) -> None:
    """The old lock code cut a 28 KB vault to 6 bytes through a symlinked lock file."""
    before = _digest(closed_vault)
    lock = lock_path_for(closed_vault)
    _replace(lock)
    lock.symlink_to(closed_vault)
    with pytest.raises(UnsafeFile):
        WriterLock.acquire(closed_vault)
    assert _digest(closed_vault) == before


def test_a_lock_file_that_holds_something_else_is_not_written(closed_vault: Path) -> None:
    """A regular file at the lock name that is not a lock file (not a pid) is left intact."""
    lock = lock_path_for(closed_vault)
    _replace(lock)
    lock.write_bytes(b"not a pid: somebody's data\n")
    lock.chmod(0o600)
    with pytest.raises(UnsafeFile, match="not a lock file"):
        _open(closed_vault)
    assert lock.read_bytes() == b"not a pid: somebody's data\n"


def test_a_stale_lock_file_of_ours_is_reused(closed_vault: Path) -> None:
    """The lock file a previous writer left (a pid) is fine: the vault opens."""
    lock = lock_path_for(closed_vault)
    lock.write_bytes(b"99999999\n")
    with _open(closed_vault) as v:
        assert v.get("groups", b"g") == b"secret group state"
    assert lock.read_bytes() == f"{os.getpid()}\n".encode()


@requires_root
def test_wal_planted_after_the_check_is_caught_before_a_row_is_written(
    closed_vault: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A -wal planted by another user between the first check and SQLite's open is
    refused (SQLite, run as root, would chown it to the owner and hide the plant)."""
    import keystore.vault as vault_mod

    real_probe = vault_mod.probe

    def probe_then_plant(path: Path) -> object:
        result = real_probe(path)  # the first check passes: nothing is planted yet
        wal = _companion(closed_vault, "-wal")
        _replace(wal)
        wal.write_bytes(b"")
        wal.chmod(0o600)
        os.chown(wal, NOBODY, NOBODY)  # ... and now it is: theirs, 0600, kept open
        return result

    monkeypatch.setattr(vault_mod, "probe", probe_then_plant)
    with pytest.raises(UnsafeFile, match="owned by another user"):
        _open(closed_vault)


def test_folder_writable_by_others_warns(closed_vault: Path) -> None:
    """Opening or creating a vault in a folder others can write warns (and still works)."""
    with pytest.warns(InsecurePermissionsWarning, match="writable by others"):
        v = Vault.open(closed_vault)
    v.close()
    with pytest.warns(InsecurePermissionsWarning, match="writable by others"):
        Vault.create(closed_vault.with_name("second.vault"), PASSPHRASE, kdf=FAST_KDF).close()


def test_private_folder_does_not_warn(tmp_path: Path) -> None:
    """A folder only its owner can write gives no warning."""
    tmp_path.chmod(0o700)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InsecurePermissionsWarning)
        Vault.create(tmp_path / "v.vault", PASSPHRASE, kdf=FAST_KDF).close()
        Vault.open(tmp_path / "v.vault").close()


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_create_refuses_leftover_sqlite_files(tmp_path: Path, suffix: str) -> None:
    """A -wal/-shm already at the new vault's name would be read as its own: refused."""
    path = tmp_path / "new.vault"
    leftover = _companion(path, suffix)
    leftover.write_bytes(b"junk")
    with pytest.raises(FileExistsError, match=suffix):
        Vault.create(path, PASSPHRASE, kdf=FAST_KDF)
    assert not path.exists()
    assert leftover.read_bytes() == b"junk"


def test_a_vault_open_elsewhere_is_still_busy_not_unsafe(closed_vault: Path) -> None:
    """The checks do not get in the way of the normal lock: a second writer is VaultBusy."""
    with _open(closed_vault), pytest.raises(VaultBusy):
        _open(closed_vault)
