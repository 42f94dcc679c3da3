"""SQLCipher: our design against SQLCipher-only storage, and what the optional layer costs.

Run: ``python -m bench.sqlcipher_bench [--quick] [--json OUT]``.

* ``ours_vs_sqlcipher_plaintext``: ``Vault.apply`` on a plain-SQLite vault (row
  encryption) ÷ SQLCipher holding *plaintext* rows, the design of Wire's native
  keystore and of mls-rs's SQLite provider.  Same 1 KiB rows, batches of 1000, one
  transaction per batch, same pragmas (WAL, ``synchronous=FULL``), raw SQLCipher key.
  Reported as a throughput ratio (goal ≥ 1.5); run again with ``synchronous=OFF``
  on both sides to separate CPU cost from fsync cost.
* ``sqlcipher_layer_cost``: ``Vault.apply`` on a ``sqlcipher=True`` vault ÷ the same
  on a plain vault (throughput ratio; 1.0 would be free).
* ``sqlcipher_page_cost``: plaintext rows in SQLCipher ÷ in stdlib SQLite, fsync
  off: what SQLCipher's page encryption itself costs.
* ``cpu_breakdown``: CPU ms per 1000 rows of our vault, of our row sealing alone,
  of SQLCipher with plaintext rows and of stdlib SQLite with plaintext rows.
* ``raw_key_open``: opening a SQLCipher connection keyed by a passphrase
  (SQLCipher's own PBKDF2) ÷ keyed by a raw key, as the vault does.

Every ratio compares two subjects timed alternately in the same run (see
``bench.common``); no absolute time is a claim.  Write benchmarks report the
ratio of wall-clock medians (``throughput_ratio``) and of this process's CPU-time
medians (``cpu_ratio``: the work of each design without the fsync wait, and robust
against other load on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import Timing, emit_results, ratio, summarize
from keystore import Change, Vault, profiles, sqlcipher
from keystore.cipher import StoreCipher
from keystore.vault import Synchronous

ROW_BYTES = 1024
BATCH = 1000


def measure_pair(
    subject: Callable[[], object], baseline: Callable[[], object], repeats: int
) -> tuple[Timing, Timing, Timing, Timing]:
    """Like ``bench.common.measure_pair``, also recording this process's CPU time.

    Everything measured here (SQLite, SQLCipher, our sealing) runs in this thread,
    so CPU time is the cost of each design without the fsync wait, and it is far
    less disturbed than wall time by other work on a shared machine.

    Returns:
        Wall time of subject and baseline, then CPU time of subject and baseline.
    """
    wall: tuple[list[float], list[float]] = ([], [])
    cpu: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for side, fn in enumerate((subject, baseline)):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[side].append(time.perf_counter() - w0)
            cpu[side].append(time.process_time() - c0)
    return summarize(wall[0]), summarize(wall[1]), summarize(cpu[0]), summarize(cpu[1])


def _batches(count: int) -> list[list[Change]]:
    return [
        [Change("bench", f"row-{b}-{i}".encode(), os.urandom(ROW_BYTES)) for i in range(BATCH)]
        for b in range(count)
    ]


def _vault_writer(vault: Vault, data: list[list[Change]]) -> Callable[[], None]:
    def write() -> None:
        for rows in data:
            vault.apply(rows)

    return write


def _plaintext_store(
    path: Path, synchronous: Synchronous, encrypted: bool = True
) -> sqlite3.Connection:
    """Plaintext rows in SQLCipher (or, ``encrypted=False``, stdlib SQLite): one table."""
    conn = (
        sqlcipher.connect(path, bytearray(os.urandom(32)), readonly=False, create=True)
        if encrypted
        else sqlite3.connect(path, isolation_level=None)
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(
        "CREATE TABLE kv (category TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,"
        " PRIMARY KEY (category, key))"
    )
    return conn


def _plaintext_writer(conn: sqlite3.Connection, data: list[list[Change]]) -> Callable[[], None]:
    def write() -> None:
        for rows in data:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO kv (category, key, value) VALUES (?, ?, ?)"
                " ON CONFLICT (category, key) DO UPDATE SET value = excluded.value",
                [(r.category, r.key, r.value) for r in rows],
            )
            conn.execute("COMMIT")

    return write


def ours_vs_sqlcipher_plaintext(
    batches: int = 10, repeats: int = 5, synchronous: Synchronous = "FULL"
) -> dict[str, Any]:
    """Plain vault ``apply`` throughput ÷ plaintext-rows-in-SQLCipher throughput.

    ``synchronous="OFF"`` on both sides takes the fsync out, leaving the CPU cost
    of each design (row sealing vs page encryption); it is not a durable setting.
    """
    with tempfile.TemporaryDirectory() as tmp:
        vault = Vault.create(
            Path(tmp) / "v", "bench", kdf=profiles.INSECURE_FOR_TESTS_ONLY,
            synchronous=synchronous,
        )
        base = _plaintext_store(Path(tmp) / "sqlcipher.db", synchronous)
        data = _batches(batches)
        try:
            t_ours, t_base, c_ours, c_base = measure_pair(
                _vault_writer(vault, data), _plaintext_writer(base, data), repeats
            )
        finally:
            vault.close()
            base.close()
    rows_total = batches * BATCH
    return {
        "name": "ours_vs_sqlcipher_plaintext",
        "synchronous": synchronous,
        "rows_per_repeat": rows_total,
        "ours_rows_per_s": rows_total / t_ours.median,
        "baseline_rows_per_s": rows_total / t_base.median,
        "throughput_ratio": ratio(t_base, t_ours),
        "cpu_ratio": ratio(c_base, c_ours),
        "goal": ">= 1.5",
        "ours": t_ours.as_dict(),
        "baseline": t_base.as_dict(),
    }


def sqlcipher_layer_cost(batches: int = 10, repeats: int = 5) -> dict[str, Any]:
    """``sqlcipher=True`` vault ``apply`` throughput ÷ plain vault ``apply`` throughput."""
    with tempfile.TemporaryDirectory() as tmp:
        kdf = profiles.INSECURE_FOR_TESTS_ONLY
        layered = Vault.create(Path(tmp) / "enc", "bench", kdf=kdf, sqlcipher=True)
        plain = Vault.create(Path(tmp) / "plain", "bench", kdf=kdf)
        data = _batches(batches)
        try:
            t_layered, t_plain, c_layered, c_plain = measure_pair(
                _vault_writer(layered, data), _vault_writer(plain, data), repeats
            )
        finally:
            layered.close()
            plain.close()
    rows_total = batches * BATCH
    return {
        "name": "sqlcipher_layer_cost",
        "rows_per_repeat": rows_total,
        "sqlcipher_vault_rows_per_s": rows_total / t_layered.median,
        "plain_vault_rows_per_s": rows_total / t_plain.median,
        "throughput_ratio": ratio(t_plain, t_layered),
        "cpu_ratio": ratio(c_plain, c_layered),
        "sqlcipher_vault": t_layered.as_dict(),
        "plain_vault": t_plain.as_dict(),
    }


def sqlcipher_page_cost(batches: int = 10, repeats: int = 5) -> dict[str, Any]:
    """Plaintext rows: SQLCipher throughput ÷ stdlib SQLite throughput, fsync taken out.

    What SQLCipher's page encryption itself costs, to set against our row sealing.
    """
    with tempfile.TemporaryDirectory() as tmp:
        enc = _plaintext_store(Path(tmp) / "enc.db", "OFF")
        plain = _plaintext_store(Path(tmp) / "plain.db", "OFF", encrypted=False)
        data = _batches(batches)
        try:
            t_enc, t_plain, c_enc, c_plain = measure_pair(
                _plaintext_writer(enc, data), _plaintext_writer(plain, data), repeats
            )
        finally:
            enc.close()
            plain.close()
    rows_total = batches * BATCH
    return {
        "name": "sqlcipher_page_cost",
        "synchronous": "OFF",
        "sqlcipher_rows_per_s": rows_total / t_enc.median,
        "sqlite_rows_per_s": rows_total / t_plain.median,
        "throughput_ratio": ratio(t_plain, t_enc),
        "cpu_ratio": ratio(c_plain, c_enc),
    }


def cpu_breakdown(batches: int = 10, repeats: int = 5) -> dict[str, Any]:
    """CPU milliseconds per 1000 rows (``synchronous=OFF``): where each design spends.

    ``sealing`` is our row work alone (keyed hash + AES-256-GCM + blob, through
    ``StoreCipher.seal_changes``, the function ``Vault.apply`` calls); the rest of
    ``ours_vault`` is SQLite.  Set against SQLCipher's page encryption, which is
    ``sqlcipher_plaintext - sqlite_plaintext``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        vault = Vault.create(
            Path(tmp) / "v", "bench", kdf=profiles.INSECURE_FOR_TESTS_ONLY, synchronous="OFF"
        )
        enc = _plaintext_store(Path(tmp) / "enc.db", "OFF")
        plain = _plaintext_store(Path(tmp) / "plain.db", "OFF", encrypted=False)
        cipher = StoreCipher.generate(os.urandom(16))
        data = _batches(batches)

        def sealing() -> None:
            for rows in data:
                cipher.seal_changes([((r.category, r.key), r.value) for r in rows], len(rows))

        subjects: dict[str, Callable[[], None]] = {
            "ours_vault": _vault_writer(vault, data),
            "sealing": sealing,
            "sqlcipher_plaintext": _plaintext_writer(enc, data),
            "sqlite_plaintext": _plaintext_writer(plain, data),
        }
        samples: dict[str, list[float]] = {name: [] for name in subjects}
        try:
            for _ in range(repeats):
                for name, fn in subjects.items():
                    c0 = time.process_time()
                    fn()
                    samples[name].append(time.process_time() - c0)
        finally:
            vault.close()
            enc.close()
            plain.close()
    per_batch = 1e3 / batches
    return {
        "name": "cpu_breakdown",
        "unit": "CPU ms per 1000 rows",
        **{name: summarize(xs).median * per_batch for name, xs in samples.items()},
    }


def raw_key_open(repeats: int = 7) -> dict[str, Any]:
    """Connect-and-read cost: passphrase-keyed SQLCipher (PBKDF2) ÷ raw-key SQLCipher."""
    module = sqlcipher.require()
    with tempfile.TemporaryDirectory() as tmp:
        raw_path, pw_path = Path(tmp) / "raw.db", Path(tmp) / "pw.db"
        raw_key = bytearray(os.urandom(32))
        conn = sqlcipher.connect(raw_path, raw_key, readonly=False, create=True)
        conn.execute("CREATE TABLE t (x)")
        conn.close()
        conn = module.connect(str(pw_path))
        conn.execute("PRAGMA key = 'a passphrase'")
        conn.execute("CREATE TABLE t (x)")
        conn.close()

        def with_raw_key() -> None:
            c = sqlcipher.connect(raw_path, raw_key, readonly=True)
            c.execute("SELECT count(*) FROM t").fetchone()
            c.close()

        def with_passphrase() -> None:
            c = module.connect(str(pw_path))
            c.execute("PRAGMA key = 'a passphrase'")
            c.execute("SELECT count(*) FROM t").fetchone()
            c.close()

        t_pw, t_raw, _, _ = measure_pair(with_passphrase, with_raw_key, repeats)
    return {
        "name": "raw_key_open",
        "passphrase_open_ms": t_pw.median * 1e3,
        "raw_key_open_ms": t_raw.median * 1e3,
        "passphrase_over_raw": ratio(t_pw, t_raw),
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Every SQLCipher benchmark, as plain dicts."""
    if quick:
        return [
            ours_vs_sqlcipher_plaintext(batches=3, repeats=3),
            ours_vs_sqlcipher_plaintext(batches=3, repeats=3, synchronous="OFF"),
            sqlcipher_layer_cost(batches=3, repeats=3),
            sqlcipher_page_cost(batches=3, repeats=3),
            cpu_breakdown(batches=3, repeats=3),
            raw_key_open(repeats=3),
        ]
    return [
        ours_vs_sqlcipher_plaintext(),
        ours_vs_sqlcipher_plaintext(synchronous="OFF"),
        sqlcipher_layer_cost(),
        sqlcipher_page_cost(),
        cpu_breakdown(),
        raw_key_open(),
    ]


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = run(args.quick)
    emit_results(results, args.json)


if __name__ == "__main__":
    main()
