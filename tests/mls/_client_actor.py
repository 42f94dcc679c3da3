"""An MlsClient in its own process, driven line by line over stdin/stdout (test helper).

Usage: ``python _client_actor.py VAULT`` with the passphrase in ``MLS_KEYSTORE_PASSPHRASE``.
Each stdin line is a JSON list ``[op, *args]`` (bytes as hex); each answer is one JSON
line ``{"ok": result}`` or ``{"error": "ExceptionType"}``, flushed at once so that it
survives a ``kill -9`` that follows.  A ``*_stream`` op answers one line per item as
soon as that item's call returned, then ``{"ok": null}``.  ``crash_before_apply`` /
``crash_after_apply`` make the next vault transaction SIGKILL the process just before /
just after it commits.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from keystore import Vault, profiles
from mls.client import MlsClient, Received


def _arm_crash(after: bool) -> None:
    original = Vault.apply

    def apply(self: Vault, changes: Iterable[Any]) -> int:
        if not after:
            os.kill(os.getpid(), signal.SIGKILL)
        n = original(self, changes)
        os.kill(os.getpid(), signal.SIGKILL)
        return n

    Vault.apply = apply  # type: ignore[method-assign]


def _each(fn: Callable[[str], Any], items: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Apply ``fn`` to each item; yield its answer or the type of its error."""
    for item in items:
        try:
            yield {"ok": _encode(fn(item))}
        except Exception as exc:
            yield {"error": type(exc).__name__}


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Received):
        return {
            "kind": value.kind.value,
            "sender": _encode(value.sender),
            "data": _encode(value.data),
            "removed": value.removed,
            "replay": value.replay,
        }
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def main(vault: str) -> int:
    passphrase = os.environ["MLS_KEYSTORE_PASSPHRASE"]
    client: MlsClient | None = None

    def c() -> MlsClient:
        assert client is not None, "send create or open first"
        return client

    h = bytes.fromhex
    ops: dict[str, Callable[..., Any]] = {
        "kp": lambda: c().generate_key_package(),
        "create_group": lambda gid: c().create_group(h(gid)),
        "add": lambda gid, *kps: c().add_members(h(gid), [h(k) for k in kps]),
        "join": lambda w: c().join(h(w)),
        "encrypt": lambda gid, text: c().encrypt(h(gid), text.encode()),
        "process": lambda gid, msg: c().process(h(gid), h(msg)),
        "update": lambda gid: c().update_keys(h(gid)),
        "commit_pending": lambda gid: c().commit(h(gid), force_path=True, pending=True)[0],
        "leave": lambda gid: c().leave(h(gid)),
        "remove": lambda gid, *ids: c().remove_members(h(gid), [h(i) for i in ids]),
        "groups": lambda: c().group_ids(),
        "members": lambda gid: c().members(h(gid)),
        "export": lambda gid: c().export_secret(h(gid), b"test", b"", 32),
        "lost": lambda: [k.ref for k in c().lost_key_packages()],
        "crash_before_apply": lambda: _arm_crash(after=False),
        "crash_after_apply": lambda: _arm_crash(after=True),
        "kill": lambda: os.kill(os.getpid(), signal.SIGKILL),
        # Streams: one answer line per item, as soon as the call for it returned.
        "encrypt_stream": lambda gid, tag, n: (
            c().encrypt(h(gid), f"{tag} {i}".encode()) for i in range(n)
        ),
        "process_stream": lambda gid, *msgs: _each(lambda m: c().process(h(gid), h(m)), msgs),
    }
    for line in sys.stdin:
        op, *args = json.loads(line)
        try:
            if op == "create":
                client = MlsClient.create(
                    vault,
                    passphrase,
                    identity=h(args[0]),
                    kdf=profiles.INSECURE_FOR_TESTS_ONLY,
                    engine="mls-rs",
                )
                result: Any = None
            elif op == "open":
                client = MlsClient.open(vault, passphrase)
                result = None
            elif op.endswith("_stream"):
                for item in ops[op](*args):
                    line = item if isinstance(item, dict) else {"ok": _encode(item)}
                    sys.stdout.write(json.dumps(line) + "\n")
                    sys.stdout.flush()
                result = None
            else:
                result = ops[op](*args)
            answer: dict[str, Any] = {"ok": _encode(result)}
        except Exception as exc:
            answer = {"error": type(exc).__name__}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    if client is not None:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
