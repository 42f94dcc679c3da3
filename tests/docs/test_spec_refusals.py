"""Every refusal docs/format.md asks of a reader names its error, and both readings agree.

For each malformed header, header file and export file in ``format.json`` the package
raises exactly the exception the spec names, and the reader written from the spec
alone (``spec_reader``) refuses the same bytes with the same name.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from keystore import errors
from keystore.export import read_export
from keystore.header import Header
from keystore.sidecar import Sidecar, sidecar_path_for
from tests.docs import spec_reader

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "format.json").read_text()
)


def _ids(cases: list[dict[str, Any]]) -> list[str]:
    return [str(c["name"]) for c in cases]


def _error(name: str) -> type[errors.KeystoreError]:
    cls: type[errors.KeystoreError] = getattr(errors, name)
    assert issubclass(cls, errors.KeystoreError)
    return cls


@pytest.mark.parametrize(
    "case", VECTORS["invalid_headers"], ids=_ids(VECTORS["invalid_headers"])
)
def test_spec_reader_refuses_each_malformed_header(case: dict[str, Any]) -> None:
    """The §3 checks in the spec reader refuse what Header.from_bytes refuses."""
    data = bytes.fromhex(case["header"])
    with pytest.raises(errors.IntegrityError):
        Header.from_bytes(data)
    with pytest.raises(spec_reader.SpecError) as caught:
        spec_reader.parse_header(data)
    assert caught.value.kind == "IntegrityError"


@pytest.mark.parametrize(
    "case", VECTORS["invalid_sidecars"], ids=_ids(VECTORS["invalid_sidecars"])
)
def test_malformed_header_file_raises_the_documented_error(
    case: dict[str, Any], tmp_path: Path
) -> None:
    """§8.2: the package reading the file, and the spec reader, raise the named error."""
    data = bytes.fromhex(case["sidecar"])
    vault = tmp_path / "v.vault"
    sidecar_path_for(vault).write_bytes(data)
    with pytest.raises(_error(case["error"])) as raised:
        Sidecar.read(vault)
    assert type(raised.value) is _error(case["error"])
    with pytest.raises(spec_reader.SpecError) as caught:
        spec_reader.parse_sidecar(data)
    assert caught.value.kind == case["error"]


def test_valid_header_files_pass_the_spec_reader() -> None:
    """The well-formed header-file vectors (one header, mid-rekey) are accepted."""
    for case in VECTORS["sidecars"]:
        version, headers = spec_reader.parse_sidecar(bytes.fromhex(case["sidecar"]))
        assert version == case["schema_version"]
        assert [h.raw.hex() for h in headers] == [
            h for h in (case["current"], case["pending"]) if h is not None
        ]


@pytest.mark.parametrize(
    "case", VECTORS["invalid_exports"], ids=_ids(VECTORS["invalid_exports"])
)
def test_malformed_export_raises_the_documented_error(case: dict[str, Any]) -> None:
    """§11: read_export and the spec reader raise the named error, never a library one."""
    data = bytes.fromhex(case["export"])
    with pytest.raises(_error(case["error"])) as raised:
        list(read_export(io.BytesIO(data), "backup passphrase"))
    assert type(raised.value) is _error(case["error"])
    with pytest.raises(spec_reader.SpecError) as caught:
        spec_reader.read_export_file(data, "backup passphrase")
    assert caught.value.kind == case["error"]


HEADER_STAGE = [c for c in VECTORS["invalid_exports"] if c["before_kdf"]]


@pytest.mark.parametrize("case", HEADER_STAGE, ids=_ids(HEADER_STAGE))
def test_export_header_is_refused_before_argon2_runs(
    case: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """§11: magic, format, KDF cost (caps and Argon2's minimums) and chunk size come first."""

    def no_argon2(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("Argon2 ran on a header that should have been refused")

    monkeypatch.setattr("keystore.export.hash_secret_raw", no_argon2)
    with pytest.raises(_error(case["error"])):
        list(read_export(io.BytesIO(bytes.fromhex(case["export"])), "backup passphrase"))
