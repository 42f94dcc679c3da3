"""Leak-scan campaign: after a realistic workload, no plaintext is anywhere on disk.

The workload, all in one directory:

* two :class:`~mls.client.MlsClient` (mls-rs) vaults: a group with a distinctive id,
  messages both ways, a key update; then, on one of them, a rekey, a passphrase change
  and an export;
* a :class:`~mls.storage.GranularStorage` drained into a plain and into a SQLCipher
  vault by a :class:`~mls.drainer.WriteBehindDrainer` (row keys, values, categories);
* the checked-in version-1 vault migrated with ``auto_migrate``, which leaves a backup.

Every file in the directory (vaults, ``-wal``, ``-shm``, ``*.bak``, the export, header
and lock files) is scanned, while the vaults are still open (WAL full) and after they
are closed, for every message, group id, identity, row key, value and passphrase; for
the SQLCipher vault also for its category names.  The expected count is 0.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

from keystore import Vault
from keystore.export import export_vault
from mls.drainer import WriteBehindDrainer
from mls.storage import GranularStorage
from tests.campaigns.common import FAST_KDF, PASSPHRASE, CampaignReport, Size
from tests.fixtures.make_fixtures import PASSPHRASE as V1_PASSPHRASE
from tests.fixtures.make_fixtures import ROWS as V1_ROWS
from tests.fixtures.make_fixtures import VAULT_V1

__all__ = ["ROUNDS", "run", "scan"]

ROUNDS = Size(quick=1, full=5)
NEW_PASSPHRASE = "leak campaign second passphrase"
BACKUP_PASSPHRASE = "leak campaign backup passphrase"
SECRET_CATEGORIES = ("secretcategory/alpha", "secretcategory/beta")


def scan(directory: Path, needles: list[bytes]) -> list[tuple[str, int]]:
    """``(file, needle index)`` for every needle found in any file under ``directory``."""
    hits = []
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            hits += [(path.name, i) for i, n in enumerate(needles) if n in data]
    return hits


def _tag(rng: random.Random, what: str) -> bytes:
    return f"{what}-{rng.getrandbits(64):016x}".encode()


def _mls_workload(d: Path, rng: random.Random, needles: list[bytes]) -> list[str]:
    """Alice and Bob talk; returns skip reasons (mls-rs missing)."""
    try:
        from mls.client import MlsClient
        from mls.errors import MlsRsUnavailable
    except ImportError as exc:  # pragma: no cover - the package is part of this repo
        return [f"MLS client: {exc}"]
    ids = [_tag(rng, "IDENTITY-alice"), _tag(rng, "IDENTITY-bob")]
    group_id = _tag(rng, "GROUPID")
    try:
        alice = MlsClient.create(d / "alice.vault", PASSPHRASE, identity=ids[0], kdf=FAST_KDF)
    except MlsRsUnavailable as exc:
        return [f"MLS client: {exc}"]
    bob = MlsClient.create(d / "bob.vault", PASSPHRASE, identity=ids[1], kdf=FAST_KDF)
    needles += [*ids, group_id]
    try:
        alice.create_group(group_id)
        _, welcome = alice.add_members(group_id, [bob.generate_key_package()])
        bob.join(welcome)
        for i in range(12):
            sender, receiver = (alice, bob) if i % 2 == 0 else (bob, alice)
            message = _tag(rng, f"MESSAGE-{i}")
            needles.append(message)
            got = receiver.process(group_id, sender.encrypt(group_id, message))
            if got.data != message:
                raise AssertionError("a message did not round-trip")
            if i == 6:
                alice.process(group_id, bob.update_keys(group_id))
        needles.append(PASSPHRASE.encode())
        _scan_now(d, needles)
    finally:
        alice.close()
        bob.close()
    with Vault.open(d / "alice.vault") as vault:
        vault.unlock(PASSPHRASE)
        vault.rekey()
        vault.change_passphrase(PASSPHRASE, NEW_PASSPHRASE)
        export_vault(vault, d / "alice.export", BACKUP_PASSPHRASE, kdf=FAST_KDF)
    needles += [NEW_PASSPHRASE.encode(), BACKUP_PASSPHRASE.encode()]
    return []


_open_hits: list[tuple[str, int]] = []
_open_wals: set[str] = set()


def _scan_now(d: Path, needles: list[bytes]) -> None:
    """Scan while vaults are open (their WAL holds the latest pages)."""
    _open_hits.extend(scan(d, needles))
    _open_wals.update(p.name for p in d.glob("*-wal") if p.stat().st_size > 0)


def _storage_workload(d: Path, rng: random.Random, needles: list[bytes], sqlcipher: bool) -> None:
    name = "storage-sqlcipher.vault" if sqlcipher else "storage.vault"
    with Vault.create(d / name, PASSPHRASE, kdf=FAST_KDF, sqlcipher=sqlcipher) as vault:
        storage = GranularStorage()
        with WriteBehindDrainer(storage, vault, interval=0.01):
            for _ in range(150):
                with storage.operation():
                    key, value = _tag(rng, "ROWKEY"), _tag(rng, "PLAINTEXT") * 8
                    storage.write(rng.choice(SECRET_CATEGORIES), key, value)
                    needles += [key, value[:40]]
        _scan_now(d, needles)
        if sqlcipher:  # category names are hidden only by SQLCipher, so look only there
            for path in d.glob(f"{name}*"):
                data = path.read_bytes()
                _open_hits.extend((path.name, -1) for c in SECRET_CATEGORIES if c.encode() in data)
        vault.rekey()


def _migration_workload(d: Path, needles: list[bytes]) -> None:
    path = d / "old.vault"
    shutil.copyfile(VAULT_V1, path)
    with Vault.open(path, auto_migrate=True) as vault:
        vault.unlock(V1_PASSPHRASE)
    needles += [v for _, _, v in V1_ROWS if len(v) >= 8 and len(set(v)) > 4]
    needles.append(V1_PASSPHRASE.encode())


def run(rounds: int, seed: int = 0, directory: Path | None = None) -> CampaignReport:
    """Run the workload ``rounds`` times (fresh directory each) and scan."""
    report = CampaignReport("leak scan")
    rng = random.Random(seed)
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            d = Path(tmp)
            needles: list[bytes] = []
            _open_hits.clear()
            _open_wals.clear()
            report.skipped += [s for s in _mls_workload(d, rng, needles) if s not in report.skipped]
            _storage_workload(d, rng, needles, sqlcipher=False)
            _storage_workload(d, rng, needles, sqlcipher=True)
            _migration_workload(d, needles)
            sqlcipher_files = [p for p in d.iterdir() if p.name.startswith("storage-sqlcipher")]
            hits = _open_hits + scan(d, needles)
            for file_path in sqlcipher_files:
                data = file_path.read_bytes()
                hits += [(file_path.name, -1) for c in SECRET_CATEGORIES if c.encode() in data]
            files = [p for p in d.rglob("*") if p.is_file()]
            report.trials += 1
            report.count("needles", len(needles))
            report.count("files scanned", len(files))
            report.count("non-empty WAL files scanned while open", len(_open_wals))
            report.count("bytes scanned", sum(p.stat().st_size for p in files))
            for name, index in sorted(set(hits)):
                what = "a SQLCipher category name" if index < 0 else f"needle {index}"
                report.find(f"{what} found in plaintext in {name}")
            if not any(p.name.endswith(".bak") for p in files):
                report.find("the migration left no backup to scan")
            if not (d / "alice.export").exists() and not report.skipped:
                report.find("the export file to scan is missing")
    return report
