"""Drive ``_client_actor.py`` subprocesses: one MlsClient per process (test helper)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ACTOR = Path(__file__).with_name("_client_actor.py")
PASSPHRASE = "actor passphrase"


class ActorError(Exception):
    """The actor answered with an exception (its type name is the message)."""


class Actor:
    """A live client process; :meth:`call` sends one op and waits for its answer."""

    def __init__(self, vault: Path):
        env = dict(os.environ, MLS_KEYSTORE_PASSPHRASE=PASSPHRASE)
        self.proc = subprocess.Popen(
            [sys.executable, str(ACTOR), str(vault)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )

    def send(self, op: str, *args: Any) -> None:
        """Send an op without waiting (for ops that end the process)."""
        assert self.proc.stdin is not None
        line = [op, *(a.hex() if isinstance(a, bytes) else a for a in args)]
        self.proc.stdin.write(json.dumps(line) + "\n")
        self.proc.stdin.flush()

    def call(self, op: str, *args: Any) -> Any:
        """Send an op and return its decoded result; raise ActorError on an error answer."""
        self.send(op, *args)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise ActorError(f"actor died during {op} (rc={self.proc.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise ActorError(answer["error"])
        return answer["ok"]

    def read_answer(self) -> dict[str, Any] | None:
        """The next whole answer line, or ``None`` at end of output (a cut line counts
        as no answer: the actor died before it finished writing it)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.endswith("\n"):
            return None
        answer: dict[str, Any] = json.loads(line)
        return answer

    def kill(self) -> None:
        """SIGKILL the actor now and wait for it."""
        self.proc.kill()
        self.proc.wait(timeout=30)

    def close(self) -> int:
        """Close stdin (the actor closes its client and exits); return the exit code."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=30)

    def wait_killed(self) -> int:
        """Wait for an actor that is expected to die by SIGKILL; return the code."""
        return self.proc.wait(timeout=30)

    def __enter__(self) -> Actor:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def one_shot(vault: Path, *steps: tuple[Any, ...]) -> list[Any]:
    """Run ``open`` and then ``steps`` in a fresh process; return the results."""
    with Actor(vault) as actor:
        actor.call("open")
        out = [actor.call(*step) for step in steps]
        assert actor.close() == 0
    return out


def setup_pair(tmp_path: Path) -> tuple[Path, Path, str]:
    """Alice (new process) creates a group and adds Bob (his own process)."""
    alice, bob = tmp_path / "alice.vault", tmp_path / "bob.vault"
    with Actor(alice) as a, Actor(bob) as b:
        a.call("create", b"alice")
        b.call("create", b"bob")
        gid = a.call("create_group", b"room")
        _, welcome = a.call("add", gid, b.call("kp"))
        assert b.call("join", welcome) == gid
        assert a.close() == b.close() == 0
    return alice, bob, gid
