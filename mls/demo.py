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
``MLS_KEYSTORE_PASSPHRASE`` (read, then removed from the environment), or a prompt
(``--prompt``); otherwise a random one is generated and written to
``DIR/demo-passphrase.txt`` (mode 0600, named in the output) so that the vaults can
be explored afterwards (``mls-keystore stats DIR/alice.vault --passphrase-file
DIR/demo-passphrase.txt``).  The worker processes receive it through their stdin
pipe, never through the environment (which other processes of the same user, and
every grandchild, can read).  Messages are never printed, only their sizes.

Existing files are never touched: the demo refuses a ``DIR`` that already holds its
vaults.  Ctrl-C stops the workers, removes the files this run created (and ``DIR``
if the run made it) and exits 130.  ``--json`` prints one JSON object instead of the
text report.  Exit codes are those of ``mls-keystore`` (docs/cli.md): 0 ok, 1 a
step failed or a leak was found, 2 usage, 8 the folder cannot be written, 9 the
``[mls-rs]`` extra is missing for ``--engine mls-rs``, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from keystore import KeystoreError, Vault, VaultIOError, profiles
from keystore.cli_common import ExitCode, UsageError
from keystore.passphrase import new_secret, read_secret_file, take_from_environment
from keystore.profiles import KdfParameters
from mls.client import Engine, MlsClient, Received
from mls.errors import MlsError, MlsRsUnavailable
from mls.mlsrs import load_binding

__all__ = ["main"]

PASSPHRASE_ENV = "MLS_KEYSTORE_PASSPHRASE"
NAMES = ("alice", "bob", "carol")
PASSPHRASE_FILE = "demo-passphrase.txt"
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
    """A client in its own process, driven by JSON lines on stdin (one answer per line).

    The first line is the passphrase (from the parent, through the pipe).  Ctrl-C
    at the terminal reaches the whole process group: the worker ignores it and lets
    the parent decide (it closes the pipe or terminates the worker), so an interrupt
    prints no worker traceback.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    first = sys.stdin.readline()
    if not first:
        return 0
    passphrase = str(json.loads(first)["passphrase"])
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
        env = {k: v for k, v in os.environ.items() if k != PASSPHRASE_ENV}
        env["PYTHONPATH"] = path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mls.demo", _WORKER_FLAG, str(vault)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            # Its own process group: a Ctrl-C at the terminal reaches only the parent,
            # which stops the workers itself (no half-imported worker tracebacks).
            start_new_session=True,
        )
        assert self.proc.stdin is not None
        # The secret goes through the pipe: the environment of a process is readable
        # by every process of the same user (/proc/<pid>/environ) and is inherited.
        self.proc.stdin.write(json.dumps({"passphrase": passphrase}) + "\n")
        self.proc.stdin.flush()

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

    def stop(self) -> None:
        """End the worker now (after an interrupt or a failure elsewhere)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

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
    except BaseException:
        for proc in (a, b, c):
            proc.stop()
        raise
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


def _summary(directory: Path, run: _Run) -> dict[str, Any]:
    """Everything the report shows, as plain data (the ``--json`` output)."""
    vaults = []
    for name in NAMES:
        path = directory / f"{name}.vault"
        with Vault.open(path, readonly=True) as vault:
            stats = vault.stats()
        vaults.append({
            "file": path.name,
            "file_bytes": stats.file_bytes,
            "rows": stats.total_rows,
            "categories": {c: {"rows": cs.rows, "bytes": cs.bytes}
                           for c, cs in stats.categories.items()},
        })
    needles = [*run.plaintexts, run.group_id]
    scans = []
    for when, (files, found) in (
        ("while open", run.live_scan),
        ("after close", _leak_scan(directory, needles)),
    ):
        scans.append({
            "when": when,
            "files": [{"file": name, "bytes": size} for name, size in files],
            "leaks": found,
        })
    return {
        "steps": [
            {"actor": s.actor, "action": s.action, "ms": round(s.seconds * 1000, 3),
             "out_bytes": s.out_bytes}
            for s in run.steps
        ],
        "vaults": vaults,
        "messages": len(run.plaintexts),
        "leak_scans": scans,
        "leak_found": any(scan["leaks"] for scan in scans),
    }


def _print_report(summary: dict[str, Any]) -> None:
    print("\nSteps (time inside the client call; 'fresh process' = reopened vault):")
    for s in summary["steps"]:
        print(f"  {s['actor']:<6} {s['action']:<30} {s['ms']:9.1f} ms  {s['out_bytes']:6d} B out")
    print("\nVaults (read-only, no passphrase needed for stats):")
    for v in summary["vaults"]:
        print(f"  {v['file']}: {v['file_bytes']} bytes on disk (file + wal), {v['rows']} rows")
        for category, cs in v["categories"].items():
            print(f"      {category:<38} {cs['rows']:4d} rows {cs['bytes']:8d} bytes")
    for scan in summary["leak_scans"]:
        sizes = ", ".join(f"{f['file']} {f['bytes']} B" for f in scan["files"])
        if scan["leaks"]:
            print(f"\nLEAK ({scan['when']}): plaintext or group id in vault files: "
                  f"{', '.join(scan['leaks'])}")
        else:
            print(
                f"\nLeak scan {scan['when']}: none of the {summary['messages']} messages nor "
                f"the group id appears in {len(scan['files'])} files ({sizes})."
            )


# ---------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    """A usage error becomes a UsageError: one line (and, with --json, the error object)."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments"):
            # Never repeat them: one may be a passphrase typed there by mistake.
            message = ("unrecognized arguments (not repeated here; a passphrase is never read "
                       "from the command line: use --passphrase-file FILE or --prompt)")
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="mls-keystore demo",
        description="MLS clients whose state survives restarts in encrypted vaults.",
        allow_abbrev=False,
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
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return p


def _write_passphrase_file(path: Path, passphrase: str) -> None:
    """Owner-only from its first byte; refuses to follow or replace anything there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(passphrase + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _passphrase(args: argparse.Namespace, env: str | None) -> tuple[str, str, bool]:
    """(passphrase, where it came from, whether it must be written to DIR)."""
    if args.passphrase_file is not None:
        text = read_secret_file(args.passphrase_file, "passphrase")
        return text, f"from {args.passphrase_file}", False
    if env:
        return env, f"from ${PASSPHRASE_ENV}", False
    if args.prompt:
        secret = new_secret(None, None, label="Passphrase for the demo vaults",
                            hint="use --passphrase-file FILE", what="passphrase")
        return secret, "entered at the prompt", False
    return secrets.token_urlsafe(24), "generated", True


def _created_files(directory: Path) -> list[Path]:
    return sorted(
        p for n in NAMES for p in directory.glob(f"{n}.vault*")
    ) + [p for p in (directory / PASSPHRASE_FILE,) if p.exists()]


def _clean_up(directory: Path, made_dir: bool, wrote_passphrase: bool) -> None:
    """Remove what this run created: its vaults and their files, and DIR if it made it."""
    for path in _created_files(directory):
        if path.name == PASSPHRASE_FILE and not wrote_passphrase:
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    for leftover in (p for n in NAMES for p in directory.glob(f".{n}.vault.*.creating*")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    if made_dir:
        with contextlib.suppress(OSError):
            directory.rmdir()  # only if empty: never anything we did not make


def _mls_rs_available() -> bool:
    try:
        load_binding()
    except MlsRsUnavailable:
        return False
    return True


class _Failure(Exception):
    def __init__(self, code: ExitCode, message: str):
        super().__init__(message)
        self.code = code


def _fail(args_json: bool, exc: BaseException, code: ExitCode) -> int:
    message = " ".join(str(exc).split()) or type(exc).__name__
    if args_json:
        print(json.dumps({"ok": False, "error": type(exc).__name__, "exit_code": int(code),
                          "message": message}))
    print(f"mls-keystore demo: {message}", file=sys.stderr)
    return int(code)


def main(argv: list[str], *, env_passphrase: str | None = None) -> int:
    """Run the demo; returns the process exit code.

    ``env_passphrase``: the value of ``MLS_KEYSTORE_PASSPHRASE`` when the caller
    (``mls-keystore demo``) has already read and removed it; otherwise the demo
    reads and removes the variable itself.
    """
    if argv[:1] == [_WORKER_FLAG] and len(argv) == 2:
        return _worker(argv[1])
    env = take_from_environment()
    env = env_passphrase if env_passphrase is not None else env
    want_json = "--json" in argv
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else int(ExitCode.OK)
    except UsageError as exc:
        return _fail(want_json, exc, ExitCode.USAGE)
    directory: Path = args.directory
    out = sys.stderr if args.json else sys.stdout
    made_dir = wrote_passphrase = False
    try:
        try:
            kdf = profiles.by_name(args.kdf_profile)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if args.engine == "mls-rs" and not _mls_rs_available():
            raise _Failure(
                ExitCode.MISSING_EXTRA,
                "--engine mls-rs needs the [mls-rs] extra (from a checkout: pip install -e "
                "'.[mls-rs]'); nothing was created",
            )
        passphrase, origin, generated = _passphrase(args, env)
        taken = [p.name for p in _created_files(directory)] if directory.is_dir() else []
        if taken:
            raise UsageError(
                f"{directory} already holds demo files ({', '.join(sorted(taken))}); "
                "choose an empty directory (nothing was changed)"
            )
        if directory.exists() and not directory.is_dir():
            raise UsageError(f"{directory} exists and is not a directory")
        if not directory.exists():
            try:
                directory.mkdir(parents=True)
            except OSError as exc:
                raise _Failure(ExitCode.IO_ERROR,
                               f"cannot create {directory}: {exc.strerror}") from None
            made_dir = True
        if not os.access(directory, os.W_OK):
            raise _Failure(ExitCode.IO_ERROR, f"{directory} is read-only or not writable; "
                                              "nothing was created")
        if generated:
            _write_passphrase_file(directory / PASSPHRASE_FILE, passphrase)
            wrote_passphrase = True
            origin = (f"generated and written to {directory / PASSPHRASE_FILE} (mode 0600; "
                      "use it with --passphrase-file to explore the vaults)")
        print(f"Demo in {directory}: {args.engine} engine, KDF {kdf.name}; passphrase {origin}.",
              file=out)
        run = _Run()
        start = time.perf_counter()
        _scenario(directory, passphrase, kdf, args.engine, run)
        summary = _summary(directory, run)
    except KeyboardInterrupt:
        _clean_up(directory, made_dir, wrote_passphrase)
        return _fail(args.json, KeyboardInterrupt(
            "interrupted; the files this run created were removed"), ExitCode.INTERRUPTED)
    except UsageError as exc:
        return _fail(args.json, exc, ExitCode.USAGE)
    except _Failure as exc:
        return _fail(args.json, exc, exc.code)
    except VaultIOError as exc:
        return _fail(args.json, exc, ExitCode.IO_ERROR)
    except (KeystoreError, MlsError, RuntimeError, OSError) as exc:
        return _fail(args.json, RuntimeError(
            f"failed: {exc} (the files are kept in {directory} for inspection; remove them "
            "to run again there)"), ExitCode.FAILURE)
    total = time.perf_counter() - start
    code = ExitCode.FAILURE if summary["leak_found"] else ExitCode.OK
    if args.json:
        print(json.dumps({
            "ok": code == ExitCode.OK, "directory": str(directory), "engine": args.engine,
            "kdf": kdf.name,
            "passphrase_file": str(directory / PASSPHRASE_FILE) if generated else None,
            **summary, "total_seconds": round(total, 3),
        }, indent=2))
    else:
        _print_report(summary)
        print(f"Total {total:.2f} s.")
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
