"""drop_group: forgetting a group locally deletes all of its rows at once, and rejoining works."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mls import categories as cat
from mls.native import NativeEngine, UnknownGroup
from mls.native.engine import _parse
from mls.native.key_package import KeyPackage
from mls.storage import GranularStorage
from tests.native.engine_helpers import GID, agreed, member, rows
from tests.native.test_persist import VaultHome


class Injected(Exception):
    """The failure injected into a storage delete."""


@pytest.fixture
def home(tmp_path: Path) -> Iterator[VaultHome]:
    """A vault home for one member, stopped after the test."""
    h = VaultHome(tmp_path / "bob.vault")
    yield h
    if h.vault is not None:
        h.stop()


def kp_ref(engine: NativeEngine, key_package: bytes) -> bytes:
    """The reference of one of our key packages (its row key)."""
    body = _parse(key_package).body
    assert isinstance(body, KeyPackage)
    return body.ref(engine.suite)


def busy_group() -> tuple[NativeEngine, NativeEngine, dict[tuple[str, bytes], bytes]]:
    """Alice and Bob after several epochs, messages, a queued proposal and a pending commit.

    Returns Bob's rows from before he joined (minus the key package he joined with).
    """
    alice, bob = member("alice"), member("bob")
    alice.create_group(GID)
    kp = bob.generate_key_package()
    before = rows(bob.storage)
    del before[(cat.KEY_PACKAGE, kp_ref(bob, kp))]
    _, welcome = alice.commit(GID, add=[kp])
    assert welcome is not None
    bob.join(welcome)
    for _ in range(3):
        commit, _ = alice.commit(GID, force_path=True)
        bob.process(GID, commit)
        bob.process(GID, alice.encrypt(GID, b"hello"))
        alice.process(GID, bob.encrypt(GID, b"hi"))
    alice.process(GID, bob.propose_update(GID))
    bob.process(GID, alice.propose_update(GID))
    bob.commit(GID, force_path=True, pending=True)
    return alice, bob, before


def test_drop_group_deletes_every_row_of_the_group() -> None:
    """After the drop, Bob's storage holds exactly what it held before he joined."""
    _, bob, before = busy_group()
    bob.drop_group(GID)
    assert rows(bob.storage) == before
    assert bob.group_ids() == []
    with pytest.raises(UnknownGroup):
        bob.epoch(GID)


@pytest.mark.parametrize("nth", [1, 4, 9, 20])
def test_drop_group_is_one_operation(monkeypatch: pytest.MonkeyPatch, nth: int) -> None:
    """A failure at any delete of the drop leaves every row in place, and the group works."""
    alice, bob, _ = busy_group()
    bob.clear_pending_commit(GID)
    bob.storage.drain_storage_events()
    kept = rows(bob.storage)
    real = GranularStorage.delete
    calls = 0

    def delete(self: GranularStorage, category: str, key: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == nth:
            raise Injected(f"delete {nth}")
        real(self, category, key)

    monkeypatch.setattr(GranularStorage, "delete", delete)
    with pytest.raises(Injected):
        bob.drop_group(GID)
    monkeypatch.undo()
    assert rows(bob.storage) == kept
    assert bob.storage.drain_storage_events() == []
    commit, _ = alice.commit(GID, force_path=True)
    bob.process(GID, commit)
    assert agreed([alice, bob])


def test_drop_of_an_unknown_group_raises() -> None:
    """Nothing to drop is an error of the caller, not a silent success."""
    bob = member("bob")
    with pytest.raises(UnknownGroup):
        bob.drop_group(b"never joined")


def test_rejoin_by_welcome_after_drop() -> None:
    """Bob drops the group; Alice removes his old leaf and adds him again; he joins."""
    alice, bob, _ = busy_group()
    bob.drop_group(GID)
    old = next(i for i, who in alice.members(GID) if who == b"bob")
    _, welcome = alice.commit(GID, remove=[old], add=[bob.generate_key_package()])
    assert welcome is not None
    assert bob.join(welcome) == GID
    assert agreed([alice, bob])
    assert alice.process(GID, bob.encrypt(GID, b"back")).data == b"back"


def test_rejoin_by_external_commit_after_drop() -> None:
    """Bob drops the group and comes back with a resync external commit."""
    alice, bob, _ = busy_group()
    bob.drop_group(GID)
    _, commit = bob.join_by_external_commit(alice.group_info(GID), resync=True)
    assert alice.process(GID, commit).identity == b"bob"
    assert agreed([alice, bob])
    assert [who for _, who in alice.members(GID)] == [b"alice", b"bob"]
    assert bob.process(GID, alice.encrypt(GID, b"welcome back")).data == b"welcome back"


def test_drop_survives_a_restart(home: VaultHome) -> None:
    """The deletes reach the vault: a restarted member no longer has the group."""
    bob = NativeEngine.create(home.start(), b"bob")
    alice = member("alice")
    alice.create_group(GID)
    _, welcome = alice.commit(GID, add=[bob.generate_key_package()])
    assert welcome is not None
    bob.join(welcome)
    bob = home.restart()
    assert bob.group_ids() == [GID]
    bob.drop_group(GID)
    bob = home.restart()
    assert bob.group_ids() == []
    assert all(GID not in key for _, key in rows(bob.storage))
