"""A mixed native / mls-rs group with one hostile native member, for the hostile-input tests.

The attacker, ``mallory``, is an ordinary native member: every message it forges is built
from its real group state (its keys, its epoch secrets), as an insider would, using the
engine's own framing (``NativeEngine._propose`` / ``_protect``) so only the payload is bad.
Every member lives in its own vault, as in production, so a restart from the vault can be
checked after each attack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from keystore import profiles
from mls.client import MlsClient, ReceivedKind
from mls.engines.native import NativeAdapter
from mls.errors import MlsEngineError
from mls.native.engine import NativeEngine
from mls.native.proposals import ProposalBody
from mls.storage import GranularStorage

PASSPHRASE = "hostile-input passphrase"
FAST = profiles.INSECURE_FOR_TESTS_ONLY
GID = b"hostile-room"

Client = MlsClient


def engine_of(client: MlsClient) -> NativeEngine:
    """The native engine under a client (tests only: its calls bypass the barrier)."""
    assert client.engine_name == "native"
    adapter = client._engine
    assert isinstance(adapter, NativeAdapter)
    return adapter.engine


class Room:
    """Clients of either engine in one group, each in its own vault under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.clients: dict[str, Client] = {}
        self._opened: list[Client] = []

    def make(self, name: str, engine: str) -> Client:
        """A new client ``name`` on ``engine`` ("native" or "mls-rs")."""
        client: Client = MlsClient.create(
            self.folder / f"{name}.vault",
            PASSPHRASE,
            identity=name.encode(),
            kdf=FAST,
            engine=engine,  # type: ignore[call-overload]
        )
        self._opened.append(client)
        self.clients[name] = client
        return client

    def build(self, members: list[tuple[str, str]]) -> None:
        """The first member creates the group and adds the others in one commit."""
        first, *rest = (self.make(name, engine) for name, engine in members)
        first.create_group(GID)
        _, welcome = first.add_members(GID, [c.generate_key_package() for c in rest])
        for c in rest:
            assert c.join(welcome) == GID

    def __getitem__(self, name: str) -> Client:
        return self.clients[name]

    def others(self, *names: str) -> list[Client]:
        """Every member but ``names``."""
        return [c for n, c in self.clients.items() if n not in names]

    def native(self, name: str) -> NativeEngine:
        """The engine of a native member."""
        return engine_of(self.clients[name])

    def restart(self, name: str) -> Client:
        """Close a member and open its vault again, as a new process would."""
        old = self.clients[name]
        old.close()
        again: Client = MlsClient.open(self.folder / f"{name}.vault", PASSPHRASE)
        self._opened.append(again)
        self.clients[name] = again
        return again

    def close(self) -> None:
        """Close every client opened."""
        for c in self._opened:
            c.close()

    def deliver(self, sender: str, message: bytes, *, skip: tuple[str, ...] = ()) -> None:
        """Every other member (but ``skip``) processes ``message``."""
        for r in self.others(sender, *skip):
            r.process(GID, message)

    def check_live(self) -> None:
        """Every member commits once and sends once; all agree on members and epoch."""
        for name, client in list(self.clients.items()):
            commit = client.update_keys(GID)
            for r in self.others(name):
                got = r.process(GID, commit)
                assert (got.kind, got.sender) == (ReceivedKind.COMMIT, client.identity)
            self.check_agree()
        for name, client in list(self.clients.items()):
            text = b"still here, " + name.encode()
            message = client.encrypt(GID, text)
            for r in self.others(name):
                got = r.process(GID, message)
                assert (got.kind, got.sender, got.data) == (
                    ReceivedKind.APPLICATION,
                    client.identity,
                    text,
                )

    def check_agree(self) -> None:
        """Same member list (each identity once) and same exported secret everywhere."""
        lists = {tuple(sorted(c.members(GID))) for c in self.clients.values()}
        assert lists == {tuple(sorted(n.encode() for n in self.clients))}, lists
        secrets = {c.export_secret(GID, b"hostile", b"", 32) for c in self.clients.values()}
        assert len(secrets) == 1

    def check_restart(self) -> None:
        """Every member restarted from its vault is in the same state and still works."""
        before = {n: c.export_secret(GID, b"restart", b"", 32) for n, c in self.clients.items()}
        for name in list(self.clients):
            self.restart(name)
        after = {n: c.export_secret(GID, b"restart", b"", 32) for n, c in self.clients.items()}
        assert after == before
        self.check_agree()


@contextmanager
def room(folder: Path, members: list[tuple[str, str]]) -> Iterator[Room]:
    """A built room, closed afterwards."""
    r = Room(folder)
    try:
        r.build(members)
        yield r
    finally:
        r.close()


def forge_proposal(engine: NativeEngine, body: ProposalBody, gid: bytes = GID) -> bytes:
    """A proposal framed and signed by ``engine``'s member, whatever its body holds."""
    with engine._lock, engine.storage.operation():
        return engine._propose(gid, body)


def rows(storage: GranularStorage) -> dict[tuple[str, bytes], bytes]:
    """Every row of a storage."""
    return {(c, k): v for c in storage.categories() for k, v in storage.items(c)}


def refused_by_all(
    r: Room,
    sender: str,
    message: bytes,
    native_error: type[BaseException],
    *,
    match: str | None = None,
) -> dict[str, str]:
    """Every other member processes ``message``; native members must raise ``native_error``
    and keep their storage unchanged.  Returns what each mls-rs member did."""
    import pytest

    outcome: dict[str, str] = {}
    for name, client in r.clients.items():
        if name == sender:
            continue
        if client.engine_name == "native":
            before = rows(engine_of(client).storage)
            with pytest.raises(native_error, match=match):
                client.process(GID, message)
            assert rows(engine_of(client).storage) == before
            outcome[name] = f"refused {native_error.__name__}"
        else:
            try:
                got = client.process(GID, message)
                outcome[name] = f"accepted {got.kind}"
            except MlsEngineError as exc:
                outcome[name] = f"refused {type(exc).__name__}"
    return outcome


def each_member(r: Room, action: Callable[[str, Client], Any]) -> None:
    """Run ``action`` for each member."""
    for name, client in list(r.clients.items()):
        action(name, client)
