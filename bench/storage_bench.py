"""GranularStorage and its drainers: hot path, drain throughput, persist cost, loop lag.

Run: ``python -m bench.storage_bench [--quick] [--json OUT]`` (``run()`` feeds the
unified ``python -m bench``).  Every figure is a ratio against a baseline timed
alternately in the same run (see :mod:`bench.common`), median and min-max over repeats.

* ``storage_hot_path``: ``GranularStorage.write`` (dict set + dirty-log event, under the
  lock, validated) ÷ a bare ``dict`` set + ``list.append`` of the same event tuple in a
  plain loop.  Goal ≤ 4.
* ``storage_drain_throughput_<n>``: throughput of ``WriteBehindDrainer.flush`` of n
  pending 1 KiB writes (drain + validate + encrypt + one durable transaction) ÷ a
  plaintext stdlib-SQLite batch upsert of the same rows, same pragmas (WAL,
  ``synchronous=FULL``).  Goal ≥ 0.75.  ``storage_share`` is the part of the flush
  spent outside ``Vault.apply`` (draining and building the batch).
* ``persist_one_change_<n>`` / ``granular_cost_flatness``: the reference document's
  headline, granular write + drain + durable apply vs a whole-state encrypted snapshot
  per change (from :mod:`bench.persist_bench`, which ``python -m bench`` runs itself;
  here only when run standalone).  Goal ≥ 1000x at 10k entries, flat from 1k up.
* ``async_flush_loop_lag``: the worst event-loop lag while ``AsyncDrainer.flush``
  persists 100k events, against the lag of the same flush called on the loop.
  Goal < 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.baselines import PlaintextRows
from bench.common import emit_results, measure_ratio
from keystore import Vault, profiles
from mls import AsyncDrainer, GranularStorage, WriteBehindDrainer

__all__ = ["async_loop_lag", "drain_throughput", "headline", "hot_path", "run"]

_VALUE_BYTES = 1024


def hot_path(writes: int = 200_000, repeats: int = 7) -> dict[str, Any]:
    """``GranularStorage.write`` ÷ bare dict set + list.append, per write."""
    keys = [i.to_bytes(8, "big") for i in range(writes)]
    value = os.urandom(100)
    fresh: list[GranularStorage] = []

    def setup() -> None:
        fresh[:] = [GranularStorage()]

    def ours() -> None:
        write = fresh[0].write
        for key in keys:
            write("bench", key, value)

    def bare() -> None:
        rows: dict[bytes, bytes] = {}
        log: list[tuple[int, str, bytes, bytes]] = []
        append = log.append
        for seq, key in enumerate(keys):
            rows[key] = value
            append((seq, "bench", key, value))

    def provider() -> None:
        write_tree = fresh[0].write_tree
        for key in keys:
            write_tree(key, value)

    def in_operation() -> None:
        storage = fresh[0]
        write = storage.write
        with storage.operation():
            for key in keys:
                write("bench", key, value)

    result = measure_ratio(ours, bare, repeats, setup=setup)
    # The same pair in CPU time of this thread: steadier than wall time on a busy machine.
    cpu_ratios = []
    for _ in range(repeats):
        spent = []
        for fn in (ours, bare):
            setup()
            t0 = time.thread_time()
            fn()
            spent.append(time.thread_time() - t0)
        cpu_ratios.append(spent[0] / spent[1])
    via_provider = measure_ratio(provider, bare, repeats, setup=setup)
    via_operation = measure_ratio(in_operation, bare, repeats, setup=setup)
    return {
        "name": "storage_hot_path",
        "writes": writes,
        **result.as_dict(),
        "cpu_ratio": statistics.median(cpu_ratios),
        "cpu_ratio_min": min(cpu_ratios),
        "cpu_ratio_max": max(cpu_ratios),
        "per_write_ns": result.subject.median / writes * 1e9,
        "bare_per_write_ns": result.baseline.median / writes * 1e9,
        "provider_write_tree_ratio": via_provider.median,
        "inside_one_operation_ratio": via_operation.median,
        "goal": "<= 4",
    }


def drain_throughput(rows: int = 1000, repeats: int = 7) -> dict[str, Any]:
    """Throughput of one flush of ``rows`` pending writes ÷ plaintext SQLite upsert."""
    with tempfile.TemporaryDirectory() as tmp:
        vault = Vault.create(Path(tmp) / "v", "bench", kdf=profiles.INSECURE_FOR_TESTS_ONLY)
        plain = PlaintextRows(Path(tmp) / "plain.db")
        storage = GranularStorage()
        drainer = WriteBehindDrainer(storage, vault)
        keys = [b"row-%d" % i for i in range(rows)]
        current: list[tuple[str, bytes, bytes]] = []

        def prepare() -> None:
            # Fresh values for the same keys each round: both sides update rows in place.
            if storage.pending_events() == 0:
                current[:] = [("bench", k, os.urandom(_VALUE_BYTES)) for k in keys]
                for category, key, value in current:
                    storage.write(category, key, value)

        def ours() -> None:
            drainer.flush()

        def baseline() -> None:
            plain.upsert(current)

        try:
            result = measure_ratio(ours, baseline, repeats, setup=prepare)
            # The storage layer's own share of a flush: draining and building the batch.
            shares = []
            for _ in range(repeats):
                prepare()
                t0 = time.perf_counter()
                events = storage.drain_storage_events()
                t1 = time.perf_counter()
                vault.apply(events)
                shares.append((t1 - t0) / (time.perf_counter() - t0))
        finally:
            drainer.close()
            vault.close()
            plain.close()
    return {
        "name": f"storage_drain_throughput_{rows}",
        "rows": rows,
        "value_bytes": _VALUE_BYTES,
        "figure": "throughput_ratio",
        "throughput_ratio": 1 / result.median,
        "throughput_ratio_min": 1 / result.high,
        "throughput_ratio_max": 1 / result.low,
        "ours": result.subject.as_dict(),
        "baseline": result.baseline.as_dict(),
        "storage_share": statistics.median(shares),
        "goal": ">= 0.75",
    }


def headline(sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    """Granular vs snapshot persist cost per change (delegates to bench.persist_bench)."""
    from bench.persist_bench import persist_curve

    return persist_curve(sizes, repeats)


async def _lag_during(flush: Callable[[], Any], tick: float = 0.001) -> list[float]:
    """Sleep ``tick`` in a loop while ``flush`` runs; return each wake-up's lateness."""
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(tick)
            lags.append(time.perf_counter() - t0 - tick)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    result = flush()
    if asyncio.iscoroutine(result):
        await result
    done.set()
    await task
    return lags


def async_loop_lag(
    events: int = 100_000, repeats: int = 3, value_bytes: int = 256
) -> dict[str, Any]:
    """Event-loop lag while AsyncDrainer flushes ``events``, against two baselines.

    ``idle_max_lag_ms`` is the same ticker with nothing else running (the machine's own
    noise); ``blocking_flush_max_lag_ms`` is the same flush called on the loop.
    """
    ours_max: list[float] = []
    ours_p99: list[float] = []
    ours_over: list[float] = []
    idle_max: list[float] = []
    blocking_max: list[float] = []
    flush_s: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        vault = Vault.create(Path(tmp) / "v", "bench", kdf=profiles.INSECURE_FOR_TESTS_ONLY)
        try:
            for _ in range(repeats):
                for side in ("ours", "idle", "blocking"):
                    storage = GranularStorage()
                    for i in range(events):
                        storage.write("bench", i.to_bytes(8, "big"), os.urandom(value_bytes))

                    async def main(side: str = side, storage: GranularStorage = storage) -> None:
                        drainer = AsyncDrainer(storage, vault)
                        try:
                            if side == "ours":
                                t0 = time.perf_counter()
                                lags = await _lag_during(drainer.flush)
                                flush_s.append(time.perf_counter() - t0)
                                ours_max.append(max(lags))
                                ours_p99.append(statistics.quantiles(lags, n=100)[98])
                                ours_over.append(sum(lag > 0.01 for lag in lags) / len(lags))
                            elif side == "idle":
                                pause = flush_s[-1]
                                lags = await _lag_during(lambda: asyncio.sleep(pause))
                                idle_max.append(max(lags))
                            else:
                                blocking = drainer._core.flush  # the same flush, on the loop
                                blocking_max.append(max(await _lag_during(blocking)))
                        finally:
                            await drainer.aclose()

                    asyncio.run(main())
        finally:
            vault.close()
    worst = statistics.median(ours_max)
    return {
        "name": "async_flush_loop_lag",
        "events": events,
        "value_bytes": value_bytes,
        "figure": "max_lag_ms",
        "max_lag_ms": worst * 1e3,
        "max_lag_ms_min": min(ours_max) * 1e3,
        "max_lag_ms_max": max(ours_max) * 1e3,
        "p99_lag_ms": statistics.median(ours_p99) * 1e3,
        "share_of_ticks_over_10ms": statistics.median(ours_over),
        "flush_s": statistics.median(flush_s),
        "idle_max_lag_ms": statistics.median(idle_max) * 1e3,
        "blocking_flush_max_lag_ms": statistics.median(blocking_max) * 1e3,
        "lag_vs_blocking": worst / statistics.median(blocking_max),
        "goal": "< 10 ms",
    }


def run(quick: bool = False, *, include_headline: bool = False) -> list[dict[str, Any]]:
    """Every storage benchmark, as plain dicts (the headline only when asked)."""
    if quick:
        results = [
            hot_path(50_000, 5),
            drain_throughput(1000, 3),
            async_loop_lag(20_000, 1),
        ]
        if include_headline:
            results += headline([1000, 10_000], 3)
        return results
    results = [
        hot_path(),
        drain_throughput(1000),
        drain_throughput(10_000, 5),
        async_loop_lag(),
    ]
    if include_headline:
        results += headline([1000, 10_000, 100_000], 5)
    return results


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument(
        "--no-headline", action="store_true", help="skip the granular-vs-snapshot curve"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = run(args.quick, include_headline=not args.no_headline)
    emit_results(results, args.json)


if __name__ == "__main__":
    main()
