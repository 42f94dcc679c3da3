"""``import --force`` into PostgreSQL over a vault whose state record is still in state
format 1 (never unlocked writable since an earlier release): the new vault's generation
is above that record's too."""

from __future__ import annotations

from pathlib import Path

from keystore import Change, PostgresDatabase, PostgresVault
from keystore.digest import DigestKeys, RowSetDigest
from keystore.postgres_vault import import_export_file
from tests.postgres.conftest import FAST_KDF, PASSPHRASE
from tests.postgres.test_postgres_import import BACKUP, _export_file


def test_replace_lands_above_a_format_1_record(pg_db: PostgresDatabase, tmp_path: Path) -> None:
    """The replaced vault's record is format 1 at generation 40: the import lands at 41."""
    export, _, exported = _export_file(tmp_path, 3)
    with PostgresVault.create(pg_db, PASSPHRASE, FAST_KDF, name="old") as v:
        v.apply([Change("c", b"k%d" % i, b"v") for i in range(4)])
        assert v._cipher is not None
        keys = DigestKeys(v._cipher.secrets(), v.store_id)
        store_id = v.store_id
    s = pg_db.schema
    with pg_db.connect() as conn:
        rows = [(str(c), bytes(k), bytes(val)) for c, k, val in conn.execute(
            f"SELECT category, key_hash, value FROM {s}.rows WHERE store_id = %s",
            (store_id,)).fetchall()]
        digest = RowSetDigest(keys, state_format=1)
        digest.add(rows)
        conn.execute(f"UPDATE {s}.stores SET state = %s WHERE store_id = %s",
                     (keys.seal(digest.state(40)), store_id))
    assert exported < 40
    with import_export_file(pg_db, export, BACKUP, PASSPHRASE, FAST_KDF, name="old",
                            replace=True) as v:
        assert v.generation == 41
