"""The user documentation speaks to users: no project-internal jargon, no test counts.

Phrases that only make sense to whoever wrote the code ("part 2", "the issue", "filled
in by the MLS issues") and counts of the test suite that drift with every change
("848 passed", "104 tests") have no place in what a user reads: README.md, SECURITY.md,
docs/*.md and the docstrings of the two packages (what ``help(keystore)`` shows).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", ROOT / "SECURITY.md", *sorted((ROOT / "docs").glob("*.md"))]
PACKAGES = [ROOT / "keystore" / "__init__.py", ROOT / "mls" / "__init__.py"]

#: (pattern, why it is jargon).  Case-insensitive, matched on text with line breaks
#: folded to spaces, so a phrase wrapped over two lines is still found.
JARGON: list[tuple[str, str]] = [
    (r"\bpart (?:[0-9]+|one|two|three)\b", "a phase of the project's own work plan"),
    (r"\b(?:the|this|that) issues?\b", "the project's tracker, not the user's"),
    (r"\bissue #?[0-9]+", "a tracker number"),
    (r"\bfilled in (?:by|later)\b", "a placeholder promise"),
    (r"\bMLS issues\b", "the project's tracker"),
    (r"\b[0-9][0-9,]* (?:tests|passed)\b", "a test count that drifts with every change"),
]


def jargon_in(text: str) -> list[str]:
    """Every jargon phrase in ``text``, each with the reason, in order of appearance."""
    folded = " ".join(text.split())
    found = []
    for pattern, why in JARGON:
        for match in re.finditer(pattern, folded, re.I):
            start = max(0, match.start() - 40)
            found.append(f"{match.group(0)!r} ({why}) in: …{folded[start:match.end() + 40]}…")
    return found


def test_the_checker_finds_each_kind_of_jargon() -> None:
    """Each pattern catches its phrase (so a passing scan means something) and spares prose."""
    samples = [
        "## State for persistence (part 2)",
        "Two more workloads of the issue (commits)",
        "as asked in issue #21",
        "MLS layer (filled in by the MLS issues).",
        "Result: 848 passed, 0 skipped; 104\ntests in all.",
    ]
    for sample in samples:
        assert jargon_in(sample), sample
    assert jargon_in("the 2nd part of the key; report issues privately; 148 run") == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documents_have_no_jargon(document: Path) -> None:
    """Each user document is free of internal jargon and test counts."""
    assert jargon_in(document.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("module", PACKAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_package_docstrings_have_no_jargon(module: Path) -> None:
    """What ``help(keystore)`` / ``help(mls)`` print is free of jargon too."""
    docstring = ast.get_docstring(ast.parse(module.read_text(encoding="utf-8"))) or ""
    assert docstring, f"{module.name} has no module docstring"
    assert jargon_in(docstring) == []
