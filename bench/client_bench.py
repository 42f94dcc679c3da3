"""What the durability barrier of ``MlsClient`` costs, against baselines measured in the same run.

A durable send is at least an in-memory send plus one fsync'd commit, so that is the
floor: mls-rs ``encrypt_application_message`` on an in-memory group, then one SQLite
transaction (WAL, ``synchronous=FULL``) writing the same bytes our barrier writes (the
group snapshot).  Three figures:

* ``durable_send_over_floor`` — ``MlsClient.encrypt`` ÷ that floor (goal ≤ 1.3);
* ``group_commit_16_over_memory_send`` — ``encrypt_many`` over 16 groups (one fsync),
  per send, ÷ the in-memory send (goal ≤ 2);
* ``send_cost_by_group_size`` — members 2 → 200: bytes written and time per durable
  send, beside the in-memory send, because mls-rs hands over a whole group snapshot on
  every write (no goal: a measurement).
* ``async_client_loop_lag_<op>_<engine>`` — the worst lateness of a 1 ms ticker on the
  event loop while ``AsyncMlsClient`` runs a burst of calls (``encrypt`` one by one,
  ``encrypt_many``, ``process_many``), beside the same ticker with no calls for as
  long (``idle_max_lag_ms``) and the same burst called on the loop through the
  synchronous client (``blocking_max_lag_ms``); goal < 10 ms, the figure
  ``storage_bench`` states for ``AsyncDrainer``.
* ``async_client_pacing_cost_<engine>`` — what the worker's pauses for the loop cost:
  ``encrypt_many`` through ``AsyncMlsClient`` ÷ the same call in a bare
  ``asyncio.to_thread`` worker (no pauses), back to back on an idle loop (goal ≤ 1.15).

Run: ``python -m bench.client_bench [--quick] [--json PATH] [--dir DIR]``.  Vaults use
the cheapest KDF profile: unlocking is not what is measured here (see unlock_bench).
``--dir`` should be on the disk you care about: on tmpfs an fsync costs nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    PairedRatio,
    emit_results,
    loop_lags_during,
    measure_ratio,
    summarize,
)
from keystore import profiles
from mls.client import AsyncMlsClient, MlsClient
from mls.engine import EngineName
from mls.mlsrs import load_binding

__all__ = [
    "async_client_loop_lag",
    "async_client_pacing_cost",
    "durable_process_over_floor",
    "durable_send_over_floor",
    "group_commit_over_memory_send",
    "main",
    "run",
    "send_cost_by_group_size",
]

PASSPHRASE = "bench passphrase"
KDF = profiles.INSECURE_FOR_TESTS_ONLY  # unlocking is not measured here
PLAINTEXT = b"x" * 100


class _MemoryGroup:
    """A raw mls-rs group with in-memory storage: the no-persistence send."""

    def __init__(self, members: int):
        b = load_binding()
        suite = b.CipherSuite.CURVE25519_AES128

        def client(name: bytes) -> Any:
            return b.Client(name, b.generate_signature_keypair(suite), b.client_config_default())

        self.group = client(b"sender").create_group(None)
        if members > 1:
            kps = [client(b"m%d" % i).generate_key_package_message() for i in range(members - 1)]
            out = self.group.add_members(kps)
            self.group.process_incoming_message(out.commit_message)

    def send(self) -> bytes:
        return bytes(self.group.encrypt_application_message(PLAINTEXT).to_bytes())


class _SqliteFloor:
    """One fsync'd SQLite transaction per call, writing a row of the given size."""

    def __init__(self, path: Path, value: bytes):
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL)")
        self.value = value

    def commit(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (b"group", self.value))
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def _client_with_group(directory: Path, name: str, members: int) -> tuple[MlsClient, bytes]:
    """An MlsClient whose group has ``members`` members (the others live in memory only)."""
    b = load_binding()
    suite = b.CipherSuite.CURVE25519_AES128
    client = MlsClient.create(
        directory / f"{name}.vault", PASSPHRASE, identity=b"sender", kdf=KDF, engine="mls-rs"
    )
    gid = client.create_group()
    if members > 1:
        kps = [
            bytes(
                b.Client(b"m%d" % i, b.generate_signature_keypair(suite), b.client_config_default())
                .generate_key_package_message()
                .to_bytes()
            )
            for i in range(members - 1)
        ]
        client.add_members(gid, kps)
    return client, gid


def _snapshot_bytes(client: MlsClient) -> int:
    """Stored (encrypted) bytes of the group-state rows: what each send rewrites."""
    return client.vault.stats().categories["mlsrs/v1/group_state"].bytes


def _times(fn: Callable[[], object], batch: int) -> Callable[[], None]:
    def run_batch() -> None:
        for _ in range(batch):
            fn()

    return run_batch


def durable_send_over_floor(
    directory: Path, *, batch: int = 20, repeats: int = 15
) -> dict[str, Any]:
    """``MlsClient.encrypt`` (barrier) ÷ (in-memory send + one fsync'd SQLite commit)."""
    client, gid = _client_with_group(directory, "barrier", 2)
    memory = _MemoryGroup(2)
    client.encrypt(gid, PLAINTEXT)
    row_bytes = _snapshot_bytes(client)
    floor_db = _SqliteFloor(directory / "floor.sqlite", os.urandom(row_bytes))
    try:

        def floor() -> None:
            memory.send()
            floor_db.commit()

        result = measure_ratio(
            _times(lambda: client.encrypt(gid, PLAINTEXT), batch), _times(floor, batch), repeats
        )
        parts = measure_ratio(_times(memory.send, batch), _times(floor_db.commit, batch), repeats)
    finally:
        floor_db.close()
        client.close()
    return {
        "name": "durable_send_over_floor",
        "goal": "<= 1.3",
        **result.as_dict(),
        "per_send_ms": result.subject.median / batch * 1e3,
        "floor_per_send_ms": result.baseline.median / batch * 1e3,
        "memory_send_ms": parts.subject.median / batch * 1e3,
        "sqlite_commit_ms": parts.baseline.median / batch * 1e3,
        "bytes_written_per_send": row_bytes,
        "batch": batch,
        "repeats": repeats,
    }


def group_commit_over_memory_send(
    directory: Path, *, groups: int = 16, repeats: int = 15
) -> dict[str, Any]:
    """``encrypt_many`` over ``groups`` groups (one fsync), per send ÷ in-memory send."""
    client = MlsClient.create(
        directory / "many.vault", PASSPHRASE, identity=b"sender", kdf=KDF, engine="mls-rs"
    )
    b = load_binding()
    suite = b.CipherSuite.CURVE25519_AES128
    gids = []
    for i in range(groups):
        gid = client.create_group()
        peer = b.Client(b"p%d" % i, b.generate_signature_keypair(suite), b.client_config_default())
        client.add_members(gid, [bytes(peer.generate_key_package_message().to_bytes())])
        gids.append(gid)
    memory = [_MemoryGroup(2) for _ in range(groups)]
    items = [(gid, PLAINTEXT) for gid in gids]

    def memory_sends() -> None:
        for group in memory:
            group.send()

    try:
        result = measure_ratio(lambda: client.encrypt_many(items), memory_sends, repeats)
        single = measure_ratio(
            _times(lambda: client.encrypt(gids[0], PLAINTEXT), groups), memory_sends, repeats
        )
    finally:
        client.close()
    return {
        "name": "group_commit_16_over_memory_send" if groups == 16 else f"group_commit_{groups}",
        "goal": "<= 2",
        **result.as_dict(),
        "groups": groups,
        "amortized_send_ms": result.subject.median / groups * 1e3,
        "memory_send_ms": result.baseline.median / groups * 1e3,
        "unbatched_durable_send_ms": single.subject.median / groups * 1e3,
        "speedup_over_unbatched": single.subject.median / result.subject.median,
    }


def send_cost_by_group_size(
    directory: Path,
    *,
    sizes: tuple[int, ...] = (2, 10, 50, 100, 200),
    batch: int = 5,
    repeats: int = 9,
) -> dict[str, Any]:
    """Bytes written and time per durable send as the group grows (whole-snapshot writes).

    At each size the durable send is timed alternately with its floor at that size
    (in-memory send of a group as large + one fsync'd commit of as many bytes).
    """
    rows = []
    for members in sizes:
        client, gid = _client_with_group(directory, f"size{members}", members)
        memory = _MemoryGroup(members)
        client.encrypt(gid, PLAINTEXT)
        row_bytes = _snapshot_bytes(client)
        floor_db = _SqliteFloor(directory / f"floor{members}.sqlite", os.urandom(row_bytes))
        try:

            def floor(memory: _MemoryGroup = memory, db: _SqliteFloor = floor_db) -> None:
                memory.send()
                db.commit()

            def send(client: MlsClient = client, gid: bytes = gid) -> None:
                client.encrypt(gid, PLAINTEXT)

            result = measure_ratio(_times(send, batch), _times(floor, batch), repeats)
            memory_only = summarize([_timed(_times(memory.send, batch)) for _ in range(repeats)])
            t0 = time.perf_counter()
            client.update_keys(gid)
            commit_s = time.perf_counter() - t0
        finally:
            floor_db.close()
            client.close()
        rows.append(
            {
                "members": members,
                "bytes_written_per_send": row_bytes,
                "durable_send_ms": result.subject.median / batch * 1e3,
                "floor_ms": result.baseline.median / batch * 1e3,
                "durable_over_floor": result.median,
                "memory_send_ms": memory_only.median / batch * 1e3,
                "update_keys_ms": commit_s * 1e3,
            }
        )
    first, last = rows[0], rows[-1]
    return {
        "name": "send_cost_by_group_size",
        "figure": "bytes_growth",
        "bytes_growth": last["bytes_written_per_send"] / first["bytes_written_per_send"],
        "time_growth": last["durable_send_ms"] / first["durable_send_ms"],
        "rows": rows,
    }


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def durable_process_over_floor(
    directory: Path, *, batch: int = 20, repeats: int = 15
) -> dict[str, Any]:
    """``MlsClient.process`` (state + receipt, barrier) ÷ (in-memory process + one fsync'd
    SQLite commit of as many bytes).  No goal: it shows what the receipt adds."""
    b = load_binding()
    suite = b.CipherSuite.CURVE25519_AES128
    receiver = MlsClient.create(
        directory / "recv.vault", PASSPHRASE, identity=b"r", kdf=KDF, engine="mls-rs"
    )
    sender = b.Client(b"s", b.generate_signature_keypair(suite), b.client_config_default())
    twin = b.Client(b"t", b.generate_signature_keypair(suite), b.client_config_default())
    group = sender.create_group(None)
    kp = b.Message.from_bytes(receiver.generate_key_package())
    out = group.add_members([kp, twin.generate_key_package_message()])
    group.process_incoming_message(out.commit_message)
    gid = receiver.join(bytes(out.welcome_message.to_bytes()))
    memory = twin.join_group(None, out.welcome_message).group
    total = 2 * batch * (repeats + 2)  # + a warm-up round + slack
    stream = iter(
        [bytes(group.encrypt_application_message(PLAINTEXT).to_bytes()) for _ in range(total)]
    )
    receiver.process(gid, next(stream))
    memory.process_incoming_message(b.Message.from_bytes(next(stream)))
    stats = receiver.vault.stats().categories
    row_bytes = stats["mlsrs/v1/group_state"].bytes + stats["mlsrs/v1/receipt"].bytes
    floor_db = _SqliteFloor(directory / "recv-floor.sqlite", os.urandom(row_bytes))
    pending = list(stream)
    mine, theirs = pending[0::2][::-1], pending[1::2][::-1]  # pop() yields them in order
    try:

        def durable() -> None:
            for _ in range(batch):
                receiver.process(gid, mine.pop())

        def floor() -> None:
            for _ in range(batch):
                memory.process_incoming_message(b.Message.from_bytes(theirs.pop()))
                floor_db.commit()

        result = measure_ratio(durable, floor, repeats)
    finally:
        floor_db.close()
        receiver.close()
    return {
        "name": "durable_process_over_floor",
        **result.as_dict(),
        "per_process_ms": result.subject.median / batch * 1e3,
        "floor_per_process_ms": result.baseline.median / batch * 1e3,
        "bytes_written_per_process": row_bytes,
    }


def _pair(directory: Path, engine: EngineName) -> tuple[MlsClient, MlsClient, bytes]:
    """A sender and a receiver in one two-member group, both on ``engine``."""
    sender = MlsClient.create(
        directory / f"lag-a-{engine}.vault", PASSPHRASE, identity=b"a", kdf=KDF, engine=engine
    )
    receiver = MlsClient.create(
        directory / f"lag-b-{engine}.vault", PASSPHRASE, identity=b"b", kdf=KDF, engine=engine
    )
    gid = sender.create_group()
    _, welcome = sender.add_members(gid, [receiver.generate_key_package()])
    receiver.join(welcome)
    return sender, receiver, gid


def async_client_loop_lag(
    directory: Path, engine: EngineName = "native", *, burst: int = 200, repeats: int = 3
) -> list[dict[str, Any]]:
    """Worst event-loop lag while ``AsyncMlsClient`` runs bursts, one result per kind.

    Kinds: ``encrypt`` (``burst`` awaited calls, one durable commit each),
    ``encrypt_many`` (one call of ``burst`` messages, one commit) and
    ``process_many`` (the receiver takes ``burst`` messages in one call).  For each,
    per repeat: the burst awaited through ``AsyncMlsClient`` (the figure), the ticker
    alone for as long (``idle_max_lag_ms``); first repeat only, the same burst called
    on the loop through the synchronous client (``blocking_max_lag_ms``), the stall
    the worker thread avoids.
    """
    sender, receiver, gid = _pair(directory, engine)
    a, b = AsyncMlsClient(sender), AsyncMlsClient(receiver)
    items = [(gid, PLAINTEXT)] * burst
    kinds = ("encrypt", "encrypt_many", "process_many")
    seen: dict[str, dict[str, list[float]]] = {
        kind: {"ours": [], "idle": [], "blocking": [], "s": []} for kind in kinds
    }

    async def awaited(kind: str, inbox: list[bytes]) -> list[bytes]:
        """The burst through AsyncMlsClient; returns the messages the receiver must see."""
        if kind == "encrypt":
            return [await a.encrypt(gid, PLAINTEXT) for _ in range(burst)]
        if kind == "encrypt_many":
            return await a.encrypt_many(items)
        await b.process_many([(gid, m) for m in inbox])
        return []

    def on_loop(kind: str, inbox: list[bytes]) -> list[bytes]:
        """The same burst through the synchronous client, called on the loop."""
        if kind == "encrypt":
            return [sender.encrypt(gid, PLAINTEXT) for _ in range(burst)]
        if kind == "encrypt_many":
            return sender.encrypt_many(items)
        receiver.process_many([(gid, m) for m in inbox])
        return []

    async def measure(kind: str, repeat: int) -> None:
        inbox = sender.encrypt_many(items) if kind == "process_many" else []
        sent: list[bytes] = []

        async def burst_call() -> None:
            sent.extend(await awaited(kind, inbox))

        t0 = time.perf_counter()
        seen[kind]["ours"].append(max(await loop_lags_during(burst_call)))
        took = time.perf_counter() - t0
        seen[kind]["s"].append(took)
        seen[kind]["idle"].append(max(await loop_lags_during(lambda: asyncio.sleep(took))))
        if repeat == 0:
            inbox = sender.encrypt_many(items) if kind == "process_many" else []
            blocked = await loop_lags_during(lambda: sent.extend(on_loop(kind, inbox)))
            seen[kind]["blocking"].append(max(blocked))
        # The receiver must see every message of the group to stay in step.
        receiver.process_many([(gid, m) for m in sent])

    async def main() -> None:
        for repeat in range(repeats):
            for kind in kinds:
                await measure(kind, repeat)

    try:
        asyncio.run(main())
    finally:
        sender.close()
        receiver.close()
    results = []
    for kind in kinds:
        ours, idle = seen[kind]["ours"], seen[kind]["idle"]
        added = [o - i for o, i in zip(ours, idle, strict=True)]
        results.append(
            {
                "name": f"async_client_loop_lag_{kind}_{engine.replace('-', '')}",
                "engine": engine,
                "burst": burst,
                "figure": "max_lag_ms",
                "max_lag_ms": statistics.median(ours) * 1e3,
                "max_lag_ms_min": min(ours) * 1e3,
                "max_lag_ms_max": max(ours) * 1e3,
                "idle_max_lag_ms": statistics.median(idle) * 1e3,
                "added_max_lag_ms": statistics.median(added) * 1e3,
                "blocking_max_lag_ms": seen[kind]["blocking"][0] * 1e3,
                "burst_s": statistics.median(seen[kind]["s"]),
                "goal": "< 10 ms",
            }
        )
    return results


def async_client_pacing_cost(
    directory: Path, engine: EngineName = "native", *, burst: int = 200, repeats: int = 12
) -> dict[str, Any]:
    """``AsyncMlsClient.encrypt_many`` ÷ the same call in a worker that never pauses.

    Both sides run in ``asyncio.to_thread`` on a loop with nothing else to do, timed
    back to back (one untimed round first): the baseline calls the synchronous client
    there, so the only difference is the pauses ``AsyncMlsClient`` makes its worker
    take for the event loop's sake.
    """
    where = directory / f"pacing-{engine}"
    where.mkdir()
    sender, receiver, gid = _pair(where, engine)
    client = AsyncMlsClient(sender)
    items = [(gid, PLAINTEXT)] * burst
    paced: list[float] = []
    bare: list[float] = []

    async def main() -> None:
        for round_ in range(repeats + 1):
            t0 = time.perf_counter()
            await client.encrypt_many(items)
            t1 = time.perf_counter()
            await asyncio.to_thread(sender.encrypt_many, items)
            t2 = time.perf_counter()
            if round_:
                paced.append(t1 - t0)
                bare.append(t2 - t1)

    try:
        asyncio.run(main())
    finally:
        sender.close()
        receiver.close()
    ratios = [p / b for p, b in zip(paced, bare, strict=True)]
    result = PairedRatio(
        statistics.median(ratios), min(ratios), max(ratios), summarize(paced), summarize(bare)
    )
    return {
        "name": f"async_client_pacing_cost_{engine.replace('-', '')}",
        "engine": engine,
        "goal": "<= 1.15",
        **result.as_dict(),
        "paced_ms": result.subject.median * 1e3,
        "unpaced_ms": result.baseline.median * 1e3,
        "burst": burst,
        "repeats": repeats,
    }


def run(quick: bool = False, directory: Path | None = None) -> list[dict[str, Any]]:
    """Every client benchmark, as plain dicts (``quick``: small sizes, seconds)."""
    with tempfile.TemporaryDirectory(prefix="client-bench-", dir=directory) as tmp:
        base = Path(tmp)
        if quick:
            return [
                durable_send_over_floor(base, batch=5, repeats=5),
                durable_process_over_floor(base, batch=5, repeats=5),
                group_commit_over_memory_send(base, repeats=5),
                send_cost_by_group_size(base, sizes=(2, 20), batch=3, repeats=3),
                *async_client_loop_lag(base, burst=50, repeats=1),
                async_client_pacing_cost(base, burst=50, repeats=3),
            ]
        return [
            durable_send_over_floor(base),
            durable_process_over_floor(base),
            group_commit_over_memory_send(base),
            send_cost_by_group_size(base),
            *async_client_loop_lag(base),
            *async_client_loop_lag(base, "mls-rs"),
            async_client_pacing_cost(base),
        ]


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--dir", type=Path, help="where to put the vaults (default: $TMPDIR)")
    args = parser.parse_args()
    results = run(args.quick, args.dir)
    emit_results(results, args.json)


if __name__ == "__main__":
    main()
