"""Concurrency: threads, processes and asyncio on one vault, bounded in time."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.campaigns import concurrency
from tests.campaigns.common import CampaignReport


@pytest.mark.timeout(60)
def test_eight_writers_drainer_and_readers_agree(tmp_path: Path, campaign_seed: int) -> None:
    """8 writer threads, the background drainer, explicit flushes and two readers end with
    vault == storage == model, and no read fails."""
    report = CampaignReport("threads")
    concurrency.threads(tmp_path, campaign_seed, report)
    assert report.ok, f"seed {campaign_seed}\n{report.summary()}"
    assert report.counts["concurrent reads"] > 0


@pytest.mark.timeout(60)
def test_second_writer_process_gets_vault_busy(tmp_path: Path, campaign_seed: int) -> None:
    """While a process writes, another writer gets VaultBusy naming it; SIGKILL frees it."""
    report = CampaignReport("processes")
    concurrency.processes(tmp_path, campaign_seed, report)
    assert report.ok, report.summary()
    assert report.counts["VaultBusy refusals"] > 0


@pytest.mark.timeout(60)
def test_asyncio_app_under_load_persists_everything(tmp_path: Path, campaign_seed: int) -> None:
    """64 tasks writing through an AsyncDrainer end with the vault equal to the model."""
    report = CampaignReport("asyncio")
    concurrency.asyncio_app(tmp_path, campaign_seed, report)
    assert report.ok, f"seed {campaign_seed}\n{report.summary()}"
