"""The client documentation's example runs as written, on the engine it names (native)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).parents[2] / "docs" / "mls-client.md"


def test_mls_client_doc_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first Python block of docs/mls-client.md runs; only its KDF is made cheap."""
    match = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert match is not None
    code = match.group(1).replace(
        "profiles.RFC_9106_LOW_MEMORY", "profiles.INSECURE_FOR_TESTS_ONLY"
    )
    assert code.count("INSECURE_FOR_TESTS_ONLY") == 1  # the one edit
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(DOC), "exec"), {"passphrase": "doc passphrase"})
    assert (tmp_path / "alice.vault").exists() and (tmp_path / "bob.vault").exists()
