"""Start and follow worker processes (``tests/postgres/worker.py``) from a test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def start_worker(*args: str) -> subprocess.Popen[str]:
    """``python -m tests.postgres.worker ARGS`` with pipes, running this checkout's code."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.postgres.worker", *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, cwd=REPO,
    )


def read_line(proc: subprocess.Popen[str]) -> str:
    """The worker's next line; its stderr in the failure when it ended instead."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"worker ended: {proc.stderr.read() if proc.stderr else ''}")
    return line.strip()
