"""The storage benchmarks measure what they say, at tiny sizes (no timing is asserted)."""

from __future__ import annotations

import threading

import pytest

from bench import storage_bench
from bench.harness import SuiteOutcome, figures_of


@pytest.mark.parametrize("load", ["none", "cpu", "gil"])
def test_loop_lag_reports_each_load_against_its_idle_baseline(load: str) -> None:
    """Each load kind yields a named lag figure, its idle baseline and GC counts."""
    before = threading.active_count()
    result = storage_bench.async_loop_lag(300, 1, load=load)  # type: ignore[arg-type]
    suffix = "" if load == "none" else f"_{load}_load"
    assert result["name"] == f"async_flush_loop_lag_300{suffix}"
    assert result["figure"] == "max_lag_ms" and result["max_lag_ms"] >= 0
    assert result["idle_max_lag_ms"] >= 0
    assert len(result["gc_collections_by_generation"]) == 3
    assert ("blocking_flush_max_lag_ms" in result) == (load == "none")
    assert threading.active_count() == before  # the load thread was stopped and joined


def test_hot_path_is_judged_on_the_worse_of_wall_and_cpu() -> None:
    """The hot-path figure is write_key_package's worse ratio, judged against <= 4."""
    result = storage_bench.hot_path(2000, 1)
    assert result["subject"].startswith("write_key_package")
    assert result["worst_of_wall_and_cpu_ratio"] == max(result["ratio"], result["cpu_ratio"])
    (figure,) = figures_of([SuiteOutcome("storage", "ok", results=[result])])
    assert figure.key == "worst_of_wall_and_cpu_ratio" and figure.goal == "<= 4"
