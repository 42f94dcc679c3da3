"""Shared measurement helpers: repeated timing, median and spread, ratios.

The machine is shared and noisy, so no absolute time is ever the claim: each
benchmark times its subject and its baseline alternately in the same run and
reports the ratio of medians, with the spread (min-max over repeats) beside it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

#: What runs beside an event loop in the loop-lag benchmarks (see :class:`BusyThread`).
LoadKind = Literal["none", "cpu", "gil"]


@dataclass(frozen=True, slots=True)
class Timing:
    """Seconds per repeat: median and the spread around it."""

    median: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        """Plain-number form for JSON output."""
        return {"median_s": self.median, "min_s": self.low, "max_s": self.high}


def measure_pair(
    subject: Callable[[], object],
    baseline: Callable[[], object],
    repeats: int,
    setup: Callable[[], object] | None = None,
) -> tuple[Timing, Timing]:
    """Time ``subject`` and ``baseline`` alternately, ``repeats`` times each.

    Alternating keeps a burst of machine noise from landing on one side only.
    """
    s_times: list[float] = []
    b_times: list[float] = []
    for _ in range(repeats):
        for fn, sink in ((subject, s_times), (baseline, b_times)):
            if setup is not None:
                setup()
            t0 = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - t0)
    return summarize(s_times), summarize(b_times)


@dataclass(frozen=True, slots=True)
class PairedRatio:
    """Subject ÷ baseline, one ratio per repeat (the two timed back to back).

    The spread of per-repeat ratios is honest about noise that hits both sides
    alike; min/max of the two medians' own spreads would overstate it.
    """

    median: float
    low: float
    high: float
    subject: Timing
    baseline: Timing

    def as_dict(self) -> dict[str, object]:
        """Plain-number form for JSON output."""
        return {
            "ratio": self.median,
            "ratio_min": self.low,
            "ratio_max": self.high,
            "ours": self.subject.as_dict(),
            "baseline": self.baseline.as_dict(),
        }


def measure_ratio(
    subject: Callable[[], object],
    baseline: Callable[[], object],
    repeats: int,
    setup: Callable[[], object] | None = None,
    warmup: int = 1,
) -> PairedRatio:
    """Like :func:`measure_pair`, but also keep each repeat's subject ÷ baseline.

    ``warmup`` untimed rounds first, so one-time costs (imports, first allocations,
    cold caches) are not charged to whichever side happens to run first.
    """
    for _ in range(warmup):
        for fn in (subject, baseline):
            if setup is not None:
                setup()
            fn()
    s_times: list[float] = []
    b_times: list[float] = []
    for _ in range(repeats):
        for fn, sink in ((subject, s_times), (baseline, b_times)):
            if setup is not None:
                setup()
            t0 = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - t0)
    ratios = [s / b for s, b in zip(s_times, b_times, strict=True)]
    return PairedRatio(
        statistics.median(ratios), min(ratios), max(ratios), summarize(s_times),
        summarize(b_times),
    )


def summarize(samples: list[float]) -> Timing:
    """Median, min and max of a list of samples."""
    return Timing(statistics.median(samples), min(samples), max(samples))


def ratio(numerator: Timing, denominator: Timing) -> float:
    """Ratio of medians."""
    return numerator.median / denominator.median


def emit_results(results: list[dict[str, Any]], json_path: Path | None) -> None:
    """Print each result as JSON, and write them all to ``json_path`` when given."""
    for r in results:
        print(json.dumps(r, indent=2))
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2) + "\n")


async def loop_lags_during(
    work: Callable[[], Awaitable[object] | object], tick: float = 0.001
) -> list[float]:
    """Each wake-up's lateness (seconds) of a ``tick``-second ticker while ``work`` runs.

    The ticker is a task on the running loop that sleeps ``tick`` in a loop; a
    wake-up is late by however long the loop could not run it.  ``work`` is
    called on the loop (a coroutine it returns is awaited): a blocking call shows
    the stall it causes, an ``await`` of work done elsewhere shows what is left.
    """
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(tick)
            lags.append(time.perf_counter() - t0 - tick)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    result = work()
    if asyncio.iscoroutine(result):
        await result
    done.set()
    await task
    return lags


class BusyThread:
    """A CPU-bound thread beside the event loop, for the length of a ``with`` block.

    ``"cpu"`` hashes 1 MiB buffers with SHA-256, which hashlib does with the GIL
    released: a core is busy, as on a loaded machine, but the GIL is mostly free.
    ``"gil"`` counts in a pure-Python loop: whenever it runs it holds the GIL for a
    whole switch interval (5 ms by default), the worst neighbour an event loop can
    have in its own process.  ``"none"`` starts nothing.
    """

    def __init__(self, kind: LoadKind) -> None:
        self._kind = kind
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _hash(self) -> None:
        buf = os.urandom(1 << 20)
        while not self._stop.is_set():
            hashlib.sha256(buf).digest()

    def _spin(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1

    def __enter__(self) -> None:
        if self._kind != "none":
            target = self._hash if self._kind == "cpu" else self._spin
            self._thread = threading.Thread(target=target, name=f"bench-{self._kind}-load")
            self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
