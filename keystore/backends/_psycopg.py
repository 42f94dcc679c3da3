"""psycopg, imported only when a PostgreSQL vault is used, and its errors made ours.

The ``[postgres]`` extra is optional: nothing imports psycopg until a connection is
made, and a missing extra raises :class:`PostgresUnavailable`, not ImportError from
deep inside.
"""

from __future__ import annotations

from types import ModuleType

from keystore.errors import KeystoreError

__all__ = ["PostgresUnavailable", "first_line", "require"]


class PostgresUnavailable(KeystoreError, ImportError):
    """A PostgreSQL vault was asked for, but the ``[postgres]`` extra (psycopg 3) is missing.

    Install it from a checkout with ``pip install -e '.[postgres]'``.  It is an
    :class:`ImportError` too, so code that already guards optional imports catches it.
    """


def require() -> ModuleType:
    """The psycopg module.

    Raises:
        PostgresUnavailable: the extra is not installed.
    """
    try:
        import psycopg
    except ImportError:
        raise PostgresUnavailable(
            "PostgreSQL vaults need psycopg 3: from a checkout, pip install -e '.[postgres]'"
        ) from None
    return psycopg


def first_line(exc: BaseException) -> str:
    """The first line of a database error, for our own messages (its DETAIL lines,
    which may quote row data, are left out)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
