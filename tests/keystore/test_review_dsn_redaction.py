"""Messages and ``location`` name a PostgreSQL database without its password, for
every way libpq accepts a password inside a DSN."""

from __future__ import annotations

import pytest

pytest.importorskip("psycopg", reason="the [postgres] extra is not installed")

from psycopg.conninfo import conninfo_to_dict

from keystore.backends.postgres import _redact

SECRET = "s3cretPW"


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://u:{SECRET}@localhost/db",
        f"postgresql://u@localhost/db?password={SECRET}",
        f"host=localhost user=u password={SECRET}",
        f"host=localhost user=u password = '{SECRET}'",
    ],
)
def test_the_password_is_hidden(dsn: str) -> None:
    """The forms already handled stay hidden (libpq does read a password from each)."""
    assert conninfo_to_dict(dsn).get("password") == SECRET
    assert SECRET not in _redact(dsn)


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://:{SECRET}@localhost/db",
        "host=localhost user=u password='a\\'" + SECRET + "'",
    ],
)
def test_the_password_is_hidden_in_every_form_libpq_reads(dsn: str) -> None:
    """libpq reads a password from these too; no part of it may reach a message."""
    password = conninfo_to_dict(dsn).get("password")
    assert isinstance(password, str) and SECRET in password
    assert SECRET not in _redact(dsn)
