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
  hash row keys, AES-256-GCM seal, fenced counter bump, read of the replaced values,
  upsert, state record) as throughput ÷ the same number of plaintext rows upserted
  the fastest way (goal ≥ 0.75).  The vault's apply is also timed with each of its
  other upsert methods (all but text arrays, which are slow for ``bytea``).
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
    """Plaintext rows in a table shaped like the vault's, on the same server."""

    def __init__(self, dsn: str, schema: str) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True)
        _register_array_dumpers(self.conn)
        self.staged = False
        self.table = f"{schema}.plain_rows"
        self.conn.execute(
            f"CREATE TABLE {self.table} (category text COLLATE \"C\" NOT NULL,"
            " key bytea NOT NULL, value bytea NOT NULL, PRIMARY KEY (category, key))"
        )
        self.conn.execute(f"ALTER TABLE {self.table} ALTER COLUMN value SET STORAGE EXTERNAL")

    def upsert(self, rows: list[tuple[str, bytes, bytes]], method: str) -> None:
        t = self.table
        with self.conn.transaction():
            if method == "unnest":
                self.conn.execute(
                    f"INSERT INTO {t} (category, key, value) SELECT * FROM"
                    " unnest(%s::text[], %s::bytea[], %s::bytea[])"
                    " ON CONFLICT (category, key) DO UPDATE SET value = excluded.value",
                    ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
                )
            elif method == "arrays":  # binary-framed arrays, as the vault sends them
                self.conn.execute(
                    f"INSERT INTO {t} (category, key, value) SELECT * FROM"
                    " unnest(%b::text[], %b::bytea[], %b::bytea[])"
                    " ON CONFLICT (category, key) DO UPDATE SET value = excluded.value",
                    (_TextArray([r[0] for r in rows]), _ByteaArray([r[1] for r in rows]),
                     _ByteaArray([r[2] for r in rows])),
                )
            elif method == "executemany":
                with self.conn.cursor() as cur:
                    cur.executemany(
                        f"INSERT INTO {t} (category, key, value) VALUES (%s, %s, %s)"
                        " ON CONFLICT (category, key) DO UPDATE SET value = excluded.value",
                        rows,
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
                        f"INSERT INTO {t} SELECT * FROM plain_stage"
                        " ON CONFLICT (category, key) DO UPDATE SET value = excluded.value"
                    )

    def close(self) -> None:
        self.conn.close()


def _time(fn: Any, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
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
        try:
            method_s = {m: _time(lambda m=m: plain.upsert(plain_rows, m), repeats)
                        for m in _METHODS}
            fastest = min(method_s, key=lambda m: method_s[m])
            results.append({
                "name": "pg_upsert_methods", "rows": rows, "value_bytes": _VALUE_BYTES,
                "fastest": fastest,
                **{f"{m}_ms": round(s * 1e3, 2) for m, s in method_s.items()},
                "copy_over_unnest": method_s["copy"] / method_s["unnest"],
                "figure": "copy_over_unnest",
            })
            vault = PostgresVault.create(db, _PASSPHRASE, _KDF, name="bench")
            backend = vault._pg
            vault_s: dict[str, float] = {}
            for m in _VAULT_METHODS:
                backend.upsert_method = m
                vault_s[m] = _time(lambda: vault.apply(changes), repeats)
            best = backend.upsert_method = PostgresBackend.upsert_method  # the default
            ratio = measure_ratio(
                lambda: vault.apply(changes), lambda: plain.upsert(plain_rows, fastest),
                repeats,
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
                        lambda: vault.apply(changes), lambda: sv.apply(changes), repeats
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
            _drop(dsn, schema)
    return results


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
