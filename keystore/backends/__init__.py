"""Storage backends of the vault, each an adapter behind :class:`keystore.backend.VaultBackend`.

:mod:`keystore.backends.postgres` needs the ``[postgres]`` extra and imports psycopg
only when it connects.
"""
