"""No member can take another's identity, and one identity holds one leaf (RFC 9420 §5.3.1).

Mallory (a native member) tries to become "alice": by an Update proposal, by the new leaf of
a commit's UpdatePath, and by adding a second client whose credential says "alice".  Native
members refuse each with :class:`InvalidCredential` (our error), mls-rs members refuse or
drop it too, so the mixed group does not split; nobody's identity changes, and the group
keeps working, also after a restart.  The policy is the application's: a
:class:`CredentialValidator` injected into the engine can allow renames or duplicates.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from unittest import mock

import pytest

pytest.importorskip("mls_rs_uniffi")

from mls.client import MlsClient
from mls.native import NativeEngine
from mls.native.commit import create_commit
from mls.native.engine import _key_package
from mls.native.errors import InvalidCredential, InvalidLeafNode
from mls.native.identity import BasicCredentialValidator, CredentialValidator
from mls.native.leaf_node import Credential, CredentialType, LeafNode, LeafNodeSource
from mls.native.proposals import Add, Proposal, Remove, Update
from mls.native.rows import encode_secret
from mls.native.validation import PendingProposal
from mls.storage import GranularStorage
from tests.native.hostile import (
    FAST,
    GID,
    PASSPHRASE,
    Room,
    forge_proposal,
    refused_by_all,
    room,
)

MIXED = [("alice", "native"), ("bob", "mls-rs"), ("carol", "native"), ("mallory", "native")]
ALICE = Credential(CredentialType.BASIC, identity=b"alice")


@pytest.fixture
def r(tmp_path: Path) -> Iterator[Room]:
    """Alice (native) created the group with bob (mls-rs), carol and mallory (native)."""
    with room(tmp_path, MIXED) as built:
        yield built


def _update_leaf(engine: NativeEngine, credential: Credential) -> LeafNode:
    """A correctly signed Update leaf of ``engine``'s member carrying ``credential``."""
    tree, me = engine._tree(GID), engine._own_leaf(GID)
    old = tree.leaf(me)
    assert old is not None
    enc_priv, enc_pub = engine.suite.hpke.generate_key_pair()
    with engine.storage.operation():  # as propose_update does: the key is ours if committed
        engine.storage.write_encryption_key_pair(enc_pub, encode_secret(enc_priv))
    return replace(
        old,
        encryption_key=enc_pub,
        credential=credential,
        leaf_node_source=LeafNodeSource.UPDATE,
        lifetime=None,
        parent_hash=b"",
    ).signed(engine.suite, engine._sig_priv, GID, me)


def _commit_as(engine: NativeEngine, credential: Credential) -> bytes:
    """A commit with an UpdatePath whose new leaf carries ``credential``."""
    with engine._lock, engine.storage.operation():
        group = engine._group(GID)
        me = group.private.leaf_index
        leaf = group.tree.leaf(me)
        assert leaf is not None
        # The path leaf copies the committer's credential from its tree: swap it there.
        disguised = group.tree.with_nodes({2 * me: replace(leaf, credential=credential)})
        out = create_commit(
            replace(group, tree=disguised),
            engine._sig_priv,
            [],
            engine._psk_lookup(GID),
            wire_format=engine._config(GID).handshake,
            force_path=True,
        )
        return engine._protect(GID, out.auth, engine._config(GID))


def test_update_proposal_claiming_another_identity_is_refused(r: Room) -> None:
    """Mallory's Update naming "alice" is refused; members stay who they were."""
    message = forge_proposal(r.native("mallory"), Update(_update_leaf(r.native("mallory"), ALICE)))
    outcome = refused_by_all(r, "mallory", message, InvalidCredential, match="successor")
    assert outcome["alice"] == "refused InvalidCredential"
    r.check_live()
    r.check_restart()


def test_update_path_leaf_claiming_another_identity_is_refused(r: Room) -> None:
    """A commit whose UpdatePath leaf names "alice" is refused by every member."""
    message = _commit_as(r.native("mallory"), ALICE)
    outcome = refused_by_all(r, "mallory", message, InvalidCredential, match="successor")
    assert outcome["bob"].startswith("refused")
    r.check_live()
    r.check_restart()


def test_adding_a_second_client_with_a_members_identity_is_refused(
    r: Room, tmp_path: Path
) -> None:
    """A commit adding another "alice" is refused by native and mls-rs members alike."""
    twin = MlsClient.create(
        tmp_path / "twin.vault", PASSPHRASE, identity=b"alice", kdf=FAST, engine="native"
    )
    try:
        kp = _key_package(twin.generate_key_package())
    finally:
        twin.close()
    mallory = r.native("mallory")
    with mallory._lock, mallory.storage.operation():
        group = mallory._group(GID)
        with mock.patch("mls.native.commit.validate_proposal_list"):
            out = create_commit(
                group,
                mallory._sig_priv,
                [PendingProposal(group.private.leaf_index, Proposal(Add(kp)))],
                mallory._psk_lookup(GID),
                wire_format=mallory._config(GID).handshake,
            )
        commit = mallory._protect(GID, out.auth, mallory._config(GID))
    outcome = refused_by_all(r, "mallory", commit, InvalidCredential, match="identity")
    assert outcome["bob"].startswith("refused")
    r.check_live()
    r.check_restart()


def test_an_honest_add_of_a_duplicate_identity_fails_locally(r: Room, tmp_path: Path) -> None:
    """add_members with a key package naming an existing member raises our error and
    changes nothing: the group can go on."""
    twin = MlsClient.create(
        tmp_path / "twin.vault", PASSPHRASE, identity=b"bob", kdf=FAST, engine="native"
    )
    try:
        kp = twin.generate_key_package()
    finally:
        twin.close()
    with pytest.raises(InvalidCredential):
        r["alice"].add_members(GID, [kp])
    r.check_live()


@pytest.mark.parametrize("committer", ["alice", "bob"])
def test_a_proposal_to_add_a_duplicate_identity_is_never_committed(
    r: Room, tmp_path: Path, committer: str
) -> None:
    """An Add proposal for a second "carol" is queued (a Remove of carol could come with
    it), but neither a native nor an mls-rs committer commits it while carol is a member."""
    twin = MlsClient.create(
        tmp_path / "twin.vault", PASSPHRASE, identity=b"carol", kdf=FAST, engine="native"
    )
    try:
        kp = _key_package(twin.generate_key_package())
    finally:
        twin.close()
    message = forge_proposal(r.native("mallory"), Add(kp))
    r.deliver("mallory", message)
    r.deliver(committer, r[committer].update_keys(GID))
    r.check_agree()
    r.check_live()


def test_a_member_may_be_replaced_by_a_new_client_with_its_identity(
    r: Room, tmp_path: Path
) -> None:
    """Remove carol and add carol's new client, both by proposal, in one commit: the
    identity is free once the old leaf goes, so every member accepts it."""
    new_carol = MlsClient.create(
        tmp_path / "new-carol.vault", PASSPHRASE, identity=b"carol", kdf=FAST, engine="native"
    )
    try:
        kp = _key_package(new_carol.generate_key_package())
        carol_leaf = next(i for i, name in r.native("alice").members(GID) if name == b"carol")
        for body in (Remove(carol_leaf), Add(kp)):
            r.deliver("mallory", forge_proposal(r.native("mallory"), body), skip=("carol",))
        commit = r["alice"].update_keys(GID)
        r.deliver("alice", commit, skip=("carol",))
        del r.clients["carol"]
        names = sorted(r["alice"].members(GID))
        assert names == [b"alice", b"bob", b"carol", b"mallory"]
        assert {tuple(sorted(c.members(GID))) for c in r.clients.values()} == {tuple(names)}
    finally:
        new_carol.close()


# -- the policy is the application's --------------------------------------------------------


class _RenameAllowed(BasicCredentialValidator):
    """Lets any member take any basic identity (a directory service vouches elsewhere)."""

    def valid_successor(self, old: Credential, new: Credential) -> bool:
        return True


def _engines(validator: CredentialValidator | None, *names: str) -> list[NativeEngine]:
    engines = [
        NativeEngine(
            NativeEngine.create(GranularStorage(), n.encode()).storage,
            credential_validator=validator,
        )
        for n in names
    ]
    engines[0].create_group(GID)
    _, welcome = engines[0].commit(GID, add=[e.generate_key_package() for e in engines[1:]])
    assert welcome is not None
    for e in engines[1:]:
        e.join(welcome)
    return engines


def test_a_validator_that_allows_renames_accepts_the_update() -> None:
    """The successor rule is the validator's: one allowing renames accepts the Update."""
    alice, mallory = _engines(_RenameAllowed(), "alice", "mallory")
    renamed = Credential(CredentialType.BASIC, identity=b"mallory-2")
    message = forge_proposal(mallory, Update(_update_leaf(mallory, renamed)))
    alice.process(GID, message)
    commit, _ = alice.commit(GID)
    mallory.process(GID, commit)
    assert [i for _, i in alice.members(GID)] == [b"alice", b"mallory-2"]


def test_duplicates_are_allowed_when_the_validator_says_so() -> None:
    """BasicCredentialValidator(allow_duplicates=True): two leaves may share an identity."""
    policy = BasicCredentialValidator(allow_duplicates=True)
    alice, bob = _engines(policy, "alice", "bob")
    twin = NativeEngine(
        NativeEngine.create(GranularStorage(), b"bob").storage, credential_validator=policy
    )
    commit, welcome = alice.commit(GID, add=[twin.generate_key_package()])
    assert welcome is not None
    bob.process(GID, commit)
    twin.join(welcome)
    assert [i for _, i in bob.members(GID)] == [b"alice", b"bob", b"bob"]
    strict_alice = _engines(None, "alice", "bob")[0]
    with pytest.raises(InvalidCredential):
        strict_alice.commit(GID, add=[
            NativeEngine.create(GranularStorage(), b"bob").generate_key_package()
        ])


def test_the_default_validator_refuses_x509_credentials() -> None:
    """X.509 needs a validator that checks chains; the basic one refuses such leaves."""
    policy = BasicCredentialValidator()
    x509 = Credential(CredentialType.X509, certificates=(b"cert",))
    with pytest.raises(InvalidCredential):
        policy.validate(x509, b"key")
    assert isinstance(policy, CredentialValidator)
    assert issubclass(InvalidCredential, InvalidLeafNode)
