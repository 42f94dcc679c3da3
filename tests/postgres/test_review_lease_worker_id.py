"""Two workers that were given the same ``worker_id`` (a fixed name reused by a restarted
process while the old one still runs) must not both write one vault under one fencing
token: the second is refused, or the first is fenced off."""

from __future__ import annotations

import pytest

from keystore import LeaseLost, PostgresDatabase, PostgresVault, VaultBusy
from tests.postgres.conftest import FAST_KDF, PASSPHRASE


def test_a_second_process_with_the_same_worker_id_does_not_share_the_lease(
    pg_dsn: str, pg_schema: str
) -> None:
    """Worker A holds the vault; worker B, named like A, opens it: either B is refused,
    or A's next write is fenced (LeaseLost)."""
    a_db = PostgresDatabase(pg_dsn, schema=pg_schema, lease_ttl=30.0, worker_id="worker-7")
    b_db = PostgresDatabase(pg_dsn, schema=pg_schema, lease_ttl=30.0, worker_id="worker-7")
    try:
        a = PostgresVault.create(a_db, PASSPHRASE, FAST_KDF, name="shared")
        try:
            a.put("c", b"k", b"from a")
            try:
                b = PostgresVault.open(b_db, name="shared")
            except VaultBusy:
                return
            try:
                b.unlock(PASSPHRASE)
                b.put("c", b"k", b"from b")
                with pytest.raises(LeaseLost):
                    a.put("c", b"k", b"from a again")
            finally:
                b.close()
        finally:
            a.close()
    finally:
        b_db.close()
        a_db.close()
