"""Fixtures shared by every test folder: temporary vault paths and fast vaults.

Every vault made here uses ``profiles.INSECURE_FOR_TESTS_ONLY`` so the suite stays
fast; nothing outside tests ever picks that profile.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from keystore import Vault, profiles

PASSPHRASE = "correct horse battery staple"
FAST_KDF = profiles.INSECURE_FOR_TESTS_ONLY


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--full``: run the long campaigns (crash loops, soaks) at full size, by hand."""
    parser.addoption(
        "--full",
        action="store_true",
        default=False,
        help="run crash/soak campaigns at full size (slow; not for CI)",
    )


#: Environment switches some campaigns read at import time; ``--full`` sets them all.
FULL_SWITCHES = ("MLS_KEYSTORE_FULL", "MLS_CLIENT_FULL", "MLS_STORAGE_FULL", "MLS_NATIVE_FULL")


def pytest_configure(config: pytest.Config) -> None:
    """Make ``--full`` reach the campaigns that read an environment switch."""
    if config.getoption("--full"):
        for name in FULL_SWITCHES:
            os.environ[name] = "1"


@pytest.fixture
def vault_path(tmp_path: Path) -> Path:
    """A path where no vault exists yet."""
    return tmp_path / "test.vault"


@pytest.fixture
def vault(vault_path: Path) -> Iterator[Vault]:
    """A new, unlocked vault with the test passphrase (closed after the test)."""
    v = Vault.create(vault_path, PASSPHRASE, kdf=FAST_KDF)
    try:
        yield v
    finally:
        v.close()


# ------------------------------------------------------------------ PostgreSQL
# A real server: $MLS_KEYSTORE_PG_DSN when set, else a throwaway one of our own
# (initdb + pg_ctl on a unix socket), else skip saying why (fail under
# $MLS_KEYSTORE_PG_REQUIRED, as .ci/run sets).


def _skip_reason() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (from a checkout: pip install -e '.[postgres]')"
    if os.environ.get("MLS_KEYSTORE_PG_DSN"):
        return None
    from keystore.backends._pgserver import find_bindir

    if find_bindir() is None:
        return "no PostgreSQL binaries (initdb, pg_ctl) and MLS_KEYSTORE_PG_DSN is not set"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as another user"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


@pytest.fixture(scope="session")
def pg_server() -> Iterator[object | None]:
    """The throwaway server (``None`` when an external server is used)."""
    reason = _skip_reason()
    if reason is not None:
        if os.environ.get("MLS_KEYSTORE_PG_REQUIRED"):  # CI: these tests must run
            pytest.fail(f"PostgreSQL tests required but cannot run: {reason}")
        pytest.skip(reason)
    if os.environ.get("MLS_KEYSTORE_PG_DSN"):
        yield None
        return
    from keystore.backends._pgserver import ThrowawayServer, find_bindir

    bindir = find_bindir()
    assert bindir is not None
    server = ThrowawayServer(bindir)
    try:
        server.__enter__()
    except Exception as exc:  # pragma: no cover - depends on the machine
        why = f"could not start a throwaway PostgreSQL server: {exc}"
        if os.environ.get("MLS_KEYSTORE_PG_REQUIRED"):
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def pg_dsn(pg_server: object | None) -> str:
    """A DSN reaching the test server as a superuser."""
    if pg_server is None:
        return os.environ["MLS_KEYSTORE_PG_DSN"]
    dsn: str = pg_server.dsn  # type: ignore[attr-defined]
    return dsn
