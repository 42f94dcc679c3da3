"""The benchmark harness: runs every benchmark module, reads its figures, judges its goals.

Each benchmark module exposes ``run(quick: bool) -> list[dict]`` (or one dict).  A result
dict is free-form, but the harness reads these keys from it:

* ``name`` — what was measured (a nameless result is named after its figure key);
* ``figure`` — the key holding the headline number; without it the first of ``ratio``,
  ``throughput_ratio``, ``speedup``, then any numeric key containing ``ratio``,
  ``_over_`` or ``_vs_``;
* ``goal`` — ``">= 0.75"``, ``"<= 4"``, ``"< 10 ms"`` … compared with the figure;
  ``met`` (bool) instead, for goals that are not a threshold (``"flat ±20 %"``);
* ``<figure>_min``/``<figure>_max`` — the spread; otherwise derived from
  ``ours``/``baseline`` timings (``median_s``/``min_s``/``max_s``) when the figure is
  their ratio.  A figure held as a nested ``{"ratio": …, "ratio_min": …}`` dict is
  read too.

A module that is not there is reported as missing, one without ``run`` as skipped, one
that raises as crashed; only a crash makes the command fail: a missed goal is a
finding, not an error, and a slow CI machine must not turn it into one.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import platform
import re
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

__all__ = [
    "DERIVED",
    "SUITES",
    "Derived",
    "Figure",
    "Size",
    "Suite",
    "SuiteOutcome",
    "all_figures",
    "derived_figures",
    "figures_of",
    "judge",
    "machine_info",
    "markdown_table",
    "run_suites",
    "text_table",
]

Size = Literal["tiny", "quick", "full"]
Verdict = Literal["met", "missed", "info", "unjudged"]


@dataclass(frozen=True, slots=True)
class Suite:
    """One benchmark module, by the name the table and ``--suite`` use.

    ``tiny`` marks modules whose ``run`` takes ``tiny=True`` (seconds, for the smoke
    test); the others are skipped at that size.
    """

    name: str
    module: str
    tiny: bool = False


SUITES: tuple[Suite, ...] = (
    Suite("keystore", "bench.keystore_bench"),
    Suite("throughput", "bench.throughput_bench", tiny=True),
    Suite("persist", "bench.persist_bench", tiny=True),
    Suite("storage", "bench.storage_bench"),
    Suite("sqlcipher", "bench.sqlcipher_bench"),
    Suite("client", "bench.client_bench"),
    Suite("unlock", "bench.unlock_bench", tiny=True),
    Suite("native", "bench.native_bench"),
    Suite("postgres", "bench.postgres_bench", tiny=True),
    Suite("rollback", "bench.rollback_bench"),
)


@dataclass(frozen=True, slots=True)
class Derived:
    """A figure the issue asks for, computed from two numbers one suite already measured.

    Used where a module states its goal against a different baseline than the issue
    does; both rows are shown, each with its own goal, rather than one rewritten.
    """

    suite: str
    result: str
    numerator: str
    denominator: str
    name: str
    goal: str


DERIVED: tuple[Derived, ...] = (
    # Issue: send with durability barrier ÷ in-memory engine ≤ 2x (client_bench's own
    # goal is against in-memory send + one fsync'd commit).
    Derived(
        "client", "durable_send_over_floor", "per_send_ms", "memory_send_ms",
        "durable_send_over_memory_engine", "<= 2",
    ),
    # Issue: ≤ 1.25x with group commit (client_bench states ≤ 2 for the same ratio).
    Derived(
        "client", "group_commit_16_over_memory_send", "amortized_send_ms", "memory_send_ms",
        "group_commit_over_memory_engine", "<= 1.25",
    ),
)


@dataclass(slots=True)
class SuiteOutcome:
    """What running one suite produced: results, or why there are none."""

    suite: str
    status: Literal["ok", "missing", "crashed", "skipped"]
    seconds: float = 0.0
    results: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "suite": self.suite,
            "status": self.status,
            "seconds": self.seconds,
            "error": self.error,
            "results": self.results,
        }


@dataclass(frozen=True, slots=True)
class Figure:
    """One headline number, its spread, its goal and the verdict."""

    suite: str
    name: str
    key: str
    value: float
    low: float | None
    high: float | None
    goal: str | None
    verdict: Verdict
    ours_s: float | None
    baseline_s: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "suite": self.suite,
            "name": self.name,
            "key": self.key,
            "value": self.value,
            "min": self.low,
            "max": self.high,
            "goal": self.goal,
            "verdict": self.verdict,
            "ours_median_s": self.ours_s,
            "baseline_median_s": self.baseline_s,
        }


def _call(module: ModuleType, size: Size) -> object:
    run = module.run
    if size == "tiny":
        return run(True, tiny=True)
    return run(size == "quick")


def _as_results(raw: object, module: str) -> list[dict[str, Any]]:
    """Accept a list of dicts, one dict with a name, or a dict of dicts."""
    if isinstance(raw, Mapping):
        if "name" in raw:
            return [dict(raw)]
        raw = list(raw.values())
    if isinstance(raw, Iterable) and not isinstance(raw, str | bytes):
        out = []
        for item in raw:
            if not isinstance(item, Mapping):
                raise TypeError(f"{module}.run returned a {type(item).__name__}, not a dict")
            out.append(dict(item))
        return out
    raise TypeError(f"{module}.run returned {type(raw).__name__}, not dicts")


def run_suites(
    size: Size,
    suites: Iterable[Suite] = SUITES,
    progress: Callable[[str], None] | None = None,
) -> list[SuiteOutcome]:
    """Run each suite in turn, never letting one failure stop the others."""
    outcomes = []
    for suite in suites:
        if size == "tiny" and not suite.tiny:
            outcomes.append(SuiteOutcome(suite.name, "skipped", error="no tiny size"))
            continue
        if importlib.util.find_spec(suite.module) is None:
            outcomes.append(SuiteOutcome(suite.name, "missing", error=f"no {suite.module}"))
            continue
        if progress is not None:
            progress(f"running {suite.name} ({suite.module}, {size})")
        start = time.perf_counter()
        try:
            module = importlib.import_module(suite.module)
            if not callable(getattr(module, "run", None)):
                # Not wired into the harness yet: a gap to report, not a crash.
                outcomes.append(
                    SuiteOutcome(
                        suite.name,
                        "skipped",
                        time.perf_counter() - start,
                        error=f"{suite.module} has no run(quick) entry point",
                    )
                )
                continue
            results = _as_results(_call(module, size), suite.module)
        except Exception as exc:
            outcomes.append(
                SuiteOutcome(
                    suite.name,
                    "crashed",
                    time.perf_counter() - start,
                    error="".join(traceback.format_exception_only(exc)).strip(),
                )
            )
            continue
        outcomes.append(SuiteOutcome(suite.name, "ok", time.perf_counter() - start, results))
    return outcomes


_GOAL = re.compile(r"^\s*(<=|>=|<|>|≤|≥)\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(\S*)")
_NAMED_KEYS = ("ratio", "throughput_ratio", "speedup")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _figure_key(result: Mapping[str, Any]) -> str | None:
    named = result.get("figure")
    if isinstance(named, str) and _number(result.get(named)) is not None:
        return named
    for key in _NAMED_KEYS:
        if _number(result.get(key)) is not None:
            return key
    for key, value in result.items():
        if _number(value) is not None and any(t in key for t in ("ratio", "_over_", "_vs_")):
            return key
    return None


def judge(value: float, goal: str | None, met: object = None) -> Verdict:
    """Compare a figure with its goal; an explicit boolean ``met`` wins."""
    if isinstance(met, bool):
        return "met" if met else "missed"
    if goal is None:
        return "info"
    match = _GOAL.match(goal)
    if match is None:
        return "unjudged"
    op, bound = match.group(1), float(match.group(2))
    ok = {
        "<=": value <= bound,
        "≤": value <= bound,
        ">=": value >= bound,
        "≥": value >= bound,
        "<": value < bound,
        ">": value > bound,
    }[op]
    return "met" if ok else "missed"


def _timing(result: Mapping[str, Any], side: str) -> tuple[float, float, float] | None:
    t = result.get(side)
    if not isinstance(t, Mapping):
        return None
    parts = [_number(t.get(k)) for k in ("median_s", "min_s", "max_s")]
    if any(p is None or p <= 0 for p in parts):
        return None
    med, lo, hi = (p for p in parts if p is not None)
    return med, lo, hi


def _spread(
    result: Mapping[str, Any], key: str, value: float
) -> tuple[float | None, float | None]:
    lo, hi = _number(result.get(f"{key}_min")), _number(result.get(f"{key}_max"))
    if lo is not None and hi is not None:
        return lo, hi
    ours, base = _timing(result, "ours"), _timing(result, "baseline")
    if ours is None or base is None:
        return None, None
    # Extremes of the ratio from the two ranges: wider than the truth, never narrower.
    if math.isclose(value, ours[0] / base[0], rel_tol=1e-6):
        return ours[1] / base[2], ours[2] / base[1]
    if math.isclose(value, base[0] / ours[0], rel_tol=1e-6):
        return base[1] / ours[2], base[2] / ours[1]
    return None, None


def _labels(results: list[dict[str, Any]]) -> list[str]:
    """Result names, with the scalar fields that tell same-named results apart."""
    names = [str(r.get("name", "?")) for r in results]
    labels = list(names)
    for name in set(names):
        same = [i for i, n in enumerate(names) if n == name]
        if len(same) < 2:
            continue
        keys = dict.fromkeys(k for i in same for k in results[i])
        fields = [
            k
            for k in keys
            if k != "name"
            and all(isinstance(results[i].get(k), str | int | None) for i in same)
            and len({repr(results[i].get(k)) for i in same}) > 1
        ]
        for i in same:
            present = [k for k in fields if results[i].get(k) is not None]
            extra = ", ".join(f"{k}={results[i][k]}" for k in present[:2])
            labels[i] = f"{name} [{extra}]" if extra else f"{name} #{same.index(i) + 1}"
    return labels


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    """The result, named; or, when its figure is a ratio dict under some key, a flat view.

    A nameless result is named after its figure key, so the table still says what
    was measured.
    """
    key = _figure_key(result)
    if key is not None:
        return result if "name" in result else {**result, "name": key}
    for nested_key, value in result.items():
        if isinstance(value, Mapping) and _number(value.get("ratio")) is not None:
            scalars = {
                k: v
                for k, v in result.items()
                if isinstance(v, str | int | float) and not isinstance(v, bool)
            }
            return {**scalars, **value, "name": result.get("name", nested_key)}
    return result


def figures_of(outcomes: Iterable[SuiteOutcome]) -> list[Figure]:
    """The headline figure of every result that has one."""
    figures = []
    for outcome in outcomes:
        heads = [_headline(r) for r in outcome.results]
        for result, label in zip(heads, _labels(heads), strict=True):
            key = _figure_key(result)
            if key is None:
                continue
            value = float(result[key])
            goal = result.get("goal")
            goal = goal if isinstance(goal, str) else None
            low, high = _spread(result, key, value)
            ours, base = _timing(result, "ours"), _timing(result, "baseline")
            figures.append(
                Figure(
                    outcome.suite,
                    label,
                    key,
                    value,
                    low,
                    high,
                    goal,
                    judge(value, goal, result.get("met")),
                    None if ours is None else ours[0],
                    None if base is None else base[0],
                )
            )
    return figures


def _tmp_filesystem() -> str:
    """The filesystem benchmarks write to: fsync on tmpfs is free, which would flatter us."""
    tmp = os.path.realpath(tempfile.gettempdir())
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1]
                inside = tmp == point or tmp.startswith(point.rstrip("/") + "/")
                if inside and len(point) > len(best):
                    best, kind = point, fields[2]
    except OSError:
        pass
    return f"{kind} ({tmp})"


def derived_figures(
    outcomes: Iterable[SuiteOutcome], derived: Iterable[Derived] = DERIVED
) -> list[Figure]:
    """The :data:`DERIVED` figures whose inputs this run produced."""
    by_key = {(o.suite, str(r.get("name"))): r for o in outcomes for r in o.results}
    figures = []
    for d in derived:
        result = by_key.get((d.suite, d.result))
        if result is None:
            continue
        top, bottom = _number(result.get(d.numerator)), _number(result.get(d.denominator))
        if top is None or bottom is None or bottom <= 0:
            continue
        value = top / bottom
        figures.append(
            Figure(
                d.suite, f"{d.name} (derived)", f"{d.numerator}/{d.denominator}", value,
                None, None, d.goal, judge(value, d.goal), top / 1e3, bottom / 1e3,
            )
        )
    return figures


def all_figures(outcomes: Iterable[SuiteOutcome]) -> list[Figure]:
    """Every headline figure, each derived one placed after the last row of its suite."""
    outcomes = list(outcomes)
    figures = figures_of(outcomes)
    for extra in derived_figures(outcomes):
        last = max((i for i, f in enumerate(figures) if f.suite == extra.suite), default=None)
        figures.insert(len(figures) if last is None else last + 1, extra)
    return figures


def machine_info() -> dict[str, str]:
    """What the numbers were measured on: they mean little without it."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/loadavg", encoding="utf-8") as f:
            load = " / ".join(f.read().split()[:3])
    except OSError:
        load = "unknown"
    return {
        "cpu": cpu,
        "loadavg": load,
        "tmp_fs": _tmp_filesystem(),
        "nproc": str(os.cpu_count()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "note": "shared and noisy: read ratios, not absolute times",
    }


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    if x == 0 or 0.01 <= abs(x) < 10_000:
        return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
    return f"{x:.2e}"


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.3g}"


def _rows(figures: Iterable[Figure]) -> list[list[str]]:
    return [
        [
            f.suite,
            f.name,
            f"{_fmt(f.value)}",
            "—" if f.low is None else f"{_fmt(f.low)} to {_fmt(f.high)}",
            f.goal or "—",
            f.verdict,
            _ms(f.ours_s),
            _ms(f.baseline_s),
        ]
        for f in figures
    ]


_HEADER = ["suite", "figure", "median", "spread", "goal", "verdict", "ours ms", "base ms"]


def text_table(figures: Iterable[Figure], outcomes: Iterable[SuiteOutcome]) -> str:
    """A fixed-width table for the terminal, then one line per suite that gave nothing."""
    rows = [_HEADER, *_rows(figures)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for o in outcomes:
        if o.status != "ok":
            lines.append(f"{o.suite}: {o.status} ({o.error})")
    return "\n".join(lines)


def markdown_table(figures: Iterable[Figure], outcomes: Iterable[SuiteOutcome]) -> str:
    """The same table in Markdown, for ``docs/benchmarks.md``."""
    lines = [
        "| " + " | ".join(_HEADER) + " |",
        "|" + "|".join("---" for _ in _HEADER) + "|",
    ]
    for row in _rows(figures):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    missing = [o for o in outcomes if o.status != "ok"]
    if missing:
        lines.append("")
        lines.extend(f"* `{o.suite}`: {o.status} ({o.error})" for o in missing)
    return "\n".join(lines)
