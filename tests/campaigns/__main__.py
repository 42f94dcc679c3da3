"""Run the campaigns by hand: ``python -m tests.campaigns [--full] [--seed N] [NAME ...]``.

Without ``--full`` every campaign runs at its CI size; with it, at full size (1000
kills, every bit of every header, thousands of fuzz examples ...).  Prints one summary
per campaign and, with ``--markdown``, the rows of the table in ``docs/reliability.md``.
Exits 1 if anything was found.  Needs root for the real small-filesystem and
``chattr`` scenarios; without it they are reported as skipped.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tests.campaigns import badinput, concurrency, crash, fuzz, iofaults, leak, tamper
from tests.campaigns.common import CampaignReport

Runner = Callable[[bool, int, Path | None], CampaignReport]

CAMPAIGNS: dict[str, Runner] = {
    "crash": lambda full, seed, d: crash.run(crash.KILLS.pick(full), seed, d),
    "iofaults": lambda full, seed, d: iofaults.run(iofaults.ROUNDS.pick(full), seed, d),
    "tamper": lambda full, seed, d: tamper.run(full, seed, d),
    "badinput": lambda full, seed, d: badinput.run(full, seed, d),
    "leak": lambda full, seed, d: leak.run(leak.ROUNDS.pick(full), seed, d),
    "concurrency": lambda full, seed, d: concurrency.run(concurrency.ROUNDS.pick(full), seed, d),
    "fuzz": lambda full, seed, d: fuzz.run(fuzz.EXAMPLES.pick(full), seed, d),
}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the chosen campaigns, print what they found."""
    parser = argparse.ArgumentParser(prog="python -m tests.campaigns", description=__doc__)
    parser.add_argument("names", nargs="*", choices=[[], *CAMPAIGNS], metavar="NAME",
                        help=f"campaigns to run (default: all): {', '.join(CAMPAIGNS)}")
    parser.add_argument("--full", action="store_true", help="full sizes (slow: minutes)")
    parser.add_argument("--seed", type=int, help="replay a run (default: random)")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--markdown", action="store_true", help="print docs table rows too")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    names = args.names or list(CAMPAIGNS)
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    size = "full" if args.full else "quick"
    print(f"campaigns {names} at {size} size, seed {seed}, started {started}", flush=True)
    rows = []
    failed = False
    for name in names:
        t0 = time.monotonic()
        report = CAMPAIGNS[name](args.full, seed, args.dir)
        seconds = time.monotonic() - t0
        print(f"{report.summary()}\n  ({seconds:.0f} s)", flush=True)
        failed |= not report.ok
        counts = "; ".join(f"{k} {v}" for k, v in sorted(report.counts.items()))
        rows.append(
            f"| {report.name} | {size} | {report.trials} | {counts} | "
            f"{len(report.findings)} | {seconds:.0f} s |"
        )
    if args.markdown:
        print(f"\n<!-- python -m tests.campaigns {' '.join(sys.argv[1:])}; seed {seed};"
              f" {started} -->")
        print("| campaign | size | trials | counts | findings | time |")
        print("|---|---|---|---|---|---|")
        print("\n".join(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
