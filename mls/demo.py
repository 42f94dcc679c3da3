"""``mls-keystore demo DIR``: two (then three) MLS clients that survive restarts.

What it shows, end to end on a real MLS engine (the native one by default, or mls-rs
with ``--engine mls-rs``):

1. In this process, Alice and Bob each get a vault in ``DIR``; Alice creates a group,
   adds Bob, and they exchange messages.  Both clients are closed.
2. Alice, Bob and then Carol each run in a *fresh process* that reopens its vault and
   carries on: messages both ways, a key update, Carol added and then removed.
3. A report: per-step timings, rows per category, vault sizes, and a scan proving that
   no plaintext message and no group id appears in any vault file (or its ``-wal``).

Passphrases come from ``--passphrase-file``, the environment variable
``MLS_KEYSTORE_PASSPHRASE``, or a prompt (``--prompt``); otherwise a random one is
generated for the run and never shown (the demo vaults then cannot be reopened later).
Messages are never printed, only their sizes.  Existing files are never touched: the
demo refuses a ``DIR`` that already holds its vaults.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keystore import KeystoreError, Vault, profiles
from keystore.profiles import KdfParameters
from mls.client import Engine, MlsClient, Received
from mls.errors import MlsError

__all__ = ["main"]

PASSPHRASE_ENV = "MLS_KEYSTORE_PASSPHRASE"
NAMES = ("alice", "bob", "carol")
_WORKER_FLAG = "--worker"


@dataclass
class _Step:
    actor: str
    action: str
    seconds: float
    out_bytes: int


@dataclass
class _Run:
    """What the demo observed, for the report."""

    steps: list[_Step] = field(default_factory=list)
    plaintexts: list[bytes] = field(default_factory=list)
    group_id: bytes = b""
    live_scan: tuple[list[tuple[str, int]], list[str]] = ([], [])

    def record(self, actor: str, action: str, seconds: float, out: Any) -> None:
        size = (
            sum(len(x) for x in out)
            if isinstance(out, tuple)
            else (len(out) if isinstance(out, bytes) else 0)
        )
        self.steps.append(_Step(actor, action, seconds, size))


# ---------------------------------------------------------------------------- worker


def _worker(vault: str) -> int:
    """A client in its own process, driven by JSON lines on stdin (one answer per line)."""
    passphrase = os.environ[PASSPHRASE_ENV]
    client: MlsClient | None = None
    h = bytes.fromhex

    def run(op: str, args: list[Any]) -> Any:
        nonlocal client
        if op == "open":
            client = MlsClient.open(vault, passphrase)
            return None
        if op == "create":
            kdf = profiles.by_name(args[1])
            client = _create(Path(vault), passphrase, h(args[0]), kdf, args[2])
            return None
        assert client is not None
        calls: dict[str, Callable[..., Any]] = {
            "kp": client.generate_key_package,
            "add": lambda gid, kp: client.add_members(h(gid), [h(kp)]),
            "join": lambda w: client.join(h(w)),
            "encrypt": lambda gid, m: client.encrypt(h(gid), h(m)),
            "process": lambda gid, m: client.process(h(gid), h(m)),
            "update": lambda gid: client.update_keys(h(gid)),
            "remove": lambda gid, who: client.remove_members(h(gid), [h(who)]),
        }
        return calls[op](*args)

    for line in sys.stdin:
        op, *args = json.loads(line)
        start = time.perf_counter()
        try:
            result = run(op, args)
        except (KeystoreError, MlsError) as exc:
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
            continue
        elapsed = time.perf_counter() - start
        print(json.dumps({"ok": _encode(result), "seconds": elapsed}), flush=True)
    if client is not None:
        client.close()
    return 0


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    if isinstance(value, Received):
        return {
            "data": _encode(value.data),
            "sender": _encode(value.sender),
            "removed": value.removed,
        }
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, str):
        return bytes.fromhex(value)
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)
    return value


class _Process:
    """The parent's handle on one worker process."""

    def __init__(self, name: str, vault: Path, passphrase: str, run: _Run):
        self.name = name
        self.run = run
        # The worker must import this very package, installed or not.
        root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, **{PASSPHRASE_ENV: passphrase, "PYTHONPATH": path})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mls.demo", _WORKER_FLAG, str(vault)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )

    def send(self, op: str, *args: Any) -> None:
        assert self.proc.stdin is not None
        line = [op, *(a.hex() if isinstance(a, bytes) else a for a in args)]
        self.proc.stdin.write(json.dumps(line) + "\n")
        self.proc.stdin.flush()

    def __call__(self, op: str, *args: Any) -> Any:
        self.send(op, *args)
        return self.receive(op)

    def receive(self, op: str) -> Any:
        assert self.proc.stdout is not None
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"{self.name}'s process died during {op}")
        reply = json.loads(answer)
        if "error" in reply:
            raise RuntimeError(f"{self.name} failed to {op}: {reply['error']}")
        result = reply["ok"]
        out = _decode(result) if not isinstance(result, dict) else result
        self.run.record(self.name, f"{op} (fresh process)", reply["seconds"], out)
        return out

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        if self.proc.wait(timeout=60) != 0:
            raise RuntimeError(f"{self.name}'s process exited with {self.proc.returncode}")
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# ---------------------------------------------------------------------------- scenario


def _timed(run: _Run, actor: str, action: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    out = fn()
    run.record(actor, action, time.perf_counter() - start, out)
    return out


def _expect(received: Any, plaintext: bytes, sender: bytes) -> None:
    data = received["data"] if isinstance(received, dict) else None
    if data is None or bytes.fromhex(data) != plaintext:
        raise RuntimeError("a message did not decrypt to what was sent")
    if bytes.fromhex(received["sender"]) != sender:
        raise RuntimeError("a message came from an unexpected sender")


def _create(
    path: Path, passphrase: str, identity: bytes, kdf: KdfParameters, engine: str
) -> MlsClient:
    if engine == "mls-rs":
        return MlsClient.create(path, passphrase, identity=identity, kdf=kdf, engine="mls-rs")
    return MlsClient.create(path, passphrase, identity=identity, kdf=kdf, engine="native")


def _scenario(
    directory: Path, passphrase: str, kdf: KdfParameters, engine: Engine, run: _Run
) -> None:
    paths = {name: directory / f"{name}.vault" for name in NAMES}

    def say(text: str) -> bytes:
        message = text.encode()
        run.plaintexts.append(message)
        return message

    # Phase 1: one process, both clients.
    alice = _timed(
        run,
        "alice",
        "create vault",
        lambda: _create(paths["alice"], passphrase, b"alice", kdf, engine),
    )
    bob = _timed(
        run,
        "bob",
        "create vault",
        lambda: _create(paths["bob"], passphrase, b"bob", kdf, engine),
    )
    with alice, bob:
        gid = _timed(run, "alice", "create group", alice.create_group)
        run.group_id = gid
        kp = _timed(run, "bob", "key package", bob.generate_key_package)
        _, welcome = _timed(run, "alice", "add bob", lambda: alice.add_members(gid, [kp]))
        _timed(run, "bob", "join", lambda: bob.join(welcome))
        for sender, receiver, text in (
            (alice, bob, "Hi Bob, welcome to the group."),
            (bob, alice, "Thanks Alice! Saved before I send."),
        ):
            message = say(text)
            ct = _timed(
                run,
                sender.identity.decode(),
                "encrypt",
                functools.partial(sender.encrypt, gid, message),
            )
            got = _timed(
                run,
                receiver.identity.decode(),
                "process",
                functools.partial(receiver.process, gid, ct),
            )
            if got.data != message:
                raise RuntimeError("a message did not decrypt to what was sent")

    # Phase 2: every member in a fresh process that reopens its vault.
    a = _Process("alice", paths["alice"], passphrase, run)
    b = _Process("bob", paths["bob"], passphrase, run)
    c = _Process("carol", paths["carol"], passphrase, run)
    try:
        a.send("open")  # the two unlocks (Argon2id) run side by side
        b.send("open")
        a.receive("open")
        b.receive("open")
        message = say("Alice again, from a new process.")
        _expect(b("process", gid, a("encrypt", gid, message)), message, b"alice")
        commit = b("update", gid)
        a("process", gid, commit)
        message = say("Bob here: keys updated after my restart.")
        _expect(a("process", gid, b("encrypt", gid, message)), message, b"bob")
        c("create", b"carol", kdf.name, engine)
        commit, welcome = a("add", gid, c("kp"))
        b("process", gid, commit)
        c("join", welcome)
        message = say("Carol says hello to both of you.")
        ct = c("encrypt", gid, message)
        _expect(a("process", gid, ct), message, b"carol")
        _expect(b("process", gid, ct), message, b"carol")
        commit = a("remove", gid, b"carol")
        b("process", gid, commit)
        if not c("process", gid, commit)["removed"]:
            raise RuntimeError("carol was not told she was removed")
        message = say("Just the two of us again.")
        _expect(b("process", gid, a("encrypt", gid, message)), message, b"alice")
        # Scan now too, while the processes hold their vaults open and the WAL is full.
        run.live_scan = _leak_scan(directory, [*run.plaintexts, run.group_id])
    finally:
        for proc in (a, b, c):
            if proc.proc.poll() is None:
                proc.close()


# ---------------------------------------------------------------------------- report


def _leak_scan(directory: Path, needles: list[bytes]) -> tuple[list[tuple[str, int]], list[str]]:
    """Look for each needle in every vault file and WAL; return (files, hits)."""
    files: list[tuple[str, int]] = []
    found: list[str] = []
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.name.endswith((".vault", ".vault-wal")):
            blob = path.read_bytes()
            files.append((path.name, len(blob)))
            found.extend(f"{path.name}: needle #{i}" for i, n in enumerate(needles) if n in blob)
    return files, found


def _report(directory: Path, run: _Run) -> int:
    print("\nSteps (time inside the client call; 'fresh process' = reopened vault):")
    for s in run.steps:
        print(f"  {s.actor:<6} {s.action:<30} {s.seconds * 1000:9.1f} ms  {s.out_bytes:6d} B out")
    print("\nVaults (read-only, no passphrase needed for stats):")
    for name in NAMES:
        path = directory / f"{name}.vault"
        with Vault.open(path, readonly=True) as vault:
            stats = vault.stats()
        print(
            f"  {path.name}: {stats.file_bytes} bytes on disk (file + wal), {stats.total_rows} rows"
        )
        for category, cs in stats.categories.items():
            print(f"      {category:<38} {cs.rows:4d} rows {cs.bytes:8d} bytes")
    needles = [*run.plaintexts, run.group_id]
    code = 0
    for when, (files, found) in (
        ("while open", run.live_scan),
        ("after close", _leak_scan(directory, needles)),
    ):
        sizes = ", ".join(f"{name} {size} B" for name, size in files)
        if found:
            print(f"\nLEAK ({when}): plaintext or group id in vault files: {', '.join(found)}")
            code = 1
        else:
            print(
                f"\nLeak scan {when}: none of the {len(run.plaintexts)} messages nor the "
                f"group id appears in {len(files)} files ({sizes})."
            )
    return code


# ---------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mls-keystore demo",
        description="MLS clients whose state survives restarts in encrypted vaults.",
    )
    p.add_argument("directory", type=Path, help="where to create the vaults (made if missing)")
    p.add_argument(
        "--engine",
        choices=("native", "mls-rs"),
        default="native",
        help="MLS engine (default native; mls-rs needs the [mls-rs] extra)",
    )
    p.add_argument("--passphrase-file", type=Path, help="read the passphrase from this file")
    p.add_argument("--prompt", action="store_true", help="ask for the passphrase")
    p.add_argument(
        "--kdf-profile",
        default=profiles.RFC_9106_LOW_MEMORY.name,
        help="Argon2id profile (default RFC_9106_LOW_MEMORY; INSECURE_FOR_TESTS_ONLY is fast)",
    )
    return p


def _passphrase(args: argparse.Namespace) -> tuple[str, str]:
    if args.passphrase_file is not None:
        text = args.passphrase_file.read_text(encoding="utf-8").rstrip("\r\n")
        return text, f"from {args.passphrase_file}"
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV], f"from ${PASSPHRASE_ENV}"
    if args.prompt:
        first = getpass.getpass("Passphrase for the demo vaults: ")
        if first != getpass.getpass("Repeat it: "):
            raise ValueError("the passphrases do not match")
        return first, "entered at the prompt"
    return secrets.token_urlsafe(24), "GENERATED for this run and not shown (demo only)"


def main(argv: list[str]) -> int:
    """Run the demo; returns the process exit code."""
    if argv[:1] == [_WORKER_FLAG] and len(argv) == 2:
        return _worker(argv[1])
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    directory: Path = args.directory
    try:
        kdf = profiles.by_name(args.kdf_profile)
        passphrase, origin = _passphrase(args)
        if not passphrase:
            raise ValueError("the passphrase is empty")
        taken = [p.name for n in NAMES for p in directory.glob(f"{n}.vault*") if directory.is_dir()]
        if taken:
            raise ValueError(
                f"{directory} already holds demo files ({', '.join(sorted(taken))}); "
                "choose an empty directory (nothing was changed)"
            )
        directory.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:
        print(f"mls-keystore demo: {exc}", file=sys.stderr)
        return 2
    print(f"Demo in {directory}: {args.engine} engine, KDF {kdf.name}; passphrase {origin}.")
    run = _Run()
    start = time.perf_counter()
    try:
        _scenario(directory, passphrase, kdf, args.engine, run)
    except (KeystoreError, MlsError, RuntimeError, OSError) as exc:
        print(f"mls-keystore demo: failed: {exc}", file=sys.stderr)
        return 1
    code = _report(directory, run)
    print(f"Total {time.perf_counter() - start:.2f} s.")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
