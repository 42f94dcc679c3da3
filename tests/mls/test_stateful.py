"""Hypothesis stateful test: random writes, deletes, operations, failures, drains, reopens.

A plain dict is the model.  Memory must always equal the model; after a successful flush
the vault must equal it too, and a reopen (close, open, load) must give it back exactly.
Quick in CI; ``MLS_STORAGE_FULL=1`` runs a longer campaign.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from keystore import Vault, VaultIOError
from mls import GranularStorage, WriteBehindDrainer
from tests.conftest import FAST_KDF, PASSPHRASE
from tests.mls.conftest import FULL, FlakyVault, storage_rows, vault_rows

Row = tuple[str, bytes]

categories = st.sampled_from(["alpha", "beta/2"])
row_keys = st.sampled_from([b"", b"k1", b"k2", b"k3"])
values = st.binary(max_size=6)
write_step = st.tuples(st.just("write"), categories, row_keys, values)
delete_step = st.tuples(st.just("delete"), categories, row_keys)
simple_steps = st.lists(st.one_of(write_step, delete_step), max_size=5)
nested_step = st.tuples(st.just("nested"), simple_steps, st.booleans())
operation_steps = st.lists(st.one_of(write_step, delete_step, nested_step), max_size=6)


class Abandon(Exception):
    """Raised to make an operation fail."""


class StorageMachine(RuleBasedStateMachine):
    """GranularStorage + WriteBehindDrainer + a vault, against a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="mls-stateful-"))
        self.path = self.directory / "model.vault"
        self.vault = Vault.create(self.path, PASSPHRASE, kdf=FAST_KDF)
        self.flaky = FlakyVault(self.vault)
        self.storage = GranularStorage()
        self.drainer = WriteBehindDrainer(self.storage, self.flaky)  # type: ignore[arg-type]
        self.model: dict[Row, bytes] = {}

    def run_steps(self, steps: list[Any], scratch: dict[Row, bytes]) -> None:
        for step in steps:
            if step[0] == "write":
                _, category, key, value = step
                self.storage.write(category, key, value)
                scratch[(category, key)] = value
            elif step[0] == "delete":
                _, category, key = step
                self.storage.delete(category, key)
                scratch.pop((category, key), None)
            else:
                _, inner_steps, fail = step
                inner = dict(scratch)
                try:
                    with self.storage.operation():
                        self.run_steps(inner_steps, inner)
                        if fail:
                            raise Abandon
                except Abandon:
                    continue
                scratch.clear()
                scratch.update(inner)

    @rule(step=st.one_of(write_step, delete_step))
    def standalone(self, step: Any) -> None:
        self.run_steps([step], self.model)

    @rule(steps=operation_steps, fail=st.booleans())
    def operation(self, steps: list[Any], fail: bool) -> None:
        scratch = dict(self.model)
        try:
            with self.storage.operation():
                self.run_steps(steps, scratch)
                if fail:
                    raise Abandon
        except Abandon:
            return
        self.model = scratch

    @rule()
    def flush(self) -> None:
        self.drainer.flush()
        assert vault_rows(self.vault) == self.model

    @precondition(lambda self: self.storage.pending_events() > 0)
    @rule()
    def failed_flush(self) -> None:
        pending = self.storage.pending_events()
        self.flaky.failures_left = 1
        with pytest.raises(VaultIOError):
            self.drainer.flush()
        assert self.storage.pending_events() == pending

    @rule()
    def reopen(self) -> None:
        self.drainer.close()
        self.vault.close()
        self.vault = Vault.open(self.path)
        self.vault.unlock(PASSPHRASE)
        self.flaky = FlakyVault(self.vault)
        self.storage = GranularStorage.load(self.vault)
        self.drainer = WriteBehindDrainer(self.storage, self.flaky)  # type: ignore[arg-type]
        assert storage_rows(self.storage) == self.model

    @invariant()
    def memory_equals_model(self) -> None:
        assert storage_rows(self.storage) == self.model

    def teardown(self) -> None:
        try:
            self.drainer.close()
        finally:
            self.vault.close()
            shutil.rmtree(self.directory, ignore_errors=True)


StorageMachine.TestCase.settings = settings(
    max_examples=300 if FULL else 20,
    stateful_step_count=40 if FULL else 12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStorageAgainstDictModel = StorageMachine.TestCase
