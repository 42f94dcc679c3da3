"""Crash campaign: a child runs a random workload and is killed with SIGKILL at random moments.

The child (forked, so a round costs no interpreter start-up) opens the vault, works, and
writes one line to a pipe for each event it has seen acknowledged as durable: a vault
batch whose ``apply`` returned, a storage operation covered by a drainer ``flush`` that
returned, a passphrase change, a rekey.  The parent kills it after a random delay
(sometimes before it has even finished opening), reopens the vault and checks:

* it opens, and a passphrase that may legitimately be current unlocks it;
* ``verify`` passes (every row authenticates);
* every acknowledged batch is there, and no batch is half present: every row of batch
  ``b`` carries ``b``, the batch's size ``n`` and its index, and batch ``b``'s manifest
  row is written in the same transaction, so "some rows of ``b`` but not all", "rows
  without a manifest" and "a manifest without its rows" are each detectable;
* a batch that deleted an earlier batch deleted all of it, in the same transaction;
* the key generation is at least one plus the number of acknowledged rekeys.

Workloads: ``vault`` (``Vault.apply`` batches, passphrase changes, rekeys) and
``storage`` (operations on a :class:`~mls.storage.GranularStorage` drained by a
background :class:`~mls.drainer.WriteBehindDrainer` plus explicit flushes, with
passphrase changes and rekeys from the same process), each over a plain and a
SQLCipher vault; and ``mls``: two :class:`~mls.client.MlsClient` (mls-rs) in one
group exchanging application messages, each acknowledged once ``encrypt`` (sent) or
``process`` (received) returned.  After a kill, every acknowledged-sent message not
acknowledged as received is delivered again, in order, and must decrypt to what was
sent (exactly once: a replay returns the stored outcome); then both clients must
still talk both ways, and both vaults verify.  The same vault lives through every
round, so crashes land on the recovery of earlier crashes too.  Except for ``migrate``:
each of its rounds takes a fresh copy of the checked-in version-1 vault, opens it with
``auto_migrate`` (backup, then every step) and writes batches; 70% of its kills come
within 60 ms of the fork, while it opens, backs up or migrates.  After the kill the
vault must open (finishing the migration), hold every row of the old vault unchanged
plus the acknowledged batches, and verify; a ``*.bak`` beside it must be complete.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from keystore import Change, KeystoreError, Vault, WrongPassphrase, migrations
from keystore.vault import ChangeLike
from tests.campaigns.common import FAST_KDF, CampaignReport, Size
from tests.fixtures.make_fixtures import PASSPHRASE as V1_PASSPHRASE
from tests.fixtures.make_fixtures import ROWS as V1_ROWS
from tests.fixtures.make_fixtures import VAULT_V1

__all__ = ["KILLS", "WORKLOADS", "run", "run_workload"]

KILLS = Size(quick=56, full=1000)
#: (workload, vault kind) pairs; the kills are shared out between them.
WORKLOADS: tuple[tuple[str, str], ...] = (
    ("vault", "plain"),
    ("storage", "plain"),
    ("vault", "sqlcipher"),
    ("storage", "sqlcipher"),
    ("mls", "plain"),
    ("migrate", "plain"),
)
DATA = "campaign/data"
MANIFEST = "campaign/manifest"
PASSPHRASES = ("crash campaign first passphrase", "crash campaign second passphrase")
#: Longest wait before the kill; the child is killed before "ready" in some rounds.
MAX_DELAY = 0.25
#: Live batches the workload aims at (it deletes old batches to stay near this).
TARGET_LIVE = 60


def _row_key(batch: int, index: int) -> bytes:
    return f"{batch}/{index}".encode()


def _value_prefix(batch: int, size: int, index: int) -> bytes:
    return f"b={batch};n={size};i={index};".encode()


def _manifest(size: int, deletes: int) -> bytes:
    return f"n={size};del={deletes}".encode()


def _parse_manifest(raw: bytes) -> tuple[int, int]:
    size, deletes = raw.decode().split(";")
    return int(size.removeprefix("n=")), int(deletes.removeprefix("del="))


def _live(manifests: dict[int, tuple[int, int]]) -> dict[int, int]:
    """Batches whose rows should be present: committed and not deleted by another batch."""
    deleted = {d for _, d in manifests.values()}
    return {b: n for b, (n, _) in manifests.items() if b not in deleted}


def _batch_changes(
    rng: random.Random, batch: int, live: dict[int, int]
) -> tuple[list[Change], int, int]:
    """The changes of one batch: its rows, its manifest, and maybe an earlier batch deleted."""
    size = rng.randint(1, 16)
    victim = -1
    if live and rng.random() < min(0.9, len(live) / TARGET_LIVE):
        victim = rng.choice(sorted(live))
    changes = [
        Change(
            DATA,
            _row_key(batch, i),
            _value_prefix(batch, size, i) + rng.randbytes(rng.randint(0, 400)),
        )
        for i in range(size)
    ]
    if victim >= 0:
        changes += [Change(DATA, _row_key(victim, i), None) for i in range(live[victim])]
    changes.append(Change(MANIFEST, str(batch).encode(), _manifest(size, victim)))
    return changes, size, victim


@dataclass(slots=True)
class _State:
    """What the parent knows: acknowledged events and which passphrase may be current."""

    acked: set[int] = field(default_factory=set)
    passphrase: int = 0
    passphrase_pending: int | None = None
    rekeys_acked: int = 0
    next_batch: int = 0
    messages: dict[int, tuple[int, bytes]] = field(default_factory=dict)


class _Reporter:
    """The child's side of the pipe: one short line per acknowledged event."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __call__(self, line: str) -> None:
        os.write(self._fd, (line + "\n").encode())


def _open_unlocked(path: Path, passphrase: str) -> Vault:
    vault = Vault.open(path, timeout=5.0)
    try:
        vault.unlock(passphrase)
    except BaseException:
        vault.close()
        raise
    return vault


def _child(
    path: Path, workload: str, passphrase: int, first_batch: int, seed: int, say: _Reporter
) -> None:
    """The workload; runs until killed (or until the parent is gone)."""
    rng = random.Random(seed)
    vault = _open_unlocked(path, PASSPHRASES[passphrase])
    manifests = {int(k): _parse_manifest(v) for k, v in vault.items(MANIFEST)}
    live = _live(manifests)
    batch = first_batch
    storage = drainer = None
    if workload == "storage":
        from mls.drainer import WriteBehindDrainer
        from mls.storage import GranularStorage

        storage = GranularStorage.load(vault)
        drainer = WriteBehindDrainer(storage, vault, interval=0.005, threshold=64)
        drainer.start()
    say("ready")
    completed: list[int] = []
    parent = os.getppid()
    while os.getppid() == parent:  # never outlive a campaign that died itself
        roll = rng.random()
        if roll < 0.03:
            new = 1 - passphrase
            say(f"pw-start {new}")
            vault.change_passphrase(PASSPHRASES[passphrase], PASSPHRASES[new])
            passphrase = new
            say(f"pw-ack {new}")
            continue
        if roll < 0.06:
            vault.rekey()
            say("rekey")
            continue
        changes, size, victim = _batch_changes(rng, batch, live)
        if storage is None or drainer is None:
            vault.apply(changes)
            say(f"batch {batch}")
        else:
            with storage.operation():
                for ch in changes:
                    if ch.value is None:
                        storage.delete(ch.category, ch.key)
                    else:
                        storage.write(ch.category, ch.key, ch.value)
            completed.append(batch)
            if rng.random() < 0.3:
                drainer.flush()
                for b in completed:
                    say(f"batch {b}")
                completed.clear()
        live.pop(victim, None)
        live[batch] = size
        batch += 1


MLS_GROUP = b"crash-campaign-group"
MLS_NAMES = ("alice", "bob")


def _message(index: int) -> bytes:
    return f"crash campaign message {index}".encode()


def _mls_setup(directory: Path) -> None:
    from mls.client import MlsClient

    alice = MlsClient.create(
        directory / "alice.vault", PASSPHRASES[0], identity=b"alice", kdf=FAST_KDF, engine="mls-rs"
    )
    bob = MlsClient.create(
        directory / "bob.vault", PASSPHRASES[0], identity=b"bob", kdf=FAST_KDF, engine="mls-rs"
    )
    try:
        alice.create_group(MLS_GROUP)
        _, welcome = alice.add_members(MLS_GROUP, [bob.generate_key_package()])
        bob.join(welcome)
    finally:
        alice.close()
        bob.close()


def _mls_child(directory: Path, first: int, seed: int, say: _Reporter) -> None:
    """Alice and Bob exchange messages until killed; acks carry the ciphertext."""
    from mls.client import MlsClient

    rng = random.Random(seed)
    clients = [MlsClient.open(directory / f"{n}.vault", PASSPHRASES[0]) for n in MLS_NAMES]
    say("ready")
    index = first
    parent = os.getppid()
    while os.getppid() == parent:
        sender = rng.randrange(2)
        wire = clients[sender].encrypt(MLS_GROUP, _message(index))
        say(f"sent {index} {sender} {wire.hex()}")
        clients[1 - sender].process(MLS_GROUP, wire)
        say(f"recv {index}")
        index += 1


def _migrate_child(path: Path, first: int, seed: int, say: _Reporter) -> None:
    """Migrate an old vault on open, then write batches until killed."""
    rng = random.Random(seed)
    vault = Vault.open(path, auto_migrate=True)
    vault.unlock(V1_PASSPHRASE)
    say("ready")
    live: dict[int, int] = {}
    batch = first
    parent = os.getppid()
    while os.getppid() == parent:
        changes, size, victim = _batch_changes(rng, batch, live)
        vault.apply(changes)
        say(f"batch {batch}")
        live.pop(victim, None)
        live[batch] = size
        batch += 1


def check_migrated(path: Path, acked: set[int]) -> list[str]:
    """The old rows survive an interrupted migration; acknowledged batches too."""
    try:
        vault = Vault.open(path, auto_migrate=True)  # finishes an interrupted migration
        vault.unlock(V1_PASSPHRASE)
    except KeystoreError as exc:
        return [f"the old vault does not open after the kill: {type(exc).__name__}: {exc}"]
    problems: list[str] = []
    with vault:
        if not vault.verify().ok:
            problems.append("verify failed after an interrupted migration")
        for category, key, value in V1_ROWS:
            if vault.get(category, key) != value:
                problems.append("a row of the old vault was lost or changed by the migration")
        manifests = {int(k): _parse_manifest(v) for k, v in vault.items(MANIFEST)}
        problems += _check_batches(manifests, dict(vault.items(DATA)), acked)
    for backup in path.parent.glob(f"{path.name}.*bak"):
        conn = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
        try:
            ok = conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = conn.execute("SELECT COUNT(*) FROM keystore_rows").fetchone()[0]
        except sqlite3.Error:
            ok, rows = False, -1
        finally:
            conn.close()
        if not ok or rows != len(V1_ROWS):
            problems.append(f"the backup {backup.name} is incomplete or damaged")
    return problems


def check_mls(directory: Path, pending: dict[int, tuple[int, bytes]]) -> list[str]:
    """Redeliver acknowledged-sent messages, then both clients must still talk."""
    from mls.client import MlsClient

    problems: list[str] = []
    try:
        clients = [MlsClient.open(directory / f"{n}.vault", PASSPHRASES[0]) for n in MLS_NAMES]
    except KeystoreError as exc:
        return [f"a client does not open after the kill: {type(exc).__name__}: {exc}"]
    try:
        for index in sorted(pending):
            sender, wire = pending.pop(index)
            got = clients[1 - sender].process(MLS_GROUP, wire)
            if got.data != _message(index):
                problems.append(f"message {index} decrypted to something else after the kill")
        for sender in (0, 1):
            wire = clients[sender].encrypt(MLS_GROUP, b"after the kill")
            if clients[1 - sender].process(MLS_GROUP, wire).data != b"after the kill":
                problems.append("the clients can no longer talk after the kill")
        for client in clients:
            if not client.vault.verify().ok:
                problems.append("a client vault does not verify after the kill")
    except Exception as exc:  # any failure to carry on is the finding
        problems.append(f"the group broke after the kill: {type(exc).__name__}: {exc}")
    finally:
        for client in clients:
            client.close()
    return problems


def _fork_child(
    path: Path, workload: str, state: _State, first_batch: int, seed: int
) -> tuple[int, int]:
    """Fork the workload; returns ``(pid, read end of its pipe)``."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        os.close(read_fd)
        status = 0
        say = _Reporter(write_fd)
        try:
            if workload == "mls":
                _mls_child(path, first_batch, seed, say)
            elif workload == "migrate":
                _migrate_child(path, first_batch, seed, say)
            else:
                _child(path, workload, state.passphrase, first_batch, seed, say)
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                say(f"error {type(exc).__name__}: {exc}".replace("\n", " "))
            status = 1
        finally:
            os._exit(status)
    os.close(write_fd)
    return pid, read_fd


def _read_all(fd: int) -> list[str]:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace").splitlines()


def _wait_ready(fd: int, timeout: float) -> bool:
    """Wait until the child has written something (its "ready" line) or timeout."""
    import select

    readable, _, _ = select.select([fd], [], [], timeout)
    return bool(readable)


def _unlock_any(path: Path, state: _State) -> tuple[Vault | None, str | None]:
    """Open and unlock with a passphrase that may be current; report which one worked."""
    allowed = [state.passphrase]
    if state.passphrase_pending is not None:
        allowed.append(state.passphrase_pending)
    vault = Vault.open(path)
    for index in allowed:
        try:
            vault.unlock(PASSPHRASES[index])
        except WrongPassphrase:
            continue
        state.passphrase = index
        state.passphrase_pending = None
        return vault, None
    vault.close()
    return None, f"no allowed passphrase {allowed} unlocks the vault"


def check_vault(path: Path, state: _State) -> list[str]:
    """Reopen the vault after a kill and list every violated invariant."""
    try:
        vault, problem = _unlock_any(path, state)
    except KeystoreError as exc:
        return [f"vault does not open after the kill: {type(exc).__name__}: {exc}"]
    if vault is None:
        return [str(problem)]
    problems: list[str] = []
    with vault:
        report = vault.verify()
        if not report.ok:
            problems.append(f"verify failed on {len(report.failures)} rows")
        manifests = {int(k): _parse_manifest(v) for k, v in vault.items(MANIFEST)}
        rows = dict(vault.items(DATA))
        generation = vault.stats().key_generation
        state.next_batch = max([*manifests, *state.acked], default=-1) + 1
        problems += _check_batches(manifests, rows, state.acked)
        if generation < 1 + state.rekeys_acked:
            problems.append(
                f"key generation {generation} but {state.rekeys_acked} rekeys were acknowledged"
            )
        state.rekeys_acked = generation - 1
        if not problems:
            _compact(vault, manifests, state)
    return problems


def _check_batches(
    manifests: dict[int, tuple[int, int]], rows: dict[bytes, bytes], acked: Iterable[int]
) -> list[str]:
    problems = [f"acknowledged batch {b} has no manifest" for b in acked if b not in manifests]
    live = _live(manifests)
    by_batch: dict[int, dict[int, bytes]] = {}
    for key, value in rows.items():
        batch, index = (int(part) for part in key.decode().split("/"))
        by_batch.setdefault(batch, {})[index] = value
    for batch, present in by_batch.items():
        if batch not in manifests:
            problems.append(f"rows of batch {batch} are present without its manifest")
        elif batch not in live:
            problems.append(f"batch {batch} was deleted but {len(present)} rows remain")
    for batch, size in live.items():
        present = by_batch.get(batch, {})
        if sorted(present) != list(range(size)):
            problems.append(f"batch {batch} is half present: {len(present)} of {size} rows")
            continue
        for index, value in present.items():
            if not value.startswith(_value_prefix(batch, size, index)):
                problems.append(f"row {index} of batch {batch} holds another row's value")
    return problems


def _compact(vault: Vault, manifests: dict[int, tuple[int, int]], state: _State) -> None:
    """Drop the manifests of deleted batches (already checked) so the vault stays small."""
    live = _live(manifests)
    gone = [b for b in manifests if b not in live]
    changes: list[ChangeLike] = [Change(MANIFEST, str(b).encode(), None) for b in gone]
    if changes:
        vault.apply(changes)
    state.acked.difference_update(gone)


def _apply_events(lines: list[str], state: _State, report: CampaignReport) -> int:
    """Fold the child's acknowledgements into the parent's state; returns batches acked."""
    batches = 0
    for line in lines:
        word, _, arg = line.partition(" ")
        if word == "sent":
            index, sender, wire = arg.split(" ")
            state.messages[int(index)] = (int(sender), bytes.fromhex(wire))
            state.next_batch = int(index) + 1
            report.count("messages sent (acked)")
        elif word == "recv":
            state.messages.pop(int(arg), None)
            report.count("messages received (acked)")
        elif word == "batch":
            state.acked.add(int(arg))
            batches += 1
        elif word == "pw-start":
            state.passphrase_pending = int(arg)
        elif word == "pw-ack":
            state.passphrase, state.passphrase_pending = int(arg), None
            report.count("passphrase changes acked")
        elif word == "rekey":
            state.rekeys_acked += 1
            report.count("rekeys acked")
        elif word == "error":
            report.find(f"the workload failed on its own: {arg}")
    report.count("batches acked", batches)
    return batches


def run_workload(
    directory: Path,
    workload: str,
    kind: str,
    kills: int,
    seed: int,
    report: CampaignReport,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Kill one workload ``kills`` times over one vault, checking after every kill."""
    rng = random.Random(seed)
    path = directory / f"{workload}-{kind}.vault"
    if workload == "mls":
        path = directory / "mls"
        path.mkdir()
        _mls_setup(path)
    elif workload == "migrate":
        pass  # a fresh copy of the old vault every round
    else:
        Vault.create(path, PASSPHRASES[0], kdf=FAST_KDF, sqlcipher=kind == "sqlcipher").close()
    state = _State()
    for round_no in range(kills):
        if workload == "migrate":
            path = directory / f"migrate-{round_no}.vault"
            shutil.copyfile(VAULT_V1, path)
            state = _State()
        pid, fd = _fork_child(path, workload, state, state.next_batch, rng.getrandbits(32))
        if rng.random() < (0.7 if workload == "migrate" else 0.15):
            # kill while it opens, recovers, loads (or migrates)
            sleep(rng.uniform(0.0, 0.06 if workload == "migrate" else 0.03))
            report.count("kills before ready")
        elif _wait_ready(fd, 10.0):
            sleep(rng.uniform(0.0, MAX_DELAY))
        else:
            report.find("the child did not get ready in 10 s")
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        report.trials += 1
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            report.count("children that exited before the kill")
        lines = _read_all(fd)
        _apply_events(lines, state, report)
        if workload == "mls":
            problems = check_mls(path, state.messages)
            state.next_batch += 1  # a message sent without its ack keeps its number
        elif workload == "migrate":
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.close()
            if version < migrations.LATEST_VERSION:
                started = any(path.parent.glob(f"*{path.name}.v*"))  # backup, maybe partial
                report.count(
                    "kills during backup or migration"
                    if started
                    else "kills before the migration started"
                )
            problems = check_migrated(path, state.acked)
        else:
            problems = check_vault(path, state)
        for problem in problems:
            report.find(f"[{workload}/{kind}] {problem}")
        report.count(f"kills {workload}/{kind}")


def run(kills: int, seed: int = 0, directory: Path | None = None) -> CampaignReport:
    """Share ``kills`` SIGKILLs out between every workload; return what was found."""
    report = CampaignReport("crash (kill -9)")
    per = -(-kills // len(WORKLOADS))  # round up: at least ``kills`` in all
    with contextlib.ExitStack() as stack:
        base = directory or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for i, (workload, kind) in enumerate(WORKLOADS):
            try:
                run_workload(base, workload, kind, per, seed * 100 + i, report)
            except ImportError as exc:  # an optional engine (mls-rs, sqlcipher3) is missing
                report.skipped.append(f"{workload}/{kind}: {exc}")
    return report
