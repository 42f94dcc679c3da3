"""A process that imports an export file into PostgreSQL and can be killed mid-import
(``python -m tests.postgres.import_worker DSN SCHEMA NAME EXPORT_FILE BACKUP_PASSPHRASE``).

It prints ``in-txn`` from inside the import's one transaction (every row inserted,
nothing committed yet) and waits there for a line on stdin; then it finishes the
import and prints ``done GENERATION``.  The test kills it with SIGKILL while it waits.
"""

from __future__ import annotations

import sys

from keystore import profiles
from keystore.backends import postgres
from keystore.backends.postgres import PostgresDatabase
from keystore.postgres_vault import import_export_file

PASSPHRASE = "correct horse battery staple"


def say(line: str) -> None:
    """One event line, flushed at once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    """Import ``argv[3]`` as vault ``argv[2]``, stopping inside the transaction."""
    dsn, schema, name, export_file, backup = argv

    def stop_here() -> None:
        say("in-txn")
        sys.stdin.readline()

    postgres._import_hook = stop_here
    with PostgresDatabase(dsn, schema=schema, lease_ttl=2.0) as db:
        vault = import_export_file(db, export_file, backup, PASSPHRASE,
                                   profiles.INSECURE_FOR_TESTS_ONLY, name=name)
        say(f"done {vault.generation}")
        vault.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
