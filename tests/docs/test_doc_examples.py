"""Every ```python example in README.md and docs/*.md runs exactly as written.

Each block runs in its own Python process, in a fresh empty folder, with this
checkout on the import path and nothing else prepared: a reader who pastes it
into a file gets the same result.  A block that cannot run by itself is marked
in the Markdown, right above it, with the reason::

    <!-- example: skip needs a delivery service -->

A marker without a reason is an error, so no example is skipped silently.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(
    r"(?:<!--\s*example:\s*(?P<directive>[^>]*?)\s*-->\s*\n)?^```python\n(?P<code>.*?)^```",
    re.S | re.M,
)


@dataclass(frozen=True)
class Example:
    """One python block: where it is, its code, and why it is skipped (if it is)."""

    document: Path
    line: int
    code: str
    skip: str | None

    @property
    def name(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def examples(document: Path) -> list[Example]:
    """The python blocks of a Markdown file, with their skip markers."""
    text = document.read_text(encoding="utf-8")
    found = []
    for match in _BLOCK.finditer(text):
        directive = (match.group("directive") or "").strip()
        skip = None
        if directive:
            verb, _, reason = directive.partition(" ")
            if verb != "skip" or not reason.strip():
                raise AssertionError(
                    f"{document.name}: an example marker must be "
                    f"'<!-- example: skip REASON -->', not {directive!r}"
                )
            skip = reason.strip()
        line = text.count("\n", 0, match.start("code")) + 1
        found.append(Example(document, line, match.group("code"), skip))
    return found


ALL = [example for document in DOCUMENTS for example in examples(document)]

#: Examples known not to run yet, in documents maintained elsewhere; each entry must
#: fail (strict xfail), so fixing the example makes this test say to remove it.
KNOWN_BROKEN: dict[str, str] = {}


def test_the_extractor_finds_examples_and_reads_markers(tmp_path: Path) -> None:
    """The extractor sees blocks, their line numbers and skip reasons, and rejects a bare marker."""
    doc = tmp_path / "d.md"
    doc.write_text(
        "text\n\n```python\nprint(1)\n```\n\n<!-- example: skip needs a server -->\n"
        "```python\nconnect()\n```\n"
    )
    first, second = examples(doc)
    assert (first.line, first.code, first.skip) == (4, "print(1)\n", None)
    assert (second.code, second.skip) == ("connect()\n", "needs a server")
    doc.write_text("<!-- example: skip -->\n```python\nx = 1\n```\n")
    with pytest.raises(AssertionError, match="must be"):
        examples(doc)
    assert ALL, "no python examples found at all"


def _params() -> list[object]:
    params: list[object] = []
    for example in ALL:
        broken = KNOWN_BROKEN.get(str(example.document.relative_to(ROOT)))
        marks = [pytest.mark.xfail(strict=True, reason=broken)] if broken else []
        params.append(pytest.param(example, id=example.name, marks=marks))
    return params


@pytest.mark.parametrize("example", _params())
def test_example_runs_as_written(
    example: Example, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The block exits 0 in a fresh folder, with no setup beyond the package itself.

    An example that reads ``MLS_KEYSTORE_PG_DSN`` gets the test PostgreSQL server's
    address there, as a reader would set it to their own server.
    """
    if example.skip is not None:
        pytest.skip(example.skip)
    env = {k: v for k, v in os.environ.items() if k != "MLS_KEYSTORE_PASSPHRASE"}
    if "MLS_KEYSTORE_PG_DSN" in example.code:
        dsn = request.getfixturevalue("pg_dsn")
        env["MLS_KEYSTORE_PG_DSN"] = dsn
        request.addfinalizer(lambda: _drop_example_schema(dsn))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", example.code], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=300, check=False, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"{example.name} failed:\n{proc.stderr[-3000:]}"


def _drop_example_schema(dsn: str) -> None:
    """The PostgreSQL examples work in the schema ``docs_example``; leave the server clean."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS docs_example CASCADE")
