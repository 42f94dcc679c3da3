"""docs/format.md §14 states the shipped PostgreSQL schema steps exactly (the example of
docs/postgres.md runs in tests/docs/test_doc_examples.py, against the test server)."""

from __future__ import annotations

import re
from pathlib import Path

from keystore.backends.postgres import PG_MIGRATIONS

ROOT = Path(__file__).resolve().parents[2]
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_PG_STEP = re.compile(
    r"^PostgreSQL step (\d+), `([^`]+)`, checksum `([0-9a-f]{64})`:\n\n```text\n(.*?)\n```",
    re.M | re.S,
)


def test_format_doc_states_the_shipped_postgres_steps() -> None:
    """Names, statements and checksums in docs/format.md §14.2 are the package's."""
    documented = {
        int(v): (name, checksum, block.split("\n"))
        for v, name, checksum, block in _PG_STEP.findall((ROOT / "docs/format.md").read_text())
    }
    assert sorted(documented) == [m.version for m in PG_MIGRATIONS]
    for m in PG_MIGRATIONS:
        assert documented[m.version] == (m.name, m.checksum, list(m.statements))
