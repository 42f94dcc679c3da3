"""A freshly created PostgreSQL vault writes without reading back what it replaces.

Its state record vouches for the empty set of rows, so the vault knows the tails of
every live row (none) from the start, as a loaded vault does: the batches it writes
next subtract replaced rows' digest contributions from memory, and the records
still equal the ones a full scan of the stored rows gives.
"""

from __future__ import annotations

import pytest

from keystore import Change
from keystore.backends.postgres import PostgresBackend, PostgresDatabase
from keystore.postgres_vault import PostgresVault
from mls.storage import GranularStorage
from tests.postgres.conftest import FAST_KDF, PASSPHRASE
from tests.postgres.test_postgres_tail_cache import expected_record

CAT = "openmls/v1/message_secrets"


def test_a_created_vault_replaces_rows_without_reading_them_back(
    pg_db: PostgresDatabase, read_backs: list[int]
) -> None:
    """Insert, replace and delete on a vault just created: no read-back, records
    that match a full scan, and a reopened vault that loads and verifies."""
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="fresh") as v:
        v.apply([Change(CAT, b"k%d" % i, b"value %d" % i) for i in range(5)])
        assert v._pg.read_state() == expected_record(v)
        v.apply([Change(CAT, b"k0", b"replaced"), Change(CAT, b"k1", None)])
        assert v._pg.read_state() == expected_record(v)
        v.apply([Change(CAT, b"k%d" % i, b"again %d" % i) for i in range(5)])
        assert v._pg.read_state() == expected_record(v)
        assert read_backs == []
    with PostgresVault.open(pg_db, name="fresh") as v:
        v.unlock(PASSPHRASE)
        storage = GranularStorage.load(v)
        assert storage is not None
        v.verify()


def test_a_created_vault_with_the_copy_method_reads_nothing_back_either(
    pg_db: PostgresDatabase, read_backs: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other upsert methods honour the known tails the same way."""
    monkeypatch.setattr(PostgresBackend, "upsert_method", "copy")
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="fresh-copy") as v:
        v.apply([Change(CAT, b"k%d" % i, b"value %d" % i) for i in range(3)])
        v.apply([Change(CAT, b"k%d" % i, b"again %d" % i) for i in range(3)])
        assert v._pg.read_state() == expected_record(v)
        assert read_backs == []
