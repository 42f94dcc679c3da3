"""Concurrency campaign: threads, processes and asyncio against one vault.

* ``threads``: 8 writer threads run operations on one :class:`~mls.storage.GranularStorage`
  while a background :class:`~mls.drainer.WriteBehindDrainer` drains it, some writers call
  ``flush`` themselves, and a reader thread reads through the same vault object and
  through a second, read-only one.  At the end the vault, the storage and the model
  (each writer owns its keys) must be equal, and no read may fail.
* ``processes``: a forked child holds the vault for writing and keeps writing; a second
  writer (another process's view: this one) gets :class:`~keystore.VaultBusy` naming
  the holder's pid, a second writer object in the child's own process gets it too,
  read-only opens work meanwhile, and once the child is killed with SIGKILL the lock is
  free at once.
* ``asyncio``: 64 tasks write through an :class:`~mls.drainer.AsyncDrainer` (background
  task plus awaited flushes) under load; the vault must equal the model.

Every scenario runs under a deadline (pytest-timeout in CI), so a deadlock fails.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import tempfile
import threading
import time
from pathlib import Path

from keystore import Change, KeystoreError, Vault, VaultBusy
from mls.drainer import AsyncDrainer, WriteBehindDrainer
from mls.storage import GranularStorage
from tests.campaigns.common import FAST_KDF, PASSPHRASE, CampaignReport, Size

__all__ = ["ROUNDS", "SCENARIOS", "run"]

ROUNDS = Size(quick=1, full=20)
CATEGORY = "openmls/v1/group_epoch_secrets"
Model = dict[bytes, bytes]


def _vault_rows(path: Path) -> tuple[Model, bool]:
    with Vault.open(path, readonly=True) as vault:
        vault.unlock(PASSPHRASE)
        return dict(vault.items(CATEGORY)), vault.verify().ok


def _compare(report: CampaignReport, tag: str, path: Path, model: Model) -> None:
    rows, ok = _vault_rows(path)
    if not ok:
        report.find(f"[{tag}] verify failed")
    if rows != model:
        missing = len(set(model) - set(rows))
        stale = sum(1 for k in model if k in rows and rows[k] != model[k])
        extra = len(set(rows) - set(model))
        report.find(f"[{tag}] vault != model: {missing} missing, {stale} stale, {extra} extra")


def threads(directory: Path, seed: int, report: CampaignReport) -> None:
    """8 writers + background drainer + explicit flushes + 2 readers (see module doc)."""
    path = directory / "threads.vault"
    vault = Vault.create(path, PASSPHRASE, kdf=FAST_KDF)
    storage = GranularStorage(max_pending_events=500)  # small: backpressure flushes too
    drainer = WriteBehindDrainer(storage, vault, interval=0.002, threshold=50)
    models: list[Model] = [{} for _ in range(8)]
    errors: list[str] = []
    stop = threading.Event()

    def writer(i: int) -> None:
        rng = random.Random(seed * 31 + i)
        model = models[i]
        try:
            for n in range(300):
                with storage.operation():
                    for _ in range(rng.randint(1, 4)):
                        key = f"w{i}/{rng.randrange(60)}".encode()
                        if key in model and rng.random() < 0.2:
                            storage.delete(CATEGORY, key)
                            del model[key]
                        else:
                            value = f"w{i} n{n} ".encode() + rng.randbytes(rng.randint(0, 200))
                            storage.write(CATEGORY, key, value)
                            model[key] = value
                if rng.random() < 0.05:
                    drainer.flush()
        except Exception as exc:
            errors.append(f"writer {i}: {type(exc).__name__}: {exc}")

    def reader() -> None:
        rng = random.Random(seed)
        reads = 0
        try:
            with Vault.open(path, readonly=True) as other:
                other.unlock(PASSPHRASE)
                while not stop.is_set():
                    key = f"w{rng.randrange(8)}/{rng.randrange(60)}".encode()
                    for v in (vault, other):
                        got = v.get(CATEGORY, key)
                        if got is not None and not got.startswith(key.split(b"/")[0]):
                            errors.append("a reader saw another writer's value under a key")
                    reads += 1
        except KeystoreError as exc:
            errors.append(f"reader: {type(exc).__name__}: {exc}")
        report.count("concurrent reads", reads)

    drainer.start()
    workers = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    read_thread = threading.Thread(target=reader)
    read_thread.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    read_thread.join()
    drainer.close()
    report.count("drainer background failures", drainer.failures)
    memory = dict(storage.items(CATEGORY))
    vault.close()
    model: Model = {}
    for m in models:
        model.update(m)
    report.findings += [f"[threads] {e}" for e in errors]
    if memory != model:
        report.find("[threads] storage memory != model")
    _compare(report, "threads", path, model)
    report.count("events persisted", drainer.persisted_events)


def processes(directory: Path, seed: int, report: CampaignReport) -> None:
    """A second writer gets VaultBusy with the holder's pid; SIGKILL frees the lock."""
    path = directory / "procs.vault"
    Vault.create(path, PASSPHRASE, kdf=FAST_KDF).close()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        os.close(read_fd)
        code = 0
        try:
            with Vault.open(path) as held:
                held.unlock(PASSPHRASE)
                try:
                    Vault.open(path).close()
                    os.write(write_fd, b"second writer in the same process was let in\n")
                except VaultBusy:
                    os.write(write_fd, b"ready\n")
                n = 0
                while True:
                    held.apply([Change(CATEGORY, b"k%d" % (n % 50), b"v%d" % n)])
                    n += 1
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    line = os.read(read_fd, 200).decode().strip()
    if line != "ready":
        report.find(f"[processes] child: {line or 'died before it was ready'}")
    deadline = time.monotonic() + 2.0
    busy = 0
    while time.monotonic() < deadline:
        try:
            Vault.open(path).close()
            report.find("[processes] a second writer process was let in")
            break
        except VaultBusy as exc:
            busy += 1
            if exc.holder_pid != pid:
                report.find(f"[processes] VaultBusy names pid {exc.holder_pid}, not {pid}")
                break
        with Vault.open(path, readonly=True) as ro:  # readers are never blocked
            ro.unlock(PASSPHRASE)
            if not ro.verify().ok:
                report.find("[processes] a reader saw a row that does not verify")
    report.count("VaultBusy refusals", busy)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(read_fd)
    try:
        with Vault.open(path, timeout=1.0) as v:
            v.unlock(PASSPHRASE)
            if not v.verify().ok:
                report.find("[processes] verify failed after the holder was killed")
    except VaultBusy:
        report.find("[processes] the lock was not freed by the holder's death")


def asyncio_app(directory: Path, seed: int, report: CampaignReport) -> None:
    """64 tasks over an AsyncDrainer; the vault equals the model at the end."""
    path = directory / "async.vault"
    vault = Vault.create(path, PASSPHRASE, kdf=FAST_KDF)
    storage = GranularStorage()
    model: Model = {}
    rng = random.Random(seed)

    async def task(i: int, drainer: AsyncDrainer) -> None:
        for n in range(60):
            key = f"t{i}/{rng.randrange(20)}".encode()
            value = f"t{i} n{n}".encode() + rng.randbytes(rng.randint(0, 300))
            with storage.operation():
                storage.write(CATEGORY, key, value)
            model[key] = value
            if rng.random() < 0.05:
                await drainer.flush()
            await asyncio.sleep(0)

    async def main() -> int:
        async with AsyncDrainer(storage, vault, interval=0.005, threshold=100) as drainer:
            await asyncio.gather(*(task(i, drainer) for i in range(64)))
        return drainer.persisted_events

    persisted = asyncio.run(asyncio.wait_for(main(), 50))
    vault.close()
    report.count("async events persisted", persisted)
    _compare(report, "asyncio", path, model)


SCENARIOS = {"threads": threads, "processes": processes, "asyncio": asyncio_app}


def run(rounds: int, seed: int = 0, directory: Path | None = None) -> CampaignReport:
    """Every scenario ``rounds`` times."""
    report = CampaignReport("concurrency")
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        for r in range(rounds):
            for name, scenario in SCENARIOS.items():
                where = Path(tmp) / f"{r}-{name}"
                where.mkdir()
                scenario(where, rng.getrandbits(32), report)
                report.trials += 1
    return report
