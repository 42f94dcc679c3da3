"""Leak scan after a realistic MLS + storage + rekey + export + migration workload."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.campaigns import leak


@pytest.mark.timeout(120)
def test_no_plaintext_in_any_file(tmp_path: Path, campaign_seed: int) -> None:
    """No message, group id, identity, row key, value or passphrase is found in any vault,
    WAL, backup, export, header or lock file, open or closed."""
    report = leak.run(leak.ROUNDS.quick, seed=campaign_seed, directory=tmp_path)
    assert report.ok, report.summary()
    assert report.counts["needles"] > 600
    assert report.counts["non-empty WAL files scanned while open"] >= 2


def test_scan_finds_a_planted_plaintext(tmp_path: Path) -> None:
    """The scanner itself works: a needle written into a file is reported."""
    (tmp_path / "x.vault-wal").write_bytes(b"\0" * 100 + b"MESSAGE-planted" + b"\0")
    assert leak.scan(tmp_path, [b"absent", b"MESSAGE-planted"]) == [("x.vault-wal", 1)]
