"""Keep the command's memory (passphrases, unwrapped keys) out of core files and debuggers.

A crash of a process holding an unlocked vault would otherwise write its memory,
secrets included, to a core file (or to a crash collector such as systemd-coredump
or apport, which keep it for days).  The command therefore, before it reads any
secret:

* sets ``RLIMIT_CORE`` to 0 (soft and hard: nothing in the process can raise it back);
* on Linux, clears the "dumpable" flag (``prctl(PR_SET_DUMPABLE, 0)``), which also
  stops other processes of the same user from attaching a debugger or reading
  ``/proc/<pid>/mem``.

Both are best effort: a platform without them still runs the command.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys

__all__ = ["PR_GET_DUMPABLE", "PR_SET_DUMPABLE", "dumpable", "refuse_core_dumps"]

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4


def _prctl() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


def refuse_core_dumps() -> None:
    """No core file and no ptrace by other processes, from here on (best effort)."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    prctl = _prctl()
    if prctl is not None:
        prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def dumpable() -> bool | None:
    """The process's dumpable flag (``None`` where it cannot be read)."""
    prctl = _prctl()
    if prctl is None:
        return None
    return bool(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))
