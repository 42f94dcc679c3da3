"""Hostile input is refused cheaply: under 1 s of CPU and 100 MB of extra memory.

Each attack runs in a child process (``spawn``: nothing inherited but the
code).  The child builds the victim's state and the hostile bytes first, then lowers its own
limits — ``RLIMIT_CPU`` to about a second more than it has used, ``RLIMIT_AS`` to its current
address space plus 100 MB — and only then hands the bytes to the engine.  A runaway
decode or a quadratic check is killed by the kernel (SIGXCPU) or hits ``MemoryError``
instead of running for minutes; the test also asserts the CPU the child measured for the
attack alone is under one second.  No wall-clock timing anywhere.

Inputs are the known attacks at the size they were found at (50 MB messages, a 4000-leaf tree,
a Welcome repeating one unmerged leaf 60,000 times) and at the largest size the default
message limit lets through.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import resource
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection

import pytest

from mls.native import NativeEngine
from mls.native.engine import DEFAULT_MAX_MESSAGE_SIZE, _key_package
from mls.native.errors import (
    AuthenticationError,
    DecodeError,
    InvalidCredential,
    InvalidMessage,
    InvalidProposal,
    InvalidTree,
    MessageTooLarge,
    MlsError,
)
from mls.native.leaf_node import Credential, CredentialType, Extension, LeafNodeSource
from mls.native.proposals import (
    GroupContextExtensions,
    PreSharedKey,
    PreSharedKeyID,
    PskType,
    ResumptionPskUsage,
    Update,
)
from tests.native import hostile_inputs as make
from tests.native.engine_helpers import GID, group, member
from tests.native.hostile import forge_proposal

MB = 1024 * 1024
LIMIT = DEFAULT_MAX_MESSAGE_SIZE
CPU_SECONDS = 1.0
EXTRA_MEMORY = 100 * MB

Attack = Callable[[], object]


# -- attack set-ups: each returns (the call that feeds the bytes, the error expected) ------


def _pair() -> tuple[NativeEngine, NativeEngine]:
    alice, bob = group(["alice", "bob"])
    return alice, bob


def _commit_50mb() -> Attack:
    alice, _ = _pair()
    data = make.commit_of_empty_refs(GID, alice.epoch(GID), 1, 50 * MB)
    return lambda: alice.process(GID, data)


def _commit_stranger() -> Attack:
    alice, _ = _pair()
    data = make.commit_of_empty_refs(GID, alice.epoch(GID), 9, LIMIT - 200)
    return lambda: alice.process(GID, data)


def _commit_member_index() -> Attack:
    alice, _ = _pair()
    data = make.commit_of_empty_refs(GID, alice.epoch(GID), 1, LIMIT - 200)
    return lambda: alice.process(GID, data)


def _commit_bad_mac() -> Attack:
    alice, _ = _pair()
    data = make.commit_of_full_refs(GID, alice.epoch(GID), 1, (LIMIT - 300) // 34)
    assert LIMIT - 400 < len(data) <= LIMIT
    return lambda: alice.process(GID, data)


def _welcome_50mb() -> Attack:
    victim = member("victim")
    victim.generate_key_package()
    data = make.welcome_of_empty_entries(50 * MB)
    return lambda: victim.join(data)


def _welcome_entries() -> Attack:
    victim = member("victim")
    victim.generate_key_package()
    data = make.welcome_of_empty_entries(LIMIT - 100)
    return lambda: victim.join(data)


def _key_package_50mb() -> Attack:
    alice, bob = _pair()
    data = make.key_package_of_many_suites(bob, 50 * MB)
    return lambda: alice.commit(GID, add=[data])


def _key_package_suites() -> Attack:
    alice, bob = _pair()
    data = make.key_package_of_many_suites(bob, LIMIT - 300)
    return lambda: alice.commit(GID, add=[data])


def _key_package_extensions() -> Attack:
    alice, _ = _pair()
    data = make.key_package_of_many_extensions(member("mallory"), 60_000, b"alice")
    return lambda: alice.commit(GID, add=[data])


def _welcome_unmerged() -> Attack:
    victim = member("victim")
    kp = _key_package(victim.generate_key_package())
    data = make.crafted_welcome(victim.suite, kp, members=3, unmerged_copies=60_000)
    return lambda: victim.join(data)


def _welcome_4000_duplicate() -> Attack:
    victim = member("victim")
    kp = _key_package(victim.generate_key_package())
    data = make.crafted_welcome(victim.suite, kp, members=4000, duplicate_identity=True)
    return lambda: victim.join(data)


def _application_65mb() -> Attack:
    alice, bob = _pair()
    # Bob's engine is configured to produce it; Alice's, at the default, must refuse it.
    big_bob = NativeEngine(bob.storage, max_message_size=100 * MB)
    data = big_bob.encrypt(GID, bytes(65 * MB))
    del big_bob, bob
    return lambda: alice.process(GID, data)


def _invalid_proposal() -> Attack:
    alice, bob = _pair()
    data = forge_proposal(
        bob, GroupContextExtensions((Extension(0xFF00, b"x" * 60_000),)), GID
    )
    return lambda: alice.process(GID, data)


def _identity_takeover() -> Attack:
    alice, bob = _pair()
    leaf = bob._tree(GID).leaf(1)
    assert leaf is not None
    _, pub = bob.suite.hpke.generate_key_pair()
    fake = replace(
        leaf,
        encryption_key=pub,
        credential=Credential(CredentialType.BASIC, identity=b"alice"),
        leaf_node_source=LeafNodeSource.UPDATE,
        lifetime=None,
    ).signed(bob.suite, bob._sig_priv, GID, 1)
    data = forge_proposal(bob, Update(fake), GID)
    return lambda: alice.process(GID, data)


def _reinit_psk() -> Attack:
    alice, bob = _pair()
    psk = PreSharedKeyID(
        PskType.RESUMPTION,
        os.urandom(32),
        usage=ResumptionPskUsage.REINIT,
        psk_group_id=GID,
        psk_epoch=1,
    )
    data = forge_proposal(bob, PreSharedKey(psk), GID)
    return lambda: alice.process(GID, data)


ATTACKS: dict[str, Callable[[], Attack]] = {
    "commit-50MB-of-empty-refs": _commit_50mb,
    "commit-2MB-of-empty-refs-stranger-sender": _commit_stranger,
    "commit-2MB-of-empty-refs-member-sender": _commit_member_index,
    "commit-2MB-of-full-refs-forged-membership-tag": _commit_bad_mac,
    "welcome-50MB-of-empty-entries": _welcome_50mb,
    "welcome-2MB-of-empty-entries": _welcome_entries,
    "key-package-50MB-of-suites": _key_package_50mb,
    "key-package-2MB-of-suites": _key_package_suites,
    "key-package-60000-extensions-and-capabilities": _key_package_extensions,
    "welcome-unmerged-leaf-repeated-60000-times": _welcome_unmerged,
    "welcome-4000-leaves-last-duplicates-an-identity": _welcome_4000_duplicate,
    "application-message-65MB-from-a-member": _application_65mb,
    "proposal-unsupported-extension": _invalid_proposal,
    "update-claiming-another-identity": _identity_takeover,
    "proposal-reinit-psk": _reinit_psk,
}


#: The error each attack must be refused with (our own types, never a bare one).
EXPECTED: dict[str, type[MlsError]] = {
    "commit-50MB-of-empty-refs": MessageTooLarge,
    "commit-2MB-of-empty-refs-stranger-sender": InvalidMessage,
    "commit-2MB-of-empty-refs-member-sender": DecodeError,
    "commit-2MB-of-full-refs-forged-membership-tag": AuthenticationError,
    "welcome-50MB-of-empty-entries": MessageTooLarge,
    "welcome-2MB-of-empty-entries": DecodeError,
    "key-package-50MB-of-suites": MessageTooLarge,
    "key-package-2MB-of-suites": DecodeError,
    "key-package-60000-extensions-and-capabilities": InvalidCredential,
    "welcome-unmerged-leaf-repeated-60000-times": InvalidTree,
    "welcome-4000-leaves-last-duplicates-an-identity": InvalidCredential,
    "application-message-65MB-from-a-member": MessageTooLarge,
    "proposal-unsupported-extension": InvalidProposal,
    "update-claiming-another-identity": InvalidCredential,
    "proposal-reinit-psk": InvalidProposal,
}


# -- the child process -------------------------------------------------------------------


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _address_space() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _run_limited(name: str, conn: Connection) -> None:
    """Child: set up, clamp CPU and memory, feed the hostile bytes, report what happened."""
    attack, expected = ATTACKS[name](), EXPECTED[name]
    start = _cpu_seconds()
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(start + CPU_SECONDS) + 1, cpu_hard))
    _, as_hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_address_space() + EXTRA_MEMORY, as_hard))
    try:
        attack()
        outcome = "accepted"
    except MemoryError:
        outcome = "MemoryError"
    except Exception as exc:  # reported to the parent, which checks the type
        outcome = expected.__name__ if isinstance(exc, expected) else repr(exc)
    conn.send((outcome, _cpu_seconds() - start))
    conn.close()


@pytest.mark.parametrize("name", list(ATTACKS))
def test_hostile_input_costs_under_a_second_and_100_mb(name: str) -> None:
    """Refused with our own error within the CPU and memory limits set by rlimit."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_run_limited, args=(name, send))
    child.start()
    send.close()
    try:
        got = receive.recv() if receive.poll(300) else None
    except EOFError:  # the child died before reporting
        got = None
    child.join(60)
    assert child.exitcode == 0, f"child died (exit {child.exitcode}; -24 is SIGXCPU)"
    assert got is not None
    outcome, cpu = got
    assert outcome == EXPECTED[name].__name__, outcome
    assert cpu < CPU_SECONDS, f"{cpu:.2f} s of CPU"
