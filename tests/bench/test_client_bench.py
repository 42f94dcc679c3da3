"""The AsyncMlsClient loop-lag benchmark measures what it says, tiny (no timing asserted)."""

from __future__ import annotations

from pathlib import Path

from bench.client_bench import async_client_loop_lag, async_client_pacing_cost
from bench.harness import SuiteOutcome, figures_of


def test_async_client_loop_lag_reports_each_burst_kind_against_its_baselines(
    tmp_path: Path,
) -> None:
    """One result per burst kind, each with its idle and on-the-loop baselines and a goal."""
    results = async_client_loop_lag(tmp_path, burst=3, repeats=1)
    assert [r["name"] for r in results] == [
        "async_client_loop_lag_encrypt_native",
        "async_client_loop_lag_encrypt_many_native",
        "async_client_loop_lag_process_many_native",
    ]
    for result in results:
        assert result["max_lag_ms"] >= 0 and result["idle_max_lag_ms"] >= 0
        assert result["blocking_max_lag_ms"] >= 0 and result["burst_s"] > 0
    figures = figures_of([SuiteOutcome("client", "ok", results=results)])
    assert {(f.key, f.goal) for f in figures} == {("max_lag_ms", "< 10 ms")}


def test_async_client_pacing_cost_is_a_same_run_ratio(tmp_path: Path) -> None:
    """The pacing cost is the paced call ÷ the same call in a bare worker, with a goal."""
    result = async_client_pacing_cost(tmp_path, burst=3, repeats=2)
    assert result["name"] == "async_client_pacing_cost_native"
    assert result["ratio"] > 0 and result["paced_ms"] > 0 and result["unpaced_ms"] > 0
    assert result["ratio_min"] <= result["ratio"] <= result["ratio_max"]
    figures = figures_of([SuiteOutcome("client", "ok", results=[result])])
    assert [(f.key, f.goal) for f in figures] == [("ratio", "<= 1.15")]
