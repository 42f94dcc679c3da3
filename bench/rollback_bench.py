"""What rollback detection costs: the state digest on the write path and at load.

Run: ``python -m bench.rollback_bench [--quick] [--split]`` (or through
``python -m bench``).

The first two figures compare the vault with itself in the same run, the state
digest on and off (``keystore.vault_core._state_digest_enabled``, a seam that exists for
this baseline only; with it off, ``apply`` neither reads the values it replaces nor
writes the record, and loads do not hash the rows):

* ``apply_digest``: ``Vault.apply`` throughput with the digest ÷ without, on batches
  that replace, insert and delete rows of a vault already holding rows (goal ≥ 0.85).
  The vault writes from the value tails it keeps in memory (a vault created by this
  object knows them all); ``apply_digest_..._read_back`` is the same with that
  memory switched off (``keystore.vault_core._TAIL_CACHE_MAX_ROWS`` below zero), so
  each write reads the values it replaces back, as a vault does before its first
  full read.
* ``unlock_rehydrate_digest``: ``Vault.open`` + ``unlock`` + ``GranularStorage.load``
  of a 10k-row vault with the check ÷ without (goal ≤ 1.1), with the default KDF
  profile (what a user waits) and with the test-only one (the load overhead alone).
* ``drain_tails``: one ``WriteBehindDrainer.flush`` of fresh values for the same
  rows, process CPU µs per row, the vault writing from the tails in memory and
  reading them back, interleaved in the same run (lower is better for both).
* ``tail_memory``: what a loaded writable vault keeps in memory for its writes
  (``tracemalloc``): bytes per row after the load (two lists) and once the first
  write made them a dict, and that dict's build time per row (docs/storage.md).
* ``digest_format2_vs_format1``: the set digest of 10k rows shaped like a vault's,
  state format 2 (one AES call per batch) ÷ state format 1 (a keyed BLAKE2b per row),
  both from :mod:`keystore.digest` (lower is better; docs/format.md §15.4).

``--split`` adds ``apply_digest_split``: where the digest's share of an ``apply``
goes, as process CPU time per apply of five otherwise identical throwaway vaults,
interleaved: digest off; on but not reading the values a write replaces; on but
neither reading them nor computing contributions; fully on, reading them back;
fully on, from the tails in memory.  The two partial variants write wrong records
(their vaults are thrown away); they exist only to attribute the cost to the
old-values read, the contributions and the record.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import emit_results, measure_ratio
from keystore import Change, KdfParameters, Vault, profiles
from keystore import digest as digest_module
from keystore import vault_core as vault_module
from keystore.backends import sqlite as sqlite_backend
from mls import GranularStorage

__all__ = [
    "apply_digest",
    "apply_digest_split",
    "digest_formats",
    "drain_tails",
    "run",
    "tail_memory",
    "unlock_rehydrate_digest",
]

_PASSPHRASE = "bench passphrase"
_VALUE_BYTES = 1024
_CATEGORIES = 10


@contextlib.contextmanager
def _no_tails(off: bool = True) -> Iterator[None]:
    """Vaults made and written inside keep no value tails in memory (read back)."""
    cap = vault_module._TAIL_CACHE_MAX_ROWS
    if off:
        vault_module._TAIL_CACHE_MAX_ROWS = -1
    try:
        yield
    finally:
        vault_module._TAIL_CACHE_MAX_ROWS = cap


@contextlib.contextmanager
def _digest_off() -> Iterator[None]:
    vault_module._state_digest_enabled = False
    try:
        yield
    finally:
        vault_module._state_digest_enabled = True


def _without(fn: Callable[[], object]) -> Callable[[], None]:
    def run_without() -> None:
        with _digest_off():
            fn()

    return run_without


def _cpu_ratio(
    subject: Callable[[], object], baseline: Callable[[], object], repeats: int
) -> float:
    """Median per-repeat ratio of process CPU time, subject ÷ baseline.

    Beside the wall-clock figure: on a machine shared with other work the wall
    clock also counts time spent waiting for a core, which CPU time does not.
    """
    ratios = []
    for _ in range(repeats):
        times = []
        for fn in (subject, baseline):
            t0 = time.process_time()
            fn()
            times.append(time.process_time() - t0)
        ratios.append(times[0] / max(times[1], 1e-9))
    return statistics.median(ratios)


def _rows(n: int) -> list[Change]:
    return [
        Change(f"bench/c{i % _CATEGORIES}", f"entry-{i}".encode(), os.urandom(_VALUE_BYTES))
        for i in range(n)
    ]


def apply_digest(
    stored: int, batch: int, repeats: int, *, read_back: bool = False
) -> dict[str, Any]:
    """apply() of mixed batches, digest on ÷ off, as a throughput ratio (higher is better).

    Each batch replaces ``batch - 8`` existing rows, inserts 4 new ones and deletes 4,
    so the digest has old values to subtract, as in a client's flush.  With
    ``read_back`` the digest vault keeps no tails in memory and reads them back.
    """
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp, _no_tails(read_back):
        vaults = [
            Vault.create(Path(tmp) / name, _PASSPHRASE, kdf=profiles.INSECURE_FOR_TESTS_ONLY)
            for name in ("with", "without")
        ]
        try:
            initial = _rows(stored)
            for v in vaults:
                v.apply(initial)
            counter = [stored]

            def one_batch(v: Vault) -> None:
                changes = [
                    Change(f"bench/c{i % _CATEGORIES}", f"entry-{i}".encode(),
                           os.urandom(_VALUE_BYTES))
                    for i in rng.sample(range(stored), batch - 8)
                ]
                for _ in range(4):
                    i = counter[0]
                    counter[0] += 1
                    changes.append(Change(f"bench/c{i % _CATEGORIES}", f"entry-{i}".encode(),
                                          os.urandom(_VALUE_BYTES)))
                    changes.append(Change(f"bench/c{i % _CATEGORIES}",
                                          f"entry-{i - 2}".encode(), None))
                v.apply(changes)

            def ours() -> None:
                for _ in range(10):
                    one_batch(vaults[0])

            def baseline() -> None:
                for _ in range(10):
                    one_batch(vaults[1])

            result = measure_ratio(ours, _without(baseline), repeats)
            cpu = _cpu_ratio(ours, _without(baseline), repeats)
        finally:
            for v in vaults:
                v.close()
    return {
        "name": f"apply_digest_{stored}_rows_batch_{batch}" + ("_read_back" if read_back else ""),
        "figure": "throughput_ratio",
        "throughput_ratio": 1 / result.median,
        "throughput_ratio_min": 1 / result.high,
        "throughput_ratio_max": 1 / result.low,
        "time_ratio": result.median,
        "cpu_throughput_ratio": 1 / cpu,
        "ours": result.subject.as_dict(),
        "baseline": result.baseline.as_dict(),
        "goal": ">= 0.85",
    }


def unlock_rehydrate_digest(entries: int, profile: KdfParameters, repeats: int) -> dict[str, Any]:
    """open + unlock + GranularStorage.load of ``entries`` rows, check on ÷ off."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v"
        with Vault.create(path, _PASSPHRASE, kdf=profile) as vault:
            vault.apply(_rows(entries))

        def load() -> None:
            with Vault.open(path) as v:
                v.unlock(_PASSPHRASE)
                GranularStorage.load(v)

        result = measure_ratio(load, _without(load), repeats)
        cpu = _cpu_ratio(load, _without(load), repeats)
    return {
        "name": f"unlock_rehydrate_digest_{entries}_{profile.name}",
        "entries": entries,
        "kdf": profile.name,
        **result.as_dict(),
        "cpu_ratio": cpu,
        "goal": "<= 1.1",
    }


def drain_tails(rows: int, repeats: int) -> dict[str, Any]:
    """CPU µs per row of one drain of ``rows`` replaced rows: tails in memory vs read back."""
    from mls.drainer import WriteBehindDrainer

    keys = [b"row-%d" % i for i in range(rows)]
    per_row: dict[str, list[float]] = {"memory": [], "read_back": []}
    with tempfile.TemporaryDirectory() as tmp:
        sides = {}
        for name in per_row:
            with _no_tails(name == "read_back"):
                vault = Vault.create(
                    Path(tmp) / name, _PASSPHRASE, kdf=profiles.INSECURE_FOR_TESTS_ONLY
                )
            storage = GranularStorage()
            sides[name] = (vault, storage, WriteBehindDrainer(storage, vault))
        try:
            for round_ in range(repeats + 1):  # the first round only inserts the rows
                for name, (_, storage, drainer) in sides.items():
                    for key in keys:
                        storage.write("bench", key, os.urandom(_VALUE_BYTES))
                    with _no_tails(name == "read_back"):
                        t0 = time.process_time()
                        drainer.flush()
                        elapsed = time.process_time() - t0
                    if round_:
                        per_row[name].append(elapsed / rows * 1e6)
        finally:
            for vault, _, drainer in sides.values():
                drainer.close()
                vault.close()
    us = {name: statistics.median(t) for name, t in per_row.items()}
    return {
        "name": f"drain_tails_{rows}",
        "rows": rows,
        "cpu_us_per_row_from_memory": us["memory"],
        "cpu_us_per_row_read_back": us["read_back"],
        "cpu_us_per_row_saved": us["read_back"] - us["memory"],
    }


def tail_memory(rows: int) -> dict[str, Any]:
    """Bytes per row of the value tails a loaded vault keeps, and ns per row to index them."""
    import gc
    import tracemalloc

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v"
        with Vault.create(path, _PASSPHRASE, kdf=profiles.INSECURE_FOR_TESTS_ONLY) as vault:
            vault.apply(_rows(rows))
        with Vault.open(path) as vault:
            vault.unlock(_PASSPHRASE)
            gc.collect()
            tracemalloc.start()
            try:
                vault.open_rows()  # what it returns is dropped at once: only the tails stay
                gc.collect()
                after_load, _ = tracemalloc.get_traced_memory()
                vault._tails_now()  # what the first write does
                gc.collect()
                as_dict, _ = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            vault.open_rows()  # again, timed without tracemalloc's own cost
            t0 = time.perf_counter()
            vault._tails_now()
            build = time.perf_counter() - t0
    return {
        "name": f"tail_memory_{rows}_rows",
        "rows": rows,
        "bytes_per_row_after_load": after_load / rows,
        "bytes_per_row_as_dict": as_dict / rows,
        "ns_per_row_dict_build": build / rows * 1e9,
    }


def digest_formats(entries: int, repeats: int) -> dict[str, Any]:
    """Set digest of ``entries`` stored rows: state format 2 ÷ format 1 (time ratio)."""
    keys = digest_module.DigestKeys(os.urandom(64), os.urandom(16))
    # Stored values as a vault holds them: format byte, nonce, ciphertext, tag.
    rows = [
        (f"bench/c{i % _CATEGORIES}", os.urandom(32), os.urandom(1 + 12 + 4 + _VALUE_BYTES + 16))
        for i in range(entries)
    ]

    def format2() -> None:
        digest_module.RowSetDigest(keys, state_format=2).add(rows)

    def format1() -> None:
        digest_module.RowSetDigest(keys, state_format=1).add(rows)

    result = measure_ratio(format2, format1, repeats)
    keys.wipe()
    return {
        "name": f"digest_format2_vs_format1_{entries}_rows",
        "entries": entries,
        **result.as_dict(),
        "us_per_row_format2": result.subject.median / entries * 1e6,
        "us_per_row_format1": result.baseline.median / entries * 1e6,
    }


def apply_digest_split(stored: int, batch: int, rounds: int) -> dict[str, Any]:
    """CPU ms per ``apply`` with the digest off, partly on and fully on (see --split)."""
    real_old_values = sqlite_backend._old_values
    real_sum = digest_module.DigestKeys.sum_rows

    def no_sum(self: digest_module.DigestKeys, rows: Any) -> tuple[int, int]:
        return 0, len(list(rows))

    # (digest on, old-values read, contribution sum, tails kept in memory)
    variants: dict[str, tuple[bool, Any, Any, bool]] = {
        "off": (False, real_old_values, real_sum, False),
        "record_only": (True, lambda *a: [], no_sum, False),
        "record_and_contributions": (True, lambda *a: [], real_sum, False),
        "full": (True, real_old_values, real_sum, False),
        "full_from_memory": (True, real_old_values, real_sum, True),
    }
    rng = random.Random(2)
    per_apply: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        vaults = {}
        for name, (*_, tails) in variants.items():
            with _no_tails(not tails):
                vaults[name] = Vault.create(
                    Path(tmp) / name, _PASSPHRASE, kdf=profiles.INSECURE_FOR_TESTS_ONLY
                )
        try:
            initial = _rows(stored)
            for name, v in vaults.items():
                with _no_tails(not variants[name][3]):
                    v.apply(initial)
            for _ in range(rounds):
                for name, (enabled, old_values, sum_rows, tails) in variants.items():
                    batches = [
                        [Change(f"bench/c{i % _CATEGORIES}", f"entry-{i}".encode(),
                                os.urandom(_VALUE_BYTES)) for i in rng.sample(range(stored), batch)]
                        for _ in range(10)
                    ]
                    vault_module._state_digest_enabled = enabled
                    sqlite_backend._old_values = old_values
                    digest_module.DigestKeys.sum_rows = sum_rows  # type: ignore[method-assign]
                    try:
                        with _no_tails(not tails):
                            t0 = time.process_time()
                            for changes in batches:
                                vaults[name].apply(changes)
                            per_apply[name].append((time.process_time() - t0) / len(batches))
                    finally:
                        vault_module._state_digest_enabled = True
                        sqlite_backend._old_values = real_old_values
                        digest_module.DigestKeys.sum_rows = real_sum  # type: ignore[method-assign]
        finally:
            for v in vaults.values():
                v.close()
    ms = {name: statistics.median(t) * 1e3 for name, t in per_apply.items()}
    return {
        "name": f"apply_digest_split_{stored}_rows_batch_{batch}",
        "cpu_ms_per_apply": ms,
        "cpu_ms_old_values_read": ms["full"] - ms["record_and_contributions"],
        "cpu_ms_old_values_from_memory": ms["full_from_memory"] - ms["record_and_contributions"],
        "cpu_ms_contributions": ms["record_and_contributions"] - ms["record_only"],
        "cpu_ms_record": ms["record_only"] - ms["off"],
        "cpu_throughput_ratio": ms["off"] / ms["full_from_memory"],
        "cpu_throughput_ratio_read_back": ms["off"] / ms["full"],
    }


def run(quick: bool = False, split: bool = False) -> list[dict[str, Any]]:
    """Every figure of this module (smaller and fewer repeats with ``quick``)."""
    repeats = 5 if quick else 15
    stored = 2_000 if quick else 10_000
    results = [
        apply_digest(stored, 64, repeats),
        apply_digest(stored, 64, repeats, read_back=True),
        unlock_rehydrate_digest(10_000, profiles.INSECURE_FOR_TESTS_ONLY, repeats),
        unlock_rehydrate_digest(10_000, profiles.RFC_9106_LOW_MEMORY, 3 if quick else 7),
        digest_formats(10_000, repeats),
        drain_tails(1_000, repeats),
        tail_memory(20_000),
    ]
    if split:
        results.append(apply_digest_split(2_000 if quick else 10_000, 64, 10 if quick else 40))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--split", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    emit_results(run(args.quick, args.split), args.json)


if __name__ == "__main__":
    main()
