"""kill -9 at random moments during streams of sends and receives (a campaign).

Quick size in CI; ``--full`` (when the suite defines it) or ``MLS_CLIENT_FULL=1`` runs
many more rounds.  Each
round SIGKILLs a client process at a random point while it encrypts or processes
messages in a loop: inside the engine, the storage, SQLite's commit, or between calls.
The seed is in every failure message.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from tests.mls._client_harness import Actor, one_shot, setup_pair

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def rounds(request: pytest.FixtureRequest) -> int:
    """Kill rounds per test: 2 by default, 25 with ``--full`` or ``MLS_CLIENT_FULL=1``."""
    full = request.config.getoption("--full", default=False)
    return 25 if full or os.environ.get("MLS_CLIENT_FULL") == "1" else 2


@pytest.fixture
def seed() -> int:
    """The campaign's random seed (in every failure message; set MLS_CLIENT_SEED to replay)."""
    return int(os.environ.get("MLS_CLIENT_SEED") or int.from_bytes(os.urandom(4), "big"))


def _stream_until_killed(actor: Actor, rng: random.Random) -> list[dict[str, object]]:
    """Read answers; after the first one, wait a random moment and SIGKILL the actor.

    Returns every whole answer written before the kill (the "sent" results)."""
    answers = []
    first = actor.read_answer()
    assert first is not None, "the actor died before its first answer"
    answers.append(first)
    time.sleep(rng.uniform(0.0, 0.04))
    actor.kill()
    while (answer := actor.read_answer()) is not None:
        answers.append(answer)
    return [a for a in answers if a.get("ok") is not None or "error" in a]


def test_random_kills_while_sending_never_reuse_a_generation(
    tmp_path: Path, rounds: int, seed: int
) -> None:
    """Every ciphertext a killed sender had returned, and every later one, is accepted
    by the receiver, in order: no secret-tree generation was ever handed out twice."""
    rng = random.Random(seed)
    alice, bob, gid = setup_pair(tmp_path)
    sent: list[tuple[str, str]] = []
    for r in range(rounds):
        with Actor(alice) as a:
            a.call("open")
            a.send("encrypt_stream", gid, f"round {r}", 500)
            got = _stream_until_killed(a, rng)
        assert all("ok" in g for g in got), (f"seed={seed}", got)
        sent.extend((f"round {r} {i}", str(g["ok"])) for i, g in enumerate(got))
    (last,) = one_shot(alice, ("encrypt", gid, "after all the kills"))
    sent.append(("after all the kills", last))
    results = one_shot(bob, *(("process", gid, ct) for _, ct in sent))
    texts = [bytes.fromhex(r["data"]).decode() for r in results]
    assert texts == [t for t, _ in sent], f"seed={seed}"


def test_random_kills_while_receiving_deliver_each_message_exactly_once(
    tmp_path: Path, rounds: int, seed: int
) -> None:
    """A receiver killed at random while processing: re-delivering what was not
    answered yields every message exactly once (a message applied just before a kill
    comes back from its stored receipt, marked as a replay)."""
    rng = random.Random(seed)
    alice, bob, gid = setup_pair(tmp_path)
    texts = [f"message {i}" for i in range(40 * rounds)]
    with Actor(alice) as a:
        a.call("open")
        cts = [a.call("encrypt", gid, t) for t in texts]
        assert a.close() == 0
    delivered: list[str] = []
    pending = list(zip(texts, cts, strict=True))
    for _ in range(rounds):
        with Actor(bob) as b:
            b.call("open")
            b.send("process_stream", gid, *(ct for _, ct in pending))
            answers = _stream_until_killed(b, rng)
        for i, answer in enumerate(answers):
            assert "ok" in answer, (f"seed={seed}", answer)
            result = answer["ok"]
            assert isinstance(result, dict)
            # Only the message in flight at the previous kill can have been applied already.
            assert not result["replay"] or i == 0, (f"seed={seed}", i)
            delivered.append(bytes.fromhex(result["data"]).decode())
        pending = pending[len(answers) :]
    rest = one_shot(bob, *(("process", gid, ct) for _, ct in pending))
    delivered.extend(bytes.fromhex(r["data"]).decode() for r in rest)
    assert delivered == texts, f"seed={seed}"
