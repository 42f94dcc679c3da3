"""Driver for the node interop peers: one subprocess, one JSON request per line, in order.

A peer program (``peers/*.mjs``) holds one or more members of an independent MLS
implementation, named by ``who``.  :meth:`NodePeer.call` sends one request and waits for its
reply; byte strings go out and come back as hex, and are converted here so the tests deal in
``bytes`` only.  A peer that fails a request raises :class:`PeerError` carrying the peer's own
error text, so a test failure says what the other implementation refused.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
NODE_MODULES = HERE / "node_modules"
#: Seconds one request may take (core-crypto's wasm start-up is the slowest, about 1 s).
TIMEOUT = 60.0


class PeerError(Exception):
    """The peer refused or failed a request (its error text is the message)."""


def node_path() -> str | None:
    """The ``node`` executable, or None where node is not installed."""
    return shutil.which("node")


def _to_wire(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return [_to_wire(v) for v in value]
    return value


class NodePeer:
    """A running peer program; use as a context manager (the process is ended on exit)."""

    def __init__(self, script: str) -> None:
        node = node_path()
        if node is None:
            raise RuntimeError("node is not installed")
        if not (NODE_MODULES / ".package-lock.json").exists():
            raise RuntimeError(
                f"the interop peers are not installed in {NODE_MODULES}: "
                "run tests/interop/install.sh"
            )
        self._proc = subprocess.Popen(
            [node, str(PEERS / script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=HERE,
        )
        self._replies: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self._next_id = 0

    def _read_stdout(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._replies.put(line)
        self._replies.put(None)

    def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self._stderr.append(line)

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one request and return its reply (hex fields named in ``_HEX`` decoded)."""
        self._next_id += 1
        request = {"id": self._next_id, "op": op, **{k: _to_wire(v) for k, v in args.items()}}
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        try:
            line = self._replies.get(timeout=TIMEOUT)
        except queue.Empty:
            raise PeerError(f"{op}: no reply within {TIMEOUT} s") from None
        if line is None:
            raise PeerError(f"{op}: the peer exited: {''.join(self._stderr)[-2000:]}")
        reply: dict[str, Any] = json.loads(line)
        if reply.get("id") != self._next_id:
            raise PeerError(f"{op}: reply out of order: {reply}")
        if not reply.pop("ok"):
            raise PeerError(f"{op}: {reply['error']}")
        del reply["id"]
        return {k: _from_wire(k, v) for k, v in reply.items()}

    def close(self) -> None:
        """Close the peer's stdin (it exits) and wait; kill it if it does not."""
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> NodePeer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


#: Reply fields that carry bytes (hex on the wire).
_HEX = {
    "key_package",
    "commit",
    "welcome",
    "message",
    "data",
    "secret",
    "group_id",
    "group_info",
    "client_id",
    "public_key",
}


def _from_wire(key: str, value: Any) -> Any:
    if key in _HEX and isinstance(value, str):
        return bytes.fromhex(value)
    if key == "members" and isinstance(value, list):
        return [bytes.fromhex(v) for v in value]
    return value
