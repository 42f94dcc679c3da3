"""A group of 1000 members, half native and half mls-rs, through vaults and restarts.

Four members are full clients (``MlsClient``, two per engine, each in its own vault); the
other 996 are key packages of bare engines of both kinds.  Commits with paths from both
engines, removals and restarts from the vaults must leave every client in the same epoch
with the same secret, and a processed commit must hand the native vault a few kilobytes
(the changed path), not the whole tree.  Marked ``slow`` (about half a minute).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mls_rs_uniffi")

from keystore import profiles
from mls.client import MlsClient, NativeClient
from mls.mlsrs import load_binding
from mls.native import NativeEngine
from mls.storage import GranularStorage

MEMBERS = 1000
PASSPHRASE = "large group passphrase"
FAST = profiles.INSECURE_FOR_TESTS_ONLY
GID = b"large-room"
Client = MlsClient | NativeClient


class Home:
    """Clients of either engine in their own vaults, restartable like processes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.open: list[Client] = []

    def make(self, name: str, engine: str) -> Client:
        client: Client = MlsClient.create(
            self.folder / f"{name}.vault",
            PASSPHRASE,
            identity=name.encode(),
            kdf=FAST,
            engine=engine,
        )
        self.open.append(client)
        return client

    def restart(self, client: Client) -> Client:
        client.close()
        path = self.folder / f"{client.identity.decode()}.vault"
        again: Client = MlsClient.open(path, PASSPHRASE, engine=client.engine_name)
        self.open.append(again)
        return again


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    """A client factory; every client is closed after the test."""
    h = Home(tmp_path)
    yield h
    for client in h.open:
        client.close()


def _bare_key_packages(count: int) -> list[bytes]:
    """Alternately a native and an mls-rs key package of members that never join."""
    binding = load_binding()
    out = []
    for i in range(count):
        name = f"bare{i}"
        if i % 2:
            keys = binding.generate_signature_keypair(binding.CipherSuite.CURVE25519_AES128)
            client = binding.Client(name.encode(), keys, binding.client_config_default())
            out.append(bytes(client.generate_key_package_message().to_bytes()))
        else:
            engine = NativeEngine.create(GranularStorage(), name.encode())
            out.append(engine.generate_key_package())
    return out


def _vault_bytes(client: Client) -> list[int]:
    """Record the row bytes (key + value) of every batch the client's vault applies."""
    vault = client.vault
    applied: list[int] = []
    real = vault.apply

    def apply(changes: Iterable[Any]) -> int:
        batch = list(changes)
        applied.append(sum(len(c.key) + len(c.value or b"") for c in batch))
        return real(batch)

    vault.apply = apply  # type: ignore[method-assign]
    return applied


def _deliver(message: bytes, receivers: Iterable[Client]) -> None:
    for r in receivers:
        r.process(GID, message)


def _agree(members: list[Client]) -> None:
    secrets = {m.export_secret(GID, b"large", b"", 32) for m in members}
    assert len(secrets) == 1


@pytest.mark.slow
def test_a_thousand_member_mixed_group_survives_commits_and_restarts(home: Home) -> None:
    """Native and mls-rs clients agree in a 1000-member group across commits and restarts."""
    alice, bob = home.make("alice", "native"), home.make("bob", "mls-rs")
    carol, dave = home.make("carol", "native"), home.make("dave", "mls-rs")
    alice.create_group(GID)
    kps = [m.generate_key_package() for m in (bob, carol, dave)]
    _, welcome = alice.add_members(GID, kps + _bare_key_packages(MEMBERS - 4))
    for m in (bob, carol, dave):
        assert m.join(welcome) == GID
    everyone = [alice, bob, carol, dave]
    assert len(alice.members(GID)) == len(dave.members(GID)) == MEMBERS
    _agree(everyone)

    commit = carol.update_keys(GID)  # native path to a mostly blank tree
    _deliver(commit, [alice, bob, dave])
    commit = bob.update_keys(GID)  # mls-rs path
    _deliver(commit, [alice, carol, dave])
    _agree(everyone)

    alice, carol = home.restart(alice), home.restart(carol)
    everyone = [alice, bob, carol, dave]
    sizes = _vault_bytes(alice)
    commit = dave.update_keys(GID)
    _deliver(commit, [alice, bob, carol])
    assert 0 < sizes[-1] < 10_000, sizes  # one path and a few small rows, not the tree
    commit = carol.remove_members(GID, [b"bare0", b"bare1", b"bare2"])
    _deliver(commit, [alice, bob, dave])
    assert len(bob.members(GID)) == MEMBERS - 3

    bob, dave, carol = home.restart(bob), home.restart(dave), home.restart(carol)
    everyone = [alice, bob, carol, dave]
    _agree(everyone)
    for sender in everyone:
        message = sender.encrypt(GID, b"hello from " + sender.identity)
        for receiver in everyone:
            if receiver is not sender:
                got = receiver.process(GID, message)
                assert got.data == b"hello from " + sender.identity
    commit = alice.update_keys(GID)
    _deliver(commit, [bob, carol, dave])
    _agree(everyone)


def test_the_large_groups_document_examples_run() -> None:
    """Each python example of docs/large-groups.md runs as written (its asserts hold)."""
    doc = Path(__file__).parents[2] / "docs" / "large-groups.md"
    blocks = re.findall(r"^```python\n(.*?)^```", doc.read_text(encoding="utf-8"), re.S | re.M)
    assert blocks
    for block in blocks:
        exec(compile(block, str(doc), "exec"), {"__name__": "doc_example"})
