"""A benchmark module that crashes, for the harness tests."""

from __future__ import annotations


def run(quick: bool = False, *, tiny: bool = False) -> list[dict[str, object]]:
    """Fail the way a broken benchmark would."""
    raise RuntimeError("benchmark exploded")
