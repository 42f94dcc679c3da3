"""``python -m bench``: run every benchmark, print the table, optionally save JSON and plots.

Exit status: 0 when every benchmark ran (missed goals included: they are findings),
1 when a benchmark crashed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.harness import (
    SUITES,
    Size,
    Suite,
    all_figures,
    machine_info,
    markdown_table,
    run_suites,
    text_table,
)

#: Large groups (native vs mls-rs, 200 members in CI; 1k-10k by hand: see the module).
SUITES = (*SUITES, Suite("large", "bench.large_group_bench"))

BEGIN = "<!-- bench-table:begin -->"
END = "<!-- bench-table:end -->"


def _doc_section(command: str, machine: dict[str, str], table: str, when: str) -> str:
    return "\n".join(
        [
            BEGIN,
            f"Last run: {when}, `{command}`.",
            "",
            f"Machine: {machine['cpu']}, nproc {machine['nproc']}, Python {machine['python']},"
            f" {machine['platform']}; temporary files on {machine.get('tmp_fs', '?')};"
            f" load average (1/5/15 min) at the end of the run {machine.get('loadavg', '?')};"
            f" {machine['note']}.",
            "",
            table,
            END,
        ]
    )


def _doc_problem(doc: Path) -> str | None:
    """Why the table cannot be written into ``doc``, or ``None``."""
    try:
        text = doc.read_text(encoding="utf-8")
    except OSError as exc:
        return f"cannot read {doc}: {exc.strerror}"
    start, stop = text.find(BEGIN), text.find(END)
    if start < 0 or stop < start:
        return f"{doc} has no {BEGIN} ... {END} section to replace"
    return None


def _update_doc(doc: Path, section: str) -> None:
    """Replace the generated table in ``doc`` and nothing else."""
    text = doc.read_text(encoding="utf-8")
    start, stop = text.find(BEGIN), text.find(END)
    doc.write_text(text[:start] + section + text[stop + len(END) :], encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; see the module docstring for the exit status."""
    names = [s.name for s in SUITES]
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Every benchmark as a ratio against a baseline measured in the same run.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes, under 2 minutes")
    size.add_argument(
        "--tiny", action="store_true", help="seconds; only suites with a tiny size (smoke test)"
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="write every result here")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write PNG plots here")
    parser.add_argument(
        "--update-doc",
        type=Path,
        metavar="MD",
        help="replace the generated table section of this Markdown file",
    )
    parser.add_argument(
        "--suite", action="append", choices=names, help="run only this suite (repeatable)"
    )
    args = parser.parse_args(argv)
    chosen: Size = "tiny" if args.tiny else "quick" if args.quick else "full"
    if args.update_doc is not None:
        # Refuse before spending minutes on a run whose table has nowhere to go.
        problem = _doc_problem(args.update_doc)
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    suites = [s for s in SUITES if args.suite is None or s.name in args.suite]

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    outcomes = run_suites(chosen, suites, progress)
    figures = all_figures(outcomes)
    machine = machine_info()
    print(text_table(figures, outcomes))

    command = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if args.json is not None:
        report = {
            "command": command.strip(),
            "size": chosen,
            "when": when,
            "machine": machine,
            "figures": [f.as_dict() for f in figures],
            "suites": [o.as_dict() for o in outcomes],
        }
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    plots_failed = False
    if args.plots is not None:
        try:
            from bench.plots import make_plots  # matplotlib is a bench extra: on demand

            results = [r for o in outcomes for r in o.results]
            for path in make_plots(results, args.plots):
                progress(f"wrote {path}")
        except Exception as exc:  # a broken plot must not hide the table already printed
            plots_failed = True
            progress(f"plots: crashed ({type(exc).__name__}: {exc})")
    if args.update_doc is not None:
        table = markdown_table(figures, outcomes)
        _update_doc(args.update_doc, _doc_section(command.strip(), machine, table, when))
        progress(f"updated {args.update_doc}")
    crashed = [o.suite for o in outcomes if o.status == "crashed"]
    if crashed:
        progress(f"crashed: {', '.join(crashed)}")
    return 1 if crashed or plots_failed else 0


if __name__ == "__main__":
    sys.exit(main())
