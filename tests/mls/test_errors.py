"""One error taxonomy: the native engine's errors are subclasses of mls.errors, never siblings."""

from __future__ import annotations

import inspect

import pytest

from mls import errors
from mls.native import errors as native

#: Each native error and the engine-independent class code should catch it as.
EXPECTED = {
    native.DecodeError: errors.InvalidMessage,
    native.InvalidSignature: errors.InvalidMessage,
    native.AuthenticationError: errors.InvalidMessage,
    native.InvalidTree: errors.InvalidMessage,
    native.InvalidMessage: errors.InvalidMessage,
    native.InvalidLeafNode: errors.InvalidMessage,
    native.InvalidProposal: errors.InvalidProposal,
    native.EpochMismatch: errors.EpochMismatch,
    native.UnknownGroup: errors.UnknownGroup,
    native.UnknownKeyPackage: errors.UnknownKeyPackage,
    native.PendingCommitExists: errors.PendingCommitExists,
    native.NoPendingCommit: errors.NoPendingCommit,
}


def test_every_native_error_is_an_mls_engine_error() -> None:
    """Whatever the native engine raises is caught by ``except mls.MlsEngineError``."""
    classes = [
        c
        for _, c in inspect.getmembers(native, inspect.isclass)
        if issubclass(c, Exception) and c.__module__ == native.__name__
    ]
    assert len(classes) >= 15
    assert all(issubclass(c, errors.MlsEngineError) for c in classes)


@pytest.mark.parametrize("native_class", list(EXPECTED), ids=lambda c: c.__name__)
def test_native_error_is_its_engine_independent_class(native_class: type[Exception]) -> None:
    """A native error is the mls.errors class of the same case."""
    assert issubclass(native_class, EXPECTED[native_class])


def test_epoch_mismatch_says_future_or_past() -> None:
    """``retryable`` follows ``future``, worked out from the epochs when not given."""
    ahead = errors.EpochMismatch("x", message_epoch=5, group_epoch=3)
    behind = native.EpochMismatch("x", message_epoch=2, group_epoch=3)
    unknown = native.EpochMismatch("the secrets of that epoch are no longer kept")
    assert (ahead.future, ahead.retryable) == (True, True)
    assert (behind.future, behind.retryable) == (False, False)
    assert not unknown.retryable and isinstance(unknown, errors.InvalidMessage)


def test_unsupported_and_not_an_mls_vault_name_the_engine() -> None:
    """The two errors about engines carry the engine's name, also in their message."""
    gap = errors.Unsupported("mls-rs", "padding")
    wrong = errors.NotAnMlsVault("belongs to native", engine="native")
    assert (gap.engine, gap.feature) == ("mls-rs", "padding") and "mls-rs" in str(gap)
    assert wrong.engine == "native"
    assert errors.MlsError().index is None
