"""Make the vaults of ``tests/native/test_tree_rows.py`` with the code *before* node rows.

Run with the package of the commit before the ratchet tree was stored node by node on the
import path (the fixture was made from main at ``eab1fc1``)::

    git archive eab1fc1 | tar -x -C /tmp/old && PYTHONPATH=/tmp/old \\
        python tests/native/old_layout/make_old_layout.py tests/native/old_layout

It writes ``alice.vault`` and ``bob.vault`` (passphrase ``tests.conftest.PASSPHRASE``,
insecure test KDF), members of one group at epoch 3 whose state is in the old layout:
the whole tree in ``openmls/v1/tree`` and every member of each kept epoch in
``message_secrets/members``; and ``late.bin``, an application message Dave sent in
epoch 2 before Alice removed him, still undelivered to Bob.
"""

from __future__ import annotations

import sys
from pathlib import Path

from keystore import Vault, profiles
from mls.native import NativeEngine
from mls.storage import GranularStorage

PASSPHRASE = "correct horse battery staple"
GID = b"old-layout-group"


def main(folder: Path) -> None:
    """Build the group and write the two vaults and the late message into ``folder``."""
    alice, bob, carol, dave = (
        NativeEngine.create(GranularStorage(), name)
        for name in (b"alice", b"bob", b"carol", b"dave")
    )
    alice.create_group(GID)
    kps = [e.generate_key_package() for e in (bob, carol, dave)]
    commit, welcome = alice.commit(GID, add=kps)
    assert welcome is not None
    for e in (bob, carol, dave):
        e.join(welcome)
    commit, _ = carol.commit(GID, force_path=True)  # epoch 2
    for e in (alice, bob, dave):
        e.process(GID, commit)
    late = dave.encrypt(GID, b"sent by dave in epoch 2")
    commit, _ = alice.commit(GID, remove=[dave.own_leaf_index(GID)])  # epoch 3
    for e in (bob, carol):
        e.process(GID, commit)
    for name, engine in (("alice", alice), ("bob", bob)):
        path = folder / f"{name}.vault"
        path.unlink(missing_ok=True)
        vault = Vault.create(path, PASSPHRASE, kdf=profiles.INSECURE_FOR_TESTS_ONLY)
        vault.apply(engine.storage.drain_storage_events())
        vault.close()
    (folder / "late.bin").write_bytes(late)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
