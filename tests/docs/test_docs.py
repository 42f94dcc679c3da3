"""The security and format docs stay true to the code: links, named tests, schema, constants."""

from __future__ import annotations

import ast
import hashlib
import importlib
import re
import sqlite3
from pathlib import Path

import pytest

from keystore import Vault, migrations
from keystore import cipher as cipher_module
from keystore import sqlcipher as sqlcipher_layer
from keystore.header import MAGIC
from keystore.sidecar import SIDECAR_MAGIC
from tests.conftest import FAST_KDF, PASSPHRASE

ROOT = Path(__file__).parents[2]
DOCS = [
    ROOT / "SECURITY.md",
    ROOT / "docs" / "threat-model.md",
    ROOT / "docs" / "format.md",
    ROOT / "docs" / "architecture.md",
    ROOT / "docs" / "operations.md",
    ROOT / "docs" / "cli.md",
    ROOT / "README.md",
]
FORMAT = ROOT / "docs" / "format.md"
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text())
    return {_slug(m) for m in re.findall(r"^#+\s+(.*)$", text, re.M)}


def _blocks(path: Path, language: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(path.read_text()) if lang == language]


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_relative_links_and_anchors_resolve(doc: Path) -> None:
    """Every relative link points at an existing file, and every #anchor at a heading."""
    broken = []
    for target in _LINK.findall(_FENCE.sub("", doc.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # an external URL: not checked offline
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        missing_anchor = (
            dest.exists() and bool(anchor) and dest.suffix == ".md"
            and anchor not in _anchors(dest)
        )
        if not dest.exists() or missing_anchor:
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_named_tests_exist(doc: Path) -> None:
    """Every ``tests/…py::test_name`` a document cites is a test function in that file."""
    missing = []
    for file_name, test_name in _TEST_REF.findall(doc.read_text()):
        path = ROOT / file_name
        if not path.exists() or not re.search(rf"def {test_name}\(", path.read_text()):
            missing.append(f"{file_name}::{test_name}")
    assert missing == []


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_python_examples_compile_and_their_imports_exist(doc: Path) -> None:
    """Python blocks are valid Python and import only names the packages export."""
    for block in _blocks(doc, "python"):
        tree = ast.parse(block)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)


def test_schema_in_format_doc_is_the_schema_of_a_new_vault(tmp_path: Path) -> None:
    """The CREATE statements in docs/format.md are exactly sqlite_master of a new vault."""
    (block,) = _blocks(FORMAT, "sql")
    documented = [line for line in block.splitlines() if line.strip()]
    path = tmp_path / "v.vault"
    Vault.create(path, PASSPHRASE, kdf=FAST_KDF).close()
    conn = sqlite3.connect(path)
    try:
        actual = [
            str(row[0])
            for row in conn.execute(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"
            )
        ]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()
    assert documented == actual
    assert f"schema version {version}" in FORMAT.read_text()


def test_migration_steps_in_format_doc_match_the_shipped_ones() -> None:
    """§7.2 lists every shipped step by version and recorded name, and no other."""
    text = FORMAT.read_text()
    rows = re.findall(r"^\| (\d+) \| `([^`]+)` \|", text, re.M)
    assert [(int(v), name) for v, name in rows] == [
        (m.version, m.name) for m in migrations.MIGRATIONS
    ]


def test_format_doc_constants_match_the_code() -> None:
    """Magic numbers, labels and personalization strings in the spec are the code's."""
    text = FORMAT.read_text()
    for constant in (
        MAGIC,
        SIDECAR_MAGIC,
        cipher_module._RAW_KEY_INFO,
        cipher_module._CATEGORY_PERSON,
        cipher_module._ROW_PERSON,
        sqlcipher_layer.PAGE_KEY_INFO,
    ):
        assert f'"{constant.decode()}"' in text or f"`{constant.decode()}`" in text


def test_documented_checksum_recipe_reproduces_every_shipped_checksum() -> None:
    """SHA-256 over u32-length-prefixed version, name, statements and python_id (§7.2)."""
    for m in migrations.MIGRATIONS:
        h = hashlib.sha256()
        for part in (str(m.version), m.name, *m.statements, m.python_id):
            data = part.encode("utf-8")
            h.update(len(data).to_bytes(4, "big") + data)
        assert h.hexdigest() == m.checksum


_JARGON = re.compile(
    r"\bthe issue\b|\bissue #?\d+|\bpart [0-9]+\b|\bpart (one|two|three)\b|filled in by|"
    r"\b\d[\d,]* tests\b",
    re.I,
)


@pytest.mark.parametrize(
    "doc", [ROOT / "README.md", ROOT / "docs" / "cli.md", ROOT / "docs" / "operations.md"],
    ids=["README.md", "cli.md", "operations.md"],
)
def test_user_docs_speak_to_users(doc: Path) -> None:
    """No project-internal jargon ("the issue", "part 2") and no test counts that drift."""
    assert _JARGON.findall(doc.read_text()) == []
