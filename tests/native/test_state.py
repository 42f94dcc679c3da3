"""Private state objects export to bytes and re-import without losing behaviour."""

from __future__ import annotations

import pytest

from mls.native.errors import DecodeError
from mls.native.key_schedule import EpochSecrets, next_epoch
from mls.native.secret_tree import RatchetType, SecretTree
from mls.native.suites import SUITES
from mls.native.treekem import TreePrivate, create_update_path, process_update_path
from mls.native.welcome import GroupSecrets

from .helpers import CS, context, small_group

SECRET = b"\x24" * 32


def test_epoch_secrets_round_trip() -> None:
    """EpochSecrets.from_bytes inverts to_bytes."""
    secrets = next_epoch(CS, SECRET, None, None, context().to_bytes())
    assert EpochSecrets.from_bytes(secrets.to_bytes()) == secrets


def test_epoch_secrets_repr_hides_secrets() -> None:
    """The repr of epoch secrets does not contain secret material."""
    secrets = next_epoch(CS, SECRET, None, None, context().to_bytes())
    assert secrets.encryption_secret.hex() not in repr(secrets)


def test_group_secrets_repr_hides_secrets() -> None:
    """The repr of a Welcome's decrypted GroupSecrets shows neither joiner nor path secret."""
    joiner, path = b"\x5a" * 32, b"\xa5" * 32
    shown = repr(GroupSecrets(joiner, path, ()))
    assert joiner.hex() not in shown and repr(joiner) not in shown
    assert path.hex() not in shown and repr(path) not in shown


def test_secret_tree_resumes_after_reload() -> None:
    """A reloaded secret tree yields the same next keys as the original."""
    tree = SecretTree.create(CS, SECRET, 8)
    _, tree = tree.get_key(3, RatchetType.APPLICATION, 4)
    reloaded = SecretTree.from_bytes(tree.to_bytes())
    assert reloaded == tree
    assert (
        reloaded.get_key(3, RatchetType.APPLICATION, 2)[0]
        == tree.get_key(3, RatchetType.APPLICATION, 2)[0]
    )
    assert (
        reloaded.next_key(5, RatchetType.HANDSHAKE)[0] == tree.next_key(5, RatchetType.HANDSHAKE)[0]
    )


def test_secret_tree_deletes_consumed_node_secrets() -> None:
    """Deriving a leaf's ratchets removes the root and the leaf's own node secret."""
    tree = SecretTree.create(CS, SECRET, 4)
    _, tree = tree.next_key(0, RatchetType.APPLICATION)
    assert 3 not in tree.node_secrets and 0 not in tree.node_secrets
    assert set(tree.node_secrets) == {2, 5}


def test_secret_tree_garbage_rejected() -> None:
    """Corrupted serialized state raises DecodeError."""
    with pytest.raises(DecodeError):
        SecretTree.from_bytes(SecretTree.create(CS, SECRET, 2).to_bytes()[:-1])


def test_tree_private_round_trip_still_decrypts() -> None:
    """A reloaded TreePrivate processes an UpdatePath like the original."""
    tree, sigs, privs = small_group(CS, 4)
    path, result, _ = create_update_path(CS, tree, 0, sigs[0], context())
    reloaded = TreePrivate.from_bytes(privs[2].to_bytes())
    res, _ = process_update_path(CS, tree, 0, path, context(), reloaded)
    assert res.commit_secret == result.commit_secret


@pytest.mark.parametrize("suite_id", sorted(SUITES))
def test_update_path_round_trip_per_suite(suite_id: int) -> None:
    """Every suite can create and process an UpdatePath in a 3-member group."""
    cs = SUITES[suite_id]
    tree, sigs, privs = small_group(cs, 3)
    ctx = context(cs)
    path, result, _ = create_update_path(cs, tree, 1, sigs[1], ctx)
    result.tree.verify(cs, ctx.group_id)
    for j in (0, 2):
        res, _ = process_update_path(cs, tree, 1, path, ctx, privs[j])
        assert res.commit_secret == result.commit_secret
