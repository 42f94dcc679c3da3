"""A NativeClient in its own process, driven by JSON lines on stdin (test helper).

Usage: ``python _native_actor.py VAULT`` with the passphrase in ``MLS_KEYSTORE_PASSPHRASE``.
Each stdin line is ``[op, *args]`` (bytes as hex); each answer is one flushed JSON line
``{"ok": result}``.  ``arm_before``/``arm_after`` make the next vault transaction SIGKILL
the process just before / just after it commits; ``kill`` SIGKILLs at once.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from keystore import Vault
from mls.client import Received
from mls.native.client import NativeClient


def _arm(after: bool) -> None:
    original = Vault.apply

    def apply(self: Vault, changes: Iterable[Any]) -> int:
        if not after:
            os.kill(os.getpid(), signal.SIGKILL)
        count = original(self, changes)
        os.kill(os.getpid(), signal.SIGKILL)
        return count

    Vault.apply = apply  # type: ignore[method-assign]


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Received):
        return {"data": _encode(value.data), "replay": value.replay, "kind": value.kind.value}
    return value


def main(vault: str) -> int:
    """Serve ops until stdin closes, then close the client."""
    client = NativeClient.open(vault, os.environ["MLS_KEYSTORE_PASSPHRASE"])
    h = bytes.fromhex
    ops: dict[str, Callable[..., Any]] = {
        "encrypt": lambda gid, text: client.encrypt(h(gid), text.encode()),
        "process": lambda gid, msg: client.process(h(gid), h(msg)),
        "update": lambda gid: client.update_keys(h(gid)),
        "join": lambda welcome: client.join(h(welcome)),
        "arm_before": lambda: _arm(after=False),
        "arm_after": lambda: _arm(after=True),
        "kill": lambda: os.kill(os.getpid(), signal.SIGKILL),
    }
    for line in sys.stdin:
        op, *args = json.loads(line)
        print(json.dumps({"ok": _encode(ops[op](*args))}), flush=True)
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
