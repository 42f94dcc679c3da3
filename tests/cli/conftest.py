"""Helpers for the command's tests: run it as a user would, or in-process.

Subprocess runs use ``sys.executable -m keystore`` with stdin closed and a new
session (no controlling terminal), so a command that wanted to prompt fails fast
instead of hanging the suite.  ``MLS_KEYSTORE_PASSPHRASE`` is removed unless a
test sets it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from keystore import Change, Vault, profiles
from keystore.cli import PASSPHRASE_ENV, main

REPO = Path(__file__).resolve().parents[2]
PASSPHRASE = "cli test passphrase"
FAST = ("--kdf-profile", "INSECURE_FOR_TESTS_ONLY")
ROWS = [
    ("key_packages", b"kp-1", b"secret key package one"),
    ("key_packages", b"kp-2", b"secret key package two"),
    ("groups/epoch", b"g", b"\x00" * 2000),
]


@dataclass(frozen=True)
class Result:
    """Exit code and output of one run of the command."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """stdout parsed as JSON."""
        return json.loads(self.out)


Runner = Callable[..., Result]


def digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def run(tmp_path: Path) -> Runner:
    """Run ``python -m keystore ARGS`` in ``tmp_path``; ``env`` adds variables."""

    def runner(*args: str | Path, env: dict[str, str] | None = None) -> Result:
        environ = {k: v for k, v in os.environ.items() if k != PASSPHRASE_ENV}
        environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
        )
        environ.update(env or {})
        proc = subprocess.run(
            [sys.executable, "-m", "keystore", *map(str, args)],
            cwd=tmp_path, env=environ, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=120, start_new_session=True, check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return runner


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Runner:
    """Call ``keystore.cli.main`` in-process, for logic a subprocess adds nothing to."""

    def runner(*args: str | Path, env: dict[str, str] | None = None) -> Result:
        monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors, --help, --version
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return runner


@pytest.fixture
def pwfile(tmp_path: Path) -> Path:
    """A passphrase file holding PASSPHRASE and a trailing newline."""
    return secret_file(tmp_path / "pass.txt", PASSPHRASE + "\n")


def secret_file(path: Path, text: str) -> Path:
    """A 0600 file holding ``text`` (a passphrase or key file as the docs advise)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


@pytest.fixture
def vault_file(tmp_path: Path) -> Path:
    """A closed vault holding ROWS, passphrase PASSPHRASE."""
    path = tmp_path / "my.vault"
    with Vault.create(path, PASSPHRASE, kdf=profiles.INSECURE_FOR_TESTS_ONLY) as v:
        v.apply(Change(c, k, val) for c, k, val in ROWS)
    return path


def read_rows(path: Path, passphrase: str = PASSPHRASE) -> list[tuple[str, bytes, bytes]]:
    """Every row of a vault, sorted."""
    with Vault.open(path, readonly=True) as v:
        v.unlock(passphrase)
        return sorted((c, k, val) for c in v.categories() for k, val in v.items(c))


def terminal(monkeypatch: pytest.MonkeyPatch, *answers: str) -> list[str]:
    """Pretend stdin is a terminal whose user types ``answers``; returns the prompts."""
    import getpass

    prompts: list[str] = []
    replies = iter(answers)

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        try:
            return next(replies)
        except StopIteration:
            raise AssertionError(f"unexpected prompt {prompt!r}") from None

    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    return prompts


def one_clear_line(err: str) -> None:
    """stderr holds exactly one error line (besides warnings) and no traceback."""
    lines = [
        line for line in err.splitlines()
        if line.strip() and not line.startswith("WARNING: KDF profile INSECURE_FOR_TESTS_ONLY")
        and not line.startswith("mls-keystore: warning:")
    ]
    assert len(lines) == 1, err
    assert lines[0].startswith(("mls-keystore: error: ", "mls-keystore demo: ")), err
    assert "Traceback" not in err
