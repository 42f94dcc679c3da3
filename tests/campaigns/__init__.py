"""Reliability and security campaigns: crashes, I/O faults, tampering, bad input, leaks,
concurrency and fuzzing.

Each campaign module has a ``run(size, seed)`` function that returns a
:class:`~tests.campaigns.common.CampaignReport`.  The ``test_*.py`` files run them at
their quick size in CI; ``python -m tests.campaigns --full`` runs them at full size
(see ``docs/reliability.md``).
"""
