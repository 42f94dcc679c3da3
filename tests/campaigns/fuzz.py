"""Fuzzing campaign: Hypothesis against every parser of bytes that come from disk.

Targets, and the only exceptions each may raise:

* the vault header, ``Header.from_bytes`` — :class:`~keystore.IntegrityError`;
* the value format, ``StoreCipher.decrypt_row`` — :class:`~keystore.IntegrityError`;
* the SQLCipher header file, ``Sidecar.from_bytes`` — a :class:`~keystore.KeystoreError`;
* the export file: its header (``ExportHeader.from_bytes``), ``read_export`` on a damaged
  file, and ``import_vault`` of *authenticated* exports whose records are arbitrary (a
  buggy or hostile exporter that knows the backup passphrase) — a ``KeystoreError``;
* list values of the MLS layer, ``decode_list`` — ``ValueError`` (documented);
* a whole vault file with bytes changed, opened, unlocked, verified and read —
  a ``KeystoreError`` (this is where a raw ``sqlite3`` error would escape);
* every decoder of the native MLS engine (MLSMessage of each wire format, and each wire
  struct on its own: LeafNode, KeyPackage, ratchet tree, GroupInfo, GroupSecrets,
  GroupContext, Proposal, Commit, UpdatePath, the header peek) — a native ``MlsError``;
* the native engine's ``process`` and ``join`` fed mutated commits, proposals, application
  messages and Welcomes of a real group — a native ``MlsError``, and a refused message
  leaves the member's storage unchanged.

Inputs are both free-form bytes and mutations of valid encodings, so the fuzzer gets
past the magic numbers.  Quick sizes run in CI; ``--full`` multiplies the examples.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keystore import IntegrityError, KeystoreError, Vault
from keystore.cipher import StoreCipher
from keystore.export import ExportHeader, import_vault, read_export, write_export
from keystore.header import Header
from keystore.sidecar import Sidecar
from mls.categories import decode_list, encode_list
from mls.native import NativeEngine
from mls.storage import GranularStorage
from tests.campaigns.common import FAST_KDF, PASSPHRASE, CampaignReport, Size

__all__ = ["EXAMPLES", "TARGETS", "run"]

#: Examples per parser target; the costly targets run a share of it (see TARGETS).
EXAMPLES = Size(quick=150, full=5000)
_STORE_ID = bytes(range(16))
_CIPHER = StoreCipher(bytearray(range(64)), _STORE_ID)
_CATEGORY = "openmls/v1/tree"
_KEY = b"group-1"
_KEY_HASH = _CIPHER.key_hash(_CATEGORY, _KEY)
_VALID_ROW = _CIPHER.encrypt_row(_CATEGORY, _KEY_HASH, _KEY, b"state" * 10)


def _valid_header() -> bytes:
    with tempfile.TemporaryDirectory() as d, Vault.create(
        Path(d) / "v", PASSPHRASE, kdf=FAST_KDF
    ) as vault:
        del vault
        conn = sqlite3.connect(Path(d) / "v")
        blob = bytes(conn.execute("SELECT header FROM keystore_header").fetchone()[0])
        conn.close()
        return blob


def _valid_export() -> bytes:
    out = io.BytesIO()
    write_export(out, [(_CATEGORY, _KEY, b"state")], PASSPHRASE, FAST_KDF, chunk_size=1024)
    return out.getvalue()


def _mutated(valid: bytes) -> st.SearchStrategy[bytes]:
    """``valid`` with a few bytes replaced, inserted or cut (past the magic, often)."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(("set", "insert", "cut", "truncate")))
            pos = draw(st.integers(0, max(0, len(data) - 1)))
            if op == "set" and data:
                data[pos] = draw(st.integers(0, 255))
            elif op == "insert":
                data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
            elif op == "cut" and data:
                del data[pos : pos + draw(st.integers(1, 8))]
            else:
                del data[pos:]
        return bytes(data)

    return build()


def _inputs(valid: bytes, max_size: int = 400) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=max_size), _mutated(valid))


def _check(allowed: tuple[type[BaseException], ...], call: Callable[[], object]) -> None:
    with contextlib.suppress(*allowed):
        call()


def fuzz_header(examples: int) -> None:
    """Header.from_bytes raises nothing but IntegrityError."""

    @settings(max_examples=examples, deadline=None, database=None)
    @given(_inputs(_valid_header()))
    def target(data: bytes) -> None:
        _check((IntegrityError,), lambda: Header.from_bytes(data))

    target()


def fuzz_value_format(examples: int) -> None:
    """StoreCipher.decrypt_row raises nothing but IntegrityError."""

    @settings(max_examples=examples, deadline=None, database=None)
    @given(_inputs(_VALID_ROW), st.sampled_from([_KEY_HASH, bytes(32), b""]))
    def target(blob: bytes, key_hash: bytes) -> None:
        _check((IntegrityError,), lambda: _CIPHER.decrypt_row(_CATEGORY, key_hash, blob))

    target()


def fuzz_sidecar(examples: int) -> None:
    """Sidecar.from_bytes raises nothing but KeystoreError subclasses."""
    header = bytearray(_valid_header())
    header[5] |= 0x01  # the SQLCipher flag, as in a real header file
    valid = b"MLKSSQLC" + bytes([1]) + (3).to_bytes(4, "big") + bytes([1])
    valid += len(header).to_bytes(2, "big") + bytes(header)

    @settings(max_examples=examples, deadline=None, database=None)
    @given(_inputs(valid))
    def target(data: bytes) -> None:
        _check((KeystoreError,), lambda: Sidecar.from_bytes(data))

    target()


def fuzz_export_header(examples: int) -> None:
    """ExportHeader.from_bytes raises nothing but KeystoreError subclasses."""

    @settings(max_examples=examples, deadline=None, database=None)
    @given(_inputs(_valid_export()[:58]))
    def target(data: bytes) -> None:
        _check((KeystoreError,), lambda: ExportHeader.from_bytes(data))

    target()


def fuzz_export_body(examples: int) -> None:
    """read_export of a damaged file (header intact) raises only KeystoreError."""
    valid = _valid_export()

    @settings(max_examples=examples, deadline=None, database=None)
    @given(_mutated(valid[42:]))
    def target(tail: bytes) -> None:
        _check((KeystoreError,), lambda: list(read_export(io.BytesIO(valid[:42] + tail),
                                                          PASSPHRASE)))

    target()


_records = st.lists(
    st.tuples(
        st.one_of(st.sampled_from([_CATEGORY, "psk"]), st.text(max_size=12)),
        st.binary(max_size=40),
        st.binary(max_size=80),
    ),
    max_size=5,
)


def _same(value: object) -> object:
    return value


def fuzz_import_authenticated(examples: int) -> None:
    """import_vault of authenticated exports with arbitrary records raises only
    KeystoreError (or succeeds); nothing is left at the destination on failure."""

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(_records)
    def target(records: list[tuple[str, bytes, bytes]]) -> None:
        with tempfile.TemporaryDirectory() as d:
            src, dest = Path(d) / "x.export", Path(d) / "restored.vault"
            # A hostile exporter skips the exporter's own checks on what it writes.
            with src.open("wb") as fh, mock.patch.multiple(
                "keystore.export", check_category=_same, check_key=_same, check_value=_same
            ):
                write_export(fh, records, PASSPHRASE, FAST_KDF, chunk_size=1024)
            try:
                import_vault(src, dest, PASSPHRASE, PASSPHRASE, kdf=FAST_KDF)
            except KeystoreError:
                if dest.exists():
                    raise AssertionError("a failed import left a vault behind") from None

    target()


def fuzz_decode_list(examples: int) -> None:
    """decode_list raises nothing but ValueError."""

    @settings(max_examples=examples, deadline=None, database=None)
    @given(_inputs(encode_list([b"a", b"bc", b""])))
    def target(data: bytes) -> None:
        _check((ValueError,), lambda: decode_list(data))

    target()


def _small_vault() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v"
        with Vault.create(path, PASSPHRASE, kdf=FAST_KDF) as vault:
            for i in range(8):
                vault.put(_CATEGORY, b"k%d" % i, os.urandom(100))
        return path.read_bytes()


def fuzz_vault_file(examples: int) -> None:
    """A vault file with bytes changed: open/unlock/verify/read/write raise only KeystoreError."""
    valid = _small_vault()
    edits = st.lists(
        st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)), min_size=1, max_size=6
    )

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(edits)
    def target(changes: list[tuple[int, int]]) -> None:
        data = bytearray(valid)
        for pos, byte in changes:
            data[pos] = byte
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "v"
            path.write_bytes(bytes(data))

            def use() -> None:
                with Vault.open(path) as vault:
                    vault.unlock(PASSPHRASE)
                    vault.verify()
                    for category in vault.categories():
                        list(vault.items(category))
                    vault.stats()
                    vault.put(_CATEGORY, b"new", b"row")

            _check((KeystoreError,), use)

    target()


def _rows(storage: GranularStorage) -> dict[tuple[str, bytes], bytes]:
    return {(c, k): v for c in storage.categories() for k, v in storage.items(c)}


def _restored(rows: dict[tuple[str, bytes], bytes]) -> NativeEngine:
    storage = GranularStorage()
    with storage.operation():
        for (category, key), value in rows.items():
            storage.write(category, key, value)
    return NativeEngine(storage)


@functools.cache
def _native_samples() -> tuple[dict[str, bytes], dict[str, dict[tuple[str, bytes], bytes]]]:
    """Valid wire messages of a small native group, as mutation seeds, and the rows of the
    member each is addressed to (``receiver`` for group messages, ``joiner`` for the
    Welcome), so every example starts from the same state.  Built once."""
    from mls.native.welcome import GroupInfo

    alice = NativeEngine.create(GranularStorage(), b"alice")
    bob = NativeEngine.create(GranularStorage(), b"bob")
    carol = NativeEngine.create(GranularStorage(), b"carol")
    alice.create_group(_NATIVE_GID)
    add, welcome = alice.commit(_NATIVE_GID, add=[bob.generate_key_package()])
    assert welcome is not None
    joiner = _rows(bob.storage)
    bob.join(welcome)
    proposal = bob.propose_update(_NATIVE_GID)
    application = bob.encrypt(_NATIVE_GID, b"hello")
    commit, _ = bob.commit(_NATIVE_GID, force_path=True)
    receiver = _rows(alice.storage)
    tree = alice._tree(_NATIVE_GID)
    leaf = tree.leaf(0)
    assert leaf is not None
    info = GroupInfo(alice._context(_NATIVE_GID), (), bytes(32), 0, bytes(64))
    samples = {
        "commit-with-path": commit,
        "commit-add": add,
        "welcome": welcome,
        "key-package": carol.generate_key_package(),
        "proposal": proposal,
        "application": application,
        "ratchet-tree": tree.to_bytes(),
        "leaf-node": leaf.to_bytes(),
        "group-info": info.to_bytes(),
        "group-context": alice._context(_NATIVE_GID).to_bytes(),
    }
    return samples, {"receiver": receiver, "joiner": joiner}


_NATIVE_GID = b"fuzzed group"


def _native_decoders() -> dict[str, Callable[[bytes], object]]:
    from mls.native.codec import decode_exact
    from mls.native.framing import MLSMessage, peek_header
    from mls.native.group_context import GroupContext
    from mls.native.key_package import KeyPackage
    from mls.native.leaf_node import LeafNode
    from mls.native.proposals import Commit, Proposal, UpdatePath
    from mls.native.tree import RatchetTree
    from mls.native.welcome import GroupInfo, GroupSecrets

    return {
        "mls-message": lambda b: decode_exact(b, MLSMessage.decode),
        "peek-header": peek_header,
        "ratchet-tree": RatchetTree.from_bytes,
        "leaf-node": lambda b: decode_exact(b, LeafNode.decode),
        "key-package": lambda b: decode_exact(b, KeyPackage.decode),
        "group-info": lambda b: decode_exact(b, GroupInfo.decode),
        "group-secrets": lambda b: decode_exact(b, GroupSecrets.decode),
        "group-context": lambda b: decode_exact(b, GroupContext.decode),
        "proposal": lambda b: decode_exact(b, Proposal.decode),
        "commit": lambda b: decode_exact(b, Commit.decode),
        "update-path": lambda b: decode_exact(b, UpdatePath.decode),
    }


def fuzz_native_decoders(examples: int) -> None:
    """Every native MLS decoder raises nothing but the engine's MlsError."""
    from mls.native.errors import MlsError

    samples, _ = _native_samples()
    decoders = _native_decoders()
    seeds = st.sampled_from(sorted(samples)).flatmap(lambda k: _mutated(samples[k]))

    @settings(max_examples=examples, deadline=None, database=None)
    @given(st.sampled_from(sorted(decoders)), st.one_of(st.binary(max_size=400), seeds))
    def target(name: str, data: bytes) -> None:
        _check((MlsError,), lambda: decoders[name](data))

    target()


def fuzz_native_engine(examples: int) -> None:
    """NativeEngine.process/join of mutated real messages raise only MlsError, and a
    refused message changes nothing in the member's storage."""
    from mls.native.errors import MlsError

    samples, states = _native_samples()
    kinds = ["commit-with-path", "proposal", "application", "welcome"]

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(kinds).flatmap(lambda k: st.tuples(st.just(k),
                                                              _mutated(samples[k]))))
    def target(case: tuple[str, bytes]) -> None:
        kind, data = case
        state = states["joiner" if kind == "welcome" else "receiver"]
        engine = _restored(state)
        try:
            if kind == "welcome":
                engine.join(data)
            else:
                engine.process(_NATIVE_GID, data)
        except MlsError:
            if _rows(engine.storage) != state:
                raise AssertionError(f"a refused {kind} changed the storage") from None

    target()


#: name -> (target, share of the examples it runs: the costly ones build files).
TARGETS: dict[str, tuple[Callable[[int], None], int]] = {
    "header": (fuzz_header, 1),
    "value-format": (fuzz_value_format, 1),
    "sidecar": (fuzz_sidecar, 1),
    "export-header": (fuzz_export_header, 1),
    "export-body": (fuzz_export_body, 1),
    "import-authenticated-records": (fuzz_import_authenticated, 5),
    "decode-list": (fuzz_decode_list, 1),
    "vault-file": (fuzz_vault_file, 10),
    "native-decoders": (fuzz_native_decoders, 1),
    "native-engine": (fuzz_native_engine, 2),
}


def examples_for(name: str, examples: int) -> int:
    """How many examples the named target runs in a run of size ``examples``."""
    return max(10, examples // TARGETS[name][1])


def run(examples: int, seed: int = 0, directory: Path | None = None) -> CampaignReport:
    """Every target with ``examples`` examples (fewer for the costly ones)."""
    report = CampaignReport("fuzzing (Hypothesis)")
    for name, (target, _) in TARGETS.items():
        report.trials += 1
        n = examples_for(name, examples)
        try:
            target(n)
        except Exception as exc:
            report.find(f"[{name}] {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        report.count(f"{name} examples", n)
    return report
