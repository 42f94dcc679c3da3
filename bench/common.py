"""Shared measurement helpers: repeated timing, median and spread, ratios.

The machine is shared and noisy, so no absolute time is ever the claim: each
benchmark times its subject and its baseline alternately in the same run and
reports the ratio of medians, with the spread (min-max over repeats) beside it.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
