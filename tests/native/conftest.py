"""Loader for the official MLS test vectors (mlswg/mls-implementations).

The vectors are never copied into the repository: they are read from ``$MLS_TEST_VECTORS`` or,
by default, from ``<repo>/../shared/mls-test-vectors``. Each vector case becomes its own pytest
test id; cases of unsupported cipher suites are reported as skipped, and a missing folder turns
into one skipped test per file with a clear reason.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from mls.native.suites import SUITES

_REPO = Path(__file__).resolve().parents[2]


def vector_dir() -> Path | None:
    """Folder holding the vector files, or None when unavailable."""
    env = os.environ.get("MLS_TEST_VECTORS")
    if env:
        path = Path(env)
        return path if path.is_dir() else None
    default = _REPO.parent / "shared" / "mls-test-vectors"
    return default if default.is_dir() else None


@cache
def load_vectors(name: str) -> Any:
    """Parsed JSON of ``<name>.json`` from the vector folder."""
    folder = vector_dir()
    assert folder is not None
    with (folder / f"{name}.json").open() as fh:
        return json.load(fh)


def vector_cases(name: str, *, suites: bool = True) -> list[Any]:
    """``pytest.param`` list, one per case of ``name``, ids like ``suite=1,#0``."""
    folder = vector_dir()
    reason = (
        "MLS test vectors not found: set MLS_TEST_VECTORS or provide "
        "<repo>/../shared/mls-test-vectors"
    )
    if folder is None or not (folder / f"{name}.json").is_file():
        return [pytest.param(None, id=f"{name}-missing", marks=pytest.mark.skip(reason=reason))]
    data = load_vectors(name)
    params = []
    for i, case in enumerate(data):
        if suites and isinstance(case, dict) and "cipher_suite" in case:
            sid = case["cipher_suite"]
            marks = (
                []
                if sid in SUITES
                else [pytest.mark.skip(reason=f"cipher suite {sid} not supported")]
            )
            params.append(pytest.param(case, id=f"suite={sid},#{i}", marks=marks))
        else:
            params.append(pytest.param(case, id=f"#{i}"))
    return params


def h(value: str) -> bytes:
    """Hex string from a vector to bytes."""
    return bytes.fromhex(value)
