"""``convert`` gives the new vault at least the generation of the rows it copies, as
``import`` does, so an anchor that follows the account accepts the converted vault."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from keystore import Vault
from keystore.cli import ExitCode
from tests.cli.conftest import PASSPHRASE, Runner, secret_file
from tests.conftest import FAST_KDF


@pytest.mark.skipif(importlib.util.find_spec("sqlcipher3") is None,
                    reason="the [sqlcipher] extra (sqlcipher3) is not installed")
def test_convert_keeps_the_generation(cli: Runner, tmp_path: Path) -> None:
    """A plain vault at generation 6, converted to SQLCipher and back: each copy is at
    generation 6 or more."""
    src = tmp_path / "a.vault"
    with Vault.create(src, PASSPHRASE, kdf=FAST_KDF) as v:
        for i in range(6):
            v.put("groups", b"g%d" % i, b"state %d" % i)
        assert v.generation == 6
    pw = secret_file(tmp_path / "pw", PASSPHRASE)
    enc, back = tmp_path / "enc.vault", tmp_path / "back.vault"
    for a, b in ((src, enc), (enc, back)):
        result = cli("convert", a, b, "--passphrase-file", pw)
        assert result.code == ExitCode.OK, result.err
        with Vault.open(b, readonly=True) as v:
            v.unlock(PASSPHRASE)
            assert v.generation is not None and v.generation >= 6
            assert len(v.open_rows()["groups"]) == 6
