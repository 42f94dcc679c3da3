"""The engine docs' examples run as written: pending commits, external joins, a toy DS."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
_PYTHON = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
DOCS = [ROOT / "docs" / "native-engine.md", ROOT / "docs" / "delivery-service.md"]


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_python_example_runs(doc: Path) -> None:
    """Each ```python block of the document executes without error (its asserts hold)."""
    blocks = _PYTHON.findall(doc.read_text())
    assert blocks, f"no python example in {doc.name}"
    for block in blocks:
        exec(compile(block, str(doc), "exec"), {"__name__": "doc_example"})
