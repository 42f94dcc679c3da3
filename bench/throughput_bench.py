"""Write throughput of the vault against every row-store baseline, and where its time goes.

Run: ``python -m bench.throughput_bench [--quick]`` (or through ``python -m bench``).

* ``write_throughput``: the same 1 KiB rows, in batches of 1000, one durable transaction
  per batch, written by ``Vault.apply`` and by each baseline of
  :mod:`bench.baselines` — plaintext stdlib SQLite (the floor), bare AES-GCM then that
  same upsert (the encrypted floor), plaintext rows in SQLCipher — all timed round-robin
  in the same run.  Each figure is a throughput ratio against the floor.
* ``apply_breakdown``: one ``Vault.apply`` batch split into what any encrypted row store
  must pay (the SQLite upsert of rows of the vault's stored size, AES-GCM of each value),
  what our design adds on purpose (keyed BLAKE2b of each row key) and the rest (per-row
  Python: validation, coalescing, framing, sorting).  ``bound_if_no_python`` is the
  throughput ratio against the floor the vault would reach if that rest cost nothing.
  Each part is timed in wall time and in this process's CPU time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.baselines import PlaintextRows, SqlcipherRows, seal_values
from bench.common import summarize
from keystore import Change, Vault, profiles

__all__ = ["apply_breakdown", "run", "write_throughput"]

_VALUE_BYTES = 1024
# What Vault.apply stores per 1 KiB value: format byte, nonce, GCM tag, key length, key.
_STORED_OVERHEAD = 1 + 12 + 16 + 4
_KEY_HASH_BYTES = 32


def _batch(tag: str, size: int) -> list[tuple[str, bytes, bytes]]:
    return [("bench", f"row-{tag}-{i}".encode(), os.urandom(_VALUE_BYTES)) for i in range(size)]


def _round_robin(
    contestants: dict[str, Callable[[int], None]], repeats: int
) -> dict[str, list[float]]:
    """Time each contestant once per repeat, in turn, so noise is shared."""
    samples: dict[str, list[float]] = {name: [] for name in contestants}
    for r in range(repeats):
        for name, fn in contestants.items():
            t0 = time.perf_counter()
            fn(r)
            samples[name].append(time.perf_counter() - t0)
    return samples


def write_throughput(
    batches: int, repeats: int, batch_size: int = 1000
) -> list[dict[str, Any]]:
    """Rows per second of the vault and each baseline; ratios against the floor."""
    # Every repeat writes new values to the same keys: after the first, all updates.
    keys = [_batch(str(b), batch_size) for b in range(batches)]
    rounds = [
        [[(c, k, os.urandom(_VALUE_BYTES)) for c, k, _ in batch] for batch in keys]
        for _ in range(repeats)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        vault = Vault.create(Path(tmp) / "v", "bench", kdf=profiles.INSECURE_FOR_TESTS_ONLY)
        plain = PlaintextRows(Path(tmp) / "plain.db")
        sealed_floor = PlaintextRows(Path(tmp) / "sealed.db")
        cipher_rows = SqlcipherRows(Path(tmp) / "sqlcipher.db", os.urandom(32))
        aead = AESGCM(os.urandom(32))

        # Built before timing, as the baselines' tuples are: callers hand the vault
        # objects they already have (the dirty log's events), not fresh ones.
        changes = [[[Change(c, k, v) for c, k, v in rows] for rows in rnd] for rnd in rounds]

        def ours(r: int) -> None:
            for batch in changes[r]:
                vault.apply(batch)

        def floor(r: int) -> None:
            for rows in rounds[r]:
                plain.upsert(rows)

        def encrypted_floor(r: int) -> None:
            for rows in rounds[r]:
                sealed = seal_values(aead, (v for _, _, v in rows), len(rows))
                sealed_floor.upsert(
                    [(c, k, s) for (c, k, _), s in zip(rows, sealed, strict=True)]
                )

        def sqlcipher(r: int) -> None:
            for rows in rounds[r]:
                cipher_rows.upsert(rows)

        try:
            samples = _round_robin(
                {
                    "plaintext_sqlite": floor,
                    "vault_apply": ours,
                    "aesgcm_then_sqlite": encrypted_floor,
                    "sqlcipher_rows": sqlcipher,
                },
                repeats,
            )
        finally:
            for closable in (vault, plain, sealed_floor, cipher_rows):
                closable.close()
    rows_total = batches * batch_size
    floor_samples = samples["plaintext_sqlite"]
    results: list[dict[str, Any]] = [
        {
            "name": "write_plaintext_sqlite_floor",
            "rows_per_repeat": rows_total,
            "rows_per_s": rows_total / summarize(floor_samples).median,
            "floor": summarize(floor_samples).as_dict(),
        }
    ]
    for name, times in samples.items():
        if name == "plaintext_sqlite":
            continue
        ratios = [f / t for f, t in zip(floor_samples, times, strict=True)]
        timing = summarize(times)
        results.append(
            {
                "name": f"write_{name}_vs_floor",
                "rows_per_repeat": rows_total,
                "rows_per_s": rows_total / timing.median,
                "figure": "throughput_ratio",
                "throughput_ratio": statistics.median(ratios),
                "throughput_ratio_min": min(ratios),
                "throughput_ratio_max": max(ratios),
                "ours": timing.as_dict(),
                "baseline": summarize(floor_samples).as_dict(),
            }
        )
    return results


def apply_breakdown(batch_size: int, repeats: int) -> dict[str, Any]:
    """Where one ``Vault.apply`` batch spends its time, each part timed on its own."""
    person = b"mlks-row-key"
    with tempfile.TemporaryDirectory() as tmp:
        vault = Vault.create(Path(tmp) / "v", "bench", kdf=profiles.INSECURE_FOR_TESTS_ONLY)
        plain = PlaintextRows(Path(tmp) / "plain.db")
        stored = PlaintextRows(Path(tmp) / "stored.db")
        aead = AESGCM(os.urandom(32))
        hasher = hashlib.blake2b(key=os.urandom(32), digest_size=32, person=person)
        keys = [f"row-{i}".encode() for i in range(batch_size)]

        def fresh() -> list[tuple[str, bytes, bytes]]:
            return [("bench", k, os.urandom(_VALUE_BYTES)) for k in keys]

        # Rows as the vault stores them: a 32-byte key hash and a sealed value, in
        # index order, so the SQLite part is measured at the vault's own row size.
        hashes = sorted(os.urandom(_KEY_HASH_BYTES) for _ in keys)

        def stored_rows() -> list[tuple[str, bytes, bytes]]:
            return [("bench", h, os.urandom(_VALUE_BYTES + _STORED_OVERHEAD)) for h in hashes]

        def hash_keys() -> None:
            for k in keys:
                h = hasher.copy()
                h.update(k)
                h.digest()

        names = (
            "vault_apply", "floor_sqlite_plain", "sqlite_stored_rows", "aesgcm", "blake2b_keys"
        )
        parts: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}

        def timed(name: str, fn: Callable[..., object], *args: object) -> None:
            t0, c0 = time.perf_counter(), time.process_time()
            fn(*args)
            parts[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)

        try:
            for _ in range(repeats):
                rows, plain_rows, sealed_rows = fresh(), fresh(), stored_rows()
                changes = [Change(c, k, v) for c, k, v in rows]
                timed("vault_apply", vault.apply, changes)
                timed("floor_sqlite_plain", plain.upsert, plain_rows)
                timed("sqlite_stored_rows", stored.upsert, sealed_rows)
                plaintexts = [len(k).to_bytes(4, "big") + k + v for _, k, v in rows]
                timed("aesgcm", seal_values, aead, plaintexts, len(plaintexts))
                timed("blake2b_keys", hash_keys)
        finally:
            for closable in (vault, plain, stored):
                closable.close()
    med = {name: statistics.median(times) for name, times in parts.items()}
    cpu_med = {name: statistics.median(times) for name, times in cpu.items()}
    total = med["vault_apply"]
    unavoidable = med["sqlite_stored_rows"] + med["aesgcm"]
    return {
        "name": f"apply_breakdown_{batch_size}_rows",
        "figure": "bound_if_no_python",
        "bound_if_no_python": med["floor_sqlite_plain"] / (unavoidable + med["blake2b_keys"]),
        "encrypted_floor_ratio": med["floor_sqlite_plain"] / unavoidable,
        "measured_ratio": med["floor_sqlite_plain"] / total,
        "ms": {name: m * 1e3 for name, m in med.items()},
        "share_of_apply": _shares(med),
        # CPU time leaves out the fsync wait and the time this process was descheduled
        # by other load: the steadier basis for attributing the vault's own work.
        "cpu_ms": {name: m * 1e3 for name, m in cpu_med.items()},
        "cpu_share_of_apply": _shares(cpu_med),
    }


def _shares(med: dict[str, float]) -> dict[str, float]:
    total = med["vault_apply"]
    known = med["sqlite_stored_rows"] + med["aesgcm"] + med["blake2b_keys"]
    return {
        "sqlite_stored_rows": med["sqlite_stored_rows"] / total,
        "aesgcm": med["aesgcm"] / total,
        "blake2b_keys": med["blake2b_keys"] / total,
        "per_row_python_rest": (total - known) / total,
    }


def run(quick: bool = False, *, tiny: bool = False) -> list[dict[str, Any]]:
    """Every throughput benchmark as plain dicts."""
    if tiny:
        return [*write_throughput(1, 3, batch_size=100), apply_breakdown(100, 3)]
    if quick:
        return [*write_throughput(3, 3), apply_breakdown(1000, 5)]
    return [*write_throughput(10, 7), apply_breakdown(1000, 15)]


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    args = parser.parse_args()
    print(json.dumps(run(args.quick), indent=2))


if __name__ == "__main__":
    main()
