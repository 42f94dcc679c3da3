"""PNG plots of a benchmark run, for ``docs/img/`` (matplotlib, Agg backend).

Each plot is drawn only when the run produced its data, so a missing or crashed
benchmark leaves its plot out instead of failing the run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on CI or over SSH; must precede pyplot

import matplotlib.pyplot as plt

__all__ = [
    "apply_breakdown_plot",
    "group_size_plot",
    "make_plots",
    "persist_plot",
    "throughput_plot",
]

Result = Mapping[str, Any]


def _named(results: Iterable[Result], prefix: str) -> list[Result]:
    return [r for r in results if str(r.get("name", "")).startswith(prefix)]


def persist_plot(results: Iterable[Result], out: Path) -> Path | None:
    """Cost of persisting one change against state size, granular vs snapshot (log-log)."""
    points = sorted(_named(results, "persist_one_change_"), key=lambda r: r["entries"])
    if len(points) < 2:
        return None
    mib = [r["state_bytes"] / 2**20 for r in points]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for key, label, style in (
        ("baseline", "snapshot: whole state encrypted + fsync, per change", "o-"),
        ("ours", "granular: 1 change, 1 durable transaction", "s-"),
    ):
        med = [r[key]["median_s"] * 1e3 for r in points]
        low = [m - r[key]["min_s"] * 1e3 for m, r in zip(med, points, strict=True)]
        high = [r[key]["max_s"] * 1e3 - m for m, r in zip(med, points, strict=True)]
        ax.errorbar(mib, med, yerr=[low, high], fmt=style, capsize=3, label=label)
    batched = [r["batched_per_change_s"] * 1e3 for r in points]
    per_flush = points[0].get("batch", "?")
    ax.plot(mib, batched, "^--", label=f"granular, write-behind: per change, {per_flush} per flush")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("state size (MiB; 1 KiB entries)")
    ax.set_ylabel("time to make one change durable (ms)")
    ax.set_title("Persist cost vs state size (median, min-max bars)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


_BARS = (
    ("write_plaintext_sqlite_floor", "plaintext SQLite\n(floor)"),
    ("write_aesgcm_then_sqlite_vs_floor", "AES-GCM +\nplaintext SQLite"),
    ("write_vault_apply_vs_floor", "Vault.apply\n(ours)"),
    ("write_sqlcipher_rows_vs_floor", "SQLCipher\nplaintext rows"),
)


def throughput_plot(results: Iterable[Result], out: Path) -> Path | None:
    """Rows per second of the vault and each baseline, same rows, same run."""
    by_name = {str(r.get("name")): r for r in results}
    bars = [(by_name[name], label) for name, label in _BARS if name in by_name]
    if len(bars) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    rates, low, high, labels = [], [], [], []
    for r, label in bars:
        timing = r.get("ours", r.get("floor"))
        rows = r["rows_per_repeat"]
        rate = rows / timing["median_s"]
        rates.append(rate)
        low.append(rate - rows / timing["max_s"])
        high.append(rows / timing["min_s"] - rate)
        labels.append(label)
    colors = ["#9e9e9e", "#bdbdbd", "#1f77b4", "#ff7f0e"][: len(bars)]
    ax.bar(labels, rates, yerr=[low, high], capsize=4, color=colors)
    for i, rate in enumerate(rates):
        ax.text(i, rate / 2, f"{rate / 1000:.1f}k", ha="center", color="white", fontsize=9)
    ax.set_ylabel("rows per second (1 KiB rows, 1000 per transaction)")
    ax.set_title("Durable batch write throughput (median, min-max bars)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


_PARTS = (
    ("sqlite_stored_rows", "SQLite upsert (rows at stored size)"),
    ("aesgcm", "AES-256-GCM"),
    ("blake2b_keys", "keyed BLAKE2b of row keys"),
    ("per_row_python_rest", "per-row Python (validate, coalesce, frame, sort)"),
)


def apply_breakdown_plot(results: Iterable[Result], out: Path) -> Path | None:
    """Where one ``Vault.apply`` batch spends its time, next to the plaintext floor.

    Wall time (what a caller waits, fsync included) on the left; this process's CPU
    time (the work itself, steady under other load) on the right when measured.
    """
    found = _named(results, "apply_breakdown_")
    if not found:
        return None
    r = found[0]
    panels = [("ms", "share_of_apply", "wall time")]
    if "cpu_ms" in r:
        panels.append(("cpu_ms", "cpu_share_of_apply", "CPU time"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), dpi=120)
    axes = list(axes) if len(panels) > 1 else [axes]
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    for ax, (ms_key, share_key, title) in zip(axes, panels, strict=True):
        total = r[ms_key]["vault_apply"]
        left = 0.0
        for (key, label), color in zip(_PARTS, colors, strict=True):
            width = max(r[share_key][key], 0.0) * total
            ax.barh(["Vault.apply"], [width], left=left, label=label, color=color)
            left += width
        ax.barh(["plaintext\nSQLite (floor)"], [r[ms_key]["floor_sqlite_plain"]], color="#9e9e9e")
        ax.set_xlabel(f"{title}, ms per batch of {r['name'].split('_')[2]} rows (median)")
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle("What one Vault.apply batch costs")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncols=2)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(out)
    plt.close(fig)
    return out


def group_size_plot(results: Iterable[Result], out: Path) -> Path | None:
    """Bytes and time per durable send as a group grows (mls-rs writes whole snapshots)."""
    found = _named(results, "send_cost_by_group_size")
    if not found or len(found[0].get("rows", [])) < 2:
        return None
    rows = found[0]["rows"]
    members = [r["members"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8), dpi=120)
    left.plot(members, [r["bytes_written_per_send"] / 1024 for r in rows], "o-")
    left.set_xlabel("group members")
    left.set_ylabel("KiB written per durable send")
    left.set_title("Group snapshot rewritten per send")
    for key, label, style in (
        ("durable_send_ms", "durable send (ours)", "s-"),
        ("floor_ms", "floor: in-memory send + 1 fsync'd commit", "o--"),
        ("memory_send_ms", "in-memory mls-rs send", "^:"),
    ):
        right.plot(members, [r[key] for r in rows], style, label=label)
    right.set_yscale("log")
    right.set_xlabel("group members")
    right.set_ylabel("ms per send (median)")
    right.set_title("Send cost vs group size")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def make_plots(results: Iterable[Result], outdir: Path) -> list[Path]:
    """Every plot the results allow; returns the files written."""
    outdir.mkdir(parents=True, exist_ok=True)
    results = list(results)
    made = [
        persist_plot(results, outdir / "persist_cost_vs_state_size.png"),
        throughput_plot(results, outdir / "write_throughput_vs_baselines.png"),
        apply_breakdown_plot(results, outdir / "apply_breakdown.png"),
        group_size_plot(results, outdir / "send_cost_vs_group_size.png"),
    ]
    return [p for p in made if p is not None]
