"""kill -9 campaign: a migration killed at any point leaves the old or the new version.

Each run forks a child that migrates a copy of the version-1 fixture and sends
itself SIGKILL at one hook point (after ``BEGIN``, after every statement, inside
the data step between row updates, after ``COMMIT``); the parent then checks the
file is wholly at one version and opens with every row intact.  Another campaign
kills the child from outside after a random delay, which also lands inside
SQLite's own commit.  Set ``MLS_KEYSTORE_FULL=1`` for the long random campaign.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from keystore import Vault, migrations
from keystore.cipher import StoreCipher
from tests.fixtures.make_fixtures import PASSPHRASE, ROWS, VAULT_V1, make_vault_v1
from tests.migrations.conftest import (
    DATA_VERSION,
    REENCRYPT,
    WITH_DATA_STEP,
    connect,
    row_blobs,
    unlock_cipher,
)

FULL = os.environ.get("MLS_KEYSTORE_FULL") == "1"
RANDOM_RUNS = 200 if FULL else 6


def _data_step_with_kill_points(
    kill: Callable[[], None],
) -> Callable[[sqlite3.Connection, StoreCipher], None]:
    def step(conn: sqlite3.Connection, cipher: StoreCipher) -> None:
        for (category, key_hash), blob in row_blobs(conn).items():
            key, value = cipher.decrypt_row(category, key_hash, blob)
            conn.execute(
                "UPDATE keystore_rows SET value = ? WHERE category = ? AND key_hash = ?",
                (cipher.encrypt_row(category, key_hash, key, value), category, key_hash),
            )
            kill()

    return step


def _run(path: Path, kill_at: int, steps: str, on_point: Callable[[], None]) -> int:
    """Migrate ``path`` with the named step list, calling ``on_point`` at point ``kill_at``.

    Returns the number of points passed.
    """
    seen = 0

    def point(*_: int) -> None:
        nonlocal seen
        if seen == kill_at:
            on_point()
        seen += 1

    conn = connect(path)
    if steps == "shipped":
        migrations.migrate(conn, hook=point)
        conn.close()
        return seen
    data = migrations.Migration(
        DATA_VERSION,
        REENCRYPT.name,
        REENCRYPT.statements,
        data=_data_step_with_kill_points(point),
        python_id=REENCRYPT.python_id,
    )
    migrations.migrate(
        conn,
        DATA_VERSION,
        migrations=(*migrations.MIGRATIONS, data),
        cipher=unlock_cipher(conn),
        hook=point,
    )
    conn.close()
    return seen


def _count_points(tmp_path: Path, steps: str) -> int:
    """How many points a complete migration passes (each is a place to kill it)."""
    path = tmp_path / f"count-{steps}.vault"
    shutil.copyfile(VAULT_V1, path)
    return _run(path, -1, steps, _never)


def _never() -> None:
    raise AssertionError("kill_at=-1 is never reached")


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _child(body: Callable[[], object]) -> int:
    """Fork; the child runs ``body`` and never returns into pytest."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            body()
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    return pid


def _check_whole_version(path: Path, steps: str, original: dict[tuple[str, bytes], bytes]) -> int:
    """Assert ``path`` is wholly at one version with every row intact; return it."""
    conn = connect(path)
    version = migrations.schema_version(conn)
    migrations.check_recorded(conn, WITH_DATA_STEP)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert ("keystore_counters" in tables) == (version >= 2)
    assert ("test_marker" in tables) == (version >= DATA_VERSION)
    blobs = row_blobs(conn)
    assert blobs.keys() == original.keys()
    changed = {k for k in blobs if blobs[k] != original[k]}
    # A data step commits all rows or none.
    assert changed == (set(blobs) if version >= DATA_VERSION else set())
    cipher = unlock_cipher(conn)
    plain = {cipher.decrypt_row(c, kh, b) for (c, kh), b in blobs.items()}
    assert plain == {(key, value) for _, key, value in ROWS}
    conn.close()
    if version <= migrations.LATEST_VERSION:
        with Vault.open(path, auto_migrate=True) as v:
            v.unlock(PASSPHRASE)
            assert v.verify().ok
    return version


@pytest.mark.parametrize("steps", ["shipped", "with-data-step"])
def test_kill_at_every_hook_point_leaves_one_whole_version(tmp_path: Path, steps: str) -> None:
    """SIGKILL at each hook point of v1 -> latest leaves v_old or v_new, opening intact."""
    original = row_blobs(connect(VAULT_V1))
    points = _count_points(tmp_path, steps)
    # BEGIN, bookkeeping table, each statement, record, user_version, COMMIT per step;
    # the data step adds one point per row and one after it.
    expected = sum(len(m.statements) + 5 for m in migrations.MIGRATIONS[1:])
    if steps != "shipped":
        expected += len(REENCRYPT.statements) + 5 + len(ROWS) + 1
    assert points == expected
    versions = set()
    for n in range(points):
        path = tmp_path / f"kill-{steps}-{n}.vault"
        shutil.copyfile(VAULT_V1, path)
        pid = _child(functools.partial(_run, path, n, steps, _kill_self))
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, n
        versions.add(_check_whole_version(path, steps, original))
    # Both outcomes were reached: the campaign covered points before and after COMMIT.
    assert min(versions) < max(versions)


def test_kill_after_random_delays_leaves_one_whole_version(tmp_path: Path) -> None:
    """SIGKILL from outside at random moments (inside SQLite's commit too) is just as safe."""
    template = tmp_path / "big.vault"
    # Enough rows that the data step takes a while, so random delays land inside it.
    make_vault_v1(template, (*ROWS, *_extra_rows(3000)))
    original = row_blobs(connect(template))
    start = time.monotonic()
    timing = tmp_path / "timing.vault"
    shutil.copyfile(template, timing)
    _run(timing, -1, "with-data-step", _kill_self)
    duration = time.monotonic() - start
    rng = random.Random(20261125)
    versions = []
    for n in range(RANDOM_RUNS):
        path = tmp_path / f"random-{n}.vault"
        shutil.copyfile(template, path)
        pid = _child(functools.partial(_run, path, -1, "with-data-step", _kill_self))
        time.sleep(rng.uniform(0.0, duration * 2.0))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        versions.append(_check_whole_version_rows(path, original))
    assert set(versions) <= set(range(1, DATA_VERSION + 1))


def _check_whole_version_rows(path: Path, original: dict[tuple[str, bytes], bytes]) -> int:
    conn = connect(path)
    version = migrations.schema_version(conn)
    migrations.check_recorded(conn, WITH_DATA_STEP)
    blobs = row_blobs(conn)
    assert blobs.keys() == original.keys()
    changed = sum(blobs[k] != original[k] for k in blobs)
    assert changed == (len(blobs) if version >= DATA_VERSION else 0)
    conn.close()
    return version


def _extra_rows(n: int) -> list[tuple[str, bytes, bytes]]:
    return [("bulk", i.to_bytes(4, "big"), os.urandom(64)) for i in range(n)]
