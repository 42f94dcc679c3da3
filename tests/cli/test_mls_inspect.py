"""``mls-keystore mls ...``: MLS inspection from the shell, read-only, on both engines."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from keystore import Change, Vault, VaultBusy, profiles
from mls import MlsClient
from mls.client import Engine
from mls.inspection import MlsInspector
from mls.native.codec import Reader, decode_exact
from tests.cli.conftest import PASSPHRASE, REPO, Runner, secret_file

KDF = profiles.INSECURE_FOR_TESTS_ONLY
ENV = {"MLS_KEYSTORE_PASSPHRASE": PASSPHRASE}
KINDS = [("native", False), ("native", True), ("mls-rs", False), ("mls-rs", True)]


@dataclass(frozen=True)
class Made:
    """Two closed client vaults and what the test did with them."""

    alice: Path
    bob: Path
    group_id: bytes
    pending_commit: bytes | None  # alice's pending commit (native only)
    bob_refs: int  # key packages bob published and has not used


def _make(tmp_path: Path, engine: str, sqlcipher: bool) -> Made:
    if engine == "mls-rs":
        pytest.importorskip("mls_rs_uniffi")
    if sqlcipher:
        pytest.importorskip("sqlcipher3")
    name: Engine = "native" if engine == "native" else "mls-rs"
    alice, bob = (
        MlsClient.create(tmp_path / f"{who}.vault", PASSPHRASE, identity=who.encode(), kdf=KDF,
                         engine=name, sqlcipher=sqlcipher)
        for who in ("alice", "bob")
    )
    with alice, bob:
        gid = alice.create_group()
        _, welcome = alice.add_members(gid, [bob.generate_key_package()])
        bob.join(welcome)
        bob.generate_key_package()
        pending = None
        if engine == "native":
            bob.generate_key_package(last_resort=True)
            alice.process(gid, bob.propose_update(gid))
            pending, _ = alice.commit(gid, force_path=True, pending=True)
    return Made(tmp_path / "alice.vault", tmp_path / "bob.vault", gid, pending,
                2 if engine == "native" else 1)


def _files(vault: Path) -> dict[str, str]:
    """Digest of every file of the vault except SQLite's shared-memory index (``-shm``),
    which every WAL reader updates (read marks) and which holds no data."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(vault.parent.iterdir())
        if p.name.startswith(vault.name) and not p.name.endswith("-shm")
    }


def _durable_bytes(vault: Path) -> dict[str, str]:
    """The vault file and a non-empty WAL: where data lives (an empty WAL holds none)."""
    return {k: v for k, v in _files(vault).items()
            if not (k.endswith("-wal") and (vault.parent / k).stat().st_size == 0)}


@pytest.mark.parametrize(("engine", "sqlcipher"), KINDS,
                         ids=[f"{e}-{'sqlcipher' if s else 'plain'}" for e, s in KINDS])
def test_every_command_reports_the_state_and_writes_nothing(
    tmp_path: Path, cli: Runner, engine: str, sqlcipher: bool
) -> None:
    """groups/members/key-packages/pending show the client's state in JSON; no byte changes."""
    made = _make(tmp_path, engine, sqlcipher)
    before = {made.alice: _durable_bytes(made.alice), made.bob: _durable_bytes(made.bob)}
    gid = made.group_id.hex()

    groups = cli("mls", "groups", made.alice, "--json", env=ENV)
    assert groups.code == 0, groups.err
    report = groups.json()
    assert report["client"] == {"path": str(made.alice), "engine": engine,
                                "identity": b"alice".hex(), "identity_text": "alice",
                                "cipher_suite": 1}
    [group] = report["groups"]
    assert (group["group_id"], group["cipher_suite"], group["members"]) == (gid, 1, 2)
    assert group["epoch"] == 1
    assert group["pending_commit"] is (made.pending_commit is not None)
    assert group["pending_proposals"] == (1 if engine == "native" else None)

    members = cli("--json", "mls", "members", made.bob, gid[:8], env=ENV).json()
    assert [(m["leaf_index"], m["identity_text"], m["is_self"]) for m in members["members"]] \
        == [(0, "alice", False), (1, "bob", True)]

    kps = cli("mls", "key-packages", made.bob, "--json", env=ENV).json()["key_packages"]
    assert len(kps) == made.bob_refs
    if engine == "native":
        assert sorted(k["last_resort"] for k in kps) == [False, True]
        assert all(k["cipher_suite"] == 1 and k["not_before"] < k["not_after"] for k in kps)
    else:  # mls-rs records only the reference and when it was made
        assert all(k["cipher_suite"] is None and k["created_at"] > 0 for k in kps)

    [pending] = cli("mls", "pending", made.alice, "--json", env=ENV).json()["groups"]
    if made.pending_commit is not None:
        assert pending["pending_commit"]["commit_sha256"] == \
            hashlib.sha256(made.pending_commit).hexdigest()
        assert [p["kind"] for p in pending["pending_proposals"]] == ["update"]
    else:
        assert pending["pending_commit"] is None and pending["pending_proposals"] is None

    after = {made.alice: _durable_bytes(made.alice), made.bob: _durable_bytes(made.bob)}
    assert after == before


def test_inspection_leaves_every_file_as_it_was(tmp_path: Path, run: Runner) -> None:
    """Run as a user would, all four commands change no file (SQLite's -shm index aside)."""
    made = _make(tmp_path, "native", False)
    with Vault.open(made.alice, readonly=True):
        pass  # the files a first read-only open prepares (an empty, private -wal)
    before = _files(made.alice)
    gid = made.group_id.hex()
    for args in (("groups",), ("members", gid), ("key-packages",), ("pending",),
                 ("pending", gid)):
        result = run("mls", args[0], made.alice, *args[1:], env=ENV)
        assert result.code == 0, result.err
    assert _files(made.alice) == before


def test_works_while_the_application_holds_the_vault(tmp_path: Path, run: Runner) -> None:
    """A running client keeps the writer lock; inspection still reads its latest state."""
    made = _make(tmp_path, "native", False)
    holder = (
        "import sys\n"
        "from keystore import profiles\n"
        "from mls import MlsClient\n"
        f"c = MlsClient.open({str(made.alice)!r}, {PASSPHRASE!r})\n"
        "c.create_group(b'second group')\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "c.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with pytest.raises(VaultBusy):
            MlsClient.open(made.alice, PASSPHRASE)
        result = run("mls", "groups", made.alice, "--json", env=ENV)
        assert result.code == 0, result.err
        ids = [g["group_id"] for g in result.json()["groups"]]
        assert ids == sorted([made.group_id.hex(), b"second group".hex()])
    finally:
        assert child.stdin is not None
        child.stdin.close()
        assert child.wait(timeout=60) == 0


def test_raw_key_vault_needs_its_key_file(tmp_path: Path, cli: Runner) -> None:
    """A raw-key client vault opens with --raw-key-file, and says so without it."""
    key = os.urandom(32)
    with MlsClient.create_with_key(tmp_path / "k.vault", key, identity=b"carol") as c:
        gid = c.create_group()
    key_file = secret_file(tmp_path / "key.hex", key.hex())
    ok = cli("mls", "groups", tmp_path / "k.vault", "--raw-key-file", key_file, "--json")
    assert ok.code == 0 and ok.json()["groups"][0]["group_id"] == gid.hex()
    missing = cli("mls", "groups", tmp_path / "k.vault", env=ENV)
    assert missing.code == 2 and "--raw-key-file" in missing.err


def test_text_output_is_for_people(tmp_path: Path, cli: Runner) -> None:
    """Without --json: one line per group and per member, ids in hex, identities as text."""
    made = _make(tmp_path, "native", False)
    groups = cli("mls", "groups", made.alice, env=ENV)
    assert groups.code == 0
    assert f"{made.group_id.hex()}       1      1        2  commit, 1 proposal(s)" in groups.out
    members = cli("mls", "members", made.alice, made.group_id.hex(), env=ENV).out
    assert "0  'alice'  (this client)" in members and "1  'bob'" in members
    pending = cli("mls", "pending", made.alice, env=ENV).out
    assert "pending commit made in epoch 1" in pending and "proposal update from leaf 1" in pending


def test_private_keys_of_key_packages_are_never_shown(tmp_path: Path, cli: Runner) -> None:
    """The init and leaf private keys stored beside each key package appear in no output."""
    made = _make(tmp_path, "native", False)
    secrets: list[bytes] = []
    with Vault.open(made.bob, readonly=True) as v:
        v.unlock(PASSPHRASE)
        for _, row in v.items("openmls/v1/key_package"):
            def private(r: Reader) -> None:
                r.u8()
                r.opaque()
                secrets.extend((r.opaque(), r.opaque()))
            decode_exact(row, private)
    assert len(secrets) == 4 and all(len(s) == 32 for s in secrets)
    out = "".join(cli("mls", c, made.bob, *j, env=ENV).out
                  for c in ("groups", "key-packages", "pending") for j in ((), ("--json",)))
    assert not any(s.hex() in out for s in secrets)


@pytest.mark.parametrize(("args", "code", "error"), [
    (("groups", "{alice}"), 3, "WrongPassphrase"),
    (("members", "{alice}", "ffff"), 2, "UnknownGroup"),
    (("members", "{alice}", "not-hex"), 2, "UsageError"),
    (("groups", "{plain}"), 6, "NotAnMlsVault"),
    (("groups", "{missing}"), 6, "NotAVault"),
    (("groups",), 2, "UsageError"),
    (("groups", "{alice}", "--passphrase", "hunter2"), 2, "UsageError"),
    (("hunter2", "{alice}"), 2, "UsageError"),
])
def test_failures_are_one_line_with_the_documented_code(
    tmp_path: Path, cli: Runner, args: tuple[str, ...], code: int, error: str
) -> None:
    """Each failure: its exit code, a JSON error object, one stderr line, no traceback."""
    made = _make(tmp_path, "native", False)
    with Vault.create(tmp_path / "plain.vault", PASSPHRASE, kdf=KDF) as v:
        v.apply([Change("notes", b"k", b"v")])
    paths = {"alice": made.alice, "plain": tmp_path / "plain.vault",
             "missing": tmp_path / "missing.vault"}
    env = {"MLS_KEYSTORE_PASSPHRASE": "wrong passphrase"} if code == 3 else ENV
    result = cli("mls", *(a.format(**paths) for a in args), "--json", env=env)
    assert result.code == code
    assert result.json()["error"] == error
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert "hunter2" not in result.err + result.out


def test_inspector_refuses_a_writable_vault(tmp_path: Path) -> None:
    """MlsInspector only accepts a read-only vault, so it cannot write by construction."""
    made = _make(tmp_path, "native", False)
    with Vault.open(made.alice) as v:
        v.unlock(PASSPHRASE)
        with pytest.raises(ValueError, match="readonly"):
            MlsInspector(v)


def test_an_mls_rs_vault_without_the_binding_is_exit_9(
    tmp_path: Path, cli: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inspecting an mls-rs vault needs the [mls-rs] extra: without it, exit 9, the hint."""
    made = _make(tmp_path, "mls-rs", False)
    before = _durable_bytes(made.alice)
    monkeypatch.setitem(sys.modules, "mls_rs_uniffi", None)
    result = cli("mls", "groups", made.alice, "--json", env=ENV)
    assert result.code == 9 and result.json()["error"] == "MlsRsUnavailable"
    assert "pip install -e '.[mls-rs]'" in result.err
    assert _durable_bytes(made.alice) == before


def test_a_client_vault_on_read_only_media_can_be_inspected(
    tmp_path: Path, pwfile: Path
) -> None:
    """On a read-only mount (no -shm can be made) inspection still reads every group."""
    from tests.cli.test_failures import _on_read_only

    folder = tmp_path / "media"
    folder.mkdir()
    with MlsClient.create(folder / "c.vault", PASSPHRASE, identity=b"carol", kdf=KDF) as c:
        gid = c.create_group()
    before = _files(folder / "c.vault")
    result = _on_read_only(folder, sys.executable, "-m", "keystore", "mls", "groups",
                           folder / "c.vault", "--passphrase-file", pwfile, "--json")
    assert result.code == 0, result.err
    assert [g["group_id"] for g in result.json()["groups"]] == [gid.hex()]
    assert _files(folder / "c.vault") == before
