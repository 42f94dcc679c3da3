"""What rollback detection costs: the state digest on the write path and at load.

Run: ``python -m bench.rollback_bench [--quick]`` (or through ``python -m bench``).

Both figures compare the vault with itself in the same run, the state digest on and
off (``keystore.vault_core._state_digest_enabled``, a seam that exists for this baseline
only; with it off, ``apply`` neither reads the values it replaces nor writes the
record, and loads do not hash the rows):

* ``apply_digest``: ``Vault.apply`` throughput with the digest ÷ without, on batches
  that replace, insert and delete rows of a vault already holding rows (goal ≥ 0.85).
* ``unlock_rehydrate_digest``: ``Vault.open`` + ``unlock`` + ``GranularStorage.load``
  of a 10k-row vault with the check ÷ without (goal ≤ 1.1), with the default KDF
  profile (what a user waits) and with the test-only one (the load overhead alone).
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
from keystore import vault_core as vault_module
from mls import GranularStorage

__all__ = ["apply_digest", "run", "unlock_rehydrate_digest"]

_PASSPHRASE = "bench passphrase"
_VALUE_BYTES = 1024
_CATEGORIES = 10


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


def apply_digest(stored: int, batch: int, repeats: int) -> dict[str, Any]:
    """apply() of mixed batches, digest on ÷ off, as a throughput ratio (higher is better).

    Each batch replaces ``batch - 8`` existing rows, inserts 4 new ones and deletes 4,
    so the digest has old values to read back and subtract, as in a client's flush.
    """
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
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
        "name": f"apply_digest_{stored}_rows_batch_{batch}",
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


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Every figure of this module (smaller and fewer repeats with ``quick``)."""
    repeats = 5 if quick else 15
    return [
        apply_digest(2_000 if quick else 10_000, 64, repeats),
        unlock_rehydrate_digest(10_000, profiles.INSECURE_FOR_TESTS_ONLY, repeats),
        unlock_rehydrate_digest(10_000, profiles.RFC_9106_LOW_MEMORY, 3 if quick else 7),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    emit_results(run(args.quick), args.json)


if __name__ == "__main__":
    main()
