"""Benchmarks of the native MLS engine, against mls-rs measured in the same run.

Run from the repository root:

* ``python -m bench.native_bench`` — native vs mls-rs (suite 0x0001), printed as JSON:

  - ``messages``: N application messages encrypted by one member and decrypted by the
    other, both engines in memory (no vault), time ratio native ÷ mls-rs;
  - ``create_add``: create a group and add M members in one commit (key packages made
    beforehand, untimed), time ratio native ÷ mls-rs;
  - ``bytes_per_message``: in a group of K members, the bytes (row keys + values) each
    application message hands to the vault — native: the rows the engine changed in
    ``GranularStorage``; mls-rs: what ``MlsClient`` persists, i.e. the snapshot written
    by ``write_to_storage`` through ``mls.mlsrs.VaultGroupStateStorage``.

* ``python -m bench.native_bench --micro`` — the part-1 micro-benchmark: operations per
  second of message protection and tree operations per cipher suite.

Numbers depend on the machine; only the ratios measured in one run are claims.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from bench.common import measure_ratio, summarize
from keystore import profiles
from mls.client import MlsClient
from mls.mlsrs import load_binding, new_group_state_storage
from mls.native.engine import NativeEngine
from mls.native.framing import FramedContent, Sender, SenderType, WireFormat
from mls.native.group_context import GroupContext
from mls.native.leaf_node import (
    Capabilities,
    Credential,
    CredentialType,
    LeafNode,
    LeafNodeSource,
    Lifetime,
)
from mls.native.protection import protect_private, sign_content, unprotect_private
from mls.native.secret_tree import SecretTree
from mls.native.suites import SUITES, CipherSuite
from mls.native.tree import RatchetTree
from mls.native.treekem import TreePrivate, create_update_path, process_update_path
from mls.storage import GranularStorage


def _rate(fn: Callable[[], object], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        count += 1
    return count / (time.perf_counter() - start)


def _leaf(cs: CipherSuite, i: int) -> tuple[LeafNode, bytes, bytes]:
    sig_priv, sig_pub = cs.generate_signature_key_pair()
    enc_priv, enc_pub = cs.hpke.generate_key_pair()
    leaf = LeafNode(
        enc_pub,
        sig_pub,
        Credential(CredentialType.BASIC, identity=f"m{i}".encode()),
        Capabilities((1,), (cs.suite_id,), (), (), (1,)),
        LeafNodeSource.KEY_PACKAGE,
        Lifetime(0, 2**63),
        b"",
        (),
        b"",
    ).signed(cs, sig_priv, None, None)
    return leaf, sig_priv, enc_priv


def bench_suite(cs: CipherSuite, members: int, seconds: float) -> None:
    """Print rates for PrivateMessage round trips and UpdatePath create/process."""
    ctx = GroupContext(cs.suite_id, b"bench", 1, b"\x00" * cs.hash_size, b"")
    sig_priv, sig_pub = cs.generate_signature_key_pair()
    framed = FramedContent(b"bench", 1, Sender(SenderType.MEMBER, 0), b"", b"x" * 256)
    auth = sign_content(cs, WireFormat.PRIVATE_MESSAGE, framed, sig_priv, ctx)
    tree0 = SecretTree.create(cs, b"\x01" * cs.hash_size, members)
    state = {"send": tree0, "recv": tree0}

    def send_recv() -> None:
        msg, state["send"] = protect_private(cs, auth, state["send"], b"\x02" * cs.hash_size)
        _, state["recv"] = unprotect_private(
            cs, msg, state["recv"], b"\x02" * cs.hash_size, ctx, {0: sig_pub}
        )

    leaves = [_leaf(cs, i) for i in range(members)]
    tree = RatchetTree((leaves[0][0],))
    for leaf, _, _ in leaves[1:]:
        tree, _ = tree.add_leaf(leaf)
    receiver = TreePrivate(members - 1, leaves[-1][2], {})
    path, _, _ = create_update_path(cs, tree, 0, leaves[0][1], ctx)

    rates = {
        "private msg round trip": _rate(send_recv, seconds),
        "tree hash": _rate(lambda: tree.tree_hash(cs), seconds),
        "UpdatePath create": _rate(
            lambda: create_update_path(cs, tree, 0, leaves[0][1], ctx), seconds
        ),
        "UpdatePath process": _rate(
            lambda: process_update_path(cs, tree, 0, path, ctx, receiver), seconds
        ),
    }
    for name, rate in rates.items():
        print(f"suite {cs.suite_id} ({members} members) {name:>24}: {rate:10.1f} ops/s")


# ---------------------------------------------------------------------------- vs mls-rs

_GID = b"bench-group"
#: Bench vaults hold throw-away keys; the passphrase KDF is not what is measured.
_KDF = profiles.INSECURE_FOR_TESTS_ONLY


def _native(name: str) -> NativeEngine:
    return NativeEngine.create(GranularStorage(), name.encode())


def rs_client(binding: Any, name: str, storage: GranularStorage | None = None) -> Any:
    """An mls-rs client (suite 1); with ``storage``, its groups persist into it."""
    keypair = binding.generate_signature_keypair(binding.CipherSuite.CURVE25519_AES128)
    if storage is None:
        config = binding.client_config_default()
    else:
        config = binding.ClientConfig(
            group_state_storage=new_group_state_storage(storage), use_ratchet_tree_extension=True
        )
    return binding.Client(name.encode(), keypair, config)


def _rs_key_package(binding: Any, name: str) -> bytes:
    return bytes(rs_client(binding, name).generate_key_package_message().to_bytes())


def _native_pair(members: int) -> tuple[NativeEngine, NativeEngine]:
    """A native group of ``members``: the first two joined, the rest only in the tree."""
    alice, bob = _native("alice"), _native("bob")
    alice.create_group(_GID)
    kps = [bob.generate_key_package()] + [
        _native(f"m{i}").generate_key_package() for i in range(members - 2)
    ]
    _, welcome = alice.commit(_GID, add=kps)
    assert welcome is not None
    bob.join(welcome)
    return alice, bob


def _rs_pair(
    binding: Any, members: int, storages: tuple[GranularStorage, GranularStorage] | None = None
) -> tuple[Any, Any]:
    """The same group on mls-rs; with ``storages``, both clients persist through them."""
    alice = rs_client(binding, "alice", storages[0] if storages else None)
    bob = rs_client(binding, "bob", storages[1] if storages else None)
    group = alice.create_group(_GID)
    kps = [bob.generate_key_package_message()] + [
        rs_client(binding, f"m{i}").generate_key_package_message() for i in range(members - 2)
    ]
    out = group.add_members(kps)
    group.process_incoming_message(out.commit_message)
    joined = bob.join_group(None, out.welcome_message).group
    return group, joined


def messages(count: int = 1000, repeats: int = 3) -> dict[str, Any]:
    """``count`` application messages encrypted and decrypted, native ÷ mls-rs time."""
    binding = load_binding()
    n_alice, n_bob = _native_pair(2)
    r_alice, r_bob = _rs_pair(binding, 2)
    payload = b"x" * 100

    def native() -> None:
        for _ in range(count):
            n_bob.process(_GID, n_alice.encrypt(_GID, payload))
            n_alice.storage.drain_storage_events()
            n_bob.storage.drain_storage_events()

    def mls_rs() -> None:
        for _ in range(count):
            r_bob.process_incoming_message(r_alice.encrypt_application_message(payload))

    result = measure_ratio(native, mls_rs, repeats)
    return {"messages": count, "time_ratio_native_over_mls_rs": result.as_dict()}


def create_add(members: int = 50, repeats: int = 3) -> dict[str, Any]:
    """Create a group and add ``members`` in one commit, native ÷ mls-rs time."""
    binding = load_binding()
    native_times: list[float] = []
    rs_times: list[float] = []
    for _ in range(repeats):
        creator = _native("creator")
        n_kps = [_native(f"m{i}").generate_key_package() for i in range(members)]
        rs_creator = rs_client(binding, "creator")
        r_kps = [
            rs_client(binding, f"m{i}").generate_key_package_message() for i in range(members)
        ]
        t0 = time.perf_counter()
        creator.create_group(_GID)
        creator.commit(_GID, add=n_kps)
        native_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        group = rs_creator.create_group(_GID)
        out = group.add_members(r_kps)
        group.process_incoming_message(out.commit_message)
        rs_times.append(time.perf_counter() - t0)
    ratios = [n / r for n, r in zip(native_times, rs_times, strict=True)]
    return {
        "members_added": members,
        "native": summarize(native_times).as_dict(),
        "mls_rs": summarize(rs_times).as_dict(),
        "time_ratio_native_over_mls_rs": summarize(ratios).median,
    }


def commits_with_path(members: int = 100, commits: int = 100) -> dict[str, Any]:
    """``commits`` empty commits (each with an UpdatePath) in a ``members`` group, made by
    one member and processed by another: native ÷ mls-rs time, same run."""
    binding = load_binding()
    n_alice, n_bob = _native_pair(members)
    r_alice, r_bob = _rs_pair(binding, members)

    def native() -> None:
        for _ in range(commits):
            commit, _ = n_alice.commit(_GID, force_path=True)
            n_bob.process(_GID, commit)
            n_alice.storage.drain_storage_events()
            n_bob.storage.drain_storage_events()

    def mls_rs() -> None:
        for _ in range(commits):
            out = r_alice.commit()
            r_alice.process_incoming_message(out.commit_message)
            r_bob.process_incoming_message(out.commit_message)

    t0 = time.perf_counter()
    native()
    t_native = time.perf_counter() - t0
    t0 = time.perf_counter()
    mls_rs()
    t_rs = time.perf_counter() - t0
    return {
        "members": members,
        "commits": commits,
        "native_s": t_native,
        "mls_rs_s": t_rs,
        "time_ratio_native_over_mls_rs": t_native / t_rs,
        "goal": "<= 5",
    }


def reopen_many_groups(groups: int = 50) -> dict[str, Any]:
    """Unlock + rehydrate + first message for a client in ``groups`` groups, through the
    public client API on both engines (same KDF, same run): native ÷ mls-rs time."""
    out: dict[str, Any] = {"groups": groups}
    times: dict[str, float] = {}
    for engine in ("native", "mls-rs"):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            if engine == "native":
                client = MlsClient.create(
                    folder / "c.vault", "bench", identity=b"c", kdf=_KDF, engine="native"
                )
            else:
                client = MlsClient.create(
                    folder / "c.vault", "bench", identity=b"c", kdf=_KDF, engine="mls-rs"
                )
            gids = [client.create_group() for _ in range(groups)]
            client.close()
            t0 = time.perf_counter()
            reopened = MlsClient.open(folder / "c.vault", "bench")
            reopened.encrypt(gids[-1], b"first message after the restart")
            times[engine] = time.perf_counter() - t0
            reopened.close()
    out["native_s"] = times["native"]
    out["mls_rs_s"] = times["mls-rs"]
    out["time_ratio_native_over_mls_rs"] = times["native"] / times["mls-rs"]
    return out


def _event_bytes(storage: GranularStorage) -> int:
    return sum(len(e.key) + len(e.value or b"") for e in storage.drain_storage_events())


def bytes_per_message(members: int = 200, count: int = 50) -> dict[str, Any]:
    """Bytes handed to the vault per application message in a ``members`` group."""
    binding = load_binding()
    n_alice, n_bob = _native_pair(members)
    n_alice.storage.drain_storage_events()
    first = n_alice.encrypt(_GID, b"first")
    native_first = _event_bytes(n_alice.storage)
    n_bob.process(_GID, first)
    n_bob.storage.drain_storage_events()
    native_send = native_recv = 0
    for _ in range(count):
        msg = n_alice.encrypt(_GID, b"m")
        native_send += _event_bytes(n_alice.storage)
        n_bob.process(_GID, msg)
        native_recv += _event_bytes(n_bob.storage)
    storages = (GranularStorage(), GranularStorage())
    r_alice, r_bob = _rs_pair(binding, members, storages)
    for group, storage in ((r_alice, storages[0]), (r_bob, storages[1])):
        group.write_to_storage()
        storage.drain_storage_events()
    rs_send = rs_recv = 0
    for _ in range(count):
        msg = r_alice.encrypt_application_message(b"m")
        r_alice.write_to_storage()
        rs_send += _event_bytes(storages[0])
        r_bob.process_incoming_message(msg)
        r_bob.write_to_storage()
        rs_recv += _event_bytes(storages[1])
    per = {
        "native_sender": native_send / count,
        "native_receiver": native_recv / count,
        "mls_rs_sender": rs_send / count,
        "mls_rs_receiver": rs_recv / count,
    }
    return {
        "members": members,
        "messages": count,
        "bytes_per_message": per,
        "native_first_message_of_epoch_sender": native_first,
        "reduction_sender": per["mls_rs_sender"] / per["native_sender"],
        "reduction_receiver": per["mls_rs_receiver"] / per["native_receiver"],
    }


def _count_vault_bytes(client: MlsClient) -> list[int]:
    """Make the client's vault record the bytes of every batch it applies."""
    vault = client.vault
    applied: list[int] = []
    real = vault.apply

    def apply(changes: Iterable[Any], *, yield_gil: bool = False) -> int:
        batch = list(changes)
        applied.append(sum(len(c.key) + len(c.value or b"") for c in batch))
        return real(batch, yield_gil=yield_gil)

    vault.apply = apply  # type: ignore[method-assign]
    return applied


def client_bytes_per_message(members: int = 200, count: int = 20) -> dict[str, Any]:
    """Bytes each application message makes ``Vault.apply`` write, through the clients.

    End to end: ``MlsClient`` on the native engine vs on mls-rs, message receipts included,
    both members of a ``members`` group whose other leaves come from bare engines.
    """
    binding = load_binding()
    out: dict[str, Any] = {"members": members, "messages": count}
    with tempfile.TemporaryDirectory() as tmp:
        engines: tuple[tuple[str, Literal["native", "mls-rs"]], ...] = (
            ("native", "native"),
            ("mls_rs", "mls-rs"),
        )
        for name, engine in engines:
            alice = MlsClient.create(
                f"{tmp}/{name}-a", "bench", identity=b"alice", kdf=_KDF, engine=engine
            )
            bob = MlsClient.create(
                f"{tmp}/{name}-b", "bench", identity=b"bob", kdf=_KDF, engine=engine
            )
            with alice, bob:
                alice.create_group(_GID)
                if engine == "native":
                    others = [_native(f"m{i}").generate_key_package() for i in range(members - 2)]
                else:
                    others = [
                        bytes(
                            rs_client(binding, f"m{i}").generate_key_package_message().to_bytes()
                        )
                        for i in range(members - 2)
                    ]
                _, welcome = alice.add_members(_GID, [bob.generate_key_package(), *others])
                bob.join(welcome)
                bob.process(_GID, alice.encrypt(_GID, b"first"))
                sent, received = _count_vault_bytes(alice), _count_vault_bytes(bob)
                for _ in range(count):
                    bob.process(_GID, alice.encrypt(_GID, b"m"))
                out[f"{name}_sender"] = sum(sent) / count
                out[f"{name}_receiver"] = sum(received) / count
    out["reduction_sender"] = out["mls_rs_sender"] / out["native_sender"]
    out["reduction_receiver"] = out["mls_rs_receiver"] / out["native_receiver"]
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """All native-vs-mls-rs benchmarks; ``quick`` shrinks them for a smoke run."""
    if quick:
        return {
            "messages": messages(100, 2),
            "create_add": create_add(10, 2),
            "bytes_per_message": bytes_per_message(20, 10),
            "client_bytes_per_message": client_bytes_per_message(20, 5),
            "commits_with_path": commits_with_path(10, 5),
            "reopen_many_groups": reopen_many_groups(5),
        }
    return {
        "messages": messages(),
        "create_add": create_add(),
        "bytes_per_message": bytes_per_message(),
        "client_bytes_per_message": client_bytes_per_message(),
        "commits_with_path": commits_with_path(),
        "reopen_many_groups": reopen_many_groups(),
    }


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--micro", action="store_true", help="part-1 micro-benchmark")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--suite", type=int, action="append")
    args = parser.parse_args()
    if args.micro:
        for suite_id in args.suite or sorted(SUITES):
            bench_suite(SUITES[suite_id], args.members, args.seconds)
        return
    results = run(args.quick)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
