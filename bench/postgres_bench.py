"""The PostgreSQL vault: what encryption, fencing and leases cost on a real server.

Run: ``python -m bench.postgres_bench [--quick]`` (or through ``python -m bench``).
Uses ``$MLS_KEYSTORE_PG_DSN`` when set, else starts a throwaway server (as the tests
do); with neither it reports why and measures nothing.  Every figure compares two
things measured in the same run on the same server.

* ``pg_upsert_methods``: plaintext rows upserted four ways — one ``INSERT … SELECT
  FROM unnest(arrays)`` with the arrays as text, the same with the arrays framed in
  binary (what the vault does), pipelined ``executemany``, ``COPY`` into a temporary
  table then one upsert — to find the fastest (informative; the fastest is the
  baseline below).
* ``pg_apply_vs_plaintext``: ``PostgresVault.apply`` of a batch (validate, coalesce,
  hash row keys, AES-256-GCM seal, fenced counter bump, state record advanced from
  the tails of the replaced values the vault holds, upsert) as throughput ÷ the
  same number of plaintext rows upserted the fastest way into a table with the same
  key shape (an identity id, category, key; goal ≥ 0.75).  Before every timed
  write both tables are vacuumed, untimed (see ``_vacuum``).  The vault's apply is
  also timed with each of its other upsert methods (all but text arrays, which are
  slow for ``bytea``).  ``pg_upsert_methods`` also times the fastest method on the
  same table without the identity id, for comparison.
* ``pg_apply_over_sqlite_apply``: the same batch through ``PostgresVault.apply`` ÷
  through ``keystore.Vault.apply`` (SQLite, ``synchronous=FULL``) — informative.
* ``pg_lease_costs``: one lease acquire + release, and one renewal statement
  extending 1,000 leases of one worker (milliseconds; informative).
* ``pg_rehydrate_identities``: N identities (vaults) opened, unlocked and loaded into a
  ``GranularStorage`` by 4 worker processes ÷ the same processes reading the same
  rows as plaintext ``SELECT`` s (the floor any store must pay).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import multiprocessing
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import emit_results, measure_ratio, summarize
from keystore import Change, Vault, profiles
from keystore.backends.postgres import (
    PostgresBackend,
    PostgresDatabase,
    _ByteaArray,
    _register_array_dumpers,
    _TextArray,
)
from keystore.postgres_vault import PostgresVault, new_header

__all__ = ["run"]

_PASSPHRASE = "bench passphrase"
_KDF = profiles.INSECURE_FOR_TESTS_ONLY  # the KDF is not what is measured here
_VALUE_BYTES = 1024
_CATEGORIES = 10
_METHODS = ("unnest", "arrays", "executemany", "copy")
_VAULT_METHODS = ("arrays", "executemany", "copy")


@contextlib.contextmanager
def _server() -> Iterator[str | None]:
    """A DSN: the configured server, a throwaway one, or ``None`` (with no server)."""
    dsn = os.environ.get("MLS_KEYSTORE_PG_DSN")
    if dsn:
        yield dsn
        return
    from keystore.backends._pgserver import ThrowawayServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        yield None
        return
    with ThrowawayServer(bindir) as server:
        yield server.dsn


def _changes(n: int, tag: bytes = b"") -> list[Change]:
    return [
        Change(f"bench/c{i % _CATEGORIES}", b"entry-%d" % i + tag, os.urandom(_VALUE_BYTES))
        for i in range(n)
    ]


class _PlainTable:
    """Plaintext rows in a table shaped like the vault's, on the same server.

    Like the vault's ``rows`` table, it holds many identities, so an identity id
    (16 bytes, one per table here) leads its primary key: what separates the two
    tables is then the encryption (sealed values, keyed-hash keys), not whether the
    store is shared.  ``store_id=False`` drops the column (reported for comparison).
    """

    def __init__(self, dsn: str, schema: str, *, store_id: bool = True) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True)
        _register_array_dumpers(self.conn)
        self.staged = False
        self.sid = os.urandom(16) if store_id else None
        name = "plain_rows" if store_id else "plain_rows_no_id"
        self.table = f"{schema}.{name}"
        self.cols = "store_id, category, key, value" if store_id else "category, key, value"
        self.key = "store_id, category, key" if store_id else "category, key"
        id_col = "store_id bytea NOT NULL, " if store_id else ""
        self.conn.execute(
            f"CREATE TABLE {self.table} ({id_col}category text COLLATE \"C\" NOT NULL,"
            f" key bytea NOT NULL, value bytea NOT NULL, PRIMARY KEY ({self.key}))"
        )
        self.conn.execute(f"ALTER TABLE {self.table} ALTER COLUMN value SET STORAGE EXTERNAL")

    def vacuum(self) -> None:
        """``VACUUM`` the table (untimed, between measurements; see :func:`_vacuum`)."""
        self.conn.execute(f"VACUUM {self.table}")

    def upsert(self, rows: list[tuple[str, bytes, bytes]], method: str) -> None:
        t, cols, key = self.table, self.cols, self.key
        upsert = f" ON CONFLICT ({key}) DO UPDATE SET value = excluded.value"
        # The identity id, when the table has one, as the vault sends its own: one
        # parameter for the whole batch.
        sid: tuple[bytes, ...] = () if self.sid is None else (self.sid,)
        first = "" if self.sid is None else "%b, "
        with self.conn.transaction():
            if method == "unnest":
                self.conn.execute(
                    f"INSERT INTO {t} ({cols}) SELECT {first.replace('b', 's')}c, k, v FROM"
                    " unnest(%s::text[], %s::bytea[], %s::bytea[]) AS t(c, k, v)" + upsert,
                    (*sid, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
                )
            elif method == "arrays":  # binary-framed arrays, as the vault sends them
                self.conn.execute(
                    f"INSERT INTO {t} ({cols}) SELECT {first}c, k, v FROM"
                    " unnest(%b::text[], %b::bytea[], %b::bytea[]) AS t(c, k, v)" + upsert,
                    (*sid, _TextArray([r[0] for r in rows]), _ByteaArray([r[1] for r in rows]),
                     _ByteaArray([r[2] for r in rows])),
                )
            elif method == "executemany":
                marks = ", ".join(["%s"] * (len(sid) + 3))
                with self.conn.cursor() as cur:
                    cur.executemany(
                        f"INSERT INTO {t} ({cols}) VALUES ({marks})" + upsert,
                        [(*sid, *r) for r in rows],
                    )
            else:
                if not self.staged:  # once per connection, as the vault does
                    self.conn.execute(
                        "CREATE TEMP TABLE plain_stage (category text COLLATE \"C\","
                        " key bytea, value bytea) ON COMMIT DELETE ROWS"
                    )
                    self.staged = True
                with self.conn.cursor() as cur:
                    with cur.copy("COPY plain_stage FROM STDIN (FORMAT BINARY)") as copy:
                        copy.set_types(["text", "bytea", "bytea"])
                        for row in rows:
                            copy.write_row(row)
                    cur.execute(
                        f"INSERT INTO {t} ({cols}) SELECT {first.replace('b', 's')}"
                        "category, key, value FROM plain_stage" + upsert,
                        sid,
                    )

    def close(self) -> None:
        self.conn.close()


def _time(fn: Any, repeats: int, setup: Any = None) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return summarize(samples).median


def apply_benchmarks(dsn: str, rows: int, repeats: int) -> list[dict[str, Any]]:
    """Upsert methods, encrypted apply ÷ fastest plaintext upsert, and ÷ SQLite apply."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    results: list[dict[str, Any]] = []
    changes = _changes(rows)
    plain_rows = [(c.category, c.key, c.value or b"") for c in changes]
    with PostgresDatabase(dsn, schema=schema, lease_ttl=300) as db:
        db.migrate()
        plain = _PlainTable(dsn, schema)
        no_id = _PlainTable(dsn, schema, store_id=False)
        vacuum = _vacuum(plain, no_id, f"{schema}.rows", f"{schema}.stores")
        try:
            method_s = {m: _time(lambda m=m: plain.upsert(plain_rows, m), repeats, vacuum)
                        for m in _METHODS}
            fastest = min(method_s, key=lambda m: method_s[m])
            no_id_s = _time(lambda: no_id.upsert(plain_rows, fastest), repeats, vacuum)
            results.append({
                "name": "pg_upsert_methods", "rows": rows, "value_bytes": _VALUE_BYTES,
                "fastest": fastest,
                **{f"{m}_ms": round(s * 1e3, 2) for m, s in method_s.items()},
                "fastest_without_store_id_ms": round(no_id_s * 1e3, 2),
                "copy_over_unnest": method_s["copy"] / method_s["unnest"],
                "figure": "copy_over_unnest",
            })
            vault = PostgresVault.create(db, _PASSPHRASE, _KDF, name="bench")
            backend = vault._pg
            vault_s: dict[str, float] = {}
            for m in _VAULT_METHODS:
                backend.upsert_method = m
                vault_s[m] = _time(lambda: vault.apply(changes), repeats, vacuum)
            best = backend.upsert_method = PostgresBackend.upsert_method  # the default
            ratio = measure_ratio(
                lambda: vault.apply(changes), lambda: plain.upsert(plain_rows, fastest),
                repeats, setup=vacuum,
            )
            results.append({
                "name": "pg_apply_vs_plaintext",
                "rows": rows, "value_bytes": _VALUE_BYTES,
                "vault_upsert_method": best, "baseline_method": fastest,
                **{f"vault_{m}_ms": round(s * 1e3, 2) for m, s in vault_s.items()},
                "throughput_ratio": 1.0 / ratio.median,
                "throughput_ratio_min": 1.0 / ratio.high,
                "throughput_ratio_max": 1.0 / ratio.low,
                "ours": ratio.subject.as_dict(), "baseline": ratio.baseline.as_dict(),
                "figure": "throughput_ratio", "goal": ">= 0.75",
            })
            with tempfile.TemporaryDirectory() as tmp:
                sv = Vault.create(Path(tmp) / "v", _PASSPHRASE, kdf=_KDF)
                try:
                    versus = measure_ratio(
                        lambda: vault.apply(changes), lambda: sv.apply(changes), repeats,
                        setup=vacuum,
                    )
                finally:
                    sv.close()
            results.append({
                "name": "pg_apply_over_sqlite_apply", "rows": rows,
                **versus.as_dict(), "figure": "ratio",
            })
            vault.close()
        finally:
            plain.close()
            no_id.close()
            _drop(dsn, schema)
    return results


def _vacuum(plain: _PlainTable, *others: _PlainTable | str) -> Any:
    """An untimed step run before every timed write: ``VACUUM`` of every table written.

    Each timed write replaces the same rows, leaving a dead copy of each; left
    alone, every table grows by a full copy per repeat (hundreds of MB in a full
    run, more than ``shared_buffers``) until autovacuum wakes at a moment of its
    choosing, so which side paid for the bloat, the evictions and the vacuum was
    chance.  Vacuuming both sides before each write keeps both at one live copy
    plus free space, the state autovacuum maintains on a server in service.
    """
    tables = [plain.table, *(o.table if isinstance(o, _PlainTable) else o for o in others)]

    def run() -> None:
        plain.conn.execute(f"VACUUM {', '.join(tables)}")

    return run


def _drop(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def lease_benchmarks(dsn: str, leases: int, repeats: int) -> dict[str, Any]:
    """One acquire + release; one renewal of ``leases`` leases in one statement."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        with PostgresDatabase(dsn, schema=schema, lease_ttl=300, renew=False) as db:
            db.migrate()
            ids = [_import_empty(db) for _ in range(leases)]

            def acquire_release() -> None:
                lease = db.leases.acquire(ids[0])
                db.leases.release(lease)

            acquire_s = _time(acquire_release, repeats * 10)
            for sid in ids:
                db.leases.acquire(sid)
            renew_s = _time(db.leases.renew, repeats)
            assert db.leases.renew() == leases
    finally:
        _drop(dsn, schema)
    return {
        "name": "pg_lease_costs", "leases": leases,
        "acquire_release_ms": round(acquire_s * 1e3, 3),
        "renew_all_ms": round(renew_s * 1e3, 3),
        "renew_per_lease_us": round(renew_s / leases * 1e6, 2),
        "renew_all_over_one_acquire": renew_s / acquire_s,
        "figure": "renew_all_over_one_acquire",
    }


def _import_empty(db: PostgresDatabase) -> bytes:
    header, cipher, kek = new_header(2, None, os.urandom(32))
    cipher.wipe()
    kek[:] = bytes(len(kek))
    return db.import_store(header.to_bytes(), [])


def _rehydrate_share(dsn: str, schema: str, names: list[str], plain: bool) -> float:
    """In a worker process: open + unlock + load each named vault (or the plain floor)."""
    from mls.storage import GranularStorage

    t0 = time.perf_counter()
    with PostgresDatabase(dsn, schema=schema, lease_ttl=300) as db:
        if plain:
            import psycopg

            with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor(binary=True) as cur:
                for name in names:
                    cur.execute(
                        f"SELECT category, key, value FROM {schema}.plain_ident"
                        " WHERE ident = %s", (name,),
                    )
                    state: dict[str, dict[bytes, bytes]] = {}
                    for c, k, v in cur.fetchall():
                        state.setdefault(c, {})[k] = v
        else:
            for name in names:
                with PostgresVault.open(db, name=name) as v:
                    v.unlock(_PASSPHRASE)
                    GranularStorage.load(v)
    return time.perf_counter() - t0


def rehydrate_benchmark(dsn: str, identities: int, rows_each: int, repeats: int,
                        workers: int = 4) -> dict[str, Any]:
    """``identities`` vaults loaded by ``workers`` processes ÷ plaintext reads of them."""
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    names = [f"ident-{i}" for i in range(identities)]
    try:
        with PostgresDatabase(dsn, schema=schema, lease_ttl=300) as db:
            db.migrate()
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    f"CREATE TABLE {schema}.plain_ident (ident text, category text,"
                    " key bytea, value bytea, PRIMARY KEY (ident, category, key))"
                )
                for name in names:
                    changes = _changes(rows_each)
                    with PostgresVault.create(db, _PASSPHRASE, _KDF, name=name) as v:
                        v.apply(changes)
                    with conn.cursor() as cur:
                        cur.executemany(
                            f"INSERT INTO {schema}.plain_ident VALUES (%s, %s, %s, %s)",
                            [(name, c.category, c.key, c.value) for c in changes],
                        )
        shares = [names[i::workers] for i in range(workers)]
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            list(pool.map(_rehydrate_share, [dsn] * workers, [schema] * workers,
                          [s[:2] for s in shares], [False] * workers))  # warm the workers

            def wave(plain: bool) -> None:
                list(pool.map(_rehydrate_share, [dsn] * workers, [schema] * workers,
                              shares, [plain] * workers))

            ratio = measure_ratio(lambda: wave(False), lambda: wave(True), repeats, warmup=0)
    finally:
        _drop(dsn, schema)
    return {
        "name": f"pg_rehydrate_{identities}_identities_{workers}_workers",
        "identities": identities, "rows_each": rows_each, "value_bytes": _VALUE_BYTES,
        "workers": workers,
        "identities_per_s": identities / ratio.subject.median,
        **ratio.as_dict(), "figure": "ratio",
    }


def run(quick: bool = False, *, tiny: bool = False) -> list[dict[str, Any]]:
    """Every PostgreSQL benchmark as plain dicts (empty of figures without a server)."""
    with _server() as dsn:
        if dsn is None:
            return [{"name": "pg_unavailable",
                     "reason": "no PostgreSQL binaries and MLS_KEYSTORE_PG_DSN not set"}]
        if tiny:
            return [*apply_benchmarks(dsn, 200, 3), lease_benchmarks(dsn, 100, 3),
                    rehydrate_benchmark(dsn, 40, 10, 2)]
        rows, repeats = (2000, 5) if quick else (5000, 9)
        return [
            *apply_benchmarks(dsn, rows, repeats),
            lease_benchmarks(dsn, 1000, repeats),
            rehydrate_benchmark(dsn, 1000, 20, 3 if quick else 5),
        ]


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--tiny", action="store_true", help="seconds (smoke test)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    emit_results(run(args.quick, tiny=args.tiny), args.json)


if __name__ == "__main__":
    main()
