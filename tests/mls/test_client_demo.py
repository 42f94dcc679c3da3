"""``mls.demo.main``: the end-to-end demo runs, reports, and never touches existing files."""

from __future__ import annotations

from pathlib import Path

import pytest

from mls import demo

FAST = ["--kdf-profile", "INSECURE_FOR_TESTS_ONLY"]


@pytest.mark.parametrize(
    ("engine", "category"),
    [("native", "openmls/v1/message_secrets/ratchet"), ("mls-rs", "mlsrs/v1/group_state")],
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
