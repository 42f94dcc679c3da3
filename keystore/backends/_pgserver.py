"""A throwaway PostgreSQL server for tests and benchmarks (never for production).

The test suite and ``bench/postgres_bench.py`` need a real server, and CI machines
have the PostgreSQL binaries but nothing running.  :class:`ThrowawayServer` runs
``initdb`` and ``pg_ctl`` in a fresh directory and listens on a unix socket only, so
it cannot collide with, or be reached from, anything else on the machine.

PostgreSQL refuses to run as root: when we are root the server runs as the
``postgres`` user (``runuser -u postgres --``), and the directory is made with
``tempfile.mkdtemp`` (not under pytest's ``tmp_path``, whose 0700 parents that user
cannot enter) and handed to that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["ThrowawayServer", "find_bindir"]

_CANDIDATE_BINDIRS = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin")


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (newest version first), or ``None``."""
    env = os.environ.get("MLS_KEYSTORE_PG_BINDIR")
    if env:
        return Path(env) if (Path(env) / "pg_ctl").exists() else None
    for pattern in _CANDIDATE_BINDIRS:
        for d in sorted(glob.glob(pattern), reverse=True):
            if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
                return Path(d)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


class ThrowawayServer:
    """``initdb`` + ``pg_ctl start`` on a unix socket in a fresh directory.

    Use as a context manager; :attr:`dsn` connects as the database superuser.
    :meth:`stop`/:meth:`start` restart it on the same data (tests of a server
    restart use them); leaving the context stops it and removes the directory.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="mlks-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_postgres = os.geteuid() == 0
        self.user = "postgres" if self._as_postgres else pwd.getpwuid(os.geteuid()).pw_name
        self.dsn = f"host={self.root} port=5432 dbname=postgres user={self.user}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def init(self) -> None:
        """Create the cluster (trust authentication on the socket only)."""
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        os.chmod(self.root, 0o700)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.user,
                  "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        """Start (or restart after :meth:`stop`) on the unix socket in :attr:`root`."""
        opts = (
            f"-c listen_addresses='' -c unix_socket_directories='{self.root}'"
            " -c max_connections=200 -c fsync=on"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts,
                  "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` disconnects every client and rolls back)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def __enter__(self) -> ThrowawayServer:
        try:
            self.init()
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Stop the server and remove its directory."""
        with contextlib.suppress(Exception):
            if self.data.exists():
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server log, for failure messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
