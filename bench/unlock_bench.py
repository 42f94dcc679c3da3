"""Unlock and rehydrate: what opening a client costs beyond the KDF it cannot avoid.

Run: ``python -m bench.unlock_bench [--quick]`` (or through ``python -m bench``).

* ``unlock_rehydrate``: ``Vault.open`` + ``unlock`` + ``GranularStorage.load`` of a vault
  holding N entries ÷ the least any encrypted store must do to get the same maps into
  memory: Argon2id with the same profile, a plain ``SELECT`` of every row from a
  stdlib-SQLite table of AES-GCM-sealed values, and one AES-GCM decrypt per row into
  ``{category: {key: value}}`` (goal ≤ 1.3x).  Measured with the default profile, where
  the KDF dominates, and with the test-only profile, where the ratio is the rehydrate
  overhead alone.
* ``rehydrate_breakdown``: the fixed cost of ``Vault.open`` + ``unlock`` + ``close``,
  and ``GranularStorage.load`` of an unlocked vault split into the SQLite scan (held
  in one list, and streamed for comparison), the AES-GCM decrypts, the per-row
  key-hash check and the rest (per-row Python), with the ratio that would remain if
  that rest cost nothing.
* ``unlock_per_profile``: ``Vault.open`` + ``unlock`` ÷ bare Argon2id of the same
  profile, for each named profile (informative: the absolute time is what a user
  waits, the ratio is what the vault adds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.baselines import PlaintextRows, seal_values
from bench.common import measure_ratio
from keystore import Change, KdfParameters, Vault, profiles
from mls import GranularStorage

__all__ = ["rehydrate_breakdown", "run", "unlock_per_profile", "unlock_rehydrate"]

_PASSPHRASE = "bench passphrase"
_VALUE_BYTES = 1024
_CATEGORIES = 10
_NONCE_LEN = 12


def _argon2id(profile: KdfParameters, salt: bytes) -> bytes:
    return hash_secret_raw(
        _PASSPHRASE.encode(),
        salt,
        time_cost=profile.time_cost,
        memory_cost=profile.memory_cost,
        parallelism=profile.parallelism,
        hash_len=32,
        type=Type.ID,
    )


def _entries(n: int) -> list[tuple[str, bytes, bytes]]:
    return [
        (f"bench/c{i % _CATEGORIES}", f"entry-{i}".encode(), os.urandom(_VALUE_BYTES))
        for i in range(n)
    ]


def unlock_rehydrate(
    entries: int, profile: KdfParameters, repeats: int
) -> dict[str, Any]:
    """Open + unlock + rehydrate N entries ÷ (Argon2id + raw scan + AES-GCM decrypt)."""
    rows = _entries(entries)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v"
        with Vault.create(path, _PASSPHRASE, kdf=profile) as vault:
            vault.apply(Change(c, k, v) for c, k, v in rows)

        data_key = os.urandom(32)
        salt = os.urandom(16)
        plain = PlaintextRows(Path(tmp) / "plain.db")
        sealed = seal_values(AESGCM(data_key), (v for _, _, v in rows), len(rows))
        plain.upsert([(c, k, s) for (c, k, _), s in zip(rows, sealed, strict=True)])
        plain.close()

        def ours() -> None:
            with Vault.open(path) as v:
                v.unlock(_PASSPHRASE)
                GranularStorage.load(v)

        def baseline() -> None:
            _argon2id(profile, salt)
            decrypt = AESGCM(data_key).decrypt
            conn = sqlite3.connect(Path(tmp) / "plain.db")
            state: dict[str, dict[bytes, bytes]] = {}
            try:
                for category, key, blob in conn.execute("SELECT category, key, value FROM kv"):
                    rows_of = state.get(category)
                    if rows_of is None:
                        rows_of = state[category] = {}
                    rows_of[key] = decrypt(blob[:_NONCE_LEN], blob[_NONCE_LEN:], None)
            finally:
                conn.close()
            if sum(map(len, state.values())) != entries:
                raise AssertionError("baseline rehydrated the wrong number of rows")

        result = measure_ratio(ours, baseline, repeats)
    return {
        "name": f"unlock_rehydrate_{entries}_{profile.name}",
        "entries": entries,
        "value_bytes": _VALUE_BYTES,
        "kdf": profile.name,
        **result.as_dict(),
        "goal": "<= 1.3",
    }


def rehydrate_breakdown(entries: int, repeats: int) -> dict[str, Any]:
    """Where unlock + ``GranularStorage.load`` of N rows spends its time.

    Parts, each timed on its own over the same N rows:

    * ``fixed``: ``Vault.open`` + ``unlock`` (test-only KDF) + ``close`` of the same
      vault, no rows read: the lock file, companion-file and schema checks, header
      reads, KDF and state record that every open pays once;
    * ``load``: ``GranularStorage.load`` of the unlocked vault (everything per row);
    * ``scan``: ``SELECT category, key_hash, value`` of the vault's table, fetched
      into one list (every sealed value held at once);
    * ``scan_streamed``: the same query iterated row by row, each row dropped at
      once, as the baseline reads: the gap to ``scan`` is what holding every
      sealed value of the vault at once costs (mostly fresh memory pages), which a
      load that reads the rows in one list pays and one that reads them in small
      batches does not;
    * ``decrypt``: one AES-GCM decrypt per row (no associated data);
    * ``key_hash``: one keyed BLAKE2b per row key (the vault re-hashes every
      decrypted key to prove the row sits under its own key).

    ``bound_if_no_python`` is the ours ÷ baseline ratio that would remain if the
    per-row Python around those calls cost nothing (the scan held in one list);
    ``holding_the_scan`` is the share of the load that the held list costs over
    the streamed read.
    """
    rows = _entries(entries)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v"
        with Vault.create(path, _PASSPHRASE, kdf=profiles.INSECURE_FOR_TESTS_ONLY) as created:
            created.apply(Change(c, k, v) for c, k, v in rows)
        aead = AESGCM(os.urandom(32))
        sealed = seal_values(aead, (v for _, _, v in rows), len(rows))
        hasher = hashlib.blake2b(key=os.urandom(32), digest_size=32, person=b"mlks-row-key")
        keys = [k for _, k, _ in rows]
        uri = f"file:{path}?mode=ro"
        query = "SELECT category, key_hash, value FROM keystore_rows"

        def fixed() -> None:
            with Vault.open(path) as v:
                v.unlock(_PASSPHRASE)

        def scan() -> None:
            conn = sqlite3.connect(uri, uri=True)
            try:
                conn.execute(query).fetchall()
            finally:
                conn.close()

        def scan_streamed() -> None:
            conn = sqlite3.connect(uri, uri=True)
            try:
                for _row in conn.execute(query):
                    pass
            finally:
                conn.close()

        def decrypt() -> None:
            for blob in sealed:
                aead.decrypt(blob[:_NONCE_LEN], blob[_NONCE_LEN:], None)

        def key_hashes() -> None:
            for key in keys:
                h = hasher.copy()
                h.update(key)
                h.digest()

        vault: Vault | None = None

        def load() -> None:
            assert vault is not None
            GranularStorage.load(vault)

        timed = {
            "fixed": fixed,
            "load": load,
            "scan": scan,
            "scan_streamed": scan_streamed,
            "decrypt": decrypt,
            "key_hash": key_hashes,
        }
        parts: dict[str, list[float]] = {name: [] for name in timed}
        try:
            for _ in range(repeats + 1):  # the first round only warms up
                for name, fn in timed.items():
                    # The fixed part opens the vault for writing itself: the handle
                    # the load reads through is opened after it and closed before
                    # the next round, so the two never hold the writer lock at once.
                    if name == "load":
                        vault = Vault.open(path)
                        vault.unlock(_PASSPHRASE)
                    t0 = time.perf_counter()
                    fn()
                    parts[name].append(time.perf_counter() - t0)
                    if vault is not None:
                        vault.close()
                        vault = None
        finally:
            if vault is not None:
                vault.close()
    med = {name: statistics.median(times[1:]) for name, times in parts.items()}
    floor = med["scan"] + med["decrypt"]
    load_s = med["load"]
    return {
        "name": f"rehydrate_breakdown_{entries}",
        "figure": "bound_if_no_python",
        "bound_if_no_python": (floor + med["key_hash"]) / floor,
        "measured_load_over_floor": load_s / floor,
        "ms": {name: m * 1e3 for name, m in med.items()},
        "us_per_row": {name: m * 1e6 / entries for name, m in med.items() if name != "fixed"},
        "share_of_load": {
            "scan": med["scan"] / load_s,
            "holding_the_scan": (med["scan"] - med["scan_streamed"]) / load_s,
            "decrypt": med["decrypt"] / load_s,
            "key_hash": med["key_hash"] / load_s,
            "per_row_python_rest": 1 - floor / load_s - med["key_hash"] / load_s,
        },
    }


def unlock_per_profile(profile: KdfParameters, repeats: int, warmup: int = 1) -> dict[str, Any]:
    """``Vault.open`` + ``unlock`` of an empty vault ÷ Argon2id of the same profile."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v"
        Vault.create(path, _PASSPHRASE, kdf=profile).close()
        salt = os.urandom(16)

        def ours() -> None:
            with Vault.open(path) as v:
                v.unlock(_PASSPHRASE)

        result = measure_ratio(ours, lambda: _argon2id(profile, salt), repeats, warmup=warmup)
    return {
        "name": f"unlock_{profile.name}",
        "kdf": profile.name,
        "unlock_ms": result.subject.median * 1e3,
        **result.as_dict(),
    }


def run(quick: bool = False, *, tiny: bool = False) -> list[dict[str, Any]]:
    """Every unlock benchmark as plain dicts; ``tiny`` is for the harness smoke test.

    RFC_9106_HIGH_MEMORY (2 GiB, seconds per unlock) runs only at full size.
    """
    fast, default = profiles.INSECURE_FOR_TESTS_ONLY, profiles.RFC_9106_LOW_MEMORY
    if tiny:
        return [
            unlock_rehydrate(200, fast, 3),
            rehydrate_breakdown(200, 3),
            unlock_per_profile(fast, 3),
        ]
    entries, repeats = (10_000, 3) if quick else (10_000, 7)
    results = [
        unlock_rehydrate(entries, default, repeats),
        unlock_rehydrate(entries, fast, repeats),
        rehydrate_breakdown(entries, repeats),
    ]
    results.append(unlock_per_profile(fast, repeats))
    if not quick:  # the quick run already pays the default KDF in unlock_rehydrate
        results.append(unlock_per_profile(default, repeats))
        # 2 GiB per derivation and well over ten seconds on a shared machine: few repeats.
        results.append(unlock_per_profile(profiles.RFC_9106_HIGH_MEMORY, 3, warmup=0))
    return results


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke test)")
    args = parser.parse_args()
    print(json.dumps(run(args.quick), indent=2))


if __name__ == "__main__":
    main()
