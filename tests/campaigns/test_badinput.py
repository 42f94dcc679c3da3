"""Bad input through the library and the CLI: a clear error, and not one byte changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.campaigns import badinput
from tests.campaigns.common import CampaignReport


@pytest.mark.timeout(90)
@pytest.mark.parametrize("case", badinput.CASES, ids=[c.name for c in badinput.CASES])
def test_bad_input_refused_and_nothing_changed(tmp_path: Path, case: badinput.Case) -> None:
    """The library raises the documented error; the CLI exits with its documented code and
    one line on stderr; neither shows plaintext nor changes a file."""
    report = CampaignReport(case.name)
    badinput.run_case(case, tmp_path, report)
    assert report.ok, report.summary()
    assert report.counts["library refusals"] == 1
    assert report.counts.get("CLI refusals", 0) == (0 if case.cli is None else 1)


def test_at_least_fifteen_kinds_reach_the_cli() -> None:
    """The matrix keeps its promised breadth: 15+ kinds through both the library and CLI."""
    assert sum(c.cli is not None for c in badinput.CASES) >= 15
