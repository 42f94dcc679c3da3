"""docs/postgres.md's example runs as written, and docs/format.md §14 states the
shipped PostgreSQL schema steps exactly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from keystore.backends.postgres import PG_MIGRATIONS

ROOT = Path(__file__).resolve().parents[2]
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_PG_STEP = re.compile(
    r"^PostgreSQL step (\d+), `([^`]+)`, checksum `([0-9a-f]{64})`:\n\n```text\n(.*?)\n```",
    re.M | re.S,
)


def test_the_postgres_doc_example_runs(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every python block of docs/postgres.md runs against the test server."""
    import psycopg

    blocks = [b for lang, b in _FENCE.findall((ROOT / "docs/postgres.md").read_text())
              if lang == "python"]
    assert blocks
    monkeypatch.setenv("MLS_KEYSTORE_PG_DSN", pg_dsn)
    try:
        for block in blocks:
            exec(compile(block, "docs/postgres.md", "exec"), {"__name__": "docs_example"})
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS docs_example CASCADE")


def test_format_doc_states_the_shipped_postgres_steps() -> None:
    """Names, statements and checksums in docs/format.md §14.2 are the package's."""
    documented = {
        int(v): (name, checksum, block.split("\n"))
        for v, name, checksum, block in _PG_STEP.findall((ROOT / "docs/format.md").read_text())
    }
    assert sorted(documented) == [m.version for m in PG_MIGRATIONS]
    for m in PG_MIGRATIONS:
        assert documented[m.version] == (m.name, m.checksum, list(m.statements))
