"""kill -9 campaign at its quick size: nothing acknowledged is lost, nothing half applied."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from keystore import Vault
from keystore.vault import ChangeLike
from tests.campaigns import crash
from tests.campaigns.common import CampaignReport


@pytest.mark.timeout(120)
def test_kill9_quick_campaign_finds_nothing(tmp_path: Path, campaign_seed: int) -> None:
    """At least 50 SIGKILLs over every workload leave a vault that opens, verifies and
    holds every acknowledged event, with no batch half present."""
    report = crash.run(crash.KILLS.quick, seed=campaign_seed, directory=tmp_path)
    assert report.trials >= 50
    assert report.ok, f"seed {campaign_seed}\n{report.summary()}"
    assert report.counts["batches acked"] > 0


@pytest.mark.timeout(60)
def test_campaign_catches_an_apply_that_loses_acknowledged_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An apply that returns without writing every third batch is reported as a loss."""
    real_apply = Vault.apply
    calls = 0

    def lossy_apply(self: Vault, changes: Iterable[ChangeLike]) -> int:
        nonlocal calls
        calls += 1
        return 0 if calls % 3 == 0 else real_apply(self, changes)

    monkeypatch.setattr(Vault, "apply", lossy_apply)  # inherited by the forked children
    report = CampaignReport("lossy")
    crash.run_workload(tmp_path, "vault", "plain", 8, 1, report)
    assert any("has no manifest" in f for f in report.findings), report.summary()


@pytest.mark.timeout(60)
def test_campaign_catches_a_batch_split_over_two_transactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An apply that commits a batch in two halves is caught half present by some kill."""
    real_apply = Vault.apply

    def split_apply(self: Vault, changes: Iterable[ChangeLike]) -> int:
        items = list(changes)
        half = len(items) // 2
        n = real_apply(self, items[:half])
        time.sleep(0.02)  # widen the window a kill must land in
        return n + real_apply(self, items[half:])

    monkeypatch.setattr(Vault, "apply", split_apply)
    report = CampaignReport("split")
    crash.run_workload(tmp_path, "vault", "plain", 12, 2, report)
    assert any("half present" in f or "without its manifest" in f for f in report.findings), (
        report.summary()
    )
