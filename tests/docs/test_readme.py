"""The README's library example and Quickstart say what the code does."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).parents[2] / "README.md"


def _block_after(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, f"no python block after {heading!r}"
    return match.group(1)


def test_library_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The library example runs (with a cheap KDF) and its state is durable."""
    code = _block_after("## The library at a glance")
    # The only edit: the test KDF instead of the real one, so the suite stays fast.
    code = code.replace("profiles.RFC_9106_LOW_MEMORY", "profiles.INSECURE_FOR_TESTS_ONLY")
    code = code.replace(
        'identity=b"alice")', 'identity=b"alice", kdf=profiles.INSECURE_FOR_TESTS_ONLY)'
    )
    code = code.replace(
        'identity=b"bob")', 'identity=b"bob", kdf=profiles.INSECURE_FOR_TESTS_ONLY)'
    )
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), scope)
    passphrase = scope["passphrase"]
    assert isinstance(passphrase, str)
    received = scope["received"]
    assert getattr(received, "data", None) == b"hello"

    from keystore import Vault
    from mls import GranularStorage

    with Vault.open(tmp_path / "state.vault") as vault:
        vault.unlock(passphrase)
        storage = GranularStorage.load(vault)
        assert storage.tree(b"group-1") == b"<tree>"
        assert storage.group_epoch_secrets(b"group-1") == b"<secrets>"


def test_quickstart_commands_match_ci() -> None:
    """.ci/run installs and tests exactly as the README's Quickstart says."""
    text = README.read_text(encoding="utf-8")
    quick = text[text.index("## Quickstart") :]
    commands = re.search(r"```sh\n(.*?)```", quick, re.S)
    assert commands is not None
    install_and_demo, tests = commands.group(1).strip().splitlines()
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert install_and_demo.split(" && ")[0].replace("pip", "python -m pip") in ci
    assert "mls-keystore demo" in install_and_demo and "mls-keystore demo" in ci
    assert tests in ci
    assert os.access(README.parent / ".ci" / "run", os.X_OK)


def test_version_comes_from_the_package_metadata() -> None:
    """keystore.__version__ is the installed distribution's version, as in pyproject.toml."""
    import tomllib
    from importlib.metadata import version

    import keystore

    declared = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"]
    assert keystore.__version__ == version("mls-keystore") == declared["version"]


@pytest.mark.parametrize(
    ("platform", "machine", "expected"),
    [
        ("linux", "x86_64", {"sqlcipher3", "agentvault-mls-rs-uniffi"}),
        ("linux", "aarch64", {"sqlcipher3"}),
        ("linux", "ppc64le", set()),
        ("darwin", "arm64", {"sqlcipher3", "agentvault-mls-rs-uniffi"}),
        ("win32", "AMD64", {"sqlcipher3", "agentvault-mls-rs-uniffi"}),
    ],
)
def test_dev_extra_asks_for_native_wheels_only_where_they_exist(
    platform: str, machine: str, expected: set[str]
) -> None:
    """[dev] installs on every platform: the native extras carry environment markers."""
    import tomllib

    requirements = pytest.importorskip("packaging.requirements")
    project = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"]
    env = {"sys_platform": platform, "platform_machine": machine}
    chosen = set()
    for line in project["optional-dependencies"]["dev"]:
        req = requirements.Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            chosen.add(req.name)
    assert chosen & {"sqlcipher3", "agentvault-mls-rs-uniffi"} == expected
