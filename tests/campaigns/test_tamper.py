"""Tampering matrix at its quick size: every detectable edit raises our error, plaintext-free;
every undetectable one behaves exactly as docs/reliability.md says."""

from __future__ import annotations

from pathlib import Path

import pytest

from keystore import Vault, profiles
from tests.campaigns import tamper
from tests.campaigns.common import PASSPHRASE


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(tamper.CASES))
def test_tamper_kind(tmp_path: Path, name: str) -> None:
    """One kind of tampering, at every position the quick size tries."""
    case, detected = tamper.CASES[name]
    outcome = case(tmp_path, False)
    assert outcome.tried > 0
    assert outcome.problems == []
    assert bool(outcome.errors) == detected


def test_header_kdf_cost_near_2_32_is_refused_before_argon2(tmp_path: Path) -> None:
    """Regression: a header edited to t = 2**31 used to make unlock run Argon2 for days;
    now parsing the header refuses it at once with IntegrityError."""
    outcome = tamper.header_kdf_cost_inflated(tmp_path, False)
    assert outcome.problems == [] and outcome.errors == {"IntegrityError"}


def test_vault_with_kdf_cost_above_the_cap_cannot_be_created(tmp_path: Path) -> None:
    """The cap applies when creating too, so no vault is made that could not be reopened."""
    with pytest.raises(ValueError, match="maximum"):
        Vault.create(
            tmp_path / "v", PASSPHRASE,
            kdf=profiles.KdfParameters(profiles.MAX_TIME_COST + 1, 8, 1),
        )
    assert not (tmp_path / "v").exists()
