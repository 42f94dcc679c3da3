"""Campaign fixtures: the seed every randomized campaign uses in this run."""

from __future__ import annotations

import os
import random

import pytest


@pytest.fixture(scope="session")
def campaign_seed() -> int:
    """``MLS_CAMPAIGN_SEED`` if set (to replay a failure), else a fresh random seed."""
    return int(os.environ.get("MLS_CAMPAIGN_SEED") or random.SystemRandom().getrandbits(32))
