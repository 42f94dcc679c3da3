"""``mls.demo.main``: the end-to-end demo runs, reports, and never touches existing files."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from mls import demo

FAST = ["--kdf-profile", "INSECURE_FOR_TESTS_ONLY"]


@pytest.mark.parametrize(
    ("engine", "category"),
    [
        ("native", "openmls/v1/message_secrets/ratchet"),
        pytest.param(
            "mls-rs", "mlsrs/v1/group_state",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("mls_rs_uniffi") is None,
                reason="the [mls-rs] extra (mls_rs_uniffi) is not installed on this platform",
            ),
        ),
    ],
)
def test_demo_runs_end_to_end_and_finds_no_leak(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    engine: str,
    category: str,
) -> None:
    """On either engine the demo exits 0, reports both leak scans clean, prints no message."""
    monkeypatch.setenv(demo.PASSPHRASE_ENV, "demo test passphrase")
    assert demo.main([str(tmp_path / "d"), "--engine", engine, *FAST]) == 0
    out = capsys.readouterr().out
    assert f"{engine} engine" in out
    assert out.count("none of the 6 messages nor the group id") == 2
    assert "(fresh process)" in out and category in out
    assert "Hi Bob" not in out and "demo test passphrase" not in out


def test_demo_refuses_a_directory_with_its_vaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing alice.vault makes the demo exit 2 without changing anything."""
    (tmp_path / "alice.vault").write_bytes(b"user data")
    assert demo.main([str(tmp_path), *FAST]) == 2
    assert (tmp_path / "alice.vault").read_bytes() == b"user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice.vault"]
    assert "nothing was changed" in capsys.readouterr().err


def test_demo_reads_the_passphrase_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--passphrase-file is used (and named), and the vaults open with that passphrase."""
    from mls.client import MlsClient

    monkeypatch.delenv(demo.PASSPHRASE_ENV, raising=False)
    secret = tmp_path / "pass.txt"
    secret.write_text("from a file\n")
    assert demo.main([str(tmp_path / "d"), "--passphrase-file", str(secret), *FAST]) == 0
    assert f"from {secret}" in capsys.readouterr().out
    with MlsClient.open(tmp_path / "d" / "bob.vault", "from a file") as bob:
        assert len(bob.group_ids()) == 1


def test_demo_rejects_an_unknown_kdf_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad --kdf-profile is a one-line error and exit code 2."""
    assert demo.main([str(tmp_path), "--kdf-profile", "FAST_PLEASE"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_demo_usage_errors_return_a_code(capsys: pytest.CaptureFixture[str]) -> None:
    """A missing DIR returns exit code 2 instead of raising SystemExit."""
    assert demo.main([]) == 2
    assert "directory" in capsys.readouterr().err


def test_a_generated_passphrase_is_written_owner_only_and_opens_the_vaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No passphrase given: it goes to DIR/demo-passphrase.txt (0600), named in the output."""
    from mls.client import MlsClient

    monkeypatch.delenv(demo.PASSPHRASE_ENV, raising=False)
    directory = tmp_path / "d"
    assert demo.main([str(directory), *FAST]) == 0
    secret = directory / demo.PASSPHRASE_FILE
    assert str(secret) in capsys.readouterr().out
    assert secret.stat().st_mode & 0o777 == 0o600
    with MlsClient.open(directory / "alice.vault", secret.read_text().strip()) as alice:
        assert len(alice.group_ids()) == 1


def test_workers_get_the_passphrase_through_the_pipe_not_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The variable is removed from os.environ, and no worker's environment holds the secret."""
    import subprocess

    environments: list[dict[str, str]] = []
    real_popen = subprocess.Popen

    def spying_popen(*args: object, **kwargs: object) -> object:
        env = kwargs.get("env")
        assert isinstance(env, dict)
        environments.append(env)
        return real_popen(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(demo.subprocess, "Popen", spying_popen)
    monkeypatch.setenv(demo.PASSPHRASE_ENV, "pipe only passphrase")
    assert demo.main([str(tmp_path / "d"), *FAST]) == 0
    assert demo.PASSPHRASE_ENV not in os.environ
    assert len(environments) == 3
    for env in environments:
        assert "pipe only passphrase" not in "".join(f"{k}={v}" for k, v in env.items())


def test_json_output_is_one_object_with_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--json: stdout is one JSON object (steps, vaults, leak scans), the text goes away."""
    monkeypatch.setenv(demo.PASSPHRASE_ENV, "demo json passphrase")
    assert demo.main([str(tmp_path / "d"), "--json", *FAST]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["leak_found"] is False
    assert [v["file"] for v in report["vaults"]] == ["alice.vault", "bob.vault", "carol.vault"]
    assert {s["when"] for s in report["leak_scans"]} == {"while open", "after close"}


def test_a_missing_mls_rs_extra_exits_9_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--engine mls-rs without the binding: exit 9, one line, no folder made."""
    monkeypatch.setitem(sys.modules, "mls_rs_uniffi", None)  # what an absent package does
    monkeypatch.setenv(demo.PASSPHRASE_ENV, "demo test passphrase")
    assert demo.main([str(tmp_path / "d"), "--engine", "mls-rs", *FAST]) == 9
    assert "[mls-rs]" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
