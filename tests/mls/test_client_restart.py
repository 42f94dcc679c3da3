"""MlsClient across processes: restarts between steps, kill -9 at the worst moments.

Each member runs in its own process (``_client_actor.py``); ``kill -9`` is the actor
sending itself SIGKILL, at a point chosen by the test.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.mls._client_harness import Actor, ActorError, one_shot, setup_pair

pytestmark = pytest.mark.timeout(120)


def test_conversation_with_a_restart_before_every_step(tmp_path: Path) -> None:
    """Every step runs in a fresh process; messages, a key update, and a third member
    added then removed all work across the restarts."""
    alice, bob, gid = setup_pair(tmp_path)
    carol = tmp_path / "carol.vault"
    (ct,) = one_shot(alice, ("encrypt", gid, "hello bob"))
    (got,) = one_shot(bob, ("process", gid, ct))
    assert bytes.fromhex(got["data"]) == b"hello bob"
    (ct,) = one_shot(bob, ("encrypt", gid, "hello alice"))
    (got,) = one_shot(alice, ("process", gid, ct))
    assert bytes.fromhex(got["sender"]) == b"bob"
    (update,) = one_shot(bob, ("update", gid))
    one_shot(alice, ("process", gid, update))
    with Actor(carol) as c:  # a key package must be joined by the process that made it
        c.call("create", b"carol")
        (pair,) = one_shot(alice, ("add", gid, c.call("kp")))
        commit, welcome = pair
        assert c.call("join", welcome) == gid
        assert c.close() == 0
    one_shot(bob, ("process", gid, commit))
    (ct,) = one_shot(carol, ("encrypt", gid, "hi all"))
    assert bytes.fromhex(one_shot(alice, ("process", gid, ct))[0]["data"]) == b"hi all"
    assert bytes.fromhex(one_shot(bob, ("process", gid, ct))[0]["data"]) == b"hi all"
    (removal,) = one_shot(bob, ("remove", gid, b"carol".hex()))
    one_shot(alice, ("process", gid, removal))
    assert one_shot(carol, ("process", gid, removal), ("groups",)) == [
        {"kind": "commit", "sender": b"bob".hex(), "data": None, "removed": True, "replay": False},
        [],
    ]
    (ct,) = one_shot(alice, ("encrypt", gid, "bye carol"))
    assert bytes.fromhex(one_shot(bob, ("process", gid, ct))[0]["data"]) == b"bye carol"


def test_kill_after_encrypt_then_send_again_is_accepted(tmp_path: Path) -> None:
    """kill -9 right after encrypt() returned: the reopened sender never reuses the
    secret-tree generation, so the receiver accepts both messages."""
    alice, bob, gid = setup_pair(tmp_path)
    with Actor(alice) as a:
        a.call("open")
        first = a.call("encrypt", gid, "before the crash")
        a.send("kill")
        assert a.wait_killed() == -signal.SIGKILL
    (second,) = one_shot(alice, ("encrypt", gid, "after the crash"))
    got = one_shot(bob, ("process", gid, first), ("process", gid, second))
    assert [bytes.fromhex(g["data"]) for g in got] == [b"before the crash", b"after the crash"]


@pytest.mark.parametrize("moment", ["crash_before_apply", "crash_after_apply"])
def test_kill_during_process_leaves_new_epoch_or_reprocessable(tmp_path: Path, moment: str) -> None:
    """kill -9 in the middle of process(commit): after reopening, processing the commit
    again succeeds — it is applied now, or it was and its stored outcome comes back —
    and the receiver is in the sender's epoch."""
    alice, bob, gid = setup_pair(tmp_path)
    (commit,) = one_shot(alice, ("update", gid))
    with Actor(bob) as b:
        b.call("open")
        b.call(moment)
        b.send("process", gid, commit)
        assert b.wait_killed() == -signal.SIGKILL
    with Actor(bob) as b:
        b.call("open")
        again = b.call("process", gid, commit)
        assert (again["kind"], again["sender"]) == ("commit", b"alice".hex())
        assert again["replay"] == (moment == "crash_after_apply")
        alice_secret, ct = one_shot(alice, ("export", gid), ("encrypt", gid, "same epoch"))
        assert b.call("export", gid) == alice_secret
        assert bytes.fromhex(b.call("process", gid, ct)["data"]) == b"same epoch"
        assert b.close() == 0


def test_join_then_restore_before_drain_never_loses_the_group(tmp_path: Path) -> None:
    """The reference race across processes: while the joiner runs, a restore is refused
    (VaultBusy); after it is killed right after join(), the reopened vault has the group."""
    alice, bob = tmp_path / "alice.vault", tmp_path / "bob.vault"
    with Actor(alice) as a, Actor(bob) as b:
        a.call("create", b"alice")
        b.call("create", b"bob")
        gid = a.call("create_group", b"room")
        _, welcome = a.call("add", gid, b.call("kp"))
        assert b.call("join", welcome) == gid
        with Actor(bob) as restorer, pytest.raises(ActorError, match="VaultBusy"):
            restorer.call("open")
        b.send("kill")
        assert b.wait_killed() == -signal.SIGKILL
        ct = a.call("encrypt", gid, "are you there")
        assert a.close() == 0
    assert one_shot(bob, ("groups",), ("process", gid, ct))[1]["data"] == b"are you there".hex()


def test_key_packages_of_a_dead_process_are_lost_and_reported(tmp_path: Path) -> None:
    """A key package published by a process that then died is reported lost and its
    Welcome raises KeyPackageLost in the next process."""
    alice, bob = tmp_path / "alice.vault", tmp_path / "bob.vault"
    with Actor(bob) as b:
        b.call("create", b"bob")
        kp = b.call("kp")
        b.send("kill")
        b.wait_killed()
    with Actor(alice) as a:
        a.call("create", b"alice")
        gid = a.call("create_group", b"room")
        _, welcome = a.call("add", gid, kp)
        with Actor(bob) as b:
            b.call("open")
            assert len(b.call("lost")) == 1
            with pytest.raises(ActorError, match="KeyPackageLost"):
                b.call("join", welcome)
            a.call("remove", gid, b"bob".hex())
            _, welcome = a.call("add", gid, b.call("kp"))
            assert b.call("join", welcome) == gid
            assert b.close() == 0
        assert a.close() == 0
