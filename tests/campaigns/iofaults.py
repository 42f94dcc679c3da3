"""I/O fault campaign: the database fails under the write-behind drainer.

Every scenario runs the same story over a :class:`~mls.storage.GranularStorage` drained by
a :class:`~mls.drainer.WriteBehindDrainer` into a vault, with a model dict kept beside it:

1. random operations, flushed fine;
2. the fault is switched on; more operations; every flush must fail with one of the
   keystore's own errors (the expected class, a message naming the cause and holding no
   plaintext), the storage must still answer every read from memory, and nothing may be
   lost from the dirty log;
3. the fault is switched off; one flush must persist everything;
4. the vault is reopened from disk and must equal the model and verify.

Faults: a full disk (a 2 MiB tmpfs filled with a ballast file when we may mount one,
otherwise an injected ``SQLITE_FULL``), ``EIO`` (injected: a connection wrapper whose
statements fail with SQLite's "disk I/O error"), a read-only file (``chattr +i``, which
binds root too), and the file deleted or replaced underneath the open vault.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keystore import KeystoreError, Vault, VaultIOError
from mls.drainer import WriteBehindDrainer
from mls.storage import GranularStorage
from tests.campaigns.common import FAST_KDF, PASSPHRASE, CampaignReport, Size

__all__ = [
    "ROUNDS", "SCENARIOS", "FaultyConnection", "run", "run_one", "run_scenario", "tmpfs",
]

ROUNDS = Size(quick=1, full=20)
CATEGORIES = ("openmls/v1/tree", "openmls/v1/group_epoch_secrets", "openmls/v1/key_package")
Model = dict[tuple[str, bytes], bytes]


class MountUnavailable(Exception):
    """This process may not mount a filesystem (not root, or no CAP_SYS_ADMIN)."""


@contextlib.contextmanager
def tmpfs(directory: Path, size: str = "2M") -> Iterator[Path]:
    """Mount a size-limited tmpfs on ``directory`` for the duration of the block.

    Raises:
        MountUnavailable: the mount was refused; the reason is in the message.
    """
    directory.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        raise MountUnavailable("there is no mount command here") from None
    if done.returncode != 0:
        raise MountUnavailable(f"mount -t tmpfs refused: {done.stderr.strip() or done.returncode}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False, capture_output=True)


class FaultyConnection:
    """Wraps a ``sqlite3.Connection``; while ``failing`` is set, writes raise ``error``.

    Only data-changing statements and ``COMMIT`` fail, as they would when the disk
    refuses a write; ``ROLLBACK`` and reads pass, so the vault can clean up.
    """

    def __init__(self, conn: sqlite3.Connection, error: str) -> None:
        self._conn = conn
        self.error = error
        self.failing = False
        self.fired = 0

    def _maybe_fail(self, sql: str) -> None:
        head = sql.lstrip().split(None, 1)[0].upper()
        if self.failing and head in ("INSERT", "UPDATE", "DELETE", "COMMIT"):
            self.fired += 1
            raise sqlite3.OperationalError(self.error)

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        """``Connection.execute``, failing while the fault is on."""
        self._maybe_fail(sql)
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, params: Any) -> sqlite3.Cursor:
        """``Connection.executemany``, failing while the fault is on."""
        self._maybe_fail(sql)
        return self._conn.executemany(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def inject(vault: Vault, error: str) -> FaultyConnection:
    """Put a :class:`FaultyConnection` under an open, unlocked vault (a test seam)."""
    faulty = FaultyConnection(vault._conn, error)  # type: ignore[arg-type]
    setattr(vault, "_conn", faulty)  # noqa: B010 - the attribute is private on purpose
    return faulty


@dataclass(slots=True)
class _Rig:
    """A vault with a storage and a drainer over it, and the model they must agree with."""

    path: Path
    vault: Vault
    storage: GranularStorage
    drainer: WriteBehindDrainer
    model: Model
    rng: random.Random

    @classmethod
    def create(cls, path: Path, seed: int, sqlcipher: bool = False) -> _Rig:
        vault = Vault.create(path, PASSPHRASE, kdf=FAST_KDF, sqlcipher=sqlcipher)
        storage = GranularStorage()
        drainer = WriteBehindDrainer(storage, vault)
        return cls(path, vault, storage, drainer, {}, random.Random(seed))

    def work(self, operations: int) -> None:
        """Random operations (writes and deletes), recorded in the model too."""
        for _ in range(operations):
            with self.storage.operation():
                for _ in range(self.rng.randint(1, 6)):
                    category = self.rng.choice(CATEGORIES)
                    key = b"group-%d" % self.rng.randrange(200)
                    if (category, key) in self.model and self.rng.random() < 0.2:
                        self.storage.delete(category, key)
                        del self.model[(category, key)]
                    else:
                        value = b"SECRET-STATE:" + self.rng.randbytes(self.rng.randint(8, 900))
                        self.storage.write(category, key, value)
                        self.model[(category, key)] = value

    def memory_matches(self) -> bool:
        """Whether the storage answers every read as the model says."""
        stored = {
            (c, k): v for c in self.storage.categories() for k, v in self.storage.items(c)
        }
        return stored == self.model

    def reopen_and_compare(self) -> list[str]:
        """Read the vault back from disk in a fresh object; list the differences."""
        with Vault.open(self.path, readonly=True) as fresh:
            fresh.unlock(PASSPHRASE)
            problems = [] if fresh.verify().ok else ["verify failed after recovery"]
            on_disk = {(c, k): v for c in fresh.categories() for k, v in fresh.items(c)}
        if on_disk != self.model:
            missing = len(set(self.model) - set(on_disk))
            extra = len(set(on_disk) - set(self.model))
            changed = sum(1 for k in self.model if k in on_disk and on_disk[k] != self.model[k])
            problems.append(
                f"vault differs from the model: {missing} missing, {extra} extra, "
                f"{changed} stale rows"
            )
        return problems


@dataclass(frozen=True, slots=True)
class Fault:
    """How to switch a fault on and off, and what the user must see while it is on."""

    name: str
    #: Switch the fault on; returns the function that switches it off.
    apply: Callable[[_Rig, Path], Callable[[], None]]
    #: Words that must appear in the error message (case-insensitive).
    words: tuple[str, ...]
    #: After the fault, the rig needs a new vault object and drainer (the old one's
    #: connection may be bound to the broken state).
    reopen: bool = False


def _fill_disk(rig: _Rig, directory: Path) -> Callable[[], None]:
    """Fill the small filesystem to the last byte with a ballast file."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return lambda: ballast.unlink()


def _inject(error: str) -> Callable[[_Rig, Path], Callable[[], None]]:
    def on(rig: _Rig, directory: Path) -> Callable[[], None]:
        faulty = inject(rig.vault, error)
        faulty.failing = True

        def off() -> None:
            faulty.failing = False

        return off

    return on


def _immutable(rig: _Rig, directory: Path) -> Callable[[], None]:
    """``chattr +i`` on the vault: even root cannot open it for writing then."""
    rig.drainer.close()
    rig.vault.close()
    subprocess.run(["chattr", "+i", str(rig.path)], check=True, capture_output=True)
    rig.vault = Vault.open(rig.path)
    rig.vault.unlock(PASSPHRASE)
    rig.drainer = WriteBehindDrainer(rig.storage, rig.vault)

    def off() -> None:
        subprocess.run(["chattr", "-i", str(rig.path)], check=True, capture_output=True)

    return off


def _deleted(rig: _Rig, directory: Path) -> Callable[[], None]:
    keep = directory / "kept-aside"
    os.link(rig.path, keep)
    rig.path.unlink()
    return lambda: os.replace(keep, rig.path)


def _replaced(rig: _Rig, directory: Path) -> Callable[[], None]:
    aside = directory / "moved-aside"
    os.replace(rig.path, aside)
    intruder = directory / "intruder"
    Vault.create(intruder, "an intruder's passphrase", kdf=FAST_KDF).close()
    os.replace(intruder, rig.path)
    return lambda: os.replace(aside, rig.path)


SCENARIOS: dict[str, Fault] = {
    "disk-full": Fault("disk-full", _fill_disk, ("full",)),
    "disk-full-injected": Fault(
        "disk-full-injected", _inject("database or disk is full"), ("full",)
    ),
    "eio-injected": Fault("eio-injected", _inject("disk I/O error"), ("i/o error",)),
    "read-only-file": Fault("read-only-file", _immutable, ("readonly",), reopen=True),
    "deleted-underneath": Fault("deleted-underneath", _deleted, ("deleted or replaced",)),
    "replaced-underneath": Fault("replaced-underneath", _replaced, ("deleted or replaced",)),
}


def _no_plaintext(message: str, model: Model) -> bool:
    return "SECRET-STATE" not in message and not any(
        k.decode() in message for _, k in model
    )


def run_scenario(
    directory: Path, fault: Fault, seed: int, report: CampaignReport, sqlcipher: bool = False
) -> None:
    """Run the four steps of the module docstring for one fault."""
    rig = _Rig.create(directory / "vault", seed, sqlcipher)
    tag = f"[{fault.name}{'/sqlcipher' if sqlcipher else ''}]"
    try:
        rig.work(40)
        rig.drainer.flush()
        switch_off = fault.apply(rig, directory)
        try:
            for attempt in range(3):
                rig.work(25)
                pending = rig.storage.pending_events()
                try:
                    rig.drainer.flush()
                except KeystoreError as exc:
                    report.count("flushes refused")
                    message = str(exc)
                    if not isinstance(exc, VaultIOError):
                        report.find(f"{tag} {type(exc).__name__} where VaultIOError was due")
                    if not any(w in message.lower() for w in fault.words):
                        report.find(f"{tag} the error does not name its cause: {message}")
                    if not _no_plaintext(message, rig.model):
                        report.find(f"{tag} the error message holds plaintext")
                except Exception as exc:  # a foreign exception type is itself the finding
                    report.find(f"{tag} flush raised a foreign {type(exc).__name__}: {exc}")
                else:
                    report.find(f"{tag} flush {attempt} succeeded while the fault was on")
                if rig.storage.pending_events() != pending:
                    report.find(f"{tag} the dirty log lost events on a failed flush")
                if not rig.memory_matches():
                    report.find(f"{tag} the storage no longer answers from memory")
        finally:
            switch_off()
        if fault.reopen:
            # The old connection stays read-only: its final flush fails (the events stay
            # in the storage), and a new vault object and drainer take over.
            with contextlib.suppress(VaultIOError):
                rig.drainer.close()
            rig.vault.close()
            rig.vault = Vault.open(rig.path)
            rig.vault.unlock(PASSPHRASE)
            rig.drainer = WriteBehindDrainer(rig.storage, rig.vault)
        rig.work(10)
        rig.drainer.flush()
        if rig.storage.pending_events():
            report.find(f"{tag} events still pending after the recovery flush")
        rig.drainer.close()
        rig.vault.close()
        for problem in rig.reopen_and_compare():
            report.find(f"{tag} {problem}")
        report.trials += 1
        report.count(f"scenario {fault.name}{'/sqlcipher' if sqlcipher else ''}")
    finally:
        rig.vault.close()


def run_one(
    name: str, directory: Path, seed: int, report: CampaignReport, sqlcipher: bool = False
) -> str | None:
    """Run the named scenario in ``directory``; return why it was skipped, if it was."""
    fault = SCENARIOS[name]
    if name == "disk-full":
        try:
            with tmpfs(directory / "small"):
                run_scenario(directory / "small", fault, seed, report, sqlcipher)
        except MountUnavailable as exc:
            return f"disk-full on a real small filesystem: {exc}"
        return None
    if name == "read-only-file" and not _chattr_works(directory):
        return "read-only-file: chattr +i is not available on this filesystem"
    run_scenario(directory, fault, seed, report, sqlcipher)
    return None


def run(rounds: int, seed: int = 0, directory: Path | None = None) -> CampaignReport:
    """Run every fault scenario ``rounds`` times."""
    report = CampaignReport("I/O faults")
    rng = random.Random(seed)
    with contextlib.ExitStack() as stack:
        base = directory or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for round_no in range(rounds):
            for name, sqlcipher in itertools.product(SCENARIOS, (False, True)):
                where = base / f"{round_no}-{name}-{'sqlcipher' if sqlcipher else 'plain'}"
                where.mkdir()
                skipped = run_one(name, where, rng.getrandbits(32), report, sqlcipher)
                if skipped and skipped not in report.skipped:
                    report.skipped.append(skipped)
    return report


def _chattr_works(directory: Path) -> bool:
    probe = directory / "chattr-probe"
    probe.write_bytes(b"")
    try:
        done = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, check=False)
    except FileNotFoundError:
        return False
    subprocess.run(["chattr", "-i", str(probe)], capture_output=True, check=False)
    probe.unlink()
    return done.returncode == 0
