"""Fixtures for the interop tests: node peers, and our native member restartable from its vault.

The tests skip, saying why, only where ``node`` is not installed; a machine with node but
without the pinned packages fails with the command that installs them
(``tests/interop/install.sh``, which ``.ci/run`` runs).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keystore import profiles
from mls import MlsClient
from mls.native.identity import CredentialValidator
from tests.interop.peer import NodePeer, node_path

PASSPHRASE = "interop passphrase"
FAST_KDF = profiles.INSECURE_FOR_TESTS_ONLY


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip every interop test where node is absent (the one allowed reason)."""
    if node_path() is not None:
        return
    skip = pytest.mark.skip(reason="node is not installed: the npm interop peers cannot run")
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(skip)


class Ours:
    """Our members: native-engine ``MlsClient``s (public API only), each in its own vault."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.open: dict[bytes, MlsClient] = {}
        self._validators: dict[bytes, CredentialValidator] = {}

    def path(self, identity: bytes) -> Path:
        """Where the member ``identity`` keeps its vault."""
        return self.folder / f"{identity.hex()}.vault"

    def create(
        self, identity: bytes, *, credential_validator: CredentialValidator | None = None
    ) -> MlsClient:
        """A new member (new vault, new signature key); its validator is reused on restarts."""
        client = MlsClient.create(
            self.path(identity),
            PASSPHRASE,
            identity=identity,
            kdf=FAST_KDF,
            engine="native",
            credential_validator=credential_validator,
        )
        if credential_validator is not None:
            self._validators[identity] = credential_validator
        self.open[identity] = client
        return client

    def restart(self, client: MlsClient) -> MlsClient:
        """Close the member and open it again from its vault, as a new process would."""
        identity = next(i for i, c in self.open.items() if c is client)
        client.close()
        again = MlsClient.open(
            self.path(identity),
            PASSPHRASE,
            engine="native",
            credential_validator=self._validators.get(identity),
        )
        self.open[identity] = again
        return again

    def close(self) -> None:
        """Close every member still open."""
        for client in self.open.values():
            client.close()


@pytest.fixture
def ours(tmp_path: Path) -> Iterator[Ours]:
    """Factory for our native members; all closed after the test."""
    made = Ours(tmp_path)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def ts_mls() -> Iterator[NodePeer]:
    """A running ts-mls peer."""
    with NodePeer("ts_mls_peer.mjs") as peer:
        yield peer


@pytest.fixture
def core_crypto() -> Iterator[NodePeer]:
    """A running Wire core-crypto (wasm build) peer."""
    with NodePeer("core_crypto_peer.mjs") as peer:
        yield peer
