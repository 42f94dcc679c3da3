"""docs/format.md §7.2 states the shipped migration steps and what a reader checks.

The checksum of each step is computed here from the step text *in the package*, and
compared with the value written in docs/format.md and in ``format.json``: editing a
shipped step without its documented checksum fails these tests.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from keystore import MigrationError, SchemaTooNew, Vault, migrations
from tests.conftest import FAST_KDF, PASSPHRASE
from tests.docs import spec_reader
from tests.vectors import make_format_vectors

ROOT = Path(__file__).parents[2]
FORMAT = (ROOT / "docs" / "format.md").read_text(encoding="utf-8")
VECTORS: dict[str, Any] = json.loads((ROOT / "tests" / "vectors" / "format.json").read_text())
_STEP = re.compile(
    r"^Step (\d+), `([^`]+)`, checksum `([0-9a-f]{64})`:\n\n```text\n(.*?)\n```", re.M | re.S
)
DOCUMENTED = {
    int(v): (name, checksum, block.split("\n"))
    for v, name, checksum, block in _STEP.findall(FORMAT)
}
APPLIED_AT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+00:00")


def test_every_shipped_step_is_documented_and_no_other() -> None:
    """docs/format.md lists one statement block per shipped step, numbered 1..n."""
    assert sorted(DOCUMENTED) == [m.version for m in migrations.MIGRATIONS]
    assert [c["version"] for c in VECTORS["migrations"]] == sorted(DOCUMENTED)


@pytest.mark.parametrize("step", migrations.MIGRATIONS, ids=lambda m: f"v{m.version}")
def test_documented_step_text_is_the_shipped_text(step: migrations.Migration) -> None:
    """The name and SQL in the spec are exactly the package's, statement by statement."""
    name, _, statements = DOCUMENTED[step.version]
    assert (name, statements) == (step.name, list(step.statements))
    assert step.python_id == "" and step.python is None and step.data is None


@pytest.mark.parametrize("step", migrations.MIGRATIONS, ids=lambda m: f"v{m.version}")
def test_shipped_checksum_is_the_documented_and_vector_checksum(
    step: migrations.Migration,
) -> None:
    """The checksum of the package's step text equals the one in the spec and the vectors."""
    vector = next(c for c in VECTORS["migrations"] if c["version"] == step.version)
    assert step.checksum == DOCUMENTED[step.version][1] == vector["checksum"]
    assert step.checksum == spec_reader.STEP_CHECKSUMS[step.version]
    assert vector["statements"] == list(step.statements)


def test_vector_checksum_input_is_the_documented_framing() -> None:
    """The recorded hashed bytes are u32-length-prefixed parts ending in an empty python_id."""
    for case in VECTORS["migrations"]:
        data = bytes.fromhex(case["checksum_input"])
        parts, pos = [], 0
        while pos < len(data):
            n = int.from_bytes(data[pos : pos + 4], "big")
            parts.append(data[pos + 4 : pos + 4 + n].decode())
            pos += 4 + n
        assert parts == [str(case["version"]), case["name"], *case["statements"], ""]


def test_format_vectors_are_what_the_spec_only_generator_makes() -> None:
    """format.json is exactly the generator's output from the current spec text."""
    assert make_format_vectors.make() == VECTORS


def test_new_vault_records_the_documented_steps(vault_path: Path) -> None:
    """A new vault records each step with its documented checksum and a +00:00 time."""
    Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF).close()
    conn = sqlite3.connect(vault_path)
    try:
        records = conn.execute(
            "SELECT version, name, checksum, applied_at FROM keystore_migrations ORDER BY version"
        ).fetchall()
    finally:
        conn.close()
    assert [(v, n, c) for v, n, c, _ in records] == [
        (v, name, checksum) for v, (name, checksum, _) in sorted(DOCUMENTED.items())
    ]
    for *_, applied_at in records:
        assert APPLIED_AT.fullmatch(applied_at), applied_at


def _edit(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


EDITS = {
    "user-version-0": (("PRAGMA user_version = 0",), "MigrationError"),
    "user-version-above-records": (("PRAGMA user_version = 2",), "MigrationError"),
    "record-missing": (
        ("DELETE FROM keystore_migrations WHERE version = 2",), "MigrationError",
    ),
    "record-above-user-version": (
        ("INSERT INTO keystore_migrations VALUES (5, 'x', 'y', 'z')",), "MigrationError",
    ),
    "checksum-edited": (
        ("UPDATE keystore_migrations SET checksum = '00' || substr(checksum, 3)"
         " WHERE version = 3",),
        "MigrationError",
    ),
    "user-version-newer": (("PRAGMA user_version = 5",), "SchemaTooNew"),
    "no-header-table": (("DROP TABLE keystore_header",), "NotAVault"),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_reader_refusals_of_section_7_2(vault_path: Path, edit: str) -> None:
    """The spec reader and the package refuse each schema edit with the documented error."""
    with Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF) as v:
        v.put("c", b"k", b"v")
    statements, kind = EDITS[edit]
    _edit(vault_path, *statements)
    with pytest.raises(spec_reader.SpecError) as caught:
        spec_reader.read_vault(vault_path, PASSPHRASE)
    assert caught.value.kind == kind
    for readonly in (True, False):
        with pytest.raises(Exception) as raised:
            Vault.open(vault_path, readonly=readonly).close()
        assert type(raised.value).__name__ == kind or (
            kind == "MigrationError" and isinstance(raised.value, MigrationError)
        )
        if kind == "SchemaTooNew":
            assert isinstance(raised.value, SchemaTooNew)
