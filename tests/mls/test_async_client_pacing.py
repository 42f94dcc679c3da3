"""AsyncMlsClient's worker frees the GIL at least once per millisecond of a batch call.

The engines release the GIL for microseconds many times per message, which keeps an
event loop from ever asking for it (each release counts as a switch); only a real
pause lets the loop in.  These tests prove the pauses happen where they must, on the
worker thread only, and that the durability barrier's flush yields there too.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import mls.client as client_module
from keystore import profiles
from mls.client import AsyncMlsClient, MlsClient
from mls.drainer import WriteBehindDrainer
from mls.errors import UnknownGroup
from mls.storage import GranularStorage

PASSPHRASE = "test passphrase"
FAST = profiles.INSECURE_FOR_TESTS_ONLY


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[MlsClient, MlsClient, bytes]]:
    """A sender and a receiver (native engine) in one group; both closed afterwards."""
    sender = MlsClient.create(tmp_path / "a.vault", PASSPHRASE, identity=b"a", kdf=FAST)
    receiver = MlsClient.create(tmp_path / "b.vault", PASSPHRASE, identity=b"b", kdf=FAST)
    gid = sender.create_group()
    _, welcome = sender.add_members(gid, [receiver.generate_key_package()])
    receiver.join(welcome)
    yield sender, receiver, gid
    sender.close()
    receiver.close()


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, int]]:
    """Every pause mls.client takes, as (seconds, thread id); one due at each yield point."""
    taken: list[tuple[float, int]] = []

    def recording_sleep(seconds: float) -> None:
        taken.append((seconds, threading.get_ident()))
        time.sleep(seconds)

    # Only mls.client's view of ``time``: the drainer's and the vault's pauses are not counted.
    monkeypatch.setattr(
        client_module,
        "time",
        SimpleNamespace(sleep=recording_sleep, perf_counter=time.perf_counter),
    )
    monkeypatch.setattr(client_module, "_PACE_EVERY", 0.0)
    return taken


def test_async_encrypt_many_pauses_on_the_worker(
    pair: tuple[MlsClient, MlsClient, bytes], pauses: list[tuple[float, int]]
) -> None:
    """A batch through AsyncMlsClient pauses before each message and before its flush."""
    sender, receiver, gid = pair
    items = [(gid, b"m%d" % i) for i in range(20)]
    sent = asyncio.run(AsyncMlsClient(sender).encrypt_many(items))
    assert len(pauses) == 21
    assert {seconds for seconds, _ in pauses} == {client_module._PACE_PAUSE}
    assert threading.get_ident() not in {thread for _, thread in pauses}
    got = receiver.process_many([(gid, m) for m in sent])
    assert [r.data for r in got] == [p for _, p in items]


def test_async_process_many_pauses_on_the_worker(
    pair: tuple[MlsClient, MlsClient, bytes], pauses: list[tuple[float, int]]
) -> None:
    """Processing a batch through AsyncMlsClient pauses between messages too."""
    sender, receiver, gid = pair
    sent = sender.encrypt_many([(gid, b"m%d" % i) for i in range(15)])
    got = asyncio.run(AsyncMlsClient(receiver).process_many([(gid, m) for m in sent]))
    assert [r.data for r in got] == [b"m%d" % i for i in range(15)]
    assert len(pauses) == 16


def test_sync_calls_never_pause(
    pair: tuple[MlsClient, MlsClient, bytes], pauses: list[tuple[float, int]]
) -> None:
    """The synchronous client, on any thread, runs its batches without pauses."""
    sender, receiver, gid = pair
    sent = sender.encrypt_many([(gid, b"x")] * 10)
    worker = threading.Thread(target=receiver.process_many, args=([(gid, m) for m in sent],))
    worker.start()
    worker.join()
    assert pauses == []


def test_the_barrier_flush_yields_only_for_big_async_flushes(
    pair: tuple[MlsClient, MlsClient, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The barrier flushes with ``yield_gil=True`` only on an AsyncMlsClient worker, when big."""
    sender, _, gid = pair
    seen: list[bool] = []
    real_flush = sender._drainer.flush

    def recording_flush(*, yield_gil: bool = False) -> int:
        seen.append(yield_gil)
        return real_flush(yield_gil=yield_gil)

    monkeypatch.setattr(sender._drainer, "flush", recording_flush)
    sender.encrypt(gid, b"sync")
    asyncio.run(AsyncMlsClient(sender).encrypt(gid, b"small"))
    monkeypatch.setattr(client_module, "_BARRIER_YIELD_EVENTS", 0)
    asyncio.run(AsyncMlsClient(sender).encrypt(gid, b"big"))
    sender.encrypt(gid, b"sync again")
    assert seen == [False, False, True, False]
    assert sender.pending_events == 0


def test_pacing_ends_with_the_call_even_when_it_fails() -> None:
    """A failing call leaves its worker thread unpaced for whatever it runs next."""

    def fails() -> None:
        assert client_module._pacer.active
        raise UnknownGroup("no such group")

    with pytest.raises(UnknownGroup):
        client_module._paced(fails)
    assert not client_module._pacer.active


def test_write_behind_flush_passes_yield_gil_to_the_vault(tmp_path: Path) -> None:
    """``WriteBehindDrainer.flush(yield_gil=True)`` applies with ``Vault.apply(yield_gil=True)``."""
    from keystore import Vault

    vault = Vault.create(tmp_path / "v.vault", PASSPHRASE, kdf=FAST)
    calls: list[dict[str, bool]] = []
    real_apply = vault.apply

    class Recording:
        def apply(self, changes: list[object], **options: bool) -> int:
            calls.append(options)
            return real_apply(changes, **options)  # type: ignore[arg-type]

        def __getattr__(self, name: str) -> object:
            return getattr(vault, name)

    storage = GranularStorage()
    drainer = WriteBehindDrainer(storage, Recording())  # type: ignore[arg-type]
    try:
        storage.write("c", b"k1", b"v")
        assert drainer.flush() == 1
        storage.write("c", b"k2", b"v")
        assert drainer.flush(yield_gil=True) == 1
    finally:
        drainer.close()
        vault.close()
    assert calls == [{}, {"yield_gil": True}]


def test_the_loop_runs_in_the_middle_of_a_paced_batch(
    pair: tuple[MlsClient, MlsClient, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a pause before every message, loop tasks run while the batch is half done.

    Without the pauses this failed in 2 of 3 runs: the loop got in only after the batch.
    """
    sender, receiver, gid = pair
    monkeypatch.setattr(client_module, "_PACE_EVERY", 0.0)
    encrypted: list[None] = []
    real_encrypt = sender._engine.encrypt

    def counting_encrypt(group_id: bytes, plaintext: bytes, *, aad: bytes) -> bytes:
        out = real_encrypt(group_id, plaintext, aad=aad)
        encrypted.append(None)
        return out

    monkeypatch.setattr(sender._engine, "encrypt", counting_encrypt)
    burst = 100
    seen_by_loop: list[int] = []

    async def main() -> list[bytes]:
        call = asyncio.ensure_future(
            AsyncMlsClient(sender).encrypt_many([(gid, b"m")] * burst)
        )
        while not call.done():
            seen_by_loop.append(len(encrypted))
            await asyncio.sleep(0)
        return await call

    sent = asyncio.run(main())
    assert any(0 < n < burst for n in seen_by_loop)
    assert len(receiver.process_many([(gid, m) for m in sent])) == burst
