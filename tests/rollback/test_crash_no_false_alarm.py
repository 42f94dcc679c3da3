"""An interrupted write must never look like a rollback (kill -9 at random moments)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.campaigns import crash
from tests.campaigns.common import CampaignReport


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("workload", "kind"), [("vault", "plain"), ("storage", "plain"), ("vault", "sqlcipher")]
)
def test_kills_during_writes_raise_no_rollback(
    tmp_path: Path, campaign_seed: int, workload: str, kind: str
) -> None:
    """After each SIGKILL the vault reopens, its rows match its record (verify and the
    storage load check it) and every acknowledged batch is there."""
    if kind == "sqlcipher":
        pytest.importorskip("sqlcipher3")
    report = CampaignReport("rollback-crash")
    crash.run_workload(tmp_path, workload, kind, 8, campaign_seed, report)
    assert report.ok, f"seed {campaign_seed}\n{report.summary()}"
    assert report.counts["batches acked"] > 0
