"""Large groups: the native engine against mls-rs in the same run, at 1k, 5k and 10k members.

For each group size N (suite 0x0001, every member but the creator a bare key package):

* ``add_all`` — the creator adds N-1 members in one commit (and applies it);
* ``join`` — one member joins from that Welcome (ratchet tree in the GroupInfo);
* ``make_commit`` — a member makes an empty commit with an UpdatePath (and applies it);
* ``process_commit`` — another member processes that commit.  Right after the add-all the
  committer's copath is blank, so this commit encrypts to about n members and is O(n)
  bytes, for both engines;
* ``make_commit_steady``, ``process_commit_steady`` — the same once one member in each
  subtree of the committer's copath has committed (log2 n of them): the commit carries
  O(log n) ciphertexts, the case of a group whose members update now and then;
* ``message`` — one application message encrypted and decrypted;
* ``bytes_per_commit`` (and ``_steady``) — row bytes (row key + value) a processed commit
  hands to the vault: native, the rows the engine changed in ``GranularStorage``; mls-rs, what its
  ``write_to_storage`` writes through ``mls.mlsrs.VaultGroupStateStorage``;
* ``bytes_per_message`` — the same for a processed application message (steady state:
  not the sender's first message of the epoch, which also stores the secret-tree nodes).

Times are medians over ``rounds`` commits (and ``messages`` messages); every figure is a
native ÷ mls-rs ratio or a byte count measured in this run.  Native times include writing
the changed rows to ``GranularStorage`` (in memory); mls-rs times exclude its
``write_to_storage`` snapshot, which is taken afterwards, untimed, to count its bytes — so
the time ratios are conservative for the native engine.  Run by hand::

    python -m bench.large_group_bench --sizes 1000 5000 10000 --json out.json \\
        --plot docs/img/large_groups.png

``python -m bench --suite large`` runs the CI size (200 members; ``--quick``: 100).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.native_bench import rs_client
from mls.mlsrs import load_binding
from mls.native.engine import NativeEngine
from mls.storage import GranularStorage

_GID = b"large-group"
OPS = (
    "add_all",
    "join",
    "make_commit",
    "process_commit",
    "make_commit_steady",
    "process_commit_steady",
    "message",
)
BYTES = ("bytes_per_commit", "bytes_per_commit_steady", "bytes_per_message")


#: The add-all commit and the Welcome of a 10,000-member group are several MiB: above the
#: engine's default message size limit, which an application with such groups raises.
_MAX_MESSAGE = 64 * 1024 * 1024


def _native(name: str) -> NativeEngine:
    storage = GranularStorage()
    NativeEngine.create(storage, name.encode())
    return NativeEngine(storage, max_message_size=_MAX_MESSAGE)


def _event_bytes(storage: GranularStorage) -> int:
    return sum(len(e.key) + len(e.value or b"") for e in storage.drain_storage_events())


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _fillers(members: int) -> list[int]:
    """Leaves 4, 8, 16, ...: one member in each subtree of Carol's (leaf 2) copath above
    level 1.  Once each of them and Alice (leaves 0-1) has committed with a path, every
    copath node of Carol is non-blank and her UpdatePath carries O(log n) ciphertexts."""
    return [1 << k for k in range(2, members.bit_length()) if 1 << k < members]


class _Round:
    """Timings and bytes of commits made by one member and processed by Bob."""

    def __init__(self) -> None:
        self.makes: list[float] = []
        self.processes: list[float] = []
        self.bytes: list[int] = []

    def medians(self) -> tuple[float, float, float]:
        return (
            statistics.median(self.makes),
            statistics.median(self.processes),
            statistics.median(self.bytes) if self.bytes else 0.0,
        )


def _results(
    t_add: float,
    t_join: float,
    blank: _Round,
    steady: _Round,
    msg_times: list[float],
    msg_bytes: list[int],
) -> dict[str, Any]:
    """One engine's figures, under the same names for both engines."""
    make, process, commit_bytes = blank.medians()
    make_steady, process_steady, steady_bytes = steady.medians()
    return {
        "add_all": t_add,
        "join": t_join,
        "make_commit": make,
        "process_commit": process,
        "make_commit_steady": make_steady,
        "process_commit_steady": process_steady,
        "message": statistics.median(msg_times),
        "bytes_per_commit": commit_bytes,
        "bytes_per_commit_steady": steady_bytes,
        "bytes_per_message": statistics.median(msg_bytes),
    }


def _native_run(members: int, rounds: int, messages: int) -> dict[str, Any]:
    alice, bob, carol = _native("alice"), _native("bob"), _native("carol")
    kps = [bob.generate_key_package(), carol.generate_key_package()]
    fillers: list[NativeEngine] = []
    filler_leaves = set(_fillers(members))
    for leaf in range(3, members):
        engine = _native(f"m{leaf}")
        kps.append(engine.generate_key_package())
        if leaf in filler_leaves:
            fillers.append(engine)
    alice.create_group(_GID)
    t_add, (_, welcome) = _timed(lambda: alice.commit(_GID, add=kps))
    t_join, _ = _timed(lambda: bob.join(welcome))
    for engine in (carol, *fillers):
        engine.join(welcome)
    everyone = [alice, bob, carol, *fillers]
    for engine in everyone:
        engine.storage.drain_storage_events()

    def commit_by(committer: NativeEngine, out: _Round | None) -> None:
        t, (commit, _) = _timed(lambda: committer.commit(_GID, force_path=True))
        t0 = time.perf_counter()
        bob.process(_GID, commit)
        t_process = time.perf_counter() - t0
        if out is not None:
            out.makes.append(t)
            out.processes.append(t_process)
            out.bytes.append(_event_bytes(bob.storage))
        for engine in everyone:
            if engine is not committer and engine is not bob:
                engine.process(_GID, commit)
            engine.storage.drain_storage_events()

    blank, steady = _Round(), _Round()
    for _ in range(rounds):
        commit_by(carol, blank)
    for committer in (alice, *fillers):
        commit_by(committer, None)
    for _ in range(rounds):
        commit_by(carol, steady)
    bob.process(_GID, alice.encrypt(_GID, b"first"))  # the epoch's secret-tree nodes
    for engine in everyone:
        engine.storage.drain_storage_events()
    msg_times, msg_bytes = [], []
    for _ in range(messages):
        t0 = time.perf_counter()
        bob.process(_GID, alice.encrypt(_GID, b"m" * 32))
        msg_times.append(time.perf_counter() - t0)
        msg_bytes.append(_event_bytes(bob.storage))
        alice.storage.drain_storage_events()
    return _results(t_add, t_join, blank, steady, msg_times, msg_bytes)


def _rs_run(members: int, rounds: int, messages: int) -> dict[str, Any]:
    binding = load_binding()
    storage = GranularStorage()
    alice = rs_client(binding, "alice")
    bob = rs_client(binding, "bob", storage)
    carol = rs_client(binding, "carol")
    kps = [bob.generate_key_package_message(), carol.generate_key_package_message()]
    fillers = []
    filler_leaves = set(_fillers(members))
    for leaf in range(3, members):
        client = rs_client(binding, f"m{leaf}")
        kps.append(client.generate_key_package_message())
        if leaf in filler_leaves:
            fillers.append(client)
    group = alice.create_group(_GID)

    def add_all() -> Any:
        out = group.add_members(kps)
        group.process_incoming_message(out.commit_message)
        return out

    t_add, out = _timed(add_all)
    t_join, joined = _timed(lambda: bob.join_group(None, out.welcome_message))
    b_group = joined.group
    c_group = carol.join_group(None, out.welcome_message).group
    f_groups = [f.join_group(None, out.welcome_message).group for f in fillers]
    everyone = [group, b_group, c_group, *f_groups]
    b_group.write_to_storage()
    storage.drain_storage_events()

    def commit_by(committer: Any, out: _Round | None) -> None:
        def make() -> Any:
            made = committer.commit()
            committer.process_incoming_message(made.commit_message)
            return made

        t, made = _timed(make)
        t0 = time.perf_counter()
        b_group.process_incoming_message(made.commit_message)
        t_process = time.perf_counter() - t0
        if out is not None:
            out.makes.append(t)
            out.processes.append(t_process)
            b_group.write_to_storage()  # untimed: mls-rs persists a snapshot, on request
            out.bytes.append(_event_bytes(storage))
        for member in everyone:
            if member is not committer and member is not b_group:
                member.process_incoming_message(made.commit_message)

    blank, steady = _Round(), _Round()
    for _ in range(rounds):
        commit_by(c_group, blank)
    for committer in (group, *f_groups):
        commit_by(committer, None)
    for _ in range(rounds):
        commit_by(c_group, steady)
    b_group.process_incoming_message(group.encrypt_application_message(b"first"))
    b_group.write_to_storage()
    storage.drain_storage_events()
    msg_times, msg_bytes = [], []
    for _ in range(messages):
        t0 = time.perf_counter()
        b_group.process_incoming_message(group.encrypt_application_message(b"m" * 32))
        msg_times.append(time.perf_counter() - t0)
        b_group.write_to_storage()
        msg_bytes.append(_event_bytes(storage))
    return _results(t_add, t_join, blank, steady, msg_times, msg_bytes)


#: The goals, per figure; ``bytes_per_commit``'s depends on the size (10 KB at 1k members).
_GOALS = {
    "process_commit": "<= 3",
    "process_commit_steady": "<= 3",
    "join": "<= 3",
    "bytes_per_message": "<= 200",
}


def measure(members: int, rounds: int = 5, messages: int = 20) -> list[dict[str, Any]]:
    """Every figure at one group size, both engines in this run."""
    native = _native_run(members, rounds, messages)
    rs = _rs_run(members, rounds, messages)
    out: list[dict[str, Any]] = []
    for op in OPS:
        out.append(
            {
                "name": f"large_{op}_{members}",
                "members": members,
                "op": op,
                "native_s": native[op],
                "mls_rs_s": rs[op],
                "ratio": native[op] / rs[op],
                "goal": _GOALS.get(op),
            }
        )
    commit_goal = "<= 10000" if members <= 1000 else "<= 30000"  # 10 KB at 1k, 3x at 10k
    for op in BYTES:
        out.append(
            {
                "name": f"large_{op}_{members}",
                "members": members,
                "op": op,
                "figure": "native_bytes",
                "native_bytes": native[op],
                "mls_rs_bytes": rs[op],
                "goal": _GOALS[op] if op == "bytes_per_message" else commit_goal,
            }
        )
    return out


def run(quick: bool = False) -> list[dict[str, Any]]:
    """The harness entry point: one CI-sized group (``quick``: a smaller one)."""
    return measure(100 if quick else 200, rounds=3, messages=10)


def plot(results: Sequence[dict[str, Any]], out: Path) -> Path:
    """Cost vs members, both engines (log-log), one panel per operation, and bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 5, figsize=(20, 7.5), dpi=100)
    panels = [*OPS, *BYTES]
    for ax, op in zip(axes.flat, panels, strict=False):
        points = sorted((r for r in results if r["op"] == op), key=lambda r: r["members"])
        xs = [r["members"] for r in points]
        if op.startswith("bytes"):
            ax.plot(xs, [r["native_bytes"] for r in points], "s-", label="native")
            ax.plot(xs, [r["mls_rs_bytes"] for r in points], "o-", label="mls-rs")
            ax.set_ylabel("bytes to the vault")
        else:
            ax.plot(xs, [r["native_s"] * 1e3 for r in points], "s-", label="native")
            ax.plot(xs, [r["mls_rs_s"] * 1e3 for r in points], "o-", label="mls-rs")
            ax.set_ylabel("ms")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("members")
        ax.set_title(op.replace("_", " "))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Large groups: native engine vs mls-rs, same run (suite 0x0001)")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (sizes by hand; see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="write a PNG plot here")
    args = parser.parse_args(argv)
    results: list[dict[str, Any]] = []
    for members in args.sizes:
        results += measure(members, args.rounds, args.messages)
        for r in results[-len(OPS) - len(BYTES) :]:
            print(json.dumps(r), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if args.plot is not None:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
