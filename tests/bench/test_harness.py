"""The benchmark harness: end-to-end tiny run, crash and missing-module handling, goals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bench.__main__ as bench_main
from bench.harness import (
    Derived,
    Suite,
    SuiteOutcome,
    derived_figures,
    figures_of,
    judge,
    run_suites,
)

CRASHING = Suite("boom", "tests.bench._crashing_bench", tiny=True)
MISSING = Suite("ghost", "bench.no_such_bench_module", tiny=True)
UNLOCK = Suite("unlock", "bench.unlock_bench", tiny=True)


def test_tiny_run_end_to_end_writes_json_plots_and_table(tmp_path: Path) -> None:
    """`python -m bench --tiny` runs every tiny suite, writes JSON and PNG plots, exits 0."""
    out = tmp_path / "bench.json"
    rc = bench_main.main(["--tiny", "--json", str(out), "--plots", str(tmp_path / "img")])
    assert rc == 0
    report = json.loads(out.read_text())
    ran = {s["suite"] for s in report["suites"] if s["status"] == "ok"}
    assert {"unlock", "persist", "throughput"} <= ran
    assert {f["suite"] for f in report["figures"]} >= {"unlock", "persist", "throughput"}
    pngs = sorted((tmp_path / "img").glob("*.png"))
    assert len(pngs) == 3
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_crashing_suite_is_reported_and_the_others_still_run() -> None:
    """A benchmark that raises is recorded as crashed; later suites still run."""
    outcomes = run_suites("tiny", [CRASHING, UNLOCK])
    assert [o.status for o in outcomes] == ["crashed", "ok"]
    assert "benchmark exploded" in (outcomes[0].error or "")


def test_crash_makes_the_command_exit_non_zero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a crash fails the command (exit 1)."""
    monkeypatch.setattr(bench_main, "SUITES", (CRASHING,))
    assert bench_main.main(["--tiny"]) == 1
    assert "boom: crashed" in capsys.readouterr().out


def test_missing_module_is_reported_without_failing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A benchmark module that does not exist yet is listed as missing; exit 0."""
    monkeypatch.setattr(bench_main, "SUITES", (MISSING,))
    assert bench_main.main(["--tiny"]) == 0
    assert "ghost: missing" in capsys.readouterr().out


def test_module_without_entry_point_is_skipped_not_crashed() -> None:
    """A module with no run(quick) is reported as not wired in, and is no crash."""
    [outcome] = run_suites("tiny", [Suite("norun", "tests.bench", tiny=True)])
    assert outcome.status == "skipped"
    assert "no run(quick) entry point" in (outcome.error or "")


def test_same_named_results_are_told_apart_by_their_fields() -> None:
    """Two results with one name are labelled with the field that differs."""
    results = [
        {"name": "ours", "synchronous": sync, "ratio": 1.0, "repeats": 5}
        for sync in ("FULL", "OFF")
    ]
    figures = figures_of([SuiteOutcome("s", "ok", results=results)])
    assert [f.name for f in figures] == ["ours [synchronous=FULL]", "ours [synchronous=OFF]"]


def test_missed_goal_does_not_fail_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """A figure that misses its goal is a finding, not an error (exit 0)."""
    monkeypatch.setattr(bench_main, "SUITES", (UNLOCK,))
    monkeypatch.setattr(
        "bench.unlock_bench.run",
        lambda quick=False, tiny=False: [{"name": "slow", "ratio": 9.0, "goal": "<= 1.3"}],
    )
    assert bench_main.main(["--tiny"]) == 0


@pytest.mark.parametrize(
    ("value", "goal", "met", "verdict"),
    [
        (0.6, ">= 0.75", None, "missed"),
        (0.8, ">= 0.75", None, "met"),
        (3.9, "<= 4", None, "met"),
        (12.0, "< 10 ms", None, "missed"),
        (1.0, "≤ 1.3", None, "met"),
        (0.3, "flat ±20 %", False, "missed"),
        (0.1, "flat ±20 %", None, "unjudged"),
        (5.0, None, None, "info"),
    ],
)
def test_judge_compares_a_figure_with_its_goal(
    value: float, goal: str | None, met: bool | None, verdict: str
) -> None:
    """Threshold goals are parsed; an explicit `met` wins; no goal is informative."""
    assert judge(value, goal, met) == verdict


def test_spread_of_a_throughput_ratio_is_derived_from_its_timings() -> None:
    """A baseline÷ours figure without its own spread gets one from both timing ranges."""
    result = {
        "name": "apply",
        "throughput_ratio": 2.0 / 4.0,
        "ours": {"median_s": 4.0, "min_s": 3.0, "max_s": 5.0},
        "baseline": {"median_s": 2.0, "min_s": 1.0, "max_s": 3.0},
    }
    [figure] = figures_of([SuiteOutcome("keystore", "ok", results=[result])])
    assert (figure.low, figure.high) == (1.0 / 5.0, 3.0 / 3.0)


def test_update_doc_replaces_only_the_generated_section(tmp_path: Path) -> None:
    """--update-doc rewrites the table between its markers and keeps the prose."""
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Intro\n\n{bench_main.BEGIN}\nold table\n{bench_main.END}\n\n## Why\n")
    assert bench_main.main(["--tiny", "--suite", "unlock", "--update-doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Intro\n\n") and text.endswith("\n\n## Why\n")
    assert "old table" not in text
    assert "unlock_rehydrate_200" in text


def test_update_doc_without_markers_is_refused_before_running(tmp_path: Path) -> None:
    """A Markdown file with no generated section is left untouched (exit 2)."""
    doc = tmp_path / "notes.md"
    doc.write_text("# Hand-written\n")
    assert bench_main.main(["--tiny", "--suite", "unlock", "--update-doc", str(doc)]) == 2
    assert doc.read_text() == "# Hand-written\n"


def test_derived_figure_divides_two_measured_numbers_and_judges_its_own_goal() -> None:
    """A derived figure is numerator ÷ denominator of one result, judged on its goal."""
    result = {"name": "send", "per_send_ms": 5.0, "memory_send_ms": 0.5, "ratio": 1.1}
    rule = Derived("client", "send", "per_send_ms", "memory_send_ms", "send_vs_memory", "<= 2")
    [figure] = derived_figures([SuiteOutcome("client", "ok", results=[result])], [rule])
    assert (figure.value, figure.verdict) == (10.0, "missed")
    assert derived_figures([SuiteOutcome("client", "ok", results=[])], [rule]) == []


def test_broken_plot_fails_the_command_after_writing_the_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A plot that raises exits 1, but the table and JSON of the run are kept."""

    def explode(results: object, outdir: Path) -> list[Path]:
        raise KeyError("series")

    monkeypatch.setattr(bench_main, "SUITES", (UNLOCK,))
    monkeypatch.setattr("bench.plots.make_plots", explode)
    out = tmp_path / "r.json"
    assert bench_main.main(["--tiny", "--json", str(out), "--plots", str(tmp_path)]) == 1
    assert json.loads(out.read_text())["figures"]


def test_nameless_result_with_a_nested_ratio_is_named_after_its_key() -> None:
    """A result without a name whose ratio sits in a nested dict still gets a row."""
    result = {"messages": 10, "native_over_mls_rs": {"ratio": 1.5, "ratio_min": 1.0,
                                                     "ratio_max": 2.0}}
    [figure] = figures_of([SuiteOutcome("native", "ok", results=[result])])
    assert (figure.name, figure.value, figure.low, figure.high) == (
        "native_over_mls_rs", 1.5, 1.0, 2.0
    )
